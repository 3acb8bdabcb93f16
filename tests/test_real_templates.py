"""fcdpo's chains and pairs under real tokenizers and chat templates: Qwen2.5-Instruct (colab-t4's
family), Qwen3 and Mistral-7B-Instruct-v0.2 (a100's student), with tiny random-weight models of the
same architectures where a model is needed. Nothing is downloaded: the tokenizer files are fixtures
in `../shared/fixtures/models/` (see its SOURCES.md for where each came from and its licence)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fcdpo.agent import read_turn
from fcdpo.backends import HFBackend
from fcdpo.chat_templates import PROBE, template_fault
from fcdpo.config import TrainingConfig
from fcdpo.preferences import build_pairs, restore_messages, restore_tools
from fcdpo.tasks import get_task
from fcdpo.training import TrainingError, assistant_tokens, load_tokenizer, tokenize_pair
from tests.test_preferences import scripted_chains

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "models"
if not FIXTURES.is_dir():
    pytest.skip(f"the real tokenizer fixtures are not here ({FIXTURES.resolve()} is absent: a clone without "
                "the shared fixtures folder)", allow_module_level=True)
pytestmark = pytest.mark.slow  # loads real tokenizers (megabytes each) and renders every chain under them

# name: (fixture folder, training.chat_template, the end-of-turn token the template writes, architecture)
TEMPLATES = {
    "qwen2.5": ("Qwen--Qwen2.5-0.5B-Instruct", None, "<|im_end|>", "qwen2"),
    "qwen3": ("Qwen--Qwen3-4B", "qwen3-tools", "<|im_end|>", "qwen3"),
    "mistral-v0.2": ("mistralai--Mistral-7B-Instruct-v0.2", "mistral-tools", "</s>", "mistral"),
}
HEADERS = ("<|im_start|>", "[INST]", "[/INST]", "<tool_response>", "Result:", "<|im_end|>\n")


@pytest.fixture(scope="module", params=list(TEMPLATES))
def template(request):
    folder, chat_template, end, arch = TEMPLATES[request.param]
    tokenizer = load_tokenizer(FIXTURES / folder, TrainingConfig(chat_template=chat_template))
    return request.param, tokenizer, end, arch


@pytest.fixture(scope="module", params=["python", "json"])
def chains(request):
    return request.param, scripted_chains("math", n=3, syntax=request.param) + \
        scripted_chains("fol", n=3, syntax=request.param)  # problem 2 has right and wrong chains


def _runs(ids, mask, end_id):
    """The masked stretches, each cut after an end-of-turn token: two assistant turns in a row (a thought,
    then a call) are adjacent under a template without a header between them (mistral-tools)."""
    runs, start = [], None
    for i, bit in enumerate(list(mask) + [0]):
        if bit and start is None:
            start = i
        if start is not None and (not bit or ids[i] == end_id):
            runs.append((start, i + 1 if bit else i))
            start = None
    return runs


def _calls(turn):
    return [(c.name, dict(c.arguments)) for c in turn.calls]


def test_every_chain_and_pair_renders_and_masks_exactly_the_models_own_tokens(template, chains):
    name, tokenizer, end, _ = template
    syntax, trajectories = chains
    end_id = tokenizer.convert_tokens_to_ids(end)
    tasks = {"math": get_task("math"), "fol": get_task("fol")}
    for chain in trajectories:  # every trajectory renders, with its tools
        text = tokenizer.apply_chat_template(chain.messages, tools=chain.tools or None, tokenize=False)
        assert chain.messages[1]["content"] in text
    rows, _ = build_pairs(trajectories, syntax=syntax)
    assert rows
    for row in rows:
        tokens = tokenize_pair(tokenizer, row)  # raises unless the prompt is a token prefix of prompt + chain
        prompt, tools = restore_messages(row["prompt"]), restore_tools(row.get("tools"))
        assert (tools is not None) == (syntax == "json")
        functions = tasks[row["task"]].functions()
        for side in ("chosen", "rejected"):
            completion = restore_messages(row[side])
            ids, mask = assistant_tokens(tokenizer, prompt + completion, tools)
            assert ids[: len(tokens["prompt_ids"])] == tokens["prompt_ids"]
            assert ids[len(tokens["prompt_ids"]):] == tokens[f"{side}_ids"]
            assert not any(mask[: len(tokens["prompt_ids"])])
            turns = [m for m in completion if m["role"] == "assistant"]
            runs = _runs(ids, mask, end_id)
            assert len(runs) == len(turns), f"{name}/{syntax}: one masked run per assistant turn"
            for (start, stop), message in zip(runs, turns):
                assert ids[stop - 1] == end_id  # each run ends with the template's end of turn ...
                written = tokenizer.decode(ids[start:stop - 1])
                assert not any(header in written for header in HEADERS)  # ... and holds no header or tool result
                if message.get("tool_calls"):  # the real template's tool call reads back as the same call
                    turn = read_turn(written, None, functions, "json")
                    expected = [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
                    assert turn.kind == "call" and _calls(turn) == expected
                else:
                    assert written.strip() == message["content"]
                    turn = read_turn(written, None, functions, syntax)
                    assert _calls(turn) == _calls(read_turn(message["content"], None, functions, syntax))
                    assert turn.kind == read_turn(message["content"], None, functions, syntax).kind
            # everything the model did not write is unmasked: every tool result is in the unmasked text
            unmasked = tokenizer.decode([i for i, bit in zip(ids, mask) if not bit])
            for message in completion:
                if message["role"] == "tool":
                    assert message["content"] in unmasked


def _tiny_model(arch, vocab_size, end_id):
    """A random-weight model of the architecture whose every next token is `end_id`."""
    from transformers import (
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    classes = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM),
               "mistral": (MistralConfig, MistralForCausalLM)}
    config_class, model_class = classes[arch]
    config = config_class(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=4096,
                          tie_word_embeddings=False)
    torch.manual_seed(0)
    model = model_class(config)
    head = torch.nn.Linear(16, vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[end_id] = 10.0
    model.lm_head = head
    return model.eval()


def test_generation_stops_at_the_templates_end_of_turn(template):
    name, tokenizer, end, arch = template
    end_id = tokenizer.convert_tokens_to_ids(end)
    backend = HFBackend.from_loaded(_tiny_model(arch, len(tokenizer), end_id), tokenizer, name=name)
    assert end_id in backend.stop_ids
    tools = get_task("math").functions().schemas()
    [completion] = backend.complete([PROBE[:2]], tools=tools, max_new_tokens=8)
    assert completion.finish_reason == "stop" and completion.completion_tokens == 1 and completion.text == ""


@pytest.mark.parametrize("folder, replacement, fault", [
    ("Qwen--Qwen3-4B", "qwen3-tools", "history is not stable"),
    ("mistralai--Mistral-7B-Instruct-v0.2", "mistral-tools", "cannot render tool turns"),
])
def test_a_template_that_cannot_be_trained_with_is_a_clear_error_naming_its_replacement(folder, replacement, fault):
    with pytest.raises(TrainingError, match=f"{fault}.*set training.chat_template: {replacement}"):
        load_tokenizer(FIXTURES / folder, TrainingConfig())
    fixed = load_tokenizer(FIXTURES / folder, TrainingConfig(chat_template=replacement))
    assert template_fault(fixed) is None


def test_qwen25_own_template_is_used_as_it_is():
    tokenizer = load_tokenizer(FIXTURES / TEMPLATES["qwen2.5"][0], TrainingConfig())
    from trl.chat_template_utils import has_generation_markers

    assert template_fault(tokenizer) is None and not has_generation_markers(tokenizer.chat_template)


def test_the_qwen3_replacement_differs_from_qwen3_only_in_keeping_earlier_think_blocks():
    """The generation prompt and a conversation's last turn are byte-identical to Qwen3's own template
    with enable_thinking=False; an earlier turn keeps its empty think block, where Qwen3 drops it."""
    from transformers import AutoTokenizer

    own = AutoTokenizer.from_pretrained(FIXTURES / "Qwen--Qwen3-4B")
    fixed = load_tokenizer(FIXTURES / "Qwen--Qwen3-4B", TrainingConfig(chat_template="qwen3-tools"))
    tools = get_task("math").functions().schemas()

    def both(messages, **kwargs):
        return (own.apply_chat_template(messages, tools=tools, tokenize=False, enable_thinking=False, **kwargs),
                fixed.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs))

    expected, got = both(PROBE[:2], add_generation_prompt=True)
    assert got == expected
    expected, got = both(PROBE[:3])
    assert got == expected
    expected, got = both(PROBE[:4], add_generation_prompt=True)
    empty_think = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert got == expected.replace("<|im_start|>assistant\nadd(", empty_think + "add(")
