"""The SQLite store: migrations, WAL, conversations, turns, images and their retention."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bot.chat.store import MIGRATIONS, ConversationKey, DuplicateMessage, Store

KEY = ConversationKey("discord", "G1", "C1", "T1")
OTHER = ConversationKey("discord", "G1", "C1", "T2")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path):
    opened = await Store.open(tmp_path / "bot.sqlite3")
    yield opened
    await opened.close()


async def test_schema_is_versioned_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "data" / "bot.sqlite3"
    store = await Store.open(path)
    await store.close()
    store = await Store.open(path)  # reopening applies nothing twice
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [row[0] for row in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert versions == [version for version, _ in MIGRATIONS]
    assert {"conversations", "turns", "turn_images", "images", "schema_migrations"} <= tables


async def test_conversation_lifecycle_and_reset(store: Store) -> None:
    assert await store.find_conversation(KEY) is None
    first = await store.open_conversation(KEY)
    assert (await store.open_conversation(KEY)).id == first.id
    assert await store.find_conversation(KEY) == first
    assert await store.close_conversation(KEY)
    assert not await store.close_conversation(KEY)
    assert await store.find_conversation(KEY) is None
    second = await store.open_conversation(KEY)
    assert second.id != first.id


async def test_turns_keep_order_images_status_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = await Store.open(path)
    conversation = await store.open_conversation(KEY)
    await store.put_image("a" * 64, b"png-a", width=2, height=1)
    await store.put_image("b" * 64, b"png-b", width=1, height=2)
    user = await store.add_turn(conversation.id, role="user", text="look", status="pending",
                                image_hashes=["b" * 64, "a" * 64], author_id="U1", platform_message_id="m1")
    await store.add_turn(conversation.id, role="assistant", text="a cat", status="complete", request_id="r1")
    await store.set_turn_status(user, "answered")
    await store.close()

    store = await Store.open(path)
    turns = await store.list_turns((await store.find_conversation(KEY)).id)
    assert [(t.role, t.text, t.status) for t in turns] == [("user", "look", "answered"),
                                                           ("assistant", "a cat", "complete")]
    assert turns[0].image_hashes == ("b" * 64, "a" * 64) and turns[0].platform_message_id == "m1"
    assert turns[0].author_id == "U1" and turns[1].request_id == "r1"
    assert await store.get_images(turns[0].image_hashes) == {"a" * 64: b"png-a", "b" * 64: b"png-b"}
    await store.close()


async def test_recent_turns_keep_nul_characters_and_cut_at_characters(store: Store) -> None:
    """A model can write a NUL (sentencepiece's byte piece <0x00>); SQLite's text functions would stop there."""
    conversation = await store.open_conversation(KEY)
    answer = "猫が\x00います \x00 and more"
    await store.add_turn(conversation.id, role="assistant", text=answer, status="complete")
    await store.add_turn(conversation.id, role="user", text="猫" * 30, status="pending")
    old, new = await store.recent_turns(conversation.id, limit=2, max_text_chars=100)
    assert old.text == answer and new.text == "猫" * 30
    _, cut = await store.recent_turns(conversation.id, limit=2, max_text_chars=7)
    assert cut.text == "猫" * 7
    assert [turn.text for turn in await store.list_turns(conversation.id)] == [answer, "猫" * 30]


async def test_a_redelivered_user_message_is_refused(store: Store) -> None:
    conversation = await store.open_conversation(KEY)
    await store.add_turn(conversation.id, role="user", text="hi", status="pending", platform_message_id="m1")
    assert await store.has_user_message(KEY, "m1")
    assert not await store.has_user_message(OTHER, "m1")
    with pytest.raises(DuplicateMessage):
        await store.add_turn(conversation.id, role="user", text="hi", status="pending", platform_message_id="m1")
    other = await store.open_conversation(OTHER)
    await store.add_turn(other.id, role="user", text="hi", status="pending", platform_message_id="m1")


async def test_conversations_do_not_mix(store: Store) -> None:
    one, two = await store.open_conversation(KEY), await store.open_conversation(OTHER)
    await store.add_turn(one.id, role="user", text="in one", status="pending")
    await store.add_turn(two.id, role="user", text="in two", status="pending")
    assert [t.text for t in await store.list_turns(one.id)] == ["in one"]
    assert [t.text for t in await store.list_turns(two.id)] == ["in two"]


async def test_image_retention_by_age_then_total_bytes(tmp_path: Path) -> None:
    clock = Clock()
    store = await Store.open(tmp_path / "bot.sqlite3", retention_days=1, retention_bytes=25, clock=clock)
    await store.put_image("1" * 64, b"x" * 10, width=1, height=1)
    clock.now += 2 * 86400  # image 1 is now older than a day
    await store.put_image("2" * 64, b"x" * 10, width=1, height=1)
    clock.now += 10
    await store.put_image("3" * 64, b"x" * 10, width=1, height=1)
    clock.now += 10
    await store.get_images(["2" * 64])  # using image 2 makes image 3 the least recently used
    clock.now += 10
    await store.put_image("4" * 64, b"x" * 10, width=1, height=1)
    assert await store.prune_images() == 2  # 1 by age, then 3 to get under 25 bytes
    assert set(await store.get_images(["1" * 64, "2" * 64, "3" * 64, "4" * 64])) == {"2" * 64, "4" * 64}
    await store.close()
