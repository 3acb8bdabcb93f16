"""Where a run keeps its files: the one module that knows the run folder's layout.

Layer: settings and formats; imports `fcdpo.arms`.

A profile's run folder (`run_dir` in its YAML, `runs/<profile>/` by default, `Profile.run_path`) holds:

    problems/<task>-<split>.jsonl   the problems every stage sees (`fcdpo.tasks.problem_sets`)
    lab/teacher, lab/student        the tiny lab's models; lab/builds/ its build cache (`fcdpo.tinylab`)
    rollouts/<model>-<task>.jsonl   sampled chains: the teacher's (notebook 01), the student's (on-policy)
    preferences/                    the teacher's pairs (notebook 02); preferences-step/, -onpolicy/ the arms'
    training/<label>/               one trained arm and seed: `dpo`, `sft-s1`, … (notebook 03); glpft*/
    training/reference_log_probs/   DPO's reference log-probabilities, computed once for every seed
    evaluation/                     chains per decoding and the metric tables (notebook 04)
    notebooks/                      the executed notebooks (`fcdpo.pipeline`)

Every stage asks this module for a path rather than spelling one out, so a reader finds the layout here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fcdpo import arms

REPORT = "report.json"


def problems_file(run: str | Path, task: str, split: str) -> Path:
    return Path(run) / "problems" / f"{task}-{split}.jsonl"


def lab_dir(run: str | Path) -> Path:
    return Path(run) / "lab"


def rollouts_dir(run: str | Path) -> Path:
    return Path(run) / "rollouts"


def rollouts_file(run: str | Path, task: str, model: str = "teacher") -> Path:
    """The chains `model` sampled on `task`'s training problems."""
    return rollouts_dir(run) / f"{model}-{task}.jsonl"


def preferences_dir(run: str | Path, method: str = "dpo") -> Path:
    """The pairs `method` trains on (its `fcdpo.arms` record's folder)."""
    folder = arms.get(method).folder
    if folder is None:
        pair_arms = [name for name in arms.names() if arms.get(name).pairs]
        raise ValueError(f"method {method!r} trains on no preference pairs; pair-trained arms: {pair_arms}")
    return Path(run) / folder


def pairs_dir(run: str | Path, data: str) -> Path:
    """The pairs of one kind of data (`fcdpo.arms.DATA_FOLDERS`: "teacher", "step", "student")."""
    folder = arms.DATA_FOLDERS.get(data)
    if folder is None:
        raise ValueError(f"{data!r} names no pairs; the kinds of pairs are "
                         f"{[name for name, place in arms.DATA_FOLDERS.items() if place]}")
    return Path(run) / folder


def onpolicy_round_dir(run: str | Path, label: str, number: int, shared: bool | None = None) -> Path:
    """The pairs of round `number` of the on-policy arm `label`. The first round's are the plain student's
    pairs, shared by every seed and arm (`shared`, default: round 1 only); an arm whose first round
    samples another model has its own."""
    first = pairs_dir(run, "student")
    shared = number == 1 if shared is None else shared
    return first if shared else first.with_name(f"{first.name}-{label}-round{number}")


def seed_label(method: str, seed: int, default_seed: int) -> str:
    """A trained model's label: the method at the profile's own seed, `<method>-s<seed>` at another."""
    return method if seed == default_seed else f"{method}-s{seed}"


def training_dir(run: str | Path, label: str) -> Path:
    """One trained arm and seed (`seed_label`), or `glpft` for the multi-LLM agent's adapters."""
    return Path(run) / "training" / label


def trained_adapter(run: str | Path, label: str) -> Path | None:
    """The adapter folder of a trained arm and seed: `training/<label>/adapter` (what `fcdpo.training`
    writes) or `training/<label>` itself, whichever holds `adapter_config.json`; None before training."""
    folder = training_dir(run, label)
    return next((place for place in (folder / "adapter", folder) if (place / "adapter_config.json").exists()), None)


def glpft_dirs(run: str | Path) -> list[Path]:
    """The multi-LLM agents' training folders (`training/glpft*`), each variant and seed of `fcdpo.glpft`."""
    return sorted((Path(run) / "training").glob("glpft*"))


def evaluation_dir(run: str | Path) -> Path:
    return Path(run) / "evaluation"


def notebooks_dir(run: str | Path) -> Path:
    return Path(run) / "notebooks"


def in_run(run: str | Path, path: str | Path) -> str:
    """`path` as a backend spec names a folder of the run: relative to the run folder (`lab/student`,
    `training/dpo`), so a copied run folder still finds it."""
    return Path(path).relative_to(Path(run)).as_posix()


def write_report(folder: str | Path, report: dict[str, Any]) -> Path:
    """`folder/report.json`, written whole or not at all (a stopped run leaves no half report): the one
    writer of every stage's report (an arm's, GLPFT's, the pairs', a lab build's)."""
    path = Path(folder) / REPORT
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(report, indent=2))
    partial.replace(path)
    return path
