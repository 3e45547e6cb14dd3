"""One decode step at the real model's shapes, batch 8, at 100- and 1,000-token contexts, against the memory
bandwidth measured in the same run: does a step only read the KV cache, or copy it too?

    .venv/bin/python -m benchmarks.throughput --decode-steps --device cpu --dtype float32 --layers 8
    .venv/bin/python -m benchmarks.throughput --decode-steps --device cuda --dtype float16

The language model is GPT-NeoX at rinna's shapes (hidden 2816, 22 heads of 128, FFN 11264, vocabulary
65,536) with random weights made in memory; ``--layers`` keeps that many of its 36 layers (every figure
below grows in proportion to the layers, so the ratio does not depend on them; 8 layers in float32 take
about 4.5 GB). Eight rows join the worker's own decode batch (``DecodeBatch`` over the ``StaticKVCache``,
the ``LeanDecoder``, CUDA graphs on a GPU unless ``--eager``) with random keys and values of the given
context, and the batch steps as the engine steps it, choosing each row's next token.

Each round steps both contexts back to back, times the step's attention alone over the same caches and samples
the read bandwidth (a float32 sum over 1 GiB). Printed, as medians over the rounds: the step time at both
contexts and the growth (the per-round difference, with its range), the read bandwidth, the keys and
values a step at 1,000 tokens reads on top of one at 100 (900 positions x 8 rows x layers x 2 x 2816
values), the time to read them once at that bandwidth, and ``growth / that time``: issue 17 asks for at
most 2. For comparison, the same ratio for torch's
attention alone over the same caches (``decode_step.decode_attention``, no model, no cache writes): the part
of the growth that is the attention's own, which a step cannot go below.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPTNeoXForCausalLM

from benchmarks.real_shapes import REAL_LLM
from model_worker.engine.batch import DecodeBatch
from model_worker.engine.decode_step import LeanDecoder, decode_attention
from model_worker.engine.kv_cache import StaticKVCache
from model_worker.engine.sequence import Sequence
from model_worker.model.tiny import llm_config_dict
from model_worker.model.weights import read_llm_config
from model_worker.wire.protocol import CONTEXT_LENGTH, ChatRequest, Turn

ROWS = 8
CONTEXTS = (100, 1000)
WARM_UP = 3  # rounds not counted (the first steps, and graph captures on a GPU)
RESULTS_DIR = Path(__file__).parent / "results"


def main(args) -> int:
    """Measure, print the figures and the ratio, write the JSON line under ``benchmarks/results/``."""
    device = torch.device(args.device)
    dtype = _dtype(args.dtype, device)
    print(f"building GPT-NeoX at the real shapes with {args.layers} layers ({dtype}, {device}) ...", flush=True)
    llm = real_shape_llm(layers=args.layers, device=device, dtype=dtype)
    measured = step_times(llm, device=device, eager=args.eager)
    cache_bytes = 2 * args.layers * REAL_LLM["hidden_size"] * dtype.itemsize  # one position of one row
    extra_bytes = (CONTEXTS[1] - CONTEXTS[0]) * ROWS * cache_bytes
    read_s = extra_bytes / measured["bandwidth"]
    result = {"benchmark": "decode_steps", "machine": platform.platform(), "cpus": os.cpu_count(),
              "device": str(device), "dtype": str(dtype).removeprefix("torch."), "layers": args.layers,
              "rows": ROWS, "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
              "step_ms": {str(c): _ms(measured[f"step_{c}"]) for c in CONTEXTS},
              "step_growth_ms": _ms(measured["step_growth"]),
              "step_growth_spread_ms": [_ms(v) for v in measured["step_growth_spread"]],
              "bandwidth_gb_s": round(measured["bandwidth"] / 1e9, 2), "extra_kv_gb": round(extra_bytes / 1e9, 3),
              "extra_kv_read_ms": _ms(read_s), "ratio": round(measured["step_growth"] / read_s, 3),
              "attention_alone_ms": {str(c): _ms(measured[f"attention_{c}"]) for c in CONTEXTS},
              "attention_alone_ratio": round(measured["attention_growth"] / read_s, 3)}
    _print(result)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / time.strftime("decode-steps-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(result, sort_keys=True) + "\n", encoding="utf-8")
    print(f"results written to {path}")
    return 0


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def real_shape_llm(*, layers: int, device: torch.device, dtype: torch.dtype) -> GPTNeoXForCausalLM:
    """GPT-NeoX at rinna's shapes with ``layers`` layers and the library's random initialisation."""
    with tempfile.TemporaryDirectory(prefix="decode-steps-") as scratch:
        config_path = Path(scratch) / "config.json"
        sizes = {**REAL_LLM, "num_hidden_layers": layers}
        config_path.write_text(json.dumps(llm_config_dict(REAL_LLM["vocab_size"], sizes)), encoding="utf-8")
        config = read_llm_config(Path(scratch))  # checked like the real one: rotary 1.0, sequential residual
    with torch.device(device):
        llm = GPTNeoXForCausalLM._from_config(config, dtype=dtype)
    return llm.eval()


class ReadBandwidth:
    """Bytes per second a float32 sum reads from a buffer far larger than any cache."""

    def __init__(self, device: torch.device, *, gib: float = 1.0) -> None:
        self._device = device
        self._buffer = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32, device=device)

    def sample(self) -> float:
        _sync(self._device)
        started = time.perf_counter()
        self._buffer.sum().item()
        return self._buffer.numel() * 4 / (time.perf_counter() - started)


@torch.inference_mode()
def step_times(llm: GPTNeoXForCausalLM, *, device: torch.device, eager: bool) -> dict[str, object]:
    """Medians over rounds: one decode step of ``ROWS`` rows at each of ``CONTEXTS``, the difference of the two
    within a round, the step's attention alone at each context, and the read bandwidth. Each round does all of
    them back to back, so that whatever else the machine does weighs on them alike."""
    batches = {context: _batch_at(llm, context, device=device) for context in CONTEXTS}
    decoders = {context: _decoder(llm, device, eager) for context in CONTEXTS}
    tokens = {context: [5] * ROWS for context in CONTEXTS}
    bandwidth = ReadBandwidth(device)
    rounds: list[dict[str, float]] = []
    for _ in range(WARM_UP + (50 if device.type == "cuda" else 15)):
        measured: dict[str, float] = {}
        for context, (batch, rows) in batches.items():
            _sync(device)
            started = time.perf_counter()
            tokens[context] = batch.step(decoders[context], rows, tokens[context]).argmax(dim=-1).tolist()
            measured[f"step_{context}"] = time.perf_counter() - started
            measured[f"attention_{context}"] = _attention_alone(batch.cache, batch.length(rows[0]), device)
        measured["bandwidth"] = bandwidth.sample()
        rounds.append(measured)
    kept = rounds[WARM_UP:]
    medians = {key: statistics.median(r[key] for r in kept) for key in kept[0]}
    for kind in ("step", "attention"):
        differences = [r[f"{kind}_{CONTEXTS[1]}"] - r[f"{kind}_{CONTEXTS[0]}"] for r in kept]
        medians[f"{kind}_growth"] = statistics.median(differences)
        medians[f"{kind}_growth_spread"] = (min(differences), max(differences))
    return medians


def _attention_alone(cache: StaticKVCache, width: int, device: torch.device) -> float:
    """Seconds of the step's attention alone over every layer's first ``width`` columns (one query per row):
    the least a step's growth with the context can cost on this machine."""
    query = torch.randn(ROWS, cache.heads, 1, cache.head_dim, dtype=cache.dtype, device=device)
    _sync(device)
    started = time.perf_counter()
    for layer in range(cache.layers):
        keys, values = cache.window(layer, ROWS, width)
        decode_attention(query, keys, values, None, 1.0)
    _sync(device)
    return time.perf_counter() - started


