"""A console session driven through stdin/stdout of ``python -m bot console`` against the real worker."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from bot.adapters.console import run_console
from bot.chat.i18n import t
from bot.chat.service import ChatService
from bot.chat.store import Store
from tests.bot.chat.conftest import make_settings
from tests.support import hostile_images as h
from tests.support.processes import ROOT as REPO
from tests.support.recording import RecordingWorker


def test_console_session_attaches_an_image_answers_resets_and_quits(tmp_path: Path, worker) -> None:
    picture = tmp_path / "photo.jpg"
    picture.write_bytes(h.exif_rotated_photo())
    script = f"/image {picture}\nWhat is in this picture?\n/reset\nHello again\n/quit\n"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKER_URL": worker.url, "DATA_DIR": str(tmp_path / "data"),
           "MAX_NEW_TOKENS": "5", "DEFAULT_LANGUAGE": "en", "LOG_LEVEL": "INFO"}
    env.pop("DISCORD_TOKEN", None)
    env.pop("SLACK_BOT_TOKEN", None)
    result = subprocess.run([sys.executable, "-m", "bot", "console"], input=script, capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert t("console_welcome", "en") in out
    assert t("console_image_attached", "en", path=str(picture)) in out
    assert out.count("[Thinking…]") == 2 or "Queued: #" in out  # a placeholder for each question
    assert t("reset_done", "en") in out and out.rstrip().endswith(t("console_bye", "en"))
    assert "Traceback" not in result.stderr

    with sqlite3.connect(tmp_path / "data" / "bot.sqlite3") as db:
        conversations = db.execute("SELECT id, closed_at IS NOT NULL FROM conversations ORDER BY id").fetchall()
        turns = db.execute("SELECT conversation_id, role, text, status FROM turns ORDER BY id").fetchall()
        images = db.execute("SELECT COUNT(*) FROM turn_images").fetchone()[0]
    assert [closed for _, closed in conversations] == [True, False]  # /reset closed the first one
    first, second = conversations[0][0], conversations[1][0]
    assert turns[:2] == [(first, "user", "What is in this picture?", "answered"), (first, "assistant", turns[1][2],
                                                                                   "complete")]
    assert turns[2][:3] == (second, "user", "Hello again") and turns[3][1] == "assistant"
    assert images == 1


async def test_run_console_with_pipes_in_japanese(tmp_path: Path, worker) -> None:
    settings = make_settings(tmp_path, default_language="ja")
    store = await Store.open(settings.database_path)
    client = RecordingWorker(worker.client())
    try:
        service = ChatService(settings=settings, store=store, worker=client)
        stdin = io.StringIO(f"/image {tmp_path / 'missing.png'}\n/help\n/frobnicate\nこんにちは\n")
        stdout = io.StringIO()
        assert await run_console(service, stdin=stdin, stdout=stdout, user="tester") == 0  # end of input
    finally:
        await client.close()
        await store.close()
    out = stdout.getvalue()
    assert t("console_image_missing", "ja", path=str(tmp_path / "missing.png")) in out
    assert "リセット" in out and t("console_unknown_command", "ja", command="/frobnicate") in out
    assert [turn.text for turn in client.requests[0].conversation] == ["こんにちは"]
    assert client.requests[0].user == "console:tester"
    assert client.answers[0].text.strip() in out and out.rstrip().endswith(t("console_bye", "ja"))
