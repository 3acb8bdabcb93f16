"""The arm registry: an arm is one record, and every stage asks the registry about it."""

import json
from dataclasses import replace

import pytest
import torch

from fcdpo import arms
from fcdpo.config import ConfigError, load_profile
from fcdpo.settings import TrainingConfig, arm_run
from tests.test_training import arm_profile as run_profile  # noqa: F401 - its run folder with the teacher's chains
from tests.test_training import lab  # noqa: F401 - the tiny student


@pytest.fixture(scope="module")
def arm_profile(run_profile):  # noqa: F811
    """The run folder with the teacher's pairs written, as notebook 02 leaves it."""
    from fcdpo.preferences import build_preference_dataset

    build_preference_dataset(run_profile)
    return run_profile


def test_every_built_in_arm_names_a_trainer_its_data_and_a_style():
    assert arms.names()[:3] == ("sft", "dpo", "rpo")
    for name in arms.names():
        arm = arms.get(name)
        assert arm.title and arm.colour.startswith("#") and arm.about
        assert (arm.folder is None) == (arm.trainer == "grpo")
    assert len({arms.get(name).colour for name in arms.names()}) == len(arms.names())
    assert arms.starts("sft_dpo") == ["sft"] and arms.get("sft_long").steps_of == ("sft", "sft_dpo")
    with pytest.raises(arms.ArmError, match="unknown arm 'ppo'"):
        arms.get("ppo")


def test_a_record_that_does_not_hold_together_is_refused():
    with pytest.raises(arms.ArmError, match="trainer"):
        arms.Arm("x", "X", "#000000", "ppo", "teacher")
    with pytest.raises(arms.ArmError, match="GRPO"):
        arms.Arm("x", "X", "#000000", "grpo", "teacher")
    with pytest.raises(arms.ArmError, match="not registered"):
        arms.register(arms.Arm("x", "X", "#000000", "dpo", "teacher", start="nothing"))
    with pytest.raises(arms.ArmError, match="already registered"):
        arms.register(arms.Arm("sft", "X", "#000000", "sft", "teacher"))
    with pytest.raises(arms.ArmError, match="built-in"):
        arms.unregister("dpo")


def test_plain_dpo_fixes_the_papers_loss_and_rpo_reads_the_profiles():
    settings = TrainingConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 4.0], rejected_answer_in_loss=False,
                              seed=0)
    dpo, label = arm_run(settings, "dpo")
    assert (dpo.loss_type, dpo.loss_weights, dpo.rejected_answer_in_loss, label) == (["sigmoid"], None, True, "dpo")
    rpo, label = arm_run(settings, "rpo", seed=2)
    assert (rpo.loss_type, rpo.loss_weights, rpo.rejected_answer_in_loss) == (["sigmoid", "sft"], [1.0, 4.0], False)
    assert (rpo.seed, label) == (2, "rpo-s2")


def test_a_profile_sets_an_arms_own_settings_and_its_mistakes_name_the_key():
    profile = load_profile("tiny-cpu", {"training.arms": {"sft_dpo": {"epochs": 1, "beta": 0.3}}})
    chosen, _ = arm_run(profile.training, "sft_dpo")
    assert (chosen.epochs, chosen.beta) == (1.0, 0.3) and arm_run(profile.training, "rpo")[0].epochs == 2.0
    with pytest.raises(ConfigError, match=r"training.arms.sft_dpo: \['epoch'\]"):
        load_profile("tiny-cpu", {"training.arms": {"sft_dpo": {"epoch": 1}}})
    with pytest.raises(ConfigError, match="'ppo', which is not an arm"):
        load_profile("tiny-cpu", {"training.arms": {"ppo": {"epochs": 1}}})
    with pytest.raises(ConfigError, match="cannot be set per arm"):
        load_profile("tiny-cpu", {"training.arms": {"dpo": {"methods": ["sft"]}}})
    with pytest.raises(ConfigError, match="expected float"):
        load_profile("tiny-cpu", {"training.arms": {"dpo": {"beta": "high"}}})


@pytest.mark.slow
def test_a_toy_arm_added_through_the_registry_alone_trains_and_is_evaluated(arm_profile):  # noqa: F811
    """One `register` call: the run trains it with its own recipe, the evaluation scores it, the tables
    and figures name it, the cost table counts it."""
    from fcdpo.costs import arm_costs
    from fcdpo.evaluation import evaluate_run
    from fcdpo.plots import model_colors, model_name
    from fcdpo.training import train_arms

    toy = arms.register(arms.Arm("toy_sft", "Student + toy SFT", "#123456", "sft", "teacher",
                                 "SFT at a rate of its own", recipe={"sft_learning_rate": 0.05}))
    try:
        profile = replace(arm_profile, training=replace(arm_profile.training, methods=["toy_sft"], extra_seeds=[1]))
        rows = train_arms(profile, methods=["toy_sft"])
        assert [(row["label"], row["seed"], row["steps"]) for row in rows] == [("toy_sft", 0, 2), ("toy_sft-s1", 1, 2)]
        report = json.loads((profile.run_path / "training" / "toy_sft" / "report.json").read_text())
        assert report["method"] == "toy_sft" and report["settings"]["sft_learning_rate"] == 0.05
        assert "eval_rewards/accuracies" not in report["final"]  # trained as SFT, not DPO

        evaluation = evaluate_run(profile, progress=False)
        scored = set(evaluation.summary["model"])
        assert {"toy_sft", "toy_sft-s1", "student"} <= scored
        assert "toy_sft" in set(evaluation.methods["method"])
        assert model_name("toy_sft") == toy.title and model_colors(["toy_sft"])["toy_sft"] == toy.colour
        costs = arm_costs(profile).set_index("method")
        assert costs.loc["toy_sft", "seeds"] == 2 and costs.loc["toy_sft", "teacher_tokens"] > 0
    finally:
        arms.unregister("toy_sft")


