"""Putting the chat service's replies onto Discord: threads, typing, posts, paced edits, follow-ups.

Every send and edit passes ``AllowedMentions.none()``: model output never pings anyone. Streamed text is
rendered by a background flusher per answer, so that reading the service's stream is never slowed down by
the pacing of edits (about one per second per message, the service's ``edit_interval_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import discord

from bot.chat.messages import Failed, Final, Notice, OpenThread, Placeholder, Reply, Streaming

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
THREAD_NAME_LIMIT = 100

StopViewFactory = Callable[[str], discord.ui.View]


class PacedMessage:
    """One of the bot's messages, edited no more often than once per ``interval`` seconds."""

    def __init__(self, message: discord.Message, *, interval: float, has_view: bool) -> None:
        self.message = message
        self.content = message.content
        self.has_view = has_view
        self._interval = interval
        self._next_edit_at = asyncio.get_running_loop().time() + interval

    def matches(self, content: str, *, with_view: bool) -> bool:
        return self.content == content and self.has_view == with_view

    async def edit(self, freshest: Callable[[], tuple[str, discord.ui.View | None]]) -> None:
        """Wait for this message's turn, then edit it to the freshest content and view."""
        delay = self._next_edit_at - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)
        content, view = freshest()
        self.message = await self.message.edit(content=content, view=view, allowed_mentions=NO_MENTIONS)
        self.content, self.has_view = content, view is not None
        self._next_edit_at = asyncio.get_running_loop().time() + self._interval


class StreamedAnswer:
    """The messages of one answer: a placeholder with a Stop button, edited as parts grow, then final."""

    def __init__(self, target: discord.abc.Messageable, *, reference: discord.Message | None,
                 interval: float, stop_view: discord.ui.View) -> None:
        self._target = target
        self._reference = reference
        self._interval = interval
        self._stop_view = stop_view
        self._messages: list[PacedMessage] = []
        self._desired: tuple[str, ...] = ()
        self._final = False
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    async def open(self, text: str) -> None:
        """Post the placeholder (with the Stop button) and start the flusher."""
        self._desired = (text,)
        await self._post(text, view=self._stop_view)
        self._flusher = asyncio.create_task(self._flush())

    def show(self, parts: tuple[str, ...]) -> None:
        """Render ``parts`` soon; returns at once (later calls supersede earlier ones)."""
        if parts:
            self._desired = parts
            self._wake.set()

    async def close(self, parts: tuple[str, ...]) -> None:
        """Render the final ``parts`` (an empty tuple keeps the text) without a Stop button, and wait."""
        if parts:
            self._desired = parts
        self._final = True
        self._wake.set()
        if self._flusher is not None:
            await self._flusher

    def abandon(self) -> None:
        """Stop rendering (the handler is going away); whatever was shown stays."""
        if self._flusher is not None:
            self._flusher.cancel()

    async def _flush(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._apply()
                if self._final and self._is_shown():
                    return
        except discord.HTTPException as exc:
            log.warning("could not update an answer on Discord (status %s, code %s); it stays as it is",
                        exc.status, exc.code)

    def _is_shown(self) -> bool:
        return len(self._messages) >= len(self._desired) and all(
            message.matches(text, with_view=self._wants_view(index))
            for index, (message, text) in enumerate(zip(self._messages, self._desired, strict=False)))

    def _wants_view(self, index: int) -> bool:
        return index == 0 and not self._final

    async def _apply(self) -> None:
        index = 0
        while index < len(self._desired):
            text = self._desired[index]
            if index >= len(self._messages):
                await self._post(text, view=None)
            elif not self._messages[index].matches(text, with_view=self._wants_view(index)):
                await self._messages[index].edit(lambda i=index: self._wanted(i))
            index += 1

    def _wanted(self, index: int) -> tuple[str, discord.ui.View | None]:
        return self._desired[index], self._stop_view if self._wants_view(index) else None

    async def _post(self, text: str, *, view: discord.ui.View | None) -> None:
        kwargs = {"view": view} if view is not None else {}
        reference = self._reference if not self._messages else None
        message = await self._target.send(text, reference=reference, mention_author=False,
                                          allowed_mentions=NO_MENTIONS, **kwargs)
        self._messages.append(PacedMessage(message, interval=self._interval, has_view=view is not None))


class MessageReplies:
    """Renders the replies to one incoming message: opens the thread, shows typing, streams answers.

    Use as an async context manager; leaving it stops the typing indicator.
    """

    def __init__(self, origin: discord.Message, *, interval: float, stop_view: StopViewFactory) -> None:
        self._origin = origin
        self._target: discord.abc.Messageable = origin.channel
        self._reference: discord.Message | None = origin  # replies in a channel quote the question
        self._interval = interval
        self._stop_view = stop_view
        self._answers: dict[str, StreamedAnswer] = {}
        self._typing: contextlib.AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> MessageReplies:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for answer in self._answers.values():
            answer.abandon()  # a no-op for answers that were closed
        await self._stop_typing()

    async def render(self, reply: Reply) -> None:
        """Show one reply event on Discord."""
        match reply:
            case OpenThread(name=name):
                await self._open_thread(name)
            case Notice(text=text):
                await self._send(text)
            case Placeholder(request_id=request_id, text=text):
                await self._start_typing()
                (await self._answer(request_id, text)).show((text,))  # e.g. "Queued: #2" -> "Thinking…"
            case Streaming(request_id=request_id, parts=parts):
                (await self._answer(request_id, parts[0] if parts else "…")).show(parts)
            case Final(request_id=request_id, parts=parts):
                await (await self._answer(request_id, parts[0] if parts else "…")).close(parts)
                await self._stop_typing()
            case Failed(request_id=request_id, text=text):
                await self._fail(request_id, text)

    async def _open_thread(self, name: str) -> None:
        try:
            thread = await self._origin.create_thread(name=name[:THREAD_NAME_LIMIT] or "…")
        except discord.HTTPException as exc:
            log.warning("could not open a thread (status %s, code %s); answering in the channel",
                        exc.status, exc.code)
            return
        self._target, self._reference = thread, None

    async def _answer(self, request_id: str, text: str) -> StreamedAnswer:
        answer = self._answers.get(request_id)
        if answer is None:
            answer = StreamedAnswer(self._target, reference=self._reference, interval=self._interval,
                                    stop_view=self._stop_view(request_id))
            self._answers[request_id] = answer
            await answer.open(text)
        return answer

    async def _fail(self, request_id: str | None, text: str) -> None:
        answer = self._answers.get(request_id) if request_id else None
        if answer is None:
            await self._send(text)
        else:
            await answer.close((text,))
        await self._stop_typing()

    async def _send(self, text: str) -> None:
        await self._target.send(text, reference=self._reference, mention_author=False,
                                allowed_mentions=NO_MENTIONS)

    async def _start_typing(self) -> None:
        if self._typing is None:
            self._typing = self._target.typing()
            await self._typing.__aenter__()

    async def _stop_typing(self) -> None:
        typing, self._typing = self._typing, None
        if typing is not None:
            await typing.__aexit__(None, None, None)


async def respond(interaction: discord.Interaction, text: str, *, ephemeral: bool) -> None:
    """Answer an interaction with text (a follow-up when it was already answered)."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS)
    else:
        await interaction.response.send_message(text, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS)
