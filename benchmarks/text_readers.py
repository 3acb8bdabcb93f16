"""How long the readers of untrusted model text take on adversarial shapes of a given length.

    python benchmarks/text_readers.py                 # 1 MB of each shape
    python benchmarks/text_readers.py --chars 16000   # one turn of the tiny lab (`max_turn_chars`)

Times `fcdpo.agent.read_turn` (the single agent's turn reader), `fcdpo.multi_agent.read_decision`
and `summary_answer` (the planner's and summarizer's), and `fcdpo.tasks.math.last_number` (the
math answer check) on runs of letters, digits, blank lines, "a(" and "a ", and thousands groups.
Each must grow linearly with `--chars`: a regular expression holds the GIL, so nothing stops a
quadratic search once it has started. Before the readers were made linear, 16,000 letters took the
turn reader 4.2 s and 32,000 took 15.4 s; "111," repeated to 16,000 characters took `last_number` 1.2 s.
"""

from __future__ import annotations

import argparse
import time

from fcdpo.agent import read_turn
from fcdpo.multi_agent import read_decision, summary_answer
from fcdpo.tasks import get_task
from fcdpo.tasks.math import last_number


def shapes(chars: int) -> dict[str, str]:
    half = chars // 2
    return {
        "letters": "x" * chars,
        "digits": "1" * chars,
        "a(": "a(" * half,
        "a ": "a " * half,
        "blank lines": "\n" * chars,
        "indented blank lines": " \n" * half,
        "thousands groups": ("111," * (chars // 4 + 1))[:chars],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=1_000_000, help="length of each text")
    args = parser.parse_args()
    functions = get_task("math").functions()
    readers = {
        "read_turn": lambda text: read_turn(text, None, functions, "python"),
        "read_decision": read_decision,
        "summary_answer": summary_answer,
        "last_number": last_number,
    }
    for shape, text in shapes(args.chars).items():
        for name, reader in readers.items():
            started = time.perf_counter()
            reader(text)
            print(f"{name:15} {shape:22} {len(text):>9} chars {time.perf_counter() - started:8.3f} s")


if __name__ == "__main__":
    main()
