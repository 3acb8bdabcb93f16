"""Backends: one interface that completes many chats at once, with a local model or over HTTP.

Layer: models; imports only the bottom layer (chat_templates, loading, prefix_attention, safe_text).

    backend = load_backend({"kind": "hf", "model": "runs/tiny-cpu/student", "adapter": "runs/tiny-cpu/dpo"})
    backend = load_backend({"kind": "openai", "model": "Qwen/Qwen2.5-7B-Instruct",
                            "base_url": "http://127.0.0.1:8000/v1"})
    completions = backend.complete(chats, tools=schemas, max_new_tokens=96, temperature=0.0)

A chat is a list of OpenAI / Hugging Face chat messages (see the project README); `complete` returns
one `Completion` per chat, in the order of the chats.

- `HFBackend` runs a causal LM in this process (a local folder, a hub id, an optional PEFT adapter,
  optional 4-bit NF4 quantisation). Chats are left-padded and advance together in one batched
  `generate`, one token step for all rows at a time.
- `OpenAIBackend` sends each chat as one request to an OpenAI-compatible server (vLLM, Ollama,
  `transformers serve`, OpenAI) with many requests in flight, and retries transient failures. Each
  attempt has a total deadline and a size bound, and every answer is checked field by field: what a
  server sends can fail a request with a `BackendError`, never crash or hang the caller.

Completion text is untrusted model output: it is returned as written (tool-call markup such as
`<tool_call>` included) and parsed by the caller.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import json
import logging
import os
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

try:  # the HTTP library the openai client is built on: httpx2 from openai 3 on, httpx before
    import httpcore2 as httpcore
    import httpx2 as httpx
except ImportError:
    import httpcore
    import httpx

from fcdpo.chat_templates import check_chat_template, named_chat_template
from fcdpo.safe_text import scrub, scrub_text

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

END_OF_TURN = "<|im_end|>"  # ChatML's end of an assistant turn (Qwen2 and the tiny lab)
MAX_BACKOFF_S = 30.0  # longest wait between two attempts of one request
MAX_RETRY_AFTER_S = 120.0  # longest `Retry-After` a server may ask for; a longer one is a BackendError
DEFAULT_MAX_RESPONSE_BYTES = 16 * 2**20  # longest answer read from a server
_MAX_INT_DIGITS = 64  # longer integers in a server's JSON make the answer malformed
_MAX_SERVER_MESSAGE = 500  # characters of a server's error message quoted in a BackendError


class BackendError(RuntimeError):
    """A model that cannot be loaded or a server that cannot answer; the message says which and why."""


@dataclass
class Completion:
    """One assistant turn."""

    text: str  # the assistant turn's text, end-of-turn token removed
    tool_calls: list[dict] | None  # native tool calls when the server/model returned them
    prompt_tokens: int
    completion_tokens: int  # generated tokens, the end-of-turn token included when one was generated
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_new_tokens)


class Backend(Protocol):
    """Anything that completes a batch of chats; `HFBackend` and `OpenAIBackend` are two."""

    name: str  # model id or path, for trajectories

    def complete(
        self,
        chats: list[list[dict]],
        *,
        tools: list[dict] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[Completion]: ...


# --------------------------------------------------------------------------- local models


class HFBackend:
    """A Hugging Face causal LM in this process; all chats of a call advance in one batched `generate`.

    Args:
        model: A local folder or a hub id. With `HF_HUB_OFFLINE=1` a hub id must already be in the
            Hugging Face cache, else loading fails at once with a `BackendError` naming it.
        adapter: A PEFT adapter (folder or hub id) applied on top of `model`. Its folder's tokenizer
            is used when it has one (training may have changed the chat template).
        load_in_4bit: Quantise the linear layers to 4-bit NF4 with double quantisation (bitsandbytes),
            computing in `dtype`. On CPUs with AVX512-BF16, bitsandbytes' CPU kernel needs every
            quantised layer's input size to be a multiple of 64 and its output size a multiple of 32;
            other shapes are refused here with the layer named.
        device: "cuda", "cuda:1", "cpu", ...; default: CUDA when available, else CPU.
        dtype: A torch dtype or its name ("bfloat16", "float16", "float32"); default: bfloat16 on GPUs
            that support it, float16 on other GPUs, float32 on CPU.
        batch_size: At most this many chats per `generate`; chats of similar prompt length share one.
            Default: all chats of a call at once.
        chat_template: Replace the tokenizer's chat template: a name in
            `fcdpo.chat_templates.CHAT_TEMPLATES` or a `.jinja` file. Needed where a model's own template
            cannot render tool turns (Mistral-7B-Instruct-v0.2's refuses them).
        share_prefix: Run the prompt prefix that all chats of a batch share (the system prompt with
            its function descriptions, usually most of the prompt) once, and give every row a copy
            of its key/value cache, instead of running it once per row. The completions are the
            same; only the cost of the prompt changes. On CPU, a model on SDPA attention also reads
            that prefix's keys and values once per step for the whole batch rather than once per row
            (`fcdpo.prefix_attention`): decoding there is bound by memory reads, most of them the
            prefix's. Turn it off for models whose cache cannot be copied across a batch.
        reuse_turns: Keep each row's key/value cache (prompt and completion) from one `complete`
            call to the next, and start a chat from the longest kept prefix of its tokens: an
            agent's next prompt is its last one plus the completion and a tool result, so only those
            new tokens are run. Costs memory for one cache per chat of the last call (about 1 MB per
            chat for the tiny lab's teacher; far more for a 7B model on a GPU). Off for `from_loaded`
            models by default, since their weights may change between calls.

    Greedy decoding at temperature 0; otherwise plain temperature sampling over the whole vocabulary
    (no top-k, top-p or repetition penalty from the model's generation config), seeded with
    `torch.manual_seed(seed)` when a seed is given: the same chats with the same seed give the same
    completions. Generation stops at the end-of-turn token: the tokenizer's EOS, `<|im_end|>` when
    the vocabulary has it, and the model generation config's EOS ids.
    """

    def __init__(
        self,
        model: str | Path,
        adapter: str | Path | None = None,
        load_in_4bit: bool = False,
        device: str | None = None,
        dtype: "str | torch.dtype | None" = None,
        batch_size: int | None = None,
        chat_template: str | None = None,
        share_prefix: bool = True,
        reuse_turns: bool = True,
    ):
        import torch

        from fcdpo.loading import load_adapter, load_model, model_kwargs, saved_tokenizer

        model_ref = _checked_reference(model, "model")
        adapter_ref = _checked_reference(adapter, "adapter") if adapter is not None else None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = _resolve_dtype(dtype, device)
        kwargs = model_kwargs(load_in_4bit=load_in_4bit, dtype=dtype, device_map={"": device})
        try:
            loaded = load_model(model_ref, **kwargs)
            tokenizer_ref = adapter_ref if adapter_ref and _has_tokenizer(adapter_ref) else model_ref
            tokenizer = saved_tokenizer(tokenizer_ref)
            if chat_template is not None:
                tokenizer.chat_template = named_chat_template(chat_template)
            # a refused tool turn fails here, not mid-run
            check_chat_template(tokenizer, model_ref, "the backend's chat_template", history=False)
            if adapter_ref is not None:
                loaded = load_adapter(loaded, adapter_ref)
        except (OSError, ValueError) as exc:
            with_adapter = f" with adapter {adapter_ref!r}" if adapter_ref else ""
            raise BackendError(f"cannot load model {model_ref!r}{with_adapter}: {exc}") from exc
        if load_in_4bit and device.startswith("cpu"):
            _check_cpu_4bit_shapes(loaded, model_ref)
        loaded.eval()
        self._setup(loaded, tokenizer, _model_name(model, adapter), batch_size, share_prefix, reuse_turns)
        if share_prefix and device.startswith("cpu"):
            self._prefix_attention = _use_prefix_attention(loaded)

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, *, name: str | None = None,
                    batch_size: int | None = None, share_prefix: bool = True,
                    reuse_turns: bool = False) -> "HFBackend":
        """A backend around a model and tokenizer already in memory (e.g. one being trained).

        Neither is modified: padding is done here, not through the tokenizer's settings, and a model
        in training mode is put in eval mode only for the duration of each `complete` call.
        """
        backend = cls.__new__(cls)
        backend._setup(model, tokenizer, name or str(getattr(model, "name_or_path", "") or "in-memory"), batch_size,
                       share_prefix, reuse_turns)
        return backend

    def _setup(self, model: Any, tokenizer: Any, name: str, batch_size: int | None,
               share_prefix: bool = True, reuse_turns: bool = False) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.share_prefix = share_prefix
        self.reuse_turns = reuse_turns
        self._kept: list[_KeptRow] = []  # the last call's rows, with their caches (see `reuse_turns`)
        self._prefix_attention = False  # whether the model reads a batch's shared prefix from one row
        self.stop_ids = _end_of_turn_ids(model, tokenizer)
        # Padding sits only under a zero attention mask, so any id that is not a stop id works; the
        # tokenizer's own pad token is preferred, and an EOS id is avoided so a padded row never
        # looks finished.
        candidates = [tokenizer.pad_token_id, *tokenizer.all_special_ids, *range(len(tokenizer))]
        self.pad_token_id = next(i for i in candidates if i is not None and i not in self.stop_ids)
        # `encode` tokenizes the text between added tokens piece by piece, where that is what the
        # tokenizer itself does: none of its added tokens strips or matches neighbouring text.
        self._pieces: dict[str, list[int]] = {}
        self._added_ids = dict(tokenizer.get_added_vocab())
        self._added_tokens = _added_token_splitter(tokenizer, self._added_ids)
        # Decoding keeps special tokens (`<tool_call>` may be one) and removes only these.
        self._strip_ids = self.stop_ids | ({tokenizer.pad_token_id} if tokenizer.pad_token_id is not None else set())

    def complete(
        self,
        chats: list[list[dict]],
        *,
        tools: list[dict] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[Completion]:
        """Complete every chat with one assistant turn, in input order (see the class docstring)."""
        import torch

        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not chats:
            return []
        prompts = [self.encode(chat, tools) for chat in chats]
        order = sorted(range(len(chats)), key=lambda i: len(prompts[i]))  # less padding per batch
        size = self.batch_size or len(chats)
        results: list[Completion | None] = [None] * len(chats)
        was_training = self.model.training
        self.model.eval()
        try:
            if seed is not None:
                torch.manual_seed(seed)
            kept: list[_KeptRow] = []
            for start in range(0, len(order), size):
                rows = order[start:start + size]
                batch = self._generate([prompts[i] for i in rows], max_new_tokens, temperature, kept)
                for i, completion in zip(rows, batch):
                    results[i] = completion
            self._kept = kept
        finally:
            self.model.train(was_training)
        return results  # type: ignore[return-value]

    def encode(self, chat: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The prompt token ids of `chat`: its chat-template rendering with the generation prompt."""
        text = self.tokenizer.apply_chat_template(chat, tools=tools, add_generation_prompt=True, tokenize=False)
        if self._added_tokens is None:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        # A tokenizer splits out its added tokens (`<|im_start|>`, ...) before anything else and
        # tokenizes the text between them piece by piece, so the same is done here with a cache of
        # pieces: an agent's prompts repeat all but their newest turns.
        ids: list[int] = []
        for index, piece in enumerate(self._added_tokens.split(text)):
            if index % 2:
                ids.append(self._added_ids[piece])
            elif piece:
                cached = self._pieces.get(piece)
                if cached is None:
                    if len(self._pieces) >= _MAX_CACHED_PIECES:
                        self._pieces.clear()
                    cached = self._pieces[piece] = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
                ids.extend(cached)
        return ids

    def _generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                  keep: list["_KeptRow"] | None = None) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, StaticCache

        reused = self._reused_prefixes(prompts)
        # The cache is made here, not by `generate`, so that it can be preallocated (a growing one
        # copies every row's whole cache at each new token), prefilled, and read back afterwards.
        # Layout: [shared prefix][pad][this row's kept tokens after it][pad][its new tokens]. The
        # prefix all prompts share comes first in every row, so that with prefix attention only the
        # first row needs to hold it (see `fcdpo.prefix_attention`).
        shared = self._shared_prefix_length(prompts)
        if reused is not None:
            shared = min(shared, *(length for _, length in reused))
            shared = shared if shared >= _MIN_SHARED_PREFIX else 0
            held = shared + max(length - shared for _, length in reused)
            width = held + max(len(p) - length for p, (_, length) in zip(prompts, reused))
        else:
            held, width = shared, max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            # Left padding within each part, so every row continues from its last token; position
            # ids follow the attention mask, so padding in the middle does not shift them.
            own = reused[row][1] if reused is not None else held
            input_ids[row, :shared] = torch.tensor(prompt[:shared], dtype=torch.long)
            input_ids[row, held - (own - shared):held] = torch.tensor(prompt[shared:own], dtype=torch.long)
            attention_mask[row, :shared] = 1
            attention_mask[row, held - (own - shared):held] = 1
            rest = prompt[own:]
            input_ids[row, width - len(rest):] = torch.tensor(rest, dtype=torch.long)
            attention_mask[row, width - len(rest):] = 1
        device = self.model.device
        cache = StaticCache(config=self.model.config, max_cache_len=width + max_new_tokens)
        one_row_prefix = bool(shared) and self._prefix_attention and len(prompts) > 1 and _plain_layers(cache)
        if reused is not None:
            self._fill_from_kept(cache, reused, shared, held, one_row_prefix)
        elif held:
            with torch.inference_mode():
                prefix = self.model(input_ids=input_ids[:1, :held].to(device), use_cache=True)
            if one_row_prefix:
                sources = [(layer.keys[0], layer.values[0]) for layer in prefix.cache.layers]
                _preallocate(cache, len(prompts), held, sources)
                for layer, (keys, values) in zip(cache.layers, sources):
                    layer.keys[0, :, :held] = keys
                    layer.values[0, :, :held] = values
            else:
                for layer, source in zip(cache.layers, prefix.cache.layers):
                    layer.update(source.keys.expand(len(prompts), -1, -1, -1),
                                 source.values.expand(len(prompts), -1, -1, -1))
        # Explicit values, so that the model's own generation config (top_k=20, ...) does not apply.
        sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 \
            else {"do_sample": False}
        config = GenerationConfig(max_new_tokens=max_new_tokens, repetition_penalty=1.0,
                                  eos_token_id=sorted(self.stop_ids), pad_token_id=self.pad_token_id, **sampling)
        from fcdpo import prefix_attention

        with torch.inference_mode(), prefix_attention.shared_prefix(shared if one_row_prefix else 0):
            output = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                         generation_config=config, cache=cache)
        completions = []
        for prompt, row in zip(prompts, output[:, width:].tolist()):
            end = next((k for k, token in enumerate(row) if token in self.stop_ids), None)
            # A row without a stop id ran the full max_new_tokens: generate only ends early when every
            # row has stopped, so an unfinished row holds no padding.
            generated = row if end is None else row[:end]
            kept = [token for token in generated if token not in self._strip_ids]
            completions.append(Completion(
                text=self.tokenizer.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False),
                tool_calls=None,
                prompt_tokens=len(prompt),
                completion_tokens=len(row) if end is None else end + 1,
                finish_reason="length" if end is None else "stop",
            ))
        if keep is not None and self.reuse_turns and _plain_layers(cache):  # for the next call
            keep.extend(self._rows_to_keep(prompts, output[:, width:], attention_mask, cache, shared))
        return completions

    def _model_tag(self) -> tuple:
        """What a kept cache was computed with: this model and, for a PEFT model, its active adapter."""
        return id(self.model), str(getattr(self.model, "active_adapter", None))

    def _reused_prefixes(self, prompts: list[list[int]]) -> "list[tuple[_KeptRow | None, int]] | None":
        """Per prompt, the kept row sharing its longest prefix and that length (at most all but its last
        token); None when reuse is off or no prompt shares enough with any kept row."""
        import torch

        if not self.reuse_turns:
            return None
        tag = self._model_tag()
        candidates = [k for k in self._kept if k.tag == tag]
        if not candidates:
            return None
        longest = max(len(k.tokens) for k in candidates)
        table = torch.full((len(candidates), longest), -1, dtype=torch.long)
        for i, k in enumerate(candidates):
            table[i, :len(k.tokens)] = torch.tensor(k.tokens, dtype=torch.long)
        found: list[tuple[_KeptRow | None, int]] = []
        for prompt in prompts:
            head = torch.tensor(prompt[:longest], dtype=torch.long)
            common = (table[:, :len(head)] == head).long().cumprod(dim=1).sum(dim=1)
            best = int(common.argmax())
            length = min(int(common[best]), len(prompt) - 1)
            found.append((candidates[best], length) if length >= _MIN_SHARED_PREFIX else (None, 0))
        return found if any(k is not None for k, _ in found) else None

    def _fill_from_kept(self, cache: Any, reused: "list[tuple[_KeptRow | None, int]]", shared: int, held: int,
                        one_row_prefix: bool) -> None:
        """Write the kept keys and values into the first `held` slots of `cache`: the `shared` prefix
        at the start (in the first row only when `one_row_prefix`), the rest of each row right-aligned."""
        sample = next(k for k, _ in reused if k is not None)
        _preallocate(cache, len(reused), held, [(k, v) for k, v in zip(sample.keys, sample.values)])
        for index, layer in enumerate(cache.layers):
            if shared:
                keys, values = reused[0][0].span(index, 0, shared)  # every row starts with them
                rows = slice(0, 1) if one_row_prefix else slice(None)
                layer.keys[rows, :, :shared] = keys
                layer.values[rows, :, :shared] = values
            for row, (kept, length) in enumerate(reused):
                if kept is not None and length > shared:
                    keys, values = kept.span(index, shared, length)
                    layer.keys[row, :, held - (length - shared):held] = keys
                    layer.values[row, :, held - (length - shared):held] = values

    def _rows_to_keep(self, prompts: list[list[int]], generated: Any, attention_mask: Any,
                      cache: Any, shared: int) -> list["_KeptRow"]:
        """Each row's tokens and their keys and values: its prompt and the completion tokens whose
        cache was written (the last token `generate` produced never went through the model). The
        `shared` prefix's keys and values are taken once, from the first row, for all rows."""
        import torch

        tag, steps = self._model_tag(), generated.shape[1]
        width = attention_mask.shape[1]
        prefix = _SharedKeys(shared, keys=[layer.keys[0, :, :shared].clone() for layer in cache.layers],
                             values=[layer.values[0, :, :shared].clone() for layer in cache.layers]) if shared else None
        rows = []
        for row, (prompt, tokens) in enumerate(zip(prompts, generated.tolist())):
            end = next((k for k, token in enumerate(tokens) if token in self.stop_ids), None)
            count = min(steps if end is None else end + 1, steps - 1)
            slots = torch.cat([attention_mask[row, shared:].nonzero().flatten() + shared,
                               torch.arange(width, width + count)])
            slots = slots.to(cache.layers[0].keys.device)
            rows.append(_KeptRow(
                tokens=list(prompt) + tokens[:count], tag=tag,
                keys=[layer.keys[row].index_select(1, slots) for layer in cache.layers],
                values=[layer.values[row].index_select(1, slots) for layer in cache.layers],
                prefix=prefix,
            ))
        return rows

    def _shared_prefix_length(self, prompts: list[list[int]]) -> int:
        """How many leading tokens all `prompts` share and `_generate` runs once: 0 when sharing is
        off, there is one prompt, or the prefix is too short to repay the copy. Every row keeps at
        least one token of its own, which `generate` needs to start from."""
        if not self.share_prefix or len(prompts) < 2:
            return 0
        shortest = min(len(p) for p in prompts) - 1
        length = 0
        while length < shortest and all(p[length] == prompts[0][length] for p in prompts):
            length += 1
        return length if length >= _MIN_SHARED_PREFIX else 0


