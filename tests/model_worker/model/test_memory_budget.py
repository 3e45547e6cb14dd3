"""The memory budget: KV bytes at the real shapes, and plans that never promise more than the budget."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXConfig

from model_worker.model.memory_budget import (
    GIB,
    TRANSIENT_KV_COPIES,
    UNPLANNED_SHARE,
    MemoryBudgetError,
    budget_bytes_from_gb,
    default_budget_bytes,
    kv_bytes_per_token,
    plan_for_model,
    plan_memory,
    workspace,
)
from tests.model_worker.model.test_real_shapes import RINNA_NEOX

REAL = GPTNeoXConfig(**RINNA_NEOX)
CONTEXT = 2048


def real_plan(budget_gb: float, **caps) -> object:
    return plan_memory(budget_bytes=int(budget_gb * GIB), kv_bytes_per_token=kv_bytes_per_token(REAL, torch.bfloat16),
                       context_length=CONTEXT, work=workspace(REAL, torch.bfloat16, context_length=CONTEXT),
                       **{"max_batch_size": 8, **caps})


def test_kv_bytes_per_token_at_the_real_shapes():
    assert kv_bytes_per_token(REAL, torch.bfloat16) == 2 * 36 * 2816 * 2 == 405_504
    assert kv_bytes_per_token(REAL, torch.float16) == 405_504
    assert kv_bytes_per_token(REAL, torch.float32) == 811_008


@pytest.mark.parametrize("budget_gb", [3, 4, 8, 12, 16, 40, 200])
def test_a_plan_fits_its_budget(budget_gb):
    plan = real_plan(budget_gb, image_cache_bytes=64 * 2**20)
    running = plan.max_batch_size * CONTEXT * plan.kv_bytes_per_token * TRANSIENT_KV_COPIES
    cached = plan.prefix_cache_tokens * plan.kv_bytes_per_token
    assert running + cached + plan.workspace_bytes + 64 * 2**20 <= plan.budget_bytes * (1 - UNPLANNED_SHARE)
    assert 1 <= plan.max_batch_size <= 8
    assert plan.max_tokens_in_flight == plan.max_batch_size * CONTEXT


def test_more_budget_buys_rows_then_prefix_cache():
    small, medium, large = real_plan(4), real_plan(12), real_plan(40)
    assert small.max_batch_size < medium.max_batch_size < large.max_batch_size == 8
    assert large.prefix_cache_tokens > medium.prefix_cache_tokens
    # 12 GiB, 85% of it itemised: 0.59 GiB fixed working space; per full-context row 2 x 0.77 GiB of KV and
    # 0.15 GiB of activations and logits -> 5 rows, and the rest (under a quarter) for the prefix cache.
    assert medium.max_batch_size == 5 and medium.describe()["max_tokens_in_flight"] == 5 * CONTEXT


def test_operator_caps_are_kept():
    plan = real_plan(40, max_batch_size=4, max_tokens_in_flight=5000, prefix_cache_tokens=1000)
    assert (plan.max_batch_size, plan.max_tokens_in_flight, plan.prefix_cache_tokens) == (4, 5000, 1000)


def test_too_small_a_budget_is_refused_with_the_figure():
    with pytest.raises(MemoryBudgetError, match=r"1\.00 GiB beyond the weights cannot hold one 2048-token "
                                                r"conversation \(needs 2\.70 GiB\)"):
        real_plan(1)


def test_default_budget_comes_from_free_memory():
    budget = default_budget_bytes(torch.device("cpu"))
    assert 0 < budget < 2**50
    assert budget_bytes_from_gb(None, torch.device("cpu")) > 0
    assert budget_bytes_from_gb(2.5, torch.device("cpu")) == int(2.5 * GIB)


def test_plan_for_a_loaded_tiny_model(loaded):
    plan = plan_for_model(loaded, budget_gb=0.5, max_batch_size=8, context_length=2048)
    per_token = 2 * loaded.llm_config.num_hidden_layers * loaded.llm_config.hidden_size * 4
    assert plan.kv_bytes_per_token == per_token and plan.max_batch_size == 8
    assert plan.describe()["memory_budget_gb"] == 0.5
