"""The tiny lab: tokenizer, chat template, models, SFT training and the build cache."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from fcdpo.finetuning import shared_prefix_loss
from fcdpo.tinylab import (
    END_OF_TEXT,
    IM_END,
    IM_START,
    PAD,
    TOOL_CALL_END,
    TOOL_CALL_START,
    LabConfig,
    ModelRecipe,
    SFTSettings,
    build_lab,
    build_model,
    build_tokenizer,
    lab_conversations,
    train_sft,
)

SYSTEM = "You solve problems by calling functions.\n\nFunctions:\nadd(a: float, b: float)\n  Example: add(a=3, b=4)"
PYTHON_CHAT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Ana has 12 apples and finds 7 more. How many apples does Ana have?"},
    {"role": "assistant", "content": "add(a=12, b=7)"},
    {"role": "tool", "name": "add", "content": "19"},
    {"role": "assistant", "content": "Final answer: 19"},
]
JSON_CHAT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Ana has 12 apples and finds 7 more. How many apples does Ana have?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 12, "b": 7}}}],
    },
    {"role": "tool", "name": "add", "content": "19"},
    {"role": "assistant", "content": "Final answer: 19"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers exactly.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    }
]
CORPUS = [m["content"] for m in PYTHON_CHAT] * 20 + ['{"name": "add", "arguments": {"a": 3, "b": 4}}'] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS, vocab_size=320)


def _chats(n: int) -> list[list[dict]]:
    chats = []
    for i in range(n):
        a, b = 3 + i % 7, 2 + i % 5
        chats.append([
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Ana has {a} apples and finds {b} more. How many apples does Ana have?"},
            {"role": "assistant", "content": f"add(a={a}, b={b})"},
            {"role": "tool", "name": "add", "content": str(a + b)},
            {"role": "assistant", "content": f"Final answer: {a + b}"},
        ])
    return chats


TINY_SFT = SFTSettings(steps=3, batch_size=4, warmup_steps=1, learning_rate=1e-3)


def test_every_digit_is_its_own_token(tokenizer):
    tokens = tokenizer.tokenize("Ana has 1234 apples; add(a=56, b=7890)")
    digits = [t for t in tokens if any(c.isdigit() for c in t)]
    assert digits == list("1234567890")


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=60))
def test_any_text_decodes_back_unchanged(tokenizer, text):
    text = text.replace(IM_START, "").replace(IM_END, "")  # special tokens are tested elsewhere
    import unicodedata

    text = unicodedata.normalize("NFC", text)  # the tokenizer normalises to NFC, like Qwen2's
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_special_tokens_are_single_tokens_and_pad_is_not_eos(tokenizer):
    for token in (IM_START, IM_END, END_OF_TEXT, PAD, TOOL_CALL_START, TOOL_CALL_END):
        assert tokenizer.tokenize(f"x{token}y")[1] == token
    assert tokenizer.eos_token == IM_END
    assert tokenizer.pad_token == PAD
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_python_chat_renders_as_chatml_with_short_tool_turns(tokenizer):
    text = tokenizer.apply_chat_template(PYTHON_CHAT, tokenize=False)
    assert text == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{PYTHON_CHAT[1]['content']}<|im_end|>\n"
        "<|im_start|>assistant\nadd(a=12, b=7)<|im_end|>\n"
        "<|im_start|>tool\n19<|im_end|>\n"
        "<|im_start|>assistant\nFinal answer: 19<|im_end|>\n"
    )
    ids = tokenizer.apply_chat_template(PYTHON_CHAT, tokenize=True, return_dict=True)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_generation_prompt_opens_an_assistant_turn(tokenizer):
    text = tokenizer.apply_chat_template(PYTHON_CHAT[:2], tokenize=False, add_generation_prompt=True)
    assert text.endswith(f"{PYTHON_CHAT[1]['content']}<|im_end|>\n<|im_start|>assistant\n")


def test_json_tool_calls_and_tool_schemas_render(tokenizer):
    text = tokenizer.apply_chat_template(JSON_CHAT, tools=TOOLS, tokenize=False)
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}\n\nTools:\n<tools>\n{json.dumps(TOOLS[0])}\n</tools>\n")
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 12, "b": 7}}\n</tool_call><|im_end|>\n'
        in text
    )
    # Arguments already serialised (as OpenAI returns them) render the same way.
    as_string = json.loads(json.dumps(JSON_CHAT))
    as_string[2]["tool_calls"][0]["function"]["arguments"] = '{"a": 12, "b": 7}'
    assert tokenizer.apply_chat_template(as_string, tools=TOOLS, tokenize=False) == text


def test_tools_without_a_system_message_still_get_a_system_turn(tokenizer):
    text = tokenizer.apply_chat_template(JSON_CHAT[1:], tools=TOOLS, tokenize=False)
    assert text.startswith("<|im_start|>system\nTools:\n<tools>\n")


@pytest.mark.parametrize("chat", [PYTHON_CHAT, JSON_CHAT], ids=["python", "json"])
def test_assistant_mask_covers_exactly_the_assistant_turns_and_their_end(tokenizer, chat):
    out = tokenizer.apply_chat_template(
        chat, tools=TOOLS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [i for i, keep in zip(out["input_ids"], out["assistant_masks"]) if keep]
    expected = "".join(
        tokenizer.apply_chat_template([m], tokenize=False).removeprefix("<|im_start|>assistant\n").removesuffix("\n")
        for m in chat
        if m["role"] == "assistant"
    )
    assert tokenizer.decode(masked) == expected  # no system, user or tool token, and every turn's end


def test_saved_lab_model_reloads_with_the_same_tokenizer_and_weights(tokenizer, tmp_path):
    model = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=3)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = tokenizer.apply_chat_template(JSON_CHAT, tools=TOOLS, tokenize=False)
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.apply_chat_template(JSON_CHAT, tools=TOOLS, tokenize=False) == text
    assert (reloaded.pad_token, reloaded.eos_token) == (PAD, IM_END)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert again.config.tie_word_embeddings
    assert tokenizer.convert_tokens_to_ids(IM_END) in again.generation_config.eos_token_id


def test_model_weights_depend_only_on_the_seed(tokenizer):
    first, same, other = (build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=s) for s in (1, 1, 2))
    weights = [m.model.embed_tokens.weight for m in (first, same, other)]
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])
    assert first.lm_head.weight is first.model.embed_tokens.weight  # tied


def test_shared_prefix_loss_equals_the_plain_loss_and_gradients(tokenizer):
    chats = _chats(3)
    chats[2][0] = {"role": "system", "content": "A different, shorter system prompt."}
    rows = [
        tokenizer.apply_chat_template(c, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        for c in chats
    ]
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((3, width), tokenizer.pad_token_id)
    mask = torch.zeros((3, width), dtype=torch.long)
    labels = torch.full((3, width), -100)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        mask[i, :n] = 1
        labels[i, :n] = torch.where(torch.tensor(r["assistant_masks"]) == 1, ids[i, :n], -100)
    model = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    model.train()
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    plain = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    plain.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    shared = shared_prefix_loss(model, ids, mask, labels, tokenizer.convert_tokens_to_ids(IM_END))
    shared.backward()
    assert shared.item() == pytest.approx(plain.item(), rel=1e-5)
    for a, b in zip(plain_grads, (p.grad for p in model.parameters())):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_training_is_deterministic_and_lowers_the_loss(tokenizer):
    chats = _chats(12)
    models = [build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0) for _ in range(2)]
    before = models[0].model.embed_tokens.weight.clone()
    stats = [train_sft(m, tokenizer, chats, TINY_SFT) for m in models]
    assert stats[0]["steps"] == 3 and stats[0]["examples"] == 12
    assert stats[0]["loss"] == stats[1]["loss"]
    assert torch.equal(models[0].model.embed_tokens.weight, models[1].model.embed_tokens.weight)
    assert not torch.equal(models[0].model.embed_tokens.weight, before)


@pytest.mark.slow
def test_build_lab_reuses_its_cache_and_rebuilds_when_the_config_changes(tmp_path):
    recipe = ModelRecipe(hidden_size=32, num_layers=1, num_heads=2, problems_per_task=8, sft=TINY_SFT)
    config = LabConfig(vocab_size=300, teacher=recipe, student=recipe)
    quiet = lambda _: None  # noqa: E731
    first = build_lab(config, tmp_path, {"toy": _chats(8)}, log=quiet)
    again = build_lab(config, tmp_path, {"toy": _chats(8)}, log=quiet)
    assert not first.reused and again.reused
    assert again.path == first.path and (first.teacher_path / "config.json").exists()
    assert set(first.report["models"]) == {"teacher", "student"}
    changed = build_lab(LabConfig(vocab_size=301, teacher=recipe, student=recipe), tmp_path, {"toy": _chats(8)}, log=quiet)
    other_data = build_lab(config, tmp_path, {"toy": _chats(9)[1:]}, log=quiet)
    assert not changed.reused and not other_data.reused
    assert len({first.path, changed.path, other_data.path}) == 3
    builds = sorted(p.name for p in (first.path, changed.path, other_data.path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*builds, "models"])
    student_only = LabConfig(vocab_size=300, teacher=recipe, student=ModelRecipe(
        hidden_size=32, num_layers=1, num_heads=2, problems_per_task=8, sft=TINY_SFT, seed=1))
    log = []
    build_lab(student_only, tmp_path, {"toy": _chats(8)}, log=log.append)  # a new student, the same teacher
    assert any("the teacher was trained by an earlier build" in m for m in log)
    assert any("training the student" in m for m in log) and not any("training the teacher" in m for m in log)


def test_lab_conversations_are_the_agents_gold_chains_without_held_out_questions():
    from fcdpo.agent import gold_messages
    from fcdpo.tasks import get_task

    task = get_task("math", ["add", "subtract", "multiply", "divide"])
    difficulty = {"min_steps": 2, "max_steps": 2, "max_number": 9, "distractor_rate": 0.0}
    recipe = ModelRecipe(problems_per_task=30)
    config = LabConfig(teacher=recipe, student=recipe)
    held_out = [p.question for p in task.generate(10, seed=config.data_seed, **difficulty)[::2]]
    chats = lab_conversations(config, {"math": task}, {"math": difficulty}, "python", held_out)["math"]
    assert len(chats) == 30
    questions = [chat[1]["content"] for chat in chats]
    assert not set(questions) & set(held_out) and len(set(questions)) == 30
    first = task.generate(2, seed=config.data_seed, **difficulty)[1]  # the first one not held out
    assert chats[0] == gold_messages(first, task, "python")
    assert chats[0][0]["content"] == task.system_prompt("python")


def test_task_weights_set_each_tasks_share_of_the_training_rows():
    from fcdpo.tinylab import _interleave

    conversations = {"fol": [[{"role": "user", "content": f"f{i}"}] for i in range(5)],
                     "math": [[{"role": "user", "content": f"m{i}"}] for i in range(50)]}
    rows = _interleave(conversations, per_task=20, seed=0, rows=400, weights={"math": 3, "fol": 1})
    tasks = [row[0]["content"][0] for row in rows]
    assert len(rows) == 400 and tasks.count("m") == 300 and tasks.count("f") == 100
    assert {row[0]["content"] for row in rows if row[0]["content"][0] == "m"} == {f"m{i}" for i in range(20)}
    equal = _interleave(conversations, per_task=20, seed=0, rows=400)
    assert [row[0]["content"][0] for row in equal].count("f") == 200  # all five fol chains, cycled
    assert tasks != [row[0]["content"][0] for row in _interleave(conversations, 20, seed=1, rows=400,
                                                                 weights={"math": 3, "fol": 1})]
    with pytest.raises(ValueError, match="task_weights"):
        _interleave(conversations, 20, seed=0, rows=10, weights={"maths": 1})


def test_listed_words_are_single_tokens_in_sentences_and_in_calls():
    words = ["lempus", "Lempus", "Wren"]
    corpus = ['Wren is a lempus. Lempuses are happy.\nadd_fact(entity="Wren", concept="lempus")'] * 30
    tokenizer = build_tokenizer(corpus, vocab_size=300, words=words)
    ids = tokenizer.encode(corpus[0])
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces.count("lempus") == 2 and pieces.count("Wren") == 2 and "Lempus" in pieces  # `Lempus` + `es`
    assert tokenizer.decode(ids) == corpus[0]
    assert " lempus" not in pieces
    plain = build_tokenizer(corpus, vocab_size=300)
    assert " lempus" in [plain.decode([i]) for i in plain.encode(corpus[0])]  # BPE alone: two spellings


@pytest.mark.slow
def test_an_interrupted_build_resumes_and_keeps_the_finished_teacher(tmp_path):
    recipe = ModelRecipe(hidden_size=32, num_layers=1, num_heads=2, problems_per_task=8, sft=TINY_SFT)
    config = LabConfig(vocab_size=300, teacher=recipe, student=recipe)
    calls = []

    def stop_at_the_student(message):
        calls.append(message)
        if "training the student" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_lab(config, tmp_path, {"toy": _chats(8)}, log=stop_at_the_student)
    partial = [p for p in tmp_path.iterdir() if p.name != "models"]
    assert len(partial) == 1 and partial[0].name.endswith(".partial")
    assert [p.name for p in (tmp_path / "models").glob("teacher-*/stats.json")]
    log = []
    lab = build_lab(config, tmp_path, {"toy": _chats(8)}, log=log.append)
    assert any("the teacher was trained by an earlier build" in m for m in log)
    assert not any("training the teacher" in m for m in log)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([lab.path.name, "models"])
    fresh = build_lab(config, tmp_path / "other", {"toy": _chats(8)}, log=lambda _: None)
    for role in ("teacher", "student"):  # resuming gives the same models as building in one go
        a = AutoModelForCausalLM.from_pretrained(lab.path / role).state_dict()
        b = AutoModelForCausalLM.from_pretrained(fresh.path / role).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sft_resumes_from_its_last_checkpoint(tokenizer, tmp_path):
    chats = _chats(12)
    settings = SFTSettings(steps=10, batch_size=2, warmup_steps=1, learning_rate=1e-3)
    whole = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    train_sft(whole, tokenizer, chats, settings)
    first = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    with pytest.raises(KeyboardInterrupt):
        def interrupt(message):
            if message.startswith("step 6/"):
                raise KeyboardInterrupt
        train_sft(first, tokenizer, chats, settings, log=interrupt, checkpoint_dir=tmp_path)
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-5"]  # step 6 is reported before it is saved
    resumed = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    log = []
    train_sft(resumed, tokenizer, chats, settings, log=log.append, checkpoint_dir=tmp_path)
    assert log[0].startswith("resuming from") and log[0].endswith("checkpoint-5")
    for name, weight in whole.state_dict().items():
        assert torch.allclose(weight, resumed.state_dict()[name], atol=1e-6), name


@pytest.mark.slow
def test_an_exported_lab_is_checked_by_its_manifest(tmp_path):
    from fcdpo.tinylab import LabError, export_lab, verify_shipped

    recipe = ModelRecipe(hidden_size=32, num_layers=1, num_heads=2, problems_per_task=8, sft=TINY_SFT)
    lab = build_lab(LabConfig(vocab_size=300, teacher=recipe, student=recipe), tmp_path / "builds",
                    {"toy": _chats(8)}, log=lambda _: None)
    measured = []
    manifest = export_lab(lab, tmp_path / "shipped", "k" * 16,
                          dev_accuracy=lambda t, s: measured.append((t.name, s.name)) or {"teacher": {"toy": 0.5}})
    assert measured == [("teacher", "student")]
    assert verify_shipped(tmp_path / "shipped") == manifest
    assert manifest["key"] == "k" * 16 and manifest["dev_accuracy"] == {"teacher": {"toy": 0.5}}
    assert {"teacher/model.safetensors", "student/model.safetensors", "teacher/tokenizer.json"} <= set(manifest["files"])
    assert json.loads((tmp_path / "shipped" / "teacher" / "config.json").read_text())["dtype"] == "float16"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "shipped" / "teacher", dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(lab.teacher_path).state_dict()
    for name, weight in loaded.state_dict().items():
        assert torch.allclose(weight, original[name], atol=1e-2), name
    weights = tmp_path / "shipped" / "student" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(LabError, match=r"student/model.safetensors has sha256"):
        verify_shipped(tmp_path / "shipped")
    weights.unlink()
    with pytest.raises(LabError, match=r"student/model.safetensors is missing"):
        verify_shipped(tmp_path / "shipped")
    (tmp_path / "shipped" / "manifest.json").write_text("{not json")
    with pytest.raises(LabError, match="not a valid lab manifest"):
        verify_shipped(tmp_path / "shipped")
    with pytest.raises(LabError, match="make lab"):
        verify_shipped(tmp_path / "nowhere")


def _ship_a_tiny_lab(tmp_path):
    """Build a tiny tiny-cpu lab into `<tmp>/run` and export it to `<tmp>/shipped`; returns the
    overrides that use the shipped copy (run folder `<tmp>/other`)."""
    from fcdpo.config import load_profile
    from fcdpo.tinylab import export_lab, profile_lab

    tiny = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "problems_per_task": 20,
            "sft": {"steps": 2, "batch_size": 2, "warmup_steps": 0}}
    overrides = {"run_dir": str(tmp_path / "run"), "lab.shipped": None, "lab.teacher": tiny, "lab.student": tiny,
                 "tasks.math.train": 3, "tasks.math.eval": 3, "tasks.math.dev": 3,
                 "tasks.fol.train": 3, "tasks.fol.eval": 3, "tasks.fol.dev": 3}
    built = profile_lab(load_profile("tiny-cpu", overrides), log=lambda _: None)
    export_lab(built, tmp_path / "shipped", built.data_key)
    return {**overrides, "lab.shipped": str(tmp_path / "shipped"), "run_dir": str(tmp_path / "other")}


@pytest.mark.slow
def test_a_profile_uses_its_shipped_lab_only_when_it_was_built_from_the_profiles_settings(tmp_path):
    from fcdpo.config import load_profile
    from fcdpo.tinylab import LabError, profile_lab

    shipped = _ship_a_tiny_lab(tmp_path)
    log = []
    used = profile_lab(load_profile("tiny-cpu", shipped), log=log.append)
    assert used.reused and used.path == tmp_path / "shipped" and "hashes checked" in log[0]
    assert (tmp_path / "other" / "lab" / "teacher" / "model.safetensors").exists()
    assert not (tmp_path / "other" / "lab" / "builds").exists()  # nothing was built
    with pytest.raises(LabError, match="rebuild it with `make lab`"):
        profile_lab(load_profile("tiny-cpu", {**shipped, "lab.data_seed": 7}), log=lambda _: None)
    with pytest.raises(LabError, match="rebuild it with `make lab`"):  # other problems, other training data
        profile_lab(load_profile("tiny-cpu", {**shipped, "tasks.fol.difficulty.distractors": 2}), log=lambda _: None)


def test_answer_only_training_puts_loss_on_the_final_answer_turn_only(tokenizer):
    chats = _chats(4)
    model = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    whole = train_sft(build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2), tokenizer, chats, TINY_SFT)
    answers = train_sft(model, tokenizer, chats, TINY_SFT, answer_only=True)
    rows = [chats[i % len(chats)] for i in range(TINY_SFT.steps * TINY_SFT.batch_size)]
    # each row's loss: the final turn's text and its end-of-turn token
    expected = sum(len(tokenizer(chat[-1]["content"], add_special_tokens=False)["input_ids"]) + 1 for chat in rows)
    assert answers["loss_tokens"] == expected
    assert answers["tokens"] == whole["tokens"] and whole["loss_tokens"] > expected
    with pytest.raises(ValueError, match="end with an assistant turn"):
        train_sft(model, tokenizer, [chat[:-1] for chat in chats], TINY_SFT, answer_only=True)


@pytest.mark.slow
def test_an_answer_drill_continues_the_kept_sft_model_and_leaves_other_keys_alone(tmp_path):
    from dataclasses import replace

    from fcdpo.settings import AnswerDrill
    from fcdpo.tinylab import lab_key

    recipe = ModelRecipe(hidden_size=32, num_layers=1, num_heads=2, problems_per_task=8, sft=TINY_SFT)
    plain = LabConfig(vocab_size=300, teacher=recipe, student=recipe)
    data = {"toy": _chats(8), "other": _chats(8)}
    build_lab(plain, tmp_path, data, log=lambda _: None)
    drill = AnswerDrill(tasks=["toy"], sft=SFTSettings(steps=2, batch_size=4, warmup_steps=0))
    drilled = replace(plain, student=replace(recipe, answer_drill=drill))
    log = []
    lab = build_lab(drilled, tmp_path, data, log=log.append)
    assert not lab.reused and lab_key(drilled, data) != lab_key(plain, data)
    assert any("the student's SFT was trained by an earlier build" in m for m in log)
    assert any("answer drill for the student (2 steps of 4, toy" in m for m in log)
    assert not any("training the" in m for m in log)  # neither model's SFT ran again
    stats = lab.report["models"]["student"]["answer_drill"]
    assert stats["steps"] == 2 and stats["examples"] == 8
    before = AutoModelForCausalLM.from_pretrained(tmp_path / lab_key(plain, data) / "student").state_dict()
    after = AutoModelForCausalLM.from_pretrained(lab.student_path).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nope'\]"):
        build_lab(replace(plain, student=replace(recipe, answer_drill=AnswerDrill(tasks=["nope"]))), tmp_path, data,
                  log=lambda _: None)


@pytest.mark.slow
def test_a_rebuild_takes_the_shipped_teacher_when_only_the_student_changes(tmp_path):
    from fcdpo.config import load_profile
    from fcdpo.tinylab import export_lab, profile_lab

    shipped = _ship_a_tiny_lab(tmp_path)
    log = []
    rebuilt = profile_lab(load_profile("tiny-cpu", {**shipped, "lab.student.seed": 1}), log=log.append, rebuild=True)
    assert any("the shipped teacher" in m and "reused" in m for m in log)
    assert not any("the shipped student" in m for m in log)  # its recipe changed: trained again
    assert not any("training the teacher" in m for m in log) and any("training the student" in m for m in log)
    assert rebuilt.report["models"]["teacher"]["reused_from"] == str(tmp_path / "shipped" / "teacher")
    export_lab(rebuilt, tmp_path / "again", rebuilt.data_key)
    for name in ("model.safetensors", "tokenizer.json"):  # the teacher's files come back byte for byte
        assert (tmp_path / "again" / "teacher" / name).read_bytes() == (tmp_path / "shipped" / "teacher" / name).read_bytes()
    log = []
    profile_lab(load_profile("tiny-cpu", {**shipped, "lab.data_seed": 7, "run_dir": str(tmp_path / "third")}),
                log=log.append, rebuild=True)  # other training data: nothing shipped fits
    assert not any("the shipped" in m for m in log) and any("training the teacher" in m for m in log)
    (tmp_path / "shipped" / "teacher" / "model.safetensors").write_bytes(b"changed")
    log = []
    profile_lab(load_profile("tiny-cpu", {**shipped, "run_dir": str(tmp_path / "fourth")}), log=log.append, rebuild=True)
    assert any("is not reused" in m and "model.safetensors" in m for m in log)
    assert any("training the teacher" in m for m in log)
