"""The assembled model at the real sizes: parameter counts (meta device, no memory), and on a GPU a
random-weight fp16 run that reports memory use and one generation's timings."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import GPTNeoXConfig

from model_worker.model.arch import Arch
from model_worker.model.minigpt4 import build_empty_model, materialize_buffers, place_model

RINNA_NEOX = dict(vocab_size=65536, hidden_size=2816, num_hidden_layers=36, num_attention_heads=22,
                  intermediate_size=11264, rotary_pct=1.0, rotary_emb_base=10000, use_parallel_residual=False,
                  max_position_embeddings=2048, layer_norm_eps=1e-5, tie_word_embeddings=False,
                  bos_token_id=2, eos_token_id=3)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_at_real_sizes():
    model = build_empty_model(Arch(), GPTNeoXConfig(**RINNA_NEOX))
    assert round(count(model.visual_encoder) / 1e9, 3) == 0.986
    assert len(model.visual_encoder.blocks) == 39
    assert model.visual_encoder.blocks[0].mlp.fc1.weight.shape == (6144, 1408)
    assert model.visual_encoder.pos_embed.shape == (1, 257, 1408)
    assert round(count(model.qformer) / 1e6, 1) == 105.1
    assert model.query_tokens.shape == (1, 32, 768)
    assert model.llama_proj.weight.shape == (2816, 768)
    assert round(count(model.llm) / 1e9, 3) == 3.796


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_shapes_fp16_on_gpu():
    device = torch.device("cuda")
    model = build_empty_model(Arch(), GPTNeoXConfig(**RINNA_NEOX))
    model.to_empty(device=device)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.normal_(1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0, 0.02)
    materialize_buffers(model)
    place_model(model, device=device, dtype=torch.float16)
    torch.cuda.synchronize()
    weights_gib = torch.cuda.memory_allocated() / 2**30
    pixels = torch.randn(1, 3, 224, 224, device=device)
    with torch.inference_mode():
        started = time.perf_counter()
        images = model.encode_images(pixels)
        text = model.embed_tokens(list(range(100, 140))).unsqueeze(0)
        embeds = torch.cat([text, images, text], dim=1)
        output = model.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], device=device),
                                    max_new_tokens=64, min_new_tokens=64, do_sample=True, top_p=0.85, top_k=50,
                                    pad_token_id=0, eos_token_id=3)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    print(f"\n{torch.cuda.get_device_name()}: weights {weights_gib:.2f} GiB, peak "
          f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; prompt {embeds.shape[1]} positions + "
          f"{output.shape[1]} new tokens in {seconds:.2f}s")
    assert output.shape[1] == 64 and images.dtype == torch.float16


def test_mixed_precision_placement_runs(tiny_weights):
    """The GPU placement, exercised on CPU with bfloat16 autocast: which tensors are cast, and that it runs."""
    from model_worker.model.loader import load_model
    from model_worker.model.minigpt4 import place_mixed_precision

    model = load_model(tiny_weights, device="cpu", use_cache=False).model
    place_mixed_precision(model, device=torch.device("cpu"), dtype=torch.bfloat16)
    block = model.visual_encoder.blocks[0]
    assert block.attn.qkv.weight.dtype == block.mlp.fc1.weight.dtype == torch.bfloat16
    assert model.visual_encoder.patch_embed.proj.weight.dtype == torch.bfloat16
    assert block.norm1.weight.dtype == block.attn.q_bias.dtype == model.visual_encoder.pos_embed.dtype == torch.float32
    assert model.qformer.layernorm.weight.dtype == model.llama_proj.weight.dtype == torch.float32
    assert model.llm.gpt_neox.embed_in.weight.dtype == torch.bfloat16
    assert model.llm.gpt_neox.rotary_emb.inv_freq.dtype == torch.float32
    with torch.inference_mode():
        images = model.encode_images(torch.randn(1, 3, 224, 224))
        logits = model.llm(inputs_embeds=images).logits
    assert images.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
