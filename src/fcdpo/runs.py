"""Where a run keeps its files: the one module that knows the run folder's layout.

Layer: settings and formats; imports nothing of fcdpo.

A profile's run folder (`run_dir` in its YAML, `runs/<profile>/` by default, `Profile.run_path`) holds:

    problems/<task>-<split>.jsonl   the problems every stage sees (`fcdpo.tasks.problem_sets`)
    lab/teacher, lab/student        the tiny lab's models; lab/builds/ its build cache (`fcdpo.tinylab`)
    rollouts/<model>-<task>.jsonl   sampled chains: the teacher's (notebook 01), the student's (on-policy)
    preferences/                    the teacher's pairs (notebook 02); preferences-step/, -onpolicy/ the arms'
    training/<label>/               one trained arm and seed: `dpo`, `sft-s1`, … (notebook 03); glpft/
    training/reference_log_probs/   DPO's reference log-probabilities, computed once for every seed
    evaluation/                     chains per decoding and the metric tables (notebook 04)
    notebooks/                      the executed notebooks (`fcdpo.pipeline`)

Every stage asks this module for a path rather than spelling one out, so a reader finds the layout here.
"""

from __future__ import annotations

from pathlib import Path

# The preference folder each pair-trained arm reads (grpo learns from rewards, not pairs).
PREFERENCE_FOLDERS = {"dpo": "preferences", "sft": "preferences", "step_dpo": "preferences-step",
                      "onpolicy_dpo": "preferences-onpolicy"}


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
    """The pairs `method` trains on (`PREFERENCE_FOLDERS`)."""
    if method not in PREFERENCE_FOLDERS:
        raise ValueError(f"method {method!r} trains on no preference pairs; pair-trained arms: {sorted(PREFERENCE_FOLDERS)}")
    return Path(run) / PREFERENCE_FOLDERS[method]


def onpolicy_round_dir(run: str | Path, label: str, number: int) -> Path:
    """The pairs of round `number` of the on-policy arm `label`: its first round's are the arm's own folder."""
    first = preferences_dir(run, "onpolicy_dpo")
    return first if number == 1 else first.with_name(f"{first.name}-{label}-round{number}")


def seed_label(method: str, seed: int, default_seed: int) -> str:
    """A trained model's label: the method at the profile's own seed, `<method>-s<seed>` at another."""
    return method if seed == default_seed else f"{method}-s{seed}"


def training_dir(run: str | Path, label: str) -> Path:
    """One trained arm and seed (`seed_label`), or `glpft` for the multi-LLM agent's adapters."""
    return Path(run) / "training" / label


def evaluation_dir(run: str | Path) -> Path:
    return Path(run) / "evaluation"


def notebooks_dir(run: str | Path) -> Path:
    return Path(run) / "notebooks"
