"""Where the time goes, against this machine's limit: each stage's achieved FLOP rate as a share of the
CPU's fp32 matrix-multiply peak, all in one process.

    .venv/bin/python benchmarks/flop_shares.py            # the shipped tiny lab, about 5 minutes on 2 cores

1. A GEMM probe: `torch.mm` of two 1024 × 1024 fp32 matrices on the threads the pipeline uses, for a few
   seconds; the best rate over several rounds is the peak (2·n³ FLOPs a product).
2. Rollouts: the lab teacher runs the agent on fresh math and logic problems (greedy, and sampled at the
   profile's temperature as notebook 01 samples), batched as the profile batches them, shared prefixes
   off (so every token counted is computed; the pipeline's `share_prefix` saves some). A token costs
   2·N FLOPs (N: the model's parameters, the tied output projection included), whether it is a prompt
   token run once in prefill or a generated one.
3. Training: the student trains SFT and DPO steps on pairs of those teacher chains, as notebook 03 does
   (LoRA, the profile's batch), shared prefixes off for the same reason; a trained token costs 6·N (forward and backward), and
   DPO's reference pass over a token 2·N more (`precompute_ref_log_probs` runs it once, before the steps).

Prints one line per stage: seconds, tokens, achieved GFLOP/s, and the share of the peak. The counts are
the standard approximations (Kaplan et al. 2020): they leave out attention's own FLOPs, which at these
sequence lengths and widths are a small part, and count LoRA's frozen base weights at 6·N although their
weight gradients are not computed (so training's share is an upper bound).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from fcdpo.agent import Agent
from fcdpo.backends import load_backend
from fcdpo.config import load_profile
from fcdpo.preferences import build_pairs, save_preferences, split_by_problem
from fcdpo.settings import CONFIG_DIR
from fcdpo.training import (
    chosen_conversations,
    load_tokenizer,
    tokenize_conversations,
    tokenize_preferences,
    train,
)


def gemm_peak(threads: int, n: int = 1024, seconds: float = 3.0) -> float:
    """Best fp32 FLOP/s of `torch.mm` on n × n matrices over rounds of about a second."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm up
    best, started = 0.0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            torch.mm(a, b)
            count += 1
        best = max(best, 2 * n ** 3 * count / (time.perf_counter() - t0))
    return best


def parameters(folder: Path) -> int:
    from fcdpo.loading import load_model

    return sum(p.numel() for p in load_model(folder).parameters())


def line(stage: str, seconds: float, tokens: int, flops: float, peak: float) -> dict:
    rate = flops / seconds
    row = {"stage": stage, "seconds": round(seconds, 1), "tokens": tokens, "gflops": round(rate / 1e9, 2),
           "share_of_peak": round(rate / peak, 3)}
    print(f"{stage:<34} {seconds:7.1f} s  {tokens:>9,} tokens  {rate / 1e9:7.2f} GFLOP/s  {100 * rate / peak:5.1f}% of peak",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny-cpu")
    parser.add_argument("--problems", type=int, default=48, help="fresh problems per task for the rollouts")
    parser.add_argument("--steps", type=int, default=30, help="training steps of SFT and of DPO")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    profile = load_profile(args.profile)
    lab = CONFIG_DIR.parent / profile.lab["shipped"]
    threads = torch.get_num_threads()
    peak = gemm_peak(threads)
    print(f"GEMM probe: {peak / 1e9:.2f} GFLOP/s fp32 on {threads} threads (torch {torch.__version__})", flush=True)
    rows = [{"stage": "gemm_peak", "gflops": round(peak / 1e9, 2), "threads": threads}]

    teacher_n, student_n = parameters(lab / "teacher"), parameters(lab / "student")
    # Shared prefixes off in sampling too: every token counted is a token computed (the pipeline's
    # `share_prefix` runs a batch's system prompt once, which saves work this count would not see).
    teacher = load_backend({**profile.teacher, "model": str(lab / "teacher"), "share_prefix": False})
    chains = []
    for temperature, label in ((0.0, "greedy"), (profile.rollouts.temperature, f"t{profile.rollouts.temperature:g}")):
        started, tokens = time.perf_counter(), 0
        for name in profile.tasks:
            task = profile.task(name)
            problems = task.generate(args.problems, seed=9_000_001, **profile.tasks[name].difficulty)
            samples = 1 if temperature == 0 else 4
            run = Agent(task, teacher, profile.agent).run(
                [p for p in problems for _ in range(samples)], temperature=temperature,
                samples=[s for _ in problems for s in range(samples)], seed=0)
            tokens += sum(t.tokens.get("prompt", 0) + t.tokens.get("completion", 0) for t in run)
            if temperature > 0:
                chains += run
        rows.append(line(f"rollouts, teacher, {label}", time.perf_counter() - started, tokens,
                         2 * teacher_n * tokens, peak))

    pairs, _ = build_pairs(chains, profile.agent.syntax, pairs_per_prompt=4)
    with tempfile.TemporaryDirectory() as scratch:
        data = save_preferences(split_by_problem(pairs, 0.0), Path(scratch) / "pairs")
        # shared prefixes off: every token counted is a token computed
        settings = replace(profile.training, max_steps=args.steps, eval_steps=0, extra_seeds=[], logging_steps=5,
                           shared_prefix=False)

        tokenizer = load_tokenizer(lab / "student", settings)
        per_pair = tokenize_preferences(data["train"], tokenizer, settings.max_length)[0]
        dpo_tokens = sum(len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in per_pair)
        sft_rows = tokenize_conversations(chosen_conversations(data["train"]), tokenizer, settings.max_length)[0]
        sft_tokens = sum(len(r["input_ids"]) for r in sft_rows)
        for method, total, passes in (("sft", sft_tokens, len(sft_rows)), ("dpo", dpo_tokens, len(per_pair))):
            result = train(method, lab / "student", data, replace(settings, precompute_ref_log_probs=True),
                           Path(scratch) / method)
            seen = settings.batch_size * result.report["steps"]
            tokens = round(total / passes * seen)  # the tokens of the rows trained, at the mean row length
            flops = 6 * student_n * tokens + (2 * student_n * total if method == "dpo" else 0)
            rows.append(line(f"training, student, {method} ({result.report['steps']} steps)",
                             result.report["train_seconds"], tokens, flops, peak))
    print(f"parameters: teacher {teacher_n:,}, student {student_n:,}; {len(pairs)} pairs")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
