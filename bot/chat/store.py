"""The bot's only persistent state: conversations, their turns, and images, in one SQLite file.

- **Mode**: WAL journal, foreign keys on. Every call runs on one dedicated thread (sqlite3 is blocking),
  so the event loop never waits on disk and the connection is never shared between threads.
- **Schema**: versioned; ``schema_migrations`` records each applied version, and :data:`MIGRATIONS` are
  applied in order at :meth:`Store.open`. Add a migration, never edit an applied one.
- **Conversations** are keyed by (platform, workspace, channel, thread); ``reset`` closes the open one,
  and the next message in the same place opens a new one. Closed conversations stay on disk.
- **Turns**: role, text, ordered image hashes, author, platform message id, created/updated timestamps
  and status. A user turn is stored ``pending`` before its request goes to the worker and becomes
  ``answered``, ``failed`` or ``cancelled``; an assistant turn is stored only when complete.
- **Images** are stored once per SHA-256 of their normalised PNG bytes. Retention
  (:meth:`Store.prune_images`, run at open and after every answer): images not used for
  ``IMAGE_RETENTION_DAYS`` are deleted, then the least recently used ones until the total is at most
  ``IMAGE_RETENTION_BYTES``. A turn whose image was deleted keeps its text; the image is left out of
  later requests (and logged).
- **Text retention** (``CONVERSATION_RETENTION_DAYS``; off: kept): turns older than that are deleted with
  their text, at open and after every answer; a conversation keeps only its keys.
- **At rest**: the data directory is created readable by its owner only (0700), the database files 0600.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
TurnStatus = Literal["pending", "answered", "failed", "cancelled", "complete"]

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        platform TEXT NOT NULL,
        workspace_id TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        closed_at REAL
    );
    CREATE UNIQUE INDEX conversations_open_key ON conversations (platform, workspace_id, channel_id, thread_id)
        WHERE closed_at IS NULL;
    CREATE TABLE images (
        sha256 TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        size INTEGER NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        created_at REAL NOT NULL,
        last_used_at REAL NOT NULL
    );
    CREATE INDEX images_last_used ON images (last_used_at);
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        text TEXT NOT NULL,
        author_id TEXT,
        platform_message_id TEXT,
        request_id TEXT,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX turns_by_conversation ON turns (conversation_id, id);
    CREATE UNIQUE INDEX turns_user_message ON turns (conversation_id, platform_message_id)
        WHERE role = 'user' AND platform_message_id IS NOT NULL;
    CREATE TABLE turn_images (
        turn_id INTEGER NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (turn_id, position)
    );
    """),
)


@dataclass(frozen=True)
class ConversationKey:
    """Where a conversation lives: (platform, workspace or "", channel, thread or "dm")."""

    platform: str
    workspace_id: str
    channel_id: str
    thread_id: str


@dataclass(frozen=True)
class Conversation:
    id: int
    key: ConversationKey
    created_at: float


@dataclass(frozen=True)
class StoredTurn:
    id: int
    role: Literal["user", "assistant"]
    text: str
    image_hashes: tuple[str, ...]
    author_id: str | None
    platform_message_id: str | None
    request_id: str | None
    status: str
    created_at: float


class DuplicateMessage(Exception):
    """This platform message was already stored as a user turn of the conversation (redelivery)."""


