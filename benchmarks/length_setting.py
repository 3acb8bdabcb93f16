"""docs/protocol.md's rule for the sealed `length` split: the lab teacher, greedy, on 200 fresh dev problems
per candidate setting (stream 5: `seed * 1000 + 5`, drawn for this and never used again).

    .venv/bin/python benchmarks/length_setting.py    # after notebook 01 has put the lab in runs/tiny-cpu/

Rule: the candidate the teacher solves least often among those it solves at least 60% of; if none
reaches 60%, the one it solves most often. Prints each candidate's accuracy and the choice.
"""

import json
import sys

from fcdpo.agent import Agent
from fcdpo.backends import load_backend
from fcdpo.config import load_profile

CANDIDATES = {"math": [{"max_number": 12}, {"max_number": 15}, {"max_number": 20}, {"min_steps": 3, "max_steps": 3}],
              "fol": [{"min_hops": 3, "max_hops": 3}]}
BAR = 0.6


def choose(scores: list[tuple[dict, float]]) -> dict:
    """The rule: the hardest candidate at or above BAR, else the easiest; ties to the earlier one."""
    above = [(c, a) for c, a in scores if a >= BAR]
    if above:
        return min(above, key=lambda ca: ca[1])[0]
    return max(scores, key=lambda ca: ca[1])[0]


def main(profile_name: str = "tiny-cpu") -> None:
    profile = load_profile(profile_name)
    teacher = load_backend(dict(profile.teacher), root=profile.run_path)
    seed = profile.seed * 1000 + 5
    for name, options in CANDIDATES.items():
        task, scores = profile.task(name), []
        for option in options:
            problems = task.generate(200, seed=seed, **{**profile.tasks[name].difficulty, **option})
            chains = Agent(task, teacher, profile.agent).run(problems, temperature=0.0)
            scores.append((option, sum(t.correct for t in chains) / len(chains)))
            print(f"{name} {json.dumps(option)}: teacher {100 * scores[-1][1]:.1f}%", flush=True)
        print(f"{name}: length_difficulty {json.dumps(choose(scores))}")


if __name__ == "__main__":
    main(*sys.argv[1:])
