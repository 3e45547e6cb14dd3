"""Showing one answer's layout on a platform, the same way everywhere: the adapter gives a writer that can
post and edit one message; this module decides when each call happens.

- New messages go out at once; each message is edited at most once per ``interval_s`` (platforms
  rate-limit edits per message), always to the freshest layout, so updates that arrive in between are
  folded into one edit and reading the service's stream is never slowed down by the platform.
- A message that was deleted while the answer ran (the writer raises :class:`MessageGone`) is posted
  again as a new message, and the answer continues there.
- A refused call is retried with the freshest layout after an interval; after a few refusals in a row
  the answer stays as it is (the platform keeps refusing), and the adapter is told nothing more.

Rate-limit answers (HTTP 429) never reach this module: the platform libraries wait them out themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bot.chat.layout import AnswerMessage, surplus_message

log = logging.getLogger(__name__)

MAX_REFUSALS_IN_A_ROW = 3


class MessageGone(Exception):
    """The message to edit no longer exists (someone deleted it)."""


class MessageWriter(Protocol):
    """One platform's two operations on an answer's messages; handles are whatever the platform needs."""

    async def post(self, message: AnswerMessage) -> Any: ...

    async def edit(self, handle: Any, message: AnswerMessage) -> Any: ...


@dataclass
class _Shown:
    handle: Any
    message: AnswerMessage
    next_edit_at: float


class AnswerRenderer:
    """Keeps one answer's messages in step with its latest layout (see the module docstring)."""

    def __init__(self, writer: MessageWriter, *, interval_s: float) -> None:
        self._writer = writer
        self._interval_s = interval_s
        self._shown: list[_Shown] = []
        self._wanted: tuple[AnswerMessage, ...] = ()
        self._final = False
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._flusher is not None

    async def start(self, messages: Sequence[AnswerMessage]) -> None:
        """Post the first layout now; errors reach the caller (which may pick another place to answer)."""
        self._wanted = tuple(messages)
        while len(self._shown) < len(self._wanted):
            await self._post(self._wanted[len(self._shown)])
        self._flusher = asyncio.create_task(self._flush())

    def update(self, messages: Sequence[AnswerMessage]) -> None:
        """Show ``messages`` soon; returns at once (a later update supersedes this one)."""
        self._wanted = tuple(messages)
        self._wake.set()

    async def finish(self, messages: Sequence[AnswerMessage]) -> None:
        """Show the final layout and wait until it is on screen (or the platform kept refusing)."""
        self._final = True
        self.update(messages)
        if self._flusher is not None:
            await self._flusher

    def abandon(self) -> None:
        """Stop updating (the handler is going away); whatever was shown stays."""
        if self._flusher is not None:
            self._flusher.cancel()

    # ---- the flusher -----------------------------------------------------------------------------

    async def _flush(self) -> None:
        refusals = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._apply()
            except Exception as exc:  # a refused post or edit (a 403, a 5xx, a network error...)
                refusals += 1
                if refusals >= MAX_REFUSALS_IN_A_ROW:
                    log.warning("an answer could not be updated %d times in a row; it stays as it is (%r)",
                                refusals, exc)
                    return
                log.info("an answer update was refused (%r); trying again", exc)
                await asyncio.sleep(self._interval_s)
                self._wake.set()
                continue
            refusals = 0
            if self._final:
                return

    async def _apply(self) -> None:
        """Post what is new, then edit stale messages, each when its interval allows, until all match."""
        while True:
            while len(self._shown) < len(self._wanted):
                await self._post(self._wanted[len(self._shown)])
            stale = [index for index, shown in enumerate(self._shown) if shown.message != self._wanted_at(index)]
            if not stale:
                return
            index = min(stale, key=lambda i: self._shown[i].next_edit_at)
            delay = self._shown[index].next_edit_at - _now()
            if delay > 0:
                await asyncio.sleep(delay)  # the layout may change meanwhile: look again afterwards
                continue
            await self._edit(index)

    def _wanted_at(self, index: int) -> AnswerMessage:
        return self._wanted[index] if index < len(self._wanted) else surplus_message()

    async def _post(self, message: AnswerMessage) -> None:
        handle = await self._writer.post(message)
        self._shown.append(_Shown(handle, message, _now() + self._interval_s))

    async def _edit(self, index: int) -> None:
        shown, message = self._shown[index], self._wanted_at(index)
        try:
            shown.handle = await self._writer.edit(shown.handle, message)
        except MessageGone:
            log.info("message %d of an answer was deleted; continuing in a new message", index + 1)
            shown.handle = await self._writer.post(message)
        shown.message, shown.next_edit_at = message, _now() + self._interval_s


def _now() -> float:
    return asyncio.get_running_loop().time()
