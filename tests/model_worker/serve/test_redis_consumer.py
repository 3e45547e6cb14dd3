"""The Redis queue transport on its own: the bot's RedisWorkerClient against the worker's RedisConsumer
feeding the real scheduler, over a real ``redis-server``.

The engine is the scheduler tests' deterministic echo engine (it answers the prompt's own characters), so
every expectation is computable; the same scenarios against real worker processes on tiny model weights
are in test_scaleout.py.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot.worker_client.base import UnknownImage, WorkerBusy, WorkerTimeout, WorkerUnavailable
from bot.worker_client.redis_queue import RedisWorkerClient
from model_worker.scheduling.metrics import WorkerMetrics
from model_worker.scheduling.scheduler import Scheduler
from model_worker.serve.redis_consumer import RedisConsumer
from model_worker.wire.protocol import (
    ChatRequest,
    DoneEvent,
    FinishReason,
    ImageRef,
    QueuedEvent,
    ReadyInfo,
    RestartedEvent,
    StartedEvent,
    TokenEvent,
)
from model_worker.wire.queue_streams import QueueKeys, connect
from tests.support.echo_engine import EchoEngine
from tests.support.images import png
from tests.support.redis_server import run_redis_server
from tests.support.requests import collect, one_turn

chat = functools.partial(one_turn, max_new_tokens=256)


async def ask(client: RedisWorkerClient, request: ChatRequest) -> list:
    return await collect(client.chat(request))


@pytest.fixture
def keys() -> QueueKeys:
    return QueueKeys(f"test-{uuid.uuid4().hex[:8]}:jobs")


@pytest.fixture
async def client(redis_server, keys):
    made: list[RedisWorkerClient] = []

    def make(**options) -> RedisWorkerClient:
        made.append(RedisWorkerClient(redis_server.url, stream=keys.stream, **options))
        return made[-1]

    yield make
    for each in made:
        await each.close()


class InProcessWorker:
    """The real scheduler and queue consumer around an echo engine, in this process."""

    def __init__(self, url: str, keys: QueueKeys, engine: EchoEngine, metrics: WorkerMetrics,
                 ready_info, **options) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.scheduler = Scheduler(engine, executor=self.executor, metrics=metrics)
        self.scheduler.start()
        self.consumer = RedisConsumer(url, keys=keys, metrics=metrics, ready_info=ready_info, **options)
        self.consumer.start(self.scheduler)
        self.stopped = False

    async def stop(self, *, grace_s: float = 0) -> None:
        """The order ``serve`` uses on SIGTERM: stop pulling, let the scheduler wind down, close."""
        if self.stopped:
            return
        self.stopped = True
        self.consumer.stop_taking_work()
        await self.scheduler.shutdown(grace_s=grace_s)
        await self.consumer.close()
        self.executor.shutdown()


@pytest.fixture
async def queue_worker(redis_server, keys):
    """Start in-process workers on the test's queue; all are stopped at the end."""
    running: list[InProcessWorker] = []

    def start(engine: EchoEngine | None = None, *, metrics: WorkerMetrics | None = None,
              ready_info=lambda: ReadyInfo(ready=True, model="echo"), **options) -> InProcessWorker:
        running.append(InProcessWorker(redis_server.url, keys, engine or EchoEngine(max_batch_size=2, step_s=0.002),
                                       metrics or WorkerMetrics(), ready_info, **options))
        return running[-1]

    yield start
    for worker in running:
        await worker.stop()


async def test_round_trip_streams_the_same_events_as_http(client, queue_worker):
    queue_worker()
    events = await ask(client(), chat("hello queue"))

    assert events[0] == QueuedEvent(position=1)
    assert StartedEvent() in events
    tokens = "".join(e.text for e in events if isinstance(e, TokenEvent))
    assert isinstance(events[-1], DoneEvent)
    assert events[-1].text == tokens == "hello queue"
    assert events[-1].finish_reason is FinishReason.STOP


