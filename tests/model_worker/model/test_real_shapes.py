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
    assert model.qformer.layernorm.weight.dtype == torch.float32 and model.llama_proj.weight.dtype == torch.bfloat16
    assert model.llm.gpt_neox.embed_in.weight.dtype == torch.bfloat16
    assert model.llm.gpt_neox.rotary_emb.inv_freq.dtype == torch.float32
    with torch.inference_mode():
        images = model.encode_images(torch.randn(1, 3, 224, 224))
        logits = model.llm(inputs_embeds=images).logits
    assert images.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def lavis_layout() -> dict[str, dict[str, tuple[int, ...]]]:
    """The published artefacts' keys and shapes, written out from model.md §2 (extras included)."""
    W, H, L = 1408, 768, 2816
    eva = {"cls_token": (1, 1, W), "pos_embed": (1, 257, W), "patch_embed.proj.weight": (W, 3, 14, 14),
           "patch_embed.proj.bias": (W,)}
    for i in range(40):  # the file's 40th block is an extra
        b = f"blocks.{i}."
        eva |= {b + "norm1.weight": (W,), b + "norm1.bias": (W,), b + "norm2.weight": (W,), b + "norm2.bias": (W,),
                b + "attn.qkv.weight": (3 * W, W), b + "attn.q_bias": (W,), b + "attn.v_bias": (W,),
                b + "attn.proj.weight": (W, W), b + "attn.proj.bias": (W,), b + "mlp.fc1.weight": (6144, W),
                b + "mlp.fc1.bias": (6144,), b + "mlp.fc2.weight": (W, 6144), b + "mlp.fc2.bias": (W,)}
    blip2 = {"query_tokens": (1, 32, H), "ln_vision.weight": (W,), "ln_vision.bias": (W,),
             "Qformer.bert.embeddings.LayerNorm.weight": (H,), "Qformer.bert.embeddings.LayerNorm.bias": (H,),
             "Qformer.bert.embeddings.word_embeddings.weight": (30523, H), "Qformer.bert.embeddings.position_ids": (1, 512),
             "t5_proj.weight": (4096, H), "t5_proj.bias": (4096,)}
    for n in range(12):
        b = f"Qformer.bert.encoder.layer.{n}."
        attention = {"attention.self.query": (H, H), "attention.self.key": (H, H), "attention.self.value": (H, H),
                     "attention.output.dense": (H, H), "intermediate_query.dense": (3072, H),
                     "output_query.dense": (H, 3072), "intermediate.dense": (3072, H), "output.dense": (H, 3072)}
        if n % 2 == 0:
            attention |= {"crossattention.self.query": (H, H), "crossattention.self.key": (H, W),
                          "crossattention.self.value": (H, W), "crossattention.output.dense": (H, H)}
        for name, shape in attention.items():
            blip2 |= {b + name + ".weight": shape, b + name + ".bias": (shape[0],)}
        for norm in ("attention.output.LayerNorm", "output_query.LayerNorm", "output.LayerNorm") + (
                ("crossattention.output.LayerNorm",) if n % 2 == 0 else ()):
            blip2 |= {b + norm + ".weight": (H,), b + norm + ".bias": (H,)}
    checkpoint = {"llama_proj.weight": (L, H), "llama_proj.bias": (L,),
                  "gpt_neox_model.gpt_neox.layers.0.attention.bias": (1, 1, 2048, 2048)}
    neox = {"gpt_neox.embed_in.weight": (65536, L), "gpt_neox.final_layer_norm.weight": (L,),
            "gpt_neox.final_layer_norm.bias": (L,), "embed_out.weight": (65536, L)}
    for n in range(36):
        b = f"gpt_neox.layers.{n}."
        for name, shape in {"attention.query_key_value": (3 * L, L), "attention.dense": (L, L),
                            "mlp.dense_h_to_4h": (11264, L), "mlp.dense_4h_to_h": (L, 11264)}.items():
            neox |= {b + name + ".weight": shape, b + name + ".bias": (shape[0],)}
        for norm in ("input_layernorm", "post_attention_layernorm"):
            neox |= {b + norm + ".weight": (L,), b + norm + ".bias": (L,)}
        neox[b + "attention.rotary_emb.inv_freq"] = (64,)
    return {"eva_vit_g.pth": eva, "blip2_pretrained_flant5xxl.pth": blip2, "checkpoint.pth": checkpoint,
            "gpt-neox": neox}


def test_published_key_layout_maps_onto_the_real_size_model():
    from model_worker.model.weights import check_tensors, model_name

    model = build_empty_model(Arch(), GPTNeoXConfig(**RINNA_NEOX))
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    mapped, dropped = {}, {}
    for source, keys in lavis_layout().items():
        for key, shape in keys.items():
            name = model_name(source, key, vit_depth=39)
            if name in expected:
                mapped[name] = torch.empty(shape, device="meta")
            else:
                dropped.setdefault(source, []).append(key)
    check_tensors(mapped, expected)  # nothing missing, every shape right
    assert set(mapped) == set(expected)
    assert len([k for k in dropped["eva_vit_g.pth"] if k.startswith("blocks.39.")]) == 13
    assert all(k.startswith(("t5_proj", "Qformer.bert.embeddings.word", "Qformer.bert.embeddings.position"))
               or ".intermediate.dense" in k or ".output." in k and "_query" not in k and "attention" not in k
               for k in dropped["blip2_pretrained_flant5xxl.pth"])
    assert sorted(dropped["checkpoint.pth"]) == ["gpt_neox_model.gpt_neox.layers.0.attention.bias"]
    assert all(k.endswith("rotary_emb.inv_freq") for k in dropped["gpt-neox"])
