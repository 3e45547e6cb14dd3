"""Precision: --dtype is honoured on CPU (never silently changed), auto follows the weights' size, and the
lean loader places every weight straight at its dtype, one block at a time."""

from __future__ import annotations

import weakref

import pytest
import torch

from model_worker.model.bundle import BundleTensors
from model_worker.model.cpu_packing import OneDnnLinear
from model_worker.model.loader import CPU_BFLOAT16_FROM_PARAMS, load_model, resolve_dtype
from model_worker.model.minigpt4 import build_empty_model
from model_worker.model.placement import place_weights, weight_groups

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_dtype_follows_device_and_size():
    assert resolve_dtype("auto", CUDA) == torch.float16
    assert resolve_dtype("auto", CUDA, quantize="int4") == torch.bfloat16  # torch's CUDA int4 kernel
    assert resolve_dtype("auto", CPU, num_params=10_000) == torch.float32
    assert resolve_dtype("auto", CPU, num_params=4_900_000_000) == torch.bfloat16
    assert resolve_dtype("auto", CPU, num_params=CPU_BFLOAT16_FROM_PARAMS) == torch.bfloat16


@pytest.mark.parametrize("name", ["bfloat16", "float16", "float32"])
def test_explicit_dtype_is_honoured_on_cpu(name):
    assert resolve_dtype(name, CPU) == getattr(torch, name)


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="unknown dtype 'int3'; use auto, float16, bfloat16, float32"):
        resolve_dtype("int3", CPU)


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_reduced_precision_on_cpu_places_the_reference_mix(tiny_weights, name):
    dtype = getattr(torch, name)
    loaded = load_model(tiny_weights, device="cpu", dtype=name, use_cache=False)
    model = loaded.model
    assert loaded.dtype == dtype and loaded.describe() == {"device": "cpu", "dtype": name, "quantize": "none"}
    block = model.visual_encoder.blocks[0]
    head = model.llm.lm_head  # oneDNN-packed where this CPU computes the dtype natively
    head_weight = head.packed_weight if isinstance(head, OneDnnLinear) else head.weight
    assert block.attn.qkv.weight.dtype == block.mlp.fc2.bias.dtype == head_weight.dtype == dtype
    assert model.llm.gpt_neox.layers[0].input_layernorm.weight.dtype == dtype
    assert block.norm1.weight.dtype == block.attn.q_bias.dtype == model.visual_encoder.pos_embed.dtype == torch.float32
    assert model.ln_vision.weight.dtype == model.qformer.layernorm.weight.dtype == model.query_tokens.dtype == torch.float32
    # Autocast computes the Q-Former's and projection's Linears in ``dtype`` whatever their storage.
    assert model.llama_proj.weight.dtype == model.qformer.encoder.layer[0].attention.attention.query.weight.dtype == dtype
    assert model.llm.gpt_neox.rotary_emb.inv_freq.dtype == torch.float32
    with torch.inference_mode():
        images = model.encode_images(torch.randn(1, 3, 224, 224))
    assert images.dtype == dtype and torch.isfinite(images.float()).all()


def test_image_path_gives_the_same_numbers_with_float32_linear_storage(tiny_weights):
    """The reference stores the Q-Former's and projection's Linears in float32; under autocast that
    computes exactly what storing them in bfloat16 does."""
    loaded = load_model(tiny_weights, device="cpu", dtype="bfloat16", use_cache=False)
    model, pixels = loaded.model, torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        stored_low = model.encode_images(pixels)
        for module in [*model.qformer.modules(), model.llama_proj]:
            if isinstance(module, torch.nn.Linear):
                module.float()
        assert torch.equal(model.encode_images(pixels), stored_low)


def test_tiny_weights_stay_float32_by_default(loaded):
    assert loaded.dtype == torch.float32 and loaded.model.llm.lm_head.weight.dtype == torch.float32


def test_groups_are_blocks_then_modules():
    names = ["visual_encoder.blocks.0.norm1.weight", "visual_encoder.blocks.0.attn.qkv.weight",
             "visual_encoder.blocks.1.norm1.weight", "llm.gpt_neox.embed_in.weight",
             "llm.gpt_neox.layers.0.attention.dense.weight", "llm.gpt_neox.layers.0.mlp.dense_h_to_4h.bias",
             "llm.lm_head.weight"]
    assert [(group, len(members)) for group, members in weight_groups(names)] == [
        ("visual_encoder.blocks.0", 2), ("visual_encoder.blocks.1", 1), ("llm.gpt_neox.embed_in", 1),
        ("llm.gpt_neox.layers.0", 2), ("llm.lm_head", 1)]


class RecordingSource:
    """The bundle, remembering every float16 tensor or slice it handed out (the ViT's and the LLM's: all are
    cast or quantized when placed) and, at each read, how many bytes of them are still alive."""

    def __init__(self, bundle: BundleTensors) -> None:
        self.bundle = bundle
        self.handed: list[weakref.ref] = []
        self.most_alive_bytes = 0

    def shapes(self):
        return self.bundle.shapes()

    def take(self, name):
        return self._record(self.bundle.take(name))

    def take_rows(self, name, start, stop):
        return self._record(self.bundle.take_rows(name, start, stop))

    def _record(self, tensor):
        alive = [ref() for ref in self.handed if ref() is not None]
        self.most_alive_bytes = max(self.most_alive_bytes, sum(t.nbytes for t in alive))
        if tensor.dtype == torch.float16:
            self.handed.append(weakref.ref(tensor))
        return tensor


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_lean_placement_never_holds_more_than_one_source_tensor(tiny_weights, quantize, monkeypatch):
    """With slices of at most 2,048 elements, every float16 tensor read is gone once placed or quantized:
    never more than one slice (or one small tensor) is alive. A loader holding the whole state dict, as
    before, would hold all of them."""
    import model_worker.model.quantize as quantize_module

    monkeypatch.setattr(quantize_module, "SLICE_ELEMENTS", 2048)
    first = load_model(tiny_weights, device="cpu", use_cache=True)  # writes the bundle cache
    bundle = BundleTensors(tiny_weights / ".minigpt4-bundle")
    source = RecordingSource(bundle)
    model = build_empty_model(first.arch, first.llm_config)
    place_weights(model, source, device=CPU, dtype=torch.float32, quantize=quantize)
    assert source.handed and all(ref() is None for ref in source.handed)
    largest_small_tensor = max(shape.numel() * 2 for shape in bundle.shapes().values() if shape.numel() <= 2048)
    assert source.most_alive_bytes <= max(largest_small_tensor, 2048 * 2)
