"""Tiny random weights written in exactly the four published formats (model.md §2, §5), plus arch.json.

The files have the real key names and nesting, the extras a loader must ignore (a ViT block beyond the
architecture's depth, ``t5_proj``, text-side Q-Former tensors, ``position_ids``, attention buffers,
optimizer state) and a sentencepiece model trained on the spot with rinna's settings: unigram, byte
fallback, no leading-space prefix, whitespace kept, pad 0 / unk 1 / bos 2 / eos 3. A CPU forward pass
takes milliseconds.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file

from model_worker.model.arch import ARCH_FILE, Arch, arch_from_dict
from model_worker.model.minigpt4 import MiniGPT4
from model_worker.model.weights import BLIP2_FILE, EVA_FILE, LLM_DIR, PROJECTION_FILE

TINY_ARCH = {
    "vision": {"width": 32, "depth": 2, "heads": 4, "mlp_dim": 139, "patch_size": 14, "image_size": 224},
    "qformer": {"hidden": 32, "layers": 2, "heads": 4, "intermediate": 64, "cross_attention_every": 2,
                "num_queries": 4},
}
TINY_LLM = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256}

_ENGLISH = ("a cat on a table with a laptop what can you see ? the dog is running in the park . this is "
            "a photo of two people sitting near the window , there are many cars on the street and a red "
            "bus . describe the image please . it looks like a sunny day with blue sky").split()
_JAPANESE = ("猫 は どんな 体勢 を して います か ? 横 に なって います 。 机 の 上 に パソコン が あり ます "
             "写真 に 何 が 写って いる 犬 公園 走って 赤い バス 青い 空 晴れた 日 です ね 人 二人 窓 近く").split()


def _corpus(rng: random.Random) -> list[str]:
    lines = ["ユーザー: <Img><ImageHere></Img> What can you see?", "システム: a cat on a table with a laptop",
             "ユーザー: 猫はどんな体勢をしていますか?", "システム: 横になっています。"]
    for _ in range(600):
        words = _ENGLISH if rng.random() < 0.5 else _JAPANESE
        joiner = " " if words is _ENGLISH else ""
        speaker = rng.choice(["ユーザー: ", "システム: "])
        lines.append(speaker + joiner.join(rng.choice(words) for _ in range(rng.randint(3, 12))))
    return lines


def train_tokenizer(seed: int = 0) -> bytes:
    """A small sentencepiece model (serialized) trained with rinna's settings."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(random.Random(seed))), model_writer=model, model_type="unigram",
        vocab_size=700, hard_vocab_limit=False, byte_fallback=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, normalization_rule_name="identity", character_coverage=1.0,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="[PAD]", unk_piece="[UNK]", bos_piece="<s>",
        eos_piece="</s>", control_symbols=["[CLS]", "[SEP]", "[MASK]"], user_defined_symbols=["\n"],
        allow_whitespace_only_pieces=True, num_threads=1, minloglevel=2,
    )
    return model.getvalue()


def scaled_sizes(scale: int) -> tuple[dict, dict]:
    """The tiny architecture and LLM sizes with every width multiplied by ``scale`` (1: the tiny model).
    Larger scales make files big enough to time loading, still far from the real model."""
    if scale == 1:
        return TINY_ARCH, TINY_LLM
    vision = {**TINY_ARCH["vision"], "width": 32 * scale, "mlp_dim": int(32 * scale * 4.3637)}
    qformer = {**TINY_ARCH["qformer"], "hidden": 32 * scale, "intermediate": 64 * scale}
    llm = {**TINY_LLM, "hidden_size": 64 * scale, "intermediate_size": 256 * scale}
    return {"vision": vision, "qformer": qformer}, llm


def llm_config_dict(vocab_size: int, llm_sizes: dict) -> dict:
    """A config.json for GPT-NeoX at ``llm_sizes``, as rinna's looks."""
    # Legacy field names, as rinna's config.json (written by transformers 4.x) has them.
    return {
        "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", **llm_sizes, "vocab_size": vocab_size,
        "hidden_act": "gelu", "rotary_pct": 1.0, "rotary_emb_base": 10000, "max_position_embeddings": 2048,
        "layer_norm_eps": 1e-5, "use_parallel_residual": False, "tie_word_embeddings": False,
        "initializer_range": 0.02, "bos_token_id": 2, "eos_token_id": 3, "use_cache": True,
        "torch_dtype": "float16", "transformers_version": "4.28.0",
    }


def _tokenizer_config() -> dict:
    return {"tokenizer_class": "T5Tokenizer", "do_lower_case": False, "pad_token": "[PAD]", "unk_token": "[UNK]",
            "bos_token": "<s>", "eos_token": "</s>", "cls_token": "[CLS]", "sep_token": "[SEP]",
            "mask_token": "[MASK]", "extra_ids": 0, "additional_special_tokens": [], "model_max_length": 2048}


