"""The benchmark scripts run end to end on a tiny local model (their figures come from the real lab)."""

import os
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
