"""The run command end to end: no credentials -> console chat on a real worker child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from bot.weights import WeightsUnavailable, ensure_weights


def _bot(tmp_path: Path, stdin: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "SLACK_", "WORKER_", "QUEUE_"))}
    clean.update({"DATA_DIR": str(tmp_path / "data"), "LOG_LEVEL": "INFO", **env})
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=tmp_path, env=clean, input=stdin,
                          capture_output=True, text=True, timeout=240)


def test_run_without_credentials_opens_a_working_console_on_tiny_weights(tmp_path: Path, tiny_weights: Path) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photo)
    script = f"/image {photo}\nWhat can you see?\n/reset\n猫はいますか?\n/quit\n"
    result = _bot(tmp_path, script, MODEL_WEIGHTS=str(tiny_weights))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "console chat" in result.stderr and "DISCORD_TOKEN" in result.stderr  # says how to connect
    log = (tmp_path / "data" / "bot.log").read_text()
    assert log.count(" done (") == 2, log[-3000:]  # both questions were answered by the worker
    assert "1 image(s)" in log
    assert (tmp_path / "data" / "bot.sqlite3").exists()
    assert "Traceback" not in result.stdout + result.stderr


def test_dry_run_keyword_creates_tiny_weights_once(tmp_path: Path) -> None:
    first = ensure_weights("tiny", tmp_path)
    assert (first / "gpt-neox" / "config.json").exists() and (first / "arch.json").exists()
    stamp = (first / "checkpoint.pth").stat().st_mtime_ns
    assert ensure_weights("TINY", tmp_path) == first
    assert (first / "checkpoint.pth").stat().st_mtime_ns == stamp


def test_missing_weights_explain_download_and_dry_run(tmp_path: Path) -> None:
    # A "python" that fails stands in for a download without network.
    try:
        ensure_weights(str(tmp_path / "weights"), tmp_path, python="false")
    except WeightsUnavailable as exc:
        message = str(exc)
    else:
        raise AssertionError("expected WeightsUnavailable")
    assert "model_worker download --dest" in message and "MODEL_WEIGHTS=tiny" in message
    assert "eva_vit_g.pth" in message