async def test_images_travel_by_hash_and_are_stored_once(redis_server, client, queue_worker, keys):
    bot = client()
    image = png()
    request = chat("with a picture", images=[ImageRef.from_bytes(image)])
    redis = connect(redis_server.url)
    try:
        waiting = asyncio.create_task(ask(bot, request))  # no worker yet: the job stays queued
        await _until(lambda: redis.xlen(keys.stream), 1)
        [(_, fields)] = await redis.xrange(keys.stream)
        job = ChatRequest.model_validate_json(fields[b"request"])
        [ref] = job.conversation[0].images
        assert ref.data is None and ref.sha256 is not None  # the job carries the hash only
        assert await redis.get(keys.image(ref.sha256)) == image
        assert 0 < await redis.ttl(keys.image(ref.sha256)) <= 3600

        queue_worker()  # the worker fetches the bytes by hash; the echo engine decodes them
        events = await waiting
        assert events[-1].text == "with a picture"
        # Sent again by hash only, the image is found in Redis.
        again = await ask(bot, chat("again", images=[ImageRef(sha256=ref.sha256)]))
        assert again[-1].text == "again"
    finally:
        await redis.aclose()


async def test_unknown_image_hash_asks_for_the_data(client):
    with pytest.raises(UnknownImage) as caught:
        await ask(client(), chat("x", images=[ImageRef(sha256="0" * 64)]))
    assert caught.value.hashes == ["0" * 64]


async def test_shared_queue_positions_and_backpressure(client, queue_worker):
    bot = client(max_queue=2)
    first = bot.chat(chat("one"))
    second = bot.chat(chat("two"))
    assert await anext(first) == QueuedEvent(position=1)
    assert await anext(second) == QueuedEvent(position=2)
    with pytest.raises(WorkerBusy):
        await ask(bot, chat("three"))

    queue_worker()
    rest_first = [e async for e in first]
    rest_second = [e async for e in second]
    assert rest_first[-1].text == "one" and rest_second[-1].text == "two"


async def test_a_full_queue_refuses_a_job_before_its_images_are_uploaded(redis_server, client, keys):
    bot = client(max_queue=1)
    waiting = bot.chat(chat("first"))
    assert await anext(waiting) == QueuedEvent(position=1)
    image = png("teal")
    with pytest.raises(WorkerBusy):
        await ask(bot, chat("second", images=[ImageRef.from_bytes(image)]))
    stored = connect(redis_server.url)
    assert not await stored.exists(keys.image(hashlib.sha256(image).hexdigest()))
    assert await stored.zcard(keys.reservations) == 0  # the place the first job held was used, none is left
    await stored.aclose()
    await waiting.aclose()


async def test_a_worker_pulls_only_when_ready_and_reports_the_backlog(client, queue_worker):
    loading = {"ready": False}
    metrics = WorkerMetrics()
    queue_worker(metrics=metrics, ready_info=lambda: ReadyInfo(ready=loading["ready"], model="echo"))
    bot = client()
    streams = [bot.chat(chat(f"job {i}")) for i in range(2)]
    assert [(await anext(s)).position for s in streams] == [1, 2]
    await _until(lambda: _backlog(metrics), 2.0)  # nothing taken while the worker is not ready

    loading["ready"] = True
    answers = [[e async for e in s][-1].text for s in streams]
    assert answers == ["job 0", "job 1"]
    await _until(lambda: _backlog(metrics), 0.0)


async def _backlog(metrics: WorkerMetrics) -> float:
    return metrics.registry.get_sample_value("worker_queue_backlog")


async def test_cancel_before_any_worker_takes_the_job(redis_server, client, keys):
    bot = client()
    stream = bot.chat(chat("never runs", request_id="cancel-me"))
    assert await anext(stream) == QueuedEvent(position=1)
    await bot.cancel("cancel-me")
    rest = [e async for e in stream]
    assert isinstance(rest[-1], DoneEvent) and rest[-1].finish_reason is FinishReason.CANCELLED
    redis = connect(redis_server.url)
    try:
        assert await redis.xlen(keys.stream) == 0  # withdrawn: no worker will ever see it
    finally:
        await redis.aclose()


async def test_cancel_reaches_the_worker_running_the_job(client, queue_worker):
    queue_worker(EchoEngine(max_batch_size=1, step_s=0.01))
    bot = client()
    events = []
    async for event in bot.chat(chat("z" * 2000, request_id="long")):
        events.append(event)
        if isinstance(event, TokenEvent):
            await bot.cancel("long")
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.finish_reason is FinishReason.CANCELLED
    assert 0 < len(done.text) < 2000


