"""DPO and SFT steps with and without the speed settings, on a run's own pairs and student.

    python benchmarks/training_speed.py                       # runs/tiny-cpu, 60 steps of each
    python benchmarks/training_speed.py --run runs/tiny-cpu --steps 100 --methods dpo

"plain" trains as TRL does by default: every row runs its whole system prompt, and DPO runs the
reference (the adapter disabled) at every step. "fast" sets `training.shared_prefix` (each batch's
distinct first turns run once, `fcdpo.prefix_attention.first_turn_groups`) and
`training.precompute_ref_log_probs` (the reference's log-probabilities computed once before training
and kept for the other seeds). Both train the same steps from the same seed, so their losses must
agree: the script prints the largest relative difference of the logged losses beside the times.
"fast, reference kept" is a second fast run that finds the reference's log-probabilities of the first,
as seeds 1 and 2 of a run do. Needs a run whose notebooks 01 and 02 have run (`make reproduce`).
Validation is left out of the timed steps (`eval_steps: 0`, no validation split).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fcdpo import runs
from fcdpo.config import load_profile
from fcdpo.preferences import load_preferences
from fcdpo.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny-cpu")
    parser.add_argument("--run", default=None, help="run folder (default: the profile's)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--methods", nargs="+", default=["dpo", "sft"])
    args = parser.parse_args()
    profile = load_profile(args.profile)
    run = Path(args.run or profile.run_dir)
    preferences = load_preferences(runs.preferences_dir(run))
    preferences.pop("validation", None)
    student = run / "lab" / "student"
    base = replace(profile.training, max_steps=args.steps, eval_steps=0, extra_seeds=[],
                   shared_prefix=False, precompute_ref_log_probs=False)
    fast = replace(base, shared_prefix=True, precompute_ref_log_probs=True)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods:
            variants = [("plain", base), ("fast", fast)]
            if method != "sft":
                variants.append(("fast, reference kept", fast))
            losses = {}
            for label, settings in variants:
                started = time.perf_counter()
                result = train(method, student, preferences, settings, Path(scratch) / method / label.split(",")[0])
                seconds = time.perf_counter() - started
                losses[label] = [row["loss"] for row in result.curves if "loss" in row]
                results[f"{method} {label}"] = {"seconds": round(seconds, 1),
                                                 "train_seconds": result.report["train_seconds"],
                                                 "seconds_per_step": round(result.report["train_seconds"] / args.steps, 3)}
                print(method, label, results[f"{method} {label}"], flush=True)
            for label in losses:
                if label != "plain":
                    worst = max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(losses["plain"], losses[label]))
                    results[f"{method} {label}"]["loss_difference"] = float(f"{worst:.2e}")
            shutil.rmtree(Path(scratch) / method, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