@dataclass
class _SharedKeys:
    """The keys and values of a prefix several kept rows share, per layer heads × tokens × head size."""

    length: int
    keys: list[Any]
    values: list[Any]


@dataclass
class _KeptRow:
    """One chat of the last `complete` call: its tokens and, per layer, their keys and values
    (heads × tokens × head size), computed by the model in the state `tag` names. The first
    `prefix.length` tokens' keys and values are in `prefix`, shared with the other rows of the call;
    `keys` and `values` hold the rest."""

    tokens: list[int]
    tag: tuple
    keys: list[Any]
    values: list[Any]
    prefix: _SharedKeys | None = None

    def span(self, layer: int, start: int, stop: int) -> tuple[Any, Any]:
        """The keys and values of tokens `[start, stop)` at `layer`."""
        import torch

        cut = self.prefix.length if self.prefix is not None else 0
        keys, values = [], []
        if start < cut:
            keys.append(self.prefix.keys[layer][:, start:min(stop, cut)])
            values.append(self.prefix.values[layer][:, start:min(stop, cut)])
        if stop > cut or not keys:
            keys.append(self.keys[layer][:, max(start - cut, 0):max(stop - cut, 0)])
            values.append(self.values[layer][:, max(start - cut, 0):max(stop - cut, 0)])
        if len(keys) == 1:
            return keys[0], values[0]
        return torch.cat(keys, dim=1), torch.cat(values, dim=1)