class Store:
    """Async access to the SQLite store (see the module docstring); create with ``await Store.open(path)``."""

    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor,
                 clock: Callable[[], float]) -> None:
        self._db = connection
        self._executor = executor
        self._clock = clock
        self._retention_s = 30 * 86400.0
        self._retention_bytes = 2_000_000_000
        self._text_retention_s: float | None = None

    @classmethod
    async def open(cls, path: Path, *, retention_days: float = 30.0,
                   retention_bytes: int = 2_000_000_000, clock: Callable[[], float] = time.time) -> Store:
        """Open (creating) the database at ``path``, apply pending migrations and image retention."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        loop = asyncio.get_running_loop()
        connection = await loop.run_in_executor(executor, _connect, Path(path))
        store = cls(connection, executor, clock)
        store.configure_retention(max_age_days=retention_days, max_total_bytes=retention_bytes)
        await store.apply_retention()
        return store

    def configure_retention(self, *, max_age_days: float, max_total_bytes: int,
                            text_max_age_days: float | None = None) -> None:
        """Set the image retention and the text retention (None: keep text); the chat service applies the
        settings' values."""
        self._retention_s = max_age_days * 86400.0
        self._retention_bytes = max_total_bytes
        self._text_retention_s = text_max_age_days * 86400.0 if text_max_age_days else None

    async def close(self) -> None:
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ---- conversations ----

    async def find_conversation(self, key: ConversationKey) -> Conversation | None:
        """The open conversation at ``key``, if any."""
        return await self._run(self._find_conversation, key)

    async def open_conversation(self, key: ConversationKey) -> Conversation:
        """The open conversation at ``key``, created when there is none."""
        return await self._run(self._open_conversation, key)

    async def close_conversation(self, key: ConversationKey) -> bool:
        """Close the open conversation at ``key``; ``False`` when there was none."""
        return await self._run(self._close_conversation, key)

    async def reset_conversation(self, key: ConversationKey) -> Conversation:
        """Close the open conversation at ``key`` and open a fresh, empty one in the same place."""
        return await self._run(self._reset_conversation, key)

    async def has_user_message(self, key: ConversationKey, platform_message_id: str) -> bool:
        """Whether the open conversation at ``key`` already holds this platform message (redelivery)."""
        return await self._run(self._has_user_message, key, platform_message_id)

    # ---- turns ----

    async def add_turn(self, conversation_id: int, *, role: Literal["user", "assistant"], text: str,
                       status: TurnStatus, image_hashes: Sequence[str] = (), author_id: str | None = None,
                       platform_message_id: str | None = None, request_id: str | None = None) -> int:
        """Append a turn; raises :class:`DuplicateMessage` for a user message stored before."""
        row = (conversation_id, role, text, author_id, platform_message_id, request_id, status)
        return await self._run(self._add_turn, row, tuple(image_hashes))

    async def set_turn_status(self, turn_id: int, status: TurnStatus) -> None:
        await self._run(self._write, "UPDATE turns SET status = ?, updated_at = ? WHERE id = ?",
                        (status, self._clock(), turn_id))

    async def list_turns(self, conversation_id: int) -> list[StoredTurn]:
        """Every turn of a conversation, oldest first, with its image hashes in order."""
        return await self._run(self._list_turns, conversation_id, None, None)

    async def recent_turns(self, conversation_id: int, *, limit: int, max_text_chars: int) -> list[StoredTurn]:
        """The newest ``limit`` turns, oldest first, each text cut to its first ``max_text_chars``
        characters (what a request can carry; a long conversation is never read whole)."""
        return await self._run(self._list_turns, conversation_id, limit, max_text_chars)

    # ---- images ----

    async def put_image(self, sha256: str, data: bytes, *, width: int, height: int) -> None:
        """Store an image by hash (a no-op apart from its use time when already held)."""
        await self._run(self._put_image, sha256, data, width, height)

    async def get_images(self, hashes: Sequence[str]) -> dict[str, bytes]:
        """The held images among ``hashes`` (pruned ones are absent); marks them used."""
        return await self._run(self._get_images, tuple(hashes))

    async def prune_images(self) -> int:
        """Apply the image retention rules; returns how many images were deleted."""
        return await self._run(self._prune_images, self._retention_s, self._retention_bytes)

    async def prune_text(self) -> int:
        """Delete turns older than the text retention (if one is set); returns how many were deleted."""
        if self._text_retention_s is None:
            return 0
        return await self._run(self._prune_text, self._text_retention_s)

    async def apply_retention(self) -> None:
        """Apply every retention rule (text, then images)."""
        await self.prune_text()
        await self.prune_images()

    # ---- blocking parts (store thread only) ----

    def _write(self, sql: str, params: tuple) -> None:
        with self._db:
            self._db.execute(sql, params)

    def _find_conversation(self, key: ConversationKey) -> Conversation | None:
        row = self._db.execute(
            "SELECT id, created_at FROM conversations WHERE platform = ? AND workspace_id = ? "
            "AND channel_id = ? AND thread_id = ? AND closed_at IS NULL", _key_params(key)).fetchone()
        return None if row is None else Conversation(row[0], key, row[1])

    def _open_conversation(self, key: ConversationKey) -> Conversation:
        found = self._find_conversation(key)
        if found is not None:
            return found
        now = self._clock()
        with self._db:
            cursor = self._db.execute(
                "INSERT INTO conversations (platform, workspace_id, channel_id, thread_id, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)", (*_key_params(key), now, now))
        return Conversation(cursor.lastrowid, key, now)

    def _has_user_message(self, key: ConversationKey, platform_message_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM turns t JOIN conversations c ON c.id = t.conversation_id WHERE c.platform = ? "
            "AND c.workspace_id = ? AND c.channel_id = ? AND c.thread_id = ? AND c.closed_at IS NULL "
            "AND t.role = 'user' AND t.platform_message_id = ?", (*_key_params(key), platform_message_id)).fetchone()
        return row is not None

    def _close_conversation(self, key: ConversationKey) -> bool:
        with self._db:
            cursor = self._db.execute(
                "UPDATE conversations SET closed_at = ? WHERE platform = ? AND workspace_id = ? "
                "AND channel_id = ? AND thread_id = ? AND closed_at IS NULL", (self._clock(), *_key_params(key)))
        return cursor.rowcount > 0

    def _reset_conversation(self, key: ConversationKey) -> Conversation:
        self._close_conversation(key)
        return self._open_conversation(key)

    def _add_turn(self, row: tuple, image_hashes: tuple[str, ...]) -> int:
        now = self._clock()
        try:
            with self._db:
                cursor = self._db.execute(
                    "INSERT INTO turns (conversation_id, role, text, author_id, platform_message_id, request_id,"
                    " status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, now, now))
                self._db.executemany(
                    "INSERT INTO turn_images (turn_id, position, sha256) VALUES (?, ?, ?)",
                    [(cursor.lastrowid, index, sha) for index, sha in enumerate(image_hashes)])
                self._db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, row[0]))
        except sqlite3.IntegrityError as exc:
            if "turns.conversation_id, turns.platform_message_id" in str(exc):
                raise DuplicateMessage(row[4]) from exc
            raise
        return cursor.lastrowid

    def _list_turns(self, conversation_id: int, limit: int | None, max_text_chars: int | None) -> list[StoredTurn]:
        # SQLite's text functions stop at a NUL character (a model can write one: sentencepiece's <0x00>), so a
        # long text is cut as bytes, 4 per character at most in UTF-8, and then to characters here.
        text = "substr(CAST(text AS BLOB), 1, ?)" if max_text_chars is not None else "text"
        rows = self._db.execute(
            f"SELECT id, role, {text}, author_id, platform_message_id, request_id, status, created_at "
            "FROM turns WHERE conversation_id = ? ORDER BY id DESC LIMIT ?",
            (*([4 * max_text_chars] if max_text_chars is not None else []), conversation_id,
             -1 if limit is None else limit)).fetchall()[::-1]
        if max_text_chars is not None:
            rows = [(r[0], r[1], r[2].decode("utf-8", errors="ignore")[:max_text_chars], *r[3:]) for r in rows]
        images: dict[int, list[str]] = {}
        oldest = rows[0][0] if rows else 0
        for turn_id, sha in self._db.execute(
                "SELECT ti.turn_id, ti.sha256 FROM turn_images ti JOIN turns t ON t.id = ti.turn_id "
                "WHERE t.conversation_id = ? AND t.id >= ? ORDER BY ti.turn_id, ti.position",
                (conversation_id, oldest)):
            images.setdefault(turn_id, []).append(sha)
        return [StoredTurn(r[0], r[1], r[2], tuple(images.get(r[0], ())), r[3], r[4], r[5], r[6], r[7])
                for r in rows]

    def _put_image(self, sha256: str, data: bytes, width: int, height: int) -> None:
        now = self._clock()
        with self._db:
            self._db.execute(
                "INSERT INTO images (sha256, data, size, width, height, created_at, last_used_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET last_used_at = excluded.last_used_at",
                (sha256, data, len(data), width, height, now, now))

    def _get_images(self, hashes: tuple[str, ...]) -> dict[str, bytes]:
        if not hashes:
            return {}
        marks = ",".join("?" * len(set(hashes)))
        unique = tuple(set(hashes))
        with self._db:
            self._db.execute(f"UPDATE images SET last_used_at = ? WHERE sha256 IN ({marks})", (self._clock(), *unique))
            rows = self._db.execute(f"SELECT sha256, data FROM images WHERE sha256 IN ({marks})", unique).fetchall()
        return dict(rows)

    def _prune_images(self, max_age_s: float, max_total_bytes: int) -> int:
        with self._db:
            deleted = self._db.execute("DELETE FROM images WHERE last_used_at < ?",
                                       (self._clock() - max_age_s,)).rowcount
            total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM images").fetchone()[0]
            for sha, size in self._db.execute("SELECT sha256, size FROM images ORDER BY last_used_at").fetchall():
                if total <= max_total_bytes:
                    break
                self._db.execute("DELETE FROM images WHERE sha256 = ?", (sha,))
                total, deleted = total - size, deleted + 1
        if deleted:
            log.info("image retention deleted %d image(s)", deleted)
        return deleted


    def _prune_text(self, max_age_s: float) -> int:
        with self._db:
            deleted = self._db.execute("DELETE FROM turns WHERE created_at < ?",
                                       (self._clock() - max_age_s,)).rowcount
        if deleted:
            log.info("text retention deleted %d turn(s)", deleted)
        return deleted


def _key_params(key: ConversationKey) -> tuple[str, str, str, str]:
    return key.platform, key.workspace_id, key.channel_id, key.thread_id


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Created 0600 before SQLite opens it; SQLite gives its -wal and -shm files the same mode.
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    connection = sqlite3.connect(path, timeout=10.0)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA synchronous=NORMAL")
    _migrate(connection)
    return connection


def _migrate(connection: sqlite3.Connection) -> None:
    with connection:
        connection.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                           "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)")
    applied = {row[0] for row in connection.execute("SELECT version FROM schema_migrations")}
    for version, sql in MIGRATIONS:
        if version in applied:
            continue
        # executescript commits first; the whole migration then runs in one explicit transaction.
        connection.executescript(f"BEGIN;\n{sql}\nINSERT INTO schema_migrations VALUES ({version}, {time.time()});\nCOMMIT;")
        log.info("store schema migrated to version %d", version)


def schema_version(connection: sqlite3.Connection) -> int:
    """The highest applied migration (for checks and tests)."""
    return connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
