"""Render the chat service's replies onto Slack: post, edit at a pace, add messages as parts grow, react.

One :class:`ReplyRenderer` serves one incoming post. The placeholder is the first message of the answer
(with a Stop button); streamed parts edit it and, once a part is full, continue in new messages in the
same thread. Pacing: the service emits ``Streaming`` at most once per ``edit_interval_s`` (the profile), so
those edits go out at once (delaying them would only let the display fall behind the model); the
placeholder's own edits (queue position, "thinking") are spaced here to at most one per interval per
message. An :eyes: reaction marks the user's post while the answer is being worked on.

Streamed and final parts arrive escaped for Slack by the service; notices, placeholders and failures are
catalogue text (which may name a file) and are escaped here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.slack import views
from bot.adapters.slack.errors import slack_error_code
from bot.adapters.slack.files import FileAccessLog
from bot.chat.i18n import t
from bot.chat.messages import Failed, Final, Notice, OpenThread, Placeholder, Reply, Streaming

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


@dataclass
class _Posted:
    ts: str
    text: str
    stop: bool  # shows the Stop button
    edited_at: float


class ReplyRenderer:
    """Turns :class:`Reply` events for one post into Slack Web API calls."""

    def __init__(self, client: AsyncWebClient, target: ReplyTarget, *, edit_interval_s: float,
                 file_access: FileAccessLog | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._client = client
        self._target = target
        self._file_access = file_access or FileAccessLog()
        self._sleep = sleep
        self._thread_ts = target.thread_ts
        self._interval = edit_interval_s
        self._clock = clock
        self._posted: list[_Posted] = []
        self._request_id: str | None = None
        self._streamed = False  # model text has been shown (a failure must not erase it)
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
            case Placeholder(request_id=request_id, text=text):
                await self._placeholder(request_id, views.escape_control_characters(text))
            case Streaming(parts=parts):
                await self._show(parts, final=False)
            case Final(parts=parts):
                await self._show(parts, final=True)
                await self.finish()
            case Failed(text=text):
                await self._fail(views.escape_control_characters(text))
                await self.finish()

    async def finish(self) -> None:
        """Take the working reaction off the user's post (safe to call more than once)."""
        if not self._reacted:
            return
        self._reacted = False
        await self._react("reactions_remove")

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

    async def _placeholder(self, request_id: str, text: str) -> None:
        self._request_id = request_id
        if not self._reacted:
            self._reacted = True
            await self._react("reactions_add")
        if self._posted:
            await self._paced_edit(0, text, stop=True)
        else:
            await self._post(text, stop=True)

    async def _show(self, parts: tuple[str, ...], *, final: bool) -> None:
        texts = [views.to_mrkdwn(part) for part in parts if part.strip()]
        self._streamed = self._streamed or bool(texts)
        for index, text in enumerate(texts):
            growing = not final and index == len(texts) - 1
            if index >= len(self._posted):
                await self._post(text, stop=growing)
            else:
                await self._edit(index, text, stop=growing)
        if final:
            await self._drop_stop_buttons()

    async def _fail(self, text: str) -> None:
        if self._posted and not self._streamed:
            await self._edit(0, text, stop=False)  # only the placeholder so far: replace it
        else:
            await self._drop_stop_buttons()
            await self._post(text, stop=False)

    async def _drop_stop_buttons(self) -> None:
        for index, posted in enumerate(self._posted):
            await self._edit(index, posted.text, stop=False)

    # ---- Web API calls ---------------------------------------------------------------------------

    async def _paced_edit(self, index: int, text: str, *, stop: bool) -> None:
        """Edit, but never sooner than ``edit_interval_s`` after this message's last write."""
        posted = self._posted[index]
        if posted.text == text and posted.stop == stop:
            return
        wait = posted.edited_at + self._interval - self._clock()
        if wait > 0:
            await self._sleep(wait)
        await self._edit(index, text, stop=stop)

    def _blocks(self, text: str, *, stop: bool) -> list[dict]:
        if not (stop and self._request_id):
            return views.reply_blocks(text)
        value = views.stop_value(self._request_id, self._target.user)
        return views.reply_blocks(text, stop=(t("stop_button", self._target.lang), value))

    async def _post(self, text: str, *, stop: bool) -> None:
        response = await self._client.chat_postMessage(**views.message_payload(
            channel=self._target.channel, text=text, thread_ts=self._thread_ts,
            blocks=self._blocks(text, stop=stop)))
        self._posted.append(_Posted(ts=response["ts"], text=text, stop=stop, edited_at=self._clock()))

    async def _edit(self, index: int, text: str, *, stop: bool) -> None:
        posted = self._posted[index]
        if posted.text == text and posted.stop == stop:
            return
        await self._client.chat_update(**views.update_payload(
            channel=self._target.channel, ts=posted.ts, text=text, blocks=self._blocks(text, stop=stop)))
        posted.text, posted.stop, posted.edited_at = text, stop, self._clock()

    async def _react(self, method: str) -> None:
        payload = views.reaction_payload(channel=self._target.channel, ts=self._target.post_ts,
                                         name=WORKING_REACTION)
        try:
            await getattr(self._client, method)(**payload)
        except SlackApiError as exc:
            # already_reacted / no_reaction / missing scope: cosmetic, never worth failing an answer
            log.info("slack %s on %s failed: %s", method, self._target.post_ts, slack_error_code(exc))
