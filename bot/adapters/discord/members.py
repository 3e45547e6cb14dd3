"""Who a Discord user is in the guilds the bot shares with them: for the access rules of DMs, which
carry no guild (see :mod:`bot.chat.access`).

Each guild's member record comes from ``GET /guilds/{guild}/members/{user}`` (no privileged intent
needed); a 404 means "not a member". Results are kept for a few minutes, for a bounded number of users,
and at most :data:`MAX_GUILDS` guilds are asked per user.
"""

from __future__ import annotations

import logging

import discord

from bot.adapters.cache import ExpiringCache
from bot.chat.messages import Membership

log = logging.getLogger(__name__)

MAX_GUILDS = 25
TTL_S = 300.0
CAPACITY = 1_000


def role_ids(author: discord.User | discord.Member) -> tuple[str, ...]:
    """The ids of the roles a member holds (not @everyone); none for a user outside a guild."""
    if not isinstance(author, discord.Member):
        return ()
    return tuple(str(role.id) for role in author.roles if not role.is_default())


class MemberDirectory:
    """Looks up (and briefly remembers) a user's memberships in the bot's guilds."""

    def __init__(self, client: discord.Client) -> None:
        self._client = client
        self._cache: ExpiringCache[int, tuple[Membership, ...]] = ExpiringCache(ttl_s=TTL_S, capacity=CAPACITY)

    async def memberships(self, user_id: int) -> tuple[Membership, ...]:
        """The user's memberships (guild id and roles) in the guilds the bot is in."""
        return await self._cache.get_or_load(user_id, self._look_up)

    async def _look_up(self, user_id: int) -> tuple[Membership, ...]:
        guilds = self._client.guilds
        if len(guilds) > MAX_GUILDS:
            log.warning("the bot is in %d guilds; a DM's access check looks at the first %d", len(guilds),
                        MAX_GUILDS)
        found = []
        for guild in guilds[:MAX_GUILDS]:
            member = guild.get_member(user_id) or await _fetch_member(guild, user_id)
            if member is not None:
                found.append(Membership(str(guild.id), role_ids(member)))
        return tuple(found)


async def _fetch_member(guild: discord.Guild, user_id: int) -> discord.Member | None:
    try:
        return await guild.fetch_member(user_id)
    except discord.NotFound:
        return None
