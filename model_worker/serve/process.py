"""The worker process's life: bind the socket, load the model, serve, and shut down on SIGTERM/SIGINT.

The socket is bound before anything heavy is imported, so ``/healthz`` and ``/readyz`` answer while torch
and the weights load on the engine thread. That same thread later runs every engine step.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from model_worker.engine.options import EngineOptions
from model_worker.engine.sequence import Engine
from model_worker.scheduling.scheduler import Scheduler, SchedulerLimits
from model_worker.serve.front_end import FrontEnd, HttpFrontEnd
from model_worker.serve.http_app import WorkerState, create_app
from model_worker.serve.ndjson_api import NdjsonApi
from model_worker.serve.openai_api import OpenAiApi
from model_worker.serve.remote_images import RemoteImageFetcher
from model_worker.wire.choices import DEFAULT_QUANTIZE
from model_worker.wire.protocol import CONTEXT_LENGTH, DEFAULT_MAX_BODY_BYTES, ReadyInfo
from model_worker.wire.queue_streams import DEFAULT_CLAIM_IDLE_MS, DEFAULT_MAX_ATTEMPTS

if TYPE_CHECKING:
    from model_worker.model.memory_budget import MemoryPlan

log = logging.getLogger(__name__)

#: The watchdog's default limit for one engine step, by device type: generous on CPU, where a long prefill of
#: real-size weights takes tens of seconds.
DEFAULT_STEP_TIMEOUT_S = {"cuda": 120.0, "cpu": 900.0}


class ServeError(Exception):
    """A start-up problem explained in one sentence (bad bind, socket in use)."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``serve`` needs, checked once by the command line."""

    weights: Path
    socket_path: Path | None = None  # a Unix socket (the default transport) ...
    host: str | None = None  # ... or TCP
    port: int = 8765
    token: str | None = field(default=None, repr=False)
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = DEFAULT_QUANTIZE
    memory_budget_gb: float | None = None  # beyond the weights; None: most of what is free once they are loaded
    engine_options: EngineOptions = EngineOptions()  # batch size, cache bounds, compile
    limits: SchedulerLimits = SchedulerLimits()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    allow_remote_images: bool = False  # the OpenAI API may fetch http(s) image URLs
    shutdown_grace_s: float = 30.0
    queue_url: str | None = field(default=None, repr=False)  # also consume the shared Redis queue
    claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    consumer_name: str | None = None
    parent_pid: int | None = None  # stop when this process (the supervising bot) is gone


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses; any other name counts as reachable from outside."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_config(config: ServeConfig) -> None:
    """Refuse a missing weights directory, and a bind reachable from other machines without a token."""
    if not config.weights.is_dir():
        raise ServeError(f"the weights directory {config.weights} does not exist (python -m model_worker "
                         "download --dest DIR fetches the weights; make-tiny writes test weights)")
    if config.host is not None and not is_loopback(config.host) and not config.token:
        raise ServeError(f"refusing to listen on {config.host}, which other machines can reach, without a "
                         "bearer token: set WORKER_TOKEN (or --token-env NAME), or bind to 127.0.0.1")


async def serve(config: ServeConfig) -> int:
    """Run the worker until SIGTERM/SIGINT; returns the process exit status."""
    check_config(config)
    state = WorkerState()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
    http_front_ends = _http_front_ends(config, state)
    front_ends: list[FrontEnd] = [*http_front_ends, *_queue_consumer(config, state)]
    app = create_app(state, http_front_ends, token=config.token, max_body_bytes=config.max_body_bytes)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        where = await _bind(runner, config)
    except (OSError, ServeError) as exc:
        await runner.cleanup()
        raise ServeError(f"cannot listen: {exc}") from None
    log.info("listening on %s; loading the model from %s", where, config.weights)
    loading = asyncio.create_task(_load(state, config, executor, front_ends))
    code = await _run_until_stopped(loading, parent_pid=config.parent_pid)
    await _shut_down(state, runner, config, front_ends)
    if not loading.done():
        # The loading thread cannot be interrupted, and the interpreter would wait for it at exit.
        log.warning("stopped while the model was still loading")
        logging.shutdown()
        os._exit(code)
    executor.shutdown(wait=True)
    log.info("stopped")
    return code


