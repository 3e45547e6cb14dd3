"""Wiring: settings -> worker connection -> store -> chat service -> the adapters that are configured."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Literal

from bot.settings import Settings, SettingsError
from bot.worker_client.base import WorkerClient

log = logging.getLogger(__name__)

Mode = Literal["auto", "console", "discord", "slack"]

NO_PLATFORM_HINT = (
    "No Discord or Slack credentials are configured, so the bot opens the local console chat.\n"
    "  To connect Discord: set DISCORD_TOKEN in .env (README, 'Discord set-up').\n"
    "  To connect Slack:   set SLACK_BOT_TOKEN and SLACK_APP_TOKEN in .env (README, 'Slack set-up')."
)


@contextlib.asynccontextmanager
async def connect_worker(settings: Settings, *, quiet_worker: bool = False) -> AsyncIterator[WorkerClient]:
    """The worker the service talks to: a Redis queue, an external worker, or our own child process
    (``quiet_worker``: the child logs warnings only, for the console chat)."""
    if settings.queue_url is not None:
        from bot.worker_client.redis_queue import RedisWorkerClient

        client: WorkerClient = RedisWorkerClient(settings.queue_url.get_secret_value(),
                                                 request_timeout_s=settings.worker_request_timeout_s)
        where = "the shared Redis queue"
        log.info("using the shared Redis queue for model requests")
    elif settings.worker_url:
        from bot.worker_client.http import HttpWorkerClient
        from bot.worker_client.image_refs import ImageRefClient

        token = settings.worker_token.get_secret_value() if settings.worker_token else None
        client = ImageRefClient(HttpWorkerClient(settings.worker_url, token=token))
        where = settings.worker_url
        log.info("using the external worker at %s", settings.worker_url)
    else:
        async with _local_worker(settings, quiet=quiet_worker) as local:
            yield local
        return
    try:
        await check_protocol(client, where)
        yield client
    finally:
        await client.close()


async def check_protocol(worker: WorkerClient, where: str) -> None:
    """Refuse to start against a worker that speaks another protocol version (a :class:`SettingsError`);
    a worker that is not reachable yet is only logged: answers wait for it."""
    from bot.worker_client.base import WorkerError
    from model_worker.wire.protocol import protocol_mismatch

    try:
        info = await worker.ready()
    except WorkerError as exc:
        log.warning("the worker (%s) does not answer yet (%s); answers will wait for it", where, exc.code)
        return
    mismatch = protocol_mismatch(info, where=where)
    if mismatch:
        raise SettingsError(mismatch)


@contextlib.asynccontextmanager
async def _local_worker(settings: Settings, *, quiet: bool) -> AsyncIterator[WorkerClient]:
    from bot.weights import ensure_weights
    from bot.worker_client.image_refs import ImageRefClient
    from bot.worker_client.supervisor import WorkerSupervisor

    weights = await asyncio.to_thread(ensure_weights, settings.model_weights, settings.data_dir)
    supervisor = WorkerSupervisor(
        weights=weights,
        socket_path=settings.data_dir / "worker.sock",
        device=settings.worker_device,
        dtype=settings.worker_dtype,
        restart_backoff_s=settings.worker_restart_backoff_s,
        extra_args=(
            "--request-timeout", str(settings.worker_request_timeout_s),
            "--log-level", "WARNING" if quiet else settings.log_level,
            "--quantize", settings.worker_quantize,
            *(("--step-timeout", str(settings.worker_step_timeout_s)) if settings.worker_step_timeout_s else ()),
            *(("--memory-budget-gb", str(settings.worker_memory_budget_gb))
              if settings.worker_memory_budget_gb else ()),
        ),
    )
    async with supervisor:
        # Images cross the socket once; later turns refer to them by hash.
        yield ImageRefClient(supervisor.client)


def platforms_to_run(settings: Settings, mode: Mode) -> list[str]:
    """Which front ends to start: the named one, or every configured platform, else the console."""
    if mode != "auto":
        return [mode]
    chosen = [name for name, on in (("discord", settings.discord_enabled), ("slack", settings.slack_enabled)) if on]
    return chosen or ["console"]


async def run_bot(settings: Settings, mode: Mode = "auto") -> int:
    """Run until the front ends stop (console: /quit) or the process is told to stop."""
    from bot.chat.service import ChatService
    from bot.chat.store import Store

    fronts = platforms_to_run(settings, mode)
    if fronts == ["console"] and mode == "auto":
        print(NO_PLATFORM_HINT, file=sys.stderr)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = await Store.open(settings.database_path)
    try:
        async with connect_worker(settings, quiet_worker="console" in fronts) as worker:
            service = ChatService(settings=settings, store=store, worker=worker)
            if "console" in fronts:  # someone is watching the terminal: answer only once the model is there
                await wait_until_ready(worker)
            results = await asyncio.gather(*(_run_front(name, settings, service) for name in fronts))
            return max(results, default=0)
    finally:
        await store.close()


async def wait_until_ready(worker: WorkerClient, *, poll_s: float = 0.5) -> None:
    """Block until the worker reports ready, logging its loading progress as it changes."""
    from bot.worker_client.base import WorkerError
    from model_worker.wire.protocol import protocol_mismatch

    last = None
    while True:
        try:
            info = await worker.ready()
        except WorkerError as exc:
            info, progress = None, f"waiting for the worker ({exc.code})"
        else:
            progress = info.progress or "loading"
            mismatch = protocol_mismatch(info, where="the worker")
            if mismatch:
                raise SettingsError(mismatch)
        if info is not None and info.ready:
            log.info("model ready (%s on %s)", info.model or "model", info.device or "?")
            return
        if progress != last:
            log.info("model loading: %s", progress)
            last = progress
        await asyncio.sleep(poll_s)


async def _run_front(name: str, settings: Settings, service) -> int:
    """Run one front end; a platform that refuses our credentials stops only itself, with the reason."""
    try:
        return await _start_front(name, settings, service)
    except SettingsError as exc:
        log.error("%s stopped: %s", name, exc.message)
        print(exc.message, file=sys.stderr)
        return 2


async def _start_front(name: str, settings: Settings, service) -> int:
    if name == "console":
        from bot.adapters.console import run_console

        return await run_console(service)
    if name == "discord":
        from bot.adapters.discord import run_discord

        await run_discord(settings, service)
        return 0
    from bot.adapters.slack import run_slack

    await run_slack(settings, service)
    return 0