def _preallocate(cache: Any, rows: int, held: int, like: list[tuple[Any, Any]]) -> None:
    """Allocate every layer of a static `cache` for `rows` rows, with keys and values of the dtype,
    device and heads of `like` (per layer, heads × tokens × head size), and count its first `held`
    slots as written: the caller writes them directly, without an intermediate batch tensor."""
    for layer, (keys, values) in zip(cache.layers, like):
        layer.lazy_initialization(keys.new_empty((rows, keys.shape[0], 0, keys.shape[-1])),
                                  values.new_empty((rows, values.shape[0], 0, values.shape[-1])))
        layer.cumulative_length.add_(held)


def _use_prefix_attention(model: Any) -> bool:
    """Switch `model` to `fcdpo.prefix_attention` where it runs SDPA over full (not sliding-window)
    attention in every layer, and say whether it did; any other model is left as it was."""
    from fcdpo import prefix_attention

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PEFT adapter
    config = base.config
    layer_types = getattr(config, "layer_types", None) or []
    if (getattr(config, "_attn_implementation", None) != "sdpa"
            or getattr(config, "use_sliding_window", False)
            or any(kind != "full_attention" for kind in layer_types)):
        return False
    try:
        base.set_attn_implementation(prefix_attention.register())
    except (ValueError, ImportError) as exc:
        logger.info("keeping SDPA for %s: %s", getattr(config, "name_or_path", "the model"), exc)
        return False
    return base.config._attn_implementation == prefix_attention.NAME


