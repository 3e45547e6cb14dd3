"""Several worker processes sharing one Redis Streams queue (issue: scale out).

Real ``redis-server``, real ``python -m model_worker serve --queue`` processes on tiny random weights,
and the bot's RedisWorkerClient: load spreads over both workers, a killed worker's job is finished by the
other, a cancel reaches the worker running the job, and a Redis outage gives clear errors, then heals.
"""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from bot.worker_client.base import WorkerUnavailable
from model_worker.wire.protocol import (
    ChatRequest,
    DoneEvent,
    FinishReason,
    RestartedEvent,
    StartedEvent,
    TokenEvent,
    Turn,
)
from model_worker.wire.queue_streams import DEFAULT_GROUP, DEFAULT_STREAM, connect

pytestmark = pytest.mark.timeout(240)


def greedy(text: str, *, max_new_tokens: int, request_id: str | None = None) -> ChatRequest:
    extra = {"request_id": request_id} if request_id else {}
    return ChatRequest(conversation=[Turn(role="user", text=text)],
                       generation={"max_new_tokens": max_new_tokens, "greedy": True}, **extra)


@pytest.fixture
async def bot(queue_cluster):
    client = queue_cluster.client()
    yield client
    await client.close()


async def answer(client, request: ChatRequest) -> list:
    return [event async for event in client.chat(request)]


def tokens_text(events: list) -> str:
    """The text streamed by the last attempt (a takeover, should one happen, starts the answer again)."""
    restarts = [i for i, e in enumerate(events) if isinstance(e, RestartedEvent)]
    last_attempt = events[restarts[-1] + 1:] if restarts else events
    return "".join(e.text for e in last_attempt if isinstance(e, TokenEvent))


async def test_twenty_concurrent_requests_complete_on_both_workers(queue_cluster, bot):
    pulled_before = queue_cluster.jobs_pulled()
    requests = [greedy(f"question {i}", max_new_tokens=6) for i in range(20)]
    results = await asyncio.gather(*(answer(bot, r) for r in requests))

    for events in results:
        done = events[-1]
        assert isinstance(done, DoneEvent) and done.text == tokens_text(events)
        assert sum(isinstance(e, DoneEvent) for e in events) == 1
    served = [after - before for after, before in zip(queue_cluster.jobs_pulled(), pulled_before, strict=True)]
    assert sum(served) == 20 and all(count > 0 for count in served)


async def test_killed_worker_job_is_finished_by_the_other(queue_cluster, bot):
    question = "tell me a long story"
    reference = (await answer(bot, greedy(question, max_new_tokens=40)))[-1]

    events, victim = [], None
    async for event in bot.chat(greedy(question, max_new_tokens=40)):
        events.append(event)
        if victim is None and isinstance(event, TokenEvent):
            victim = _running_worker(queue_cluster)
            queue_cluster.workers[victim].process.send_signal(signal.SIGKILL)
    try:
        restarts = [i for i, e in enumerate(events) if isinstance(e, RestartedEvent)]
        assert len(restarts) == 1 and events[restarts[0]].attempt == 2
        after = events[restarts[0] + 1:]
        assert StartedEvent() in after
        done = after[-1]
        assert [e for e in events if isinstance(e, DoneEvent)] == [done]  # one answer, after the notice
        assert done.text == tokens_text(after) == reference.text  # complete: nothing lost or repeated
        assert done.finish_reason is reference.finish_reason
        await _assert_queue_drained(queue_cluster)
    finally:
        queue_cluster.start_worker(victim)


async def test_cancel_stops_the_job_on_the_worker_running_it(queue_cluster, bot):
    request = greedy("keep talking", max_new_tokens=400, request_id="scaleout-cancel")
    events = []
    async for event in bot.chat(request):
        events.append(event)
        if isinstance(event, TokenEvent) and len(events) < 10:
            await bot.cancel(request.request_id)
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason is FinishReason.CANCELLED
    assert done.usage.completion_tokens < 400
    notices = [h for h in queue_cluster.workers if "request scaleout-cancel: cancelled through the queue"
               in h.log_text()]
    assert len(notices) == 1  # the one worker that ran it stopped it


async def test_redis_outage_gives_clear_errors_then_service_resumes(queue_cluster, bot):
    redis = queue_cluster.redis
    in_flight = bot.chat(greedy("a long answer", max_new_tokens=300))
    async for event in in_flight:
        if isinstance(event, TokenEvent):
            break
    redis.stop()
    try:
        with pytest.raises(WorkerUnavailable):
            async for _ in in_flight:
                pass
        with pytest.raises(WorkerUnavailable):
            await asyncio.wait_for(answer(bot, greedy("while down", max_new_tokens=4)), 10)
        with pytest.raises(WorkerUnavailable):
            await bot.ready()
    finally:
        redis.start()

    await asyncio.wait_for(_until_workers_ready(bot, 2), 60)
    events = await answer(bot, greedy("after the outage", max_new_tokens=4))
    assert isinstance(events[-1], DoneEvent) and events[-1].text == tokens_text(events)


def _running_worker(cluster) -> int:
    for index, handle in enumerate(cluster.workers):
        status, body = handle.get("/readyz")
        if status == 200 and json.loads(body).get("running"):
            return index
    raise AssertionError("no worker is running the job")


async def _assert_queue_drained(cluster) -> None:
    redis = connect(cluster.redis.url)
    try:
        assert await redis.xlen(DEFAULT_STREAM) == 0
        assert (await redis.xpending(DEFAULT_STREAM, DEFAULT_GROUP))["pending"] == 0
    finally:
        await redis.aclose()


async def _until_workers_ready(bot, count: int) -> None:
    while True:
        try:
            info = await bot.ready()
            if getattr(info, "ready_workers", 0) >= count:
                return
        except WorkerUnavailable:
            pass
        await asyncio.sleep(0.2)
