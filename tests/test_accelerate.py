"""Multi-GPU configs for `accelerate launch`, and a real two-process DDP launch of DPO on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fcdpo.config import CONFIG_DIR
from fcdpo.preferences import build_pairs, save_preferences, split_by_problem
from fcdpo.tinylab import build_model, build_tokenizer
from tests.test_preferences import scripted_chains

ACCELERATE_DIR = CONFIG_DIR / "accelerate"
EXPECTED = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_accelerate_config_is_read_by_accelerate(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE_DIR / f"{name}.yaml"))
    assert config.distributed_type.value == EXPECTED[name]
    assert config.num_processes >= 2 and not config.use_cpu
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "fsdp":
        assert config.fsdp_config["fsdp_use_orig_params"] is False  # PEFT: frozen and trainable weights apart


@pytest.mark.slow
def test_ddp_launch_trains_dpo_in_two_processes_on_cpu(tmp_path):
    """The shipped DDP config with `accelerate launch` (torchrun underneath; gloo on CPU): two processes
    each train on half of every batch and one adapter is saved."""
    chains = scripted_chains("math", n=4)
    tokenizer = build_tokenizer([m.get("content") or "" for t in chains for m in t.messages], vocab_size=800)
    build_model(tokenizer, hidden_size=64, num_layers=1, num_heads=2).save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    rows, report = build_pairs(chains, syntax="python")
    save_preferences(split_by_problem(rows, 0.0), tmp_path / "preferences", report)
    profile = tmp_path / "launch.yaml"
    profile.write_text(json.dumps({
        "name": "launch",
        "run_dir": str(tmp_path),
        "student": {"kind": "hf", "model": "student"},
        "training": {"max_steps": 2, "batch_size": 1, "learning_rate": 0.005, "logging_steps": 1, "lora_r": 4,
                     "max_length": 4096},
    }))
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--config_file", str(ACCELERATE_DIR / "ddp.yaml"), "--num_processes", "2",
               "--main_process_port", "29517", "-m", "fcdpo.training", "--profile", str(profile), "--method", "dpo"]
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=CONFIG_DIR.parent, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "training" / "dpo" / "report.json").read_text())
    assert report["processes"] == 2 and report["sequences_per_step"] == 2 and report["steps"] == 2
    assert (tmp_path / "training" / "dpo" / "adapter" / "adapter_model.safetensors").exists()
    printed = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and json.loads(printed[0])["method"] == "dpo"  # by the main process only
