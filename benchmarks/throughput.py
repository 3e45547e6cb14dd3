"""The worker against the card's reference loop and the bare batched decode: N conversations of T turns.

    .venv/bin/python -m benchmarks.throughput --weights tiny --conversations 8 --turns 3 --max-new-tokens 32 --runs 5
    .venv/bin/python -m benchmarks.throughput --real-shapes --device cuda --dtype float16 --conversations 32
    .venv/bin/python -m benchmarks.throughput --decode-steps --device cpu --dtype float32 --layers 8

First it starts a real ``serve`` process and drives it through the HTTP API (the bot's client, which sends
each image once and then its hash): every conversation opens with an image and asks T questions in a row,
all conversations at once, greedy. Then, in the same process and on the same weights, the worker's own
engine runs the same conversations with no server (``benchmarks/bare_decode.py``: each turn of all
conversations prepared, prefilled and decoded together), and the card's reference loop
(``model_worker.model.reference``: preprocess, encode the image, build the embeddings, ``generate``)
answers them one request at a time. ``--runs N`` repeats the three (fresh conversations each time) and
reports medians. It prints a table and one JSON line (also written under ``benchmarks/results/``):
aggregate tokens/s, time to first token and inter-token latency (p50/p95), the ratios worker/reference
and worker/bare (the serving layer's share), and what the worker's metrics counted.

``--decode-steps`` measures something else: the time of one decode step at the real shapes, batch 8, at
100- and 1,000-token contexts, against the memory bandwidth measured in the same run
(``benchmarks/decode_steps.py``).

Tokens are the reply tokens each side generated (``completion_tokens`` for the worker, every generated id
for the reference, which does not stop at a new turn: that favours the reference). Inter-token latency is
per request: (last token - first token) / (tokens - 1). ``--weights tiny`` writes make-tiny weights to a
temporary directory; ``--real-shapes`` writes random weights at the real model's sizes (about 10 GB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.conversations import conversation_image, next_request
from bot.worker_client.image_refs import ImageRefClient
from model_worker.wire.protocol import ChatRequest, DoneEvent, TokenEvent, Turn
from tests.support.requests import metric_value
from tests.support.worker import run_worker

RESULTS_DIR = Path(__file__).parent / "results"
METRICS = ("worker_image_cache_hits_total", "worker_image_cache_misses_total", "worker_image_encode_batches_total",
           "worker_prefix_cache_hits_total", "worker_prefix_reused_tokens_total", "worker_prefilled_tokens_total",
           "worker_decoded_tokens_total", "worker_decode_steps_total", "worker_decode_batch_size_sum",
           "worker_decode_batch_size_count")
GAUGES = ("worker_gpu_peak_memory_bytes", "worker_image_cache_bytes", "worker_prefix_cache_tokens")


@dataclass
class Answer:
    """One answered request, timed from its submission."""

    tokens: int
    ttft_s: float
    itl_s: float | None
    text: str


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="tiny", help='a weights directory, or "tiny" (default)')
    parser.add_argument("--real-shapes", action="store_true", help="random weights at the real model's sizes")
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=0, help="worker batch limit (default: conversations)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (both sides)")
    parser.add_argument("--dtype", default="float32", choices=("auto", "float16", "bfloat16", "float32"))
    parser.add_argument("--serve-flag", action="append", default=[], metavar="NAME=VALUE",
                        help="extra serve option, e.g. prefix_cache_tokens=8192 (repeatable)")
    parser.add_argument("--skip-reference", action="store_true", help="do not run the card's reference loop")
    parser.add_argument("--skip-bare", action="store_true", help="do not run the bare batched decode")
    parser.add_argument("--runs", type=int, default=1, help="repeat with fresh conversations; report medians")
    parser.add_argument("--decode-steps", action="store_true",
                        help="instead: one decode step at real shapes, batch 8, 100- and 1,000-token contexts, "
                             "against the memory bandwidth (benchmarks/decode_steps.py)")
    parser.add_argument("--layers", type=int, default=36,
                        help="with --decode-steps: layers of the real-shape model (fewer fit a small machine; "
                             "the ratio does not depend on it)")
    parser.add_argument("--eager", action="store_true", help="with --decode-steps: no CUDA graphs")
    return parser.parse_args()


# ---- the worker -----------------------------------------------------------------------------------


async def worker_conversation(client: ImageRefClient, index: int, args: argparse.Namespace) -> list[Answer]:
    """Conversation ``index``, turn after turn, through the worker."""
    image, history, answers = conversation_image(index), [], []
    for turn in range(args.turns):
        request = next_request(index, image, history, turn, args.max_new_tokens)
        answer = await worker_answer(client, request)
        answers.append(answer)
        history = [*request.conversation, Turn(role="assistant", text=answer.text)]
    return answers


async def worker_answer(client: ImageRefClient, request: ChatRequest) -> Answer:
    started = time.perf_counter()
    first = last = None
    async for event in client.chat(request):
        if isinstance(event, TokenEvent):
            last = time.perf_counter()
            first = first or last
        if isinstance(event, DoneEvent):
            last = time.perf_counter()
            first = first or last
            tokens = event.usage.completion_tokens
            itl = (last - first) / (tokens - 1) if tokens > 1 else None
            return Answer(tokens=tokens, ttft_s=first - started, itl_s=itl, text=event.text)
    raise RuntimeError("the stream ended without done")


async def drive_worker(handle, args: argparse.Namespace, first: int) -> tuple[list[Answer], float, dict[str, float]]:
    """Conversations ``first ..`` all at once through the worker; their answers, seconds and metric deltas."""
    client = ImageRefClient(handle.client())
    try:
        await worker_answer(client, next_request(-1, conversation_image(999), [], 1, 4))  # warm-up
        before = await scrape(handle)
        started = time.perf_counter()
        runs = await asyncio.gather(*(worker_conversation(client, first + i, args)
                                      for i in range(args.conversations)))
        seconds = time.perf_counter() - started
        after = await scrape(handle)
    finally:
        await client.close()
    deltas = {name: metric_value(after, name) - metric_value(before, name) for name in METRICS}
    deltas |= {name: metric_value(after, name) for name in GAUGES if name in after}
    return [answer for run in runs for answer in run], seconds, deltas


async def scrape(handle) -> str:
    async with handle.http_session() as session, session.get("/metrics") as response:
        return await response.text()


# ---- the reference loop ---------------------------------------------------------------------------


def run_reference(loaded, args: argparse.Namespace, first: int) -> tuple[list[Answer], float]:
    """The card's loop, one request at a time, on the same conversations (each side's own replies)."""
    steps: list[float] = []
    hook = loaded.model.llm.register_forward_hook(lambda *_: steps.append(time.perf_counter()))
    try:
        reference_answer(loaded, next_request(-1, conversation_image(999), [], 1, 4), steps)  # warm-up
        started = time.perf_counter()
        answers = [answer for index in range(first, first + args.conversations)
                   for answer in reference_conversation(loaded, index, args, steps)]
        return answers, time.perf_counter() - started
    finally:
        hook.remove()


def reference_conversation(loaded, index: int, args: argparse.Namespace, steps: list[float]) -> list[Answer]:
    image, history, answers = conversation_image(index), [], []
    for turn in range(args.turns):
        request = next_request(index, image, history, turn, args.max_new_tokens)
        answer = reference_answer(loaded, request, steps)
        answers.append(answer)
        history = [*request.conversation, Turn(role="assistant", text=answer.text)]
    return answers


def reference_answer(loaded, request: ChatRequest, steps: list[float]) -> Answer:
    from model_worker.model.preprocess import decode_image
    from model_worker.model.reference import ReferenceTurn, reference_generate
    from model_worker.model.reply import read_reply

    started = time.perf_counter()
    steps.clear()
    turns = [ReferenceTurn(role=t.role, text=t.text, images=[decode_image(ref.decode()) for ref in t.images])
             for t in request.conversation]
    ids = reference_generate(loaded, turns, max_new_tokens=request.generation.max_new_tokens, greedy=True)
    tokens = len(ids)
    reply = read_reply(loaded.tokenizer, [i for i in ids if i != loaded.tokenizer.eos_id], final=True)
    itl = (steps[-1] - steps[0]) / (len(steps) - 1) if len(steps) > 1 else None
    return Answer(tokens=tokens, ttft_s=steps[0] - started, itl_s=itl, text=reply.text)


# ---- the report -----------------------------------------------------------------------------------


def summarize(answers: list[Answer], seconds: float, tokens: int | None = None) -> dict[str, float]:
    """Rate (of ``tokens``, by default every answer's) and latency percentiles."""
    tokens = sum(a.tokens for a in answers) if tokens is None else tokens
    ttft = [a.ttft_s for a in answers]
    itl = [a.itl_s for a in answers if a.itl_s is not None] or [0.0]
    return {"requests": len(answers), "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2), "ttft_p50_s": percentile(ttft, 50),
            "ttft_p95_s": percentile(ttft, 95), "itl_p50_s": percentile(itl, 50), "itl_p95_s": percentile(itl, 95)}


def percentile(values: list[float], pct: int) -> float:
    if len(values) == 1:
        return round(values[0], 5)
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1], 5)


