"""The sealed study's parts: the sealed splits, the ledger and the intervals that count the seeds."""

import json

import numpy as np
import pandas as pd
import pytest

from fcdpo import ledger
from fcdpo.config import load_profile
from fcdpo.settings import LabConfig, build
from fcdpo.stats import corrected_level, hierarchical_gain, holm
from fcdpo.tasks import canonical_computation, held_out_sets, lab_problems, sealed_sets


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path_factory.mktemp("sealed")), "tasks.math.test": 120,
                                        "tasks.fol.test": 60, "tasks.math.length": 40,
                                        "tasks.math.length_difficulty": {"max_number": 15}})
    splits, report = sealed_sets(profile)
    return profile, splits, report


def _lab_and_splits(profile):
    """The profile's eval/train/dev splits, its lab section and the lab's training problems."""
    earlier = held_out_sets(profile)
    lab = build(LabConfig, profile.lab, "lab")
    tasks = {name: profile.task(name) for name in profile.tasks}
    held = {p.question for s in earlier.values() for ps in s.values() for p in ps}
    return earlier, lab, lab_problems(lab, tasks, {n: dict(t.difficulty) for n, t in profile.tasks.items()}, held)


def test_the_test_split_shares_no_question_with_any_other_split_or_the_labs_data(sealed):
    profile, splits, _ = sealed
    earlier, lab, lab_sets = _lab_and_splits(profile)
    for name in ("math", "fol"):
        test = splits[name]["test"]
        others = {p.question for ps in earlier[name].values() for p in ps} | {p.question for p in lab_sets[name]}
        assert len({p.question for p in test}) == len(test) and not {p.question for p in test} & others
    assert not {p.question for p in splits["math"]["length"]} & {p.question for p in splits["math"]["test"]}


def test_no_math_test_problem_computes_what_the_student_was_trained_on(sealed):
    profile, splits, report = sealed
    earlier, lab, lab_sets = _lab_and_splits(profile)
    student = lab_sets["math"][: lab.student.problems_per_task]
    trained = {canonical_computation(p) for p in earlier["math"]["train"] + student}
    test = [canonical_computation(p) for p in splits["math"]["test"]]
    assert len(set(test)) == len(test) and not set(test) & trained
    assert report["math"]["test"]["problems"] == 120 and report["math"]["test"]["distinct_computations"] == 120
    assert 0 <= report["math"]["test"]["computations_the_lab_teacher_saw"] <= 120
    # the problems whose computation the lab's teacher never saw are named, for the subset the report scores
    unseen = report["math"]["test"]["unseen_by_lab_teacher"]
    assert len(unseen) == 120 - report["math"]["test"]["computations_the_lab_teacher_saw"]
    teacher = {canonical_computation(p) for p in lab_sets["math"][: lab.teacher.problems_per_task]}
    assert unseen == [p.id for p in splits["math"]["test"] if canonical_computation(p) not in teacher]
    assert "unseen_by_lab_teacher" not in report["fol"]["test"]  # logic is held out by question only


def test_the_unseen_subset_is_scored_from_the_same_chains_with_its_own_table(sealed):
    from fcdpo.evaluation import unseen_comparison
    from fcdpo.report import write_report
    from tests.test_evaluation import chain

    profile, splits, report = sealed
    folder = profile.run_path / "evaluation" / "trajectories" / "greedy"
    folder.mkdir(parents=True, exist_ok=True)
    ids = [p.id for p in splits["math"]["test"]]
    unseen = set(report["math"]["length"]["unseen_by_lab_teacher"]) | set(report["math"]["test"]["unseen_by_lab_teacher"])
    right = {"student": set(ids[:30]), "sft": set(ids[:60]), "sft-s1": set(ids[:70]), "sft-s2": set(ids[:50]),
             "dpo": set(ids[:90]), "dpo-s1": set(ids[:80]), "dpo-s2": set(ids[:85])}
    for label, correct in right.items():
        (folder / f"{label}-math-test.jsonl").write_text("".join(
            json.dumps(chain(i, correct=i in correct).to_dict()) + "\n" for i in ids))
    table = unseen_comparison(profile, methods={"sft": ["sft", "sft-s1", "sft-s2"], "dpo": ["dpo", "dpo-s1", "dpo-s2"]})
    subset = [i for i in ids if i in unseen]
    assert set(table["dataset"]) == {"math-test (unseen)"} and set(table["problems"]) == {len(subset)}
    dpo = table.set_index("method").loc["dpo"]
    expected = np.mean([np.mean([i in right[label] for i in subset]) for label in ("dpo", "dpo-s1", "dpo-s2")])
    assert dpo["accuracy"] == pytest.approx(expected) and dpo["seeds"] == 3
    accuracy = pd.read_csv(profile.run_path / "evaluation" / "accuracy_unseen.csv").set_index("model")
    assert accuracy.loc["student", "accuracy"] == pytest.approx(np.mean([i in right["student"] for i in subset]))
    # the report shows it (a sealed run's report finds the table on disk)
    table.to_csv(profile.run_path / "evaluation" / "comparison.csv", index=False)
    text = write_report(profile, commit="abc").read_text()
    assert "computation the lab's teacher never saw" in text and "math-test (unseen): accuracy" in text


