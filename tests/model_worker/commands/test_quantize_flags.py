"""``generate`` with --dtype and --quantize, as a user runs it: what ran is reported, a refusal is one line."""

from __future__ import annotations

import json

import pytest

from tests.model_worker.commands.test_model_commands import cli


@pytest.mark.parametrize(("dtype", "quantize"), [("float32", "int8"), ("bfloat16", "none"), ("bfloat16", "int8")])
def test_generate_reports_what_ran(wide_weights, dtype, quantize):
    result = cli("generate", "--weights", str(wide_weights), "--prompt", "What can you see?", "--greedy",
                 "--max-new-tokens", "6", "--device", "cpu", "--dtype", dtype, "--quantize", quantize, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["device"], out["dtype"], out["quantize"]) == ("cpu", dtype, quantize)
    assert len(out["token_ids"]) > 0 and isinstance(out["text"], str)


def test_generate_refuses_int4_on_unaligned_weights_in_one_line(tiny_weights):
    result = cli("generate", "--weights", str(tiny_weights), "--prompt", "hi", "--device", "cpu", "--quantize", "int4")
    assert result.returncode == 1
    assert "error: cannot load the weights: --quantize int4 needs language-model widths" in result.stderr
    assert "Traceback" not in result.stderr
