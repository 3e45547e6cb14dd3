"""The worker's side of the shared Redis Streams queue (``serve --queue URL``).

The consumer is one of the worker's front ends. It joins the workers' consumer group and pulls jobs only
when the scheduler says places in its running batch are free (it holds them while it fetches a job), so no
worker takes more than it can serve. Each job goes to the same scheduler the HTTP
server uses; its events are written to the request's events stream, tagged with the attempt number.
A job is acknowledged (and deleted) once it ended. Jobs whose worker went quiet for longer than
``claim_idle_ms`` are claimed by another worker and restarted from the beginning with a ``restarted``
event; a worker keeps its running jobs' pending entries fresh so that no live job is taken from it. A job is
started at most ``max_attempts`` times: one that takes its worker down every time (or fails with an
unexpected error) ends with an ``error`` event for the bot and an entry in the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from model_worker.scheduling.metrics import WorkerMetrics
from model_worker.scheduling.scheduler import Scheduler
from model_worker.scheduling.ticket import Rejected
from model_worker.wire.protocol import (
    ChatRequest,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    Event,
    ImageRef,
    QueuedEvent,
    ReadyInfo,
    RestartedEvent,
)
from model_worker.wire.queue_streams import (
    BACKLOG_SCRIPT,
    BLOCK_MS,
    DEAD_LETTER_MAXLEN,
    DEFAULT_CLAIM_IDLE_MS,
    DEFAULT_MAX_ATTEMPTS,
    EVENTS_TTL_S,
    TOUCH_SCRIPT,
    QueueKeys,
    cancelled_before_start,
    connect,
    encode_event,
)

log = logging.getLogger(__name__)

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
_ANNOUNCE_EVERY_S = 2.0
_CANCEL_CHECK_EVERY_S = 0.2
_NOT_READY_RECHECK_S = 0.1
_HANDED_BACK_IDLE_MS = 24 * 3600 * 1000  # idle beyond any --claim-idle-ms: the next look takes it


def default_consumer_name() -> str:
    """``host-pid``: unique per process, and readable in ``XINFO CONSUMERS``."""
    return f"{socket.gethostname()}-{os.getpid()}"


class _Outcome(enum.Enum):
    ENDED = "ended"  # answered (or refused) here, and acknowledged
    HAND_BACK = "hand_back"  # this worker is stopping: let another worker take the entry at once
    LOST = "lost"  # another worker claimed it meanwhile: leave the entry alone


@dataclass(eq=False)
class _Job:
    entry_id: str
    request_id: str
    request_json: bytes = b""  # as the bot queued it (kept for the dead-letter stream)
    isolated: bool = False  # taken over from a worker that went quiet: runs alone here
    attempt: int = 0
    reserved: bool = True  # holds a place in the scheduler until it is submitted or ends
    submitted: bool = False
    cancelled: bool = False
    lost: bool = False  # another worker claimed it: never acknowledge it from here


class QueueMetrics:
    """The queue's instruments, registered beside the scheduler's on the worker's registry."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        r = metrics.registry
        self.backlog = Gauge("worker_queue_backlog", "Jobs in the shared queue that no worker has taken",
                             registry=r)
        self.pulled = Counter("worker_queue_jobs_pulled", "Jobs this worker took from the shared queue",
                              registry=r)
        self.reclaimed = Counter("worker_queue_jobs_reclaimed",
                                 "Jobs this worker took over from a worker that went quiet", registry=r)
        self.reachable = Gauge("worker_queue_reachable", "1 while Redis answers, 0 while it does not",
                               registry=r)
        self.errors = metrics.errors


