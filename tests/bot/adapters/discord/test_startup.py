"""Start-up: the invite URL, the Message Content intent message, and when slash commands are synced."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import discord
import pytest

from bot.adapters.discord import INTENT_MISSING, invite_url, run_discord, sync_commands
from bot.chat.service import ChatService
from bot.chat.store import Store
from bot.settings import Settings, SettingsError
from bot.worker_client.http import HttpWorkerClient
from tests.bot.adapters.discord.harness import discord_settings, running_bot
from tests.fakes.discord_fake import FakeDiscord


@contextlib.asynccontextmanager
async def _service(settings: Settings, tmp_path: Path) -> AsyncIterator[ChatService]:
    """A real service whose worker is never reached (nothing here asks the model)."""
    store = await Store.open(tmp_path / "bot.sqlite3")
    worker = HttpWorkerClient(f"unix:{tmp_path / 'no-worker.sock'}")
    try:
        yield ChatService(settings=settings, store=store, worker=worker)
    finally:
        await worker.close()
        await store.close()


async def _run_until_connected(fake: FakeDiscord, tmp_path: Path, **overrides: object) -> None:
    settings = discord_settings(fake, tmp_path, **overrides)
    async with _service(settings, tmp_path) as service:
        task = asyncio.create_task(run_discord(settings, service))
        try:
            await fake.wait_ready()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_invite_url_asks_for_exactly_the_permissions_used():
    query = parse_qs(urlsplit(invite_url(1234)).query)
    expected = discord.Permissions(view_channel=True, send_messages=True, send_messages_in_threads=True,
                                   create_public_threads=True, read_message_history=True)
    assert query["client_id"] == ["1234"]
    assert int(query["permissions"][0]) == expected.value
    assert set(query["scope"][0].split()) == {"bot", "applications.commands"}


async def test_start_up_logs_the_invite_and_syncs_only_to_the_dev_guild(fake_discord, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bot.adapters.discord")
    await _run_until_connected(fake_discord, tmp_path)

    assert invite_url(fake_discord.application_id) in caplog.text
    [put] = fake_discord.requests_to("PUT", r"/applications/\d+/guilds/\d+/commands")
    assert put.path.endswith(f"/guilds/{fake_discord.guild_id}/commands")
    assert fake_discord.identify["intents"] & discord.Intents(message_content=True).value


async def test_without_a_dev_guild_commands_are_synced_only_on_request(fake_discord, tmp_path):
    await _run_until_connected(fake_discord, tmp_path, discord_dev_guild_id=None)
    assert not fake_discord.requests_to("PUT", r"/applications/.*"), "no sync on an ordinary start"

    await sync_commands(discord_settings(fake_discord, tmp_path, discord_dev_guild_id=None))
    [put] = fake_discord.requests_to("PUT", r"/applications/.*")
    assert put.path == f"/applications/{fake_discord.application_id}/commands"
    names = {command["name"]: command for command in put.body}
    assert names.keys() == {"reset", "help"}
    assert names["reset"]["name_localizations"]["ja"] == "リセット"
    assert names["help"]["description_localizations"]["ja"] == "このボットの使い方"


async def test_missing_message_content_intent_gives_a_clear_message(tmp_path, caplog):
    fake = await FakeDiscord(message_content_enabled=False).start()
    settings = discord_settings(fake, tmp_path)
    try:
        async with _service(settings, tmp_path) as service:
            with pytest.raises(SettingsError) as refused:  # stops by itself, saying what to switch on
                await asyncio.wait_for(run_discord(settings, service), 20)
    finally:
        await fake.stop()
    assert fake.identify is not None
    assert refused.value.message == INTENT_MISSING


async def test_stopping_mid_answer_cancels_the_handlers_cleanly(fake_discord, recording_worker, tmp_path, caplog):
    fake = fake_discord
    async with running_bot(fake, recording_worker, tmp_path, max_new_tokens=1536):
        question = await fake.post_user_message("Tell me a very long story", mention_bot=True)
        await fake.wait_until(lambda: fake.bot_messages(int(question["id"])))
        handlers = [task for task in asyncio.all_tasks() if task.get_name() == "discord.py: on_message"]
        assert handlers, "the answer's handler is running when the bot stops"
    await asyncio.sleep(0.2)

    assert all(task.done() for task in handlers)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
