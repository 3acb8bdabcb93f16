"""A run's report is written from the run folder's files: its table is the comparison table's numbers."""

import json
from pathlib import Path

import pandas as pd
import pytest

from fcdpo.config import load_profile
from fcdpo.evaluation import comparison_table
from fcdpo.report import (
    HEADLINE,
    headline_block,
    headline_table,
    markdown_table,
    notebook_times,
    results_table,
    sync_readme,
    write_report,
)
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


def test_the_headline_table_puts_each_arm_against_sft_in_one_cell_per_dataset():
    table = headline_table(_comparison(), pd.DataFrame([{"model": "teacher", "dataset": "fol-test", "accuracy": 0.95}]))
    lines = table.splitlines()
    assert lines[0] == "| model | `math-test` | `fol-test` |"  # the test split first, math first
    assert lines[2] == "| teacher | – | 95.0% |"
    rpo = next(line for line in lines if line.startswith("| `rpo`"))
    assert rpo.startswith("| `rpo` | 87.5%; +35.0 [") and ", p 0.00" in rpo
    assert next(line for line in lines if line.startswith("| `sft`")) == "| `sft` | 52.5% | 52.5% |"


def test_the_readme_takes_its_headline_from_a_report_and_only_that(tmp_path):
    report = tmp_path / "report.md"
    report.write_text(f"# Report\n\n{HEADLINE[0]}\n| a | b |\n{HEADLINE[1]}\n\nmore\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{HEADLINE[0]}\nold numbers\n{HEADLINE[1]}\nrest\n")
    assert sync_readme(report, readme)
    assert readme.read_text() == f"intro\n{HEADLINE[0]}\n| a | b |\n{HEADLINE[1]}\nrest\n"
    assert not sync_readme(report, readme)
    readme.write_text("no block\n")
    with pytest.raises(ValueError, match="no <!-- headline:start -->"):
        sync_readme(report, readme)


def test_the_readme_shows_the_committed_reference_reports_headline():
    """Numbers in the README are copied from docs/report-tiny-cpu.md, never typed: before that report
    exists the README has no headline block, after it the block is the report's."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    report = root / "docs" / "report-tiny-cpu.md"
    if report.exists():
        assert headline_block(report.read_text()) in readme, "run: python -m fcdpo.report --readme docs/report-tiny-cpu.md"
    else:
        assert HEADLINE[0] not in readme