def _added_token_splitter(tokenizer: Any, added_ids: dict[str, int]) -> "re.Pattern[str] | None":
    """A pattern whose `split` separates a text's added tokens (longest first, as tokenizers match
    them) from the text between; None when some added token strips or is normalised with its
    neighbours, or is not described, so that the text around it cannot be tokenized apart."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {})
    plain = all(not (getattr(t, "lstrip", True) or getattr(t, "rstrip", True) or getattr(t, "single_word", True)
                     or getattr(t, "normalized", True)) for t in decoder.values())
    if not added_ids or not plain or len(decoder) != len(added_ids):
        return None
    return re.compile("(" + "|".join(map(re.escape, sorted(added_ids, key=len, reverse=True))) + ")")


def _plain_layers(cache: Any) -> bool:
    """Whether every layer of a static cache stores token i at slot i (sliding-window layers roll)."""
    return all(type(layer).__name__ == "StaticLayer" for layer in cache.layers)


_MAX_CACHED_PIECES = 50_000  # texts between added tokens that `encode` remembers; then it starts afresh
_MIN_SHARED_PREFIX = 16  # tokens; a shorter shared prefix is not worth its extra forward pass (a rule of thumb)


def _checked_reference(reference: str | Path, what: str) -> str:
    """A local folder as given, or a hub id that can be loaded now; else a BackendError naming it."""
    text = str(reference)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise BackendError(f"{what} {text!r} is a file, not a model folder")
    if path.is_absolute() or text.startswith((".", "~")):
        raise BackendError(f"{what} {text!r}: no such folder")
    if _offline():
        from huggingface_hub import try_to_load_from_cache

        cached = any(isinstance(try_to_load_from_cache(text, name), str)
                     for name in ("config.json", "adapter_config.json"))
        if not cached:
            raise BackendError(
                f"{what} {text!r} is not a local folder and not in the Hugging Face cache, and "
                "HF_HUB_OFFLINE=1 forbids downloading it: pass a local folder, or unset HF_HUB_OFFLINE"
            )
    return text


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _has_tokenizer(reference: str) -> bool:
    return (Path(reference) / "tokenizer_config.json").is_file()


def _resolve_dtype(dtype: "str | torch.dtype | None", device: str) -> "torch.dtype":
    from fcdpo.loading import resolve_dtype  # the one place every stage's dtype is decided

    return resolve_dtype(dtype, device)


def _end_of_turn_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if END_OF_TURN in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids(END_OF_TURN))
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    if not ids:
        raise BackendError(f"tokenizer {tokenizer.name_or_path!r} has no EOS and no {END_OF_TURN} token: "
                           "there is no way to tell where an assistant turn ends")
    return ids


def _check_cpu_4bit_shapes(model: Any, name: str) -> None:
    """Refuse layer shapes that bitsandbytes' AVX512-BF16 CPU kernel cannot repack (it would fail later,
    in the middle of `generate`, with a bare reshape error)."""
    for layer_name, module in model.named_modules():
        if not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        blocksize = module.weight.quant_state.blocksize
        if module.in_features % blocksize or module.out_features % 32:
            raise BackendError(
                f"model {name!r}: layer {layer_name} ({module.in_features} → {module.out_features}) cannot run "
                f"in 4-bit on this CPU: bitsandbytes' AVX512-BF16 kernel needs input sizes that are multiples "
                f"of {blocksize} and output sizes that are multiples of 32; load it without load_in_4bit"
            )


# --------------------------------------------------------------------------- OpenAI-compatible servers


class OpenAIBackend:
    """An OpenAI-compatible chat completions server: one request per chat, many in flight.

    Args:
        model: The model name the server knows (for `transformers serve <folder>`, the folder as given).
        base_url: e.g. "http://127.0.0.1:8000/v1" (http or https).
        api_key_env: Environment variable holding the API key. When it is unset the key "EMPTY" is
            sent, which local servers (vLLM, Ollama, transformers serve) accept.
        max_concurrency: Requests in flight at once.
        timeout: Seconds one attempt may take in all: connecting, sending and reading the whole
            answer. A server that goes silent, or sends its answer a byte at a time, is cut off then.
        max_retries: Further attempts after a timeout, a refused or dropped connection, HTTP 408, 429
            or 5xx, or a 200 answer that is not a chat completion (not JSON, cut short, a field of the
            wrong type, ...), waiting `backoff`, 2·`backoff`, 4·`backoff`, ... seconds (at most 30)
            before each, or longer when the server's `Retry-After` header asks for it (a server that
            asks for more than `MAX_RETRY_AFTER_S` is a `BackendError` at once). Any other error
            (400, 404, 422, ...) raises a `BackendError` at once.
        native_tools: Pass `tools` to the server and return its parsed `message.tool_calls` as
            `{"type": "function", "function": {"name": ..., "arguments": dict}}` (`arguments` stays the
            server's string when it is not a JSON object). When False, tools are not sent and any tool
            calls the server parsed anyway are written back into the text as
            `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`, so the caller reads text only.
        backoff: Seconds before the first retry.
        max_response_bytes: A longer answer is not read further; the attempt fails (and is retried).

    With a seed, request i of a call gets `seed + i`, so copies of one chat sample different turns.
    Everything the server sends is untrusted: lone surrogates in its strings become U+FFFD, and
    what is sent is valid UTF-8 whatever the chat holds.
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        native_tools: bool = True,
        backoff: float = 0.5,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ):
        import openai

        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be at least 1, got {max_response_bytes}")
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        self.name = model
        self.base_url = base_url
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.native_tools = native_tools
        self.max_response_bytes = max_response_bytes
        self.retry_delays = [min(backoff * 2**attempt, MAX_BACKOFF_S) for attempt in range(max_retries)]
        self.sleep: Callable[[float], None] = time.sleep  # how retries wait; replaceable in tests
        # The client's own retries are off: every retry is the loop in `_request`, with the delays above.
        self._client = openai.OpenAI(base_url=base_url, api_key=os.environ.get(api_key_env) or "EMPTY",
                                     timeout=timeout, max_retries=0,
                                     http_client=_http_client(timeout, max_response_bytes))

    def complete(
        self,
        chats: list[list[dict]],
        *,
        tools: list[dict] | None = None,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[Completion]:
        """Complete every chat with one assistant turn, in input order; raises BackendError on failure."""
        if not chats:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(chats)), thread_name_prefix="openai")
        try:
            futures = [
                pool.submit(self._complete_one, chat, tools, max_new_tokens, temperature,
                            None if seed is None else seed + index)
                for index, chat in enumerate(chats)
            ]
            return [future.result() for future in futures]
        finally:
            # On an error the requests still queued are dropped; those in flight end within `timeout`.
            pool.shutdown(wait=False, cancel_futures=True)

    def _complete_one(self, chat: list[dict], tools: list[dict] | None, max_new_tokens: int,
                      temperature: float, seed: int | None) -> Completion:
        request: dict[str, Any] = {
            "model": self.name,
            "messages": to_openai_messages(chat),
            "max_tokens": max_new_tokens,
            "temperature": temperature,
        }
        if seed is not None:
            request["seed"] = seed
        if self.native_tools and tools:
            request["tools"] = scrub(tools)
        return self._request(request)

    def _request(self, request: dict[str, Any]) -> Completion:
        """Send `request` until an attempt gives a completion; BackendError when none does."""
        import openai

        failures: dict[str, int] = {}  # what went wrong, in order of first occurrence, with counts
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                with _attempt_deadline(self.timeout):
                    raw = self._client.chat.completions.with_raw_response.create(**request)
                    data = raw.http_response.content
            except openai.APIStatusError as exc:
                status = exc.status_code
                failure = f"HTTP {status}: {_server_message(exc.response.content)}"
                if not (status in (408, 429) or status >= 500):
                    raise BackendError(f"{self.base_url} (model {self.name!r}) refused the request: {failure}") from None
                retry_after = _retry_after_seconds(exc.response.headers.get("retry-after"))
            except openai.APITimeoutError:
                failure = f"no answer within {self.timeout} s"
            except openai.APIConnectionError as exc:
                failure = f"connection failed ({_root_cause(exc)})"
            except openai.OpenAIError as exc:
                raise BackendError(f"{self.base_url} (model {self.name!r}) refused the request: {exc}") from None
            else:
                try:
                    return decode_completion(data, self.native_tools)
                except MalformedReply as exc:
                    failure = f"HTTP {raw.status_code} but {exc}"
            failures[failure] = failures.get(failure, 0) + 1
            if attempt < self.max_retries:
                delay = self.retry_delays[attempt]
                if retry_after is not None:
                    if retry_after > MAX_RETRY_AFTER_S:
                        raise BackendError(
                            f"{self.base_url} (model {self.name!r}) answered {failure} and asked to be retried "
                            f"after {retry_after:g} s, longer than the {MAX_RETRY_AFTER_S:g} s this backend waits")
                    delay = max(delay, retry_after)
                self.sleep(delay)
        summary = "; ".join(f"{failure} ({count}×)" for failure, count in failures.items())
        raise BackendError(f"{self.base_url} (model {self.name!r}) failed {self.max_retries + 1} attempt(s): {summary}")


