"""The scheduler: the one place that decides what runs on the device, and when.

Requests wait in a bounded, per-user round-robin line; up to ``engine.max_batch_size`` sequences run
together. Each iteration of the loop prefills the newly admitted sequences and then advances every
running sequence with ``engine.decode`` calls (one per step, for the whole batch) in bursts on the
engine thread. Cancellations and deadlines take effect between bursts. Prefill, decode and release run
on one dedicated engine thread (the executor passed in); ``engine.prepare`` (tokenizing, fitting the
context, decoding images) runs on threads of its own, so requests are prepared while the batch decodes.
The event loop stays free to stream tokens and answer health checks.

The engine is kept busy: when a burst ends with nothing for the loop to decide (no arrival, cancellation,
deadline or place to fill), the next burst starts at once and the loop streams what the last one produced
while it runs. Text goes out once per burst per request (a burst is at most ``decode_burst_s``), not once
per token.

Each request is a :class:`Ticket` whose :meth:`Ticket.events` the HTTP layer streams to the client:
``queued`` (again whenever the position changes), ``started``, ``token``..., then ``done`` or ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from model_worker.engine.sequence import Engine, EngineError, Sequence
from model_worker.scheduling.fair_queue import FairQueue
from model_worker.scheduling.metrics import WorkerMetrics
from model_worker.scheduling.ticket import (
    UNNAMED_FRONT_END,
    Rejected,
    Stop,
    Ticket,
    reserved_tokens,
    timings,
)
from model_worker.wire.protocol import (
    BUSY_RETRY_AFTER_S,
    DEFAULT_MAX_QUEUE,
    DEFAULT_REQUEST_TIMEOUT_S,
    ChatRequest,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    FinishReason,
    QueuedEvent,
    StartedEvent,
    TokenEvent,
    Usage,
)

log = logging.getLogger(__name__)
R = TypeVar("R")

_INTERNAL_MESSAGE = "the worker failed while answering; its log has the details"



_ARRIVAL_QUIET_S = 0.003  # no new request for this long: the arrivals have settled
#: Threads that prepare requests (tokenizing, decoding and preprocessing images); mostly GIL-free work.
PREPARE_THREADS = 2


@dataclass(frozen=True)
class SchedulerLimits:
    """Admission limits (the batch size itself comes from the engine)."""

    max_queue: int = DEFAULT_MAX_QUEUE  # requests waiting (or being prepared) beyond the running batch
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S  # from submission to the done event
    busy_retry_after_s: float = BUSY_RETRY_AFTER_S  # the hint sent with ``busy``
    max_tokens_in_flight: int | None = None  # running prompts + their max_new_tokens; None: no limit
    # Decode steps run back to back on the engine thread for up to this long, unless a request arrives,
    # is cancelled, or finishes: fewer thread hops and token events per token, same answers.
    decode_burst_s: float = 0.02
    arrival_window_s: float = 0.05  # when idle, how long the first arrival waits for company
    # The watchdog: an engine call (or a request's preparation) running longer than this makes the worker
    # unhealthy (None: never).
    step_timeout_s: float | None = None


class Scheduler:
    """Owns the waiting line, the running batch, and the loop that steps the engine."""

    def __init__(self, engine: Engine, *, executor: Executor, metrics: WorkerMetrics,
                 limits: SchedulerLimits = SchedulerLimits(), prepare_executor: Executor | None = None) -> None:
        """``executor`` runs every engine step (one thread); ``prepare_executor`` runs ``engine.prepare``
        (default: :data:`PREPARE_THREADS` threads of the scheduler's own, stopped at shutdown)."""
        self._engine = engine
        self._executor = executor
        self._own_prepare_executor = prepare_executor is None
        self._prepare_executor = prepare_executor or ThreadPoolExecutor(max_workers=PREPARE_THREADS,
                                                                        thread_name_prefix="prepare")
        self._metrics = metrics
        self._limits = limits
        self._waiting: FairQueue[Ticket] = FairQueue(key=lambda ticket: ticket.user)
        self._running: list[Ticket] = []
        self._tickets: dict[str, Ticket] = {}  # every ticket not yet ended, by request id
        self._preparing = 0
        self._reserved = 0  # places held by front ends for requests they are about to submit
        self._place_freed = asyncio.Event()  # set whenever free_places may have grown
        self._accepting = True
        self._stopping = False
        self._wakeup = asyncio.Event()
        self._last_arrival = 0.0
        self._interrupt = threading.Event()  # ends a decode burst early (read on the engine thread)
        self._idle = asyncio.Event()  # set while nothing is waiting, being prepared or running
        self._idle.set()
        self._background: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._engine_busy_since: float | None = None  # written on the engine thread, read by the watchdog
        self._preparing_since: dict[int, float] = {}  # prepare thread -> start of its call, for the watchdog
        self._preparing_lock = threading.Lock()

    # ---- public API ---------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        return len(self._waiting) + self._preparing

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def capacity(self) -> int:
        """Sequences the running batch holds at most."""
        return self._engine.max_batch_size

    @property
    def free_places(self) -> int:
        """Places in the running batch that nothing running, waiting, being prepared or reserved claims."""
        taken = len(self._running) + self.queue_depth + self._reserved
        return max(0, self.capacity - taken) if self._accepting else 0

    async def wait_for_free_places(self) -> int:
        """Wait until a place in the running batch is free and return how many are; 0 once the scheduler
        takes no more work (shutdown). Front ends that pull work (the queue consumer) take only this many."""
        while self._accepting and self.free_places <= 0:
            self._place_freed.clear()
            await self._place_freed.wait()
        return self.free_places

    def reserve(self, count: int) -> int:
        """Hold up to ``count`` free places for requests about to be submitted (``submit(...,
        reserved=True)``); returns how many were held. Give back unused ones with :meth:`unreserve`."""
        held = min(count, self.free_places)
        self._reserved += held
        return held

    def unreserve(self, count: int = 1) -> None:
        """Give back reserved places that will not be submitted."""
        self._reserved -= min(count, self._reserved)
        self._place_freed.set()

    def start(self) -> None:
        """Start the scheduling loop on the running event loop."""
        self._loop_task = asyncio.create_task(self._run(), name="scheduler")

    def stalled(self) -> str | None:
        """Why the worker is unhealthy: the engine call now running, or a request's preparation, has exceeded
        the step timeout. None while healthy (idle, or within the limit)."""
        limit = self._limits.step_timeout_s
        with self._preparing_lock:
            preparing = min(self._preparing_since.values(), default=None)
        for since, what in ((self._engine_busy_since, "an engine step"), (preparing, "preparing a request")):
            running = time.monotonic() - since if since is not None else 0.0
            if limit is not None and running > limit:
                return f"{what} has been running for {running:.0f} s (the limit is {limit:g} s)"
        return None

    def check_room(self) -> None:
        """Raise :class:`Rejected` now when a new request could not be taken (shutting down, queue full):
        front ends call it before reading a request's body."""
        if not self._accepting:
            self._reject(ErrorCode.SHUTTING_DOWN, "the worker is shutting down; try again shortly")
        if self.queue_depth >= self._limits.max_queue:
            self._reject(ErrorCode.BUSY, "the worker's queue is full", retry_after=self._limits.busy_retry_after_s)

    def submit(self, request: ChatRequest, *, reserved: bool = False,
               front_end: str = UNNAMED_FRONT_END) -> Ticket:
        """Accept a request, or raise :class:`Rejected` at once (``busy`` when the line is full).
        ``reserved``: the request uses a place held with :meth:`reserve` (given back either way).
        ``front_end``: the name the metrics give the request's front end.

        The prompt is prepared on a prepare thread in the background; a bad image or an over-long
        context then ends the ticket with an ``error`` event.
        """
        if reserved:
            self.unreserve()
        self._check_admissible(request)
        now = self._last_arrival = time.monotonic()
        ticket = Ticket(request, submitted_at=now, deadline=now + self._limits.request_timeout_s,
                        front_end=front_end)
        self._tickets[ticket.request_id] = ticket
        self._preparing += 1
        self._update_gauges()
        self._spawn(self._prepare(ticket))
        return ticket

    def cancel(self, request_id: str) -> bool:
        """Stop a request at the next step boundary (it ends with ``done``/``cancelled``).

        Returns False when no such request is waiting or running."""
        ticket = self._tickets.get(request_id)
        if ticket is None:
            return False
        self._request_stop(ticket, Stop.CANCEL)
        return True

    async def shutdown(self, *, grace_s: float) -> None:
        """Stop taking work: waiting requests end with ``shutting_down``, running ones may finish
        for ``grace_s`` seconds and are then stopped; the loop ends."""
        self._accepting = False
        self._place_freed.set()  # wakes front ends waiting for a place: there will be none
        for ticket in list(self._waiting):
            self._request_stop(ticket, Stop.SHUTDOWN)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s)
        for ticket in list(self._tickets.values()):
            self._request_stop(ticket, Stop.SHUTDOWN)
        self._stopping = True
        self._poke()
        if self._loop_task is not None:
            await self._loop_task
        # Requests still being prepared end with ``shutting_down`` once their prepare step returns.
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._own_prepare_executor:
            self._prepare_executor.shutdown(wait=False)

    # ---- admission ----------------------------------------------------------------------------

    def _check_admissible(self, request: ChatRequest) -> None:
        self.check_room()
        if request.request_id in self._tickets:
            self._reject(ErrorCode.BAD_REQUEST, f"request_id {request.request_id!r} is already in use")

    @staticmethod
    def _reject(code: ErrorCode, message: str, **extra: Any) -> None:
        raise Rejected(ErrorEvent(code=code, message=message, **extra))

    async def _prepare(self, ticket: Ticket) -> None:
        try:
            loop = asyncio.get_running_loop()
            ticket.seq = await loop.run_in_executor(self._prepare_executor, self._watched_prepare, ticket.request)
        except Exception as exc:
            self._fail([ticket], exc, step="prepare")
        else:
            if ticket.stop is not None or not self._accepting:
                self._end(ticket, self._stop_event(ticket, ticket.stop or Stop.SHUTDOWN))
            else:
                self._waiting.push(ticket)
                self._publish_positions()
                self._poke()
        finally:
            self._preparing -= 1
            self._update_gauges()

    def _request_stop(self, ticket: Ticket, cause: Stop) -> None:
        if ticket.ended:
            return
        ticket.stop = ticket.stop or cause
        if self._waiting.remove(ticket):
            self._end(ticket, self._stop_event(ticket, ticket.stop))
            self._publish_positions()
        self._poke()  # running tickets stop at the loop's next step

    def _publish_positions(self) -> None:
        for position, ticket in enumerate(self._waiting, start=1):
            if ticket.position != position:
                ticket.position = position
                ticket.put(QueuedEvent(position=position))

    # ---- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping or self._running:
            if not self._running and not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
                await self._let_arrivals_settle()
                continue
            try:
                await self._step()
            except Exception as exc:  # a bug here must not leave every client hanging
                self._fail(list(self._running), exc, step="scheduling")
            self._update_gauges()
            await asyncio.sleep(0)  # let the HTTP layer flush tokens between steps

    async def _let_arrivals_settle(self) -> None:
        """Requests often arrive together (a busy channel, the next turns of several threads): when the
        first wakes an idle loop, wait while others are still arriving or being prepared (briefly, at
        most ``arrival_window_s``) so that they are prefilled as one batch and decode in step."""
        deadline = time.monotonic() + self._limits.arrival_window_s
        while True:
            now = time.monotonic()
            settled_at = deadline if self._preparing else min(deadline, self._last_arrival + _ARRIVAL_QUIET_S)
            if now >= settled_at:
                return
            self._wakeup.clear()  # a finished preparation pokes it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), settled_at - now)

    async def _step(self) -> None:
        # What pokes the loop from here on (an arrival prepared during the prefill below, a cancel) ends
        # the next decode burst at once; what poked it before is handled by this step.
        self._interrupt.clear()
        self._drop_stopped_and_expired()
        admitted = self._admit()
        if admitted:
            await self._prefill(admitted)
        if self._running:
            await self._decode()

    def _drop_stopped_and_expired(self) -> None:
        now = time.monotonic()
        for ticket in list(self._running) + list(self._waiting):
            if ticket.stop is not None:
                self._waiting.remove(ticket)
                self._end(ticket, self._stop_event(ticket, ticket.stop))
            elif now >= ticket.deadline:
                self._waiting.remove(ticket)
                self._end(ticket, ErrorEvent(code=ErrorCode.TIMEOUT,
                                             message="the request took longer than the worker's time limit"))
        self._publish_positions()

    def _admit(self) -> list[Ticket]:
        admitted: list[Ticket] = []
        while (self._waiting and len(self._running) + len(admitted) < self._engine.max_batch_size
               and self._fits_in_flight(admitted)):
            ticket = self._waiting.pop()
            ticket.admitted_at = time.monotonic()
            ticket.position = None
            ticket.put(StartedEvent())
            self._metrics.queue_wait.observe(ticket.admitted_at - ticket.submitted_at)
            admitted.append(ticket)
        if admitted:
            self._running.extend(admitted)
            self._publish_positions()
        return admitted

    def _fits_in_flight(self, admitted: list[Ticket]) -> bool:
        """Whether the next waiting request fits the tokens-in-flight limit (always, into an empty batch)."""
        limit = self._limits.max_tokens_in_flight
        if limit is None or not (self._running or admitted):
            return True
        reserved = sum(reserved_tokens(t) for t in (*self._running, *admitted))
        return reserved + reserved_tokens(next(iter(self._waiting))) <= limit

    async def _prefill(self, tickets: list[Ticket]) -> None:
        started = time.monotonic()
        try:
            await self._call_engine(self._engine.prefill, [t.seq for t in tickets])
        except Exception as exc:
            # Which sequences the engine got through is unknown, so none can be resumed safely.
            self._fail(tickets, exc, step="prefill")
            return
        elapsed = time.monotonic() - started
        for ticket in tickets:
            ticket.prefill_s = elapsed
            self._metrics.prompt_tokens.inc(ticket.seq.prompt_tokens)
        self._forward_progress(tickets)

    async def _decode(self) -> None:
        batch = list(self._running)
        burst = self._start_burst(batch)
        while True:
            try:
                steps, rows = await burst
            except Exception as exc:
                self._fail(batch, exc, step="decode")
                return
            for _ in range(steps):
                self._metrics.batch_size.observe(rows)
            going_on = [t for t in batch if not t.ended and not t.seq.finished]
            if not self._may_go_on(going_on):
                self._forward_progress(batch)
                return
            burst = self._start_burst(going_on)  # the engine decodes on while this loop streams
            self._forward_progress(batch)
            batch = going_on

    def _start_burst(self, batch: list[Ticket]) -> asyncio.Future[tuple[int, int]]:
        return asyncio.get_running_loop().run_in_executor(self._executor, self._watched, self._decode_burst,
                                                          [t.seq for t in batch])

    def _may_go_on(self, batch: list[Ticket]) -> bool:
        """Whether the next burst may start at once with ``batch``: nothing arrived, was cancelled or
        expired, no waiting request can take a freed place, and the scheduler is not stopping."""
        if not batch or self._interrupt.is_set() or self._stopping:
            return False
        if self._waiting and len(batch) < self._engine.max_batch_size:
            return False
        now = time.monotonic()
        return all(t.stop is None and now < t.deadline for t in batch)

    def _decode_burst(self, seqs: list[Sequence]) -> tuple[int, int]:
        """On the engine thread: decode steps until one sequence finishes, the loop is poked (arrival,
        cancel, shutdown) or the burst time is up. Returns the number of steps and of sequences."""
        deadline = time.monotonic() + self._limits.decode_burst_s
        running = [seq for seq in seqs if not seq.finished]
        steps = 0
        while running:
            self._engine.decode(running)
            steps += 1
            if (self._interrupt.is_set() or any(seq.finished for seq in running)
                    or time.monotonic() >= deadline):
                break
        return steps, len(running)

    def _poke(self) -> None:
        """Wake the loop, and end a running decode burst at its next step."""
        self._wakeup.set()
        self._interrupt.set()

    def _forward_progress(self, tickets: list[Ticket]) -> None:
        """Send each ticket's new text as a ``token`` event; end the finished ones with ``done``."""
        for ticket in tickets:
            if ticket.ended:
                continue
            self._send_delta(ticket)
            new_tokens = len(ticket.seq.output_ids) - ticket.counted_tokens
            self._metrics.tokens.inc(new_tokens)
            ticket.counted_tokens += new_tokens
            if ticket.seq.finished:
                self._end(ticket, self._done_event(ticket, ticket.seq.finish_reason))

    def _send_delta(self, ticket: Ticket) -> None:
        text, sent = ticket.seq.text, ticket.sent_text
        if len(text) <= len(sent):
            return
        if not text.startswith(sent):  # the engine's contract is a growing text; say so if it is not
            log.warning("request %s: the engine rewrote text already streamed", ticket.request_id)
        if ticket.first_token_at is None:
            ticket.first_token_at = time.monotonic()
            self._metrics.ttft.observe(ticket.first_token_at - ticket.submitted_at)
        ticket.put(TokenEvent(text=text[len(sent):]))
        ticket.sent_text = text

    # ---- endings ------------------------------------------------------------------------------

    def _end(self, ticket: Ticket, event: DoneEvent | ErrorEvent) -> None:
        """Send the ticket's last event and give back everything it held (exactly once)."""
        if ticket.ended:
            return
        ticket.ended = True
        self._place_freed.set()
        self._tickets.pop(ticket.request_id, None)
        if ticket in self._running:
            self._running.remove(ticket)
        if ticket.seq is not None:
            self._release(ticket.seq)
        if isinstance(event, DoneEvent):
            self._metrics.requests.labels(event.finish_reason.value, ticket.front_end).inc()
            self._metrics.latency.observe(event.timings["total_s"])
        else:
            self._metrics.errors.labels(event.code.value, ticket.front_end).inc()
        log.info("request %s ended: %s", ticket.request_id,
                 event.finish_reason.value if isinstance(event, DoneEvent) else event.code.value)
        ticket.put(event)
        self._update_gauges()

    def _release(self, seq: Sequence) -> None:
        # Queued on the engine thread: it runs before the next engine call, never concurrently.
        try:
            future = self._executor.submit(self._engine.release, seq)
        except RuntimeError:  # the executor is already shut down at exit
            return
        future.add_done_callback(_log_release_failure)

    def _stop_event(self, ticket: Ticket, cause: Stop) -> DoneEvent | ErrorEvent:
        if cause is Stop.CANCEL:
            return self._done_event(ticket, FinishReason.CANCELLED)
        return ErrorEvent(code=ErrorCode.SHUTTING_DOWN, message="the worker is shutting down")

    def _fail(self, tickets: list[Ticket], exc: Exception, *, step: str) -> None:
        """End tickets with the engine's request error, or ``internal`` (logged) for anything else."""
        if isinstance(exc, EngineError):
            event = ErrorEvent(code=exc.code, message=exc.message, **exc.extra)
        else:
            ids = ", ".join(t.request_id for t in tickets)
            log.error("%s failed for request(s) %s", step, ids, exc_info=exc)
            event = ErrorEvent(code=ErrorCode.INTERNAL, message=_INTERNAL_MESSAGE)
        for ticket in tickets:
            self._end(ticket, event)

    def _done_event(self, ticket: Ticket, reason: FinishReason) -> DoneEvent:
        seq = ticket.seq
        if seq is not None:
            self._send_delta(ticket)  # stream what is left, so ``done`` repeats the concatenated deltas
        return DoneEvent(
            text=ticket.sent_text,
            finish_reason=reason,
            usage=Usage(prompt_tokens=seq.prompt_tokens if seq else 0,
                        completion_tokens=len(seq.output_ids) if seq else 0),
            timings=timings(ticket, time.monotonic()),
            question_cut=True if seq is not None and seq.question_cut else None,
        )

    # ---- plumbing -----------------------------------------------------------------------------

    async def _call_engine(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._watched, fn, *args)

    def _watched_prepare(self, request: ChatRequest) -> Sequence:
        """``engine.prepare`` on a prepare thread, telling the watchdog how long it has been running."""
        thread = threading.get_ident()
        with self._preparing_lock:
            self._preparing_since[thread] = time.monotonic()
        try:
            return self._engine.prepare(request)
        finally:
            with self._preparing_lock:
                del self._preparing_since[thread]

    def _watched(self, fn: Callable[..., R], *args: Any) -> R:
        """Run an engine call on the engine thread, telling the watchdog how long it has been running."""
        self._engine_busy_since = time.monotonic()
        try:
            return fn(*args)
        finally:
            self._engine_busy_since = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _update_gauges(self) -> None:
        self._metrics.queue_depth.set(self.queue_depth)
        self._metrics.running.set(len(self._running))
        if self.queue_depth or self._running:
            self._idle.clear()
        else:
            self._idle.set()


def _log_release_failure(future: Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("engine.release failed", exc_info=future.exception())
