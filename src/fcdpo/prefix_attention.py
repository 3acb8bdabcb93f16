"""Attention that reads the prefix all rows of a batch share once, instead of once per row.

Layer: settings and formats; imports nothing of fcdpo.

An agent's chats of one task share their system prompt with its function descriptions, most of each
prompt. In a batched decoding step every row attends to its own copy of that prefix's keys and
values, and on a CPU that attention is bound by memory reads, so batching saves nothing on it. Inside
`shared_prefix(n)`, the first `n` cache slots are read from the batch's first row only: all rows'
queries meet those keys in one matrix product, each row's own later slots are read as usual, and one
softmax spans both (the split of "cascade" attention, without its separate kernels). The other rows'
first `n` slots are never read, so the caller need not fill them.

The caller guarantees that slots `[0, n)` hold the same tokens at the same positions in every row and
that every query may attend to all of them; `fcdpo.backends.HFBackend` lays its cache out so. Outside
`shared_prefix`, with one row, or for a model in training, this is PyTorch's SDPA as transformers
calls it. The attention weights are computed explicitly, so a call whose score tensor would exceed
`MAX_SCORES` elements (a long prompt prefilled in a large batch) copies the prefix into every row and
uses SDPA instead.

Training gets the same saving another way (`first_turn_passes`, on `first_turn_groups` and
`prefix_cache`): a right-padded batch's rows are grouped by their first turn (the system prompt, which
carries no loss), each distinct first turn is run once, and its keys and values, expanded to the
group's rows, are the cache the rest of each row is run on. Rests short enough to share a row are
packed into one (`FirstTurnPass`), each seeing only the first turn and itself, at its own positions.
Gradients flow through the shared cache, so losses and gradients equal those of the plain pass.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator

import torch

NAME = "fcdpo_shared_prefix"
MAX_SCORES = 1 << 25  # elements of one layer's score tensor (128 MB in float32)

_PREFIX: ContextVar[int] = ContextVar("fcdpo_shared_prefix", default=0)


@contextmanager
def shared_prefix(length: int) -> Iterator[None]:
    """Within this block, attention reads cache slots `[0, length)` from the first row only."""
    if length < 0:
        raise ValueError(f"a shared prefix cannot be negative, got {length}")
    token = _PREFIX.set(length)
    try:
        yield
    finally:
        _PREFIX.reset(token)


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """An attention function for transformers' `AttentionInterface` (see the module docstring).

    `query` is batch × heads × new tokens × head size; `key` and `value` are the whole cache,
    batch × key/value heads × slots × head size; the mask is SDPA's, boolean or additive.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    prefix = _PREFIX.get()
    batch, heads, length, dim = query.shape
    kv_heads, slots = key.shape[1], key.shape[2]
    shares = 0 < prefix < slots and batch > 1
    if (not shares or module.training or attention_mask is None or kwargs.get("sliding_window") is not None
            or batch * heads * length * slots > MAX_SCORES):
        if shares:  # rows other than the first may not hold the prefix: give every row the first's
            key = torch.cat([key[:1, :, :prefix].expand(batch, -1, -1, -1), key[:, :, prefix:]], dim=2)
            value = torch.cat([value[:1, :, :prefix].expand(batch, -1, -1, -1), value[:, :, prefix:]], dim=2)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)

    groups = heads // kv_heads  # query heads per key/value head, as `repeat_kv` pairs them
    scaling = dim ** -0.5 if scaling is None else scaling
    mask = attention_mask[..., prefix:]  # the prefix is visible to every query
    if mask.dtype == torch.bool:  # a static cache's slots past the last one any query sees are not read
        seen = mask.reshape(-1, mask.shape[-1]).any(dim=0).nonzero()
        end = prefix + (int(seen[-1]) + 1 if len(seen) else 0)
        key, value, mask = key[:, :, :end], value[:, :, :end], mask[..., :end - prefix]
    grouped = query.reshape(batch, kv_heads, groups * length, dim)
    scores = torch.cat([
        torch.einsum("bkqd,kpd->bkqp", grouped, key[0, :, :prefix]),  # the prefix's keys, read once
        torch.matmul(grouped, key[:, :, prefix:].transpose(2, 3)),   # each row's own
    ], dim=-1).float() * scaling
    if groups > 1:
        mask = mask.repeat(1, 1, groups, 1)
    own = scores[..., prefix:]
    if mask.dtype == torch.bool:
        own.masked_fill_(~mask, float("-inf"))
    else:
        own.add_(mask)
    weights = scores.softmax(dim=-1).to(value.dtype)
    output = (torch.einsum("bkqp,kpd->bkqd", weights[..., :prefix], value[0, :, :prefix])
              + torch.matmul(weights[..., prefix:], value[:, :, prefix:]))
    return output.reshape(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register `attention` (with SDPA's masks) under `NAME` with transformers, and return the name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


# --------------------------------------------------------------------------- training: first turns run once


def first_turn_groups(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, turn_end_id: int
) -> list[tuple[int, list[int]]] | None:
    """The rows of a right-padded batch grouped by their first turn: `(its length, rows)` per distinct turn.

    A row's first turn runs up to and including its first `turn_end_id`. Returns None when the batch
    does not fit the pattern: a row without `turn_end_id`, or a labelled token (not -100) inside a
    first turn or right after it, whose log-probability the shared pass would not compute.
    """
    lengths = attention_mask.sum(dim=1).tolist()
    groups: dict[tuple[int, ...], list[int]] = {}
    for r, (row, length) in enumerate(zip(input_ids.tolist(), lengths)):
        try:
            split = row.index(turn_end_id, 0, length) + 1
        except ValueError:
            return None
        if (labels[r, : min(split + 1, labels.shape[1])] != -100).any():
            return None
        groups.setdefault(tuple(row[:split]), []).append(r)
    return [(len(prefix), rows) for prefix, rows in groups.items()]


def prefix_cache(model: torch.nn.Module, prefix_ids: torch.Tensor, rows: int) -> Any:
    """A key/value cache holding `prefix_ids` (one row) run through `model`, expanded to `rows` rows.

    `model` is a causal LM, a PEFT model around one included; only its backbone runs (the adapter
    applied, no logits for the prefix). With gradients enabled they flow back through the expanded
    keys and values.
    """
    from transformers import DynamicCache

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = inner.base_model(input_ids=prefix_ids[None], use_cache=True)
    cache = DynamicCache(config=inner.config)  # sliding-window layers keep only their window
    for layer, (keys, values, *_) in enumerate(out.cache):
        cache.layers[layer].update(keys.expand(rows, -1, -1, -1), values.expand(rows, -1, -1, -1))
    return cache


@dataclass
class FirstTurnPass:
    """One group's pass in `first_turn_passes`: the rows sharing a first turn of `prefix` tokens, and
    the model's `output` over the rest of those rows, run on that turn's keys and values.

    The rests may be packed: several short rows side by side in one row of the pass, each attending
    only to the first turn and to itself, with its own positions. `labels` are the labels as the
    pass ran them (a packed segment's first token is never labelled, so no segment predicts the next
    one's); `unpack` gives a per-position output back in the rows' own layout.
    """

    prefix: int
    rows: list[int]
    output: Any
    labels: torch.Tensor
    index: torch.Tensor | None  # per row, its positions' flat index in the packed pass; None: not packed

    def unpack(self, values: torch.Tensor) -> torch.Tensor:
        """`values` of the pass (packed rows × positions, as the fused LM head gives them: one fewer
        than the pass's width) as rows × positions of the group's rests; zero past a row's end."""
        if self.index is None:
            return values
        flat = torch.cat([values, values.new_zeros(values.shape[0], 1)], dim=1).reshape(-1)
        flat = torch.cat([flat, flat.new_zeros(1)])  # the zero that positions past a row's end read
        return flat[self.index]


def _packed_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` in bins of at most `capacity` in all: first fit, longest first."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((b for b, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            bins.append([])
            room.append(capacity)
            slot = len(bins) - 1
        bins[slot].append(i)
        room[slot] -= lengths[i]
    return bins


def first_turn_passes(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    turn_end_id: int,
    fused: bool = False,
    pack: bool = True,
) -> list[FirstTurnPass] | None:
    """The batch run with each distinct first turn once, one `FirstTurnPass` per group, or None when
    the batch does not fit (`first_turn_groups`).

    Each group's rest runs on `prefix_cache`. With `pack`, rests short enough to share a row of the
    group's longest rest are packed into one (`FirstTurnPass`): fewer padding tokens run, and the
    values are those of the unpacked pass. `fused` asks TRL's fused LM head for per-token
    log-probabilities of the rest's labels (`fused_lm_head=True`), else the output holds logits.
    """
    groups = first_turn_groups(input_ids, attention_mask, labels, turn_end_id)
    if groups is None:
        return None
    lengths = attention_mask.sum(dim=1).tolist()
    passes = []
    for prefix, rows in groups:
        rests = [lengths[r] - prefix for r in rows]
        width = max(rests)
        bins = _packed_bins(rests, width) if pack else [[k] for k in range(len(rows))]
        if len(bins) == len(rows):  # nothing to pack: the rows as they are
            suffix = slice(prefix, prefix + width)
            ids, run_labels, index = input_ids[rows, suffix], labels[rows, suffix], None
            mask = torch.cat([attention_mask.new_ones((len(rows), prefix)), attention_mask[rows, suffix]], dim=1)
            positions = None
        else:
            ids, run_labels, mask, positions, index = _pack(input_ids, labels, rows, rests, prefix, width, bins)
        cache = prefix_cache(model, input_ids[rows[0], :prefix], len(ids))
        head = {"labels": run_labels, "fused_lm_head": True} if fused else {"use_cache": True}
        if positions is not None:
            head["position_ids"] = positions
        out = model(input_ids=ids, attention_mask=mask, cache=cache, **head)
        passes.append(FirstTurnPass(prefix, rows, out, run_labels, index))
    return passes


def _pack(input_ids: torch.Tensor, labels: torch.Tensor, rows: list[int], rests: list[int], prefix: int,
          width: int, bins: list[list[int]]) -> tuple[torch.Tensor, ...]:
    """The rests of `rows` packed as `bins` say: ids, labels, a 4-D boolean mask (each segment sees the
    first turn and itself, causally), positions (each segment continues the first turn) and, per row,
    the flat index of each of its positions in the packed pass (`len(bins) * width`, a zero, past its end)."""
    count, device = len(bins), input_ids.device
    ids = input_ids.new_zeros((count, width))
    run_labels = labels.new_full((count, width), -100)
    positions = torch.zeros((count, width), dtype=torch.long, device=device)
    mask = torch.zeros((count, 1, width, prefix + width), dtype=torch.bool, device=device)
    mask[..., :prefix] = True  # every query sees the first turn (padding queries too: no empty softmax)
    index = torch.full((len(rows), width - 1), count * width, dtype=torch.long, device=device)
    for b, members in enumerate(bins):
        start = 0
        for k in members:
            length, row = rests[k], rows[k]
            span = slice(start, start + length)
            ids[b, span] = input_ids[row, prefix:prefix + length]
            run_labels[b, span] = labels[row, prefix:prefix + length]
            positions[b, span] = torch.arange(prefix, prefix + length, device=device)
            mask[b, 0, span, prefix + start:prefix + start + length] = torch.ones(
                length, length, dtype=torch.bool, device=device).tril()
            index[k, :length] = b * width + start + torch.arange(min(length, width - 1), device=device)
            start += length
    return ids, run_labels, mask, positions, index
