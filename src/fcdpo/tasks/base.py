"""What every task looks like to the agent and to later stages.

Layer: functions and tasks; imports only `fcdpo.functions`.

A task is a source of problems (generated from a seed or loaded from a benchmark file), a set of
functions the model may call while solving them, a system prompt that injects those functions'
descriptions and example calls, and an answer check.
"""

from __future__ import annotations

import abc
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # imported lazily: the engine is not needed to describe a problem
    from fcdpo.functions import FunctionSet


@dataclass
class Problem:
    """One problem with its gold answer and a gold chain of calls that reaches it.

    `gold_chain` is a list of `{"name": str, "arguments": dict}` executed in order on a fresh
    `task.functions()`; the last call's result is the answer (math) or the label (fol).
    `meta` holds what later stages break results down by: `steps` for math, `hops` for fol,
    `source` ("generated", "gsm8k", "folio") everywhere.
    """

    id: str
    task: str
    question: str
    answer: str
    gold_chain: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Problem":
        return cls(**row)


def gold_computation(problem: Problem) -> tuple:
    """A problem's computation: its gold chain's calls with their arguments, in order, as a hashable
    tuple. Two questions worded differently that compute the same thing share it."""
    return tuple((step["name"], tuple(sorted((k, repr(v)) for k, v in (step.get("arguments") or {}).items())))
                 for step in problem.gold_chain)


class DatasetUnavailableError(RuntimeError):
    """A real dataset could not be loaded from the Hugging Face Hub (e.g. offline); the message names
    the dataset and how to provide a local file instead."""


class Task(abc.ABC):
    """The interface shared by `MathTask` and `FolTask`."""

    name: str
    instructions: str  # task-specific guidance placed before the function descriptions
    # The subset of the task's functions offered to the model, in this order (None: all of them).
    # A profile can trim the prompt this way, e.g. for the tiny lab's small models.
    function_names: tuple[str, ...] | None = None
    # Whether the prompt shows example calls with values (`add(a=3, b=4)`) or only the form of a call
    # (`add(a=..., b=...)`). Models trained from scratch copy the examples' numbers instead of the
    # question's (measured for the tiny-cpu profile); instruct models learn the syntax from them.
    function_examples: bool = True
    # A short prompt: the task's first instruction, one line on the call format, and one line per
    # function. Tiny models trained from scratch copy from the question far better behind it.
    brief_prompt: bool = False
    # FOL only: the user turn ends with the question's first statement and each recorded statement's
    # result hands out the next one ("ok. Next: Every wumpus is a tumpus."), so translating a statement
    # is a copy from the turn just before instead of a lookup by position in the question
    # (`FolTask.functions`, `FolTask.user_message`).
    echo_next: bool = False

    def offered(self, functions: list[Callable[..., Any]]) -> list[Callable[..., Any]]:
        """`functions` narrowed to `function_names`; an unknown name is an error listing the valid ones."""
        if self.function_names is None:
            return functions
        by_name = {f.__name__: f for f in functions}
        unknown = [n for n in self.function_names if n not in by_name]
        if unknown:
            raise ValueError(f"{self.name}: unknown function(s) {unknown}; the task has {list(by_name)}")
        return [by_name[n] for n in self.function_names]

    @abc.abstractmethod
    def functions(self, problem: Problem | None = None) -> "FunctionSet":
        """A fresh function set for one chain (FOL functions keep a knowledge base per chain).

        `problem` is the chain's problem where the functions depend on it (`echo_next`); without it
        they behave as for any problem."""

    def user_message(self, problem: Problem) -> str:
        """The user turn that opens a chain on `problem`: its question."""
        return problem.question

    @abc.abstractmethod
    def generate(self, n: int, seed: int = 0, **difficulty: Any) -> list[Problem]:
        """`n` problems, the same for the same seed and difficulty settings."""

    @abc.abstractmethod
    def check(self, predicted: str | None, gold: str) -> bool:
        """Whether a model's final answer text matches the gold answer."""

    def result_answer(self, observation: str) -> str | None:
        """A function's result read as an answer to the problem, or None when it is not one (an error,
        an acknowledgement). Evaluation compares the final answer with the chain's last such result
        (`fcdpo.evaluation.chain_metrics`: did the chain compute the answer, and did it answer what
        it computed?)."""
        text = observation.strip()
        return None if not text or text.startswith("Error") else text

    @abc.abstractmethod
    def load(self, path: str | Path, limit: int | None = None) -> list[Problem]:
        """Problems from a benchmark file in its official format."""

    def vocabulary(self) -> list[str]:
        """Names the task's generator uses (entities, concepts), for tokenizers that keep them whole."""
        return []

    def system_prompt(self, syntax: str = "python") -> str:
        """The prompt that tells the model what it can call and how to answer.

        `syntax` is "python" (the paper's `multiply(a=3, b=4)`) or "json" (`<tool_call>` blocks,
        where the chat template usually injects the schemas itself).
        """
        functions = self.functions()
        if syntax == "python" and self.brief_prompt:
            first = self.instructions.split(". ")[0].rstrip(".") + "."
            return (
                f"{first} One function call per turn, e.g. `{functions.example_call(False)}`; "
                f"end with `Final answer: <answer>`.\nFunctions:\n{functions.describe(False, brief=True)}"
            )
        if syntax == "python":
            example = functions.example_call(self.function_examples)
            how = (
                "Solve the problem step by step. In each turn write exactly one function call in "
                f"Python syntax with keyword arguments, for example `{example}`, "
                "and wait for its result. When you know the answer, write `Final answer: <answer>`."
            )
            return f"{self.instructions}\n\n{how}\n\nFunctions:\n{functions.describe(self.function_examples)}"
        if syntax == "json":
            how = (
                "Solve the problem step by step. In each turn call exactly one function and wait for "
                "its result. When you know the answer, write `Final answer: <answer>`."
            )
            return f"{self.instructions}\n\n{how}"
        raise ValueError(f"unknown call syntax {syntax!r}; expected 'python' or 'json'")


def save_problems(problems: list[Problem], path: str | Path) -> None:
    """Write problems as JSONL, one per line, in UTF-8. A problem that UTF-8 cannot store (a lone
    surrogate in its text) is a ValueError naming the file and the problem."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            try:
                f.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
            except UnicodeEncodeError as exc:
                raise ValueError(f"{path}: problem {p.id!r} cannot be written as UTF-8 (a lone surrogate, "
                                 f"U+{ord(exc.object[exc.start]):04X}, in its text)") from None


def load_problems(path: str | Path) -> list[Problem]:
    """Read problems written by `save_problems`; a bad line (not JSON, nested too deeply, an integer
    too long to read, not a problem, text UTF-8 cannot store) is a ValueError with its file and line.
    A UTF-8 byte-order mark is ignored."""
    problems = []
    with Path(path).open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                problem = Problem.from_dict(json.loads(line))
                json.dumps(problem.to_dict(), ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(f"{path}:{number}: a lone surrogate (U+{ord(exc.object[exc.start]):04X}) in "
                                 "the problem's text; UTF-8 cannot store it") from None
            except (ValueError, TypeError, RecursionError) as exc:
                reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
                raise ValueError(f"{path}:{number}: not a problem record ({reason})") from exc
            problems.append(problem)
    return problems
