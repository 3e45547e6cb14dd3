"""A real ``python -m model_worker serve`` process for tests, on a Unix socket in a temporary directory or,
for clients that only speak TCP (the OpenAI SDK), on a free loopback port."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bot.worker_client.http import HttpWorkerClient
from model_worker.commands.health import UnixHTTPConnection

READY_TIMEOUT_S = 120.0


@dataclass
class WorkerHandle:
    """A running worker: where it listens (a Unix socket, or ``http://127.0.0.1:PORT`` once known), its
    process, and its log file."""

    socket_path: Path | None
    process: subprocess.Popen
    log_path: Path
    token: str | None = None
    http_url: str | None = None

    @property
    def url(self) -> str:
        return self.http_url or f"unix:{self.socket_path}"

    def client(self, **options: object) -> HttpWorkerClient:
        """A new client for this worker (close it when done)."""
        return HttpWorkerClient(self.url, token=self.token, **options)

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def http_session(self) -> aiohttp.ClientSession:
        """A raw aiohttp session on the worker's socket (for requests the client would never send)."""
        if self.socket_path is None:
            return aiohttp.ClientSession(self.http_url, headers=self.auth_headers())
        return aiohttp.ClientSession("http://worker", connector=aiohttp.UnixConnector(path=str(self.socket_path)),
                                     headers=self.auth_headers())

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get(self, path: str) -> tuple[int, bytes]:
        """A blocking GET (for start-up checks outside an event loop)."""
        if self.socket_path is None:
            host, port = self.http_url.removeprefix("http://").rsplit(":", 1)
            connection = http.client.HTTPConnection(host, int(port), timeout=5)
        else:
            connection = UnixHTTPConnection(self.socket_path, timeout=5)
        try:
            connection.request("GET", path, headers=self.auth_headers())
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


def serve_command(weights_dir: Path, socket_path: Path | None, *, module: str = "model_worker",
                  **serve_flags: object) -> list[str]:
    """The command line of a worker: ``max_batch_size=1`` becomes ``--max-batch-size 1``, ``flag=True``
    becomes ``--flag``. Without a socket it listens on a port of 127.0.0.1 that the system picks. ``module``
    ``tests.support.faulty_worker`` runs one whose engine misbehaves on marked requests."""
    where = ["--socket", str(socket_path)] if socket_path else ["--host", "127.0.0.1", "--port", "0"]
    command = [sys.executable, "-m", module, "serve", "--weights", str(weights_dir), *where,
               "--device", "cpu", "--dtype", "float32"]
    for name, value in serve_flags.items():
        flag = f"--{name.replace('_', '-')}"
        command += [flag] if value is True else [flag, str(value)]
    return command


@contextlib.contextmanager
def run_worker(weights_dir: Path, workdir: Path, *, tcp: bool = False, module: str = "model_worker",
               **serve_flags: object) -> Iterator[WorkerHandle]:
    """Start a worker (on TCP with ``tcp``), wait until ``/readyz`` says ready, yield its handle, then stop
    it (SIGTERM)."""
    workdir.mkdir(parents=True, exist_ok=True)
    socket_path = None if tcp else workdir / "worker.sock"
    log_path = workdir / "worker.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(serve_command(weights_dir, socket_path, module=module, **serve_flags),
                                   stdout=log_file, stderr=subprocess.STDOUT, env=_worker_env())
    token = serve_flags.get("token")
    handle = WorkerHandle(socket_path=socket_path, process=process, log_path=log_path,
                          token=str(token) if token else None)
    try:
        if tcp:
            handle.http_url = _wait_for_listening_url(handle)
        wait_until_ready(handle)
        yield handle
    finally:
        stop_process(process)


def wait_until_ready(handle: WorkerHandle, timeout: float = READY_TIMEOUT_S) -> dict:
    """Poll ``/readyz`` until 200; raise with the worker's log when it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise RuntimeError(f"the worker exited with {handle.process.returncode}:\n{handle.log_text()}")
        with contextlib.suppress(OSError):
            status, body = handle.get("/readyz")
            if status == 200:
                return json.loads(body)
        time.sleep(0.1)
    raise TimeoutError(f"the worker was not ready within {timeout} s:\n{handle.log_text()}")


def _wait_for_listening_url(handle: WorkerHandle, timeout: float = READY_TIMEOUT_S) -> str:
    """The ``http://HOST:PORT`` that the worker's log says it listens on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"listening on (http://\S+);", handle.log_text())
        if match:
            return match.group(1)
        if handle.process.poll() is not None:
            raise RuntimeError(f"the worker exited with {handle.process.returncode}:\n{handle.log_text()}")
        time.sleep(0.05)
    raise TimeoutError(f"the worker did not listen within {timeout} s:\n{handle.log_text()}")


def stop_process(process: subprocess.Popen, grace_s: float = 15.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("WORKER_TOKEN", None)  # a developer's own token must not change what the tests see
    root = str(Path(__file__).resolve().parents[2])  # so that ``-m tests.support.faulty_worker`` resolves
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env
