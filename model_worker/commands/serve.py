"""``python -m model_worker serve``: the worker's HTTP APIs (its own NDJSON one and an OpenAI-compatible
one) on a Unix socket (default) or TCP."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from model_worker.commands.model_flags import add_memory_budget_argument, add_model_arguments
from model_worker.commands.throughput_flags import (
    add_throughput_arguments,
    engine_options_from_args,
    max_tokens_in_flight,
    positive,
)
from model_worker.scheduling.scheduler import SchedulerLimits
from model_worker.serve.process import ServeConfig, ServeError, serve
from model_worker.wire.logs import configure_logging
from model_worker.wire.protocol import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_QUEUE,
    DEFAULT_REQUEST_TIMEOUT_S,
    IMAGE_DOWNLOAD_TIMEOUT_S,
)
from model_worker.wire.queue_streams import DEFAULT_CLAIM_IDLE_MS, DEFAULT_MAX_ATTEMPTS

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("data/worker.sock")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, required=True, help="the weights directory")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help=f"Unix socket to listen on, mode 0600 (default {DEFAULT_SOCKET})")
    where.add_argument("--host", help="listen on TCP instead; other than loopback needs a bearer token")
    parser.add_argument("--port", type=int, default=8765, help="TCP port with --host; 0 picks a free one")
    parser.add_argument("--queue", nargs="?", const="", metavar="URL",
                        help="also take jobs from the shared Redis Streams queue (redis://[:password@]host:port/db "
                             "or rediss:// for TLS); without URL, from $QUEUE_URL, which keeps the password out "
                             "of ps. The HTTP API still answers health, readiness and metrics")
    parser.add_argument("--claim-idle-ms", type=positive(int), default=DEFAULT_CLAIM_IDLE_MS, metavar="MS",
                        help="with --queue: take over a job whose worker has been silent this long "
                             f"(default {DEFAULT_CLAIM_IDLE_MS})")
    parser.add_argument("--max-attempts", type=positive(int), default=DEFAULT_MAX_ATTEMPTS, metavar="N",
                        help="with --queue: start a job at most N times; then the bot gets an error and the job "
                             f"goes to the dead-letter stream (default {DEFAULT_MAX_ATTEMPTS})")
    parser.add_argument("--consumer-name", metavar="NAME",
                        help="with --queue: this worker's name in the consumer group (default host-pid)")
    parser.add_argument("--token-env", default="WORKER_TOKEN", metavar="NAME",
                        help="environment variable holding the bearer token (default WORKER_TOKEN)")
    parser.add_argument("--token", help="the bearer token itself (visible to local users in ps; prefer the env)")
    add_model_arguments(parser)
    add_memory_budget_argument(parser)
    parser.add_argument("--max-queue", type=positive(int), default=DEFAULT_MAX_QUEUE,
                        help=f"requests that may wait beyond the running batch; more are told busy "
                             f"(default {DEFAULT_MAX_QUEUE})")
    parser.add_argument("--request-timeout", type=positive(float), default=DEFAULT_REQUEST_TIMEOUT_S,
                        metavar="SECONDS", help="longest time one request may take, queue included "
                                                f"(default {DEFAULT_REQUEST_TIMEOUT_S:g})")
    parser.add_argument("--max-body-mb", type=positive(float), default=DEFAULT_MAX_BODY_BYTES / 2**20,
                        help=f"largest request body accepted, images included (default {DEFAULT_MAX_BODY_BYTES // 2**20})")
    parser.add_argument("--step-timeout", type=positive(float), default=None, metavar="SECONDS",
                        help="the watchdog: when one engine step (or a request's preparation) runs longer than "
                             "this, /healthz turns unhealthy "
                             "so that a supervisor replaces the worker (default 120 on CUDA, 900 on CPU)")
    parser.add_argument("--allow-remote-images", action="store_true",
                        help="let the OpenAI-compatible API fetch http(s) image URLs (at most "
                             f"{DEFAULT_MAX_IMAGE_BYTES // 1_000_000} MB and {IMAGE_DOWNLOAD_TIMEOUT_S:g} s each; "
                             "anyone who can reach the API can then make the worker fetch URLs); "
                             "off: only data: URLs are taken")
    parser.add_argument("--shutdown-grace", type=float, default=30.0, metavar="SECONDS",
                        help="on SIGTERM, how long running answers may finish before they are stopped")
    parser.add_argument("--parent-pid", type=int, metavar="PID",
                        help="stop when this process exits (the bot passes its own pid when it supervises)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    add_throughput_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        configure_logging(args.log_level, secrets=[s for s in (config.token, config.queue_url) if s])
        return asyncio.run(serve(config))
    except ServeError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The serve configuration from parsed arguments (the token from ``--token`` or the environment)."""
    token = args.token or os.environ.get(args.token_env) or None
    socket_path = None if args.host else (args.socket or DEFAULT_SOCKET)
    return ServeConfig(
        weights=args.weights,
        socket_path=socket_path.absolute() if socket_path else None,
        host=args.host,
        port=args.port,
        token=token,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        memory_budget_gb=args.memory_budget_gb,
        limits=SchedulerLimits(max_queue=args.max_queue, request_timeout_s=args.request_timeout,
                               max_tokens_in_flight=max_tokens_in_flight(args), step_timeout_s=args.step_timeout),
        engine_options=engine_options_from_args(args),
        max_body_bytes=int(args.max_body_mb * 2**20),
        allow_remote_images=args.allow_remote_images,
        shutdown_grace_s=args.shutdown_grace,
        parent_pid=args.parent_pid,
        queue_url=_queue_url(args),
        claim_idle_ms=args.claim_idle_ms,
        max_attempts=args.max_attempts,
        consumer_name=args.consumer_name,
    )


def _queue_url(args: argparse.Namespace) -> str | None:
    if args.queue is None:
        return None
    url = args.queue or os.environ.get("QUEUE_URL", "")
    if not url.startswith(("redis://", "rediss://")):
        raise ServeError("--queue needs redis://[:password@]host:port/db or rediss://... "
                         "(given on the command line or in QUEUE_URL)")
    return url
