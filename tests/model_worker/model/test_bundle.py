"""The safetensors bundle: written on first load, memory-mapped later, same numbers, invalidated by changes."""

from __future__ import annotations

import time

import torch
from safetensors import safe_open

from model_worker.__main__ import main
from model_worker.model.bundle import BUNDLE_FILE, LOCAL_CACHE_DIR
from model_worker.model.loader import load_model


def logits_of(loaded) -> torch.Tensor:
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        images = loaded.model.encode_images(pixels)
        ids = torch.tensor([loaded.tokenizer.encode("ユーザー: hello\nシステム: ")])
        return torch.cat([images.flatten(), loaded.model.llm(input_ids=ids).logits.flatten()])


def test_second_start_uses_the_bundle_and_computes_the_same(weights_copy):
    first = load_model(weights_copy, device="cpu")
    second = load_model(weights_copy, device="cpu")
    print(f"\nfirst start (sources + writing the bundle): {first.load_seconds:.3f}s; "
          f"second start (bundle): {second.load_seconds:.3f}s")
    assert (first.source, second.source) == ("sources", "bundle")
    assert torch.equal(logits_of(first), logits_of(second))


def test_bundle_keeps_source_precision(weights_copy):
    load_model(weights_copy, device="cpu")
    with safe_open(str(weights_copy / LOCAL_CACHE_DIR / BUNDLE_FILE), framework="pt") as handle:
        assert handle.get_slice("llm.lm_head.weight").get_dtype() == "F16"  # safetensors source, fp16
        assert handle.get_slice("visual_encoder.blocks.0.attn.qkv.weight").get_dtype() == "F16"
        assert handle.get_slice("llama_proj.weight").get_dtype() == "F32"


def test_changed_source_invalidates_the_bundle(weights_copy):
    load_model(weights_copy, device="cpu")
    data = torch.load(weights_copy / "checkpoint.pth", weights_only=True)
    data["model"]["llama_proj.bias"] = data["model"]["llama_proj.bias"] + 1.0
    time.sleep(0.01)
    torch.save(data, weights_copy / "checkpoint.pth")
    reloaded = load_model(weights_copy, device="cpu")
    assert reloaded.source == "sources"
    assert torch.equal(reloaded.model.llama_proj.bias, data["model"]["llama_proj.bias"].float())
    assert load_model(weights_copy, device="cpu").source == "bundle"


def test_convert_command_writes_a_loadable_weights_dir(weights_copy, tmp_path):
    out = tmp_path / "bundle"
    assert main(["convert", "--weights", str(weights_copy), "--out", str(out)]) == 0
    assert (out / BUNDLE_FILE).is_file() and (out / "gpt-neox" / "spiece.model").is_file()
    from_bundle = load_model(out, device="cpu")
    from_sources = load_model(weights_copy, device="cpu", use_cache=False)
    assert from_bundle.source == "bundle"
    assert torch.equal(logits_of(from_bundle), logits_of(from_sources))


def test_damaged_cache_is_rebuilt(weights_copy):
    load_model(weights_copy, device="cpu")
    cached = weights_copy / LOCAL_CACHE_DIR / BUNDLE_FILE
    cached.write_bytes(cached.read_bytes()[:100])
    assert load_model(weights_copy, device="cpu").source == "sources"
    assert load_model(weights_copy, device="cpu").source == "bundle"


def test_scaled_tiny_weights_load_with_wider_layers(tmp_path):
    from model_worker.model.tiny import make_tiny

    make_tiny(tmp_path, seed=0, scale=2)
    loaded = load_model(tmp_path, device="cpu", use_cache=False)
    assert loaded.llm_config.hidden_size == 128 and loaded.arch.vision.width == 64
    assert torch.isfinite(logits_of(loaded)).all()
