"""A real ``redis-server`` for the tests: a private loopback port, a temporary directory, no persistence.

The server binary comes from the OS packages (``apt-get install -y redis-server``; ``.ci/run`` installs it
when missing). Tests that need it skip with a clear reason when it is not installed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.ports import free_port


def find_redis_server() -> str | None:
    """The path of ``redis-server``, or ``None`` when it is not installed."""
    return shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if Path(p).exists()), None
    )


class RedisServer:
    """One ``redis-server`` process that can be stopped and started again on the same port."""

    def __init__(self, binary: str, workdir: Path, *, password: str | None = None,
                 appendonly: bool = False) -> None:
        self.binary = binary
        self.workdir = workdir
        self.password = password
        self.appendonly = appendonly
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, *, timeout: float = 10.0) -> None:
        """Start the server (no RDB snapshots; AOF only when asked) and wait until it accepts connections."""
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.workdir / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        self._wait_until_listening(timeout)

    def stop(self) -> None:
        """Stop the server (its data is gone unless ``appendonly`` keeps it for the next start)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _wait_until_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"redis-server exited; see {self.workdir / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port} within {timeout}s")


@contextmanager
def run_redis_server(workdir: Path, *, password: str | None = None,
                     appendonly: bool = False) -> Iterator[RedisServer]:
    """Start a private ``redis-server`` in ``workdir``; skip the test when the binary is missing."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    server = RedisServer(binary, workdir, password=password, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop()