SIDES = ("worker", "bare", "reference")
COLUMNS = ("tokens", "seconds", "tokens_per_s", "ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s")


def report(result: dict) -> Path:
    """Print the medians, their spread and the ratios; write the JSON line under ``benchmarks/results/``."""
    print(f"{'median of ' + str(result['runs']):18}" + "".join(f"{c:>14}" for c in COLUMNS))
    for side in SIDES:
        if side in result:
            print(f"{side:18}" + "".join(f"{result[side][c]:>14}" for c in COLUMNS))
    for name, values in result["ratios"].items():
        print(f"{name:18}" + "".join(f"{values.get(c, ''):>14}" for c in COLUMNS))
    for name, (low, middle, high) in result["spread"].items():
        print(f"spread {name}: min {low}, median {middle}, max {high}")
    print("worker metrics (last run):", ", ".join(f"{k}={v:g}" for k, v in result["worker_metrics"].items()))
    line = json.dumps(result, sort_keys=True)
    print(line)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / time.strftime("throughput-%Y%m%d-%H%M%S.json")
    path.write_text(line + "\n", encoding="utf-8")
    return path


def ratios(side: dict, base: dict) -> dict[str, float]:
    """``side / base`` for the rate and the latencies."""
    keys = ("tokens_per_s", "ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s")
    return {k: round(side[k] / base[k], 3) for k in keys if base.get(k)}


