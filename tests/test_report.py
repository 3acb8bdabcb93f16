"""A run's report is written from the run folder's files: its table is the comparison table's numbers."""

import json

import pandas as pd

from fcdpo.config import load_profile
from fcdpo.evaluation import comparison_table
from fcdpo.report import markdown_table, notebook_times, results_table, write_report
from tests.test_evaluation import chain


def _comparison():
    def run(label, right, dataset, n=40):
        return {(label, dataset): [chain(f"p{i}", correct=i in right) for i in range(n)]}

    chains = {}
    for dataset in ("math-test", "fol-test"):
        chains |= {**run("student", set(range(4)), dataset), **run("sft", set(range(20)), dataset),
                   **run("sft-s1", set(range(22)), dataset), **run("rpo", set(range(34)), dataset),
                   **run("rpo-s1", set(range(36)), dataset)}
    return comparison_table(chains, {"sft": ["sft", "sft-s1"], "rpo": ["rpo", "rpo-s1"]}, resamples=500)


def test_the_results_table_gives_every_arm_its_accuracy_gain_and_comparison_with_sft():
    table = results_table(_comparison())
    lines = table.splitlines()
    assert lines[0].startswith("| model | math-test: accuracy")  # math first
    rpo = next(line for line in lines if line.startswith("| `rpo`"))
    assert "87.5% (85.0%–90.0%, 2 seeds)" in rpo and "+35.0 [" in rpo and "p = " in rpo
    assert "baseline" in next(line for line in lines if line.startswith("| `sft`"))


def test_the_report_is_written_from_the_run_folder(tmp_path):
    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path)})
    folder = tmp_path / "evaluation"
    folder.mkdir()
    _comparison().to_csv(folder / "comparison.csv", index=False)
    pd.DataFrame([{"model": "teacher", "dataset": "math-test", "accuracy": 0.9}]).to_csv(folder / "summary.csv",
                                                                                          index=False)
    pd.DataFrame([{"method": "rpo", "seeds": 2, "steps": 877, "train_seconds": 250.4}]).to_csv(
        folder / "costs.csv", index=False)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_agent_rollouts.ipynb").write_text(
        json.dumps({"metadata": {"papermill": {"duration": 671.23}}, "cells": []}))
    path = write_report(profile, commit="abc123")
    text = path.read_text()
    assert path == tmp_path / "report.md" and "commit `abc123`" in text and "01_agent_rollouts 671 s" in text
    assert "| teacher | 90.0%" in text and "| rpo | 2 | 877 | 250.0 |" in text
    assert notebook_times(tmp_path) == {"01_agent_rollouts": 671.2}


def test_a_markdown_table_shows_a_missing_value_as_a_dash():
    assert markdown_table(pd.DataFrame({"a": [1.5, float("nan")]})).splitlines() == ["| a |", "|---|", "| 1.5 |", "| – |"]
