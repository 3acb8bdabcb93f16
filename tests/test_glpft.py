"""GLPFT: role data from teacher chains, the two training stages, adapters and parameter counts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from fcdpo.agent import Trajectory, gold_messages
from fcdpo.finetuning import student_reference
from fcdpo.glpft import (
    STAGES,
    GLPFTConfig,
    glpft_agent,
    glpft_data,
    lora_parameter_count,
    stage_trainer,
    teacher_trajectories,
    train_glpft,
)
from fcdpo.multi_agent import ROLES, MultiAgentConfig, call_thought, role_prompt
from fcdpo.roles import role_chain, role_samples
from fcdpo.tasks import Problem, get_task
from fcdpo.tinylab import IM_END, build_model, build_tokenizer

MATH = get_task("math")
QUESTIONS = [
    ("Ann has 2 apples and gets 3 more. How many apples does she have?", "5",
     [{"name": "add", "arguments": {"a": 2, "b": 3}}]),
    ("Bo has 9 pens and loses 4, then buys 2 packs of 3. How many pens?", "11",
     [{"name": "subtract", "arguments": {"a": 9, "b": 4}}, {"name": "multiply", "arguments": {"a": 2, "b": 3}},
      {"name": "add", "arguments": {"a": 5, "b": 6}}]),
    ("Cy has 8 cakes and shares them among 2 friends. How many does each get?", "4",
     [{"name": "divide", "arguments": {"a": 8, "b": 2}}]),
    ("Di has 6 cards and gets 7 more, then gives away 5. How many cards?", "8",
     [{"name": "add", "arguments": {"a": 6, "b": 7}}, {"name": "subtract", "arguments": {"a": 13, "b": 5}}]),
]
PROBLEMS = [Problem(id=f"m{i}", task="math", question=q, answer=a, gold_chain=c, meta={"steps": len(c)})
            for i, (q, a, c) in enumerate(QUESTIONS)]
TINY = GLPFTConfig(lora_r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                   backbone_steps=2, role_steps=2, batch_size=2, learning_rate=5e-3, max_length=2048)


def trajectory(problem: Problem, messages=None, correct=True, sample=0) -> Trajectory:
    return Trajectory(id=f"{problem.id}/{sample}", task="math", problem_id=problem.id, sample=sample,
                      model="teacher", agent="single", messages=messages or gold_messages(problem, MATH), tools=[],
                      answer=problem.answer if correct else "0", gold=problem.answer, correct=correct,
                      steps=len(problem.gold_chain) + 1, calls=len(problem.gold_chain), errors={}, stop="answer",
                      tokens={"prompt": 0, "completion": 0}, seconds=0.0)


def teacher_rollouts() -> list[Trajectory]:
    """Four clean correct chains, a repeat of the first, a wrong chain and a chain with a thought in it."""
    with_thought = gold_messages(PROBLEMS[0], MATH)
    with_thought.insert(2, {"role": "assistant", "content": "First I add the apples."})
    return [
        *(trajectory(p) for p in PROBLEMS),
        trajectory(PROBLEMS[0], sample=1),
        trajectory(PROBLEMS[1], correct=False, sample=1),
        trajectory(PROBLEMS[0], messages=with_thought, sample=2),
    ]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("student"))


def build_base(folder):
    """A tiny Qwen2 student (hidden 64, one layer) with a tokenizer that knows the role prompts."""
    data = glpft_data([trajectory(p) for p in PROBLEMS], {"math": MATH})
    texts = [m["content"] for chain in data.chains for m in chain] + [role_prompt(MATH, r) for r in ROLES]
    tokenizer = build_tokenizer(texts * 3, vocab_size=600)
    build_model(tokenizer, hidden_size=64, num_layers=1, num_heads=2, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def fresh_lora(base_dir):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=TINY.lora_r, lora_alpha=TINY.lora_alpha, target_modules=TINY.target_modules,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


# --------------------------------------------------------------------------- data


def test_role_data_come_from_each_distinct_clean_correct_chain_once():
    data = glpft_data(teacher_rollouts(), {"math": MATH})
    steps = [len(p.gold_chain) for p in PROBLEMS]  # 1, 3, 1, 2
    assert data.counts == {
        "trajectories": 7, "correct": 6, "unclean": 1, "duplicates": 1, "chains": 4,
        "planner_samples": sum(steps) + 4, "caller_samples": sum(steps), "summarizer_samples": 4,
    }
    assert data.chains == [role_chain(trajectory(p), MATH) for p in PROBLEMS]
    planner_targets = [s["completion"][0]["content"] for s in data.samples["planner"][:4]]
    assert planner_targets == [call_thought("add"), "I have the answer.\nNext: conclusion",
                               call_thought("subtract"), call_thought("multiply")]
    assert data.samples["summarizer"][1]["completion"] == [{"role": "assistant", "content": "Final answer: 11"}]
    assert data.chain_tools == [None] * 4  # python syntax: the functions are in the prompt text


def test_the_conversion_is_deterministic():
    first, second = glpft_data(teacher_rollouts(), {"math": MATH}), glpft_data(teacher_rollouts(), {"math": MATH})
    assert first == second


def test_a_trajectory_of_an_unknown_task_is_named():
    with pytest.raises(ValueError, match="task 'math'.*fol"):
        glpft_data([trajectory(PROBLEMS[0])], {"fol": get_task("fol")})


# --------------------------------------------------------------------------- what each stage trains on


def labelled_text(trainer, tokenizer, row: int) -> str:
    labels = trainer.train_dataset[row]["labels"]
    return tokenizer.decode([t for t in labels if t != -100])


def test_stage_one_trains_on_every_role_turn_of_whole_chains(base_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    data = glpft_data([trajectory(PROBLEMS[0])], {"math": MATH})
    trainer = stage_trainer("backbone", fresh_lora(base_dir), tokenizer, data, TINY, tmp_path)
    turns = [m["content"] for m in data.chains[0] if m["role"] == "assistant"]
    assert labelled_text(trainer, tokenizer, 0) == "".join(turn + IM_END for turn in turns)
    from transformers import PrinterCallback

    # A stage reports in one line when it ends, not in a printed dict per log.
    assert not any(isinstance(c, PrinterCallback) for c in trainer.callback_handler.callbacks)


@pytest.mark.parametrize("role, target", [
    ("planner", call_thought("add")),
    ("caller", "add(a=2, b=3)"),
    ("summarizer", "Final answer: 5"),
])
def test_stage_two_trains_each_role_on_its_own_turn_only(base_dir, tmp_path, role, target):
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    data = glpft_data([trajectory(PROBLEMS[0])], {"math": MATH})
    trainer = stage_trainer(role, fresh_lora(base_dir), tokenizer, data, TINY, tmp_path)
    assert labelled_text(trainer, tokenizer, 0) == target + IM_END + "\n"
    prompt = data.samples[role][0]["prompt"]
    rendered = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(trainer.train_dataset[0]["input_ids"]).startswith(rendered)
    assert prompt[0]["content"] == role_prompt(MATH, role)


def test_json_chains_train_the_caller_on_its_tool_call_with_the_schemas_in_the_prompt(base_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    arithmetic = get_task("math", ["add", "subtract"])  # a short tool list keeps the row short
    json_chain = gold_messages(PROBLEMS[0], arithmetic, "json")
    data = glpft_data([trajectory(PROBLEMS[0], messages=json_chain)], {"math": arithmetic})
    assert data.chain_tools == [json.dumps(arithmetic.functions().schemas())]
    trainer = stage_trainer("caller", fresh_lora(base_dir), tokenizer, data, TINY, tmp_path)
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    assert labelled_text(trainer, tokenizer, 0) == call + IM_END + "\n"
    assert "<tools>" in tokenizer.decode(trainer.train_dataset[0]["input_ids"])


def test_rows_whose_turns_lie_beyond_max_length_are_refused_with_the_setting_named(base_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    data = glpft_data([trajectory(PROBLEMS[0])], {"math": MATH})
    short = GLPFTConfig(**{**TINY.__dict__, "max_length": 64})
    with pytest.raises(ValueError, match="max_length=64"):
        stage_trainer("summarizer", fresh_lora(base_dir), tokenizer, data, short, tmp_path)


# --------------------------------------------------------------------------- parameters and settings


def test_one_adapter_trains_r_times_the_in_plus_out_sizes_of_its_target_layers(base_dir):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    # One layer, hidden 64, 2 heads of 32 (so k and v are 64 wide too): 4 layers of 64 → 64, r = 4.
    assert lora_parameter_count(model, r=4, target_modules=TINY.target_modules) == 4 * 4 * (64 + 64)
    trainable = sum(p.numel() for p in fresh_lora(base_dir).parameters() if p.requires_grad)
    assert trainable == 4 * 4 * (64 + 64)
    # The default targets add the MLP: gate and up 64 → 256, down 256 → 64.
    assert lora_parameter_count(model, r=16, target_modules=GLPFTConfig().target_modules) == \
        16 * (4 * (64 + 64) + 3 * (64 + 256))


@pytest.mark.parametrize("key", ["lora_r", "backbone_steps", "role_steps", "batch_size", "max_length"])
def test_settings_below_one_are_refused(key):
    with pytest.raises(ValueError, match=f"glpft.{key}"):
        GLPFTConfig(**{key: 0})


def test_glpft_and_the_single_agents_training_load_their_base_the_same_way(base_dir, tmp_path, monkeypatch):
    """One loader for every trained stage: 4-bit GLPFT is not refused on CPU, where the DPO arm trains in 4-bit."""
    from fcdpo import loading
    from fcdpo.finetuning import load_student
    from fcdpo.settings import TrainingConfig

    calls = []

    class Loaded(Exception):
        pass

    def record(model, load_in_4bit=False, **options):
        calls.append((load_in_4bit, options))
        raise Loaded

    monkeypatch.setattr(loading, "load_base", record)
    data = glpft_data([trajectory(PROBLEMS[0])], {"math": MATH})
    with pytest.raises(Loaded):
        train_glpft(base_dir, data, tmp_path, GLPFTConfig(load_in_4bit=True), log=lambda _: None)
    with pytest.raises(Loaded):
        load_student(base_dir, TrainingConfig(load_in_4bit=True, gradient_checkpointing=False))
    assert calls == [(True, {"trainable": True, "gradient_checkpointing": False})] * 2


# --------------------------------------------------------------------------- end to end


def adapter_weights(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


@pytest.mark.slow
def test_glpft_trains_a_backbone_then_three_role_adapters_that_start_from_it(base_dir, tmp_path):
    out = tmp_path / "glpft"
    at_start: dict[str, dict[str, torch.Tensor]] = {}
    trainable_at_start: dict[str, int] = {}

    def capture(stage, model):
        at_start[stage] = adapter_weights(model)
        trainable_at_start[stage] = sum(p.numel() for p in model.parameters() if p.requires_grad)

    report = train_glpft(base_dir, glpft_data(teacher_rollouts(), {"math": MATH}), out, TINY,
                         on_stage_start=capture, log=lambda _: None)

    assert list(at_start) == list(STAGES)
    saved = {stage: load_file(out / stage / "adapter_model.safetensors") for stage in STAGES}
    # Stage 1 starts from a fresh LoRA (B = 0) and moves; every role starts exactly at the trained backbone.
    assert all(not v.any() for k, v in at_start["backbone"].items() if "lora_B" in k)
    assert any(v.any() for k, v in saved["backbone"].items() if "lora_B" in k)
    for role in ROLES:
        assert at_start[role].keys() == saved["backbone"].keys()
        assert all(torch.equal(at_start[role][k], saved["backbone"][k]) for k in saved["backbone"])
        assert any(not torch.equal(saved[role][k], saved["backbone"][k]) for k in saved["backbone"])
        assert trainable_at_start[role] == 4 * 4 * (64 + 64)  # only the role adapter trains
    assert report["trainable_parameters"]["per_adapter"] == 2048
    assert report["trainable_parameters"]["multi_agent"] == 3 * 2048
    assert report["data"]["chains"] == 4
    assert {s: report["stages"][s]["steps"] for s in STAGES} == {"backbone": 2, "planner": 2, "caller": 2,
                                                                 "summarizer": 2}
    assert report["stages"]["planner"]["rows"] == 11 and report["stages"]["summarizer"]["rows_kept"] == 4
    assert json.loads((out / "report.json").read_text()) == report
    assert all((out / stage / "tokenizer_config.json").is_file() for stage in STAGES)

    # The adapters are what the profile's multi-agent loads: one base, three roles.
    profile = SimpleNamespace(run_path=tmp_path, student={"kind": "hf", "model": str(base_dir), "device": "cpu"},
                              tasks={"math": None})
    agent = glpft_agent(profile, MATH, MultiAgentConfig(max_steps=2, max_new_tokens=4), output_dir=out)
    [chain] = agent.run(PROBLEMS[:1])
    assert chain.agent == "multi" and chain.model == f"{base_dir}+{out}"


# --------------------------------------------------------------------------- profile plumbing


def test_teacher_rollouts_are_read_for_every_task_of_the_profile(tmp_path):
    folder = tmp_path / "rollouts"
    folder.mkdir()
    rows = teacher_rollouts()
    (folder / "teacher-math.jsonl").write_text("".join(json.dumps(t.to_dict()) + "\n" for t in rows))
    profile = SimpleNamespace(run_path=tmp_path, tasks={"math": None})
    assert teacher_trajectories(profile) == rows
    profile.tasks["fol"] = None
    with pytest.raises(FileNotFoundError, match="teacher-fol.jsonl"):
        teacher_trajectories(profile)


def test_glpft_trains_the_student_the_other_arms_train_a_run_folder_when_one_exists_else_a_hub_id(tmp_path):
    from fcdpo import glpft

    assert glpft.student_reference is student_reference  # one way to find the student, for every arm
    (tmp_path / "lab" / "student").mkdir(parents=True)
    local = SimpleNamespace(name="p", run_path=tmp_path, student={"kind": "hf", "model": "lab/student"})
    assert student_reference(local) == str(tmp_path / "lab" / "student")
    assert student_reference(SimpleNamespace(name="p", run_path=tmp_path, student={})) == str(tmp_path / "lab" / "student")
    hub = SimpleNamespace(name="p", run_path=tmp_path, student={"kind": "hf", "model": "Qwen/Qwen2.5-0.5B-Instruct"})
    assert student_reference(hub) == "Qwen/Qwen2.5-0.5B-Instruct"


def test_role_samples_of_the_data_match_the_chains_they_come_from():
    data = glpft_data([trajectory(p) for p in PROBLEMS], {"math": MATH})
    rebuilt = {role: [] for role in ROLES}
    for chain in data.chains:
        for role, rows in role_samples(chain, MATH).items():
            rebuilt[role].extend(rows)
    assert data.samples == rebuilt
