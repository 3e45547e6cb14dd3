"""The Slack adapter: slack_bolt's async app as a thin layer over the chat service.

Socket Mode (no public URL) is the default; ``SLACK_MODE=http`` serves signed Events API requests on
``SLACK_HTTP_HOST:SLACK_HTTP_PORT`` at ``/slack/events`` instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp

from bot.adapters.slack.app import build_app
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.chat.service import ChatService

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"


async def run_slack(settings: Settings, service: ChatService) -> None:
    """Run the Slack adapter until cancelled."""
    async with aiohttp.ClientSession() as session:
        app = build_app(settings, service, session=session)
        if settings.slack_mode == "http":
            await _serve_http(app, settings)
        else:
            await _serve_socket_mode(app, settings)


async def _serve_socket_mode(app: AsyncApp, settings: Settings) -> None:
    if settings.slack_app_token is None:
        raise ValueError("SLACK_APP_TOKEN is required in Socket Mode")
    handler = AsyncSocketModeHandler(app, settings.slack_app_token.get_secret_value())
    await handler.connect_async()
    log.info("slack: connected in Socket Mode")
    try:
        await asyncio.Event().wait()
    finally:
        await handler.close_async()


async def _serve_http(app: AsyncApp, settings: Settings) -> None:
    runner = web.AppRunner(app.web_app(path=EVENTS_PATH, port=settings.slack_http_port))
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.slack_http_host, settings.slack_http_port).start()
        log.info("slack: serving HTTP events on %s:%s%s", settings.slack_http_host,
                 settings.slack_http_port, EVENTS_PATH)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


__all__ = ["run_slack"]
