"""Backends: batched local generation with a tiny Qwen2 model, and the OpenAI client's behaviour
against a stub HTTP server (message conversion, retries, concurrency, tool calls)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from fcdpo import prefix_attention
from fcdpo.backends import (
    BackendError,
    Completion,
    HFBackend,
    OpenAIBackend,
    _use_prefix_attention,
    load_backend,
    to_openai_messages,
)
from fcdpo.tinylab import IM_END, TOOL_CALL_END, TOOL_CALL_START, build_model, build_tokenizer

CORPUS = [
    "What is 3 times 4? multiply(a=3, b=4) Final answer: 12",
    "Ann has 2 apples and gets 3 more. How many apples does she have? add(a=2, b=3) Final answer: 5",
    "Every cat is a wumpus. Alex is a cat. Is Alex a wumpus? Final answer: True",
] * 3
SCRIPT_TEXT = "Computing."  # no letter twice, so no token twice, however the tokenizer merges
PAYLOAD = '{"name": "multiply", "arguments": {"a": 3, "b": 4}}'  # one added token, so the script never repeats a token
SCRIPTED_TEXT = f"{SCRIPT_TEXT}{TOOL_CALL_START}{PAYLOAD}{TOOL_CALL_END}"
MULTIPLY_SCHEMA = {
    "type": "function",
    "function": {
        "name": "multiply",
        "description": "Multiply two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]},
    },
}


def chat(question: str, system: str | None = "You solve problems by calling functions.") -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]


CHATS = [
    chat("What is 3 times 4?"),
    chat("Ann has 2 apples and gets 3 more. How many apples does she have? Every cat is a wumpus.", system=None),
    chat("Alex is a cat. Is Alex a wumpus? " * 3),
]


def build_scripted_model(folder: Path) -> list[int]:
    """Save a tiny Qwen2 model that answers every chat with one fixed assistant turn:
    "Computing." + `<tool_call>` + PAYLOAD + `</tool_call>` + `<|im_end|>`.

    Its next token depends only on the current one: each token of the script (and the newline that ends
    the generation prompt) has its own embedding direction, which the untied output layer maps to the
    next script token. The decoder layers are scaled down to a small perturbation. Hidden size 64 keeps
    every linear layer runnable by bitsandbytes' 4-bit CPU kernel. Returns the script's token ids.
    """
    tokenizer = build_tokenizer(CORPUS, vocab_size=300)
    tokenizer.add_tokens([PAYLOAD])
    script = tokenizer(SCRIPT_TEXT, add_special_tokens=False)["input_ids"]
    script += tokenizer.convert_tokens_to_ids([TOOL_CALL_START, PAYLOAD, TOOL_CALL_END, IM_END])
    [newline] = tokenizer("\n", add_special_tokens=False)["input_ids"]
    sources = [newline, *script[:-1]]
    assert len(set(sources)) == len(sources), "the script must not repeat a token"
    hidden = 64
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
        with torch.no_grad():
            for parameter in model.model.layers.parameters():
                if parameter.dim() == 2:
                    parameter.mul_(0.01)
            embeddings = torch.randn(len(tokenizer), hidden) * 0.02
            embeddings[:, : len(sources)] = 0
            output = torch.zeros(len(tokenizer), hidden)
            for direction, (token, following) in enumerate(zip(sources, script)):
                embeddings[token] = 0
                embeddings[token, direction] = 1.0
                output[following, direction] = 5.0
            model.model.embed_tokens.weight.copy_(embeddings)
            model.lm_head.weight.copy_(output)
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.eos_token_id, end_of_text],
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return script


def build_random_model(folder: Path, hidden_size: int = 32) -> None:
    """Save a tiny randomly initialised Qwen2 model whose output depends on the whole prompt."""
    tokenizer = build_tokenizer(CORPUS, vocab_size=300)
    model = build_model(tokenizer, hidden_size=hidden_size, num_layers=2, num_heads=2, num_kv_heads=1,
                        intermediate_size=2 * hidden_size, seed=1)
    with torch.no_grad():  # larger weights than the training init: well separated logits, no near ties
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(parameter.numel()))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.fixture(scope="module")
def scripted_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scripted")
    build_scripted_model(folder)
    return folder


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("random")
    build_random_model(folder)
    return folder


@pytest.fixture(scope="module")
def scripted(scripted_dir) -> HFBackend:
    return HFBackend(scripted_dir)


@pytest.fixture(scope="module")
def random_backend(random_dir) -> HFBackend:
    return HFBackend(random_dir)


# --------------------------------------------------------------------------- HFBackend


def test_batched_greedy_completion_equals_one_chat_at_a_time(random_backend):
    batched = random_backend.complete(CHATS, max_new_tokens=10)
    single = [random_backend.complete([c], max_new_tokens=10)[0] for c in CHATS]
    assert batched == single
    assert len({c.prompt_tokens for c in batched}) == len(CHATS)  # the chats really differ in length
    assert len({c.text for c in batched}) == len(CHATS)  # and the model's answers depend on them
    assert all(c.completion_tokens > 1 for c in batched)


LONG_SYSTEM = ("You solve problems by calling functions. Call one function per turn, wait for its result, "
               "then call the next; end with the final answer.")
SHARED_CHATS = [chat(question, system=LONG_SYSTEM) for question in (
    "Ann has 2 apples and gets 3 more.", "Bob has 7 pears. He gives away 4 of them to Cid.", "Every cat is a wumpus.")]


@pytest.mark.slow
def test_a_shared_system_prompt_runs_once_and_changes_no_completion(random_dir, random_backend):
    prompts = [random_backend.encode(c) for c in SHARED_CHATS]
    shared = random_backend._shared_prefix_length(prompts)
    assert shared > len(random_backend.tokenizer(LONG_SYSTEM)["input_ids"])  # the whole system turn
    assert all(p[:shared] == prompts[0][:shared] for p in prompts)
    assert HFBackend(random_dir, share_prefix=False)._shared_prefix_length(prompts) == 0
    assert random_backend._shared_prefix_length(prompts[:1]) == 0  # nothing to share in one chat

    unshared = HFBackend(random_dir, share_prefix=False).complete(SHARED_CHATS, max_new_tokens=10)
    assert random_backend.complete(SHARED_CHATS, max_new_tokens=10) == unshared
    assert unshared == [random_backend.complete([c], max_new_tokens=10)[0] for c in SHARED_CHATS]
    assert len({c.text for c in unshared}) == len(SHARED_CHATS)


@pytest.mark.slow
def test_a_next_turn_starts_from_the_kept_cache_and_changes_no_completion(random_dir):
    """Three agent-like turns: each prompt is the last one plus the completion and a tool result."""
    reusing, fresh = HFBackend(random_dir), HFBackend(random_dir, reuse_turns=False, share_prefix=False)
    chats, previous = [list(c) for c in SHARED_CHATS], None
    for turn in range(3):
        prompts = [reusing.encode(c) for c in chats]
        reused = reusing._reused_prefixes(prompts)
        if turn == 0:
            assert reused is None  # nothing kept yet
        else:  # each chat continues from its own previous prompt (and what of its completion re-encodes alike)
            assert all(kept.tokens[:len(before)] == before and length >= len(before)
                       for (kept, length), before in zip(reused, previous))
        previous = prompts
        got = reusing.complete(chats, max_new_tokens=6)
        assert got == fresh.complete(chats, max_new_tokens=6)
        assert len(reusing._kept) == len(chats)  # only the last call's rows are kept
        chats = [c + [{"role": "assistant", "content": g.text.strip()}, {"role": "tool", "content": f"{turn}"}]
                 for c, g in zip(chats, got)]
    assert len({c.text for c in got}) > 1


def test_a_kept_cache_is_not_used_by_a_model_in_another_state(random_dir):
    backend = HFBackend(random_dir)
    backend.complete(SHARED_CHATS, max_new_tokens=4)
    prompts = [backend.encode(c) for c in SHARED_CHATS]
    assert backend._reused_prefixes(prompts) is not None
    for kept in backend._kept:
        kept.tag = ("another model", "or another adapter")
    assert backend._reused_prefixes(prompts) is None
    assert HFBackend.from_loaded(backend.model, backend.tokenizer).reuse_turns is False  # weights may change


def test_kept_rows_share_one_copy_of_their_common_prefix(random_dir):
    backend = HFBackend(random_dir)
    assert backend._prefix_attention and backend.model.config._attn_implementation == prefix_attention.NAME
    got = backend.complete(SHARED_CHATS, max_new_tokens=6)
    assert len({id(kept.prefix) for kept in backend._kept}) == 1 and backend._kept[0].prefix.length >= 16
    # One chat goes on alone: its cache is put together from the shared prefix and its own part.
    alone = SHARED_CHATS[1] + [{"role": "assistant", "content": got[1].text.strip()}, {"role": "tool", "content": "5"}]
    assert backend._reused_prefixes([backend.encode(alone)])[0][1] > backend._kept[0].prefix.length
    fresh = HFBackend(random_dir, reuse_turns=False, share_prefix=False)
    assert not fresh._prefix_attention
    assert backend.complete([alone], max_new_tokens=6) == fresh.complete([alone], max_new_tokens=6)
    assert backend._kept[0].prefix is None  # nothing to share in one chat


def test_only_a_model_on_full_sdpa_attention_switches_to_prefix_attention(random_dir):
    eager = AutoModelForCausalLM.from_pretrained(random_dir, attn_implementation="eager")
    assert not _use_prefix_attention(eager) and eager.config._attn_implementation == "eager"
    sdpa = AutoModelForCausalLM.from_pretrained(random_dir, attn_implementation="sdpa")
    assert _use_prefix_attention(sdpa) and sdpa.config._attn_implementation == prefix_attention.NAME


FRAGMENTS = ["Ann", " has", " 2", "3", " apples", ".", "\n", "  ", "é", "<|im_start|>", "<|im_end|>", "<|im", "|>",
             TOOL_CALL_START, TOOL_CALL_END, '{"name": "add"}', "add(a=2, b=3)", "Final answer: 5"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join), min_size=1, max_size=5))
def test_encoding_piece_by_piece_gives_the_tokenizers_own_ids(random_backend, contents):
    assert random_backend._added_tokens is not None  # the piecewise path, not the fallback
    roles = ["user", "assistant", "tool"]
    chat_ = [{"role": "system", "content": LONG_SYSTEM}] + [
        {"role": roles[i % 3], "content": text} for i, text in enumerate(contents)]
    tokenizer = random_backend.tokenizer
    text = tokenizer.apply_chat_template(chat_, add_generation_prompt=True, tokenize=False)
    assert random_backend.encode(chat_) == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert random_backend.encode(chat_) == random_backend.encode(chat_)  # from the cache of pieces, the same


def test_a_tokenizer_whose_added_tokens_touch_their_neighbours_is_encoded_whole(scripted):
    assert scripted._added_tokens is None  # PAYLOAD is an added token that is normalised with its text
    text = scripted.tokenizer.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)
    assert scripted.encode(CHATS[0]) == scripted.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_shared_prefix_always_leaves_every_row_a_token_of_its_own(random_backend):
    prompts = [list(range(40)), list(range(40)) + [7, 8]]  # the first is a prefix of the second
    assert random_backend._shared_prefix_length(prompts) == 39
    assert random_backend._shared_prefix_length([list(range(10)), list(range(10))]) == 0  # too short to pay


def test_sub_batches_give_the_same_completions_in_input_order(random_dir, random_backend):
    in_pairs = HFBackend(random_dir, batch_size=2)
    assert in_pairs.complete(CHATS, max_new_tokens=10) == random_backend.complete(CHATS, max_new_tokens=10)


def test_a_turn_stops_at_the_end_of_turn_token_and_keeps_tool_call_markup(scripted):
    [completion] = scripted.complete([CHATS[0]], max_new_tokens=40)
    # `<tool_call>` is a special token of this tokenizer, yet it stays in the text; `<|im_end|>` does not.
    assert completion.text == SCRIPTED_TEXT
    assert completion.finish_reason == "stop"
    assert completion.completion_tokens == 4 + len(scripted.tokenizer(SCRIPT_TEXT)["input_ids"])  # + im_end
    assert completion.tool_calls is None


def test_a_turn_cut_by_max_new_tokens_finishes_with_length(scripted):
    [completion] = scripted.complete([CHATS[0]], max_new_tokens=2)
    first_two = scripted.tokenizer(SCRIPT_TEXT)["input_ids"][:2]
    assert completion == Completion(scripted.tokenizer.decode(first_two), None, completion.prompt_tokens, 2, "length")


def test_rows_of_one_batch_stop_independently(scripted):
    completions = scripted.complete(CHATS, max_new_tokens=40)
    assert [c.text for c in completions] == [SCRIPTED_TEXT] * len(CHATS)
    assert {c.finish_reason for c in completions} == {"stop"}


def test_prompt_tokens_count_the_rendered_prompt_tools_included(scripted):
    tokenizer = scripted.tokenizer
    with_tools, without = scripted.complete([CHATS[0]], tools=[MULTIPLY_SCHEMA], max_new_tokens=1)[0], \
        scripted.complete([CHATS[0]], max_new_tokens=1)[0]
    rendered = tokenizer.apply_chat_template(CHATS[0], tools=[MULTIPLY_SCHEMA], add_generation_prompt=True,
                                             tokenize=False)
    assert '"name": "multiply"' in rendered
    assert with_tools.prompt_tokens == len(tokenizer(rendered)["input_ids"])
    assert without.prompt_tokens < with_tools.prompt_tokens


def test_seeded_sampling_is_reproducible(random_backend):
    sample = lambda seed: random_backend.complete(CHATS, max_new_tokens=6, temperature=1.0, seed=seed)  # noqa: E731
    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first
    assert [c.text for c in first] != [c.text for c in random_backend.complete(CHATS, max_new_tokens=6)]


def test_a_model_in_memory_is_used_without_changing_it(random_dir, random_backend):
    model = Qwen2ForCausalLM.from_pretrained(random_dir)
    tokenizer = AutoTokenizer.from_pretrained(random_dir)
    tokenizer.padding_side = "right"  # a training setting; generation must not depend on it
    model.train()
    backend = HFBackend.from_loaded(model, tokenizer, name="student")
    assert backend.complete(CHATS, max_new_tokens=10) == random_backend.complete(CHATS, max_new_tokens=10)
    assert backend.name == "student"
    assert model.training and tokenizer.padding_side == "right"


def test_a_peft_adapter_is_loaded_on_top_of_the_model(tmp_path, random_dir, random_backend):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = Qwen2ForCausalLM.from_pretrained(random_dir)
    # A freshly initialised LoRA adapter is the identity (its B matrices are zero).
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "adapter")
    backend = HFBackend(random_dir, adapter=tmp_path / "adapter")
    assert isinstance(backend.model, PeftModel)
    assert backend.name == f"{random_dir}+{tmp_path / 'adapter'}"
    assert backend.complete(CHATS, max_new_tokens=10) == random_backend.complete(CHATS, max_new_tokens=10)


def test_a_4bit_nf4_model_runs_on_cpu(scripted_dir):
    from bitsandbytes.nn import Linear4bit

    backend = HFBackend(scripted_dir, load_in_4bit=True, device="cpu")
    quantized = [m for m in backend.model.modules() if isinstance(m, Linear4bit)]
    assert len(quantized) == 7  # q, k, v, o, gate, up, down of the one decoder layer
    state = quantized[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # nested: double quantisation
    assert quantized[0].compute_dtype == torch.float32
    assert backend.complete(CHATS[:2], max_new_tokens=40)[1].text == SCRIPTED_TEXT


def test_4bit_layer_shapes_the_cpu_kernel_cannot_run_are_refused_at_load_time(random_dir):
    from bitsandbytes.functional import has_avx512bf16

    if has_avx512bf16():  # its packed kernel needs input sizes in multiples of 64; this model's are 32
        with pytest.raises(BackendError, match=r"model\.layers\.0\.self_attn\.q_proj \(32 → 32\).*multiples of 64"):
            HFBackend(random_dir, load_in_4bit=True, device="cpu")
    else:
        [completion] = HFBackend(random_dir, load_in_4bit=True, device="cpu").complete([CHATS[0]], max_new_tokens=3)
        assert completion.completion_tokens >= 1


def test_a_hub_id_fails_at_once_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(BackendError, match=r"'fcdpo-test/no-such-model'.*HF_HUB_OFFLINE=1"):
        HFBackend("fcdpo-test/no-such-model")
    assert time.perf_counter() - started < 5


def test_a_missing_local_folder_is_named_in_the_error(tmp_path):
    with pytest.raises(BackendError, match="no such folder"):
        HFBackend(tmp_path / "missing")
    with pytest.raises(BackendError, match=r"adapter .*no such folder"):
        HFBackend(tmp_path, adapter="./missing-adapter")


# --------------------------------------------------------------------------- message conversion

JSON_CHAIN = [
    {"role": "system", "content": "Solve it."},
    {"role": "user", "content": "What is (3 * 4) + (2 * 5)?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}},
        {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 1}}},
        {"type": "function", "function": {"name": "multiply", "arguments": {"a": 2, "b": 5}}},
    ]},
    {"role": "tool", "name": "multiply", "content": "12"},
    {"role": "tool", "name": "multiply", "content": "10"},
    {"role": "tool", "name": "add", "content": "2"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "add", "arguments": '{"a": 12, "b": 10}'}}]},
    {"role": "tool", "name": "add", "content": "22"},
    {"role": "assistant", "content": "Final answer: 22"},
]


def test_tool_calls_get_stable_ids_and_json_string_arguments():
    original = json.dumps(JSON_CHAIN)
    converted = to_openai_messages(JSON_CHAIN)
    assert json.dumps(JSON_CHAIN) == original  # the input is left alone
    assert converted[2]["tool_calls"] == [
        {"id": "call_2_0", "type": "function", "function": {"name": "multiply", "arguments": '{"a": 3, "b": 4}'}},
        {"id": "call_2_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 1}'}},
        {"id": "call_2_2", "type": "function", "function": {"name": "multiply", "arguments": '{"a": 2, "b": 5}'}},
    ]
    # Each result answers the first unanswered call of the same function.
    assert [m["tool_call_id"] for m in converted[3:6]] == ["call_2_0", "call_2_2", "call_2_1"]
    assert converted[6]["tool_calls"][0]["function"]["arguments"] == '{"a": 12, "b": 10}'
    assert converted[7] == {"role": "tool", "name": "add", "content": "22", "tool_call_id": "call_6_0"}
    assert converted[0] == JSON_CHAIN[0] and converted[8] == JSON_CHAIN[8]
    assert to_openai_messages(JSON_CHAIN) == converted  # ids are stable


def test_python_syntax_chains_keep_their_text_and_get_a_tool_call_id():
    chain = [{"role": "user", "content": "What is 3 times 4?"},
             {"role": "assistant", "content": "multiply(a=3, b=4)"},
             {"role": "tool", "name": "multiply", "content": "12"}]
    assert to_openai_messages(chain) == chain[:2] + [{**chain[2], "tool_call_id": "call_1_0"}]


# --------------------------------------------------------------------------- OpenAIBackend against a stub


class StubServer:
    """An HTTP server answering /v1/chat/completions with `respond(body, index) -> (status, json, delay_s)`."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    index = len(stub.requests)
                    stub.requests.append(body)
                    stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                status, payload, delay = stub.respond(body, index)
                time.sleep(delay)
                with stub._lock:
                    stub.in_flight -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def answer(content="Final answer: 12", tool_calls=None, finish_reason="stop", prompt_tokens=20, completion_tokens=5):
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "stub",
        "choices": [{"index": 0, "finish_reason": finish_reason,
                     "message": {"role": "assistant", "content": content, "tool_calls": tool_calls}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


@pytest.fixture
def stub():
    servers = []

    def start(respond):
        servers.append(StubServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def backend_for(server_url: str, **options) -> OpenAIBackend:
    backend = OpenAIBackend("stub-model", server_url, **{"backoff": 0.01, "max_retries": 2, **options})
    backend.slept = []
    backend.sleep = backend.slept.append
    return backend


def test_requests_run_concurrently_and_results_come_back_in_input_order(stub):
    # The first chats take longest, so they finish last.
    server = stub(lambda body, i: (200, answer(body["messages"][-1]["content"].upper()),
                                   0.3 - 0.1 * int(body["messages"][-1]["content"][-1])))
    chats = [chat(f"question {k}", system=None) for k in range(3)]
    completions = backend_for(server.url, max_concurrency=3).complete(chats)
    assert [c.text for c in completions] == ["QUESTION 0", "QUESTION 1", "QUESTION 2"]
    assert server.max_in_flight == 3


def test_request_fields_follow_the_arguments(stub, monkeypatch):
    monkeypatch.delenv("FCDPO_TEST_KEY", raising=False)
    server = stub(lambda body, i: (200, answer(), 0))
    backend_for(server.url, api_key_env="FCDPO_TEST_KEY", max_concurrency=1).complete(
        [CHATS[0], CHATS[0]], max_new_tokens=17, temperature=0.7, seed=5, tools=[MULTIPLY_SCHEMA])
    assert [r["seed"] for r in server.requests] == [5, 6]  # copies of one chat sample differently
    first = server.requests[0]
    assert (first["model"], first["max_tokens"], first["temperature"]) == ("stub-model", 17, 0.7)
    assert first["tools"] == [MULTIPLY_SCHEMA] and first["messages"] == CHATS[0]
    assert server.headers[0]["authorization"] == "Bearer EMPTY"  # a local server takes any key
    monkeypatch.setenv("FCDPO_TEST_KEY", "sk-test")
    without_tools = backend_for(server.url, api_key_env="FCDPO_TEST_KEY", native_tools=False)
    without_tools.complete([CHATS[0]], tools=[MULTIPLY_SCHEMA])
    assert server.headers[2]["authorization"] == "Bearer sk-test"
    assert "tools" not in server.requests[2] and "seed" not in server.requests[2]


def test_usage_and_finish_reason_are_reported(stub):
    server = stub(lambda body, i: (200, answer("Let me", finish_reason="length", prompt_tokens=31,
                                               completion_tokens=2), 0))
    assert backend_for(server.url).complete([CHATS[0]]) == [Completion("Let me", None, 31, 2, "length")]


TOOL_CALL = {"id": "x1", "type": "function", "function": {"name": "multiply", "arguments": '{"a": 3, "b": 4}'}}


def test_native_tool_calls_come_back_as_dicts_with_parsed_arguments(stub):
    bad = {"id": "x2", "type": "function", "function": {"name": "add", "arguments": "{a: 1"}}
    server = stub(lambda body, i: (200, answer(None, [TOOL_CALL, bad], finish_reason="tool_calls"), 0))
    [completion] = backend_for(server.url).complete([CHATS[0]], tools=[MULTIPLY_SCHEMA])
    assert completion.text == "" and completion.finish_reason == "stop"
    assert completion.tool_calls == [
        {"type": "function", "function": {"name": "multiply", "arguments": {"a": 3, "b": 4}}},
        {"type": "function", "function": {"name": "add", "arguments": "{a: 1"}},  # not JSON: left to the caller
    ]


def test_without_native_tools_parsed_tool_calls_are_written_back_as_text(stub):
    server = stub(lambda body, i: (200, answer("Computing.", [TOOL_CALL], finish_reason="tool_calls"), 0))
    [completion] = backend_for(server.url, native_tools=False).complete([CHATS[0]])
    assert completion.tool_calls is None
    assert completion.text == f"Computing.\n<tool_call>\n{PAYLOAD}\n</tool_call>"


def test_rate_limits_and_server_errors_are_retried_with_exponential_backoff(stub):
    statuses = [429, 503, 200]
    server = stub(lambda body, i: (statuses[i], answer() if statuses[i] == 200 else {"error": "busy"}, 0))
    backend = backend_for(server.url, max_retries=3, backoff=0.25)
    assert backend.complete([CHATS[0]])[0].text == "Final answer: 12"
    assert backend.slept == [0.25, 0.5]
    assert backend.retry_delays == [0.25, 0.5, 1.0]


def test_a_server_error_that_persists_is_a_backend_error_after_the_retries(stub):
    server = stub(lambda body, i: (500, {"error": "CUDA out of memory"}, 0))
    backend = backend_for(server.url, max_retries=2)
    expected = r"\(model 'stub-model'\) failed 3 attempt\(s\): HTTP 500: CUDA out of memory \(3×\)$"
    with pytest.raises(BackendError, match=expected):
        backend.complete([CHATS[0]])
    assert len(server.requests) == 3 and backend.slept == [0.01, 0.02]


def test_a_bad_request_is_not_retried(stub):
    server = stub(lambda body, i: (404, {"error": {"message": "The model `stub-model` does not exist."}}, 0))
    backend = backend_for(server.url)
    with pytest.raises(BackendError) as error:
        backend.complete([CHATS[0], CHATS[1]], max_new_tokens=3)
    assert server.url in str(error.value) and "HTTP 404: The model `stub-model` does not exist." in str(error.value)
    assert backend.slept == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_is_retried_then_reported():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    backend = backend_for(url, max_retries=1)
    with pytest.raises(BackendError, match=r"failed 2 attempt\(s\): connection failed .* \(2×\)$"):
        backend.complete([CHATS[0]])
    assert backend.slept == [0.01]


def test_a_server_that_never_answers_times_out_and_is_retried():
    with socket.socket() as listener:  # accepts connections (the kernel does) but never reads or answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        backend = backend_for(f"http://127.0.0.1:{listener.getsockname()[1]}/v1", timeout=0.2, max_retries=2)
        started = time.perf_counter()
        with pytest.raises(BackendError, match=r"failed 3 attempt\(s\): no answer within 0.2 s \(3×\)$"):
            backend.complete([CHATS[0]])
        assert time.perf_counter() - started < 5
    assert backend.slept == [0.01, 0.02]


# --------------------------------------------------------------------------- load_backend


def test_load_backend_builds_the_kind_named(scripted_dir):
    backend = load_backend({"kind": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1", "timeout": 5})
    assert isinstance(backend, OpenAIBackend) and backend.timeout == 5 and backend.name == "m"
    backend = load_backend({"kind": "hf", "model": str(scripted_dir), "batch_size": 2})
    assert isinstance(backend, HFBackend) and backend.batch_size == 2


def test_a_model_in_the_run_folder_is_named_as_the_profile_names_it(scripted_dir):
    # Records carry the backend's name: `lab/teacher`, not the path of one machine's run folder.
    run = scripted_dir.parent
    backend = load_backend({"kind": "hf", "model": scripted_dir.name}, root=run)
    assert backend.name == scripted_dir.name
    assert backend.complete(CHATS, max_new_tokens=4) == HFBackend(scripted_dir).complete(CHATS, max_new_tokens=4)
    assert load_backend({"kind": "hf", "model": str(scripted_dir)}, root=run).name == str(scripted_dir)


@pytest.mark.parametrize("spec, message", [
    ({"model": "m"}, r"kind must be one of \['hf', 'openai'\], got None"),
    ({"kind": "vllm", "model": "m"}, r"kind must be one of"),
    ({"kind": "hf", "model": "m", "load_in_4bits": True},
     r"unknown key\(s\) \['load_in_4bits'\] for kind 'hf'; valid keys are \[.*'load_in_4bit'"),
    ({"kind": "openai", "model": "m"}, r"kind 'openai' needs \['base_url'\]"),
])
def test_load_backend_rejects_bad_specs_by_name(spec, message):
    with pytest.raises(ValueError, match=message):
        load_backend(spec)


def test_a_named_chat_template_replaces_the_models_own(tmp_path):
    from fcdpo.backends import HFBackend
    from fcdpo.chat_templates import CHAT_TEMPLATES
    from fcdpo.tinylab import build_model, build_tokenizer

    tokenizer = build_tokenizer(["Ann has 3 apples.", "add(a=1, b=2)"] * 20, vocab_size=300)
    build_model(tokenizer, hidden_size=64, num_layers=1, num_heads=2).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    backend = HFBackend(tmp_path, chat_template="mistral-tools")
    assert backend.tokenizer.chat_template == CHAT_TEMPLATES["mistral-tools"]
