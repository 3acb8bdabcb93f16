"""Prefix attention: reading a batch's shared prefix from its first row gives SDPA's result."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from fcdpo import prefix_attention
from fcdpo.prefix_attention import attention, shared_prefix

PREFIX, OWN = 12, 11  # cache slots: the shared prefix, then each row's own (some padding, some unwritten)


class Layer(torch.nn.Module):
    def __init__(self, heads: int, kv_heads: int):
        super().__init__()
        self.num_key_value_groups = heads // kv_heads


def inputs(batch: int, heads: int, kv_heads: int, queries: int, *, boolean: bool = True):
    """Query, full rows of keys and values (every row holding the same prefix), the same rows with the
    prefix only in the first, and SDPA's mask: padding in the middle and unwritten slots at the end."""
    generator = torch.Generator().manual_seed(batch * 100 + heads * 10 + queries)
    dim, slots = 8, PREFIX + OWN
    query = torch.randn(batch, heads, queries, dim, generator=generator)
    key = torch.randn(batch, kv_heads, slots, dim, generator=generator)
    value = torch.randn(batch, kv_heads, slots, dim, generator=generator)
    key[:, :, :PREFIX], value[:, :, :PREFIX] = key[:1, :, :PREFIX], value[:1, :, :PREFIX]
    first_only = key.clone(), value.clone()
    first_only[0][1:, :, :PREFIX] = 0
    first_only[1][1:, :, :PREFIX] = 0
    visible = torch.ones(batch, 1, queries, slots, dtype=torch.bool)
    visible[1:, :, :, PREFIX:PREFIX + 2] = False  # the other rows' padding
    visible[..., -queries - 2:-2] = torch.ones(queries, queries, dtype=torch.bool).tril()  # causal among the new
    visible[..., -2:] = False  # slots of a static cache not written yet
    mask = visible if boolean else torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
    return query, key, value, first_only, mask


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (2, 1)])
@pytest.mark.parametrize("queries", [1, 3])
@pytest.mark.parametrize("boolean", [True, False])
def test_a_prefix_read_from_the_first_row_gives_sdpas_attention(heads, kv_heads, queries, boolean):
    query, key, value, (keys_first, values_first), mask = inputs(3, heads, kv_heads, queries, boolean=boolean)
    layer = Layer(heads, kv_heads)
    expected, _ = sdpa_attention_forward(layer, query, key, value, mask, scaling=0.3)
    with shared_prefix(PREFIX):
        got, weights = attention(layer, query, keys_first, values_first, mask, scaling=0.3)
    assert weights is None and got.shape == expected.shape == (3, queries, heads, 8)
    torch.testing.assert_close(got, expected)


def test_outside_a_shared_prefix_block_it_is_sdpa(monkeypatch):
    query, key, value, _, mask = inputs(3, 4, 2, 1)
    layer = Layer(4, 2)
    expected, _ = sdpa_attention_forward(layer, query, key, value, mask)
    monkeypatch.setattr(torch, "einsum", None)  # the shared path would fail
    assert torch.equal(attention(layer, query, key, value, mask)[0], expected)
    with shared_prefix(PREFIX):
        one_row, _ = attention(layer, query[:1], key[:1], value[:1], mask[:1])
    torch.testing.assert_close(one_row, sdpa_attention_forward(layer, query[:1], key[:1], value[:1], mask[:1])[0])


def test_too_large_a_score_tensor_copies_the_prefix_to_every_row_and_uses_sdpa(monkeypatch):
    query, key, value, (keys_first, values_first), mask = inputs(3, 4, 2, 3)
    layer = Layer(4, 2)
    expected, _ = sdpa_attention_forward(layer, query, key, value, mask)
    monkeypatch.setattr(prefix_attention, "MAX_SCORES", 10)
    monkeypatch.setattr(torch, "einsum", None)
    with shared_prefix(PREFIX):
        torch.testing.assert_close(attention(layer, query, keys_first, values_first, mask)[0], expected)


def test_the_block_restores_the_previous_prefix_and_refuses_a_negative_one():
    with shared_prefix(5):
        with shared_prefix(7):
            assert prefix_attention._PREFIX.get() == 7
        assert prefix_attention._PREFIX.get() == 5
    assert prefix_attention._PREFIX.get() == 0
    with pytest.raises(ValueError, match="negative"):
        with shared_prefix(-1):
            pass
