"""The whole experiment runs headless: the five notebooks in order, with papermill, on tiny settings."""

import json

import pytest

from fcdpo.agent import Agent
from fcdpo.config import load_profile, student_spec
from fcdpo.functions import Call
from fcdpo.pipeline import _local_kernel_manager, reproduce, stages
from fcdpo.tasks import problem_sets
from tests.scripted import ScriptedBackend

pytestmark = pytest.mark.slow  # builds a lab, trains every arm and runs five notebooks: minutes

# Small enough for `make test`: a few optimizer steps of a very small teacher and student.
TINY_MODEL = {"hidden_size": 64, "num_layers": 1, "num_heads": 2, "problems_per_task": 40}
# A lab built in the run folder from these settings, not the shipped one (built from the profile's own).
LAB = {"lab.shipped": None, "lab.teacher": {**TINY_MODEL, "sft": {"steps": 4, "batch_size": 4}},
       "lab.student": {**TINY_MODEL, "sft": {"steps": 2, "batch_size": 4}}}
SMALL = {
    "tasks.math.train": 6, "tasks.math.eval": 4, "tasks.fol.train": 6, "tasks.fol.eval": 4,
    "tasks.math.test": 3, "tasks.math.length": 2, "tasks.fol.test": 3, "tasks.fol.length": 2,
    "rollouts.k": 2, "rollouts.batch_size": 12,
    "agent.max_steps": 4, "agent.max_new_tokens": 24,
    "training.max_steps": 2, "training.batch_size": 2, "training.logging_steps": 1, "training.extra_seeds": [1],
    # every arm: the sealed study's (tiny-cpu) and those `make experiments` adds (tiny-cpu-arms)
    "training.methods": ["dpo", "sft", "rpo", "sft_dpo", "sft_long", "step_dpo", "onpolicy_dpo", "grpo"],
    "training.grpo": {"problems": 2, "generations": 2},
    "multi_agent.glpft.backbone_steps": 2, "multi_agent.glpft.role_steps": 1,
    "evaluation.resamples": 50,
}


def scripted_rollouts(profile, name="teacher", model=None):
    """One correct and one incorrect chain per training problem, as the teacher's rollout files.

    A teacher trained for a few steps answers nothing right, and DPO needs both kinds of chain; notebook
    01 then finds every (problem, sample) finished and resumes without running the model. With
    `name="student"` and the student's `model`, the same chains stand for the student's own samples
    (the onpolicy_dpo arm resumes them in notebook 03). The chains name the model they stand for (the
    profile's teacher by default): a resume refuses chains of another producer.
    """
    model = model if model is not None else profile.teacher["model"]
    folder = profile.run_path / "rollouts"
    folder.mkdir(parents=True, exist_ok=True)
    for task_name, splits in problem_sets(profile).items():
        task, problems = profile.task(task_name), splits["train"]
        right = {task.user_message(p): [Call.from_dict(s).to_python() for s in p.gold_chain] + [f"Final answer: {p.answer}"]
                 for p in problems}
        wrong = {task.user_message(p): [Call.from_dict(p.gold_chain[0]).to_python(), "Final answer: 12345"] for p in problems}
        backends = ScriptedBackend(right), ScriptedBackend(wrong)
        for backend in backends:
            backend.name = model
        with (folder / f"{name}-{task_name}.jsonl").open("w") as out:
            for sample, backend in enumerate(backends):
                chains = Agent(task, backend, profile.agent).run(problems, samples=[sample] * len(problems))
                for chain in chains:
                    out.write(json.dumps(chain.to_dict()) + "\n")


