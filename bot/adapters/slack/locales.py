"""Each Slack user's locale (``users.info`` with ``include_locale``), looked up once per user."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
from slack_sdk.errors import SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.cache import ExpiringCache
from bot.adapters.slack.errors import describe_for_log

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlackUser:
    locale: str | None
    name: str


class UserDirectory:
    """Caches users' locale and display name for ``ttl_s`` seconds (users rarely change language)."""

    def __init__(self, client: AsyncWebClient, *, ttl_s: float = 3600.0, capacity: int = 5_000) -> None:
        self._client = client
        self._cache: ExpiringCache[str, SlackUser] = ExpiringCache(ttl_s=ttl_s, capacity=capacity)

    async def lookup(self, user_id: str) -> SlackUser:
        """The user's locale and name; an unknown locale (``None``) when Slack will not say."""
        return await self._cache.get_or_load(user_id, self._fetch)

    async def _fetch(self, user_id: str) -> SlackUser:
        try:
            response = await self._client.users_info(user=user_id, include_locale=True)
        except (TimeoutError, SlackClientError, aiohttp.ClientError) as exc:
            log.warning("slack users.info failed for %s: %s (is the users:read scope granted?)",
                        user_id, describe_for_log(exc))
            return SlackUser(locale=None, name="")
        user = response.get("user") or {}
        profile = user.get("profile") or {}
        name = profile.get("display_name") or user.get("real_name") or user.get("name") or ""
        return SlackUser(locale=user.get("locale"), name=name)
