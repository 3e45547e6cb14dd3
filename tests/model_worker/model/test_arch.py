"""arch.json: defaults are the real model's; overrides take exactly the documented keys."""

from __future__ import annotations

import json

import pytest

from model_worker.model.arch import Arch, arch_from_dict, load_arch


def test_defaults_are_the_real_model(tmp_path):
    arch = load_arch(tmp_path)
    assert arch == Arch()
    assert (arch.vision.width, arch.vision.depth, arch.vision.heads, arch.vision.mlp_dim) == (1408, 39, 16, 6144)
    assert arch.vision.num_tokens == 257
    assert (arch.qformer.hidden, arch.qformer.layers, arch.qformer.num_queries) == (768, 12, 32)


def test_partial_override(tmp_path):
    (tmp_path / "arch.json").write_text(json.dumps({"vision": {"depth": 3}, "qformer": {"num_queries": 8}}))
    arch = load_arch(tmp_path)
    assert arch.vision.depth == 3 and arch.vision.width == 1408 and arch.qformer.num_queries == 8


@pytest.mark.parametrize("data, message", [
    ({"vision": {"layers": 3}}, "unknown keys"),
    ({"llm": {}}, "unknown sections"),
    ({"qformer": {"hidden": 0}}, "positive integer"),
    ({"vision": {"image_size": 100, "patch_size": 14}}, "multiple"),
])
def test_bad_overrides_are_refused(data, message):
    with pytest.raises(ValueError, match=message):
        arch_from_dict(data)
