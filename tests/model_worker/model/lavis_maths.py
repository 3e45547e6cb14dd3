"""An independent implementation of the reference's image path, reading the LAVIS-format files directly.

The ViT runs as transformers' ``Blip2VisionModel`` loaded through the documented key mapping (model.md §2);
the Q-Former and the projection are written out in plain torch from the BERT equations. Nothing here
uses the worker's modules, so agreement checks the worker's assembly and key handling.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Blip2VisionConfig, Blip2VisionModel


def _load(path: Path) -> dict[str, torch.Tensor]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in data.get("model", data).items() if isinstance(v, torch.Tensor)}


def blip2_vision(weights: Path) -> Blip2VisionModel:
    """``Blip2VisionModel`` with ``eva_vit_g.pth`` and ``ln_vision`` mapped in, post-layernorm eps 1e-5."""
    arch = json.loads((weights / "arch.json").read_text())["vision"]
    config = Blip2VisionConfig(hidden_size=arch["width"], intermediate_size=arch["mlp_dim"],
                               num_hidden_layers=arch["depth"], num_attention_heads=arch["heads"],
                               image_size=arch["image_size"], patch_size=arch["patch_size"],
                               layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu")
    model = Blip2VisionModel(config).eval()
    model.post_layernorm.eps = 1e-5
    eva, blip2 = _load(weights / "eva_vit_g.pth"), _load(weights / "blip2_pretrained_flant5xxl.pth")
    state = {"embeddings.class_embedding": eva["cls_token"], "embeddings.position_embedding": eva["pos_embed"],
             "embeddings.patch_embedding.weight": eva["patch_embed.proj.weight"],
             "embeddings.patch_embedding.bias": eva["patch_embed.proj.bias"],
             "post_layernorm.weight": blip2["ln_vision.weight"], "post_layernorm.bias": blip2["ln_vision.bias"]}
    for i in range(arch["depth"]):
        src, dst = f"blocks.{i}.", f"encoder.layers.{i}."
        q_bias, v_bias = eva[src + "attn.q_bias"], eva[src + "attn.v_bias"]
        state |= {
            dst + "layer_norm1.weight": eva[src + "norm1.weight"], dst + "layer_norm1.bias": eva[src + "norm1.bias"],
            dst + "layer_norm2.weight": eva[src + "norm2.weight"], dst + "layer_norm2.bias": eva[src + "norm2.bias"],
            dst + "self_attn.qkv.weight": eva[src + "attn.qkv.weight"],
            dst + "self_attn.qkv.bias": torch.cat([q_bias, torch.zeros_like(q_bias), v_bias]),
            dst + "self_attn.projection.weight": eva[src + "attn.proj.weight"],
            dst + "self_attn.projection.bias": eva[src + "attn.proj.bias"],
            **{dst + f"mlp.{n}.{p}": eva[src + f"mlp.{n}.{p}"] for n in ("fc1", "fc2") for p in ("weight", "bias")},
        }
    model.load_state_dict(state, strict=True)
    return model


def _linear(x, sd, name):
    return F.linear(x, sd[name + ".weight"], sd[name + ".bias"])


def _layer_norm(x, sd, name, eps=1e-12):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _attention(x, context, sd, prefix, heads):
    def split(t):
        return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    q, k, v = (split(_linear(src, sd, prefix + "self." + n)) for n, src in
               (("query", x), ("key", context), ("value", context)))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    merged = (weights @ v).transpose(1, 2).reshape(x.shape)
    return _layer_norm(_linear(merged, sd, prefix + "output.dense") + x, sd, prefix + "output.LayerNorm")


def qformer_and_projection(weights: Path, image_tokens: torch.Tensor) -> torch.Tensor:
    """LAVIS Q-Former (query path, BERT maths) + ``llama_proj`` for ln_vision'd image tokens."""
    arch = json.loads((weights / "arch.json").read_text())["qformer"]
    sd, proj = _load(weights / "blip2_pretrained_flant5xxl.pth"), _load(weights / "checkpoint.pth")
    x = sd["query_tokens"].expand(image_tokens.shape[0], -1, -1)
    x = _layer_norm(x, sd, "Qformer.bert.embeddings.LayerNorm")
    for i in range(arch["layers"]):
        base = f"Qformer.bert.encoder.layer.{i}."
        x = _attention(x, x, sd, base + "attention.", arch["heads"])
        if i % arch["cross_attention_every"] == 0:
            x = _attention(x, image_tokens, sd, base + "crossattention.", arch["heads"])
        hidden = F.gelu(_linear(x, sd, base + "intermediate_query.dense"))
        x = _layer_norm(_linear(hidden, sd, base + "output_query.dense") + x, sd, base + "output_query.LayerNorm")
    return _linear(x, proj, "llama_proj")
