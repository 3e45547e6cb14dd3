"""Assemble the Bolt app: one Web API client (pointed at SLACK_API_BASE_URL), helpers, the routing table."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.slack.files import SlackFileFetcher
from bot.adapters.slack.incoming import SlackInbox
from bot.adapters.slack.listeners import SlackListeners, register_listeners
from bot.adapters.slack.locales import UserDirectory
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.chat.service import ChatService


def build_app(settings: Settings, service: ChatService, *, session: aiohttp.ClientSession) -> AsyncApp:
    """The Bolt app with every listener registered; ``session`` downloads files and must outlive it."""
    if settings.slack_bot_token is None:
        raise ValueError("SLACK_BOT_TOKEN is required for the Slack adapter")
    bot_token = settings.slack_bot_token.get_secret_value()
    base_url = settings.slack_api_base_url.rstrip("/") + "/"  # slack_sdk joins method names onto it
    client = AsyncWebClient(token=bot_token, base_url=base_url)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
    secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else ""
    app = AsyncApp(client=client, signing_secret=secret, name="minigpt4",
                   logger=logging.getLogger("bot.adapters.slack.bolt"))
    files = SlackFileFetcher(session, bot_token=bot_token, api_base_url=base_url,
                             max_bytes=settings.max_image_bytes)
    inbox = SlackInbox(users=UserDirectory(client), files=files)
    register_listeners(app, SlackListeners(service=service, client=client, inbox=inbox))
    return app
