"""The benchmark scripts run end to end on a tiny local model (their figures come from the real lab)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_backends import build_random_model

pytestmark = pytest.mark.slow  # runs the benchmark scripts in subprocesses

ROOT = Path(__file__).resolve().parents[1]


def test_rollout_throughput_runs_rounds_on_fresh_problems_and_checks_both_modes_agree(tmp_path):
    build_random_model(tmp_path / "model")
    result = subprocess.run(
        [sys.executable, "benchmarks/rollout_throughput.py", "--model", str(tmp_path / "model"),
         "--chains", "2", "--repeats", "2", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for task in ("math", "fol"):
        for round_ in (1, 2):
            modes = [line.split()[2] for line in lines if line.split()[:2] == [str(round_), task]]
            assert modes == ["batched", "sequential", "identical"], (task, round_, modes)
            assert f"{round_} {task:6} identical chains in both modes: 2/2" in result.stdout
    speed_up = [line for line in lines if line.startswith("speed-up of batched over sequential: ")]
    assert len(speed_up) == 1 and speed_up[0].endswith("x)"), lines[-3:]


def test_cpu_precision_times_every_model_operation_and_precision_on_a_runs_own_pairs(tmp_path):
    from fcdpo.preferences import build_pairs, save_preferences, split_by_problem
    from fcdpo.tinylab import build_model, build_tokenizer
    from tests.test_preferences import scripted_chains

    run = tmp_path / "run"
    chains = scripted_chains("math", n=3) + scripted_chains("fol", n=2)
    tokenizer = build_tokenizer([m.get("content") or "" for t in chains for m in t.messages], vocab_size=400)
    for role in ("student", "teacher"):  # the script reads both from the run's lab folder
        build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(run / "lab" / role)
        tokenizer.save_pretrained(run / "lab" / role)
    rows, report = build_pairs(chains, syntax="python")
    save_preferences(split_by_problem(rows, 0.0, seed=0), run / "preferences", report)
    result = subprocess.run(
        [sys.executable, "benchmarks/cpu_precision.py", "--run", str(run), "--batch", "2", "--rows", "2",
         "--chains", "1", "--rounds", "2", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("CPU bf16 flags: ") and "train batch (2, " in lines[0], lines[0]
    timed = [re.match(r"(\w+) +(train step|decode step) +(float32|autocast bf16|bf16 weights) +[\d.]+ ms ", line)
             for line in lines[1:]]
    seen = [m.groups() for m in timed if m]
    assert seen == [(role, operation, precision) for role in ("student", "teacher")
                    for precision in ("float32", "autocast bf16", "bf16 weights")
                    for operation in ("train step", "decode step")], lines
    rollouts = [line for line in lines if line.startswith("teacher  rollout ")]
    assert [line.split()[2] for line in rollouts] == ["float32", "bfloat16"], rollouts
    assert all(line.endswith("× float32's time") for line in lines[1:]), lines
