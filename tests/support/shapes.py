"""Incoming messages shaped like each platform's adapter produces them."""

from __future__ import annotations

import itertools
from dataclasses import replace

from bot.chat.messages import AttachmentRef, IncomingMessage

_ids = itertools.count(1000)


def next_id() -> str:
    return str(next(_ids))


def attachment(data: bytes, name: str, declared_type: str | None = "image/png") -> AttachmentRef:
    async def fetch() -> bytes:
        return data

    return AttachmentRef(filename=name, declared_type=declared_type, declared_size=len(data), fetch=fetch)


def discord_mention(text: str, *, user: str = "U1", guild: str = "G1", channel: str = "C1",
                    roles: tuple[str, ...] = (), attachments: tuple[AttachmentRef, ...] = (),
                    locale: str | None = "en-US") -> IncomingMessage:
    """A top-level message in a guild channel that mentions the bot."""
    return IncomingMessage(platform="discord", workspace_id=guild, channel_id=channel, thread_id=None,
                           message_id=next_id(), author_id=user, text=text, author_roles=roles,
                           attachments=attachments, mentioned=True, locale=locale)


def discord_in_thread(started: IncomingMessage, text: str, *, user: str | None = None, mentioned: bool = False,
                      attachments: tuple[AttachmentRef, ...] = ()) -> IncomingMessage:
    """A follow-up in the thread Discord created from ``started`` (the thread id is that message's id)."""
    return replace(started, channel_id=started.message_id, thread_id=started.message_id,
                   parent_channel_id=started.channel_id, message_id=next_id(), text=text,
                   author_id=user or started.author_id, mentioned=mentioned, attachments=attachments)


def slack_mention(text: str, *, user: str = "W1", team: str = "T1", channel: str = "C1",
                  attachments: tuple[AttachmentRef, ...] = (), locale: str | None = None) -> IncomingMessage:
    ts = f"1700000000.{next_id()}"
    return IncomingMessage(platform="slack", workspace_id=team, channel_id=channel, thread_id=None,
                           message_id=ts, author_id=user, text=text, attachments=attachments, mentioned=True,
                           locale=locale)


def slack_in_thread(started: IncomingMessage, text: str, *, user: str | None = None,
                    mentioned: bool = False) -> IncomingMessage:
    """A reply in the thread rooted at ``started`` (Slack: same channel, ``thread_ts`` = root ts)."""
    return replace(started, thread_id=started.message_id, message_id=f"1700000000.{next_id()}", text=text,
                   author_id=user or started.author_id, mentioned=mentioned, attachments=())


def dm(platform: str, text: str, *, user: str = "U1", channel: str = "D1", locale: str | None = None,
       attachments: tuple[AttachmentRef, ...] = ()) -> IncomingMessage:
    return IncomingMessage(platform=platform, workspace_id="T1" if platform == "slack" else None,
                           channel_id=channel, thread_id=None, message_id=next_id(), author_id=user, text=text,
                           attachments=attachments, is_dm=True, locale=locale)
