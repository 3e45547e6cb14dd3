"""The Q-Former as transformers' ``Blip2QFormerModel`` (query path only), and the LAVIS key mapping.

Names follow transformers' own BLIP-2 conversion (model.md §2): ``Qformer.bert.embeddings.LayerNorm`` ->
``layernorm``; the rest of ``Qformer.bert.`` drops that prefix, with ``attention.self`` ->
``attention.attention`` (also inside ``crossattention``). Text-side tensors have no counterpart.
"""

from __future__ import annotations

from transformers import Blip2QFormerConfig, Blip2QFormerModel

from model_worker.model.arch import QFormerArch

_PREFIX = "Qformer.bert."


def qformer_config(arch: QFormerArch, *, encoder_width: int) -> Blip2QFormerConfig:
    """BERT-shaped config: GELU, LayerNorm eps 1e-12, cross-attention every ``cross_attention_every``."""
    return Blip2QFormerConfig(
        hidden_size=arch.hidden,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        intermediate_size=arch.intermediate,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        cross_attention_frequency=arch.cross_attention_every,
        encoder_hidden_size=encoder_width,
        use_qformer_text_input=False,
    )


def build_qformer(arch: QFormerArch, *, encoder_width: int) -> Blip2QFormerModel:
    config = qformer_config(arch, encoder_width=encoder_width)
    config._attn_implementation = "eager"
    return Blip2QFormerModel(config)


def qformer_key(lavis_key: str) -> str | None:
    """Our (``Blip2QFormerModel``) name for a ``Qformer.bert.*`` key, or ``None`` if it is not one."""
    if not lavis_key.startswith(_PREFIX):
        return None
    name = lavis_key[len(_PREFIX) :]
    if name.startswith("embeddings.LayerNorm."):
        return "layernorm." + name[len("embeddings.LayerNorm.") :]
    if not name.startswith("encoder."):
        return None
    return name.replace(".attention.self.", ".attention.attention.").replace(
        ".crossattention.self.", ".crossattention.attention."
    )
