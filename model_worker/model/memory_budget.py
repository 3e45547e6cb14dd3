"""The memory budget (``--memory-budget-gb``): what the running answers and the caches may hold beyond the
weights, turned into a batch size, a tokens-in-flight allowance and a prefix-cache size.

Sized after the weights are loaded. Every position of every layer keeps a key and a value of the hidden
width: 2 x 36 layers x 2816 x 2 bytes = 405,504 bytes per token at the real shapes in bfloat16 or float16.
A row of the batch can reach the whole context, so the batch size is what memory must cover. The plan
counts ``transient_copies`` copies of a full-context row: the decode batch's KV cache (model_worker/engine/
kv_cache.py: one slot per row, kept allocated) and, while rows are prefilled together, the prefill's KV
beside it (engine/prefill.py; its output and per-row copies overlap only briefly, within the unplanned
share). The prefix cache keeps finished answers' own KV, unpadded, once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

GIB = 2**30
#: With no ``--memory-budget-gb``: this share of the memory free once the weights are loaded.
DEFAULT_FREE_SHARE = 0.9
#: The prefix cache's share of what is left for KV once the running batch has its room.
PREFIX_CACHE_SHARE = 0.25
#: Allocator slack, the sampler, Python objects: held whatever the batch.
FIXED_WORKSPACE_BYTES = 256 * 2**20
#: The batch's KV cache, and a batched prefill's KV beside it (see the module's text). Measured with
#: benchmarks.small_hosts --budget-check (bfloat16, rows of 512 positions): 5 rows grew the process 1.96 GiB,
#: 0.39 GiB a row, under the 0.43 GiB a row two copies plus working space itemise.
TRANSIENT_KV_COPIES = 2
#: The budget's share kept for what the plan does not itemise: freed memory malloc has not handed back,
#: the model's smaller temporaries. Measured (benchmarks.small_hosts --budget-check 4 --budget-context 512,
#: bfloat16, the engine before its static KV cache, two copies counted): a full batch of 8 grew 4.38 GiB,
#: 10% past the 3.99 GiB the plan itemised.
UNPLANNED_SHARE = 0.15


class MemoryBudgetError(ValueError):
    """The budget leaves no room for even one conversation of the full context."""


@dataclass(frozen=True)
class Workspace:
    """Working memory besides the KV: a fixed part and a part per row of the batch."""

    fixed_bytes: int
    per_row_bytes: int

    def for_rows(self, rows: int) -> int:
        return self.fixed_bytes + rows * self.per_row_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """What the budget allows; ``describe()`` is what ``/readyz`` reports."""

    budget_bytes: int
    kv_bytes_per_token: int
    workspace_bytes: int
    max_batch_size: int
    max_tokens_in_flight: int
    prefix_cache_tokens: int

    def describe(self) -> dict[str, float | int]:
        """The capacity as ``/readyz`` shows it."""
        return {"memory_budget_gb": round(self.budget_bytes / GIB, 2), "max_batch_size": self.max_batch_size,
                "max_tokens_in_flight": self.max_tokens_in_flight, "prefix_cache_tokens": self.prefix_cache_tokens,
                "kv_bytes_per_token": self.kv_bytes_per_token}


def kv_bytes_per_token(llm_config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one position holds across all layers."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * llm_config.num_hidden_layers * llm_config.hidden_size * element


def workspace(llm_config, dtype: torch.dtype, *, context_length: int) -> Workspace:
    """Per row: one layer's activations while its full-context prompt is prefilled (the scheduler may
    prefill a whole batch together) and its float32 logits; fixed: one row's float32 attention scores (for
    a kernel that materialises them), allocator slack and the like."""
    element = torch.empty((), dtype=dtype).element_size()
    activations = context_length * (6 * llm_config.hidden_size + 2 * llm_config.intermediate_size) * element
    logits = 2 * llm_config.vocab_size * 4
    scores = llm_config.num_attention_heads * context_length * context_length * 4
    return Workspace(fixed_bytes=scores + FIXED_WORKSPACE_BYTES, per_row_bytes=activations + logits)


def plan_memory(*, budget_bytes: int, kv_bytes_per_token: int, context_length: int, max_batch_size: int,
                work: Workspace, image_cache_bytes: int = 0, max_tokens_in_flight: int | None = None,
                prefix_cache_tokens: int | None = None,
                transient_copies: int = TRANSIENT_KV_COPIES) -> MemoryPlan:
    """Split ``budget_bytes`` (beyond the weights), less :data:`UNPLANNED_SHARE`, into the running batch's
    KV and working space, then the prefix cache. ``max_batch_size``, ``max_tokens_in_flight`` and ``prefix_cache_tokens`` are the
    operator's caps (None: no cap). Raises :class:`MemoryBudgetError` when not one full-context row fits."""
    room = int(budget_bytes * (1 - UNPLANNED_SHARE)) - work.fixed_bytes - image_cache_bytes
    row_bytes = context_length * kv_bytes_per_token * transient_copies + work.per_row_bytes
    rows = min(max_batch_size, max(room, 0) // row_bytes)
    if rows < 1:
        needed = (row_bytes + work.fixed_bytes + image_cache_bytes) / (1 - UNPLANNED_SHARE) / GIB
        raise MemoryBudgetError(f"a memory budget of {budget_bytes / GIB:.2f} GiB beyond the weights cannot hold "
                                f"one {context_length}-token conversation (needs {needed:.2f} GiB): raise "
                                f"--memory-budget-gb, or free memory for it (--quantize int8 or int4 makes the "
                                f"weights smaller)")
    left = room - rows * row_bytes
    prefix_tokens = int(min(left, room * PREFIX_CACHE_SHARE) // kv_bytes_per_token)
    in_flight = rows * context_length
    return MemoryPlan(
        budget_bytes=budget_bytes, kv_bytes_per_token=kv_bytes_per_token, workspace_bytes=work.for_rows(rows),
        max_batch_size=rows,
        max_tokens_in_flight=in_flight if max_tokens_in_flight is None else min(in_flight, max_tokens_in_flight),
        prefix_cache_tokens=prefix_tokens if prefix_cache_tokens is None else min(prefix_tokens, prefix_cache_tokens),
    )


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for this process now: free GPU memory on CUDA, available RAM on CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return _available_ram_bytes()


def _available_ram_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_budget_bytes(device: torch.device) -> int:
    """The budget when none is given: :data:`DEFAULT_FREE_SHARE` of the memory free after loading."""
    return int(free_memory_bytes(device) * DEFAULT_FREE_SHARE)


def budget_bytes_from_gb(budget_gb: float | None, device: torch.device) -> int:
    """``--memory-budget-gb`` in bytes (GiB, as the rest of the worker counts), or the default."""
    return default_budget_bytes(device) if budget_gb is None else int(budget_gb * GIB)


def plan_for_model(loaded, *, budget_gb: float | None, max_batch_size: int, context_length: int,
                   image_cache_bytes: int = 0, max_tokens_in_flight: int | None = None,
                   prefix_cache_tokens: int | None = None) -> MemoryPlan:
    """The plan for a loaded model (``LoadedModel``): call it after the weights are placed."""
    config, dtype = loaded.llm_config, loaded.dtype
    return plan_memory(
        budget_bytes=budget_bytes_from_gb(budget_gb, loaded.device), kv_bytes_per_token=kv_bytes_per_token(config, dtype),
        context_length=context_length, max_batch_size=max_batch_size,
        work=workspace(config, dtype, context_length=context_length),
        image_cache_bytes=image_cache_bytes, max_tokens_in_flight=max_tokens_in_flight,
        prefix_cache_tokens=prefix_cache_tokens,
    )
