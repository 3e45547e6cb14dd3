"""The Discord adapter end to end: the real discord.py client against the local fake Discord, the real
chat service on SQLite, and a real worker process on tiny weights (through a recording wrapper)."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

from PIL import Image

from bot.adapters.discord import run_discord
from bot.chat.service import ChatService
from bot.chat.store import Store
from bot.settings import Settings
from bot.worker_client.base import WorkerClient
from tests.fakes.discord_fake import FakeDiscord, RecordedRequest


def png_bytes(size: tuple[int, int] = (64, 48), colour: str = "orange") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def discord_settings(fake: FakeDiscord, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        discord_token="fake-token", discord_api_base_url=fake.api_base_url,
        discord_gateway_url=fake.gateway_url, discord_dev_guild_id=fake.guild_id, data_dir=data_dir,
        max_new_tokens=48, rate_limit_per_minute=600, rate_limit_burst=50,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@contextlib.asynccontextmanager
async def running_bot(fake: FakeDiscord, worker: WorkerClient, tmp_path: Path,
                      **overrides: object) -> AsyncIterator[ChatService]:
    """``run_discord`` as the app runs it, connected to the fake until the block ends."""
    settings = discord_settings(fake, tmp_path, **overrides)
    store = await Store.open(tmp_path / "bot.sqlite3")
    service = ChatService(settings=settings, store=store, worker=worker)
    task = asyncio.create_task(run_discord(settings, service))
    try:
        await fake.wait_ready()
        yield service
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


# ---- reading what the fake received ------------------------------------------------------------------


def settled_answer(fake: FakeDiscord, channel_id: int) -> list[str] | None:
    """The contents of the bot's messages in a channel once none carries a Stop button any more."""
    messages = fake.bot_messages(channel_id)
    if not messages or any(m["components"] for m in messages):
        return None
    return [m["content"] for m in messages]


def sends_and_edits(fake: FakeDiscord) -> list[RecordedRequest]:
    return (fake.requests_to("POST", r"/channels/\d+/messages")
            + fake.requests_to("PATCH", r"/channels/\d+/messages/\d+"))


def edit_times_by_message(fake: FakeDiscord) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    for request in fake.requests_to("PATCH", r"/channels/\d+/messages/\d+"):
        times.setdefault(request.path.rsplit("/", 1)[1], []).append(request.at)
    return times


def assert_no_pings(request: RecordedRequest) -> None:
    allowed = request.body["allowed_mentions"]
    assert allowed["parse"] == [], request.body
    assert not allowed.get("users") and not allowed.get("roles") and not allowed.get("replied_user")