class MalformedReply(BackendError):
    """A server's answer that is not the chat completion the API promises (retried by the backend)."""


# --------------------------------------------------------------------------- bounds on each attempt
#
# The client reads the answer as httpx does, through httpcore's network streams. Two bounds are added:
# - a deadline per attempt: every connect, read and write of the attempt's thread waits at most until
#   it (`_attempt_deadline`, `_DeadlineBackend`), so a server that sends one byte at a time, in the
#   headers or the body, is cut off there, not after a read timeout per byte;
# - a size bound: an answer whose Content-Length is too long is not read, and one that keeps coming
#   is cut off once it passes the bound (`_bound_answer_size`).

_attempt = threading.local()  # .deadline: time.monotonic() by which this thread's attempt must end


@contextlib.contextmanager
def _attempt_deadline(seconds: float) -> Iterator[None]:
    _attempt.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _attempt.deadline = None


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    """`timeout` shortened to the time left before this thread's deadline; `expired` once it has passed."""
    deadline = getattr(_attempt, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the attempt's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose reads and writes end by the deadline of the attempt using it."""

    def __init__(self, stream: Any, errors: Any):
        self._stream = stream
        self._errors = errors  # the httpcore module the stream comes from, for its exception types

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, self._errors.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _time_left(timeout, self._errors.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        timeout = _time_left(timeout, self._errors.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout), self._errors)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with `_DeadlineStream`s and connects that end by the deadline."""

    def __init__(self, backend: Any, errors: Any):
        self._backend = backend
        self._errors = errors

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> Any:
        timeout = _time_left(timeout, self._errors.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options),
                               self._errors)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        timeout = _time_left(timeout, self._errors.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options), self._errors)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _SizedStream(httpx.SyncByteStream):
    """An answer's body that fails with a ReadError once more than `limit` bytes have come."""

    def __init__(self, stream: Any, limit: int):
        self._stream = stream
        self._limit = limit

    def __iter__(self) -> Iterator[bytes]:
        size = 0
        for chunk in self._stream:
            size += len(chunk)
            if size > self._limit:
                raise httpx.ReadError(f"an answer longer than the {self._limit} bytes accepted")
            yield chunk

    def close(self) -> None:
        self._stream.close()


def _bound_answer_size(limit: int) -> Callable[[Any], None]:
    """An httpx response hook: answers longer than `limit` bytes fail with a ReadError."""
    def hook(response: Any) -> None:
        declared = response.headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > limit:
            raise httpx.ReadError(f"an answer of {int(declared)} bytes, more than the {limit} accepted")
        response.stream = _SizedStream(response.stream, limit)
    return hook


def _http_client(timeout: float, max_response_bytes: int) -> Any:
    """The HTTP client of an `OpenAIBackend`: httpx's, with its proxies from the environment and its
    connection pool, plus the deadline and size bounds above. Answers are asked for uncompressed, so
    that the size bound is the size read; redirects are not followed."""
    import openai

    client = openai.DefaultHttpxClient(timeout=timeout, follow_redirects=False,
                                       headers={"Accept-Encoding": "identity"},
                                       event_hooks={"response": [_bound_answer_size(max_response_bytes)]})
    # httpx builds one transport for direct connections and one per proxy; each holds an httpcore
    # connection pool, whose network backend is where the deadline can bound every read and write.
    for transport in [client._transport, *client._mounts.values()]:
        pool = getattr(transport, "_pool", None)
        if pool is None:  # a URL pattern the environment says not to proxy, or not an HTTP transport
            continue
        errors = sys.modules[type(pool).__module__.partition(".")[0]]
        pool._network_backend = _DeadlineBackend(pool._network_backend, errors)
    return client


def _root_cause(exc: BaseException) -> str:
    """`Type: message` of the first exception in `exc`'s chain of causes that says what went wrong."""
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    named = [e for e in chain if isinstance(e, OSError)] or [e for e in chain[1:] if str(e)] or chain
    cause = named[0]
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits)} digits")
    return int(digits)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_untrusted_json(text: str | bytes) -> Any:
    """JSON from a server or a model: ValueError for anything that is not plain JSON, including
    NaN/Infinity, integers over 64 digits, invalid UTF-8 and nesting too deep to parse."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")  # UnicodeDecodeError is a ValueError
    try:
        return scrub(json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant))
    except RecursionError:
        raise ValueError("nesting too deep") from None


def decode_completion(data: bytes | str | Any, native_tools: bool = True) -> Completion:
    """A `Completion` from a chat completion answer: its body (bytes or text) or its parsed JSON.

    Anything that is not what the API promises raises `MalformedReply` (a `BackendError`) naming
    what is wrong. `content` may be null (a turn with only tool calls), a string, or a list of text
    parts; `usage` and its counts may be missing or null (they count as 0).
    """
    if isinstance(data, (bytes, bytearray, str)):
        try:
            payload = load_untrusted_json(data)
        except ValueError as exc:
            preview = bytes(data[:80]) if isinstance(data, (bytes, bytearray)) else data[:80].encode("utf-8", "replace")
            raise MalformedReply(f"the answer is not JSON ({exc}; it starts {preview!r})") from None
    else:
        payload = scrub(data)
    if not isinstance(payload, dict):
        raise MalformedReply(f"the answer is a JSON {_json_type(payload)}, not an object")
    if payload.get("error") is not None:
        raise MalformedReply(f"the answer is an error: {_server_message(payload)}")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices:
        raise MalformedReply("the answer has no choices")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise MalformedReply(f"choices[0] is a JSON {_json_type(choice)}, not an object")
    message = choice.get("message")
    if not isinstance(message, dict):
        raise MalformedReply(f"choices[0].message is a JSON {_json_type(message)}, not an object")
    text = _content_text(message.get("content"))
    raw_calls = message.get("tool_calls")
    if raw_calls is not None and not isinstance(raw_calls, list):
        raise MalformedReply(f"message.tool_calls is a JSON {_json_type(raw_calls)}, not a list")
    tool_calls = [_tool_call_dict(call, index) for index, call in enumerate(raw_calls or [])] or None
    if tool_calls and not native_tools:
        text += "".join(_tool_call_markup(call) for call in tool_calls)
        tool_calls = None
    usage = payload.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise MalformedReply(f"usage is a JSON {_json_type(usage)}, not an object")
    usage = usage or {}
    return Completion(
        text=text,
        tool_calls=tool_calls,
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
    )


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _count(value: Any) -> int:
    """A token count from `usage`; absent, null, negative or not an integer counts as 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0:
        return 0
    return int(value) if value < 2**53 else 0


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not (isinstance(part, dict) and isinstance(part.get("text", ""), str)):
                raise MalformedReply("message.content holds a part that is not a text part")
            parts.append(part.get("text", ""))
        return "".join(parts)
    raise MalformedReply(f"message.content is a JSON {_json_type(content)}, not a string")


