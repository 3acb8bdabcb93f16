"""Print one generated problem of each task with its gold chain, as the README shows them.

Layer: commands; imports `fcdpo.tasks` and `fcdpo.agent`.

    python -m fcdpo.tasks
"""

from fcdpo.agent import format_chain, gold_messages
from fcdpo.tasks import get_task

# Settings chosen to show a typical problem of each task; seed 0, first problem.
EXAMPLES = {
    "math": {"min_steps": 3, "max_steps": 3, "distractor_rate": 0.5},
    "fol": {"min_hops": 2, "max_hops": 2, "distractors": 2},
}


def examples_markdown() -> str:
    blocks = []
    for name, difficulty in EXAMPLES.items():
        task = get_task(name)
        problem = task.generate(1, seed=0, **difficulty)[0]
        settings = ", ".join(f"{k}={v}" for k, v in difficulty.items())
        blocks.append(
            f"**{name}** — `get_task(\"{name}\").generate(1, seed=0, {settings})`\n\n"
            f"```text\n{format_chain(gold_messages(problem, task))}\n```"
        )
    return "\n\n".join(blocks)


if __name__ == "__main__":
    print(examples_markdown())
