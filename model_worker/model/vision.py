"""The EVA-CLIP ViT-g/14 vision encoder as timm's ``Eva`` (model.md §1), in LAVIS's parameter layout.

timm's ``Eva`` with separate q/v biases, absolute position embedding, no rotary embedding, pre-norm blocks
with LayerNorm eps 1e-6, exact GELU, no layer scale and no final norm has exactly the parameter names of
``eva_vit_g.pth``; only its depth is cut to the architecture's (39 blocks for the real model).
"""

from __future__ import annotations

import re
from functools import partial

from timm.layers import LayerNorm
from timm.models.eva import Eva

from model_worker.model.arch import VisionArch

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def build_vision_encoder(arch: VisionArch) -> Eva:
    """An ``Eva`` returning all ``cls + patches`` tokens from ``forward_features`` (no pooling, no norm)."""
    return Eva(
        img_size=arch.image_size,
        patch_size=arch.patch_size,
        embed_dim=arch.width,
        depth=arch.depth,
        num_heads=arch.heads,
        # int(width * ratio) must land exactly on mlp_dim (LAVIS's 4.3637 gives 6144 at width 1408).
        mlp_ratio=(arch.mlp_dim + 0.5) / arch.width,
        qkv_bias=True,
        qkv_fused=True,
        num_classes=0,
        global_pool="",
        use_abs_pos_emb=True,
        use_rot_pos_emb=False,
        init_values=None,
        norm_layer=partial(LayerNorm, eps=1e-6),
        use_post_transformer_norm=False,
        use_fc_norm=False,
    )


def vision_key(lavis_key: str, *, depth: int) -> str | None:
    """Our name for an ``eva_vit_g.pth`` key, or ``None`` for a block beyond ``depth`` (ignored)."""
    match = _BLOCK_KEY.match(lavis_key)
    if match and int(match.group(1)) >= depth:
        return None
    return lavis_key
