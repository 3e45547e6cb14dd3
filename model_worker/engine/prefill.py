"""Prefill: several prompts' new positions in one forward of the library's model, each after its own prefix.

The prompts' cached prefixes (from the prefix cache) are left-padded to a common width and stacked into a
``DynamicCache``; their new positions are right-aligned behind them. This runs once per prompt, so the
library's own forward (and its one-off copies) is the right tool here; the per-step path is
:mod:`model_worker.engine.decode_step` over the static cache.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig

from model_worker.engine.kv_cache import KV, kv_length


def kv_of(cache: DynamicCache) -> KV:
    """The tensors a cache holds, per layer."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_of(kv: KV | None, config: PretrainedConfig) -> DynamicCache:
    """A fresh cache holding ``kv`` (empty when ``kv`` is None)."""
    cache = DynamicCache(config=config)
    for index, (keys, values) in enumerate(kv or []):
        cache.update(keys, values, index)
    return cache


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[2]
    if missing <= 0:
        return tensor
    pad = tensor.new_zeros(tensor.shape[0], tensor.shape[1], missing, tensor.shape[3])
    return torch.cat([pad, tensor], dim=2)


def prefill_together(model: torch.nn.Module, config: PretrainedConfig,
                     rows: list[tuple[KV | None, torch.Tensor]]) -> tuple[list[KV], torch.Tensor]:
    """Run several prompts' new positions in one forward, each after its own cached prefix.

    ``rows`` holds each prompt's prefix KV (or None) and the embeddings ``[new, hidden]`` of its remaining
    positions. Prefixes are left-padded to a common width and the new positions right-aligned behind them,
    so every row's last position is the last column; padding and the gap before a shorter row's new
    positions are masked out, and positions continue each row's own prefix. Returns each row's own
    contiguous KV (prefix + new) and the next-token logits ``[rows, vocab]``.
    """
    prefix_lengths = [kv_length(kv) if kv else 0 for kv, _ in rows]
    new_lengths = [embeds.shape[0] for _, embeds in rows]
    width, new = max(prefix_lengths), max(new_lengths)
    device = rows[0][1].device
    valid = torch.zeros(len(rows), width + new, dtype=torch.bool, device=device)
    positions = torch.zeros(len(rows), new, dtype=torch.long, device=device)
    inputs = rows[0][1].new_zeros(len(rows), new, rows[0][1].shape[1])
    for index, ((_, embeds), prefix, count) in enumerate(zip(rows, prefix_lengths, new_lengths, strict=True)):
        valid[index, width - prefix:width] = True
        valid[index, width + new - count:] = True
        positions[index, new - count:] = torch.arange(prefix, prefix + count, device=device)
        inputs[index, new - count:] = embeds
    cache = cache_of(_stacked_prefixes([kv for kv, _ in rows], width) if width else None, config)
    # Without padding the library's own causal attention serves (SDPA's fused causal kernel: a long prompt
    # alone prefills several times faster than through an explicit mask).
    mask = None if bool(valid.all()) else _prefill_mask(valid, width)
    output = model(inputs_embeds=inputs, position_ids=positions, attention_mask=mask, cache=cache, use_cache=True,
                   logits_to_keep=1)
    layers = kv_of(output.cache)
    return [_own_kv(layers, i, valid[i]) for i in range(len(rows))], output.logits[:, -1]


def _own_kv(layers: KV, row: int, valid: torch.Tensor) -> KV:
    """One row's KV without its padding: a view when it has none (no copy of a long prompt's KV)."""
    if bool(valid.all()):
        return [(k[row:row + 1], v[row:row + 1]) for k, v in layers]
    return [(k[row:row + 1, :, valid], v[row:row + 1, :, valid]) for k, v in layers]


def _stacked_prefixes(prefixes: list[KV | None], width: int) -> KV:
    """Every row's prefix left-padded to ``width`` and stacked (zeros for a row without one)."""
    template = next(kv for kv in prefixes if kv)
    layers: KV = []
    for index, (k0, v0) in enumerate(template):
        empty_k = k0.new_zeros(1, k0.shape[1], width, k0.shape[3])
        empty_v = v0.new_zeros(1, v0.shape[1], width, v0.shape[3])
        keys = [_left_pad(kv[index][0], width) if kv else empty_k for kv in prefixes]
        values = [_left_pad(kv[index][1], width) if kv else empty_v for kv in prefixes]
        layers.append((torch.cat(keys), torch.cat(values)))
    return layers


def _prefill_mask(valid: torch.Tensor, width: int) -> torch.Tensor:
    """``[rows, 1, new, width + new]`` boolean: causal over valid columns; a padding query sees itself
    (so no row of the softmax is empty; nothing real ever attends to it)."""
    rows, columns = valid.shape
    new = columns - width
    query_column = torch.arange(width, columns, device=valid.device).unsqueeze(1)  # [new, 1]
    column = torch.arange(columns, device=valid.device).unsqueeze(0)  # [1, columns]
    causal = column <= query_column
    mask = valid.unsqueeze(1) & causal.unsqueeze(0)
    mask |= (column == query_column).unsqueeze(0)
    return mask.view(rows, 1, new, columns)
