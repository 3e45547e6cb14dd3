"""Several worker processes sharing one Redis Streams queue (issue: scale out).

Real ``redis-server``, real ``python -m model_worker serve --queue`` processes on tiny random weights,
and the bot's RedisWorkerClient: load spreads over both workers, a killed worker's job is finished by the
other, a cancel reaches the worker running the job, and a Redis outage gives clear errors, then heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import pytest

from bot.worker_client.base import WorkerInternal, WorkerUnavailable
from model_worker.wire.protocol import (
    ChatRequest,
    DoneEvent,
    FinishReason,
    RestartedEvent,
    StartedEvent,
    TokenEvent,
)
from model_worker.wire.queue_streams import DEFAULT_GROUP, DEFAULT_STREAM, QueueKeys, connect
from tests.support.queue_cluster import QueueCluster
from tests.support.redis_server import run_redis_server
from tests.support.requests import collect, one_turn

pytestmark = pytest.mark.timeout(240)


greedy = one_turn


@pytest.fixture
async def bot(queue_cluster):
    client = queue_cluster.client()
    yield client
    await client.close()


async def answer(client, request: ChatRequest) -> list:
    return await collect(client.chat(request))


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


@pytest.fixture
def crashing_cluster(tiny_weights, tmp_path, monkeypatch):
    """Two workers (restarted whenever they exit) whose process dies on any request that says "poison"."""
    monkeypatch.setenv("MINIGPT4_TEST_CRASH_ON", "poison")
    (tmp_path / "redis").mkdir()
    with run_redis_server(tmp_path / "redis") as redis, contextlib.ExitStack() as stack:
        cluster = QueueCluster(redis=redis, weights=tiny_weights, workdir=tmp_path, stack=stack,
                               module="tests.support.faulty_worker", claim_idle_ms=1000)
        for index in range(2):
            cluster.start_worker(index)
        yield cluster


async def test_a_job_that_crashes_every_worker_ends_in_the_dead_letter_stream(crashing_cluster):
    restarter = asyncio.create_task(crashing_cluster.keep_workers_running())
    bot = crashing_cluster.client(request_timeout_s=200)
    try:
        poison = greedy("poison pill", max_new_tokens=4)
        results = await asyncio.gather(answer(bot, poison),
                                       *(answer(bot, greedy(f"fine {i}", max_new_tokens=4)) for i in range(4)),
                                       return_exceptions=True)
        dead = await connect(crashing_cluster.redis.url).xrange(QueueKeys().dead)
    finally:
        restarter.cancel()
        await bot.close()
    assert isinstance(results[0], WorkerInternal), results[0]
    assert all(isinstance(events[-1], DoneEvent) for events in results[1:]), results[1:]
    assert len(dead) == 1
    entry = {key.decode(): value.decode() for key, value in dead[0][1].items()}
    assert entry["request_id"] == poison.request_id and entry["attempts"] == "3"
    assert "poison pill" in entry["request"] and "attempts" in entry["reason"]
