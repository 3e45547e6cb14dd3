"""The worker client for several workers sharing a Redis Streams queue (``QUEUE_URL``).

Each request becomes one job on the shared stream, with images replaced by their SHA-256 (the bytes are
stored once in Redis with a time-to-live). Whichever worker takes the job writes its events to a
per-request stream, which this client reads back and yields as the same typed events as the HTTP client:
``queued`` (with the place in the shared queue), ``started``, ``restarted`` (another worker took over),
``token``..., ``done``; ``error`` events are raised as :class:`~bot.worker_client.base.WorkerError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.worker_client.base import (
    BadImage,
    UnknownImage,
    WorkerBusy,
    WorkerInternal,
    WorkerTimeout,
    WorkerUnavailable,
    error_from_event,
)
from model_worker.wire.protocol import (
    BUSY_RETRY_AFTER_S,
    DEFAULT_MAX_QUEUE,
    DEFAULT_REQUEST_TIMEOUT_S,
    ChatRequest,
    DoneEvent,
    ErrorEvent,
    Event,
    ImageRef,
    QueuedEvent,
    ReadyInfo,
    Turn,
)
from model_worker.wire.queue_streams import (
    BACKLOG_SCRIPT,
    BLOCK_MS,
    DEFAULT_GROUP,
    DEFAULT_STREAM,
    ENQUEUE_SCRIPT,
    EVENTS_TTL_S,
    IMAGE_TTL_S,
    POSITION_SCRIPT,
    RESERVATION_TTL_MS,
    RESERVE_SCRIPT,
    WITHDRAW_SCRIPT,
    QueueKeys,
    cancelled_before_start,
    connect,
    decode_event,
    encode_event,
)

log = logging.getLogger(__name__)

_UNREACHABLE = "the job queue cannot be reached"
_LOST = "the job queue lost this request (Redis restarted); please try again"


class RedisWorkerClient:
    """:class:`~bot.worker_client.base.WorkerClient` over a Redis Streams consumer group."""

    def __init__(self, url: str, *, stream: str = DEFAULT_STREAM, group: str = DEFAULT_GROUP,
                 max_queue: int = DEFAULT_MAX_QUEUE, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                 image_ttl_s: int = IMAGE_TTL_S, events_ttl_s: int = EVENTS_TTL_S,
                 busy_retry_after_s: float = BUSY_RETRY_AFTER_S) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._redis = connect(url)
        self._keys = QueueKeys(stream, group)
        self._max_queue = max_queue
        self._timeout_s = request_timeout_s
        self._image_ttl_s = image_ttl_s
        self._events_ttl_s = events_ttl_s
        self._busy_retry_after_s = busy_retry_after_s
        self._reserve_place = self._redis.register_script(RESERVE_SCRIPT)
        self._enqueue = self._redis.register_script(ENQUEUE_SCRIPT)
        self._position = self._redis.register_script(POSITION_SCRIPT)
        self._withdraw = self._redis.register_script(WITHDRAW_SCRIPT)
        self._backlog = self._redis.register_script(BACKLOG_SCRIPT)
        self._entries: dict[str, str] = {}  # request id -> its job's entry id, while this client waits
        # Jobs given up while Redis was unreachable (request id -> entry id): cancelled once it answers,
        # so that a Redis that kept its data (AOF) does not have them answered for nobody.
        self._abandoned: dict[str, str | None] = {}

    # ---- WorkerClient -------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        """Enqueue the request and stream its events (see the module docstring)."""
        try:
            async for event in self._chat(request):
                yield event
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("queue unreachable during request %s: %s", request.request_id, type(exc).__name__)
            raise WorkerUnavailable(_UNREACHABLE) from None
        except ResponseError:
            log.exception("queue refused a command for request %s", request.request_id)
            raise WorkerInternal("the job queue refused the request") from None

    async def cancel(self, request_id: str) -> None:
        """Stop the job wherever it is: taken back from the queue if no worker has it yet, otherwise
        flagged so the worker running it stops at its next step (it then sends ``done``/cancelled).
        A no-op when the job already ended or Redis cannot be reached."""
        await self._cancel(request_id, self._entries.get(request_id))

    async def ready(self) -> ReadyInfo:
        """Ready when at least one worker that is ready is connected to the queue."""
        try:
            workers = await self._worker_infos()
            backlog = int(await self._backlog(keys=[self._keys.stream], args=[self._keys.group]))
        except RedisError as exc:
            log.warning("queue unreachable for readiness: %s", type(exc).__name__)
            raise WorkerUnavailable(_UNREACHABLE) from None
        ready = [info for info in workers if info.ready]
        if not ready:
            progress = "no worker is connected to the queue" if not workers else workers[0].progress
            return ReadyInfo(ready=False, progress=progress, workers=len(workers), backlog=backlog)
        first = ready[0]
        batch = sum(info.max_batch_size or 0 for info in ready) or None
        return ReadyInfo(ready=True, model=first.model, device=first.device, dtype=first.dtype,
                         max_batch_size=batch, max_queue=self._max_queue, workers=len(workers),
                         ready_workers=len(ready), backlog=backlog)

    async def close(self) -> None:
        await self._redis.aclose()

    # ---- one request --------------------------------------------------------------------------

    async def _chat(self, request: ChatRequest) -> AsyncIterator[Event]:
        rid = request.request_id
        for abandoned_rid, abandoned_entry in list(self._abandoned.items()):
            if not await self._cancel(abandoned_rid, abandoned_entry):
                break
        await self._reserve(rid)
        try:
            entry_id, position = await self._submit(await self._store_images(request))
        except BaseException:
            await self._unreserve(rid)
            raise
        self._entries[rid] = entry_id
        ended = False  # by a done or error event; a timeout or a caller leaving early cancels the job
        try:
            yield QueuedEvent(position=position)
            async for event in self._follow(rid, entry_id, position):
                ended = isinstance(event, DoneEvent | ErrorEvent)
                if isinstance(event, ErrorEvent):
                    raise error_from_event(event)
                yield event
        finally:
            await self._clean_up(rid, ended=ended)
            self._entries.pop(rid, None)

    async def _store_images(self, request: ChatRequest) -> ChatRequest:
        """Store each image once by content hash (refreshing its time-to-live) and return the request
        with hash references only; raise :class:`UnknownImage` for a hash that Redis does not hold."""
        uploads: dict[str, bytes] = {}
        turns = [self._turn_with_hashes(turn, uploads) for turn in request.conversation]
        hashes = sorted({img.sha256 for turn in turns for img in turn.images})
        if not hashes:
            return request
        pipe = self._redis.pipeline(transaction=False)
        for sha in hashes:
            pipe.expire(self._keys.image(sha), self._image_ttl_s)
        held = dict(zip(hashes, await pipe.execute(), strict=True))
        unknown = [sha for sha in hashes if not held[sha] and sha not in uploads]
        if unknown:
            raise UnknownImage("some images are no longer held; resend them with data", hashes=unknown)
        missing = [sha for sha in hashes if not held[sha]]
        if missing:
            pipe = self._redis.pipeline(transaction=False)
            for sha in missing:
                pipe.set(self._keys.image(sha), uploads[sha], ex=self._image_ttl_s)
            await pipe.execute()
        return request.model_copy(update={"conversation": turns})

    @staticmethod
    def _turn_with_hashes(turn: Turn, uploads: dict[str, bytes]) -> Turn:
        if not turn.images:
            return turn
        images = []
        for image in turn.images:
            if image.sha256 is not None:
                images.append(image)
                continue
            try:
                data = image.decode()
            except ValueError as exc:
                raise BadImage(str(exc)) from None
            sha = hashlib.sha256(data).hexdigest()
            uploads[sha] = data
            images.append(ImageRef(sha256=sha))
        return turn.model_copy(update={"images": images})

    async def _reserve(self, rid: str) -> None:
        """Hold a place in the shared queue before any image is uploaded; :class:`WorkerBusy` when full."""
        keys = self._keys
        held, count = await self._reserve_place(keys=[keys.stream, keys.reservations],
                                                args=[keys.group, self._max_queue, rid, RESERVATION_TTL_MS])
        if held is None:
            self._refuse_busy(rid, count)

    async def _unreserve(self, rid: str) -> None:
        with contextlib.suppress(RedisError):
            await self._redis.zrem(self._keys.reservations, rid)

    async def _submit(self, job: ChatRequest) -> tuple[str, int]:
        """Put the job on the shared stream (using its reservation); :class:`WorkerBusy` when full."""
        keys, rid = self._keys, job.request_id
        entry_id, count = await self._enqueue(
            keys=[keys.stream, keys.reservations, keys.events(rid), keys.cancel(rid), keys.attempt(rid)],
            args=[keys.group, self._max_queue, rid, job.model_dump_json(exclude_none=True)],
        )
        if entry_id is None:
            self._refuse_busy(rid, count)
        return entry_id.decode(), int(count)

    def _refuse_busy(self, rid: str, waiting: int) -> None:
        log.info("shared queue full (%d waiting or held): request %s refused", waiting, rid)
        raise WorkerBusy("the shared queue is full", retry_after=self._busy_retry_after_s)

    async def _follow(self, rid: str, entry_id: str, position: int) -> AsyncIterator[Event]:
        """Read the job's events up to ``done`` or ``error``; while no worker has it, report its place
        in the shared queue."""
        deadline = time.monotonic() + self._timeout_s
        cursor, attempt, taken = "0-0", 0, False
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise WorkerTimeout("no answer within the time limit")
            reply = await self._redis.xread({self._keys.events(rid): cursor}, count=64,
                                            block=max(1, min(BLOCK_MS, remaining_ms)))
            if not reply:
                if not taken:
                    taken, position, moved = await self._check_position(entry_id, position)
                    if moved:
                        yield QueuedEvent(position=position)
                continue
            for cursor_bytes, fields in reply[0][1]:
                cursor = cursor_bytes.decode()
                event_attempt, event = _decode(rid, fields)
                if event is None or event_attempt < attempt:
                    continue  # malformed, or from a superseded attempt
                attempt, taken = event_attempt, True
                yield event
                if isinstance(event, DoneEvent | ErrorEvent):
                    return

    async def _check_position(self, entry_id: str, position: int) -> tuple[bool, int, bool]:
        """``(taken by a worker, place in the queue, place changed)``."""
        now = int(await self._position(keys=[self._keys.stream], args=[self._keys.group, entry_id]))
        if now < 0:
            raise WorkerUnavailable(_LOST)
        if now == 0:
            return True, position, False
        return False, now, now != position

    async def _cancel(self, rid: str, entry_id: str | None) -> bool:
        """Flag the job cancelled and withdraw it if no worker has it; False when Redis did not answer
        (the job is then remembered and cancelled at the next request)."""
        keys = self._keys
        try:
            await self._redis.set(keys.cancel(rid), 1, ex=self._events_ttl_s)
            if entry_id and await self._withdraw(keys=[keys.stream], args=[keys.group, entry_id]):
                await self._publish_own_cancel(rid)
        except RedisError as exc:
            log.warning("could not cancel request %s: %s", rid, type(exc).__name__)
            self._abandoned[rid] = entry_id
            return False
        self._abandoned.pop(rid, None)
        return True

    async def _publish_own_cancel(self, rid: str) -> None:
        """A job withdrawn before any worker took it gets its ``done`` from here (no worker will)."""
        key = self._keys.events(rid)
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(key, encode_event(1, cancelled_before_start()))
        pipe.expire(key, self._events_ttl_s)
        await pipe.execute()

    async def _clean_up(self, rid: str, *, ended: bool) -> None:
        """A request left before its end (timeout, caller gone) is cancelled; an ended one's keys go."""
        if not ended:
            await self.cancel(rid)
            return
        try:
            await self._redis.delete(self._keys.events(rid), self._keys.cancel(rid))
        except RedisError:
            pass  # nothing more to do: the keys expire by themselves

    async def _worker_infos(self) -> list[ReadyInfo]:
        keys = [key async for key in self._redis.scan_iter(match=self._keys.worker_pattern, count=100)]
        values = await self._redis.mget(keys) if keys else []
        infos = []
        for key, value in zip(keys, values, strict=True):
            if not value:
                continue  # expired between the scan and the read
            try:
                infos.append(ReadyInfo.model_validate_json(value))
            except ValidationError:
                log.warning("ignored the worker announcement %s: not the readiness JSON this bot expects",
                            key.decode(errors="replace"))
        return infos


def _decode(rid: str, fields: dict[bytes, bytes]) -> tuple[int, Event | None]:
    try:
        return decode_event(fields)
    except (KeyError, ValueError):
        log.warning("request %s: ignored a malformed event", rid)
        return 0, None