def medians(runs: list[dict]) -> dict:
    """Per key, the median over runs of a side's summaries."""
    return {key: round(statistics.median(run[key] for run in runs), 5) for key in runs[0]}


def prepare_weights(args: argparse.Namespace, workdir: Path) -> Path:
    if args.real_shapes:
        from benchmarks.real_shapes import write_real_shape_weights

        print("writing random weights at the real shapes (several minutes) ...", flush=True)
        return write_real_shape_weights(workdir / "real-shapes")
    if args.weights != "tiny":
        return Path(args.weights)
    from model_worker.model.tiny import make_tiny

    make_tiny(workdir / "tiny-weights", seed=0)
    return workdir / "tiny-weights"


def run(args: argparse.Namespace, workdir: Path) -> dict:
    """Every side, ``args.runs`` times, on fresh conversations each time; medians, spreads and ratios."""
    weights = prepare_weights(args, workdir)
    batch = args.max_batch_size or args.conversations
    load_before = os.getloadavg()
    per_run: dict[str, list[dict]] = {side: [] for side in (*SIDES, "bare_decode_only")}
    same = {"bare": 0, "reference": 0}
    flags = dict(flag.split("=", 1) for flag in args.serve_flag)
    with run_worker(weights, workdir / "worker", device=args.device, dtype=args.dtype, max_batch_size=batch,
                    **flags) as handle:
        in_process = InProcess(weights, args, batch)
        for index in range(args.runs):
            first = index * args.conversations
            answers, seconds, deltas = asyncio.run(drive_worker(handle, args, first))
            per_run["worker"].append(summarize(answers, seconds))
            for side, (others, other_seconds, *tokens) in in_process.sides(first).items():
                per_run[side].append(summarize(others, other_seconds, *tokens))
                if side in same:
                    same[side] += sum(a.text == b.text for a, b in zip(answers, others, strict=True))
    result = {"benchmark": "throughput", "machine": platform.platform(), "cpus": os.cpu_count(),
              "device": args.device, "dtype": args.dtype, "weights": "real-shapes" if args.real_shapes else args.weights,
              "conversations": args.conversations, "turns": args.turns, "max_new_tokens": args.max_new_tokens,
              "max_batch_size": batch, "runs": args.runs, "worker_metrics": deltas, "per_run": per_run,
              "same_replies": {side: count for side, count in same.items() if per_run[side]}}
    result |= {side: medians(runs) for side, runs in per_run.items() if runs}
    result["ratios"] = _ratios(per_run)
    result["spread"] = {f"{side} tokens/s": _spread([r["tokens_per_s"] for r in runs])
                        for side, runs in per_run.items() if runs}
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    result["gpu"] = _gpu_name(args.device)
    return result