def test_the_five_notebooks_run_in_order_and_write_their_artifacts(tmp_path):
    overrides = {**SMALL, **LAB, "run_dir": str(tmp_path / "run")}
    profile = load_profile("tiny-cpu", overrides)
    scripted_rollouts(profile)
    scripted_rollouts(profile, "student", student_spec(profile)["model"])  # the tiny student solves none

    executed = reproduce("tiny-cpu", {"overrides": overrides, "figures_dir": str(tmp_path / "figures")},
                         output_dir=tmp_path / "executed")

    assert [p.name for p in executed] == [p.name for p in stages()] and len(executed) == 5
    run = profile.run_path
    for artifact in ("problems/math-eval.jsonl", "problems/math-test.jsonl", "problems/fol-length.jsonl",
                     "training/rpo-s1/adapter", "training/sft_dpo/adapter", "training/sft_long-s1/adapter",
                     "evaluation/comparison.csv", "evaluation/sealed_splits.json", "lab/teacher/config.json", "lab/student/config.json",
                     "rollouts/summary.csv", "preferences/train.jsonl", "training/dpo/adapter",
                     "training/sft/adapter", "training/dpo/curves.json", "training/glpft/report.json",
                     "training/dpo-s1/adapter", "training/sft-s1/adapter", "training/step_dpo-s1/adapter",
                     "training/onpolicy_dpo/adapter", "training/grpo-s1/adapter",
                     "evaluation/summary.csv", "evaluation/metrics.json", "evaluation/methods.csv",
                     "evaluation/costs.csv"):
        assert (run / artifact).exists(), f"missing {artifact}"
    figures = {p.stem for p in (tmp_path / "figures").glob("*.png")}
    assert {"accuracy", "tradeoff", "failure_taxonomy", "dpo_training", "gains"} <= figures
    models = {row["model"] for row in json.loads((run / "evaluation" / "summary.json").read_text())}
    assert {"teacher", "student", "sft", "dpo", "multi", "sft-s1", "dpo-s1", "step_dpo", "onpolicy_dpo-s1", "grpo"} <= models
    methods = json.loads((run / "evaluation" / "methods.json").read_text())
    assert {(row["method"], row["seeds"]) for row in methods} >= {("dpo", 2), ("sft", 2), ("dpo − sft", 2),
                                                                  ("step_dpo", 2), ("onpolicy_dpo", 2), ("grpo", 2)}

    datasets = {row["dataset"] for row in json.loads((run / "evaluation" / "summary.json").read_text())}
    assert datasets == {"math-test", "math-length", "fol-test", "fol-length"}  # tiny-cpu scores the sealed splits
    comparison = json.loads((run / "evaluation" / "comparison.json").read_text())
    assert {row["method"] for row in comparison if row.get("p_holm") is not None} >= {"dpo", "rpo", "sft_dpo"}
    from fcdpo import ledger

    assert ledger.read()[-1]["splits"] == ["length", "test"]  # the scoring is in the ledger (a test's own file)

    # Run again, the arms are kept: a stopped `make experiments` resumes at the first arm not trained.
    trained = {p.parent.name: p.stat().st_mtime for p in run.glob("training/*/report.json")}
    reproduce("tiny-cpu", {"overrides": overrides, "multi_agent": False}, output_dir=tmp_path / "again", only=["03"])
    assert {p.parent.name: p.stat().st_mtime for p in run.glob("training/*/report.json")} == trained


def test_the_run_folder_follows_the_overrides_and_a_notebook_gets_only_the_parameters_it_declares(tmp_path):
    import papermill

    from fcdpo.pipeline import run_folder

    assert run_folder("tiny-cpu", {"overrides": {"run_dir": str(tmp_path / "dev")}}) == tmp_path / "dev"
    assert run_folder("tiny-cpu", {}) == load_profile("tiny-cpu").run_path
    declared = {notebook.stem[:2]: set(papermill.inspect_notebook(str(notebook))) for notebook in stages()}
    assert "multi_agent" in declared["03"] and "multi_agent" not in declared["01"]
    assert all({"profile", "overrides"} <= names for names in declared.values())


def test_the_notebook_kernels_talk_over_local_sockets_not_tcp():
    manager = _local_kernel_manager()(kernel_name="python3")
    assert manager.transport == "ipc"
