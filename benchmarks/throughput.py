"""The worker against the card's reference loop: N concurrent conversations of T turns, in one run.

    .venv/bin/python -m benchmarks.throughput --weights tiny --conversations 8 --turns 3 --max-new-tokens 32
    .venv/bin/python -m benchmarks.throughput --real-shapes --device cuda --dtype float16 --conversations 32

First it starts a real ``serve`` process and drives it through the HTTP API (the bot's client, which sends
each image once and then its hash): every conversation opens with an image and asks T questions in a row,
all conversations at once, greedy. Then, in the same process and on the same weights, the card's reference
loop (``model_worker.model.reference``: preprocess, encode the image, build the embeddings, ``generate``)
answers the same conversations one request at a time. It prints a table and one JSON line (also written
under ``benchmarks/results/``): aggregate tokens/s, time to first token and inter-token latency (p50/p95),
the ratios worker/reference, and what the worker's metrics counted (batch sizes, cache hits).

Tokens are the reply tokens each side generated (``completion_tokens`` for the worker, every generated id
for the reference, which does not stop at a new turn: that favours the reference). Inter-token latency is
per request: (last token - first token) / (tokens - 1). ``--weights tiny`` writes make-tiny weights to a
temporary directory; ``--real-shapes`` writes random weights at the real model's sizes (about 10 GB).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bot.worker_client.image_refs import ImageRefClient
from model_worker.wire.protocol import ChatRequest, DoneEvent, ImageRef, TokenEvent, Turn
from tests.support.requests import metric_value
from tests.support.worker import run_worker

RESULTS_DIR = Path(__file__).parent / "results"
QUESTIONS = ("What can you see in this picture?", "What colour is the biggest thing?", "Is it daytime?",
             "How many people are there?", "Describe it in Japanese.", "What happens next?")
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
    parser.add_argument("--skip-reference", action="store_true", help="measure the worker only")
    return parser.parse_args()


# ---- the conversations ----------------------------------------------------------------------------


def conversation_image(index: int) -> bytes:
    """A distinct 320x240 PNG per conversation."""
    image = Image.new("RGB", (320, 240), ((37 * index) % 256, 120, (200 - 23 * index) % 256))
    image.paste(((90 + 51 * index) % 256, 30, 160), (20 + index % 50, 30, 180, 150))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def next_request(index: int, image: bytes, history: list[Turn], turn: int, max_new_tokens: int) -> ChatRequest:
    images = [ImageRef.from_bytes(image)] if turn == 0 else []
    question = Turn(role="user", text=f"{QUESTIONS[turn % len(QUESTIONS)]} ({index})", images=images)
    return ChatRequest(user=f"user-{index}", conversation=[*history, question],
                       generation={"greedy": True, "max_new_tokens": max_new_tokens})


# ---- the worker -----------------------------------------------------------------------------------


async def worker_conversation(client: ImageRefClient, index: int, args: argparse.Namespace) -> list[Answer]:
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


async def drive_worker(handle, args: argparse.Namespace) -> tuple[list[Answer], float, dict[str, float]]:
    client = ImageRefClient(handle.client())
    try:
        await worker_answer(client, next_request(-1, conversation_image(999), [], 1, 4))  # warm-up
        before = await scrape(handle)
        started = time.perf_counter()
        runs = await asyncio.gather(*(worker_conversation(client, i, args) for i in range(args.conversations)))
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


def run_reference(weights: Path, args: argparse.Namespace) -> tuple[list[Answer], float]:
    """The card's loop, one request at a time, on the same conversations (each side's own replies)."""
    from model_worker.model.loader import load_model

    loaded = load_model(weights, device=args.device, dtype=args.dtype)
    steps: list[float] = []
    hook = loaded.model.llm.register_forward_hook(lambda *_: steps.append(time.perf_counter()))
    try:
        reference_answer(loaded, next_request(-1, conversation_image(999), [], 1, 4), steps)  # warm-up
        started = time.perf_counter()
        answers = [answer for index in range(args.conversations)
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


def summarize(answers: list[Answer], seconds: float) -> dict[str, float]:
    tokens = sum(a.tokens for a in answers)
    ttft = [a.ttft_s for a in answers]
    itl = [a.itl_s for a in answers if a.itl_s is not None] or [0.0]
    return {"requests": len(answers), "tokens": tokens, "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2), "ttft_p50_s": percentile(ttft, 50),
            "ttft_p95_s": percentile(ttft, 95), "itl_p50_s": percentile(itl, 50), "itl_p95_s": percentile(itl, 95)}


def percentile(values: list[float], pct: int) -> float:
    if len(values) == 1:
        return round(values[0], 5)
    return round(statistics.quantiles(values, n=100, method="inclusive")[pct - 1], 5)


def report(args: argparse.Namespace, result: dict) -> Path:
    columns = ("tokens", "seconds", "tokens_per_s", "ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s")
    print(f"{'':10}" + "".join(f"{c:>14}" for c in columns))
    for side in ("worker", "reference"):
        if side in result:
            print(f"{side:10}" + "".join(f"{result[side][c]:>14}" for c in columns))
    if "ratios" in result:
        print(f"{'ratio':10}" + "".join(f"{result['ratios'].get(c, ''):>14}" for c in columns))
    print("worker metrics:", ", ".join(f"{k}={v:g}" for k, v in result["worker_metrics"].items()))
    line = json.dumps(result, sort_keys=True)
    print(line)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / time.strftime("throughput-%Y%m%d-%H%M%S.json")
    path.write_text(line + "\n", encoding="utf-8")
    return path


def ratios(worker: dict, reference: dict) -> dict[str, float]:
    keys = ("tokens_per_s", "ttft_p50_s", "ttft_p95_s", "itl_p50_s", "itl_p95_s")
    return {k: round(worker[k] / reference[k], 3) for k in keys if reference[k]}


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
    weights = prepare_weights(args, workdir)
    flags = dict(flag.split("=", 1) for flag in args.serve_flag)
    batch = args.max_batch_size or args.conversations
    load_before = os.getloadavg()
    with run_worker(weights, workdir / "worker", device=args.device, dtype=args.dtype, max_batch_size=batch,
                    **flags) as handle:
        answers, seconds, deltas = asyncio.run(drive_worker(handle, args))
    result = {"benchmark": "throughput", "machine": platform.platform(), "cpus": os.cpu_count(),
              "device": args.device, "dtype": args.dtype, "weights": "real-shapes" if args.real_shapes else args.weights,
              "conversations": args.conversations, "turns": args.turns, "max_new_tokens": args.max_new_tokens,
              "max_batch_size": batch, "worker": summarize(answers, seconds), "worker_metrics": deltas}
    if not args.skip_reference:
        reference, ref_seconds = run_reference(weights, args)
        result["reference"] = summarize(reference, ref_seconds)
        result["ratios"] = ratios(result["worker"], result["reference"])
        result["same_replies"] = sum(a.text == b.text for a, b in zip(answers, reference, strict=True))
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    result["gpu"] = _gpu_name(args.device)
    return result


def _gpu_name(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="throughput-") as workdir:
        result = run(args, Path(workdir))
    print(f"results written to {report(args, result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


