"""What the store keeps at rest, and for how long: owner-only files, and conversation text that expires."""

from __future__ import annotations

import stat
from pathlib import Path

from bot.chat.store import ConversationKey, Store
from tests.bot.chat.test_store import Clock

KEY = ConversationKey("discord", "g1", "c1", "t1")


async def test_the_data_directory_and_database_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    store = await Store.open(data_dir / "bot.sqlite3")
    conversation = await store.open_conversation(KEY)
    await store.add_turn(conversation.id, role="user", text="private", status="pending")
    await store.close()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for path in data_dir.glob("bot.sqlite3*"):  # the database and its WAL files
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_conversation_text_expires_when_a_retention_is_set(tmp_path: Path) -> None:
    clock = Clock()
    store = await Store.open(tmp_path / "bot.sqlite3", clock=clock)
    conversation = await store.open_conversation(KEY)
    await store.add_turn(conversation.id, role="user", text="old question", status="answered")
    clock.now += 3 * 86400
    await store.add_turn(conversation.id, role="user", text="new question", status="pending")

    await store.apply_retention()  # no text retention configured: everything is kept
    assert [t.text for t in await store.list_turns(conversation.id)] == ["old question", "new question"]

    store.configure_retention(max_age_days=30, max_total_bytes=10**9, text_max_age_days=2)
    await store.apply_retention()
    assert [t.text for t in await store.list_turns(conversation.id)] == ["new question"]
    assert await store.find_conversation(KEY) is not None  # the thread is still known, without its old text
    await store.close()
