"""Putting the chat service's replies onto Discord: threads, typing, notices and the answer's messages.

What an answer's messages show, and where its Stop button sits, is the chat core's layout
(:mod:`bot.chat.layout`); when each post and edit happens is the core's renderer
(:mod:`bot.chat.rendering`, about one edit per second per message). This module applies them: a
:class:`_AnswerWriter` posts and edits one message (a deleted one is reported as gone, so that the answer
continues in a new message), and discord.py itself waits out 429 answers.

Where a thread cannot be opened, or the bot may not post in it (403), the answer goes to the channel as
a reply to the question, with one notice saying why. Every send and edit passes
``AllowedMentions.none()``: model output never pings anyone.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import discord

from bot.chat.i18n import t
from bot.chat.layout import AnswerMessage, AnswerReply, answer_messages
from bot.chat.messages import Failed, Final, Notice, OpenThread, Placeholder, Reply, Streaming
from bot.chat.rendering import AnswerRenderer, MessageGone

from .errors import describe_for_log

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
THREAD_NAME_LIMIT = 100

StopViewFactory = Callable[[str], discord.ui.View]


class _AnswerWriter:
    """Posts and edits the messages of one answer (the core decides what and when)."""

    def __init__(self, replies: MessageReplies, stop_view: discord.ui.View) -> None:
        self._replies = replies
        self._stop_view = stop_view
        self._posted = False

    async def post(self, message: AnswerMessage) -> discord.Message:
        posted = await self._replies.send(message.text, view=self._view(message), quote=not self._posted)
        self._posted = True
        return posted

    async def edit(self, handle: discord.Message, message: AnswerMessage) -> discord.Message:
        try:
            return await handle.edit(content=message.text, view=self._view(message), allowed_mentions=NO_MENTIONS)
        except discord.NotFound as exc:
            raise MessageGone(handle.id) from exc

    def _view(self, message: AnswerMessage) -> discord.ui.View | None:
        return self._stop_view if message.stop else None


class MessageReplies:
    """Renders the replies to one incoming message: opens the thread, shows typing, streams answers.

    Use as an async context manager; leaving it stops the typing indicator and abandons unfinished answers.
    """

    def __init__(self, origin: discord.Message, *, interval: float, stop_view: StopViewFactory,
                 lang: str = "en") -> None:
        self._origin = origin
        self._lang = lang
        self._channel: discord.abc.Messageable = origin.channel
        self._in_new_thread = False
        self._interval = interval
        self._stop_view = stop_view
        self._answers: dict[str, AnswerRenderer] = {}
        self._typing: contextlib.AbstractAsyncContextManager[None] | None = None

    async def __aenter__(self) -> MessageReplies:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for answer in self._answers.values():
            answer.abandon()  # a no-op for answers that were finished
        await self._stop_typing()

    async def render(self, reply: Reply) -> None:
        """Show one reply event on Discord."""
        match reply:
            case OpenThread(name=name):
                await self._open_thread(name)
            case Notice(text=text) | Failed(request_id=None, text=text):
                await self.send(text)
            case Placeholder() | Streaming():
                await self._start_typing()
                await self._show(reply)
            case Final() | Failed():
                await self._end(reply)
                await self._stop_typing()

    async def send(self, text: str, *, view: discord.ui.View | None = None, quote: bool = True) -> discord.Message:
        """Post one message where this conversation is answered (a reply to the question in a channel);
        when the bot may not post in the thread it opened, move to the channel and say why once."""
        try:
            return await self._post(text, view=view, quote=quote)
        except discord.Forbidden as exc:
            if not self._in_new_thread:
                raise
            await self._answer_in_channel(exc)
            return await self._post(text, view=view, quote=quote)

    # ---- steps -----------------------------------------------------------------------------------

    async def _open_thread(self, name: str) -> None:
        try:
            self._channel = await self._origin.create_thread(name=name[:THREAD_NAME_LIMIT] or "…")
        except discord.HTTPException as exc:
            await self._answer_in_channel(exc)
        else:
            self._in_new_thread = True

    async def _answer_in_channel(self, exc: discord.HTTPException) -> None:
        log.warning("answering in the channel instead of a thread: %s", describe_for_log(exc))
        self._channel, self._in_new_thread = self._origin.channel, False
        if isinstance(exc, discord.Forbidden):
            await self._post(t("thread_refused", self._lang), view=None, quote=True)

    async def _show(self, reply: AnswerReply) -> None:
        answer = self._answers.get(str(reply.request_id))
        if answer is None:
            await self._start(reply)
        else:
            answer.update(answer_messages(reply))

    async def _end(self, reply: AnswerReply) -> None:
        answer = self._answers.get(str(reply.request_id)) or await self._start(reply)
        await answer.finish(answer_messages(reply))

    async def _start(self, reply: AnswerReply) -> AnswerRenderer:
        writer = _AnswerWriter(self, self._stop_view(str(reply.request_id)))
        answer = self._answers[str(reply.request_id)] = AnswerRenderer(writer, interval_s=self._interval)
        await answer.start(answer_messages(reply))
        return answer

    async def _post(self, text: str, *, view: discord.ui.View | None, quote: bool) -> discord.Message:
        # Where the question was asked, replies quote it (and still go out if it was deleted meanwhile).
        reference = None
        if quote and self._channel is self._origin.channel:
            reference = self._origin.to_reference(fail_if_not_exists=False)
        return await self._channel.send(text, reference=reference, mention_author=False,
                                        allowed_mentions=NO_MENTIONS, view=view)

    async def _start_typing(self) -> None:
        if self._typing is None:
            self._typing = self._channel.typing()
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
