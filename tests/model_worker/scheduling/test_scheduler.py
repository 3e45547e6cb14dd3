"""The scheduler on its own, with a small deterministic engine (plain Python, no model).

The engine is tests/support/echo_engine.py: it "generates" the prompt's characters one per step, so every
expectation is computable. Tests against the real model are in tests/model_worker/serve.
"""

from __future__ import annotations

import asyncio
import functools

import pytest

from model_worker.scheduling.ticket import Rejected
from model_worker.wire.protocol import (
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    FinishReason,
    QueuedEvent,
    StartedEvent,
    TokenEvent,
)
from tests.support.echo_engine import EchoEngine
from tests.support.requests import collect, one_turn, read_until_token

chat = functools.partial(one_turn, user="u", max_new_tokens=64)


async def test_stream_has_queued_started_tokens_done(make_scheduler):
    engine = EchoEngine()
    scheduler = make_scheduler(engine)
    events = await collect(scheduler.submit(chat("hello world")))

    assert events[0] == QueuedEvent(position=1)
    assert events[1] == StartedEvent()
    tokens = [e.text for e in events if isinstance(e, TokenEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent)
    assert done.text == "".join(tokens) == "hello world"
    assert done.finish_reason is FinishReason.STOP
    assert done.usage.completion_tokens == 11 and done.usage.prompt_tokens == 11
    assert {"queue_s", "prefill_s", "ttft_s", "total_s"} <= done.timings.keys()
    await asyncio.sleep(0.05)  # the release is queued behind the last step
    # Every step on the one engine thread; preparation on threads of its own, so it overlaps decoding.
    threads = dict(engine.threads)
    assert all(name.startswith("prepare_") for name in threads.pop("prepare"))
    assert threads == {"prefill": {"engine_0"}, "decode": {"engine_0"}, "release": {"engine_0"}}


async def test_a_request_is_prepared_while_the_batch_decodes(make_scheduler):
    """Preparing (tokenizing, images) never holds the running batch up: a request whose preparation waits
    until another one has finished still lets that one finish."""
    engine = EchoEngine(step_s=0.002)
    scheduler = make_scheduler(engine)
    running = scheduler.submit(chat("r" * 60))
    await read_until_token(running.events())
    slow = scheduler.submit(chat("wait for it"))
    done = (await collect(running))[-1]
    engine.gate.set()
    assert done.text == "r" * 60
    assert (await collect(slow))[-1].text == "wait for it" and not engine.gate_timed_out


async def test_a_preparation_that_hangs_makes_the_worker_unhealthy(make_scheduler):
    engine = EchoEngine()
    scheduler = make_scheduler(engine, step_timeout_s=0.05)
    ticket = scheduler.submit(chat("wait forever"))
    await asyncio.sleep(0.3)
    assert "preparing a request has been running" in scheduler.stalled()
    engine.gate.set()
    assert (await collect(ticket))[-1].text == "wait forever"
    assert scheduler.stalled() is None


async def test_token_events_carry_several_tokens_when_steps_are_fast(make_scheduler):
    scheduler = make_scheduler(EchoEngine(step_s=0.0005))
    events = await collect(scheduler.submit(chat("t" * 400, max_new_tokens=400)))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert "".join(e.text for e in tokens) == "t" * 400
    assert len(tokens) <= 400 // 5  # one event per burst of steps, not one per token


async def test_length_limit_and_release(make_scheduler):
    engine = EchoEngine()
    scheduler = make_scheduler(engine)
    ticket = scheduler.submit(chat("abcdefgh", max_new_tokens=3, request_id="r1"))
    done = (await collect(ticket))[-1]
    assert (done.text, done.finish_reason) == ("abc", FinishReason.LENGTH)
    await asyncio.sleep(0.05)
    assert engine.released == ["r1"]


async def test_running_sequences_share_decode_steps(make_scheduler):
    engine = EchoEngine(max_batch_size=3, step_s=0.002)
    scheduler = make_scheduler(engine)
    tickets = [scheduler.submit(chat("x" * 40, user=f"u{i}")) for i in range(5)]
    results = await asyncio.gather(*(collect(t) for t in tickets))
    assert all(r[-1].text == "x" * 40 for r in results)
    assert max(engine.batches) == 3  # never more than the engine's batch size, and it fills up


async def test_fair_order_across_users(make_scheduler):
    engine = EchoEngine(max_batch_size=1, step_s=0.001)
    scheduler = make_scheduler(engine)
    order: list[str] = []

    async def run(ticket):
        async for event in ticket.events():
            if isinstance(event, StartedEvent):
                order.append(ticket.request_id)

    burst = [scheduler.submit(chat("y" * 10, user="alice", request_id=f"a{i}")) for i in range(5)]
    others = [scheduler.submit(chat("y" * 10, user=name, request_id=name)) for name in ("bob", "carol")]
    await asyncio.gather(*(run(t) for t in burst + others))
    # alice's burst came first, yet bob and carol each start before her third request.
    assert order.index("bob") < order.index("a2") and order.index("carol") < order.index("a2")
    assert [r for r in order if r.startswith("a")] == [f"a{i}" for i in range(5)]


async def test_waiting_positions_decrease(make_scheduler):
    scheduler = make_scheduler(EchoEngine(max_batch_size=1, step_s=0.001))
    tickets = [scheduler.submit(chat("z" * 8, user=f"u{i}")) for i in range(4)]
    results = await asyncio.gather(*(collect(t) for t in tickets))
    positions = [e.position for e in results[-1] if isinstance(e, QueuedEvent)]
    assert positions[-1] == 1 and len(positions) >= 2
    assert positions == sorted(positions, reverse=True)


async def test_full_queue_is_busy_with_retry_hint(make_scheduler):
    scheduler = make_scheduler(EchoEngine(max_batch_size=1, step_s=0.01), max_queue=2,
                               busy_retry_after_s=3.0)
    kept = [scheduler.submit(chat("w" * 50)) for _ in range(2)]
    with pytest.raises(Rejected) as caught:
        scheduler.submit(chat("w"))
    assert caught.value.event.code is ErrorCode.BUSY and caught.value.event.retry_after == 3.0
    for ticket in kept:
        scheduler.cancel(ticket.request_id)
    await asyncio.gather(*(collect(t) for t in kept))
    # Cancelling freed the places: the next request is accepted and served.
    assert (await collect(scheduler.submit(chat("ok"))))[-1].text == "ok"


async def test_cancel_running_and_waiting(make_scheduler):
    engine = EchoEngine(max_batch_size=1, step_s=0.005)
    scheduler = make_scheduler(engine)
    running = scheduler.submit(chat("r" * 500, request_id="running"))
    waiting = scheduler.submit(chat("w" * 5, request_id="waiting"))
    async for event in running.events():
        if isinstance(event, TokenEvent):
            break
    assert scheduler.cancel("waiting") and scheduler.cancel("running")
    waiting_done = (await collect(waiting))[-1]
    running_done = (await collect(running))[-1]
    assert waiting_done.finish_reason is FinishReason.CANCELLED and waiting_done.text == ""
    assert running_done.finish_reason is FinishReason.CANCELLED
    assert 0 < running_done.usage.completion_tokens < 500
    assert not scheduler.cancel("running")  # already ended
    await asyncio.sleep(0.05)
    assert sorted(engine.released) == ["running", "waiting"]


async def test_deadline_gives_timeout(make_scheduler):
    scheduler = make_scheduler(EchoEngine(step_s=0.01), request_timeout_s=0.1)
    last = (await collect(scheduler.submit(chat("t" * 1000, max_new_tokens=1000))))[-1]
    assert isinstance(last, ErrorEvent) and last.code is ErrorCode.TIMEOUT


async def test_prepare_error_ends_only_that_request(make_scheduler):
    scheduler = make_scheduler(EchoEngine())
    bad = scheduler.submit(chat("look", images=[{"data": "not base64!"}]))
    good = scheduler.submit(chat("fine"))
    bad_events, good_events = await asyncio.gather(collect(bad), collect(good))
    assert bad_events == [bad_events[-1]] and bad_events[-1].code is ErrorCode.BAD_IMAGE
    assert good_events[-1].text == "fine"


async def test_engine_failure_is_internal_and_loop_survives(make_scheduler):
    scheduler = make_scheduler(EchoEngine())
    failed = (await collect(scheduler.submit(chat("boom!"))))[-1]
    assert isinstance(failed, ErrorEvent) and failed.code is ErrorCode.INTERNAL
    assert "boom" not in failed.message
    assert (await collect(scheduler.submit(chat("after"))))[-1].text == "after"


async def test_shutdown_finishes_running_and_refuses_waiting(make_scheduler):
    scheduler = make_scheduler(EchoEngine(max_batch_size=1, step_s=0.002))
    running = scheduler.submit(chat("s" * 20))
    waiting = scheduler.submit(chat("s" * 20))
    async for event in running.events():
        if isinstance(event, StartedEvent):
            break
    await scheduler.shutdown(grace_s=5)
    assert (await collect(running))[-1].text == "s" * 20
    assert (await collect(waiting))[-1].code is ErrorCode.SHUTTING_DOWN
    with pytest.raises(Rejected) as caught:
        scheduler.submit(chat("late"))
    assert caught.value.event.code is ErrorCode.SHUTTING_DOWN
