"""Greedy held-out accuracy of the tiny lab's teacher and student, through the real agent loop.

    python benchmarks/lab_accuracy.py                 # the first 100 held-out problems per task
    python benchmarks/lab_accuracy.py --problems 200

Reads the models notebook 01 built (`runs/<profile>/lab/{teacher,student}`); the problems are the
first of the profile's held-out split, which the lab never trains on.
"""

from __future__ import annotations

import argparse
import json
import time

from fcdpo.agent import Agent
from fcdpo.backends import load_backend
from fcdpo.config import load_profile
from fcdpo.tasks import split_problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny-cpu")
    parser.add_argument("--problems", type=int, default=100, help="held-out problems per task")
    args = parser.parse_args()
    cfg = load_profile(args.profile)
    for role, spec in (("teacher", cfg.teacher), ("student", cfg.student)):
        backend = load_backend(spec, root=cfg.run_path)
        for name, settings in cfg.tasks.items():
            task = cfg.task(name)
            # The held-out split is drawn first, so its first problems do not depend on the sizes asked for.
            problems = split_problems(task, {"eval": args.problems}, cfg.seed, **settings.difficulty)["eval"]
            started = time.perf_counter()
            chains = Agent(task, backend, cfg.agent).run(problems)
            seconds = time.perf_counter() - started
            print(json.dumps({"model": role, "task": name, "problems": len(chains),
                              "greedy_accuracy": sum(t.correct for t in chains) / len(chains),
                              "chains_per_second": round(len(chains) / seconds, 2)}), flush=True)


if __name__ == "__main__":
    main()