@pytest.mark.slow
def test_sft_then_dpo_starts_from_the_same_seeds_sft_adapter_and_its_control_trains_both_budgets(arm_profile):  # noqa: F811
    from fcdpo.training import train_from_profile

    result = train_from_profile(arm_profile, "sft_dpo", seed=3)
    run = arm_profile.run_path
    assert (run / "training" / "sft-s3" / "adapter" / "adapter_config.json").exists()  # trained first
    assert result.report["init_adapter"] == str(run / "training" / "sft-s3" / "adapter")
    assert any("rewards/margins" in row for row in result.curves)
    # It starts where SFT ended: its first logged rewards compare the policy with the SFT model, so 0.
    first = next(row for row in result.curves if "rewards/margins" in row)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)

    control = train_from_profile(arm_profile, "sft_long", seed=3)
    assert control.report["steps"] == 2 + 2 and control.report["init_adapter"] is None
    again = train_from_profile(arm_profile, "sft_long", seed=3)
    assert again.trainer is None  # kept: the budget is recomputed the same way


@pytest.mark.slow
def test_the_training_command_on_an_arm_trained_before_reports_it_rather_than_crashing(arm_profile, capsys):  # noqa: F811
    from fcdpo.training import main

    overrides = [f"run_dir={arm_profile.run_path}",
                 "student={kind: hf, model: %s}" % arm_profile.student["model"],
                 "training.max_steps=2", "training.batch_size=2", "training.eval_steps=0", "training.lora_r=8",
                 "training.lora_alpha=16", "preferences.validation=0.0", "tasks.math.train=2", "tasks.math.eval=2",
                 "tasks.math.dev=0", "tasks.fol.train=2", "tasks.fol.eval=2", "tasks.fol.dev=0", "rollouts.k=2",
                 "rollouts.temperature=1.6", "training.onpolicy_temperature=1.0", "training.logging_steps=1"]
    argv = ["--method", "step_dpo", "--seed", "5"] + [part for o in overrides for part in ("-o", o)]
    main(argv)
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    main(argv)
    out = capsys.readouterr().out
    assert "trained earlier with these settings, kept" in out
    assert json.loads(out.strip().splitlines()[-1]) == first and first["method"] == "step_dpo"


@pytest.mark.slow
def test_on_policy_rpo_from_sft_samples_the_sft_model_and_takes_it_as_reference(arm_profile):  # noqa: F811
    from safetensors.torch import load_file

    from fcdpo.tasks import problem_sets
    from fcdpo.training import train_from_profile, train_onpolicy
    from tests.test_preferences import recording_students

    sft = train_from_profile(arm_profile, "sft", seed=4)
    train_problems = [p for splits in problem_sets(arm_profile).values() for p in splits["train"]]
    backend_for, sampled_with = recording_students(train_problems, arm_profile)

    result = train_onpolicy(arm_profile, backend_for=backend_for, seed=4, method="sft_onpolicy",
                            init_adapter=sft.adapter_dir)
    run = arm_profile.run_path
    assert result.output_dir == run / "training" / "sft_onpolicy-s4"
    assert sampled_with == [sft.adapter_dir]  # the SFT model samples the first round, not the plain student
    assert (run / "rollouts" / "sft_onpolicy-s4-start-math.jsonl").exists()  # its own chains, not the shared ones
    assert (run / "preferences-onpolicy-sft_onpolicy-s4-round1" / "dataset").is_dir()
    assert result.report["init_adapter"] == str(sft.adapter_dir)
    start = load_file(sft.adapter_dir / "adapter_model.safetensors")
    for key, weight in start.items():  # TRL's frozen reference adapter holds the SFT weights
        assert torch.equal(result.trainer.model.get_parameter(key.replace(".weight", ".ref.weight")).detach(), weight)


@pytest.mark.slow
def test_grpo_from_sft_continues_the_sft_adapter(arm_profile):  # noqa: F811
    from safetensors.torch import load_file

    from fcdpo.grpo import train_grpo
    from fcdpo.training import train_from_profile

    sft = train_from_profile(arm_profile, "sft", seed=6)
    grpo = replace(arm_profile.training.grpo, problems=1, generations=2)
    profile = replace(arm_profile, training=replace(arm_profile.training, grpo=grpo, max_steps=1, batch_size=2))
    result = train_grpo(profile, seed=6, method="sft_grpo", init_adapter=sft.adapter_dir)
    assert result.output_dir == profile.run_path / "training" / "sft_grpo-s6"
    assert result.report["method"] == "sft_grpo" and result.report["init_adapter"] == str(sft.adapter_dir)
    start, trained = (load_file(folder / "adapter_model.safetensors") for folder in (sft.adapter_dir, result.adapter_dir))
    assert start.keys() == trained.keys()
    # One GRPO step at its small rate moves SFT's weights a little; a fresh adapter would share none of them.
    assert any(k.endswith("lora_B.weight") and start[k].abs().max() > 0 for k in start)
    assert all(torch.allclose(trained[k], start[k], atol=1e-2) for k in start)
