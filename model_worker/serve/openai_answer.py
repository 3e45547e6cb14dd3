"""A request's scheduler events read as an OpenAI answer: content pieces cut at the client's stop texts,
then how the answer ended (finish reason and usage) or the error that ended it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from model_worker.serve.openai_replies import finish_reason
from model_worker.serve.stop_texts import StopTextCutter
from model_worker.wire.protocol import DoneEvent, ErrorEvent, Event, TokenEvent, Usage


class AnswerReader:
    """Reads one ticket's events once. When a stop text appears, the text is cut there and
    ``stop_generation`` is called, so the scheduler frees the place at its next step."""

    def __init__(self, events: AsyncGenerator[Event, None], *, stops: Sequence[str],
                 stop_generation: Callable[[], None]) -> None:
        self._events = events
        self._cutter = StopTextCutter(stops)
        self._stop_generation = stop_generation
        self._first: Event | None = None
        self.finish: str | None = None  # set by the ``done`` event
        self.usage: Usage | None = None
        self.error: ErrorEvent | None = None  # set by an ``error`` event

    async def wait_until_prepared(self) -> ErrorEvent | None:
        """Wait for the request's first event: an error when the worker could not take it (a bad image,
        a context too long), None once it waits for its turn or runs."""
        self._first = await anext(self._events)
        return self._first if isinstance(self._first, ErrorEvent) else None

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text in pieces as they are generated."""
        if self._first is not None:
            for piece in self._take(self._first):
                yield piece
        async for event in self._events:
            for piece in self._take(event):
                yield piece

    async def close(self) -> None:
        """Stop reading; a request that has not ended is cancelled (its client is gone)."""
        await self._events.aclose()

    def _take(self, event: Event) -> list[str]:
        if isinstance(event, TokenEvent):
            return self._cut(event.text)
        if isinstance(event, DoneEvent):
            tail = self._cutter.flush()
            self.finish = "stop" if self._cutter.hit else finish_reason(event.finish_reason)
            self.usage = event.usage
            return [tail] if tail else []
        if isinstance(event, ErrorEvent):
            self.error = event
        return []

    def _cut(self, text: str) -> list[str]:
        already_hit = self._cutter.hit
        piece = self._cutter.feed(text)
        if self._cutter.hit and not already_hit:
            self._stop_generation()
        return [piece] if piece else []