def _batch_at(llm: GPTNeoXForCausalLM, context: int, *, device: torch.device) -> tuple[DecodeBatch, list[Sequence]]:
    """A decode batch of ``ROWS`` rows holding ``context`` random positions each."""
    config = llm.config
    heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    cache = StaticKVCache(layers=config.num_hidden_layers, heads=heads, head_dim=head_dim, max_slots=ROWS,
                          max_positions=CONTEXT_LENGTH, dtype=llm.dtype, device=device)
    batch = DecodeBatch(cache)
    row_kv = [(torch.randn(1, heads, context, head_dim, dtype=llm.dtype, device=device),
               torch.randn(1, heads, context, head_dim, dtype=llm.dtype, device=device))
              for _ in range(config.num_hidden_layers)]
    rows = [Sequence(request=ChatRequest(conversation=[Turn(role="user", text=str(i))])) for i in range(ROWS)]
    batch.join([(row, row_kv) for row in rows])
    return batch, rows


def _decoder(llm: GPTNeoXForCausalLM, device: torch.device, eager: bool):
    lean = LeanDecoder(llm)
    if device.type != "cuda" or eager:
        return lean
    from model_worker.engine.cuda_graphs import GraphedDecoder

    return GraphedDecoder(lean, max_slots=ROWS, max_positions=CONTEXT_LENGTH)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _print(result: dict) -> None:
    short, long = (result["step_ms"][str(c)] for c in CONTEXTS)
    print(f"decode step, {ROWS} rows, {result['layers']} layers, {result['dtype']} on {result['device']}:")
    print(f"  at {CONTEXTS[0]} tokens: {short:.2f} ms   at {CONTEXTS[1]} tokens: {long:.2f} ms")
    print(f"  memory bandwidth (read): {result['bandwidth_gb_s']} GB/s")
    print(f"  extra keys and values at {CONTEXTS[1]} tokens: {result['extra_kv_gb']} GB, read once in "
          f"{result['extra_kv_read_ms']:.2f} ms")
    low, high = result["step_growth_spread_ms"]
    print(f"  growth of a step (median of the per-round differences): {result['step_growth_ms']:.2f} ms "
          f"(rounds: {low:.2f} to {high:.2f})")
    print(f"  ratio (growth / that read time): {result['ratio']} (issue 17 asks for <= 2)")
    short, long = (result["attention_alone_ms"][str(c)] for c in CONTEXTS)
    print(f"  the step's attention alone over the same caches: {short:.2f} ms and {long:.2f} ms, "
          f"ratio {result['attention_alone_ratio']} (what attention itself costs on this machine)")
    print(json.dumps(result, sort_keys=True))
