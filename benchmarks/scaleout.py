"""Aggregate tokens/s through the shared Redis queue with one worker, then two, in the same run.

    .venv/bin/python -m benchmarks.scaleout                                  # tiny random weights, CPU
    .venv/bin/python -m benchmarks.scaleout --weights ./weights --devices cuda:0,cuda:1 --dtype float16

It starts a private ``redis-server`` (from the OS packages), one ``serve --queue`` worker, drives N
concurrent greedy requests through the bot's RedisWorkerClient, then adds a second worker and drives the
same load again. It prints a table and writes JSON under ``benchmarks/results/``. Two workers on one
machine only gain when each has its own device (or free CPU cores): the numbers say what this machine did.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import tempfile
import time
from pathlib import Path

from bot.worker_client.redis_queue import RedisWorkerClient
from model_worker.wire.protocol import ChatRequest, DoneEvent, Turn
from tests.support.redis_server import find_redis_server, run_redis_server
from tests.support.worker import run_worker

RESULTS_DIR = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaleout", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="tiny", help='a weights directory, or "tiny" (default)')
    parser.add_argument("--devices", default="cpu", help="comma-separated; worker i uses device i (mod n)")
    parser.add_argument("--dtype", default="float32", choices=("auto", "float16", "bfloat16", "float32"))
    parser.add_argument("--requests", type=int, default=16, help="concurrent requests per round (default 16)")
    parser.add_argument("--new-tokens", type=int, default=32, help="max new tokens per request (default 32)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="per worker (default 8)")
    return parser.parse_args()


def greedy(index: int, new_tokens: int) -> ChatRequest:
    return ChatRequest(user=f"user-{index}", conversation=[Turn(role="user", text=f"Question number {index}?")],
                       generation={"max_new_tokens": new_tokens, "greedy": True})


async def drive(url: str, *, requests: int, new_tokens: int) -> dict[str, float]:
    """Send ``requests`` at once through the queue; aggregate generated tokens over wall time."""
    client = RedisWorkerClient(url)
    try:
        async def one(index: int) -> int:
            events = [event async for event in client.chat(greedy(index, new_tokens))]
            assert isinstance(events[-1], DoneEvent)
            return events[-1].usage.completion_tokens

        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(i) for i in range(requests))))
        seconds = time.perf_counter() - started
    finally:
        await client.close()
    return {"requests": requests, "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2)}


async def warm_up(handle, new_tokens: int) -> None:
    """One request straight to a new worker's socket, so first-call costs stay out of the numbers."""
    client = handle.client()
    try:
        async for _ in client.chat(greedy(-1, new_tokens)):
            pass
    finally:
        await client.close()


def weights_dir(spec: str, workdir: Path) -> Path:
    if spec != "tiny":
        return Path(spec)
    from model_worker.model.tiny import make_tiny

    out = workdir / "tiny-weights"
    make_tiny(out, seed=0)
    return out


def run(args: argparse.Namespace, workdir: Path) -> list[dict[str, object]]:
    weights = weights_dir(args.weights, workdir)
    devices = args.devices.split(",")
    rounds: list[dict[str, object]] = []
    with _redis(workdir) as redis, contextlib.ExitStack() as stack:
        for count in (1, 2):
            device = devices[(count - 1) % len(devices)]
            handle = stack.enter_context(run_worker(
                weights, workdir / f"worker-{count}", queue=redis.url, device=device, dtype=args.dtype,
                max_batch_size=args.max_batch_size))
            asyncio.run(warm_up(handle, args.new_tokens))
            result = asyncio.run(drive(redis.url, requests=args.requests, new_tokens=args.new_tokens))
            rounds.append({"workers": count, **result})
    return rounds


@contextlib.contextmanager
def _redis(workdir: Path):
    if find_redis_server() is None:
        raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
    (workdir / "redis").mkdir()
    with run_redis_server(workdir / "redis") as redis:
        yield redis


def report(args: argparse.Namespace, rounds: list[dict[str, object]]) -> Path:
    print(f"{'workers':>7}  {'requests':>8}  {'tokens':>6}  {'seconds':>8}  {'tokens/s':>9}")
    for row in rounds:
        print(f"{row['workers']:>7}  {row['requests']:>8}  {row['tokens']:>6}  {row['seconds']:>8}  "
              f"{row['tokens_per_s']:>9}")
    ratio = rounds[1]["tokens_per_s"] / rounds[0]["tokens_per_s"]
    print(f"two workers / one worker: {ratio:.2f}x")
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / time.strftime("scaleout-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps({
        "benchmark": "scaleout", "machine": platform.platform(), "processor": platform.processor(),
        "weights": args.weights, "devices": args.devices, "dtype": args.dtype,
        "max_batch_size": args.max_batch_size, "new_tokens": args.new_tokens,
        "rounds": rounds, "ratio_two_over_one": round(ratio, 3)}, indent=2))
    print(f"written to {path}")
    return path


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        rounds = run(args, Path(tmp))
    report(args, rounds)


if __name__ == "__main__":
    main()