def to_openai_messages(chat: list[dict]) -> list[dict]:
    """Our chat messages in the form OpenAI's API requires; the input is not modified.

    Tool-call `arguments` dicts become JSON strings. Each tool call gets an id (`call_<turn>_<i>`: the
    assistant message's index and the call's index in it, unless it already has one) and each `tool`
    message the id of the call it answers: the first unanswered call of the latest assistant turn
    with the same function name, else its first unanswered call. A `tool` message with no such call
    (python syntax, where the call is the assistant's text) gets `call_<turn>_0` of the latest
    assistant turn.
    """
    chat = scrub(chat)  # lone surrogates cannot be sent (see `fcdpo.safe_text`)
    converted: list[dict] = []
    unanswered: list[tuple[str, str | None]] = []  # (id, function name) of the latest turn's calls
    last_assistant = 0
    for turn, message in enumerate(chat):
        message = dict(message)
        role = message.get("role")
        if role == "assistant":
            last_assistant = turn
            unanswered = []
            if message.get("tool_calls"):
                calls = []
                for index, call in enumerate(message["tool_calls"]):
                    function = call.get("function", call)
                    arguments = function.get("arguments", {})
                    call_id = call.get("id") or f"call_{turn}_{index}"
                    calls.append({
                        "id": call_id,
                        "type": "function",
                        "function": {
                            "name": function.get("name"),
                            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
                        },
                    })
                    unanswered.append((call_id, function.get("name")))
                message["tool_calls"] = calls
        elif role == "tool" and "tool_call_id" not in message:
            same_name = [c for c in unanswered if c[1] == message.get("name")]
            match = (same_name or unanswered or [None])[0]
            if match is not None:
                unanswered.remove(match)
                message["tool_call_id"] = match[0]
            else:
                message["tool_call_id"] = f"call_{last_assistant}_0"
        converted.append(message)
    return converted


