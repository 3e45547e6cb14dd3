"""The Discord adapter: a thin layer of discord.py over the chat service.

- :mod:`.listeners` decodes Discord events into :class:`~bot.chat.messages.IncomingMessage` and calls
  the service; :mod:`.operations` renders the replies (threads, typing, paced edits, follow-ups);
  :mod:`.views` holds the Stop button and the slash commands; :mod:`.client` wires them to discord.py.
- Endpoints: ``DISCORD_API_BASE_URL`` and ``DISCORD_GATEWAY_URL`` are applied by setting
  ``discord.http.Route.BASE`` and ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` (see
  :func:`.client.point_at_endpoints`): the client itself is unmodified.
- Slash commands are synced by ``python -m bot sync-commands`` (globally, or to ``DISCORD_DEV_GUILD_ID``),
  and at start-up only when a development guild is configured.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiohttp
import discord

from bot.settings import Settings, SettingsError

from .client import ChatClient, invite_url, point_at_endpoints

if TYPE_CHECKING:
    from bot.chat.service import ChatService

__all__ = ["invite_url", "run_discord", "sync_commands"]

log = logging.getLogger(__name__)

INTENT_MISSING = (
    "Discord refused the Message Content intent. Open https://discord.com/developers/applications, pick "
    "this bot's application, go to 'Bot' -> 'Privileged Gateway Intents', switch on 'MESSAGE CONTENT "
    "INTENT', save, and start the bot again. (Without it the bot cannot read follow-ups in threads.)"
)


async def run_discord(settings: Settings, service: ChatService) -> None:
    """Connect to Discord and answer until cancelled; raises :class:`SettingsError` with what to fix when
    Discord refuses the token or the Message Content intent."""
    point_at_endpoints(settings)
    async with aiohttp.ClientSession() as downloads:
        client = ChatClient(settings=settings, service=service, session=downloads)
        try:
            await client.start(_token(settings))
        except discord.PrivilegedIntentsRequired:
            raise SettingsError(INTENT_MISSING) from None
        except discord.LoginFailure:
            raise SettingsError("Discord rejected DISCORD_TOKEN (401). Copy the bot token again from the "
                                "developer portal.") from None
        finally:
            await client.close()


async def sync_commands(settings: Settings) -> None:
    """Register /reset and /help: in ``DISCORD_DEV_GUILD_ID`` when set, otherwise globally (on purpose:
    global changes take a while to reach every server, so this is a command, not a start-up step)."""
    point_at_endpoints(settings)
    client = ChatClient(settings=settings, service=None)
    try:
        await client.login(_token(settings))
        await client.sync_to(settings.discord_dev_guild_id)
    finally:
        await client.close()


def _token(settings: Settings) -> str:
    if settings.discord_token is None:
        raise ValueError("DISCORD_TOKEN is not set")
    return settings.discord_token.get_secret_value()
