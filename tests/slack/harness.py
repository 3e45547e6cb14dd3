"""Run the real Slack adapter (``run_slack``) against the fake Slack, with a real chat service and store."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.adapters.slack import run_slack
from bot.chat.service import ChatService
from bot.chat.store import Store
from bot.settings import Settings
from bot.worker_client.base import WorkerClient
from tests.fakes.slack_fake import APP_TOKEN, BOT_TOKEN, BOT_USER_ID, TEAM_ID, FakeSlack


def slack_settings(fake: FakeSlack, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN, slack_api_base_url=fake.api_url,
        data_dir=data_dir, max_new_tokens=48, rate_limit_per_minute=600, rate_limit_burst=100,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class RunningBot:
    fake: FakeSlack
    settings: Settings
    service: ChatService
    store: Store
    task: asyncio.Task


@contextlib.asynccontextmanager
async def running_bot(fake: FakeSlack, settings: Settings, worker: WorkerClient) -> AsyncIterator[RunningBot]:
    """``run_slack`` in a task; in Socket Mode it is connected to the fake when this yields."""
    store = await Store.open(settings.database_path)
    service = ChatService(settings=settings, store=store, worker=worker)
    task = asyncio.create_task(run_slack(settings, service))
    try:
        if settings.slack_mode == "socket":
            await fake.wait_connected()
        yield RunningBot(fake, settings, service, store, task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


# ---- events as Slack sends them ------------------------------------------------------------------


def mention_event(text: str, *, ts: str, user: str = "U0ALICE", channel: str = "C0GENERAL",
                  files: list[dict] | None = None, thread_ts: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "app_mention", "user": user, "text": f"<@{BOT_USER_ID}> {text}".strip(),
                             "ts": ts, "event_ts": ts, "channel": channel, "team": TEAM_ID}
    if files:
        event["files"] = files
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def message_event(text: str, *, ts: str, user: str = "U0ALICE", channel: str = "C0GENERAL",
                  channel_type: str = "channel", files: list[dict] | None = None,
                  thread_ts: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "message", "user": user, "text": text, "ts": ts, "event_ts": ts,
                             "channel": channel, "channel_type": channel_type, "team": TEAM_ID}
    if files:
        event["files"] = files
        event["subtype"] = "file_share"
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event