def _tool_call_dict(call: Any, index: int = 0) -> dict:
    """One of `message.tool_calls` in our form; MalformedReply when it is not a function call."""
    where = f"message.tool_calls[{index}]"
    if not isinstance(call, dict):
        raise MalformedReply(f"{where} is a JSON {_json_type(call)}, not an object")
    function = call.get("function")
    if not isinstance(function, dict):
        raise MalformedReply(f"{where}.function is a JSON {_json_type(function)}, not an object")
    name = function.get("name")
    if not isinstance(name, str):
        raise MalformedReply(f"{where}.function.name is a JSON {_json_type(name)}, not a string")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = "{}"
    if isinstance(arguments, str):
        try:
            parsed = load_untrusted_json(arguments)
        except ValueError:  # not JSON (or a huge integer, ...): left to the caller to report
            parsed = arguments
    elif isinstance(arguments, dict):
        parsed = arguments
    else:
        raise MalformedReply(f"{where}.function.arguments is a JSON {_json_type(arguments)}, not a string")
    return {"type": "function", "function": {"name": name, "arguments": parsed if isinstance(parsed, dict) else arguments}}


def _tool_call_markup(call: dict) -> str:
    function = call["function"]
    arguments = function["arguments"]
    arguments = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return f'\n<tool_call>\n{{"name": {json.dumps(function["name"])}, "arguments": {arguments}}}\n</tool_call>'


