"""Assemble the Bolt app: one Web API client (pointed at SLACK_API_BASE_URL), helpers, the routing table."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.adapters.downloads import Downloader
from bot.adapters.slack.files import SlackFileFetcher
from bot.adapters.slack.incoming import SlackInbox
from bot.adapters.slack.listeners import SlackListeners, register_listeners
from bot.adapters.slack.locales import UserDirectory
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.chat.service import ChatService

#: Retries by slack_sdk's own handlers: a 429 is retried after its Retry-After (Slack limits chat.update
#: and chat.postMessage per method and channel); a dropped or reset connection is retried at once.
RATE_LIMIT_RETRIES = 3
CONNECTION_RETRIES = 2


def web_client(token: str, base_url: str) -> AsyncWebClient:
    """The Web API client the adapter uses, with slack_sdk's retry handlers for rate limits and
    connection errors (no hand-written retry loops)."""
    return AsyncWebClient(token=token, base_url=base_url.rstrip("/") + "/",  # slack_sdk joins method names
                          retry_handlers=[AsyncConnectionErrorRetryHandler(max_retry_count=CONNECTION_RETRIES),
                                          AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES)])


def _bolt_logger() -> logging.Logger:
    """Bolt's logger, without the start-up warning that SLACK_BOT_TOKEN in the environment is unused (it
    is: the client built here carries it; Bolt also reads the variable itself and warns about the pair)."""
    logger = logging.getLogger("bot.adapters.slack.bolt")
    if not any(isinstance(f, _TokenSkippedWarning) for f in logger.filters):
        logger.addFilter(_TokenSkippedWarning())
    return logger


class _TokenSkippedWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


def build_app(settings: Settings, service: ChatService, *, session: aiohttp.ClientSession) -> AsyncApp:
    """The Bolt app with every listener registered; ``session`` downloads files and must outlive it."""
    if settings.slack_bot_token is None:
        raise ValueError("SLACK_BOT_TOKEN is required for the Slack adapter")
    bot_token = settings.slack_bot_token.get_secret_value()
    client = web_client(bot_token, settings.slack_api_base_url)
    secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else ""
    app = AsyncApp(client=client, signing_secret=secret, name="minigpt4", logger=_bolt_logger())
    files = SlackFileFetcher(Downloader(session, max_bytes=settings.max_image_bytes), bot_token=bot_token,
                             api_base_url=client.base_url)
    inbox = SlackInbox(users=UserDirectory(client), files=files)
    register_listeners(app, SlackListeners(service=service, client=client, inbox=inbox))
    return app