def _random_tensor(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """Scaled like a trained network (unit-variance activations), so outputs depend on every input."""
    noise = torch.randn(shape, generator=generator)
    is_norm = any(part in name for part in (".norm", "LayerNorm", "layernorm", "layer_norm", "ln_vision"))
    if is_norm:
        return 1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise
    if len(shape) >= 2 and name.endswith("weight") and "embed_in" not in name:
        fan_in = shape[1:].numel()
        return noise / fan_in**0.5
    return 0.5 * noise if len(shape) >= 2 else 0.1 * noise  # embeddings, tokens, positions; biases


def _random_state(model: MiniGPT4, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every tensor random (norm scales around 1), so a swapped or missed tensor changes the output."""
    return {name: _random_tensor(name, t.shape, generator) for name, t in model.state_dict().items()}


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _eva_file(state: dict[str, torch.Tensor], arch: Arch) -> dict[str, torch.Tensor]:
    eva = {k: v.half() for k, v in _strip(state, "visual_encoder.").items()}
    # The published file holds one block more than the 39 the model uses.
    extra = {k.replace("blocks.0.", f"blocks.{arch.vision.depth}.", 1): v.clone()
             for k, v in eva.items() if k.startswith("blocks.0.")}
    return {**eva, **extra}


def _lavis_qformer_name(name: str) -> str:
    if name.startswith("layernorm."):
        return "Qformer.bert.embeddings.LayerNorm." + name[len("layernorm."):]
    return "Qformer.bert." + name.replace(".attention.attention.", ".attention.self.").replace(
        ".crossattention.attention.", ".crossattention.self.")


def _blip2_file(state: dict[str, torch.Tensor], arch: Arch, generator: torch.Generator) -> dict:
    q = arch.qformer
    model = {"query_tokens": state["query_tokens"], "ln_vision.weight": state["ln_vision.weight"],
             "ln_vision.bias": state["ln_vision.bias"]}
    model |= {_lavis_qformer_name(k): v for k, v in _strip(state, "qformer.").items()}
    model |= {  # text-side and T5 tensors the model does not use
        "Qformer.bert.embeddings.word_embeddings.weight": torch.randn(50, q.hidden, generator=generator),
        "Qformer.bert.embeddings.position_embeddings.weight": torch.randn(64, q.hidden, generator=generator),
        "Qformer.bert.embeddings.position_ids": torch.arange(64).unsqueeze(0),
        "Qformer.cls.predictions.bias": torch.zeros(50),
        "t5_proj.weight": torch.randn(48, q.hidden, generator=generator), "t5_proj.bias": torch.zeros(48),
    }
    for layer in range(q.layers):
        base = f"Qformer.bert.encoder.layer.{layer}."
        model[base + "intermediate.dense.weight"] = torch.randn(q.intermediate, q.hidden, generator=generator)
        model[base + "output.dense.weight"] = torch.randn(q.hidden, q.intermediate, generator=generator)
        model[base + "output.LayerNorm.weight"] = torch.ones(q.hidden)
    return {"model": model}


def _projection_file(state: dict[str, torch.Tensor], llm_layers: int) -> dict:
    model = {"llama_proj.weight": state["llama_proj.weight"], "llama_proj.bias": state["llama_proj.bias"]}
    for layer in range(llm_layers):  # transformers 4.28 attention buffers saved with the checkpoint
        base = f"gpt_neox_model.gpt_neox.layers.{layer}.attention."
        model[base + "bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
        model[base + "masked_bias"] = torch.tensor(-1e9)
        model[base + "rotary_emb.inv_freq"] = torch.rand(8)
    model["Qformer.bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 1e-4}]}
    return {"model": model, "optimizer": optimizer, "epoch": 3}


def _llm_file(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """fp16 tensors named as transformers 4.x saved GPT-NeoX (``embed_out``), with its attention buffers."""
    llm = {("embed_out." + k[len("lm_head."):] if k.startswith("lm_head.") else k): v.half().contiguous()
           for k, v in _strip(state, "llm.").items()}
    for layer in range(layers):
        base = f"gpt_neox.layers.{layer}.attention."
        llm[base + "masked_bias"] = torch.tensor(-1e9)
        llm[base + "rotary_emb.inv_freq"] = torch.rand(8)
    return llm


def make_tiny(out: Path, seed: int = 0, *, scale: int = 1) -> None:
    """Write tiny random weights for the real loader into ``out`` (created if needed); ``scale``
    multiplies every width (see :func:`scaled_sizes`)."""
    from transformers import GPTNeoXConfig

    out = Path(out)
    (out / LLM_DIR).mkdir(parents=True, exist_ok=True)
    spm_bytes = train_tokenizer(seed)
    vocab = spm.SentencePieceProcessor(model_proto=spm_bytes).get_piece_size()
    arch_sizes, llm_sizes = scaled_sizes(scale)
    llm_dict = llm_config_dict(vocab, llm_sizes)
    arch = arch_from_dict(arch_sizes)
    with torch.device("meta"):
        skeleton = MiniGPT4(arch, GPTNeoXConfig.from_dict(llm_dict))
    generator = torch.Generator().manual_seed(seed)
    state = _random_state(skeleton, generator)
    torch.save(_eva_file(state, arch), out / EVA_FILE)
    torch.save(_blip2_file(state, arch, generator), out / BLIP2_FILE)
    layers = llm_sizes["num_hidden_layers"]
    torch.save(_projection_file(state, layers), out / PROJECTION_FILE)
    save_file(_llm_file(state, layers), out / LLM_DIR / "model.safetensors", metadata={"format": "pt"})
    (out / LLM_DIR / "spiece.model").write_bytes(spm_bytes)
    (out / LLM_DIR / "config.json").write_text(json.dumps(llm_dict, indent=2) + "\n", encoding="utf-8")
    (out / LLM_DIR / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2) + "\n",
                                                         encoding="utf-8")
    (out / ARCH_FILE).write_text(json.dumps(arch_sizes, indent=2) + "\n", encoding="utf-8")
