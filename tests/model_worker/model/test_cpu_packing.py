"""bfloat16 on CPU: the language model's Linears in oneDNN's packed layout, with the plain layout's exact numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model_worker.model import loader
from model_worker.model.cpu_packing import OneDnnLinear, can_pack
from model_worker.model.loader import load_model
from model_worker.model.quantize import module_bytes

pytestmark = pytest.mark.skipif(not can_pack(torch.device("cpu"), torch.bfloat16),
                                reason="this CPU's oneDNN has no native bfloat16")


@pytest.mark.parametrize("shape", [(1, 96), (8, 96), (1, 1, 96), (8, 1, 96), (3, 37, 96)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_gives_the_plain_linears_exact_result(shape, bias):
    torch.manual_seed(0)
    plain = nn.Linear(96, 160, bias=bias).to(torch.bfloat16)
    packed = OneDnnLinear(plain)
    hidden = torch.randn(*shape, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(packed(hidden), plain(hidden))
        # A strided view is read as its contiguous copy (aten rounds a strided input its own way).
        strided = torch.randn(shape[0], 2, 96, dtype=torch.bfloat16)[:, -1:]
        assert torch.equal(packed(strided), plain(strided.contiguous()))


def test_other_dtypes_and_devices_keep_the_plain_layout():
    assert not can_pack(torch.device("cpu"), torch.float32) and not can_pack(torch.device("cpu"), torch.float16)
    assert not can_pack(torch.device("meta"), torch.bfloat16)


@pytest.fixture(scope="module")
def bfloat16_models(tiny_weights):
    torch.set_num_threads(1)
    packed = load_model(tiny_weights, device="cpu", dtype="bfloat16", use_cache=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loader, "can_pack", lambda device, dtype: False)
        plain = load_model(tiny_weights, device="cpu", dtype="bfloat16", use_cache=False)
    return packed, plain


def test_loading_packs_the_language_model_and_nothing_else(bfloat16_models):
    packed, plain = bfloat16_models
    llm = packed.model.llm
    assert isinstance(llm.gpt_neox.layers[0].attention.query_key_value, OneDnnLinear)
    assert isinstance(llm.gpt_neox.layers[-1].mlp.dense_4h_to_h, OneDnnLinear)
    assert isinstance(llm.lm_head, OneDnnLinear)
    assert not any(type(m) is nn.Linear for m in llm.modules())
    for part in (packed.model.visual_encoder, packed.model.qformer, packed.model.llama_proj):
        assert not any(isinstance(m, OneDnnLinear) for m in part.modules())
    assert packed.weights_bytes == plain.weights_bytes == module_bytes(plain.model)


def test_packed_model_computes_what_the_plain_one_does(bfloat16_models):
    packed, plain = bfloat16_models
    ids = torch.tensor([packed.tokenizer.encode("ユーザー: What can you see?\nシステム: ")])
    with torch.inference_mode():
        assert torch.equal(packed.model.llm(input_ids=ids).logits, plain.model.llm(input_ids=ids).logits)
        answers = [m.model.llm.generate(input_ids=ids, max_new_tokens=8, min_new_tokens=8, do_sample=False,
                                        pad_token_id=0, eos_token_id=3) for m in (packed, plain)]
    assert torch.equal(*answers)


def test_quantized_linears_are_left_to_their_own_kernels(wide_weights):
    int4 = load_model(wide_weights, device="cpu", dtype="bfloat16", quantize="int4", use_cache=False).model.llm
    assert type(int4.gpt_neox.layers[0].mlp.dense_h_to_4h.weight).__name__ == "Int4OpaqueTensor"
    assert not any(isinstance(m, OneDnnLinear) for m in int4.modules())
