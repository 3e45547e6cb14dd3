"""The discord.py client: intents, the routing table from Discord events to listeners, command sync.

discord.py reads its endpoints from two class attributes, ``discord.http.Route.BASE`` (REST) and
``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (websocket); :func:`point_at_endpoints` sets them from
``DISCORD_API_BASE_URL`` / ``DISCORD_GATEWAY_URL`` so that the unmodified client can run behind a REST
proxy or against a local fake. They are process-wide: one Discord endpoint per process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from bot.adapters.downloads import Downloader
from bot.chat.i18n import language_for_locale, t
from bot.settings import Settings

from .errors import describe_for_log
from .listeners import Listeners, Lookups
from .members import MemberDirectory
from .operations import respond
from .views import CatalogueTranslator, CommandName, StopButton, build_commands

if TYPE_CHECKING:
    from bot.chat.service import ChatService

log = logging.getLogger(__name__)

#: Exactly what the bot uses: read channels and history (replies, referenced images), post in channels
#: and threads, open public threads from a question. No files are uploaded and no reactions are added.
BOT_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    read_message_history=True,
)


def invite_url(application_id: int) -> str:
    """The OAuth2 URL that adds the bot (with slash commands) and exactly the permissions it needs."""
    return discord.utils.oauth_url(application_id, permissions=BOT_PERMISSIONS,
                                   scopes=("bot", "applications.commands"))


def point_at_endpoints(settings: Settings) -> None:
    """Aim discord.py's REST and gateway URLs at the configured endpoints (defaults: Discord's own)."""
    Route.BASE = settings.discord_api_base_url.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


def bot_intents() -> discord.Intents:
    """Guild and DM messages, plus Message Content (privileged) for follow-ups without a mention."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.message_content = True
    return intents


class ChatClient(discord.Client):
    """Routes Discord events to :class:`Listeners`; registers the Stop button and slash commands.

    Without a service (command sync) it answers nothing; ``session`` downloads attachments."""

    def __init__(self, *, settings: Settings, service: ChatService | None,
                 session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(intents=bot_intents(), allowed_mentions=discord.AllowedMentions.none())
        self.settings = settings
        self.tree = app_commands.CommandTree(self)
        self.tree.error(self._command_failed)
        self._chat = None
        if service is not None:
            if session is None:
                raise ValueError("answering needs a session for attachment downloads")
            lookups = Lookups(Downloader(session, max_bytes=settings.max_image_bytes), MemberDirectory(self))
            self._chat = Listeners(service=service, lookups=lookups)
        self._handlers: set[asyncio.Task[object]] = set()  # running event handlers, cancelled on close
        for command in build_commands(self._run_command):
            self.tree.add_command(command)

    async def setup_hook(self) -> None:
        await self.tree.set_translator(CatalogueTranslator())
        self.add_dynamic_items(StopButton)
        log.info("Discord: invite the bot with %s", invite_url(self.application_id))
        if self.settings.discord_dev_guild_id is not None and self._chat is not None:
            await self.sync_to(self.settings.discord_dev_guild_id)

    async def sync_to(self, guild_id: int | None) -> int:
        """Register the slash commands in one guild, or globally with ``None``; returns how many."""
        guild = discord.Object(guild_id) if guild_id is not None else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        synced = await self.tree.sync(guild=guild)
        log.info("Discord: synced %d slash commands %s", len(synced),
                 f"to guild {guild_id}" if guild_id is not None else "globally")
        return len(synced)

    async def on_ready(self) -> None:
        log.info("Discord: connected as %s (%s) in %d guilds", self.user, self.user.id if self.user else "?",
                 len(self.guilds))

    async def close(self) -> None:
        for task in list(self._handlers):
            task.cancel()  # closing a reply stream also cancels its request on the worker
        await super().close()

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        """Anything an event handler let through: logged once, on our logger (discord.py prints to stderr)."""
        log.exception("Discord event %s failed", event_method)

    async def _command_failed(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        log.error("Discord slash command failed: %s", describe_for_log(getattr(error, "original", error)),
                  exc_info=error)
        lang = language_for_locale(str(interaction.locale), self.settings.default_language)
        try:
            await respond(interaction, t("internal", lang), ephemeral=True)
        except discord.HTTPException as second:
            log.error("could not tell the user about it either: %s", describe_for_log(second))

    async def on_message(self, message: discord.Message) -> None:
        if self._chat is not None and self.user is not None:
            await self._tracked(self._chat.on_message(message, me=self.user))

    async def stop_pressed(self, interaction: discord.Interaction, request_id: str) -> None:
        if self._chat is not None:
            await self._chat.on_stop(interaction, request_id)

    async def _run_command(self, interaction: discord.Interaction, name: CommandName) -> None:
        if self._chat is not None:
            await self._tracked(self._chat.on_command(interaction, name))

    async def _tracked(self, handler: Coroutine[Any, Any, None]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await handler
        finally:
            self._handlers.discard(task)