def _server_message(body: Any) -> str:
    """The server's own words from an error answer (`{"error": ...}`, `{"detail": ...}`, ...), at most
    `_MAX_SERVER_MESSAGE` characters; `body` is the answer's bytes or its parsed JSON."""
    if isinstance(body, (bytes, bytearray)):
        try:
            body = load_untrusted_json(body)
        except ValueError:
            body = bytes(body).decode("utf-8", "replace").strip()
    for _ in range(3):  # {"error": {"message": ...}} and the like
        if isinstance(body, dict):
            body = next((body[key] for key in ("message", "error", "detail") if body.get(key)), body)
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    text = scrub_text(text) or "(no message)"
    return text if len(text) <= _MAX_SERVER_MESSAGE else text[:_MAX_SERVER_MESSAGE] + "…"


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks to wait (a number of seconds or an HTTP date); None if unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


# --------------------------------------------------------------------------- configuration

_KINDS: dict[str, tuple[type, set[str], set[str]]] = {
    # kind: (class, required keys, optional keys)
    "hf": (HFBackend, {"model"}, {"adapter", "load_in_4bit", "device", "dtype", "batch_size", "chat_template",
                                         "share_prefix"}),
    "openai": (OpenAIBackend, {"model", "base_url"},
               {"api_key_env", "max_concurrency", "timeout", "max_retries", "native_tools", "backoff",
                "max_response_bytes"}),
}


def check_backend_spec(spec: Any) -> type:
    """The backend class a spec names; ValueError for a missing or unknown kind, a missing required
    key or an unknown key, naming the valid keys. Nothing is loaded or connected."""
    if not isinstance(spec, dict):
        raise ValueError(f"backend spec must be a mapping, got {spec!r}")
    kind = spec.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"backend spec: kind must be one of {sorted(_KINDS)}, got {kind!r}")
    cls, required, optional = _KINDS[kind]
    arguments = {key for key in spec if key != "kind"}
    unknown = sorted(arguments - required - optional, key=str)
    if unknown:
        raise ValueError(f"backend spec: unknown key(s) {unknown} for kind {kind!r}; "
                         f"valid keys are {sorted(required | optional | {'kind'})}")
    missing = sorted(required - arguments)
    if missing:
        raise ValueError(f"backend spec: kind {kind!r} needs {missing}")
    return cls


def load_backend(spec: dict, root: str | Path | None = None) -> Backend:
    """A backend from a profile's spec: `kind` ("hf" or "openai") plus that class's arguments.

    hf: model (required), adapter, load_in_4bit, device, dtype, batch_size, chat_template, share_prefix.
    openai: model and base_url (required), api_key_env, max_concurrency, timeout, max_retries,
    native_tools, backoff, max_response_bytes. With `root`, an hf `model` or `adapter` that names an existing folder under
    `root` (the run folder) is read from there. A missing `kind`, an unknown kind, a missing required key or an unknown
    key is a ValueError naming the valid keys.
    """
    cls = check_backend_spec(spec)
    kind = spec["kind"]
    arguments = {key: value for key, value in spec.items() if key != "kind"}
    resolved = False
    if root is not None:  # a relative local path names a folder inside the run (the tiny lab's models)
        for key in ("model", "adapter"):
            value = arguments.get(key)
            if kind == "hf" and isinstance(value, str) and (Path(root) / value).exists():
                arguments[key] = str(Path(root) / value)
                resolved = True
    backend = cls(**arguments)
    if resolved:  # records name the model as the profile does (`lab/teacher`), not by this machine's path
        backend.name = _model_name(spec["model"], spec.get("adapter"))
    return backend


def _model_name(model: str | Path, adapter: str | Path | None) -> str:
    """How records name a local model: its reference, and its adapter's after a `+`."""
    return str(model) if adapter is None else f"{model}+{adapter}"