async def test_takeover_ignores_the_superseded_attempt(client, queue_worker):
    # Worker A refreshes its claim too rarely (as if stalled), so B takes the job over while A still
    # streams: the client must show B's restarted answer only, never A's late tokens.
    queue_worker(EchoEngine(max_batch_size=1, step_s=0.03), claim_idle_ms=600_000)
    bot = client()
    events, text = [], "takeover " * 8
    async for event in bot.chat(chat(text)):
        events.append(event)
        if len(events) == 3:  # queued, started, first token from A
            queue_worker(EchoEngine(max_batch_size=1, step_s=0.01), claim_idle_ms=300)
    restart = next(i for i, e in enumerate(events) if isinstance(e, RestartedEvent))
    after = events[restart + 1:]
    assert events[restart].attempt == 2
    assert after[-1].text == "".join(e.text for e in after if isinstance(e, TokenEvent)) == text
    assert sum(isinstance(e, DoneEvent) for e in events) == 1


async def test_a_stopping_worker_hands_its_job_to_another(client, queue_worker):
    first = queue_worker(EchoEngine(max_batch_size=1, step_s=0.03))
    bot = client()
    events, text = [], "handed over " * 6
    async for event in bot.chat(chat(text)):
        events.append(event)
        if len(events) == 3:  # queued, started, first token: stop the worker that has the job
            await first.stop(grace_s=0)
            # A long claim time: only the hand-back lets this worker take the job within the test.
            queue_worker(EchoEngine(max_batch_size=1, step_s=0.002), claim_idle_ms=600_000)
    restart = next(i for i, e in enumerate(events) if isinstance(e, RestartedEvent))
    assert events[restart + 1:][-1].text == text
    assert sum(isinstance(e, DoneEvent) for e in events) == 1


async def test_timeout_withdraws_the_job(redis_server, client, keys):
    with pytest.raises(WorkerTimeout):
        await ask(client(request_timeout_s=0.5), chat("nobody serves this"))
    redis = connect(redis_server.url)
    try:
        assert await redis.xlen(keys.stream) == 0
    finally:
        await redis.aclose()


async def test_ready_reports_connected_workers(client, queue_worker):
    bot = client()
    assert (await bot.ready()).ready is False
    queue_worker()
    info = await _until_ready(bot)
    assert info.model == "echo"


async def test_redis_outage_gives_clear_errors_then_recovers(redis_server, client, queue_worker):
    queue_worker()
    bot = client()
    assert (await ask(bot, chat("before")))[-1].text == "before"
    redis_server.stop()
    try:
        with pytest.raises(WorkerUnavailable):
            await ask(bot, chat("during"))
        with pytest.raises(WorkerUnavailable):
            await bot.ready()
    finally:
        redis_server.start()
    # Redis came back empty: the worker recreates the group, the client reconnects by itself.
    events = await asyncio.wait_for(_retry_until_served(bot, "after"), 30)
    assert events[-1].text == "after"


async def test_jobs_given_up_during_an_outage_are_cancelled_once_redis_is_back(tmp_path, keys):
    # A Redis with persistence keeps queued jobs across a restart: the bot must not leave the ones its
    # users were told had failed to be answered for nobody.
    with run_redis_server(tmp_path, appendonly=True) as redis_server:
        bot = RedisWorkerClient(redis_server.url, stream=keys.stream)
        redis = connect(redis_server.url)
        try:
            waiting = bot.chat(chat("lost in the outage", request_id="abandoned"))
            assert await anext(waiting) == QueuedEvent(position=1)
            redis_server.stop()
            with pytest.raises(WorkerUnavailable):
                await anext(waiting)
            redis_server.start()
            assert await redis.exists(keys.cancel("abandoned")) == 0 and await redis.xlen(keys.stream) == 1

            fresh = bot.chat(chat("after the outage"))
            assert await anext(fresh) == QueuedEvent(position=1)  # the abandoned job was withdrawn
            assert await redis.exists(keys.cancel("abandoned")) == 1
            await fresh.aclose()
        finally:
            await bot.close()
            await redis.aclose()


async def _retry_until_served(bot: RedisWorkerClient, text: str) -> list:
    while True:
        try:
            return await ask(bot, chat(text))
        except WorkerUnavailable:
            await asyncio.sleep(0.2)


async def _until_ready(bot: RedisWorkerClient) -> ReadyInfo:
    for _ in range(100):
        info = await bot.ready()
        if info.ready:
            return info
        await asyncio.sleep(0.05)
    raise AssertionError("no worker announced itself")


async def _until(read, expected) -> None:
    for _ in range(300):
        if await read() == expected:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never reached {expected!r}")
