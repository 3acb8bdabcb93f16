"""alpha-UMi as its paper trains it: role views a small model can use, GLPFT's budget shape, the
ablations' starting points, and the profile plumbing that trains, resumes and finds every variant."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fcdpo import runs
from fcdpo.config import load_profile
from fcdpo.evaluation import label_groups
from fcdpo.glpft import (
    GLPFTConfig,
    glpft_data,
    glpft_label,
    multi_agent_models,
    stage_steps,
    train_glpft,
    train_multi_llm,
)
from fcdpo.multi_agent import (
    CONCLUSION_THOUGHT,
    ROLES,
    MultiAgent,
    MultiAgentConfig,
    RoleBackends,
    backbone_prompt,
    call_thought,
    conclusion_thought,
    read_decision,
    role_prompt,
)
from fcdpo.roles import gold_role_messages, role_samples
from fcdpo.settings import ConfigError, MultiAgentSection
from fcdpo.stats import hierarchical_interval
from fcdpo.step_metrics import step_metrics
from tests.test_glpft import MATH, PROBLEMS, TINY, adapter_weights, build_base, fresh_lora, trajectory
from tests.test_multi_agent import RoleScript


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("student"))

# --------------------------------------------------------------------------- what each role must copy


def test_carried_results_put_the_last_result_in_the_planner_turn_just_before_the_caller_and_summarizer():
    data = glpft_data([trajectory(PROBLEMS[1])], {"math": MATH}, carry_results=True)  # 9 - 4, 2 * 3, 5 + 6
    [chain] = data.chains
    thoughts = [m["content"] for m in chain if m.get("name") == "planner"]
    assert thoughts == [call_thought("subtract"), call_thought("multiply", "5"), call_thought("add", "6"),
                        conclusion_thought("11")]
    assert thoughts[1] == "Result: 5\nI will call multiply next.\nNext: caller"
    # The caller's prompt ends with the planner's turn that holds the value it copies: add(a=5, b=6) after "Result: 6"
    last_caller = data.samples["caller"][-1]
    assert last_caller["prompt"][-1] == {"role": "assistant", "content": call_thought("add", "6")}
    assert last_caller["completion"][0]["content"] == "add(a=5, b=6)"
    summarizer = data.samples["summarizer"][0]
    assert summarizer["prompt"][-1]["content"].startswith("Result: 11\n")
    assert summarizer["completion"][0]["content"] == "Final answer: 11"
    # Without the setting the chains are as before.
    plain = glpft_data([trajectory(PROBLEMS[1])], {"math": MATH}).chains[0]
    assert [m["content"] for m in plain if m.get("name") == "planner"][-1] == CONCLUSION_THOUGHT


def test_a_carried_result_never_changes_the_planners_decision():
    # A logic result hands out the next statement with "Next: ..." in it; the decision is still read off the end.
    observation = "ok. Next: Every wumpus is a tumpus."
    assert read_decision(call_thought("add_rule", observation)) == "caller"
    assert read_decision(conclusion_thought("True")) == "conclusion"
    assert read_decision(conclusion_thought("Next: caller")) == "conclusion"  # the last marker wins


def test_step_metrics_give_the_roles_the_same_carried_history_they_were_trained_on():
    problem = PROBLEMS[3]  # 6 + 7, then 13 - 5
    chain = gold_role_messages(problem, MATH, carry_results=True)
    planner = RoleScript({problem.question: [call_thought("add"), call_thought("subtract", "13"),
                                             conclusion_thought("8")]})
    caller = RoleScript({problem.question: ["add(a=6, b=7)", "subtract(a=13, b=5)"]})
    summarizer = RoleScript({problem.question: ["Final answer: 8"]})
    agent = MultiAgent(MATH, RoleBackends({"planner": planner, "caller": caller, "summarizer": summarizer}),
                       MultiAgentConfig(carry_results=True))
    metrics = step_metrics(agent, [problem])
    assert (metrics["plan_acc"], metrics["act_em"], metrics["arg_f1"], metrics["answer_acc"]) == (1.0, 1.0, 1.0, 1.0)
    # The caller's second query ends with the carried result, as the training samples do.
    assert caller.chats[1][-1]["content"] == call_thought("subtract", "13")
    assert caller.chats[1] == role_samples(chain, MATH)["caller"][1]["prompt"]


# --------------------------------------------------------------------------- prompts that follow the profile


@pytest.mark.parametrize("task_name", ["math", "fol"])
def test_role_prompts_are_brief_when_the_profiles_prompt_is(task_name):
    brief = load_profile("tiny-cpu").task(task_name)
    full = load_profile("tiny-cpu", {f"tasks.{task_name}.brief_prompt": False}).task(task_name)
    single = brief.system_prompt()
    for role in ROLES:
        prompt = role_prompt(brief, role)
        # the single agent's first line and at most a sentence more: no long team description
        assert prompt.split(". ")[0] == single.split(". ")[0]
        assert len(prompt) <= len(single) + 80, role
        assert len(prompt) < len(role_prompt(full, role)), role
    for function in brief.functions().names:
        assert f"\n{function}(" in role_prompt(brief, "caller") and f"\n{function}(" in role_prompt(brief, "planner")
    assert "Functions:" not in role_prompt(brief, "summarizer")  # it copies an answer, it calls nothing
    assert "Next: caller" in role_prompt(brief, "planner") and "Next: conclusion" in role_prompt(brief, "planner")
    assert "=..." in role_prompt(brief, "caller") and "=..." in backbone_prompt(brief)  # no values to copy
    assert "Final answer:" in role_prompt(brief, "summarizer")
    assert len(backbone_prompt(brief)) < len(backbone_prompt(full))
    # json syntax keeps the full prompts: the chat template shows the tools there
    assert role_prompt(brief, "caller", "json") == role_prompt(full, "caller", "json")


# --------------------------------------------------------------------------- the budget shape


def test_epochs_set_a_stages_steps_from_its_rows_and_a_step_count_stays_where_none_is_given():
    shape = GLPFTConfig(batch_size=8, gradient_accumulation_steps=2, backbone_steps=7, role_steps=5,
                        backbone_epochs=2.0, role_epochs={"planner": 1.0, "summarizer": 2.0})
    assert stage_steps("backbone", 100, shape) == 13  # ceil(2 × 100 / 16)
    assert stage_steps("planner", 100, shape) == 7  # ceil(100 / 16)
    assert stage_steps("summarizer", 8, shape) == 1
    assert stage_steps("caller", 100, shape) == 5  # no passes given: role_steps
    assert stage_steps("backbone", 100, GLPFTConfig(backbone_steps=7)) == 7


@pytest.mark.parametrize("changes, named", [
    ({"start": "scratch"}, "glpft.start"),
    ({"role_epochs": {"critic": 1.0}}, "unknown role"),
    ({"backbone_epochs": -1.0}, "glpft.backbone_epochs"),
    ({"role_epochs": {"caller": "two"}}, "role_epochs.caller"),
])
def test_bad_budget_settings_are_refused_with_the_key_named(changes, named):
    with pytest.raises(ValueError, match=named):
        GLPFTConfig(**changes)


def test_the_multi_agent_sections_variants_and_seeds_are_checked(tmp_path):
    with pytest.raises(ValueError, match="multi_agent.starts"):
        MultiAgentSection(starts=["backbone", "teacher"])
    with pytest.raises(ValueError, match="repeats a seed"):
        MultiAgentSection(extra_seeds=[0, 1])
    path = tmp_path / "bad.yaml"
    path.write_text("extends: tiny-cpu\nname: bad\nmulti_agent:\n  glpft: {role_epoch: {planner: 1}}\n")
    with pytest.raises(ConfigError, match="role_epoch"):
        load_profile(path)


def test_the_sft_start_needs_the_sft_adapter(base_dir, tmp_path):
    data = glpft_data([trajectory(PROBLEMS[0])], {"math": MATH})
    with pytest.raises(ValueError, match="SFT adapter"):
        train_glpft(base_dir, data, tmp_path, GLPFTConfig(start="sft"), log=lambda _: None)


@pytest.mark.slow
@pytest.mark.parametrize("start", ["student", "sft"])
def test_the_ablations_train_the_three_roles_from_a_fresh_adapter_or_from_the_sft_adapter(base_dir, tmp_path, start):
    sft_adapter = None
    if start == "sft":  # an SFT adapter with weights of its own (B ≠ 0), saved as the sft arm saves it
        model = fresh_lora(base_dir)
        torch.manual_seed(1)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_(0, 0.02)
        sft_adapter = tmp_path / "sft" / "adapter"
        model.save_pretrained(sft_adapter)
        started_from = load_file(sft_adapter / "adapter_model.safetensors")
    at_start = {}
    config = GLPFTConfig(**{**TINY.__dict__, "start": start, "role_epochs": {"summarizer": 2.0}})
    out = tmp_path / "glpft"
    report = train_glpft(base_dir, glpft_data([trajectory(p) for p in PROBLEMS], {"math": MATH}), out, config,
                         start_adapter=sft_adapter, on_stage_start=lambda s, m: at_start.update({s: adapter_weights(m)}),
                         log=lambda _: None)
    assert list(at_start) == list(ROLES) and not (out / "backbone").exists()
    for role in ROLES:
        if start == "student":  # alpha-UMi's one-stage ablation: each role from a fresh LoRA (B = 0)
            assert all(not v.any() for k, v in at_start[role].items() if "lora_B" in k)
        else:
            assert all(torch.equal(at_start[role][k], started_from[k]) for k in started_from)
        assert (out / role / "adapter_model.safetensors").is_file()
    # the summarizer's 4 rows, two passes, batches of 2: 4 steps; the other roles their 2 steps
    assert {role: report["stages"][role]["steps"] for role in ROLES} == {"planner": 2, "caller": 2, "summarizer": 4}
    assert report["stages"]["summarizer"]["epochs"] == 2.0 and report["stages"]["planner"]["epochs"] is None
    assert report["total_steps"] == 8 and report["start"].startswith(start)


# --------------------------------------------------------------------------- the profile's variants and seeds


def multi_profile(tmp_path, starts=("backbone", "student"), extra_seeds=(1,)):
    section = MultiAgentSection(starts=list(starts), extra_seeds=list(extra_seeds))
    return SimpleNamespace(name="p", run_path=tmp_path, multi_agent=section, tasks={"math": None},
                           training=SimpleNamespace(seed=0, chat_template=None),
                           student={"kind": "hf", "model": "lab/student"})


def test_each_variant_and_seed_has_its_folder_and_its_model_label(tmp_path):
    profile = multi_profile(tmp_path)
    assert glpft_label(profile) == "glpft" and glpft_label(profile, model=True) == "multi"
    assert glpft_label(profile, "student", 2) == "glpft_one_stage-s2"
    assert glpft_label(profile, "sft", 1, model=True) == "multi_sft-s1"
    with pytest.raises(ValueError, match="unknown GLPFT start"):
        glpft_label(profile, "teacher")


def test_every_variant_and_seed_is_trained_once_and_a_stopped_run_resumes(tmp_path, monkeypatch):
    from fcdpo import glpft

    profile = multi_profile(tmp_path)
    done = runs.training_dir(tmp_path, "glpft-s1")
    done.mkdir(parents=True)
    runs.write_report(done, {"kept": True})
    trained = []
    monkeypatch.setattr(glpft, "run_glpft", lambda profile, log, seed, start: trained.append((start, seed)) or {})
    reports = train_multi_llm(profile, log=lambda _: None)
    assert trained == [("backbone", 0), ("student", 0), ("student", 1)]
    assert list(reports) == ["glpft", "glpft-s1", "glpft_one_stage", "glpft_one_stage-s1"]
    assert reports["glpft-s1"] == {"kept": True}


def test_notebook_04_finds_every_trained_variant_and_loads_a_team_only_when_it_is_used(tmp_path, monkeypatch):
    from fcdpo import glpft

    profile = multi_profile(tmp_path)
    for name in ("glpft", "glpft-s1", "glpft_one_stage-s2", "glpft_sft", "glpft-old", "glpft_unknown"):
        folder = runs.training_dir(tmp_path, name)
        folder.mkdir(parents=True)
        runs.write_report(folder, {"trainable_parameters": {"base": 1234}})
    runs.training_dir(tmp_path, "glpft_one_stage").mkdir()  # stopped before its report: not a model yet
    loads = []
    scripted = RoleBackends.shared(RoleScript({}))
    monkeypatch.setattr(glpft, "glpft_role_backends", lambda profile, folder: loads.append(folder.name) or scripted)
    found = multi_agent_models(profile)
    assert sorted(found) == ["multi", "multi-s1", "multi_one_stage-s2", "multi_sft"]
    assert {parameters for _, parameters in found.values()} == {1234} and loads == []
    factory = found["multi_one_stage-s2"][0]
    agents = [factory(MATH), factory(MATH)]
    assert loads == ["glpft_one_stage-s2"] and all(a.backends is scripted for a in agents)
    assert label_groups(found) == {"multi": ["multi", "multi-s1"], "multi_one_stage": ["multi_one_stage-s2"],
                                   "multi_sft": ["multi_sft"]}


def test_trained_adapters_are_found_where_the_arms_write_them(tmp_path):
    assert runs.trained_adapter(tmp_path, "sft") is None
    (tmp_path / "training" / "sft" / "adapter").mkdir(parents=True)
    (tmp_path / "training" / "sft" / "adapter" / "adapter_config.json").write_text("{}")
    assert runs.trained_adapter(tmp_path, "sft") == tmp_path / "training" / "sft" / "adapter"
    (tmp_path / "training" / "glpft" / "planner").mkdir(parents=True)
    (tmp_path / "training" / "old").mkdir()
    (tmp_path / "training" / "old" / "adapter_config.json").write_text("{}")
    assert runs.trained_adapter(tmp_path, "old") == tmp_path / "training" / "old"
    assert [p.name for p in runs.glpft_dirs(tmp_path)] == ["glpft"]


# --------------------------------------------------------------------------- intervals of the step metrics


def test_the_hierarchical_interval_of_a_mean_widens_with_the_spread_of_the_seeds():
    rng = np.random.default_rng(0)
    alike = (rng.random((3, 200)) < 0.6).astype(float)
    apart = np.stack([(rng.random(200) < p).astype(float) for p in (0.3, 0.6, 0.9)])
    narrow, wide = hierarchical_interval(alike, 2000), hierarchical_interval(apart, 2000)
    assert narrow["low"] < narrow["mean"] < narrow["high"]
    assert wide["low"] < wide["mean"] < wide["high"]
    assert (wide["high"] - wide["low"]) > 2 * (narrow["high"] - narrow["low"])
    assert narrow["mean"] == pytest.approx(alike.mean()) and (narrow["seeds"], narrow["problems"]) == (3, 200)
    assert json.dumps(narrow)  # plain numbers, written to the tables as they are


def test_the_step_metric_table_scores_every_model_and_groups_the_seeds_of_each_method(tmp_path):
    from fcdpo.agent import Agent, AgentConfig
    from fcdpo.evaluation import step_metric_table
    from tests.scripted import ScriptedBackend
    from tests.test_multi_agent import METRIC_PROBLEMS, Q1, Q2, Q3, team

    def single(script):
        return lambda task: Agent(task, ScriptedBackend(script), AgentConfig(), name="single")

    right = {Q1: ["add(a=2, b=3)", "multiply(a=5, b=4)", "Final answer: 20"], Q2: ["subtract(a=9, b=4)", "Final answer: 5"],
             Q3: ["divide(a=8, b=2)", "Final answer: 4"]}
    early = {Q1: ["add(a=2, b=3)", "Final answer: 5", "Final answer: 20"], Q2: ["subtract(a=9, b=4)", "Final answer: 5"],
             Q3: ["I should divide.", "Final answer: 3"]}
    planner = {Q1: [call_thought("add"), call_thought("multiply"), CONCLUSION_THOUGHT],
               Q2: [call_thought("subtract"), CONCLUSION_THOUGHT], Q3: [call_thought("divide"), CONCLUSION_THOUGHT]}
    caller = {Q1: ["add(a=2, b=3)", "multiply(a=5, b=4)"], Q2: ["subtract(a=9, b=4)"], Q3: ["divide(a=8, b=2)"]}
    summarizer = {Q1: ["Final answer: 20"], Q2: ["Final answer: 5"], Q3: ["Final answer: 4"]}
    models = {"sft": single(right), "sft-s1": single(early),
              "multi": lambda task: MultiAgent(task, team(planner, caller, summarizer))}
    profile = SimpleNamespace(run_path=tmp_path, agent=AgentConfig(), task=lambda name: MATH)
    table, methods = step_metric_table(profile, models, {"math-dev": METRIC_PROBLEMS}, resamples=500)
    assert list(table["model"]) == ["sft", "sft-s1", "multi"] and set(table["dataset"]) == {"math-dev"}
    assert table.set_index("model").loc["sft", "plan_acc"] == 1.0
    assert table.set_index("model").loc["sft-s1", "plan_acc"] == pytest.approx(5 / 7)
    rows = methods.set_index("method")
    assert list(rows.index) == ["sft", "multi"] and list(rows["seeds"]) == [2, 1]
    # a problem counts the mean of its steps, then the seeds are averaged: sft-s1 decides 2 of Q1's 3 steps,
    # both of Q2's and 1 of Q3's 2 right
    per_problem_early = np.mean([2 / 3, 1.0, 1 / 2])
    assert rows.loc["sft", "plan_acc"] == pytest.approx((1.0 + per_problem_early) / 2)
    assert rows.loc["sft", "plan_acc_low"] < rows.loc["sft", "plan_acc"] <= rows.loc["sft", "plan_acc_high"]
    assert rows.loc["multi", "act_em"] == 1.0 and rows.loc["multi", "answer_acc"] == 1.0
    assert (tmp_path / "evaluation" / "step_methods.csv").is_file() and (tmp_path / "evaluation" / "step_metrics.json").is_file()


def test_the_step_metrics_figure_draws_each_methods_interval(tmp_path):
    import pandas as pd

    from fcdpo.plots import step_metrics_figure

    methods = pd.DataFrame([
        {"method": method, "dataset": "math-dev", "seeds": 3, **{m: v for m in ("plan_acc", "act_em", "arg_f1",
                                                                                 "hallucination", "answer_acc")},
         **{f"{m}_low": v - 0.1 for m in ("plan_acc", "act_em", "arg_f1", "hallucination", "answer_acc")},
         **{f"{m}_high": v + 0.05 for m in ("plan_acc", "act_em", "arg_f1", "hallucination", "answer_acc")}}
        for method, v in (("sft", 0.8), ("multi", 0.6), ("multi_one_stage", 0.4))])
    figure = step_metrics_figure(methods)
    [axes] = figure.axes
    assert len(axes.patches) == 15  # 3 methods × 5 metrics
    error_bars = [c for c in axes.containers if getattr(c, "errorbar", None) is not None]
    assert len(error_bars) == 3
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels == ["Student + SFT", "Multi-LLM agent (GLPFT)", "Multi-LLM, one stage"]
