"""The running batch: one KV cache for every decoding sequence, advanced by one forward per step.

Rows are left-padded to a common length, as transformers' ``generate`` does for a padded batch: the
attention mask is zero over each row's padding and every row gets its own true position, so GPT-NeoX's
rotary embedding (computed from ``position_ids``) and the causal mask (computed from the cache length)
give each row the same result it would get alone. A sequence is prefilled on its own and joins with its
own unpadded KV; one that ends leaves at once, and padding columns no row needs any more are trimmed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import DynamicCache, PretrainedConfig

from model_worker.engine.sequence import Sequence

#: Per layer (keys, values), each ``[rows, heads, length, head_dim]``.
KV = list[tuple[torch.Tensor, torch.Tensor]]
#: One decode step: ``(input_ids=, position_ids=, attention_mask=, cache=)`` -> logits ``[rows, vocab]``,
#: appending the step's keys and values to ``cache`` in place.
Decoder = Callable[..., torch.Tensor]


def library_decoder(llm: torch.nn.Module) -> Decoder:
    """The decode step as transformers' own forward."""

    def step(**inputs: torch.Tensor | DynamicCache | None) -> torch.Tensor:
        return llm(**inputs, use_cache=True).logits[:, -1]

    return step


def kv_of(cache: DynamicCache) -> KV:
    """The tensors a cache holds, per layer."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def cache_of(kv: KV | None, config: PretrainedConfig) -> DynamicCache:
    """A fresh cache holding ``kv`` (empty when ``kv`` is None)."""
    cache = DynamicCache(config=config)
    for index, (keys, values) in enumerate(kv or []):
        cache.update(keys, values, index)
    return cache


def crop_kv(kv: KV, length: int) -> KV:
    """The first ``length`` positions of every layer (views, no copy)."""
    return [(keys[:, :, :length], values[:, :, :length]) for keys, values in kv]


def kv_length(kv: KV) -> int:
    return kv[0][0].shape[2] if kv else 0


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[2]
    if missing <= 0:
        return tensor
    pad = tensor.new_zeros(tensor.shape[0], tensor.shape[1], missing, tensor.shape[3])
    return torch.cat([pad, tensor], dim=2)


class DecodeBatch:
    """The sequences decoding together, their lengths, and the shared left-padded KV cache."""

    def __init__(self, config: PretrainedConfig, *, device: torch.device) -> None:
        self._config = config
        self._device = device
        self.rows: list[Sequence] = []
        self._lengths: list[int] = []  # real positions held per row
        self._cache: DynamicCache | None = None
        self._width = 0  # columns of the cache (the longest row)

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, seq: object) -> bool:
        return any(row is seq for row in self.rows)

    @property
    def width(self) -> int:
        return self._width

    def join(self, entries: list[tuple[Sequence, KV]]) -> None:
        """Add sequences with their own unpadded KV ``[1, heads, length, head_dim]``."""
        if not entries:
            return
        width = max([self._width] + [kv_length(kv) for _, kv in entries])
        layers = kv_of(self._cache) if self._cache is not None else None
        merged: KV = []
        for index in range(len(entries[0][1])):
            parts_k = [_left_pad(layers[index][0], width)] if layers else []
            parts_v = [_left_pad(layers[index][1], width)] if layers else []
            parts_k += [_left_pad(kv[index][0], width) for _, kv in entries]
            parts_v += [_left_pad(kv[index][1], width) for _, kv in entries]
            merged.append((torch.cat(parts_k, dim=0), torch.cat(parts_v, dim=0)))
        self._cache = cache_of(merged, self._config)
        self._width = width
        for seq, kv in entries:
            self.rows.append(seq)
            self._lengths.append(kv_length(kv))

    def leave(self, seq: Sequence, *, keep_kv: bool = False) -> KV | None:
        """Take a sequence out; returns its own unpadded KV (a copy) when ``keep_kv``."""
        index = next(i for i, row in enumerate(self.rows) if row is seq)
        length = self._lengths[index]
        start = self._width - length
        own = None
        if keep_kv and self._cache is not None:
            own = [(k[index:index + 1, :, start:].clone(), v[index:index + 1, :, start:].clone())
                   for k, v in kv_of(self._cache)]
        del self.rows[index], self._lengths[index]
        self._drop_row(index)
        return own

    def _drop_row(self, index: int) -> None:
        if not self.rows:
            self._cache, self._width = None, 0
            return
        keep = torch.tensor([i for i in range(len(self.rows) + 1) if i != index], device=self._device)
        trim = self._width - max(self._lengths)  # columns that are padding in every remaining row
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, keep)[:, :, trim:]
            layer.values = layer.values.index_select(0, keep)[:, :, trim:]
        self._width -= trim

    def step(self, decoder: Decoder, tokens: list[int]) -> torch.Tensor:
        """Feed each row its next token (in row order); returns the next-token logits ``[rows, vocab]``."""
        lengths = torch.tensor(self._lengths, dtype=torch.long, device=self._device)
        input_ids = torch.tensor(tokens, dtype=torch.long, device=self._device).unsqueeze(1)
        logits = decoder(input_ids=input_ids, position_ids=lengths.unsqueeze(1),
                         attention_mask=self._attention_mask(lengths), cache=self._cache)
        self._width += 1
        self._lengths = [length + 1 for length in self._lengths]
        return logits

    def _attention_mask(self, lengths: torch.Tensor) -> torch.Tensor | None:
        """``[rows, width + 1]``: zero over each row's left padding; None when no row is padded."""
        if all(length == self._width for length in self._lengths):
            return None  # as a sequence alone: the plain causal mask
        columns = torch.arange(self._width + 1, device=self._device)
        return (columns.unsqueeze(0) >= (self._width - lengths).unsqueeze(1)).long()


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
    output = model(inputs_embeds=inputs, position_ids=positions, attention_mask=_prefill_mask(valid, width),
                   cache=cache, use_cache=True, logits_to_keep=1)
    layers = kv_of(output.cache)
    own = [[(k[i:i + 1, :, valid[i]], v[i:i + 1, :, valid[i]]) for k, v in layers] for i in range(len(rows))]
    return own, output.logits[:, -1]


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
