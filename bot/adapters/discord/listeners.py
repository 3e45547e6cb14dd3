"""Discord events in, chat service calls out: decode an event into an :class:`IncomingMessage`, hand it
to the service, and let :mod:`.operations` render what comes back. No conversation logic lives here."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import discord

from bot.adapters.downloads import Downloader
from bot.adapters.reporting import report_failure
from bot.chat.i18n import t
from bot.chat.messages import (
    AttachmentRef,
    Failed,
    IncomingMessage,
    MembershipLookup,
    Notice,
    PlatformProfile,
    Reply,
)

from .errors import DISCORD_ERRORS, can_still_post, describe_for_log
from .members import MemberDirectory, role_ids
from .operations import MessageReplies, respond
from .views import CommandName, stop_view

if TYPE_CHECKING:
    from bot.chat.service import ChatService

log = logging.getLogger(__name__)

PROFILE = PlatformProfile(platform="discord", max_message_chars=2000, edit_interval_s=1.0, markup="discord")


@dataclass(frozen=True)
class Lookups:
    """What decoding needs from the platform: attachment downloads and, for DMs, members' guild roles."""

    downloader: Downloader
    members: MemberDirectory

    def memberships_of(self, user: discord.abc.User) -> MembershipLookup:
        return partial(self.members.memberships, user.id)


class Listeners:
    """The Discord adapter's entry points, wired to the client in :mod:`bot.adapters.discord.client`."""

    def __init__(self, *, service: ChatService, lookups: Lookups) -> None:
        self._service = service
        self._lookups = lookups

    async def on_message(self, message: discord.Message, *, me: discord.ClientUser) -> None:
        if message.author.bot:  # our own posts, and no bot-to-bot loops
            return
        lang = self._service.language_for(str(message.guild.preferred_locale) if message.guild else None)
        replies = MessageReplies(message, interval=PROFILE.edit_interval_s, lang=lang,
                                 stop_view=lambda request_id: stop_view(request_id, lang=lang))
        async with replies:
            try:
                incoming = await decode_message(message, me=me, lookups=self._lookups)
                await _render_all(self._service.handle(incoming, PROFILE), replies.render)
            except Exception as exc:  # the catch-all: one log line, and the user hears something went wrong
                await report_failure(replies.render, exc, lang=lang, where=f"discord channel {message.channel.id}",
                                     platform_errors=DISCORD_ERRORS, describe=describe_for_log,
                                     tell_user=can_still_post(exc))

    async def on_command(self, interaction: discord.Interaction, name: CommandName) -> None:
        incoming = decode_interaction(interaction, lookups=self._lookups)

        async def show(reply: Reply) -> None:
            if isinstance(reply, Notice | Failed):
                await respond(interaction, reply.text, ephemeral=name == "help")

        await _render_all(self._service.run_command(name, incoming, PROFILE), show)

    async def on_stop(self, interaction: discord.Interaction, request_id: str) -> None:
        if await self._service.cancel(request_id, user_id=str(interaction.user.id)):
            await interaction.response.defer()  # the answer's last edit removes the button
            return
        lang = self._service.language_for(str(interaction.locale))
        await respond(interaction, t("cancel_not_allowed", lang), ephemeral=True)


async def _render_all(replies: AsyncIterator[Reply], render: Callable[[Reply], Awaitable[None]]) -> None:
    """Render every reply; an error stops the stream (closing it cancels the request) and is raised."""
    async with contextlib.aclosing(replies):
        async for reply in replies:
            await render(reply)


# ---- decoding ---------------------------------------------------------------------------------------


async def decode_message(message: discord.Message, *, me: discord.ClientUser, lookups: Lookups) -> IncomingMessage:
    """The platform-neutral view of a Discord message (mention removed, reply's images included)."""
    channel = message.channel
    in_thread = isinstance(channel, discord.Thread)
    replied_to = await _replied_to(message)
    attachments = message.attachments or _images(replied_to.attachments if replied_to else [])
    bot_role = message.guild.self_role if message.guild else None  # people often pick the bot's role
    return IncomingMessage(
        platform="discord",
        workspace_id=str(message.guild.id) if message.guild else None,
        channel_id=str(channel.id),
        thread_id=str(channel.id) if in_thread else None,
        parent_channel_id=str(channel.parent_id) if in_thread else None,
        message_id=str(message.id),
        author_id=str(message.author.id),
        author_name=message.author.display_name,
        author_roles=role_ids(message.author),
        text=_without_mention(message.content, me.id, bot_role),
        attachments=tuple(_attachment_ref(a, lookups.downloader) for a in attachments),
        mentioned=me in message.mentions or (bot_role is not None and bot_role in message.role_mentions),
        replied_to_bot=replied_to is not None and replied_to.author.id == me.id,
        is_dm=message.guild is None,
        locale=str(message.guild.preferred_locale) if message.guild else None,
        find_memberships=lookups.memberships_of(message.author) if message.guild is None else None,
    )


def decode_interaction(interaction: discord.Interaction, *, lookups: Lookups) -> IncomingMessage:
    """The platform-neutral view of a slash command (no text; the conversation is the channel's)."""
    channel = interaction.channel
    in_thread = isinstance(channel, discord.Thread)
    channel_id = str(interaction.channel_id)
    return IncomingMessage(
        platform="discord",
        workspace_id=str(interaction.guild_id) if interaction.guild_id else None,
        channel_id=channel_id,
        thread_id=channel_id if in_thread else None,
        parent_channel_id=str(channel.parent_id) if in_thread else None,
        message_id=str(interaction.id),
        author_id=str(interaction.user.id),
        author_name=interaction.user.display_name,
        author_roles=role_ids(interaction.user),
        text="",
        is_dm=interaction.guild_id is None,
        locale=str(interaction.locale),
        find_memberships=lookups.memberships_of(interaction.user) if interaction.guild_id is None else None,
    )


def _without_mention(content: str, bot_id: int, bot_role: discord.Role | None) -> str:
    pattern = rf"<@!?{bot_id}>" + (rf"|<@&{bot_role.id}>" if bot_role is not None else "")
    return re.sub(pattern, "", content).strip()


def _images(attachments: list[discord.Attachment]) -> list[discord.Attachment]:
    return [a for a in attachments if (a.content_type or "").startswith("image/")]


async def _replied_to(message: discord.Message) -> discord.Message | None:
    reference = message.reference
    if reference is None or reference.message_id is None:
        return None
    if isinstance(reference.resolved, discord.Message):
        return reference.resolved
    if reference.resolved is not None:  # DeletedReferencedMessage
        return None
    try:
        return await message.channel.fetch_message(reference.message_id)
    except discord.HTTPException as exc:
        log.info("could not fetch the replied-to message %s (status %s)", reference.message_id, exc.status)
        return None


def _attachment_ref(attachment: discord.Attachment, downloader: Downloader) -> AttachmentRef:
    async def fetch() -> bytes:  # streamed from the CDN within the size cap and time limit
        return (await downloader.fetch(attachment.url, name=attachment.filename)).data

    return AttachmentRef(filename=attachment.filename, declared_type=attachment.content_type,
                         declared_size=attachment.size, fetch=fetch,
                         width=attachment.width, height=attachment.height)