class RedisConsumer:
    """Feeds the scheduler from the shared queue and publishes each job's events; ``ready_info()`` is
    announced to the bots."""

    name = "redis"

    def __init__(self, url: str, *, metrics: WorkerMetrics, ready_info: Callable[[], ReadyInfo],
                 keys: QueueKeys | None = None, consumer: str | None = None,
                 claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS, events_ttl_s: int = EVENTS_TTL_S,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self._redis = redis = connect(url)
        self._metrics = QueueMetrics(metrics)
        self._ready_info = ready_info
        self._keys = keys or QueueKeys()
        self.consumer = consumer or default_consumer_name()
        self._claim_idle_ms = claim_idle_ms
        self._claim_every_s = max(0.1, min(5.0, claim_idle_ms / 2000))
        self._next_claim_at = 0.0
        self._events_ttl_s = events_ttl_s
        self._max_attempts = max_attempts
        self._touch = redis.register_script(TOUCH_SCRIPT)
        self._backlog = redis.register_script(BACKLOG_SCRIPT)
        self._jobs: dict[str, _Job] = {}  # by entry id
        self._job_ended = asyncio.Event()
        self._draining = False  # a job waits to be taken over: finish the ones here, then run it alone
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._pulling = True
        self._group_ready = False
        self._reachable = True

    # ---- life cycle ---------------------------------------------------------------------------

    def start(self, scheduler: Scheduler) -> None:
        """Start feeding ``scheduler``: pull, reclaim, watch for cancels, and announce readiness."""
        self._scheduler = scheduler
        touch_every = max(0.05, self._claim_idle_ms / 3000)
        steps: list[tuple[str, Callable[[], Awaitable[None]], float]] = [
            ("pull", self._pull_once, 0.0),
            ("cancel-watch", self._watch_cancels_once, _CANCEL_CHECK_EVERY_S),
            ("touch", self._touch_once, touch_every),
            ("announce", self._announce_once, _ANNOUNCE_EVERY_S),
        ]
        for name, step, pause in steps:
            self._loops.append(asyncio.create_task(self._forever(name, step, pause), name=f"queue-{name}"))
        log.info("queue consumer %s joined group %s on %s", self.consumer, self._keys.group, self._keys.stream)

    def stop_taking_work(self) -> None:
        """Take no new jobs (the first step of a graceful stop)."""
        self._pulling = False

    async def close(self) -> None:
        """Stop every loop; jobs still running are stopped and handed back for another worker.

        For a graceful stop call :meth:`stop_taking_work` and shut the scheduler down first: jobs that
        finish within its grace period are then answered here."""
        self._pulling = False
        tasks = [*self._loops, *self._job_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._loops:
            with contextlib.suppress(*_UNREACHABLE, ResponseError):
                await self._redis.delete(self._keys.worker(self.consumer))
            log.info("queue consumer %s stopped", self.consumer)
        await self._redis.aclose()

    # ---- the loops ----------------------------------------------------------------------------

    async def _forever(self, name: str, step: Callable[[], Awaitable[None]], pause_s: float) -> None:
        """Run one step again and again; ride out Redis outages with a growing pause."""
        backoff = 0.5
        while True:
            try:
                if not self._group_ready:
                    await self._ensure_group()
                await step()
                backoff = 0.5
            except _UNREACHABLE as exc:
                self._set_reachable(False, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.exception("queue %s step failed", name)
                self._group_ready = False  # Redis lost its data: recreate the group, then go on
                await asyncio.sleep(0.5)
                continue
            await asyncio.sleep(pause_s)

    async def _pull_once(self) -> None:
        """Take as many jobs as the batch has room for: first jobs of workers that went quiet (when a
        look is due), then new ones. One loop does both, so together they never exceed the room."""
        await self._wait_until_free_to_pull()
        room = await self._scheduler.wait_for_free_places()
        if self._pulling and not self._ready_info().ready:  # announced as not ready: take nothing yet
            await asyncio.sleep(_NOT_READY_RECHECK_S)
            return
        held = self._scheduler.reserve(room) if self._pulling else 0
        if not held:  # taking no more work: idle until close() cancels this loop
            await asyncio.get_running_loop().create_future()
        started = 0
        try:
            started = await self._take_jobs(held)
        finally:
            self._scheduler.unreserve(held - started)  # places no job came for

    async def _take_jobs(self, room: int) -> int:
        """Start up to ``room`` jobs (each holds one reserved place); returns how many were started."""
        if self._draining or time.monotonic() >= self._next_claim_at:
            self._next_claim_at = time.monotonic() + self._claim_every_s
            if self._jobs:  # a job to take over runs alone: let these finish first, taking nothing new
                self._draining = await self._claimable()
                if self._draining:
                    return 0
            else:
                self._draining = False
                if await self._reclaim():
                    return 1
        started = 0
        reply = await self._redis.xreadgroup(self._keys.group, self.consumer, {self._keys.stream: ">"},
                                             count=room - started,
                                             block=min(BLOCK_MS, int(self._claim_every_s * 1000)))
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self._metrics.pulled.inc()
                self._start_job(entry_id.decode(), fields)
                started += 1
        return started

    async def _reclaim(self) -> bool:
        """Claim one job idle longer than ``claim_idle_ms`` and run it alone; True when one was started.

        Its worker may have died because of it (a request that crashes the device): running it alone
        keeps other jobs out of its way, and the attempt limit ends it if it crashes every worker."""
        _cursor, entries, *_deleted = await self._redis.xautoclaim(
            self._keys.stream, self._keys.group, self.consumer, min_idle_time=self._claim_idle_ms,
            start_id="0-0", count=1)
        for entry_id, fields in entries:
            entry = entry_id.decode()
            if entry in self._jobs or not fields:
                continue  # one of ours that was slow to be touched, or an entry deleted meanwhile
            self._metrics.reclaimed.inc()
            log.info("took over job %s from a worker that went quiet; running it alone", entry)
            self._start_job(entry, fields, isolated=True)
            return True
        return False

    async def _claimable(self) -> bool:
        """Whether a job has been pending longer than ``claim_idle_ms`` (its worker went quiet)."""
        return bool(await self._redis.xpending_range(self._keys.stream, self._keys.group, min="-", max="+",
                                                     count=1, idle=self._claim_idle_ms))

    async def _wait_until_free_to_pull(self) -> None:
        """Take nothing new while a job taken over from a quiet worker runs here alone, or while the jobs
        here finish so that one can."""
        while self._jobs and (self._draining or any(job.isolated for job in self._jobs.values())):
            self._job_ended.clear()
            await self._job_ended.wait()

    async def _watch_cancels_once(self) -> None:
        jobs = [job for job in self._jobs.values() if job.submitted and not job.cancelled]
        if not jobs:
            return
        pipe = self._redis.pipeline(transaction=False)
        for job in jobs:
            pipe.exists(self._keys.cancel(job.request_id))
        for job, flagged in zip(jobs, await pipe.execute(), strict=True):
            if flagged:
                job.cancelled = True
                log.info("request %s: cancelled through the queue", job.request_id)
                self._scheduler.cancel(job.request_id)

    async def _touch_once(self) -> None:
        jobs = [job for job in self._jobs.values() if not job.lost]
        if not jobs:
            return
        lost = await self._touch(keys=[self._keys.stream],
                                 args=[self._keys.group, self.consumer, *(job.entry_id for job in jobs)])
        for entry_id in lost:
            job = self._jobs.get(entry_id.decode())
            if job is not None:
                job.lost = True
                log.warning("request %s: another worker took this job over; stopping here", job.request_id)
                self._scheduler.cancel(job.request_id)

    async def _announce_once(self) -> None:
        info = self._ready_info().model_copy(update={
            "consumer": self.consumer, "running": len(self._jobs), "capacity": self._scheduler.capacity})
        await self._redis.set(self._keys.worker(self.consumer), info.model_dump_json(),
                              ex=int(_ANNOUNCE_EVERY_S * 5))
        backlog = await self._backlog(keys=[self._keys.stream], args=[self._keys.group])
        self._metrics.backlog.set(int(backlog))
        self._set_reachable(True)  # this step always talks to Redis: it alone declares it back

    # ---- one job ------------------------------------------------------------------------------

    def _start_job(self, entry_id: str, fields: dict[bytes, bytes], *, isolated: bool = False) -> None:
        request_id = fields.get(b"request_id", b"?").decode(errors="replace")
        job = _Job(entry_id, request_id, request_json=fields.get(b"request", b""), isolated=isolated)
        self._jobs[entry_id] = job
        task = asyncio.create_task(self._serve(job, fields), name=f"job-{request_id}")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    async def _serve(self, job: _Job, fields: dict[bytes, bytes]) -> None:
        try:
            if await self._run_job(job, fields) is _Outcome.HAND_BACK:
                await self._hand_back(job)
        except _UNREACHABLE as exc:
            # The job stays pending in Redis (if Redis kept it) and is taken up again from there.
            log.warning("request %s: queue unreachable while serving (%s); stopping it here",
                        job.request_id, type(exc).__name__)
            self._scheduler.cancel(job.request_id)
        except asyncio.CancelledError:
            self._scheduler.cancel(job.request_id)
            with contextlib.suppress(*_UNREACHABLE, ResponseError):
                await self._hand_back(job)
            raise
        except Exception:
            log.exception("request %s: the queue consumer failed", job.request_id)
            self._scheduler.cancel(job.request_id)
        finally:
            self._jobs.pop(job.entry_id, None)
            self._job_ended.set()
            if job.reserved:
                self._scheduler.unreserve()

    async def _run_job(self, job: _Job, fields: dict[bytes, bytes]) -> _Outcome:
        """Serve one job: publish its events, and say what to do with its queue entry."""
        job.attempt = await self._begin_attempt(job.request_id)
        if job.attempt > self._max_attempts:
            reason = f"every one of its {self._max_attempts} attempts ended with its worker gone"
            return await self._give_up(job, reason, attempts=self._max_attempts)
        if job.attempt > 1:
            await self._publish(job, RestartedEvent(attempt=job.attempt))
        if await self._redis.exists(self._keys.cancel(job.request_id)):
            return await self._forward(job, [cancelled_before_start()])
        try:
            request = await self._load_request(fields)
            job.reserved = False
            ticket = self._scheduler.submit(request, reserved=True, front_end=self.name)
        except Rejected as exc:
            self._metrics.errors.labels(exc.event.code.value, self.name).inc()
            return await self._forward(job, [exc.event])
        job.submitted = True
        return await self._forward(job, ticket.events())

    async def _forward(self, job: _Job, events: AsyncIterable[Event] | Iterable[Event]) -> _Outcome:
        async for event in _aiter(events):
            if isinstance(event, QueuedEvent):
                continue  # the client reports its place in the shared queue, not in this worker's line
            if job.lost:
                return _Outcome.LOST
            if isinstance(event, ErrorEvent) and event.code is ErrorCode.SHUTTING_DOWN:
                self._pulling = False
                return _Outcome.HAND_BACK  # another worker answers it
            if isinstance(event, ErrorEvent) and event.code is ErrorCode.INTERNAL:
                return await self._give_up(job, "the worker failed while answering (its log has the details)",
                                           attempts=job.attempt, event=event)
            if isinstance(event, DoneEvent | ErrorEvent):
                await self._publish_last(job, event)
                return _Outcome.ENDED
            await self._publish(job, event)
        return _Outcome.ENDED

    async def _begin_attempt(self, request_id: str) -> int:
        key = self._keys.attempt(request_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, self._events_ttl_s)
        attempt, _ = await pipe.execute()
        return int(attempt)

    async def _load_request(self, fields: dict[bytes, bytes]) -> ChatRequest:
        """The job's request with every image's bytes fetched from Redis by hash."""
        try:
            request = ChatRequest.model_validate_json(fields[b"request"])
        except (KeyError, ValidationError):
            log.warning("a job on the queue is not a valid chat request")
            raise Rejected(ErrorEvent(code=ErrorCode.BAD_REQUEST,
                                         message="the job is not a valid chat request")) from None
        hashes = sorted(set(request.image_hashes()))
        if not hashes:
            return request
        blobs = dict(zip(hashes, await self._redis.mget([self._keys.image(h) for h in hashes]), strict=True))
        missing = [sha for sha, blob in blobs.items() if blob is None]
        if missing:
            raise Rejected(ErrorEvent(code=ErrorCode.UNKNOWN_IMAGE, hashes=missing,
                                         message="some images are no longer held; resend them with data"))
        turns = [turn.model_copy(update={"images": [
            ImageRef.from_bytes(blobs[img.sha256]) if img.sha256 else img for img in turn.images]})
            for turn in request.conversation]
        return request.model_copy(update={"conversation": turns})

    async def _publish(self, job: _Job, event: Event) -> None:
        key = self._keys.events(job.request_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(key, encode_event(job.attempt, event))
        pipe.expire(key, self._events_ttl_s)
        await pipe.execute()

    async def _publish_last(self, job: _Job, event: DoneEvent | ErrorEvent,
                            dead_letter: dict[str, str | bytes] | None = None) -> None:
        """The last event and the job's acknowledgement (and its dead-letter entry, if any) in one
        transaction: if Redis fails between them, none happened, and the job is answered again rather than
        lost or half-answered."""
        key = self._keys.events(job.request_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.xadd(key, encode_event(job.attempt, event))
        pipe.expire(key, self._events_ttl_s)
        if dead_letter is not None:
            pipe.xadd(self._keys.dead, dead_letter, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        pipe.xack(self._keys.stream, self._keys.group, job.entry_id)
        pipe.xdel(self._keys.stream, job.entry_id)
        await pipe.execute()

    async def _give_up(self, job: _Job, reason: str, *, attempts: int, event: ErrorEvent | None = None) -> _Outcome:
        """End a job that cannot be answered: the bot gets an error, the operator a dead-letter entry."""
        log.error("request %s moved to the dead-letter stream %s: %s", job.request_id, self._keys.dead, reason)
        event = event or ErrorEvent(code=ErrorCode.INTERNAL, message=f"the request could not be answered: {reason}")
        entry = {"request_id": job.request_id, "request": job.request_json, "attempts": str(attempts),
                 "reason": reason, "consumer": self.consumer}
        await self._publish_last(job, event, dead_letter=entry)
        return _Outcome.ENDED

    async def _hand_back(self, job: _Job) -> None:
        """Make an unfinished job look long idle, so another worker claims it at its next look."""
        if job.lost:
            return  # another worker owns it already
        await self._redis.xclaim(self._keys.stream, self._keys.group, self.consumer, 0, [job.entry_id],
                                 idle=_HANDED_BACK_IDLE_MS, justid=True)
        log.info("request %s: handed back to the queue", job.request_id)

    # ---- Redis housekeeping -------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._keys.stream, self._keys.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _set_reachable(self, reachable: bool, exc: BaseException | None = None) -> None:
        if reachable != self._reachable:
            if reachable:
                log.info("queue reachable again")
            else:
                log.warning("queue unreachable (%s); retrying", type(exc).__name__)
        self._reachable = reachable
        self._metrics.reachable.set(1 if reachable else 0)


async def _aiter(events: AsyncIterable[Event] | Iterable[Event]) -> AsyncIterator[Event]:
    if isinstance(events, AsyncIterable):
        async for event in events:
            yield event
    else:
        for event in events:
            yield event
