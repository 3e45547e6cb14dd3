"""The loader: exact key names, clear refusals, ignored extras, and the GPT-NeoX config check."""

from __future__ import annotations

import collections
import json
import logging

import pytest
import torch

from model_worker.model.loader import load_model
from model_worker.model.weights import WeightsError, read_llm_config


def rewrite(path, change) -> None:
    data = torch.load(path, weights_only=True)
    change(data["model"] if "model" in data else data)
    torch.save(data, path)


def test_missing_tensor_is_named(weights_copy):
    rewrite(weights_copy / "eva_vit_g.pth", lambda sd: sd.pop("blocks.1.mlp.fc2.weight"))
    with pytest.raises(WeightsError, match=r"missing: visual_encoder\.blocks\.1\.mlp\.fc2\.weight \(eva_vit_g\.pth\)"):
        load_model(weights_copy, device="cpu")


def test_missing_projection_is_named(weights_copy):
    rewrite(weights_copy / "checkpoint.pth", lambda sd: sd.pop("llama_proj.bias"))
    with pytest.raises(WeightsError, match=r"llama_proj\.bias \(checkpoint\.pth\)"):
        load_model(weights_copy, device="cpu")


def test_wrong_shape_is_named(weights_copy):
    def shrink(sd):
        key = "Qformer.bert.encoder.layer.0.crossattention.self.key.weight"
        sd[key] = sd[key][:, :16].clone()

    rewrite(weights_copy / "blip2_pretrained_flant5xxl.pth", shrink)
    with pytest.raises(WeightsError, match=r"qformer\.encoder\.layer\.0\.crossattention\.attention\.key\.weight "
                                           r"\(blip2_pretrained_flant5xxl\.pth\) is \(32, 16\), expected \(32, 32\)"):
        load_model(weights_copy, device="cpu")


class NeedsCode:
    """Pickled by reference: unpickling it would import and run this module's code."""


def test_pickle_that_needs_code_is_refused(weights_copy):
    data = torch.load(weights_copy / "checkpoint.pth", weights_only=True)
    data["config"] = NeedsCode()
    torch.save(data, weights_copy / "checkpoint.pth")
    with pytest.raises(WeightsError, match=r"refusing checkpoint\.pth: it needs code to unpickle") as info:
        load_model(weights_copy, device="cpu")
    assert "NeedsCode" in str(info.value)


def test_missing_file_is_named(weights_copy):
    (weights_copy / "blip2_pretrained_flant5xxl.pth").unlink()
    with pytest.raises(WeightsError, match=r"missing weights file .*blip2_pretrained_flant5xxl\.pth"):
        load_model(weights_copy, device="cpu")


def test_extras_ignored_and_counted(tiny_weights, caplog):
    caplog.set_level(logging.INFO, logger="model_worker.model.weights")
    load_model(tiny_weights, device="cpu", use_cache=False)
    counts = collections.Counter()
    for record in caplog.records:
        if record.getMessage().startswith("ignored"):
            counts[record.args[1]] = record.args[0]
    # the 40th ViT block, text-side Q-Former + t5_proj, attention buffers + position_ids
    assert counts["eva_vit_g.pth"] == 13
    assert counts["blip2_pretrained_flant5xxl.pth"] == 12
    assert counts["checkpoint.pth"] == 7


def test_vit_depth_comes_from_the_architecture(loaded, tiny_weights):
    assert len(loaded.model.visual_encoder.blocks) == 2
    eva = torch.load(tiny_weights / "eva_vit_g.pth", weights_only=True)
    assert any(k.startswith("blocks.2.") for k in eva)  # the file holds one block more


def test_neox_config_legacy_names_are_read(tiny_weights, loaded):
    raw = json.loads((tiny_weights / "gpt-neox" / "config.json").read_text())
    assert raw["rotary_pct"] == 1.0 and raw["use_parallel_residual"] is False  # legacy names, as rinna's
    config = read_llm_config(tiny_weights / "gpt-neox")
    assert config.rope_parameters["partial_rotary_factor"] == 1.0 and config.use_parallel_residual is False
    head_dim = config.hidden_size // config.num_attention_heads
    assert loaded.model.llm.gpt_neox.rotary_emb.inv_freq.numel() * 2 == head_dim  # rotary on the full head


def test_neox_config_misread_is_refused(weights_copy, monkeypatch):
    from transformers import GPTNeoXConfig

    original = GPTNeoXConfig.from_pretrained.__func__

    def misreading(cls, *args, **kwargs):
        config = original(cls, *args, **kwargs)
        config.rope_parameters["partial_rotary_factor"] = 0.25  # what a library that drops rotary_pct gives
        return config

    monkeypatch.setattr(GPTNeoXConfig, "from_pretrained", classmethod(misreading))
    with pytest.raises(WeightsError, match="rotary fraction read as 0.25, but config.json says 1.0"):
        read_llm_config(weights_copy / "gpt-neox")


def test_fp16_sources_are_upcast_on_cpu(loaded):
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())


def test_neox_output_head_is_read_from_its_4x_name(loaded, tiny_weights):
    from safetensors import safe_open

    with safe_open(str(tiny_weights / "gpt-neox" / "model.safetensors"), framework="pt") as handle:
        assert "embed_out.weight" in handle.keys() and "lm_head.weight" not in handle.keys()
        head = handle.get_tensor("embed_out.weight").float()
    assert torch.equal(loaded.model.llm.lm_head.weight, head)
    assert not torch.equal(loaded.model.llm.lm_head.weight, loaded.model.llm.gpt_neox.embed_in.weight)  # untied


def test_legacy_pickle_format_is_read(weights_copy, loaded):
    data = torch.load(weights_copy / "checkpoint.pth", weights_only=True)
    torch.save(data, weights_copy / "checkpoint.pth", _use_new_zipfile_serialization=False)
    reloaded = load_model(weights_copy, device="cpu", use_cache=False)
    assert torch.equal(reloaded.model.llama_proj.weight, loaded.model.llama_proj.weight)


@pytest.mark.parametrize("content", [b"", b"garbage that is no checkpoint", b"PK\x03\x04truncated zip"])
def test_unreadable_file_is_named(weights_copy, content):
    (weights_copy / "eva_vit_g.pth").write_bytes(content)
    with pytest.raises(WeightsError, match=r"cannot read eva_vit_g\.pth"):
        load_model(weights_copy, device="cpu", use_cache=False)


def test_corrupt_llm_files_are_named(weights_copy):
    path = weights_copy / "gpt-neox" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=r"cannot read .*model\.safetensors"):
        load_model(weights_copy, device="cpu", use_cache=False)
    (weights_copy / "gpt-neox" / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match=r"cannot read .*config\.json"):
        load_model(weights_copy, device="cpu", use_cache=False)
