"""What each arm cost is read from the run folder: seeds found, steps, seconds, tokens generated for its data."""

import json

import pytest

from fcdpo.config import load_profile
from fcdpo.costs import arm_costs
from tests.test_preferences import scripted_chains


def _write_report(run, label, **report):
    folder = run / "training" / label
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps(report))


@pytest.fixture
def run_profile(tmp_path):
    profile = load_profile("tiny-cpu-arms", {"run_dir": str(tmp_path / "run")})
    run = profile.run_path
    (run / "rollouts").mkdir(parents=True)
    chains = scripted_chains("math", n=3)
    for name in ("teacher", "student"):
        with (run / "rollouts" / f"{name}-math.jsonl").open("w") as out:
            out.writelines(json.dumps(t.to_dict()) + "\n" for t in chains)
    return profile, sum(t.tokens.get("completion", 0) for t in chains)


def test_each_method_costs_its_seeds_steps_seconds_and_the_tokens_sampled_for_its_data(run_profile):
    profile, chain_tokens = run_profile
    run = profile.run_path
    for label, seconds in (("dpo", 100.0), ("dpo-s1", 120.0), ("dpo-s2", 140.0)):
        _write_report(run, label, method="dpo", steps=40, sequences_per_step=8, train_seconds=seconds)
    _write_report(run, "sft", method="sft", steps=40, sequences_per_step=8, train_seconds=30.0)
    for label in ("grpo", "grpo-s1"):
        _write_report(run, label, method="grpo", steps=50, sequences_per_step=32, train_seconds=200.0,
                      rollouts={"chains": 1600, "correct": 300, "generated_tokens": 5000})
    _write_report(run, "onpolicy_dpo", method="onpolicy_dpo", steps=10, sequences_per_step=8, train_seconds=20.0,
                  rounds=[{"round": 1, "rollouts": {"math": {"completion_tokens": 999}}},
                          {"round": 2, "rollouts": {"math": {"completion_tokens": 70}, "fol": {"completion_tokens": 5}}}])
    (run / "preferences-onpolicy").mkdir()
    (run / "preferences-onpolicy" / "report.json").write_text(json.dumps({"rollouts": {"math": {"completion_tokens": 400}}}))

    costs = arm_costs(profile).set_index("method")

    assert list(costs.index) == ["sft", "dpo", "onpolicy_dpo", "grpo"]  # step_dpo was not trained: no row
    assert costs.loc["dpo", "seeds"] == 3 and costs.loc["dpo", "steps"] == 40
    assert costs.loc["dpo", "train_seconds"] == pytest.approx(120.0) and costs.loc["dpo", "train_seconds_total"] == 360.0
    assert costs.loc["dpo", "teacher_tokens"] == costs.loc["sft", "teacher_tokens"] == chain_tokens > 0
    assert costs.loc["dpo", "student_tokens"] == 0
    # The student's chains of the first round are sampled once for all seeds; a later round's are its own.
    assert costs.loc["onpolicy_dpo", "student_tokens"] == 400 + 75 and costs.loc["onpolicy_dpo", "teacher_tokens"] == 0
    assert costs.loc["grpo", "student_tokens"] == 10000 and costs.loc["grpo", "seeds"] == 2


def test_glpft_is_costed_by_its_stages_and_a_broken_report_names_its_file(run_profile):
    profile, _ = run_profile
    run = profile.run_path
    _write_report(run, "glpft", config={"batch_size": 8},
                  stages={"backbone": {"steps": 100, "seconds": 50.0}, "planner": {"steps": 50, "seconds": 20.0}})
    glpft = arm_costs(profile).set_index("method").loc["glpft"]
    assert glpft["steps"] == 150 and glpft["train_seconds"] == 70.0

    (run / "training" / "dpo").mkdir(parents=True)
    (run / "training" / "dpo" / "report.json").write_text('{"method": "dpo", "ste')
    with pytest.raises(ValueError, match=r"training/dpo/report.json"):
        arm_costs(profile)
