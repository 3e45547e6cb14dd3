"""Runs the model worker as a child process of the bot: start, watch readiness and health, restart, stop.

A worker that dies is restarted with backoff; so is one that is alive but unhealthy (its engine is stuck, or
it stopped answering its health check). Requests in flight then fail with :class:`WorkerUnavailable` (their
stream breaks); the chat service turns that into a friendly message, and later requests succeed once the
worker is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bot.worker_client.base import WorkerUnavailable
from bot.worker_client.http import HttpWorkerClient
from model_worker.wire.protocol import protocol_mismatch

log = logging.getLogger(__name__)

_READY_POLL_S = 0.25
_MAX_BACKOFF_S = 60.0
_HEALTHY_AFTER_S = 60.0  # a worker that stayed up this long resets the backoff
_UNHEALTHY_CHECKS = 2  # consecutive failed health checks before the worker is replaced


class WorkerSupervisor:
    """Async context manager owning one ``python -m model_worker serve`` child on a Unix socket."""

    def __init__(self, *, weights: Path, socket_path: Path, device: str, dtype: str,
                 restart_backoff_s: float, python: str = sys.executable, extra_args: Sequence[str] = (),
                 stop_grace_s: float = 10.0, health_interval_s: float = 5.0, module: str = "model_worker") -> None:
        self._command = [python, "-m", module, "serve", "--weights", str(weights),
                         "--socket", str(socket_path), "--device", device, "--dtype", dtype,
                         "--parent-pid", str(os.getpid()),
                         # Running answers get half our grace period to finish, so a stop never needs SIGKILL.
                         "--shutdown-grace", str(stop_grace_s / 2), *extra_args]
        self._socket_path = socket_path
        self._restart_backoff_s = restart_backoff_s
        self._stop_grace_s = stop_grace_s
        self._health_interval_s = health_interval_s
        self._process: asyncio.subprocess.Process | None = None
        self._ready = False
        self._changed = asyncio.Condition()  # notified when readiness or the restart count changes
        self._watcher: asyncio.Task[None] | None = None
        self.client = HttpWorkerClient(f"unix:{socket_path}")
        self.restarts = 0

    @property
    def process(self) -> asyncio.subprocess.Process | None:
        """The current (or last) worker child."""
        return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def __aenter__(self) -> WorkerSupervisor:
        self._socket_path.parent.mkdir(parents=True, exist_ok=True)
        await self._start()
        self._watcher = asyncio.create_task(self._supervise(), name="worker-supervisor")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self._stop_child()
        await self.client.close()

    async def wait_ready(self, *, restarts: int = 0) -> None:
        """Wait until the worker answers ``/readyz`` with ready, after at least ``restarts`` restarts.

        Unbounded: wrap it in ``asyncio.timeout`` where a limit is wanted."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._ready and self.restarts >= restarts)

    async def _set_state(self, *, ready: bool, restarted: bool = False) -> None:
        async with self._changed:
            self._ready = ready
            self.restarts += int(restarted)
            self._changed.notify_all()

    # ---- the child's life ---------------------------------------------------------------------

    async def _start(self) -> None:
        # A session of its own: Ctrl-C in a terminal reaches the bot only, which then stops the worker
        # in order instead of both dying at once.
        self._process = await asyncio.create_subprocess_exec(*self._command, start_new_session=True)
        log.info("started the model worker (pid %d)", self._process.pid)

    async def _supervise(self) -> None:
        backoff = self._restart_backoff_s
        while True:
            started = time.monotonic()
            code = await self._watch_one_life()
            await self._set_state(ready=False)
            if time.monotonic() - started > _HEALTHY_AFTER_S:
                backoff = self._restart_backoff_s
            log.warning("the model worker exited with status %s; restarting in %.1f s", code, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF_S)
            try:
                await self._start()
            except OSError as exc:  # the next round waits longer and tries again
                log.error("could not start the model worker: %s", exc)
            await self._set_state(ready=False, restarted=True)

    async def _watch_one_life(self) -> int | None:
        """Follow the current child until it exits: log its loading progress, mark it ready, then watch its
        health and kill it when it is stuck (the caller restarts it)."""
        process = self._process
        watch = asyncio.create_task(self._follow_loading_then_health(process))
        try:
            return await process.wait()
        finally:
            watch.cancel()

    async def _follow_loading_then_health(self, process: asyncio.subprocess.Process) -> None:
        await self._follow_loading()
        failures = 0
        while failures < _UNHEALTHY_CHECKS:
            await asyncio.sleep(self._health_interval_s)
            problem = await self._health_problem()
            failures = failures + 1 if problem else 0
        log.error("the model worker (pid %d) is alive but unhealthy: %s; replacing it", process.pid, problem)
        await self._set_state(ready=False)
        process.kill()  # a stuck engine thread would hold up a graceful stop

    async def _health_problem(self) -> str | None:
        try:
            health = await self.client.health()
        except WorkerUnavailable:
            return "it does not answer its health check"
        return None if health.healthy else (health.reason or "it reports itself unhealthy")

    async def _follow_loading(self) -> None:
        last_progress = None
        while True:
            try:
                info = await self.client.ready()
            except WorkerUnavailable:
                info = None
            if info is not None and info.ready:
                mismatch = protocol_mismatch(info, where=str(self._socket_path))
                if mismatch:
                    log.error("%s", mismatch)
                log.info("the model worker is ready (%s on %s)", info.model or "model", info.device or "?")
                await self._set_state(ready=True)
                return
            progress = info.progress if info is not None else None
            if progress and progress != last_progress:
                log.info("model worker: %s", progress)
                last_progress = progress
            await asyncio.sleep(_READY_POLL_S)

    async def _stop_child(self) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self._stop_grace_s)
        except TimeoutError:
            log.warning("the model worker did not stop within %.0f s; killing it", self._stop_grace_s)
            process.kill()
            await process.wait()
        log.info("the model worker stopped (status %s)", process.returncode)
