"""One GPT-NeoX decode step for the whole batch, with the library's own modules but none of its per-call machinery.

A decode step feeds one token per row. transformers' forward spends most of a small model's step in
generic plumbing (output capturing, mask factories, cache bookkeeping, attention-interface lookup);
here the same modules (LayerNorms, linears, MLP, rotary embedding, ``apply_rotary_pos_emb``) run in the
same order and the attention is the same ``scaled_dot_product_attention``, so the numbers match the
library's forward. The KV tensors stay in the batch's ``DynamicCache`` layers.
"""

from __future__ import annotations

import torch
from torch.nn.functional import scaled_dot_product_attention
from transformers import DynamicCache, GPTNeoXForCausalLM
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb


class LeanDecoder:
    """Calls like the model for a decode step: ``(input_ids [B,1], position_ids [B,1], attention_mask, cache)``."""

    def __init__(self, llm: GPTNeoXForCausalLM) -> None:
        self.llm = llm
        self.parallel_residual = llm.config.use_parallel_residual

    @torch.inference_mode()
    def __call__(self, *, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 cache: DynamicCache) -> torch.Tensor:
        """Next-token logits ``[B, vocab]``; appends this step's keys and values to ``cache``."""
        model = self.llm.gpt_neox
        hidden = model.embed_in(input_ids)
        cos, sin = model.rotary_emb(hidden, position_ids=position_ids)
        mask = attention_mask.bool()[:, None, None, :] if attention_mask is not None else None
        for layer, layer_cache in zip(model.layers, cache.layers, strict=True):
            hidden = self._layer(layer, layer_cache, hidden, cos, sin, mask)
        return self.llm.lm_head(model.final_layer_norm(hidden))[:, -1]

    def _layer(self, layer, layer_cache, hidden, cos, sin, mask) -> torch.Tensor:
        attention = layer.attention
        qkv = attention.query_key_value(layer.input_layernorm(hidden))
        qkv = qkv.view(*hidden.shape[:-1], -1, 3 * attention.head_size).transpose(1, 2)
        query, key, value = qkv.chunk(3, dim=-1)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        layer_cache.keys = torch.cat([layer_cache.keys, key], dim=-2)
        layer_cache.values = torch.cat([layer_cache.values, value], dim=-2)
        attended = scaled_dot_product_attention(query, layer_cache.keys, layer_cache.values, attn_mask=mask,
                                                scale=attention.scaling)
        attended = attention.dense(attended.transpose(1, 2).reshape(*hidden.shape[:-1], -1))
        if self.parallel_residual:
            return layer.mlp(layer.post_attention_layernorm(hidden)) + attended + hidden
        attended = attended + hidden
        return layer.mlp(layer.post_attention_layernorm(attended)) + attended
