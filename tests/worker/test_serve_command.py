"""``python -m model_worker serve`` start-up checks that need no model."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import pytest

from bot.worker_client.http import HttpWorkerClient
from model_worker.serve.process import ServeConfig, ServeError, check_config, is_loopback
from tests.worker.conversation import collect, greedy_request, reply_of


def test_non_loopback_bind_without_token_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WORKER_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "model_worker", "serve", "--weights", str(tmp_path), "--host", "0.0.0.0",
         "--port", "0"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 2
    assert "bearer token" in result.stderr and "WORKER_TOKEN" in result.stderr


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("192.168.1.20", False), ("::", False), ("worker.example", False),
])
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback


def test_token_allows_a_public_bind(tmp_path):
    check_config(ServeConfig(weights=tmp_path, host="0.0.0.0", token="secret"))
    with pytest.raises(ServeError):
        check_config(ServeConfig(weights=tmp_path, host="0.0.0.0"))


def test_missing_weights_directory_is_refused_before_loading(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "model_worker", "serve", "--weights", str(tmp_path / "nowhere"),
         "--socket", str(tmp_path / "worker.sock")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "worker.sock").exists()


def test_token_is_not_in_the_config_repr(tmp_path):
    assert "hunter2" not in repr(ServeConfig(weights=tmp_path, token="hunter2"))


async def test_loopback_tcp_serves_the_http_client(tiny_weights):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "model_worker", "serve", "--weights", str(tiny_weights), "--host", "127.0.0.1",
        "--port", "0", "--device", "cpu", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    client = None
    try:
        url = await _listening_url(process)
        assert url.startswith("http://127.0.0.1:")
        client = HttpWorkerClient(url)
        await _until_ready(client)
        streamed, done = reply_of(await collect(client.chat(greedy_request(max_new_tokens=6))))
        assert done.text == streamed
    finally:
        if client is not None:
            await client.close()
        if process.returncode is None:
            process.terminate()  # SIGTERM: a graceful stop
        await process.communicate()
    assert process.returncode == 0


async def _listening_url(process: asyncio.subprocess.Process) -> str:
    async for line in process.stdout:
        match = re.search(r"listening on (\S+);", line.decode())
        if match:
            return match.group(1)
    raise AssertionError("the worker exited without listening")


async def _until_ready(client: HttpWorkerClient) -> None:
    for _ in range(1200):
        if (await client.ready()).ready:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the worker never became ready")
