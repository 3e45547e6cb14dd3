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
from slack_sdk.errors import SlackApiError

from bot.adapters.slack.app import build_app
from bot.adapters.slack.errors import slack_error_code
from bot.settings import Settings, SettingsError

if TYPE_CHECKING:
    from bot.chat.service import ChatService

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"


async def run_slack(settings: Settings, service: ChatService) -> None:
    """Run the Slack adapter until cancelled."""
    async with aiohttp.ClientSession() as session:
        app = build_app(settings, service, session=session)
        await _check_credentials(app, settings)
        if settings.slack_mode == "http":
            await _serve_http(app, settings)
        else:
            await _serve_socket_mode(app, settings)


async def _check_credentials(app: AsyncApp, settings: Settings) -> None:
    """Stop start-up with one sentence when Slack refuses a token (instead of retrying forever)."""
    try:
        identity = await app.client.auth_test()
    except SlackApiError as exc:
        raise SettingsError(f"SLACK_BOT_TOKEN: Slack refused the bot token ({slack_error_code(exc)})") from None
    log.info("slack: signed in as %s in team %s", identity.get("user_id"), identity.get("team_id"))
    if settings.slack_mode == "socket" and settings.slack_app_token is not None:
        try:
            await app.client.apps_connections_open(app_token=settings.slack_app_token.get_secret_value())
        except SlackApiError as exc:
            raise SettingsError("SLACK_APP_TOKEN: Slack refused the app-level token "
                                f"({slack_error_code(exc)}; it needs the connections:write scope)") from None


async def _serve_socket_mode(app: AsyncApp, settings: Settings) -> None:
    if settings.slack_app_token is None:
        raise SettingsError("SLACK_APP_TOKEN: required when SLACK_MODE=socket")
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
