"""Quantized and reduced-precision models on make-tiny weights scaled to int4's group size (128 wide).

Measure and bounds: the cosine similarity of next-token logits (the whole vocabulary) against the float32
model, on four prompts: int8 and bfloat16 at least 0.999, int4 at least 0.95 (measured about 0.9999,
0.99997 and 0.98 on these weights); greedy answers agree on their first two tokens under int8 and
bfloat16, and under int4 the float32 model's first token stays among int4's five best.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_worker.model.loader import load_model
from model_worker.model.quantize import Int8WeightOnlyLinear, QuantizeError, module_bytes

PROMPTS = ("ユーザー: What can you see?\nシステム: ", "ユーザー: 猫はどんな体勢をしていますか?\nシステム: ",
           "ユーザー: describe the image please\nシステム: a cat", "ユーザー: hello\nシステム: ")


@pytest.fixture(scope="module")
def variants(wide_weights):
    torch.set_num_threads(1)
    settings = {"float32": ("float32", "none"), "bfloat16": ("bfloat16", "none"), "int8": ("float32", "int8"),
                "int4": ("float32", "int4"), "int8-bfloat16": ("bfloat16", "int8")}
    return {name: load_model(wide_weights, device="cpu", dtype=dtype, quantize=quantize, use_cache=False)
            for name, (dtype, quantize) in settings.items()}


def next_logits(loaded, prompt: str) -> torch.Tensor:
    ids = torch.tensor([loaded.tokenizer.encode(prompt)])
    with torch.inference_mode():
        return loaded.model.llm(input_ids=ids).logits[0, -1].float()


def greedy(loaded, prompt: str, tokens: int) -> list[int]:
    ids = torch.tensor([loaded.tokenizer.encode(prompt)])
    with torch.inference_mode():
        out = loaded.model.llm.generate(input_ids=ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                        pad_token_id=0, eos_token_id=3)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize(("name", "bound"), [("int8", 0.999), ("bfloat16", 0.999), ("int8-bfloat16", 0.999),
                                             ("int4", 0.95)])
def test_next_token_logits_stay_close_to_float32(variants, name, bound):
    for prompt in PROMPTS:
        similarity = torch.cosine_similarity(next_logits(variants["float32"], prompt),
                                             next_logits(variants[name], prompt), dim=0).item()
        assert similarity >= bound, (name, prompt, similarity)


@pytest.mark.parametrize("name", ["int8", "bfloat16", "int8-bfloat16"])
def test_greedy_answers_agree_on_their_first_tokens(variants, name):
    for prompt in PROMPTS:
        assert greedy(variants[name], prompt, 2) == greedy(variants["float32"], prompt, 2), prompt


def test_int4_keeps_the_first_token_among_its_best(variants):
    for prompt in PROMPTS:
        first = next_logits(variants["float32"], prompt).argmax().item()
        assert first in next_logits(variants["int4"], prompt).topk(5).indices.tolist(), prompt


def test_quantized_layers_and_what_keeps_its_precision(variants):
    int8, int4 = variants["int8-bfloat16"].model, variants["int4"].model
    layer = int8.llm.gpt_neox.layers[0]
    assert isinstance(layer.attention.query_key_value, Int8WeightOnlyLinear)
    assert isinstance(layer.mlp.dense_4h_to_h, Int8WeightOnlyLinear) and isinstance(int8.llm.lm_head, Int8WeightOnlyLinear)
    assert layer.mlp.dense_h_to_4h.qweight.dtype == torch.int8
    assert int8.llm.gpt_neox.embed_in.weight.dtype == layer.input_layernorm.weight.dtype == torch.bfloat16
    assert type(int4.llm.gpt_neox.layers[1].mlp.dense_h_to_4h.weight).__name__ == "Int4OpaqueTensor"
    assert isinstance(int4.llm.lm_head, Int8WeightOnlyLinear)  # the output head is int8 under int4 too
    for model in (int8, int4):  # the image path is never quantized
        assert all(type(m) is nn.Linear and type(m.weight) is nn.Parameter
                   for m in [*model.visual_encoder.modules(), *model.qformer.modules(), model.llama_proj]
                   if isinstance(m, nn.Linear))


def test_quantized_language_model_is_smaller(variants):
    sizes = {name: module_bytes(variants[name].model.llm.gpt_neox.layers) for name in ("float32", "int8", "int4")}
    assert sizes["int8"] < sizes["float32"] / 3.5 and sizes["int4"] < sizes["int8"] / 1.6
    assert variants["int8"].weights_bytes < variants["float32"].weights_bytes


def test_int4_refuses_widths_that_are_not_group_aligned(tiny_weights):
    with pytest.raises(QuantizeError, match="multiples of 128; these weights have hidden_size 64"):
        load_model(tiny_weights, device="cpu", quantize="int4", use_cache=False)
