"""Readiness as the bot reads it: any 200 from /readyz means ready, an answer it cannot read is a warning that
names the worker (never a silent wait), and a worker speaking another protocol version stops start-up with
a clear message."""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import pytest
from aiohttp import web

from bot.app import check_protocol
from bot.settings import SettingsError
from bot.worker_client.http import HttpWorkerClient
from model_worker.wire.protocol import PROTOCOL_VERSION
from tests.support.processes import ROOT


async def stand_in_worker(tmp_path, body: str, content_type: str) -> tuple[web.AppRunner, str]:
    """A stand-in worker on a Unix socket whose /readyz always answers 200 with ``body``."""
    async def readyz(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type=content_type)

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app)
    await runner.setup()
    path = tmp_path / "stand-in.sock"
    await web.UnixSite(runner, str(path)).start()
    return runner, f"unix:{path}"


async def test_a_200_with_a_foreign_body_means_ready_and_is_reported(tmp_path, caplog):
    runner, url = await stand_in_worker(tmp_path, "OK", "text/plain")
    client = HttpWorkerClient(url)
    try:
        with caplog.at_level(logging.WARNING):
            info = await client.ready()
    finally:
        await client.close()
        await runner.cleanup()
    assert info.ready
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert url in warning and "expected JSON with 'ready' and 'protocol_version'" in warning


async def test_another_protocol_version_is_a_clear_start_up_error(tmp_path):
    body = json.dumps({"ready": True, "protocol_version": PROTOCOL_VERSION + 1})
    runner, url = await stand_in_worker(tmp_path, body, "application/json")
    client = HttpWorkerClient(url)
    try:
        with pytest.raises(SettingsError) as caught:
            await check_protocol(client, url)
    finally:
        await client.close()
    assert f"protocol version {PROTOCOL_VERSION + 1}" in caught.value.message and url in caught.value.message

    # The same through the command line, as an operator meets it.
    bot = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "run", cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"WORKER_URL": url, "DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin",
             "PYTHONPATH": str(ROOT)})
    try:
        _out, err = await asyncio.wait_for(bot.communicate(), 60)
    finally:
        await runner.cleanup()
    assert bot.returncode == 2
    assert f"speaks protocol version {PROTOCOL_VERSION + 1}" in err.decode() and "Traceback" not in err.decode()
