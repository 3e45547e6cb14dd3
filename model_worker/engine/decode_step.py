"""One GPT-NeoX decode step for the whole batch over the static KV cache, with the library's own modules.

A decode step feeds one token per row. transformers' forward spends most of a small model's step in
generic plumbing (output capturing, mask factories, cache bookkeeping, attention-interface lookup);
:class:`LeanDecoder` runs the same modules (LayerNorms, linears, MLP, rotary embedding,
``apply_rotary_pos_emb``) in the same order and the same ``scaled_dot_product_attention``, so the numbers
match the library's forward. Each row's new key and value are written in place at its own column of the
static cache; attention reads a view of the first ``width`` columns, masked per row.

:class:`LibraryDecoder` is the same step through transformers' own forward (a check, and the fallback
behind ``lean_decode=False``): it lends the model a ``DynamicCache`` built from the static cache's views,
lets it append the new column, and copies that column back to each row's own position. It copies the
cache every step; the lean step does not.
"""

from __future__ import annotations

import torch
from torch.nn.functional import scaled_dot_product_attention
from transformers import GPTNeoXForCausalLM
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

from model_worker.engine.batch import StepInputs
from model_worker.engine.kv_cache import StaticKVCache
from model_worker.engine.prefill import cache_of, kv_of

#: Keys of one layer from which a float32 CPU step attends by matrix products (see decode_attention).
MATMUL_ATTENTION_FROM_BYTES = 2**20


def decode_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """One query per row over the cache's views: ``[rows, heads, 1, head_dim]`` against ``[rows, heads, width,
    head_dim]``, ``mask`` ``[rows, 1, 1, width]`` (True: visible) or None.

    float32 on a CPU, once the keys are large enough to come from memory rather than cache: attention as two
    matrix products (transformers' eager formulation), the scores as keys x query so that the long operand
    is read in its own layout. Measured on a 2-core AVX-512 CPU at the real shapes (22 heads of 128, keys
    and values of 36 layers, so never cached): as fast as torch's fused kernel for one row of 100 positions,
    a third faster from 300 positions or 4 rows on, and from 100 to 1,000 positions (8 rows) it grew by 1.55
    times the time to read the extra keys and values once where the fused kernel grew by 2.2 times
    (benchmarks/decode_steps.py). Elsewhere the fused kernel, faster there: small caches (tiny models: its
    one call against five), bfloat16 on a CPU (about twice) and CUDA (flash kernels)."""
    if (query.device.type != "cpu" or query.dtype != torch.float32
            or keys.numel() * keys.element_size() < MATMUL_ATTENTION_FROM_BYTES):
        return scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scale)
    scores = torch.matmul(keys, query.transpose(-1, -2)).transpose(-1, -2) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), values)


class LeanDecoder:
    """The decode step without transformers' per-call machinery."""

    def __init__(self, llm: GPTNeoXForCausalLM) -> None:
        self.llm = llm
        self.parallel_residual = llm.config.use_parallel_residual

    def shape_for(self, rows: int, width: int) -> tuple[int, int]:
        """Exactly what the step needs (eager kernels take any shape)."""
        return rows, width

    @torch.inference_mode()
    def __call__(self, step: StepInputs, cache: StaticKVCache) -> torch.Tensor:
        """Next-token logits ``[rows, vocab]``; writes the step's keys and values into ``cache``."""
        model = self.llm.gpt_neox
        hidden = model.embed_in(step.input_ids)
        cos, sin = model.rotary_emb(hidden, position_ids=step.positions.unsqueeze(1))
        for index, layer in enumerate(model.layers):
            hidden = self._layer(index, layer, cache, step, hidden, cos, sin)
        return self.llm.lm_head(model.final_layer_norm(hidden))[:, -1]

    def _layer(self, index, layer, cache, step, hidden, cos, sin) -> torch.Tensor:
        attention = layer.attention
        qkv = attention.query_key_value(layer.input_layernorm(hidden))
        qkv = qkv.view(*hidden.shape[:-1], -1, 3 * attention.head_size).transpose(1, 2)
        query, key, value = qkv.chunk(3, dim=-1)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        cache.write(index, step.write_index, key[:, :, 0], value[:, :, 0])
        attended = self._attend(index, cache, step, query, attention.scaling)
        attended = attention.dense(attended.transpose(1, 2).reshape(*hidden.shape[:-1], -1))
        if self.parallel_residual:
            return layer.mlp(layer.post_attention_layernorm(hidden)) + attended + hidden
        attended = attended + hidden
        return layer.mlp(layer.post_attention_layernorm(attended)) + attended


    @staticmethod
    def _attend(index: int, cache: StaticKVCache, step: StepInputs, query: torch.Tensor,
                scale: float) -> torch.Tensor:
        """Attention of every row over its visible columns: all rows over the step's width, or each group of
        alike rows over its own width (views of the cache either way, no copy)."""
        if step.groups is None:
            keys, values = cache.window(index, step.rows, step.width)
            return decode_attention(query, keys, values, step.mask, scale)
        parts = []
        for first, end, width in step.groups:
            keys, values = cache.window(index, end, width, first=first)
            mask = step.mask[first:end, :, :, :width]
            parts.append(decode_attention(query[first:end], keys, values, mask, scale))
        return torch.cat(parts)


class LibraryDecoder:
    """The decode step as transformers' own forward (copies the cache every step: a check, not the fast path)."""

    def __init__(self, llm: GPTNeoXForCausalLM) -> None:
        self.llm = llm

    def shape_for(self, rows: int, width: int) -> tuple[int, int]:
        return rows, width

    @torch.inference_mode()
    def __call__(self, step: StepInputs, cache: StaticKVCache) -> torch.Tensor:
        """The library appends the new position as column ``width - 1`` of every row; the mask hides each
        row's columns between its own length and that column."""
        old = step.width - 1
        lent = cache_of([cache.window(layer, step.rows, old) for layer in range(cache.layers)], self.llm.config)
        columns = torch.arange(step.width, device=step.positions.device)
        mask = (columns < step.positions.unsqueeze(1)) | (columns == old)
        output = self.llm(input_ids=step.input_ids, position_ids=step.positions.unsqueeze(1),
                          attention_mask=mask.long(), cache=lent, use_cache=True)
        for layer, (keys, values) in enumerate(kv_of(output.cache)):
            cache.write(layer, step.write_index, keys[:, :, old], values[:, :, old])
        return output.logits[:, -1]