def _ratios(per_run: dict[str, list[dict]]) -> dict[str, dict[str, float]]:
    """Per-run ratios of the worker to the other sides, then their medians."""
    out: dict[str, dict[str, float]] = {}
    for side in ("reference", "bare", "bare_decode_only"):
        if per_run[side]:
            pairs = [ratios(w, o) for w, o in zip(per_run["worker"], per_run[side], strict=True)]
            out[f"worker/{side}"] = medians(pairs)
    return out


def _spread(values: list[float]) -> tuple[float, float, float]:
    return round(min(values), 2), round(statistics.median(values), 2), round(max(values), 2)


class InProcess:
    """The same weights in this process: the engine's bare batched decode and the card's reference loop."""

    def __init__(self, weights: Path, args: argparse.Namespace, batch: int) -> None:
        from benchmarks.bare_decode import engine_options
        from model_worker.engine.engine import MiniGPT4Engine
        from model_worker.model.loader import load_model

        self.args = args
        self.loaded = None
        self.engine = None
        if args.skip_bare and args.skip_reference:
            return
        self.loaded = load_model(weights, device=args.device, dtype=args.dtype)
        if not args.skip_bare:
            self.engine = MiniGPT4Engine(self.loaded, options=engine_options(weights, batch, args.serve_flag))
            self._bare(first=10_000, conversations=1)  # warm-up

    def sides(self, first: int) -> dict[str, tuple[list, float]]:
        """Each in-process side's answers and seconds for conversations ``first ..``."""
        out = {}
        if self.engine is not None:
            bare = self._bare(first=first, conversations=self.args.conversations)
            out["bare"] = (bare.answers, bare.seconds)
            out["bare_decode_only"] = (bare.answers, bare.decode_seconds, bare.decoded_tokens)
        if self.loaded is not None and not self.args.skip_reference:
            out["reference"] = run_reference(self.loaded, self.args, first)
        return out

    def _bare(self, *, first: int, conversations: int):
        from benchmarks.bare_decode import run_bare

        return run_bare(self.engine, first=first, conversations=conversations, turns=self.args.turns,
                        max_new_tokens=self.args.max_new_tokens)


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def main() -> int:
    args = parse_args()
    if args.decode_steps:
        from benchmarks.decode_steps import main as decode_steps

        return decode_steps(args)
    with tempfile.TemporaryDirectory(prefix="throughput-") as workdir:
        result = run(args, Path(workdir))
    print(f"results written to {report(result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


