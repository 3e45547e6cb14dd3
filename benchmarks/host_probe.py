"""What one setting costs on this host, measured in its own process (``benchmarks.small_hosts`` runs it).

Resident memory comes from ``/proc/self/status`` (VmHWM is the peak, VmRSS the present); writing 5 to
``/proc/self/clear_refs`` resets the peak, so loading and serving each get their own. The memory read
bandwidth is a sum over a 512 MiB float32 tensor (larger than any cache): sampled once before each decode
step of the one-stream run, the floor taken at the median of those samples (on a shared machine the
bandwidth of the moment moves by a third within minutes), and the best of five before loading, reported
beside it.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

from model_worker.model.loader import LoadedModel, load_model
from model_worker.model.memory_budget import GIB, plan_for_model
from model_worker.model.placement import release_freed_memory
from model_worker.model.quantize import module_bytes, tensor_bytes
from model_worker.wire.protocol import ChatRequest, GenerationParams, ImageRef, Turn

#: ``--settings`` names: (dtype, quantize).
SETTINGS = {"float32": ("float32", "none"), "bfloat16": ("bfloat16", "none"), "float16": ("float16", "none"),
            "int8": ("bfloat16", "int8"), "int4": ("bfloat16", "int4")}
_WORDS = ("cat table laptop window street bus park photo sky people dog sunny red blue two many what see "
          "describe image please there are near sitting running").split()


def rss_bytes(field: str) -> int:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def read_bandwidth_bytes_per_s(repeats: int = 5) -> float:
    """Best memory read rate of ``repeats`` reductions over 512 MiB."""
    data = torch.ones(128 * 2**20, dtype=torch.float32)
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = max(best, data.nbytes / (time.perf_counter() - started))
    return best


def make_engine(loaded: LoadedModel, *, max_batch_size: int, context_length: int, prefix_cache_tokens: int | None = None):
    """The one place that names the engine class (re-point it when the engine moves)."""
    from model_worker.engine.engine import MiniGPT4Engine
    from model_worker.engine.options import EngineOptions

    options = EngineOptions(max_batch_size=max_batch_size, kv_cache_positions=context_length)
    if prefix_cache_tokens is not None:
        options = EngineOptions(max_batch_size=max_batch_size, kv_cache_positions=context_length,
                                prefix_cache_tokens=prefix_cache_tokens)
    return MiniGPT4Engine(loaded, options=options, context_length=context_length)


def question(index: int, words: int, image: bytes, new_tokens: int) -> ChatRequest:
    """A user turn of about ``words`` words with one image; greedy, ``new_tokens`` to generate."""
    text = " ".join(_WORDS[(index * 7 + k * 3) % len(_WORDS)] for k in range(words)) + "?"
    turn = Turn(role="user", text=text, images=[ImageRef.from_bytes(image)])
    return ChatRequest(conversation=[turn], generation=GenerationParams(max_new_tokens=new_tokens, greedy=True))


def picture() -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((320, 240)).save(buffer, format="PNG")
    return buffer.getvalue()


def run_streams(engine, requests: list[ChatRequest], *, between_steps=None) -> dict[str, float]:
    """Prefill the requests together, then decode them together until all finish (as the scheduler
    would); tokens/s counts decode steps only (the first token of each comes from the prefill), so time
    spent in ``between_steps()`` (called before each step) is left out."""
    seqs = [engine.prepare(request) for request in requests]
    started = time.perf_counter()
    engine.prefill(seqs)
    prefilled = time.perf_counter()
    steps = []
    while not all(seq.finished for seq in seqs):
        if between_steps:
            between_steps()
        rows = sum(not seq.finished for seq in seqs)
        step_started = time.perf_counter()
        engine.decode(seqs)
        steps.append((rows, time.perf_counter() - step_started))
    tokens = sum(rows for rows, _ in steps)
    for seq in seqs:
        engine.release(seq)
    release_freed_memory()  # as the engine should when its batch empties (see the README's wiring notes)
    full = [seconds for rows, seconds in steps if rows == len(seqs)] or [seconds for _, seconds in steps]
    return {"prompt_tokens": sum(seq.prompt_tokens for seq in seqs), "prefill_s": prefilled - started,
            "decode_tokens": tokens, "decode_s": sum(seconds for _, seconds in steps),
            "tokens_per_s": tokens / max(sum(seconds for _, seconds in steps), 1e-9),
            "median_step_tokens_per_s": len(seqs) / statistics.median(full)}


def llm_bytes_read_per_token(loaded: LoadedModel) -> int:
    """The language model's weights one decode step reads: all but the input embedding (one row of it)."""
    llm = loaded.model.llm
    return module_bytes(llm) - tensor_bytes(llm.gpt_neox.embed_in.weight)


