"""float32 against bfloat16 for the tiny lab's models on this machine's CPU, on a run's own chains.

    python benchmarks/cpu_precision.py                        # runs/tiny-cpu, 5 rounds
    python benchmarks/cpu_precision.py --run runs/tiny-cpu --rounds 9 --threads 2

Times the operations the tiny-cpu pipeline spends its time in, with the lab's student and teacher:
- "train step": forward and backward of one training batch (`--batch` sequences: prompt + chosen
  chain of the run's first preference pairs, right-padded, loss on every token), as a DPO step of
  `training.batch_size` pairs runs twice that many sequences;
- "decode step": one new token for `--rows` rows after a prompt of the same chains (a KV cache of
  their length), with transformers' own attention;
- "rollout" (teacher only): `--chains` chains per task of the profile's training problems at its
  rollout temperature through the agent and `HFBackend`, as notebook 01 runs them. There, the system
  prompt's keys and values are read once per step for all rows (`fcdpo.prefix_attention`), which
  removes most of the memory reads that bfloat16 would halve in the plain decode step.
The first two in three precisions: float32 (what the pipeline uses on CPU), float32 weights under
`torch.autocast("cpu", dtype=torch.bfloat16)` (what TRL's `bf16=True` does on CPU), and bfloat16
weights; the rollout in float32 and with bfloat16 weights (`teacher.dtype`). Bfloat16 pays only
where the CPU multiplies in it (AVX512-BF16 or AMX); the script prints which of those flags the CPU
reports. Each figure is the median of `--rounds` rounds, with the range.
Needs a run whose notebooks 01 and 02 have run (`make reproduce`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from fcdpo import runs
from fcdpo.agent import Agent
from fcdpo.backends import load_backend
from fcdpo.config import load_profile
from fcdpo.loading import load_tokenizer
from fcdpo.preferences import load_preferences
from fcdpo.tasks import problem_sets
from fcdpo.training import tokenize_preferences

PRECISIONS = ("float32", "autocast bf16", "bf16 weights")


def cpu_flags() -> list[str]:
    """The CPU's bfloat16 flags from /proc/cpuinfo (empty where it is not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def sequences(run: Path, count: int) -> torch.Tensor:
    """The first `count` pairs' prompt + chosen chain as token ids, right-padded with the pad id."""
    preferences = load_preferences(runs.preferences_dir(run))["train"]
    tokenizer = load_tokenizer(run / "lab" / "student")
    rows, _ = tokenize_preferences(preferences.select(range(count)), tokenizer, max_length=4096)
    ids = [r["prompt_ids"] + r["chosen_ids"] for r in rows]
    batch = torch.full((len(ids), max(map(len, ids))), tokenizer.pad_token_id, dtype=torch.long)
    for i, row in enumerate(ids):
        batch[i, :len(row)] = torch.tensor(row)
    return batch


def timed(step, rounds: int) -> list[float]:
    step()  # warm-up: first calls pick kernels and allocate
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def measure(folder: Path, precision: str, batch: torch.Tensor, rows: int, rounds: int) -> dict[str, list[float]]:
    dtype = torch.bfloat16 if precision == "bf16 weights" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast bf16")

    def train_step() -> None:
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()

    prompt = batch[:1].expand(rows, -1)
    with torch.inference_mode():
        cache = model(input_ids=prompt, use_cache=True).cache
    token = prompt[:, -1:]

    def decode_step() -> None:
        with torch.inference_mode(), autocast:
            model(input_ids=token, cache=cache, use_cache=True)
            cache.crop(-1)  # the next round decodes the same position again

    return {"train step": timed(train_step, rounds), "decode step": timed(decode_step, rounds * 10)}


def rollout_times(profile, run: Path, dtype: str, chains: int, rounds: int) -> list[float]:
    """Seconds per round of `chains` sampled chains per task, the teacher loaded in `dtype`."""
    teacher = load_backend({**profile.teacher, "dtype": dtype}, root=run)
    sets = problem_sets(profile)
    agents = [(Agent(profile.task(name), teacher, profile.agent), splits["train"][:chains])
              for name, splits in sets.items()]

    def step() -> None:
        for agent, problems in agents:
            agent.run(problems, temperature=profile.rollouts.temperature, seed=0)

    return timed(step, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny-cpu")
    parser.add_argument("--run", default=None, help="run folder (default: the profile's)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per train step")
    parser.add_argument("--rows", type=int, default=64, help="rows per decode step")
    parser.add_argument("--chains", type=int, default=64, help="chains per task per rollout round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    profile = load_profile(args.profile)
    run = Path(args.run or profile.run_dir)
    batch = sequences(run, args.batch)
    print(f"CPU bf16 flags: {' '.join(cpu_flags()) or 'none'}; torch {torch.__version__}, {args.threads} threads; "
          f"train batch {tuple(batch.shape)}, decode {args.rows} rows after {batch.shape[1]} tokens")
    for role in ("student", "teacher"):
        baseline: dict[str, float] = {}
        for precision in PRECISIONS:
            for operation, times in measure(run / "lab" / role, precision, batch, args.rows, args.rounds).items():
                median = statistics.median(times)
                baseline.setdefault(operation, median)
                print(f"{role:8s} {operation:12s} {precision:14s} {1000 * median:8.1f} ms "
                      f"(range {1000 * min(times):.1f}–{1000 * max(times):.1f}) "
                      f"{median / baseline[operation]:5.2f}× float32's time", flush=True)
    baseline_rollout = None
    for dtype in ("float32", "bfloat16"):
        times = rollout_times(profile, run, dtype, args.chains, max(1, args.rounds // 2))
        median = statistics.median(times)
        baseline_rollout = baseline_rollout or median
        print(f"teacher  rollout      {dtype:14s} {median:8.1f} s  (range {min(times):.1f}–{max(times):.1f}) "
              f"{median / baseline_rollout:5.2f}× float32's time", flush=True)


if __name__ == "__main__":
    main()
