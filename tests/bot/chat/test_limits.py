"""Per-user token bucket and in-flight cap (time comes from a controlled clock, never asserted)."""

from __future__ import annotations

from bot.chat.limits import UserLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_with_retry_time() -> None:
    clock = Clock()
    limits = UserLimits(per_minute=6, burst=3, max_in_flight=10, clock=clock)
    for _ in range(3):
        assert limits.try_acquire("discord:U1") is None
    refused = limits.try_acquire("discord:U1")
    assert refused is not None and refused.reason == "rate"
    assert refused.retry_after_whole_s == 10  # one token per 10 s
    clock.now += 4
    assert limits.try_acquire("discord:U1").retry_after_whole_s == 6
    clock.now += 6
    assert limits.try_acquire("discord:U1") is None


def test_users_and_platforms_have_separate_buckets() -> None:
    limits = UserLimits(per_minute=1, burst=1, max_in_flight=10, clock=Clock())
    assert limits.try_acquire("discord:U1") is None
    assert limits.try_acquire("discord:U1") is not None
    assert limits.try_acquire("slack:U1") is None
    assert limits.try_acquire("discord:U2") is None


def test_in_flight_cap_is_released() -> None:
    limits = UserLimits(per_minute=60, burst=10, max_in_flight=1, clock=Clock())
    assert limits.try_acquire("slack:U1") is None
    refused = limits.try_acquire("slack:U1")
    assert refused is not None and refused.reason == "in_flight"
    limits.release("slack:U1")
    assert limits.try_acquire("slack:U1") is None


def test_a_refusal_for_in_flight_does_not_spend_a_token() -> None:
    clock = Clock()
    limits = UserLimits(per_minute=1, burst=2, max_in_flight=1, clock=clock)
    assert limits.try_acquire("u") is None
    for _ in range(5):
        assert limits.try_acquire("u").reason == "in_flight"
    limits.release("u")
    assert limits.try_acquire("u") is None
