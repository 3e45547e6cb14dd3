"""Random weights at the real model's shapes (model.md §1), written as a bundle the worker loads directly.

The tokenizer and the side files come from ``make-tiny`` (a small sentencepiece model: its ids fit the real
vocabulary); the tensors are random, scaled so that fp16 activations stay finite, and stored at the
precision of the published files (the language model and the ViT in fp16). Only speed and memory mean
anything on such weights, never the text.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import GPTNeoXConfig

from model_worker.model.arch import Arch
from model_worker.model.bundle import write_bundle
from model_worker.model.minigpt4 import MiniGPT4
from model_worker.model.tiny import make_tiny
from model_worker.model.weights import LLM_DIR

#: rinna/bilingual-gpt-neox-4b (model.md §1).
REAL_LLM = {"hidden_size": 2816, "num_hidden_layers": 36, "num_attention_heads": 22, "intermediate_size": 11264,
            "vocab_size": 65536}


def _random_tensor(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    dtype = torch.float16 if name.startswith(("llm.", "visual_encoder.")) else torch.float32
    is_norm = any(part in name for part in ("norm", "LayerNorm", "ln_vision"))
    if is_norm and name.endswith("weight"):
        return torch.ones(shape, dtype=dtype)
    if len(shape) < 2:
        return torch.zeros(shape, dtype=dtype)
    fan_in = shape[1:].numel() if "embed_in" not in name and "pos_embed" not in name else 1
    tensor = torch.empty(shape, dtype=dtype)
    return tensor.normal_(0.0, min(0.5, fan_in**-0.5), generator=generator)


def write_real_shape_weights(out: Path, *, seed: int = 0, llm: dict | None = None, arch: Arch | None = None) -> Path:
    """Write a bundle directory at the real shapes (or ``llm``/``arch`` overrides) into ``out``."""
    arch = arch or Arch()
    with tempfile.TemporaryDirectory(prefix="real-shapes-src-") as scratch:
        source = Path(scratch)
        make_tiny(source, seed=seed)  # tokenizer, tokenizer config, config.json to overwrite
        config_path = source / LLM_DIR / "config.json"
        config = {**json.loads(config_path.read_text(encoding="utf-8")), **(llm or REAL_LLM)}
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        with torch.device("meta"):
            skeleton = MiniGPT4(arch, GPTNeoXConfig.from_dict(config))
        generator = torch.Generator().manual_seed(seed)
        tensors = {name: _random_tensor(name, t.shape, generator) for name, t in skeleton.state_dict().items()}
        # The small tokenizer cannot decode ids past its own pieces: those rows score 0, below the real ones.
        pieces = spm.SentencePieceProcessor(model_file=str(source / LLM_DIR / "spiece.model")).get_piece_size()
        tensors["llm.lm_head.weight"][pieces:] = 0
        write_bundle(out, tensors, weights_dir=source, arch=arch)
    return out
