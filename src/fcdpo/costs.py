"""What each trained arm cost, read from the run folder: the figures a reader puts beside its accuracy.

Layer: stages; imports the run folder's layout, the rollout files, the pairs' reports and the training settings.

    costs = arm_costs(profile)   # one row per method of training.methods, and glpft when it was trained

Per method, over the seeds found in `training/`:
- `seeds`, `steps` (optimizer steps of one seed), `total_steps` (with every on-policy round and the
  steps of the arm it starts from: sft_dpo counts SFT's too) and `sequences_per_step` (pairs for the
  DPO arms, chains for SFT and GRPO);
- `train_seconds` (mean of one seed's training loop, this machine) and `train_seconds_total` (all seeds);
- the tokens generated to make the arm's data: `teacher_tokens` (the teacher's chains the pairs are
  cut from, sampled once for every arm and seed that trains on them), `student_tokens` (the
  student's own chains: an on-policy arm samples them once for all seeds, every later round again;
  GRPO samples during training, summed over seeds). Which applies is the arm's `samples` (`fcdpo.arms`).

Seconds are wall time of this machine's run and read from each arm's `report.json`; sampling time is
not split per arm (notebook 01's time is the teacher's, the onpolicy arm's sampling is in notebook 03).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from fcdpo import arms, runs
from fcdpo.rollouts import read_trajectories

COST_COLUMNS = ("method", "seeds", "steps", "total_steps", "sequences_per_step", "train_seconds", "train_seconds_total",
                "teacher_tokens", "student_tokens")


def _report(folder: Path) -> dict[str, Any] | None:
    path = folder / "report.json"
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path}: not a training report ({error})") from None
    return report if isinstance(report, dict) else None


def generated_tokens(run: str | Path, model: str) -> int:
    """Completion tokens of every chain `model` sampled on the training problems (`rollouts/<model>-*.jsonl`)."""
    return sum(t.tokens.get("completion", 0)
               for path in sorted(runs.rollouts_dir(run).glob(f"{model}-*.jsonl"))
               for t in read_trajectories(path))


def arm_costs(profile: Any) -> pd.DataFrame:
    """One row per trained method (seeds found in the run folder), and one for GLPFT when trained."""
    from fcdpo.training import seed_labels, trained_methods

    run = profile.run_path
    teacher_tokens = generated_tokens(run, "teacher")
    rows = []
    for method in trained_methods(profile.training):
        reports = [r for label in seed_labels(method, profile.training)
                   if (r := _report(runs.training_dir(run, label))) is not None]
        if not reports:
            continue
        seconds = [float(r.get("train_seconds", 0.0)) for r in reports]
        row = {"method": method, "seeds": len(reports), "steps": reports[0].get("steps"),
               "total_steps": _total_steps(run, method),
               "sequences_per_step": reports[0].get("sequences_per_step"),
               "train_seconds": sum(seconds) / len(seconds), "train_seconds_total": sum(seconds),
               "teacher_tokens": teacher_tokens if arms.get(method).samples == "teacher" else 0,
               "student_tokens": 0}
        # An arm's starting arm (sft_dpo's SFT) has a row of its own; its cost is not repeated here.
        if arms.get(method).samples == "student":
            row["student_tokens"] = _onpolicy_tokens(run, reports)
        elif arms.get(method).samples == "policy":
            row["student_tokens"] = sum(int(r.get("rollouts", {}).get("generated_tokens", 0)) for r in reports)
        rows.append(row)
    glpft = _report(runs.training_dir(run, "glpft"))
    if glpft is not None:
        stages = glpft.get("stages", {})
        seconds = float(sum(stage.get("seconds", 0.0) for stage in stages.values()))
        rows.append({"method": "glpft", "seeds": 1, "steps": sum(stage.get("steps", 0) for stage in stages.values()),
                     "sequences_per_step": glpft.get("config", {}).get("batch_size"),
                     "train_seconds": seconds, "train_seconds_total": seconds,
                     "teacher_tokens": teacher_tokens, "student_tokens": 0})
    return pd.DataFrame(rows, columns=list(COST_COLUMNS))


def _total_steps(run: Path, method: str) -> int | None:
    """One seed's optimizer steps with those of the arms it starts from (sft_dpo: SFT's, then DPO's)."""
    total = 0
    for name in (method, *arms.starts(method)):
        report = _report(runs.training_dir(run, name))
        if report is None or not isinstance(report.get("steps"), int):
            return None
        total += report["steps"] * (len(report.get("rounds", [])) or 1)  # every on-policy round trains `steps`
    return total


def _onpolicy_tokens(run: Path, reports: list[dict[str, Any]]) -> int:
    """The student's chains sampled once for every seed's first round, and each later round's own."""
    from fcdpo.preferences import read_report

    pairs = runs.pairs_dir(run, "student")
    if (pairs / "report.json").exists():
        first = sum(int(task.get("completion_tokens", 0)) for task in read_report(pairs).get("rollouts", {}).values())
    else:
        first = generated_tokens(run, "student")
    later = sum(int(task.get("completion_tokens", 0))
                for report in reports for round_ in report.get("rounds", [])[1:]
                for task in round_.get("rollouts", {}).values())
    return first + later