def test_operands_of_add_and_multiply_in_either_order_are_one_computation():
    from fcdpo.tasks.base import Problem

    def problem(calls):
        return Problem("p", "math", "q", "1", [{"name": n, "arguments": a} for n, a in calls])

    assert canonical_computation(problem([("add", {"a": 2, "b": 3})])) == canonical_computation(
        problem([("add", {"a": 3, "b": 2})]))
    assert canonical_computation(problem([("subtract", {"a": 2, "b": 3})])) != canonical_computation(
        problem([("subtract", {"a": 3, "b": 2})]))


def test_the_sealed_splits_are_the_same_for_the_same_profile_and_written_to_the_run(sealed):
    profile, splits, _ = sealed
    again, _ = sealed_sets(profile, write=False)
    assert [p.question for p in again["math"]["test"]] == [p.question for p in splits["math"]["test"]]
    assert (profile.run_path / "problems" / "math-test.jsonl").exists()
    assert all(p.id.startswith("math-length-") for p in splits["math"]["length"])
    # the length split is drawn at its own setting: numbers above the training range occur
    assert any(max(v for step in p.gold_chain for v in step["arguments"].values()) > 9 for p in splits["math"]["length"])


def test_a_sealed_split_too_large_for_the_space_is_an_error_that_says_so(tmp_path):
    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "tasks.math.test": 5000})
    with pytest.raises(ValueError, match="sealed split 'test'.*computation"):
        sealed_sets(profile, write=False)


def test_the_ledger_appends_one_line_per_scoring_and_counts_looks_by_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("FCDPO_LEDGER", str(tmp_path / "ledger.jsonl"))
    recipe = {"training": {"beta": 0.1, "batch_size": 8}, "run_dir": "runs/a"}
    ledger.record("tiny-cpu", recipe, ["test", "length"], ["sft", "dpo"])
    ledger.record("tiny-cpu", {**recipe, "run_dir": "/tmp/elsewhere"}, ["test", "length"], ["sft", "dpo"])  # a rerun
    ledger.record("tiny-cpu", {"training": {"beta": 0.2, "batch_size": 8}}, ["test"], ["sft"])  # another recipe
    lines = ledger.read()
    assert len(lines) == 3 and lines[0]["recipe"] == lines[1]["recipe"] != lines[2]["recipe"]
    assert {"date", "commit", "tree_changed", "profile", "models"} <= set(lines[0])
    assert ledger.looks(lines) == {"test": {"scorings": 3, "recipes": 2}, "length": {"scorings": 2, "recipes": 1}}
    (tmp_path / "ledger.jsonl").write_text((tmp_path / "ledger.jsonl").read_text() + "not json\n")
    with pytest.raises(ValueError, match=r"ledger.jsonl:4"):
        ledger.read()


def test_the_committed_ledger_reads():
    lines = ledger.read(ledger.LEDGER)
    assert all(isinstance(line["splits"], list) for line in lines)


def test_the_hierarchical_interval_widens_with_the_spread_over_seeds():
    rng = np.random.default_rng(0)
    problems = 300
    baseline = (rng.random((3, problems)) < 0.5).astype(float)
    steady = (rng.random((3, problems)) < 0.6).astype(float)
    # the same mean, but one seed far off: 0.45, 0.6, 0.75
    spread = np.stack([(rng.random(problems) < q).astype(float) for q in (0.45, 0.6, 0.75)])
    a, b = hierarchical_gain(steady, baseline, 2000), hierarchical_gain(spread, baseline, 2000)
    assert a["low"] > 0 and a["p"] < 0.01
    assert (b["high"] - b["low"]) > 1.5 * (a["high"] - a["low"])
    same = hierarchical_gain(baseline, baseline, 2000)
    assert same["gain"] == 0 and same["low"] < 0 < same["high"] and same["p"] > 0.3
    with pytest.raises(ValueError, match="same problems"):
        hierarchical_gain(steady, baseline[:, :10])


def test_holm_adjusts_step_down_and_never_reorders():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert holm({"a": 0.6, "b": 0.5}) == pytest.approx({"a": 1.0, "b": 1.0})
    assert corrected_level(4) == pytest.approx(0.9875)
