"""Discord events in, chat service calls out: decode an event into an :class:`IncomingMessage`, hand it
to the service, and let :mod:`.operations` render what comes back. No conversation logic lives here."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import discord

from bot.chat.i18n import t
from bot.chat.messages import (
    AttachmentAccessError,
    AttachmentRef,
    Failed,
    IncomingMessage,
    Notice,
    PlatformProfile,
    Reply,
)

from .operations import MessageReplies, respond
from .views import CommandName, stop_view

if TYPE_CHECKING:
    from bot.chat.service import ChatService

log = logging.getLogger(__name__)

PROFILE = PlatformProfile(platform="discord", max_message_chars=2000, edit_interval_s=1.0, markup="discord")


class Listeners:
    """The Discord adapter's entry points, wired to the client in :mod:`bot.adapters.discord.client`."""

    def __init__(self, *, service: ChatService) -> None:
        self._service = service

    async def on_message(self, message: discord.Message, *, me: discord.ClientUser) -> None:
        if message.author.bot:  # our own posts, and no bot-to-bot loops
            return
        incoming = await decode_message(message, me=me)
        lang = self._service.language_for(incoming.locale)
        replies = MessageReplies(message, interval=PROFILE.edit_interval_s,
                                 stop_view=lambda request_id: stop_view(request_id, lang=lang))
        async with replies:
            await _render_all(self._service.handle(incoming, PROFILE), replies.render)

    async def on_command(self, interaction: discord.Interaction, name: CommandName) -> None:
        incoming = decode_interaction(interaction)

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
    """Render every reply; if Discord refuses one, stop (closing the stream cancels the request)."""
    async with contextlib.aclosing(replies):
        try:
            async for reply in replies:
                await render(reply)
        except discord.HTTPException as exc:
            log.warning("Discord refused a reply (status %s, code %s: %s)", exc.status, exc.code, exc.text)


# ---- decoding ---------------------------------------------------------------------------------------


async def decode_message(message: discord.Message, *, me: discord.ClientUser) -> IncomingMessage:
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
        author_roles=_role_ids(message.author),
        text=_without_mention(message.content, me.id, bot_role),
        attachments=tuple(_attachment_ref(a) for a in attachments),
        mentioned=me in message.mentions or (bot_role is not None and bot_role in message.role_mentions),
        replied_to_bot=replied_to is not None and replied_to.author.id == me.id,
        is_dm=message.guild is None,
        locale=str(message.guild.preferred_locale) if message.guild else None,
    )


def decode_interaction(interaction: discord.Interaction) -> IncomingMessage:
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
        author_roles=_role_ids(interaction.user),
        text="",
        is_dm=interaction.guild_id is None,
        locale=str(interaction.locale),
    )


def _without_mention(content: str, bot_id: int, bot_role: discord.Role | None) -> str:
    pattern = rf"<@!?{bot_id}>" + (rf"|<@&{bot_role.id}>" if bot_role is not None else "")
    return re.sub(pattern, "", content).strip()


def _role_ids(author: discord.User | discord.Member) -> tuple[str, ...]:
    if not isinstance(author, discord.Member):
        return ()
    return tuple(str(role.id) for role in author.roles if not role.is_default())


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


def _attachment_ref(attachment: discord.Attachment) -> AttachmentRef:
    async def fetch() -> bytes:
        try:
            return await attachment.read()
        except discord.HTTPException as exc:
            raise AttachmentAccessError(f"Discord CDN answered {exc.status} for {attachment.filename}") from exc

    return AttachmentRef(filename=attachment.filename, declared_type=attachment.content_type,
                         declared_size=attachment.size, fetch=fetch,
                         width=attachment.width, height=attachment.height)
