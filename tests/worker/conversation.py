"""Requests and event helpers shared by the worker's end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

from model_worker.wire.protocol import MAX_NEW_TOKENS_LIMIT, ChatRequest, DoneEvent, Event, TokenEvent

#: Long enough that a request is certainly still running while a test acts on it (it gets cancelled).
LONG = MAX_NEW_TOKENS_LIMIT


def greedy_request(text: str = "Tell me about the sea.", *, user: str = "tester", max_new_tokens: int = 16,
                   request_id: str | None = None, images: list[dict] | None = None) -> ChatRequest:
    """A deterministic (greedy) one-turn request."""
    extra = {"request_id": request_id} if request_id else {}
    return ChatRequest(user=user, conversation=[{"role": "user", "text": text, "images": images or []}],
                       generation={"greedy": True, "max_new_tokens": max_new_tokens}, **extra)


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [event async for event in events]


async def read_until_token(events: AsyncIterator[Event]) -> list[Event]:
    """Read a stream up to and including its first ``token`` event (the request is then running)."""
    seen = []
    async for event in events:
        seen.append(event)
        if isinstance(event, TokenEvent):
            return seen
    raise AssertionError(f"the stream ended before any token: {seen}")


def reply_of(events: list[Event]) -> tuple[str, DoneEvent]:
    """The concatenated token deltas and the final ``done`` event."""
    done = events[-1]
    assert isinstance(done, DoneEvent), events
    return "".join(e.text for e in events if isinstance(e, TokenEvent)), done


def metric_value(metrics_text: str, name: str, labels: str = "") -> float:
    """One sample of a Prometheus text exposition (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in metrics_text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0
