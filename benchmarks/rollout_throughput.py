"""Batched against one-at-a-time rollouts with the tiny lab's teacher on this machine's CPU.

    python benchmarks/rollout_throughput.py                  # 32 concurrent chains per task
    python benchmarks/rollout_throughput.py --chains 64 --threads 2 --repeats 5

Both modes run the same greedy chains through the same agent: "batched" advances all chains together,
one batched `generate` per step (what `rollout` does), which also runs the system prompt the chains
share once per step instead of once per chain and, on CPU, reads its keys and values once for all rows
(`fcdpo.prefix_attention`); "sequential" runs them one chain at a time. In both,
a chain's next turn starts from the cache of its last one (`HFBackend(reuse_turns=True)`).
Greedy decoding makes both produce the same chains, which the script checks, so the comparison is of
speed alone. Each of `--repeats` rounds draws fresh problems (so no round reuses another's
tokenizations), and the speed-up is total sequential over total batched time: rounds of a second or
two are noisy on a shared machine, and more of them steady the figure. Needs the tiny lab's teacher:
run notebook 01 (`make reproduce`) first.
"""

from __future__ import annotations

import argparse
import time

import torch

from fcdpo.agent import Agent
from fcdpo.backends import load_backend
from fcdpo.config import load_profile
from fcdpo.tasks import split_problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny-cpu")
    parser.add_argument("--model", default="lab/teacher", help="model folder, relative to the run folder")
    parser.add_argument("--chains", type=int, default=32, help="concurrent chains per task")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each on fresh problems")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_profile(args.profile)
    backend = load_backend({"kind": "hf", "model": args.model}, root=cfg.run_path)
    print(f"model {backend.name}, {args.chains} chains per task, {args.threads} threads\n")
    print(f"{'round':5} {'task':6} {'mode':10} {'seconds':>8} {'chains/s':>9} {'tokens/s':>9}")
    totals = {"batched": 0.0, "sequential": 0.0}
    speed_ups = []  # per task and round
    for name, settings in cfg.tasks.items():
        task = cfg.task(name)  # the functions the profile offers, as in the pipeline
        needed = args.chains * args.repeats + 2
        problems = split_problems(task, {"eval": needed}, cfg.seed, **settings.difficulty)["eval"]
        agent = Agent(task, backend, cfg.agent)
        agent.run(problems[-2:])  # warm-up: first-call overheads out of the timing
        for r in range(args.repeats):
            batch = problems[r * args.chains : (r + 1) * args.chains]
            results, seconds = {}, {}
            for mode in ("batched", "sequential"):
                started = time.perf_counter()
                if mode == "batched":
                    chains = agent.run(batch)
                else:
                    chains = [agent.run([p])[0] for p in batch]
                seconds[mode] = time.perf_counter() - started
                totals[mode] += seconds[mode]
                tokens = sum(t.tokens["completion"] for t in chains)
                results[mode] = [t.messages for t in chains]
                print(f"{r + 1:5} {name:6} {mode:10} {seconds[mode]:8.1f} {len(chains) / seconds[mode]:9.2f} "
                      f"{tokens / seconds[mode]:9.0f}")
            same = sum(a == b for a, b in zip(results["batched"], results["sequential"]))
            print(f"{r + 1:5} {name:6} identical chains in both modes: {same}/{len(batch)}")
            speed_ups.append(seconds["sequential"] / seconds["batched"])
    print(f"\nspeed-up of batched over sequential: {totals['sequential'] / totals['batched']:.1f}x "
          f"(per task and round: {min(speed_ups):.1f}-{max(speed_ups):.1f}x)")


if __name__ == "__main__":
    main()
