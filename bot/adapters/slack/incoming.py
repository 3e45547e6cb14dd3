"""Slack events and slash commands -> the platform-neutral :class:`IncomingMessage`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bot.adapters.slack.files import FileAccessLog, SlackFileFetcher
from bot.adapters.slack.locales import SlackUser, UserDirectory
from bot.chat.messages import IncomingMessage

# Plain user posts; edits, deletions, joins and bot posts carry other subtypes and are not answered.
_USER_SUBTYPES = (None, "file_share", "thread_broadcast")


def is_user_post(event: Mapping[str, Any]) -> bool:
    """A post written by a person (not an edit, a join notice, or another bot's message)."""
    return event.get("subtype") in _USER_SUBTYPES and bool(event.get("user")) and not event.get("bot_id")


def mentions_bot(text: str, bot_user_id: str | None) -> bool:
    return bool(bot_user_id) and f"<@{bot_user_id}" in text


def strip_bot_mention(text: str, bot_user_id: str | None) -> str:
    """Remove ``<@BOTID>`` (with or without a ``|label``) and the space around it."""
    if not bot_user_id:
        return text.strip()
    return re.sub(rf"\s*<@{re.escape(bot_user_id)}(?:\|[^>]*)?>\s*", " ", text).strip()


def may_concern_bot(event: Mapping[str, Any], bot_user_id: str | None) -> bool:
    """Only DMs, thread replies and mentions can be for the bot; other channel chatter is skipped
    before any lookup (the chat service decides about the rest)."""
    return (event.get("channel_type") == "im" or bool(event.get("thread_ts"))
            or mentions_bot(event.get("text") or "", bot_user_id))


def reply_thread_ts(event: Mapping[str, Any]) -> str | None:
    """Where answers go: the post's thread; a new thread under a top-level channel post; DMs stay flat."""
    if event.get("thread_ts"):
        return str(event["thread_ts"])
    return None if event.get("channel_type") == "im" else str(event["ts"])


class SlackInbox:
    """Builds :class:`IncomingMessage` objects, looking up the author's locale and wrapping files."""

    def __init__(self, *, users: UserDirectory, files: SlackFileFetcher) -> None:
        self._users = users
        self._files = files

    async def user(self, user_id: str) -> SlackUser:
        """The user's locale and name (cached)."""
        return await self._users.lookup(user_id)

    async def from_event(self, event: Mapping[str, Any], *, team_id: str | None, bot_user_id: str | None,
                         via_mention: bool, access_log: FileAccessLog) -> IncomingMessage:
        """The message for an ``app_mention`` or ``message`` event; refused downloads go to ``access_log``."""
        text = event.get("text") or ""
        thread_ts = event.get("thread_ts")
        user = await self._users.lookup(event["user"])
        return IncomingMessage(
            platform="slack",
            workspace_id=event.get("team") or team_id,
            channel_id=event["channel"],
            thread_id=thread_ts if thread_ts and thread_ts != event.get("ts") else None,
            message_id=event["ts"],
            author_id=event["user"],
            author_name=user.name,
            text=strip_bot_mention(text, bot_user_id),
            attachments=self._files.attachments(event.get("files") or [], access_log=access_log),
            mentioned=via_mention or mentions_bot(text, bot_user_id),
            is_dm=event.get("channel_type") == "im",
            locale=user.locale,
        )

    async def from_command(self, command: Mapping[str, Any]) -> IncomingMessage:
        """The message for a slash command (``/minigpt4 reset``): it concerns the channel it was typed in."""
        user = await self._users.lookup(command["user_id"])
        channel = command["channel_id"]
        return IncomingMessage(
            platform="slack",
            workspace_id=command.get("team_id"),
            channel_id=channel,
            thread_id=None,
            message_id=command.get("trigger_id") or "",
            author_id=command["user_id"],
            author_name=user.name,
            text=command.get("text") or "",
            mentioned=True,
            is_dm=channel.startswith("D") or command.get("channel_name") == "directmessage",
            locale=user.locale,
        )
