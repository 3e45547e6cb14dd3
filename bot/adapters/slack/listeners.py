"""The Slack routing table and its thin listeners: decode, hand to the chat service, render.

Bolt acknowledges events before these run (``process_before_response`` is off), so Slack never waits
for the model. Every post is answered at most once: Slack's retries, events delivered again after a
Socket Mode reconnect and the ``app_mention`` + ``message`` pair for one post all carry the same channel
and ``ts``, which the chat service recognises (:mod:`bot.chat.dedup`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.reporting import report_failure
from bot.adapters.slack import incoming
from bot.adapters.slack.errors import can_still_post, describe_for_log
from bot.adapters.slack.files import FileAccessLog
from bot.adapters.slack.incoming import SlackInbox
from bot.adapters.slack.operations import ReplyRenderer, ReplyTarget
from bot.adapters.slack.views import STOP_ACTION_ID, ephemeral_payload, parse_stop_value
from bot.chat.commands import parse_command
from bot.chat.i18n import t
from bot.chat.messages import Failed, IncomingMessage, Notice, PlatformProfile

if TYPE_CHECKING:
    from bot.chat.service import ChatService

log = logging.getLogger(__name__)

SLASH_COMMAND = "/minigpt4"
#: What Slack or the network may raise while answering, after slack_sdk's own retries.
SLACK_ERRORS: tuple[type[Exception], ...] = (SlackClientError, aiohttp.ClientError, TimeoutError)
# Parts fit a Block Kit section (3,000) and stay far below chat.update's practical ~4k msg_too_long.
SLACK_PROFILE = PlatformProfile(platform="slack", max_message_chars=2900, edit_interval_s=1.2, markup="slack")


def register_listeners(app: AsyncApp, listeners: SlackListeners) -> None:
    """The one routing table: every Slack entry point the bot answers."""
    app.event("app_mention")(listeners.on_app_mention)
    app.event("message")(listeners.on_message)
    app.command(SLASH_COMMAND)(listeners.on_command)
    app.action(STOP_ACTION_ID)(listeners.on_stop)


class SlackListeners:
    def __init__(self, *, service: ChatService, client: AsyncWebClient, inbox: SlackInbox) -> None:
        self._service = service
        self._client = client
        self._inbox = inbox

    async def on_app_mention(self, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        if incoming.is_user_post(event):
            await self._answer_post(body, event, context.bot_user_id, via_mention=True)

    async def on_message(self, body: dict[str, Any], event: dict[str, Any], context: Any) -> None:
        if incoming.is_user_post(event) and incoming.may_concern_bot(event, context.bot_user_id):
            await self._answer_post(body, event, context.bot_user_id, via_mention=False)

    async def on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        await ack()
        name = parse_command(command.get("text") or "") or "help"  # the service's en/ja command words
        message = await self._inbox.from_command(command)
        async with aclosing(self._service.run_command(name, message, SLACK_PROFILE)) as replies:
            async for reply in replies:
                if isinstance(reply, Notice | Failed):
                    await respond(text=reply.text, response_type="ephemeral")

    async def on_stop(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        user = body["user"]["id"]
        request_id, asker = parse_stop_value(action["value"])
        if await self._service.cancel(request_id, user_id=user) or user == asker:
            return  # stopped, or the asker clicked just after the answer ended
        lang = self._service.language_for((await self._inbox.user(user)).locale)
        channel = body["channel"]["id"]
        thread_ts = body.get("message", {}).get("thread_ts")
        await self._client.chat_postEphemeral(**ephemeral_payload(
            channel=channel, user=user, text=t("cancel_not_allowed", lang), thread_ts=thread_ts))

    async def _answer_post(self, body: Mapping[str, Any], event: Mapping[str, Any], bot_user_id: str | None,
                           *, via_mention: bool) -> None:
        access_log = FileAccessLog()
        message = await self._inbox.from_event(event, team_id=body.get("team_id"), bot_user_id=bot_user_id,
                                               via_mention=via_mention, access_log=access_log)
        target = ReplyTarget(channel=message.channel_id, thread_ts=incoming.reply_thread_ts(event),
                             user=message.author_id, post_ts=message.message_id,
                             lang=self._service.language_for(message.locale))
        await self._answer(message, ReplyRenderer(self._client, target, file_access=access_log,
                                                  edit_interval_s=SLACK_PROFILE.edit_interval_s))

    async def _answer(self, message: IncomingMessage, renderer: ReplyRenderer) -> None:
        target = renderer.target
        try:
            async with aclosing(self._service.handle(message, SLACK_PROFILE)) as replies:
                async for reply in replies:
                    await renderer.render(reply)
        except Exception as exc:  # the one catch-all decides what the user sees
            await report_failure(renderer.render, exc, lang=target.lang,
                                 where=f"slack {target.channel}/{target.post_ts}",
                                 platform_errors=SLACK_ERRORS, describe=describe_for_log,
                                 tell_user=can_still_post(exc))
        finally:
            await renderer.close()
