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


# --------------------------------------------------------------------------- training: first turns run once, rests packed


def tiny_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         attn_implementation="sdpa")
    return Qwen2ForCausalLM(config).train()


TURN_END = 3


def batch(rests: list[int], first_turns: list[int]):
    """A right-padded batch: each row a first turn (one of two, ending in TURN_END), then a rest of the
    given length whose tokens after the first are labelled."""
    generator = torch.Generator().manual_seed(sum(rests))
    turns = {0: [5, 6, 7, 8, TURN_END], 1: [9, 10, TURN_END]}
    rows = [turns[t] + torch.randint(11, 40, (n,), generator=generator).tolist() for n, t in zip(rests, first_turns)]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for r, (row, turn) in enumerate(zip(rows, first_turns)):
        ids[r, :len(row)] = torch.tensor(row)
        mask[r, :len(row)] = 1
        labels[r, len(turns[turn]) + 1:len(row)] = ids[r, len(turns[turn]) + 1:len(row)]
    return ids, mask, labels


def test_rests_are_packed_into_fewer_rows_first_fit_longest_first():
    assert prefix_attention._packed_bins([12, 3, 4, 5], 12) == [[0], [3, 2, 1]]
    assert prefix_attention._packed_bins([7, 7, 7], 7) == [[0], [1], [2]]
    assert prefix_attention._packed_bins([6, 6, 3, 3], 12) == [[0, 1], [2, 3]]


def test_packed_rests_give_the_plain_pass_loss_and_gradients(monkeypatch):
    """The SFT loss over packed rests (each segment sees its first turn and itself, with its own
    positions) equals the loss of the whole rows run one by one, and so do its gradients."""
    from fcdpo.finetuning import shared_prefix_loss

    model = tiny_model()
    ids, mask, labels = batch([12, 3, 4, 5, 9, 4, 5], [0, 0, 0, 0, 1, 1, 1])
    packed = []
    original = prefix_attention._pack
    monkeypatch.setattr(prefix_attention, "_pack", lambda *a: packed.append(len(a[-1])) or original(*a))

    def loss_and_gradients(compute):
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    plain = loss_and_gradients(lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss)
    shared = loss_and_gradients(lambda: shared_prefix_loss(model, ids, mask, labels, TURN_END))
    assert packed == [2, 2]  # four rests of the first turn in two rows, three of the second in two
    torch.testing.assert_close(shared[0], plain[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shared[1], plain[1], rtol=1e-4, atol=1e-6)


def test_a_packed_pass_unpacks_to_each_rows_own_positions():
    """Per-position values of a packed pass, read back per row, equal those of the unpacked pass,
    and are zero past each row's end."""
    model = tiny_model().eval()
    ids, mask, labels = batch([10, 2, 3, 4], [0, 0, 0, 0])
    with torch.no_grad():
        [plain] = prefix_attention.first_turn_passes(model, ids, mask, labels, TURN_END, pack=False)
        [packed] = prefix_attention.first_turn_passes(model, ids, mask, labels, TURN_END)
    assert packed.index is not None and packed.output.logits.shape[0] == 2
    chosen = lambda group, logits: logits[:, :-1].log_softmax(-1).gather(  # noqa: E731
        -1, group.labels[:, 1:].clamp(min=0)[..., None])[..., 0] * (group.labels[:, 1:] != -100)
    expected = plain.unpack(chosen(plain, plain.output.logits))
    got = packed.unpack(chosen(packed, packed.output.logits))
    assert got.shape == expected.shape == (4, 9)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert (got[1, 1:] == 0).all() and got[1, 0] != 0  # a rest of 2: one labelled token, predicted at 0
