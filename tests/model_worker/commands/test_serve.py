"""``python -m model_worker serve``: its flags reach the configuration, and start-up checks refuse what must
not run (a public bind without a token, missing weights, a bad queue URL)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.worker_client.http import HttpWorkerClient
from model_worker.__main__ import build_parser
from model_worker.commands import serve
from model_worker.engine.options import EngineOptions
from model_worker.serve.process import ServeConfig, ServeError, check_config, is_loopback
from tests.support.requests import collect, one_turn, reply_of


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--weights", "w", *argv])


def test_defaults_leave_in_flight_unlimited_and_compile_off():
    config = serve.config_from_args(parse())
    assert config.limits.max_tokens_in_flight is None
    assert config.engine_options == EngineOptions()
    assert config.weights == Path("w")


def test_every_throughput_option_is_passed_on():
    config = serve.config_from_args(parse("--max-batch-size", "32", "--max-tokens-in-flight", "20000",
                                          "--image-cache-size", "10", "--image-cache-mb", "2.5",
                                          "--prefix-cache-tokens", "0", "--compile-decode"))
    assert config.limits.max_tokens_in_flight == 20000
    assert config.engine_options == EngineOptions(max_batch_size=32, image_cache_entries=10, image_cache_mb=2.5,
                                                  prefix_cache_tokens=0, compile_decode=True)


def test_a_negative_cache_size_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse("--prefix-cache-tokens", "-1")
    assert "must be 0 or more" in capsys.readouterr().err


def test_queue_url_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.setenv("QUEUE_URL", "rediss://:secret@redis.internal:6380/0")
    from_env = serve.config_from_args(parse("--socket", "s.sock", "--queue", "--claim-idle-ms", "5000"))
    assert from_env.queue_url == "rediss://:secret@redis.internal:6380/0"
    assert from_env.claim_idle_ms == 5000 and from_env.socket_path is not None
    assert "secret" not in repr(from_env)
    assert serve.config_from_args(parse("--queue", "redis://q:6379/1")).queue_url == "redis://q:6379/1"
    assert serve.config_from_args(parse()).queue_url is None


@pytest.mark.parametrize("argv", [("--queue", "http://redis:6379"), ("--queue",)])
def test_bad_or_missing_queue_url_stops_start_up(argv, monkeypatch, capsys):
    monkeypatch.delenv("QUEUE_URL", raising=False)
    assert serve.run(parse(*argv)) == 2
    assert "--queue needs redis://" in capsys.readouterr().err


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
        streamed, done = reply_of(await collect(client.chat(one_turn(max_new_tokens=6))))
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