def probe(weights: Path, setting: str, *, device: str, new_tokens: int, words: int, streams: list[int],
          threads: int | None = None) -> dict:
    """Bandwidth, then loading, then serving one and several streams; one JSON-able dict."""
    dtype, quantize = SETTINGS[setting]
    if threads:
        torch.set_num_threads(threads)
    best_bandwidth = read_bandwidth_bytes_per_s()
    reset_peak_rss()
    before_load = rss_bytes("VmRSS")
    loaded = load_model(weights, device=device, dtype=dtype, quantize=quantize)
    result = {"setting": setting, "dtype": dtype, "quantize": quantize, "device": device,
              "threads": torch.get_num_threads(), "bandwidth_before_load_gb_s": best_bandwidth / 1e9,
              "load_s": loaded.load_seconds,
              "rss_before_load_gb": before_load / 1e9, "peak_rss_loading_gb": rss_bytes("VmHWM") / 1e9,
              "rss_after_load_gb": rss_bytes("VmRSS") / 1e9, "weights_gb": loaded.weights_bytes / 1e9,
              "llm_read_per_token_gb": llm_bytes_read_per_token(loaded) / 1e9}
    result["floor_before_load_tokens_per_s"] = best_bandwidth / llm_bytes_read_per_token(loaded)
    reset_peak_rss()
    engine = make_engine(loaded, max_batch_size=max(streams), context_length=2048)
    image = picture()
    samples: list[float] = []
    for count in streams:
        requests = [question(index + 10 * count, words, image, new_tokens) for index in range(count)]
        sample = (lambda: samples.append(read_bandwidth_bytes_per_s(repeats=1))) if count == 1 else None
        result[f"streams_{count}"] = run_streams(engine, requests, between_steps=sample)
    result["peak_rss_serving_gb"] = rss_bytes("VmHWM") / 1e9
    one = result.get("streams_1")
    if one:
        # The floor at the bandwidth of the moment: the median of one read sampled before each step.
        result["bandwidth_gb_s"] = statistics.median(samples) / 1e9
        result["floor_tokens_per_s"] = statistics.median(samples) / llm_bytes_read_per_token(loaded)
        result["one_stream_floor_ratio"] = one["tokens_per_s"] / result["floor_tokens_per_s"]
        result["one_stream_median_step_floor_ratio"] = one["median_step_tokens_per_s"] / result["floor_tokens_per_s"]
    return result


def budget_check(weights: Path, setting: str, *, device: str, budget_gb: float, context: int, new_tokens: int) -> dict:
    """A full batch (as many rows as the plan allows) of conversations that reach ``context`` positions:
    how far the process grows past its size after loading, against the budget."""
    dtype, quantize = SETTINGS[setting]
    loaded = load_model(weights, device=device, dtype=dtype, quantize=quantize)
    plan = plan_for_model(loaded, budget_gb=budget_gb, max_batch_size=8, context_length=context)
    engine = make_engine(loaded, max_batch_size=plan.max_batch_size, context_length=context,
                         prefix_cache_tokens=plan.prefix_cache_tokens)
    after_load = rss_bytes("VmRSS")
    reset_peak_rss()
    # make-tiny's tokenizer (the real-shape bundle has it too): about 1.1 tokens per word, plus the image's
    # rows and the turn's markup.
    words = int((context - new_tokens - 60) / 1.15)
    requests = [question(index, words, picture(), new_tokens) for index in range(plan.max_batch_size)]
    run = run_streams(engine, requests)
    growth = rss_bytes("VmHWM") - after_load
    return {"setting": setting, "budget_gb": budget_gb, "context": context, "plan": plan.describe(), "run": run,
            "growth_past_weights_gb": growth / GIB, "within_budget": growth <= budget_gb * GIB}


def main(argv: list[str]) -> None:
    """``python -m benchmarks.host_probe JSON-ARGS``: print one JSON line (the parent parses it)."""
    args = json.loads(argv[0])
    if args.get("budget_gb"):
        out = budget_check(Path(args["weights"]), args["setting"], device=args["device"], budget_gb=args["budget_gb"],
                           context=args["context"], new_tokens=args["new_tokens"])
    else:
        out = probe(Path(args["weights"]), args["setting"], device=args["device"], new_tokens=args["new_tokens"],
                    words=args["words"], streams=args["streams"], threads=args.get("threads"))
    print(json.dumps(out))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
