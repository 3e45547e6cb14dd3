"""One request's life in the scheduler: its ticket (state, and the events its client reads), how it may be
refused before it runs, and the timings its ``done`` event reports."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from model_worker.engine.sequence import Sequence
from model_worker.wire.protocol import ChatRequest, DoneEvent, ErrorEvent, Event

#: The front end of a request submitted without naming one (tests, direct use), for the metrics.
UNNAMED_FRONT_END = "direct"


class Rejected(Exception):
    """A request refused before it runs (``busy``, ``shutting_down``, ``loading``, a duplicate id or a
    malformed request); carries the ``error`` event that says so."""

    def __init__(self, event: ErrorEvent) -> None:
        super().__init__(event.message)
        self.event = event


class Stop(enum.Enum):
    """Why a ticket is being stopped."""

    CANCEL = "cancel"
    SHUTDOWN = "shutdown"


@dataclass(eq=False)
class Ticket:
    """One request's life in the scheduler, and the events its client reads."""

    request: ChatRequest
    submitted_at: float
    deadline: float
    front_end: str = UNNAMED_FRONT_END  # where the request came from, for the metrics
    seq: Sequence | None = None
    position: int | None = None
    stop: Stop | None = None
    ended: bool = False
    sent_text: str = ""  # the reply as sent in ``token`` events so far
    counted_tokens: int = 0
    admitted_at: float | None = None
    prefill_s: float | None = None
    first_token_at: float | None = None
    _queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def user(self) -> str:
        return self.request.user

    def put(self, event: Event) -> None:
        self._queue.put_nowait(event)

    async def events(self) -> AsyncIterator[Event]:
        """The request's events, ending after the first ``done`` or ``error``."""
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, DoneEvent | ErrorEvent):
                return



def reserved_tokens(ticket: Ticket) -> int:
    """Positions a request may occupy: its prompt plus every token it may generate."""
    return ticket.seq.prompt_tokens + ticket.request.generation.max_new_tokens


def timings(ticket: Ticket, now: float) -> dict[str, float]:
    """Seconds from submission: in the queue, prefilling, to the first token, in all."""
    timings = {"total_s": now - ticket.submitted_at}
    if ticket.admitted_at is not None:
        timings["queue_s"] = ticket.admitted_at - ticket.submitted_at
    if ticket.prefill_s is not None:
        timings["prefill_s"] = ticket.prefill_s
    if ticket.first_token_at is not None:
        timings["ttft_s"] = ticket.first_token_at - ticket.submitted_at
        generated = ticket.counted_tokens
        decode_s = now - ticket.first_token_at
        if generated > 1 and decode_s > 0:
            timings["decode_tokens_per_s"] = (generated - 1) / decode_s
    return {name: round(value, 6) for name, value in timings.items()}
