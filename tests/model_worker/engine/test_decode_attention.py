"""The decode step's attention: matrix products on a float32 CPU, the fused kernel elsewhere; the same numbers."""

from __future__ import annotations

import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention

from model_worker.engine import decode_step
from model_worker.engine.decode_step import decode_attention


@pytest.fixture(autouse=True)
def matmul_for_any_size(monkeypatch):
    """These caches are small; the matrix products must serve them as they serve real ones."""
    monkeypatch.setattr(decode_step, "MATMUL_ATTENTION_FROM_BYTES", 0)


def cache_views(dtype: torch.dtype, rows: int = 4, width: int = 37):
    """A query per row and views of a larger cache (as the static KV cache lends them), rows of other lengths."""
    generator = torch.Generator().manual_seed(5)
    query = torch.randn(rows, 3, 1, 16, generator=generator).to(dtype)
    keys = torch.randn(rows, 3, 64, 16, generator=generator).to(dtype)[:, :, :width]
    values = torch.randn(rows, 3, 64, 16, generator=generator).to(dtype)[:, :, :width]
    lengths = torch.tensor([width - 1, 3, 20, 0])[:rows]
    mask = (torch.arange(width) <= lengths.unsqueeze(1)).view(rows, 1, 1, width)
    return query, keys, values, mask


@pytest.mark.parametrize("masked", [True, False])
def test_float32_matrix_products_match_the_fused_kernel(masked):
    query, keys, values, mask = cache_views(torch.float32)
    mask = mask if masked else None
    expected = scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=0.25)
    got = decode_attention(query, keys, values, mask, 0.25)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_row_sees_only_its_own_columns():
    query, keys, values, mask = cache_views(torch.float32)
    alone = decode_attention(query[1:2], keys[1:2, :, :4], values[1:2, :, :4], None, 0.25)
    torch.testing.assert_close(decode_attention(query, keys, values, mask, 0.25)[1:2], alone, rtol=1e-5, atol=1e-6)


def test_bfloat16_keeps_the_fused_kernel():
    query, keys, values, mask = cache_views(torch.bfloat16)
    assert torch.equal(decode_attention(query, keys, values, mask, 0.25),
                       scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=0.25))


def test_small_float32_caches_keep_the_fused_kernel(monkeypatch):
    monkeypatch.setattr(decode_step, "MATMUL_ATTENTION_FROM_BYTES", 2**20)
    query, keys, values, mask = cache_views(torch.float32)
    assert torch.equal(decode_attention(query, keys, values, mask, 0.25),
                       scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=0.25))
