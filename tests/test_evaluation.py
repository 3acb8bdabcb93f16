"""Evaluation: metrics are exact functions of trajectories, intervals are seeded, runs resume."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fcdpo.agent import Agent, AgentConfig, Trajectory
from fcdpo.config import load_profile
from fcdpo.evaluation import (
    METRIC_COLUMNS,
    OUTCOMES,
    accuracy_with_interval,
    benchmark_problems,
    bootstrap_interval,
    chain_metrics,
    count_parameters,
    decoding_name,
    difficulty,
    difficulty_table,
    evaluate,
    evaluate_run,
    last_result,
    metrics_table,
    outcome,
    pass_at_k,
    read_tables,
    report_table,
    result_rates,
    run_models,
    summary_table,
)
from fcdpo.functions import Call
from fcdpo.tasks import get_task, split_problems
from tests.scripted import ScriptedBackend

NO_ERRORS = {"parse_error": 0, "unknown_function": 0, "bad_arguments": 0, "execution_error": 0, "timeout": 0}


def chain(problem_id="p0", *, correct=False, answer=None, stop="answer", errors=None, calls=2, steps=3,
          tokens=(100, 10), task="math", meta=None, sample=0, seconds=1.0):
    """A hand-built trajectory: only the fields the metrics read are meaningful."""
    return Trajectory(
        id=f"{problem_id}/{sample}", task=task, problem_id=problem_id, sample=sample, model="m", agent="single",
        messages=[], tools=[], answer=answer, gold="12", correct=correct, steps=steps, calls=calls,
        errors={**NO_ERRORS, **(errors or {})}, stop=stop, tokens={"prompt": tokens[0], "completion": tokens[1]},
        seconds=seconds, meta=meta if meta is not None else {"steps": 2},
    )


def gold_scripts(problems):
    """A script per question that makes the gold calls, then gives the gold answer."""
    return {p.question: [Call.from_dict(s).to_python() for s in p.gold_chain] + [f"Final answer: {p.answer}"]
            for p in problems}


# ------------------------------------------------------------------------------------------------
# The failure taxonomy


def test_a_correct_chain_is_correct_whatever_errors_it_made_on_the_way():
    assert outcome(chain(correct=True, answer="12", errors={"parse_error": 2, "unknown_function": 1})) == "correct"


def test_a_wrong_final_answer_outranks_the_errors_before_it():
    assert outcome(chain(answer="13", errors={"bad_arguments": 2})) == "wrong_answer"
    assert outcome(chain(answer="", stop="answer")) == "wrong_answer"


def test_a_chain_stopped_by_errors_is_put_down_to_its_most_frequent_error():
    assert outcome(chain(stop="max_errors", errors={"parse_error": 1, "bad_arguments": 2})) == "bad_arguments"
    assert outcome(chain(stop="max_errors", errors={"unknown_function": 3})) == "unknown_function"


def test_tied_errors_go_to_the_one_met_earlier_in_handling_a_turn():
    tie = {"parse_error": 1, "unknown_function": 1, "bad_arguments": 1}
    assert outcome(chain(stop="max_errors", errors=tie)) == "parse_error"
    assert outcome(chain(stop="max_errors", errors={"bad_arguments": 1, "execution_error": 1})) == "bad_arguments"
    assert outcome(chain(stop="max_errors", errors={"unknown_function": 2, "execution_error": 2})) == "unknown_function"


def test_timeouts_count_as_execution_errors():
    assert outcome(chain(stop="max_errors", errors={"timeout": 2, "parse_error": 1})) == "execution_error"
    assert outcome(chain(stop="max_errors", errors={"timeout": 1, "execution_error": 1, "bad_arguments": 1})) \
        == "execution_error"


@pytest.mark.parametrize("stop", ["max_steps", "token_budget", "give_up"])
def test_a_chain_without_an_answer_that_was_not_stopped_by_errors_is_out_of_steps(stop):
    assert outcome(chain(stop=stop, errors={"parse_error": 2})) == "out_of_steps"


def test_a_max_errors_chain_with_no_counted_error_is_out_of_steps():
    assert outcome(chain(stop="max_errors")) == "out_of_steps"


# ------------------------------------------------------------------------------------------------
# Metrics of a group of chains


def test_chain_metrics_are_exact_for_hand_built_chains():
    chains = [
        chain("a", correct=True, answer="12", calls=3, steps=4, tokens=(100, 20)),
        chain("b", answer="7", calls=2, steps=3, errors={"unknown_function": 1}, tokens=(120, 30)),
        chain("c", stop="max_errors", calls=1, steps=4, errors={"parse_error": 3}, tokens=(150, 40)),
        chain("d", stop="max_steps", calls=4, steps=8, errors={"bad_arguments": 1, "execution_error": 1},
              tokens=(130, 10)),
    ]
    m = {name: cell["value"] for name, cell in chain_metrics(chains).items()}
    attempts = 3 + 2 + 1 + 4 + 3  # executed calls plus turns that did not parse
    assert m["chains"] == 4 and m["problems"] == 4
    assert m["accuracy"] == 0.25
    assert m["answered_rate"] == 0.5
    assert m["valid_call_rate"] == pytest.approx((10 - 1 - 1) / attempts)
    assert m["parse_error_rate"] == pytest.approx(3 / attempts)
    assert m["hallucinated_function_rate"] == pytest.approx(1 / attempts)
    assert m["argument_error_rate"] == pytest.approx(1 / attempts)
    assert m["execution_error_rate"] == pytest.approx(1 / attempts)
    assert m["mean_steps"] == pytest.approx(19 / 4)
    assert m["mean_calls"] == pytest.approx(10 / 4)
    assert m["prompt_tokens_per_problem"] == pytest.approx(500 / 4)
    assert m["generated_tokens_per_problem"] == pytest.approx(100 / 4)
    assert m["seconds_per_problem"] == pytest.approx(1.0)
    assert {name: m[f"outcome_{name}"] for name in OUTCOMES} == {
        "correct": 0.25, "wrong_answer": 0.25, "parse_error": 0.25, "unknown_function": 0.0,
        "bad_arguments": 0.0, "execution_error": 0.0, "out_of_steps": 0.25,
    }
    assert "pass@1" not in m and not any(name.startswith("pass@") for name in m)


def with_results(trajectory, *results, gold=None):
    """`trajectory` with a call turn per result (its tool message) and, when it answered, its answer turn."""
    for result in results:
        trajectory.messages += [{"role": "assistant", "content": "f()"}, {"role": "tool", "content": result}]
    if trajectory.answer is not None:
        trajectory.messages.append({"role": "assistant", "content": f"Final answer: {trajectory.answer}"})
    trajectory.gold = gold or trajectory.gold
    return trajectory


def test_the_last_result_and_the_answer_separate_computing_the_wrong_thing_from_answering_another():
    logic = [  # gold True; the verdict of the last query is what counts
        with_results(chain("a", task="fol", answer="True", correct=True), "ok. Next: ...", "True", gold="True"),
        with_results(chain("b", task="fol", answer="False"), "ok. Next: ...", "True", gold="True"),
        with_results(chain("c", task="fol", answer="False"), "Unknown", "False", gold="True"),
        with_results(chain("d", task="fol", answer="True"), "ok. Next: Sam is a wumpus.", gold="True"),  # no verdict
        with_results(chain("e", task="fol", stop="max_steps"), "True", gold="True"),  # no answer
        with_results(chain("f", task="fol", answer="Unknown"), "True", "Error: query: missing argument", gold="True"),
    ]
    assert [last_result(t) for t in logic] == ["True", "True", "False", None, "True", None]
    m = {name: cell["value"] for name, cell in chain_metrics(logic).items()}
    assert m["result_correct_rate"] == pytest.approx(3 / 4)  # a, b, e computed True; c computed False
    assert m["answer_follows_result_rate"] == pytest.approx(2 / 3)  # a and c answered their result, b did not

    math_chains = [  # gold 12: numbers compare by value
        with_results(chain("g", answer="12", correct=True), "7", "12.0"),
        with_results(chain("h", answer="7"), "7", "12"),
        with_results(chain("i", answer="5"), "5"),
    ]
    m = {name: cell["value"] for name, cell in chain_metrics(math_chains).items()}
    assert m["result_correct_rate"] == pytest.approx(2 / 3)
    assert m["answer_follows_result_rate"] == pytest.approx(2 / 3)


def test_without_a_result_or_a_known_task_the_result_rates_are_undefined():
    no_calls = chain_metrics([chain("a", answer="12", correct=True)])  # no tool message at all
    assert math.isnan(no_calls["result_correct_rate"]["value"])
    assert math.isnan(no_calls["answer_follows_result_rate"]["value"])
    other = chain_metrics([with_results(chain("a", task="toy", answer="1"), "1")])
    assert math.isnan(other["result_correct_rate"]["value"])
    assert all(math.isnan(v) for v in result_rates([]).values())  # the tiny lab's dev check calls it on any set


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(*[st.integers(0, 4)] * 5, st.integers(0, 6)), min_size=1, max_size=8))
def test_call_rates_partition_the_call_attempts(rows):
    chains = [chain(f"p{i}", calls=calls + unknown + bad, errors={
        "parse_error": parse, "unknown_function": unknown, "bad_arguments": bad, "execution_error": min(run, calls)})
        for i, (parse, unknown, bad, run, _, calls) in enumerate(rows)]
    m = {name: cell["value"] for name, cell in chain_metrics(chains, resamples=50).items()}
    if sum(t.calls + t.errors["parse_error"] for t in chains) == 0:
        assert math.isnan(m["valid_call_rate"])
        return
    parts = m["valid_call_rate"] + m["parse_error_rate"] + m["hallucinated_function_rate"] + m["argument_error_rate"]
    assert parts == pytest.approx(1.0)
    assert 0 <= m["execution_error_rate"] <= m["valid_call_rate"] + 1e-12
    assert sum(m[f"outcome_{name}"] for name in OUTCOMES) == pytest.approx(1.0)


def test_a_group_without_call_attempts_has_undefined_call_rates():
    m = chain_metrics([chain(answer="3", calls=0)])
    assert math.isnan(m["valid_call_rate"]["value"]) and math.isnan(m["hallucinated_function_rate"]["value"])


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(2, 1, 2) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_several_samples_per_problem_add_pass_at_k_and_count_tokens_per_problem():
    chains = [chain("a", correct=True, answer="12", sample=0, tokens=(10, 5)),
              chain("a", answer="1", sample=1, tokens=(10, 5)),
              chain("b", answer="1", sample=0, tokens=(10, 5)),
              chain("b", answer="1", sample=1, tokens=(10, 5))]
    m = chain_metrics(chains)
    assert m["accuracy"]["value"] == 0.25 and m["pass@2"]["value"] == 0.5
    assert m["problems"]["value"] == 2 and m["generated_tokens_per_problem"]["value"] == 10


# ------------------------------------------------------------------------------------------------
# Bootstrap intervals


def test_the_bootstrap_interval_is_the_same_for_the_same_seed():
    values = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    assert bootstrap_interval(values, seed=3) == bootstrap_interval(values, seed=3)
    intervals = {bootstrap_interval(values, resamples=200, seed=s) for s in range(5)}
    assert len(intervals) > 1, "the seed should drive the resampling"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=120), st.integers(0, 1000))
def test_the_bootstrap_interval_contains_the_accuracy(outcomes, seed):
    low, high = bootstrap_interval([float(x) for x in outcomes], resamples=1000, seed=seed)
    accuracy = sum(outcomes) / len(outcomes)
    assert 0.0 <= low <= accuracy <= high <= 1.0


def test_a_unanimous_sample_has_a_zero_width_interval_and_no_sample_has_none():
    assert bootstrap_interval([1.0] * 30) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_interval([]))
    with pytest.raises(ValueError):
        bootstrap_interval([1.0], resamples=0)


def test_samples_of_one_problem_are_resampled_together():
    chains = [chain("a", correct=True, sample=0), chain("a", correct=True, sample=1),
              chain("b", correct=False, sample=0), chain("b", correct=False, sample=1)]
    accuracy, low, high = accuracy_with_interval(chains, seed=7)
    assert accuracy == 0.5
    assert (low, high) == bootstrap_interval([1.0, 0.0], seed=7)


# ------------------------------------------------------------------------------------------------
# Difficulty and tables


def test_difficulty_is_steps_for_math_hops_for_logic_and_none_for_folio():
    assert difficulty(chain(task="math", meta={"steps": 3})) == 3
    assert difficulty(chain(task="fol", meta={"hops": 2, "steps": 9})) == 2
    assert difficulty(chain(task="fol", meta={"hops": None, "source": "folio"})) is None


def test_the_difficulty_table_has_a_row_per_level_and_leaves_out_unknown_levels():
    runs = {("m", "fol"): [chain("a", task="fol", meta={"hops": 1}, correct=True),
                           chain("b", task="fol", meta={"hops": 1}),
                           chain("c", task="fol", meta={"hops": 3}, correct=True),
                           chain("d", task="fol", meta={"hops": None})]}
    table = difficulty_table(runs)
    assert list(table["difficulty"]) == [1, 3] and list(table["chains"]) == [2, 1]
    assert list(table["accuracy"]) == [0.5, 1.0] and set(table["measure"]) == {"hops"}


def test_the_tidy_table_has_one_row_per_model_dataset_and_metric():
    runs = {("teacher", "math"): [chain("a", correct=True, answer="12"), chain("b", answer="1")],
            ("student", "math"): [chain("a", answer="1"), chain("b", answer="1")]}
    table = metrics_table(runs, parameters={"teacher": 1e6})
    assert tuple(table.columns) == METRIC_COLUMNS
    assert not table.duplicated(["model", "dataset", "metric"]).any()
    accuracy = table[table["metric"] == "accuracy"].set_index("model")
    assert accuracy.loc["teacher", "value"] == 0.5 and accuracy.loc["student", "value"] == 0.0
    assert accuracy.loc["teacher", "ci_low"] <= 0.5 <= accuracy.loc["teacher", "ci_high"]
    assert table[table["metric"] == "parameters"]["model"].tolist() == ["teacher"]
    assert table[table["metric"] == "chains"]["ci_low"].isna().all()

    wide = summary_table(table)
    assert list(wide["model"]) == ["teacher", "student"]
    assert list(wide.columns[:8]) == ["model", "task", "dataset", "chains", "problems", "accuracy",
                                      "accuracy_ci_low", "accuracy_ci_high"]
    assert wide.set_index("model").loc["teacher", "parameters"] == 1e6
    assert math.isnan(wide.set_index("model").loc["student", "parameters"])


def test_a_dataset_mixing_tasks_is_refused():
    with pytest.raises(ValueError, match="one task"):
        metrics_table({("m", "mixed"): [chain("a", task="math"), chain("b", task="fol", meta={"hops": 1})]})


# ------------------------------------------------------------------------------------------------
# Running models


def small_sets():
    math_task, fol_task = get_task("math"), get_task("fol")
    problems = {"math": math_task.generate(4, seed=11, min_steps=1, max_steps=3),
                "fol": fol_task.generate(3, seed=11, min_hops=1, max_hops=2)}
    return {"math": math_task, "fol": fol_task}, problems


def test_evaluate_writes_trajectories_and_tables_and_a_second_call_does_no_new_work(tmp_path):
    tasks, problems = small_sets()
    everything = problems["math"] + problems["fol"]
    good = ScriptedBackend(gold_scripts(everything))
    lost = ScriptedBackend({p.question: ["Let me think."] for p in everything})
    result = evaluate({"teacher": good, "student": lost}, tasks, problems, AgentConfig(max_steps=4), tmp_path,
                      progress=False)

    folder = tmp_path / "evaluation"
    for model in ("teacher", "student"):
        for dataset, items in problems.items():
            lines = (folder / "trajectories" / "greedy" / f"{model}-{dataset}.jsonl").read_text().splitlines()
            assert len(lines) == len(items)
    summary = result.summary.set_index(["model", "dataset"])
    assert summary.loc[("teacher", "math"), "accuracy"] == 1.0
    assert summary.loc[("student", "fol"), "outcome_out_of_steps"] == 1.0
    assert summary.loc[("student", "fol"), "mean_steps"] == 4
    tables = read_tables(folder)
    assert set(tables) == {"metrics", "summary", "by_difficulty"}
    assert len(json.loads((folder / "metrics.json").read_text())) == len(result.metrics)
    assert set(json.loads((folder / "models.json").read_text())) == {"teacher", "student"}

    again_good, again_lost = ScriptedBackend(gold_scripts(everything)), ScriptedBackend({})
    again = evaluate({"teacher": again_good, "student": again_lost}, tasks, problems, AgentConfig(max_steps=4),
                     tmp_path, progress=False)
    assert again_good.calls == [] and again_lost.calls == []
    assert again.summary.equals(result.summary)


def fake_loader(monkeypatch, backend):
    """Make `load_backend` hand out `backend` and record every spec it is asked to load."""
    import fcdpo.backends

    loads = []

    def load_backend(spec, root=None):
        loads.append(spec)
        return backend

    monkeypatch.setattr(fcdpo.backends, "load_backend", load_backend)
    return loads


def test_a_model_spec_whose_chains_are_all_on_disk_is_never_loaded(tmp_path, monkeypatch):
    tasks, problems = small_sets()
    loads = fake_loader(monkeypatch, ScriptedBackend(gold_scripts(problems["math"] + problems["fol"])))
    (tmp_path / "lab" / "teacher").mkdir(parents=True)
    (tmp_path / "lab" / "teacher" / "model.safetensors").write_bytes(b"weights")
    spec = {"kind": "hf", "model": "lab/teacher"}
    first = evaluate({"teacher": spec}, tasks, problems, None, tmp_path, progress=False)
    again = evaluate({"teacher": spec}, tasks, problems, None, tmp_path, progress=False)
    assert loads == [spec]
    assert again.summary["accuracy"].tolist() == first.summary["accuracy"].tolist() == [1.0, 1.0]


def test_a_retrained_model_is_evaluated_again_instead_of_resumed(tmp_path, monkeypatch, capsys):
    tasks, problems = small_sets()
    loads = fake_loader(monkeypatch, ScriptedBackend(gold_scripts(problems["math"] + problems["fol"])))
    weights = tmp_path / "training" / "dpo" / "adapter" / "adapter_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"first")
    spec = {"kind": "hf", "model": "lab/student", "adapter": "training/dpo/adapter"}
    evaluate({"dpo": spec}, tasks, problems, None, tmp_path, progress=False)
    weights.write_bytes(b"second training")
    evaluate({"dpo": spec}, tasks, problems, None, tmp_path, progress=False)
    assert len(loads) == 2
    assert "another version" in capsys.readouterr().out
    lines = (tmp_path / "evaluation" / "trajectories" / "greedy" / "dpo-math.jsonl").read_text().splitlines()
    assert len(lines) == len(problems["math"])


def test_changed_agent_settings_are_evaluated_again(tmp_path):
    tasks, problems = small_sets()
    scripts = gold_scripts(problems["math"] + problems["fol"])
    evaluate({"m": ScriptedBackend(scripts)}, tasks, problems, AgentConfig(max_steps=6), tmp_path, progress=False)
    backend = ScriptedBackend(scripts)
    evaluate({"m": backend}, tasks, problems, AgentConfig(max_steps=7), tmp_path, progress=False)
    assert backend.calls, "chains run with other settings must not be reused"


def test_a_local_model_from_the_run_folder_is_loaded_counted_and_released(tmp_path):
    from fcdpo.tinylab import build_model, build_tokenizer

    tasks, problems = small_sets()
    problems = {"math": problems["math"][:2]}
    tokenizer = build_tokenizer([p.question for p in problems["math"]] * 5, vocab_size=300)
    model = build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2)
    model.save_pretrained(tmp_path / "lab" / "student")
    tokenizer.save_pretrained(tmp_path / "lab" / "student")
    result = evaluate({"student": {"kind": "hf", "model": "lab/student"}}, tasks, problems,
                      AgentConfig(max_steps=1, max_new_tokens=4), tmp_path, progress=False)
    assert result.parameters["student"] == sum(p.numel() for p in model.parameters())
    assert len(result.trajectories[("student", "math")]) == 2
    saved = json.loads((tmp_path / "evaluation" / "models.json").read_text())["student"]
    assert saved["parameters"] == result.parameters["student"] and saved["name"].endswith("lab/student")


def test_sampled_evaluation_goes_to_its_own_folder_and_reports_pass_at_k(tmp_path):
    tasks, problems = small_sets()
    backend = ScriptedBackend(gold_scripts(problems["math"]))
    result = evaluate({"teacher": backend}, tasks, {"math": problems["math"]}, None, tmp_path,
                      samples=2, temperature=1.0, progress=False)
    assert decoding_name(2, 1.0) == "t1-n2"
    assert len((tmp_path / "evaluation" / "trajectories" / "t1-n2" / "teacher-math.jsonl").read_text().splitlines()) == 8
    assert result.summary.loc[0, "pass@2"] == 1.0


def test_an_agent_or_an_agent_factory_can_be_evaluated_in_place_of_a_backend(tmp_path, capsys):
    tasks, problems = small_sets()
    backend = ScriptedBackend(gold_scripts(problems["math"] + problems["fol"]))
    math_agent = Agent(tasks["math"], backend, AgentConfig())
    result = evaluate({"multi": math_agent, "factory": lambda task: Agent(task, backend, AgentConfig())},
                      tasks, problems, None, tmp_path, progress=False)
    assert sorted(result.trajectories) == [("factory", "fol"), ("factory", "math"), ("multi", "math")]
    assert "'fol'" in capsys.readouterr().out


def test_evaluating_on_a_training_question_is_an_error(tmp_path):
    tasks, problems = small_sets()
    with pytest.raises(ValueError, match="used in training"):
        evaluate({"m": ScriptedBackend({})}, tasks, problems, None, tmp_path,
                 training_questions=[problems["fol"][1].question], progress=False)


def test_a_label_that_cannot_name_a_file_is_refused(tmp_path):
    tasks, problems = small_sets()
    with pytest.raises(ValueError, match="names files"):
        evaluate({"a/b": ScriptedBackend({})}, tasks, problems, None, tmp_path, progress=False)


def test_parameters_are_counted_without_lora_weights_and_4bit_weights_unpacked():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    assert count_parameters(model) == 15
    model.add_module("lora_A", torch.nn.Linear(4, 2))
    assert count_parameters(model) == 15

    class Wrapped:
        name = "wrapped"

        def __init__(self, model):
            self.model = model

    assert count_parameters(Wrapped(model)) == 15
    assert count_parameters(ScriptedBackend({})) is None


# ------------------------------------------------------------------------------------------------
# Benchmarks and the run's models


GSM8K_LINES = [
    {"question": "Ann has 3 boxes of 4 pens. How many pens?", "answer": "3 boxes of 4: <<3*4=12>>12\n#### 12"},
    {"question": "Bo had 10 dollars and spent 4. How many are left?", "answer": "<<10-4=6>>6 left\n#### 6"},
]
FOLIO_LINE = {
    "premises": ["All squares are four-sided.", "This object is a square."],
    "premises-FOL": ["∀x (Square(x) → FourSided(x))", "Square(thisObject)"],
    "conclusion": "This object is four-sided.",
    "conclusion-FOL": "FourSided(thisObject)",
    "label": "True",
    "example_id": 7,
}


def test_benchmark_files_are_loaded_and_evaluated_like_generated_problems(tmp_path, capsys):
    gsm8k, folio = tmp_path / "test.jsonl", tmp_path / "folio.jsonl"
    gsm8k.write_text("\n".join(json.dumps(r) for r in GSM8K_LINES) + "\n")
    folio.write_text(json.dumps(FOLIO_LINE, ensure_ascii=False) + "\n", encoding="utf-8")
    sets = benchmark_problems(gsm8k, folio)
    assert [len(sets["gsm8k"]), len(sets["folio"])] == [2, 1]

    tasks = {"math": get_task("math"), "fol": get_task("fol")}
    backend = ScriptedBackend(gold_scripts(sets["gsm8k"] + sets["folio"]))
    result = evaluate({"teacher": backend}, tasks, sets, None, tmp_path, progress=False)
    summary = result.summary.set_index("dataset")
    assert summary.loc["gsm8k", "task"] == "math" and summary.loc["folio", "task"] == "fol"
    assert summary["accuracy"].tolist() == [1.0, 1.0]
    # GSM8K difficulty is its number of calculator steps; FOLIO has no hop count.
    assert result.by_difficulty[["dataset", "difficulty", "chains"]].values.tolist() == [["gsm8k", 1, 2]]

    assert benchmark_problems(None, None) == {}
    assert "gsm8k_path is not set" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="folio_path"):
        benchmark_problems(None, tmp_path / "missing.jsonl")


def test_run_models_lists_the_models_present_and_says_why_the_others_are_skipped(tmp_path):
    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "teacher": {}, "student": {},
                                        "training.extra_seeds": [], "training.methods": []})  # sft and dpo
    specs, notes = run_models(profile)
    assert specs == {} and len(notes) == 4

    (tmp_path / "lab" / "teacher").mkdir(parents=True)
    (tmp_path / "lab" / "student").mkdir(parents=True)
    (tmp_path / "training" / "dpo" / "adapter").mkdir(parents=True)
    (tmp_path / "training" / "dpo" / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "training" / "sft").mkdir(parents=True)
    (tmp_path / "training" / "sft" / "curves.json").write_text("[]")  # training started, no adapter yet
    specs, notes = run_models(profile)
    assert specs == {
        "teacher": {"kind": "hf", "model": "lab/teacher"},
        "student": {"kind": "hf", "model": "lab/student"},
        "dpo": {"kind": "hf", "model": "lab/student", "adapter": "training/dpo/adapter"},
    }
    assert len(notes) == 1 and notes[0].startswith("sft:")

    seeds = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "teacher": {}, "student": {},
                                      "training.extra_seeds": [1, 2], "training.methods": []})
    (tmp_path / "training" / "dpo-s2" / "adapter").mkdir(parents=True)
    (tmp_path / "training" / "dpo-s2" / "adapter" / "adapter_config.json").write_text("{}")
    specs, notes = run_models(seeds)
    assert specs["dpo-s2"] == {"kind": "hf", "model": "lab/student", "adapter": "training/dpo-s2/adapter"}
    assert sorted(note.split(":")[0] for note in notes) == ["dpo-s1", "sft", "sft-s1", "sft-s2"]


def test_the_report_table_reads_accuracy_with_its_interval_in_percent():
    runs = {("teacher", "math"): [chain("a", correct=True, answer="12"), chain("b", answer="1", calls=0)]}
    [row] = report_table(summary_table(metrics_table(runs))).to_dict("records")
    low, high = bootstrap_interval([1.0, 0.0])
    assert row["accuracy [95% CI]"] == f"50.0% [{100 * low:.1f}, {100 * high:.1f}]"
    assert row["valid calls"] == "100.0%" and row["mean steps"] == 3


# ------------------------------------------------------------------------------------------------
# Methods over seeds


def test_paired_gain_is_the_mean_over_seeds_minus_the_baseline_per_problem():
    from fcdpo.evaluation import paired_gain

    base = [chain(f"p{i}", correct=i < 2) for i in range(4)]  # 50%
    seeds = [[chain(f"p{i}", correct=i < 3) for i in range(4)],  # 75%
             [chain(f"p{i}", correct=True) for i in range(4)]]  # 100%
    gain, low, high = paired_gain(seeds, base, resamples=200)
    assert gain == pytest.approx(0.375) and low <= gain <= high
    same, low, high = paired_gain([base], base, resamples=200)
    assert (same, low, high) == (0.0, 0.0, 0.0)  # identical on every problem: no noise at all
    assert math.isnan(paired_gain([[chain("other")]], base)[0])  # no shared problem


def test_method_table_gives_each_method_over_its_seeds_and_dpo_against_sft():
    from fcdpo.evaluation import method_table

    def run(label, right):
        return {(label, "math"): [chain(f"p{i}", correct=i in right) for i in range(10)]}

    chains = {**run("student", {0}), **run("dpo", {0, 1, 2, 3}), **run("dpo-s1", {0, 1, 2, 3, 4, 5}),
              **run("sft", {0, 1}), **run("teacher", set(range(10)))}
    table = method_table(chains, {"dpo": ["dpo", "dpo-s1", "dpo-s2"], "sft": ["sft"]}, resamples=300)
    rows = table.set_index("method")
    assert list(rows.index) == ["dpo", "sft", "dpo − sft"]
    assert rows.loc["dpo", "seeds"] == 2  # dpo-s2 has no chains: left out, not counted as zero
    assert rows.loc["dpo", "accuracy"] == pytest.approx(0.5) and rows.loc["dpo", ["min", "max"]].tolist() == [0.4, 0.6]
    assert rows.loc["dpo", "gain"] == pytest.approx(0.4) and rows.loc["dpo", "gain_low"] > 0
    assert rows.loc["sft", "gain"] == pytest.approx(0.1)
    assert rows.loc["dpo − sft", "gain"] == pytest.approx(0.3) and rows.loc["dpo − sft", "baseline"] == "sft"
    assert method_table({**run("dpo", {1})}, {"dpo": ["dpo"]}).empty  # no student: nothing to compare with


def test_the_comparison_table_counts_the_seeds_and_corrects_for_the_arms_compared():
    from fcdpo.evaluation import comparison_table

    def run(label, right, n=40):
        return {(label, "math-test"): [chain(f"p{i}", correct=i in right) for i in range(n)]}

    chains = {**run("student", set(range(4))), **run("sft", set(range(20))), **run("sft-s1", set(range(22))),
              **run("rpo", set(range(34))), **run("rpo-s1", set(range(36))),
              **run("dpo", set(range(2))), **run("dpo-s1", set(range(30)))}
    table = comparison_table(chains, {"sft": ["sft", "sft-s1"], "rpo": ["rpo", "rpo-s1"], "dpo": ["dpo", "dpo-s1"]},
                             resamples=2000).set_index("method")
    assert table.loc["rpo", "accuracy"] == pytest.approx(0.875) and table.loc["rpo", "vs_sft"] == pytest.approx(0.35)
    assert table.loc["rpo", "vs_sft_low"] > 0 and table.loc["rpo", "p_holm"] < 0.05
    assert table.loc["rpo", "level"] == pytest.approx(0.975)  # two arms compared with sft
    # dpo's seeds disagree (5% and 75%, sft's 50% and 55%): the interval over seeds spans 0 widely
    assert table.loc["dpo", "vs_sft_low"] < 0 < table.loc["dpo", "vs_sft_high"]
    assert table.loc["dpo", "p_holm"] >= table.loc["dpo", "p"]
    assert math.isnan(table.loc["sft", "p"]) and table.loc["sft", "gain"] == pytest.approx(0.425)


def test_the_sealed_splits_are_scored_under_their_own_names_and_each_scoring_is_in_the_ledger(tmp_path, monkeypatch):
    from fcdpo import ledger
    from fcdpo.tasks import sealed_sets

    monkeypatch.setenv("FCDPO_LEDGER", str(tmp_path / "ledger.jsonl"))
    small = {"run_dir": str(tmp_path), "training.extra_seeds": [], "evaluation.resamples": 10,
             "tasks.math": {"train": 5, "eval": 4, "dev": 3, "test": 3, "length": 2,
                            "length_difficulty": {"max_number": 15}},
             "tasks.fol": {"train": 5, "eval": 4, "dev": 3, "test": 2}}
    profile = load_profile("tiny-cpu", {**small, "evaluation.split": "test"})
    sealed, _ = sealed_sets(profile, write=False)
    backend = ScriptedBackend({profile.task(p.task).user_message(p): gold_scripts([p])[p.question]
                               for splits in sealed.values() for items in splits.values() for p in items})
    result = evaluate_run(profile, {"student": backend}, progress=False)
    assert sorted(result.summary["dataset"]) == ["fol-test", "math-length", "math-test"]
    assert (profile.run_path / "evaluation" / "sealed_splits.json").exists()
    [line] = ledger.read()
    assert line["splits"] == ["length", "test"] and line["models"] == ["student"] and line["profile"] == "tiny-cpu"
    evaluate_run(profile, {"student": backend}, progress=False)  # the same recipe again: not a new look
    assert ledger.looks(ledger.read())["test"] == {"scorings": 2, "recipes": 1}


def test_the_dev_split_is_scored_under_its_own_names_and_never_the_eval_split(tmp_path):
    small = {"run_dir": str(tmp_path), "training.extra_seeds": [], "evaluation.resamples": 10,
             "tasks.math": {"train": 5, "eval": 4, "dev": 3}, "tasks.fol": {"train": 5, "eval": 4, "dev": 3}}
    profile = load_profile("tiny-cpu", {**small, "evaluation.split": "dev"})
    sets = {name: split_problems(profile.task(name), {"eval": 4, "train": 5, "dev": 3}, profile.seed,
                                 **profile.tasks[name].difficulty) for name in profile.tasks}
    backend = ScriptedBackend({profile.task(p.task).user_message(p): gold_scripts([p])[p.question]
                               for splits in sets.values() for p in splits["dev"]})
    result = evaluate_run(profile, {"student": backend}, progress=False)
    assert sorted(result.summary["dataset"]) == ["fol-dev", "math-dev"]
    assert result.summary["accuracy"].tolist() == [1.0, 1.0]
    scored = {t.problem_id for chains in result.trajectories.values() for t in chains}
    assert scored == {p.id for splits in sets.values() for p in splits["dev"]}

    with pytest.raises(ValueError, match="evaluation.split must be one of"):
        load_profile("tiny-cpu", {**small, "evaluation.split": "sealed"})
    no_dev = load_profile("tiny-cpu", {**small, "evaluation.split": "dev", "tasks.fol.dev": 0})
    with pytest.raises(ValueError, match=r"tasks \['fol'\] have no dev problems"):
        evaluate_run(no_dev, {"student": backend}, progress=False)
