"""Render the chat service's replies onto Slack: notices, the answer's messages, the working reaction.

One :class:`ReplyRenderer` serves one incoming post. What an answer's messages show, and where its Stop
button sits, is the chat core's layout (:mod:`bot.chat.layout`); when each post and edit happens is the
core's renderer (:mod:`bot.chat.rendering`), which paces edits to one per ``edit_interval_s`` per message.
This module only turns those decisions into Web API calls: :class:`SlackAnswerWriter` posts and edits one
message (as mrkdwn, with the Stop button when asked), and a message deleted meanwhile is reported as
gone so that the answer continues in a new one. Rate limits (429) are waited out by slack_sdk's retry
handler (see :func:`bot.adapters.slack.app.web_client`). An :eyes: reaction marks the user's post while
the answer is being worked on.

Answer texts arrive escaped for Slack from the service; notices are catalogue text and are escaped here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.slack import views
from bot.adapters.slack.errors import slack_error_code
from bot.adapters.slack.files import FileAccessLog
from bot.chat.i18n import t
from bot.chat.layout import AnswerMessage, AnswerReply, answer_messages
from bot.chat.messages import Failed, Final, Notice, OpenThread, Placeholder, Reply, Streaming
from bot.chat.rendering import AnswerRenderer, MessageGone

log = logging.getLogger(__name__)

WORKING_REACTION = "eyes"
_PRIVATE_NOTICES = ("not_allowed", "limited")  # only the person concerned needs to see these


@dataclass(frozen=True)
class ReplyTarget:
    """Where one answer goes and whom it concerns."""

    channel: str
    thread_ts: str | None  # None: top level (a DM without a thread)
    user: str
    post_ts: str  # the user's post, which gets the reaction
    lang: str


class SlackAnswerWriter:
    """Posts and edits the messages of one answer in its thread (the core decides what and when)."""

    def __init__(self, client: AsyncWebClient, target: ReplyTarget, *, thread_ts: str | None,
                 request_id: str) -> None:
        self._client = client
        self._target = target
        self._thread_ts = thread_ts
        self._request_id = request_id

    async def post(self, message: AnswerMessage) -> str:
        text = views.to_mrkdwn(message.text)
        response = await self._client.chat_postMessage(**views.message_payload(
            channel=self._target.channel, text=text, thread_ts=self._thread_ts,
            blocks=self._blocks(text, stop=message.stop)))
        return str(response["ts"])

    async def edit(self, ts: str, message: AnswerMessage) -> str:
        text = views.to_mrkdwn(message.text)
        try:
            await self._client.chat_update(**views.update_payload(
                channel=self._target.channel, ts=ts, text=text, blocks=self._blocks(text, stop=message.stop)))
        except SlackApiError as exc:
            if slack_error_code(exc) == "message_not_found":
                raise MessageGone(ts) from exc
            raise
        return ts

    def _blocks(self, text: str, *, stop: bool) -> list[dict]:
        if not stop:
            return views.reply_blocks(text)
        value = views.stop_value(self._request_id, self._target.user)
        return views.reply_blocks(text, stop=(t("stop_button", self._target.lang), value))


class ReplyRenderer:
    """Turns :class:`Reply` events for one post into Slack Web API calls."""

    def __init__(self, client: AsyncWebClient, target: ReplyTarget, *, edit_interval_s: float,
                 file_access: FileAccessLog | None = None) -> None:
        self._client = client
        self._target = target
        self._file_access = file_access or FileAccessLog()
        self._thread_ts = target.thread_ts
        self._interval = edit_interval_s
        self._answers: dict[str, AnswerRenderer] = {}
        self._reacted = False

    @property
    def target(self) -> ReplyTarget:
        return self._target

    async def render(self, reply: Reply) -> None:
        """Show one reply event."""
        match reply:
            case OpenThread():
                self._thread_ts = self._thread_ts or self._target.post_ts
            case Notice(text=text, kind=kind):
                await self._notice(text, kind)
            case Failed(request_id=None, text=text):
                await self._notice(text, "info")
                await self.finish()
            case Placeholder() | Streaming():
                await self._mark_working()
                await self._show(reply)
            case Final() | Failed():
                await self._end(reply)
                await self.finish()

    async def finish(self) -> None:
        """Take the working reaction off the user's post (safe to call more than once)."""
        if not self._reacted:
            return
        self._reacted = False
        await self._react("reactions_remove")

    async def close(self) -> None:
        """The handler is going away: stop updating answers and take the reaction off."""
        for answer in self._answers.values():
            answer.abandon()
        await self.finish()

    # ---- steps -----------------------------------------------------------------------------------

    async def _notice(self, text: str, kind: str) -> None:
        text = views.escape_control_characters(text)
        if kind == "attachment" and self._file_access.needs_explaining():
            text = f"{text}\n{t('slack_file_access_hint', self._target.lang)}"
        if kind in _PRIVATE_NOTICES:
            await self._client.chat_postEphemeral(**views.ephemeral_payload(
                channel=self._target.channel, user=self._target.user, text=text, thread_ts=self._thread_ts))
        else:  # a message of its own, not part of the answer that later edits touch
            await self._client.chat_postMessage(**views.message_payload(
                channel=self._target.channel, text=text, thread_ts=self._thread_ts))

    async def _show(self, reply: AnswerReply) -> None:
        answer = self._answers.get(reply.request_id)
        if answer is None:
            await self._start(reply)
        else:
            answer.update(answer_messages(reply))

    async def _end(self, reply: AnswerReply) -> None:
        answer = self._answers.get(reply.request_id) or await self._start(reply)
        await answer.finish(answer_messages(reply))

    async def _start(self, reply: AnswerReply) -> AnswerRenderer:
        writer = SlackAnswerWriter(self._client, self._target, thread_ts=self._thread_ts,
                                   request_id=str(reply.request_id))
        answer = self._answers[str(reply.request_id)] = AnswerRenderer(writer, interval_s=self._interval)
        await answer.start(answer_messages(reply))
        return answer

    async def _mark_working(self) -> None:
        if not self._reacted:
            self._reacted = True
            await self._react("reactions_add")

    async def _react(self, method: str) -> None:
        payload = views.reaction_payload(channel=self._target.channel, ts=self._target.post_ts,
                                         name=WORKING_REACTION)
        try:
            await getattr(self._client, method)(**payload)
        except SlackApiError as exc:
            # already_reacted / no_reaction / missing scope: cosmetic, never worth failing an answer
            log.info("slack %s on %s failed: %s", method, self._target.post_ts, slack_error_code(exc))