async def _run_until_stopped(loading: asyncio.Task[None], *, parent_pid: int | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stopping = asyncio.create_task(stop.wait())
    orphan_watch = asyncio.create_task(_stop_when_orphaned(parent_pid, stop)) if parent_pid else None
    try:
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if loading.done() and loading.exception() is not None:
            exc = loading.exception()
            # A ServeError says all there is to say (a budget too small, ...): no traceback for it.
            log.error("could not load the model: %s", exc, exc_info=None if isinstance(exc, ServeError) else exc)
            return 1
        await stopping
        return 0
    finally:
        stopping.cancel()
        if orphan_watch is not None:
            orphan_watch.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _stop_when_orphaned(parent_pid: int, stop: asyncio.Event) -> None:
    # A supervising bot that was killed outright cannot stop us; without this check the orphan would
    # keep the device and the socket.
    while True:
        if os.getppid() != parent_pid:
            log.warning("the supervising process %d is gone; stopping", parent_pid)
            stop.set()
            return
        await asyncio.sleep(1.0)


async def _shut_down(state: WorkerState, runner: web.AppRunner, config: ServeConfig,
                     front_ends: list[FrontEnd]) -> None:
    log.info("shutting down: taking no new work")
    state.accepting = False
    for front_end in front_ends:
        front_end.stop_taking_work()
    if state.scheduler is not None:
        await state.scheduler.shutdown(grace_s=config.shutdown_grace_s)
    for front_end in front_ends:
        await front_end.close()  # after the grace period: unfinished queue jobs go back to the queue
    await runner.cleanup()
    if config.socket_path is not None:
        config.socket_path.unlink(missing_ok=True)


async def _bind(runner: web.AppRunner, config: ServeConfig) -> str:
    if config.socket_path is None:
        await web.TCPSite(runner, config.host or "127.0.0.1", config.port).start()
        host, port = runner.addresses[-1][:2]
        return f"http://{host}:{port}"
    path = config.socket_path
    if _socket_in_use(path):
        raise ServeError(f"another process is already listening on {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o177)  # the socket is created 0600: only this user may talk to the worker
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return f"unix:{path}"


def _socket_in_use(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


async def _load(state: WorkerState, config: ServeConfig, executor: ThreadPoolExecutor,
                front_ends: list[FrontEnd]) -> None:
    loop = asyncio.get_running_loop()
    engine, plan = await loop.run_in_executor(executor, _load_engine, config, state.set_progress)
    state.metrics.watch_engine(engine)
    limits = replace(config.limits, max_tokens_in_flight=plan.max_tokens_in_flight)
    if limits.step_timeout_s is None:
        limits = replace(limits, step_timeout_s=DEFAULT_STEP_TIMEOUT_S.get(engine.device.type, 900.0))
    scheduler = Scheduler(engine, executor=executor, metrics=state.metrics, limits=limits)
    scheduler.start()
    state.model_info = {"model": config.weights.name, **engine.loaded.describe(), **plan.describe(),
                        "max_queue": config.limits.max_queue}
    state.scheduler = scheduler
    state.set_progress("ready")
    for front_end in front_ends:
        front_end.start(scheduler)
    log.info("model loaded (%s); serving", ", ".join(f"{k}={v}" for k, v in state.model_info.items()))


def _http_front_ends(config: ServeConfig, state: WorkerState) -> list[HttpFrontEnd]:
    """The bot's NDJSON API and the OpenAI-compatible one, on the one listener."""
    shared = {"metrics": state.metrics, "max_body_bytes": config.max_body_bytes,
              "loading_progress": lambda: state.progress}
    remote_images = RemoteImageFetcher() if config.allow_remote_images else None
    return [NdjsonApi(**shared), OpenAiApi(**shared, remote_images=remote_images)]


def _queue_consumer(config: ServeConfig, state: WorkerState) -> list[FrontEnd]:
    """The Redis queue consumer when ``--queue`` is given (none otherwise)."""
    if config.queue_url is None:
        return []
    # Imported only here: the Redis client is an optional extra (``pip install .[queue]``).
    from model_worker.serve.redis_consumer import RedisConsumer

    return [RedisConsumer(config.queue_url, metrics=state.metrics, consumer=config.consumer_name,
                          claim_idle_ms=config.claim_idle_ms, max_attempts=config.max_attempts,
                          ready_info=lambda: ReadyInfo(ready=state.accepting, **state.model_info))]


def _load_engine(config: ServeConfig, progress: Callable[[str], None]) -> tuple[Engine, MemoryPlan]:
    """Load the weights, size the batch and caches from the memory budget, and build the engine on them.
    Runs on the engine thread (torch's import and the loading do not hold up the event loop)."""
    progress("importing the model libraries")
    from model_worker.engine.engine import MiniGPT4Engine
    from model_worker.model.loader import load_model
    from model_worker.model.memory_budget import MemoryBudgetError, plan_for_model

    progress(f"loading the weights from {config.weights}")
    loaded = load_model(config.weights, device=config.device, dtype=config.dtype, quantize=config.quantize,
                        progress=progress)
    options = config.engine_options
    try:
        plan = plan_for_model(loaded, budget_gb=config.memory_budget_gb, max_batch_size=options.max_batch_size,
                              context_length=min(options.kv_cache_positions or CONTEXT_LENGTH, CONTEXT_LENGTH),
                              image_cache_bytes=options.image_cache_bytes,
                              max_tokens_in_flight=config.limits.max_tokens_in_flight,
                              prefix_cache_tokens=options.prefix_cache_tokens)
    except MemoryBudgetError as exc:
        raise ServeError(str(exc)) from None
    log.info("memory budget %.2f GiB: %d answers at once, %d positions of finished answers kept",
             plan.budget_bytes / 2**30, plan.max_batch_size, plan.prefix_cache_tokens)
    engine_options = replace(options, max_batch_size=plan.max_batch_size, prefix_cache_tokens=plan.prefix_cache_tokens)
    return MiniGPT4Engine(loaded, options=engine_options), plan
