"""GSM8K-style math word problems: arithmetic functions, a seeded generator, GSM8K loading.

Layer: functions and tasks; imports `fcdpo.functions` and the task modules base, calculator and records.

The model solves a problem by calling exact arithmetic functions (`add`, `subtract`, `multiply`,
`divide`, `remainder`, `percent_of`, `round_to`, `calculate`) one step at a time, then writes
`Final answer: <number>`. All arithmetic is exact on sympy rationals: float arguments are read
through their shortest decimal representation (`0.1` is exactly `1/10`), so chains never pick up
binary rounding error.

Problems come from `MathTask.generate` (compositional word problems with a known gold chain) or
from the official GSM8K jsonl via `load_gsm8k`, whose calculator annotations `<<16-3-4=9>>` become
`calculate(expression="16-3-4")` gold calls.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import sympy

from fcdpo.functions import FunctionSet, format_value
from fcdpo.tasks.base import DatasetUnavailableError, Problem, Task
from fcdpo.tasks.calculator import MAX_MAGNITUDE, evaluate_expression
from fcdpo.tasks.records import (
    MAX_LIST_ITEMS,
    BadRow,
    Loaded,
    collect,
    hub_offline_from_environment,
    jsonl_rows,
    text_field,
)

__all__ = [
    "GSM8KUnavailableError",
    "MathTask",
    "add",
    "calculate",
    "canonical_number",
    "divide",
    "gsm8k_expression",
    "last_number",
    "load_gsm8k",
    "multiply",
    "parse_number",
    "percent_of",
    "remainder",
    "round_to",
    "subtract",
]


# --------------------------------------------------------------------------------------------
# Numbers


def _exact(value: Any, name: str) -> sympy.Rational:
    """`value` as an exact sympy rational; ValueError naming the argument otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if isinstance(value, sympy.Rational):
        number = value
    elif isinstance(value, int):
        number = sympy.Integer(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        number = sympy.Rational(repr(value))
    elif isinstance(value, Fraction):
        number = sympy.Rational(value.numerator, value.denominator)
    else:
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r:.40}")
    return _bounded(number, name)


def _bounded(number: sympy.Rational, what: str) -> sympy.Rational:
    if abs(number.p) >= MAX_MAGNITUDE or number.q >= MAX_MAGNITUDE:
        raise ValueError(f"{what} is too large (numbers must stay below 10**100)")
    return number


# --------------------------------------------------------------------------------------------
# The functions the model may call
#
# They are annotated `-> float` for the prompt and the schema ("number"); their values are
# exact sympy rationals, which the engine prints exactly (12, 3.5, 7/3).


def add(a: float, b: float) -> float:
    """Add two numbers exactly.

    Example: add(a=3, b=4)

    Args:
        a: The first number.
        b: The second number.

    Returns:
        The sum a + b.
    """
    return _bounded(_exact(a, "a") + _exact(b, "b"), "the result")


def subtract(a: float, b: float) -> float:
    """Subtract the second number from the first exactly.

    Example: subtract(a=10, b=4)

    Args:
        a: The number to subtract from.
        b: The number to subtract.

    Returns:
        The difference a - b.
    """
    return _bounded(_exact(a, "a") - _exact(b, "b"), "the result")


def multiply(a: float, b: float) -> float:
    """Multiply two numbers exactly.

    Example: multiply(a=3, b=4)

    Args:
        a: The first factor.
        b: The second factor.

    Returns:
        The product a * b.
    """
    return _bounded(_exact(a, "a") * _exact(b, "b"), "the result")


def divide(a: float, b: float) -> float:
    """Divide the first number by the second exactly, keeping any fraction instead of rounding down.

    Example: divide(a=12, b=4)

    Args:
        a: The dividend, the number being divided.
        b: The divisor, which must not be zero.

    Returns:
        The quotient a / b.
    """
    divisor = _exact(b, "b")
    if divisor == 0:
        raise ValueError("cannot divide by zero (b is 0)")
    return _bounded(_exact(a, "a") / divisor, "the result")


def remainder(a: float, b: float) -> float:
    """The remainder after dividing the first number by the second; 17 eggs in boxes of 5 leave 2.

    Example: remainder(a=17, b=5)

    Args:
        a: The number being divided.
        b: The divisor, which must not be zero.

    Returns:
        a - b * floor(a / b), which has the sign of b.
    """
    dividend, divisor = _exact(a, "a"), _exact(b, "b")
    if divisor == 0:
        raise ValueError("cannot take a remainder after dividing by zero (b is 0)")
    return dividend - divisor * sympy.floor(dividend / divisor)


def percent_of(percent: float, value: float) -> float:
    """Compute a percentage of a number exactly; 25 percent of 80 is 20.

    Example: percent_of(percent=25, value=80)

    Args:
        percent: The percentage, as a number of percent (25 means 25%).
        value: The number to take the percentage of.

    Returns:
        percent / 100 * value.
    """
    return _bounded(_exact(percent, "percent") * _exact(value, "value") / 100, "the result")


def round_to(value: float, digits: int) -> float:
    """Round a number to a given number of decimal places, halves away from zero (2.5 becomes 3).

    Example: round_to(value=3.456, digits=2)

    Args:
        value: The number to round.
        digits: Decimal places to keep, from -10 to 10; 0 rounds to a whole number and -1 to tens.

    Returns:
        The rounded number.
    """
    if isinstance(digits, bool) or not isinstance(digits, int) or not -10 <= digits <= 10:
        raise ValueError(f"digits must be a whole number from -10 to 10, got {digits!r}")
    number = _exact(value, "value")
    scale = sympy.Rational(10) ** digits
    magnitude = sympy.floor(abs(number) * scale + sympy.Rational(1, 2))
    return (magnitude if number >= 0 else -magnitude) / scale


def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression exactly, using numbers, + - * / // % ** and parentheses.

    Example: calculate(expression="(16 - 3 - 4) * 2")

    Args:
        expression: The expression, at most 500 characters, without names or function calls.

    Returns:
        The exact value of the expression.
    """
    return evaluate_expression(expression)


MATH_FUNCTIONS = (add, subtract, multiply, divide, remainder, percent_of, round_to, calculate)


# --------------------------------------------------------------------------------------------
# Reading numbers in answers

# A number as people write answers: 18, -3, 1,800, 18.0, 3.5, 7/2. The look-behind keeps a minus
# in "10-3" from making the 3 negative and keeps "v2" or "3.5.1" pieces out. A search may start
# after each comma of "1,000,000,...", so the groups a thousands run may have are bounded: no more
# than an answer can have digits (`_MAX_ANSWER_DIGITS`), which keeps `last_number` linear in its text.
_MAX_ANSWER_DIGITS = 200  # a longer digit run is not an answer and would be slow to convert
_NUMBER = re.compile(
    rf"(?<![\w.])(?P<sign>-)?(?P<whole>\d{{1,3}}(?:,\d{{3}}){{1,{_MAX_ANSWER_DIGITS // 3}}}(?![\d,])|\d+)"
    r"(?:\.(?P<fraction>\d+))?(?:/(?P<denominator>\d+))?(?![\w/])"
)


def _number_from_match(match: re.Match[str]) -> sympy.Rational | None:
    whole = match["whole"].replace(",", "")
    fraction = match["fraction"] or ""
    denominator = match["denominator"]
    if len(whole) + len(fraction) + len(denominator or "") > _MAX_ANSWER_DIGITS:
        return None
    value = Fraction(f"{whole}.{fraction}" if fraction else whole)
    if denominator is not None:
        if int(denominator) == 0:
            return None
        value /= int(denominator)
    if match["sign"]:
        value = -value
    return sympy.Rational(value.numerator, value.denominator)


def parse_number(text: str) -> sympy.Rational | None:
    """`text` as an exact number if it is one number and nothing else (`"1,800"`, `"-3.5"`, `"7/2"`).

    A leading `$` and surrounding whitespace are allowed; anything else gives None.
    """
    if not isinstance(text, str):
        return None
    stripped = text.strip().removeprefix("$").strip()
    match = _NUMBER.fullmatch(stripped)
    return _number_from_match(match) if match else None


def last_number(text: str | None) -> sympy.Rational | None:
    """The last number written in `text` (`"The answer is $1,800."` gives 1800), or None."""
    if not isinstance(text, str):
        return None
    for match in reversed(list(_NUMBER.finditer(text))):
        value = _number_from_match(match)
        if value is not None:
            return value
    return None


def canonical_number(value: sympy.Rational | Fraction | int) -> str:
    """The canonical answer string, formatted as the engine shows results to the model: `18`,
    `-3`, `3.5` for finite decimals, else `7/3`."""
    if not isinstance(value, sympy.Rational):
        value = Fraction(value)
        value = sympy.Rational(value.numerator, value.denominator)
    return format_value(value)


# --------------------------------------------------------------------------------------------
# The generator's vocabulary

_NAMES = (
    "Ana", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jamal", "Kira",
    "Liam", "Maya", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera",
    "Wei", "Yusuf", "Zoe",
)
_OTHER_OBJECTS = (
    "apples", "books", "cookies", "pencils", "balloons", "toy cars", "oranges", "comic books",
    "shells", "stamps", "marbles", "stickers",
)

# Step kinds and how many function calls (operations) each one costs.
_STEP_COST = {
    "gain": 1,
    "lose": 1,
    "scale": 1,
    "split": 1,
    "gain_groups": 2,
    "lose_groups": 2,
    "lose_percent": 2,
}
STEP_KINDS = tuple(_STEP_COST)
_PERCENTS = (10, 20, 25, 50, 75)
_GROWTH_WORDS = {2: "doubles", 3: "triples"}


@dataclass(frozen=True)
class _Theme:
    """A story frame: what is counted, in which unit, and how each step kind is told.

    Templates are `str.format` strings over: name (the protagonist), friend (another person), obj
    (the counted thing), k (an amount), p and m (p groups of m), grows ("doubles", "triples" or
    "becomes 4 times as large") and percent. A theme without templates for a step never uses it.
    """

    unit: str
    objects: tuple[str, ...]
    start: tuple[str, ...]
    question: tuple[str, ...]
    steps: dict[str, tuple[str, ...]]
    distractors: tuple[str, ...]


_THEMES = (
    _Theme(
        unit="items",
        objects=("marbles", "stickers", "baseball cards", "stamps", "seashells", "beads", "crayons"),
        start=("{name} has {q} {obj}.", "{name} starts with {q} {obj}.", "{name} owns {q} {obj}."),
        question=("How many {obj} does {name} have now?", "How many {obj} does {name} have in the end?"),
        steps={
            "gain": (
                "{name} finds {k} more {obj}.",
                "{friend} gives {name} {k} {obj}.",
                "{name} gets {k} more {obj} as a gift.",
            ),
            "lose": (
                "{name} gives {k} {obj} to {friend}.",
                "{name} loses {k} {obj}.",
                "{name} trades away {k} {obj}.",
            ),
            "scale": ("The number of {obj} {name} has {grows}.", "{name}'s collection of {obj} {grows}."),
            "split": (
                "{name} sorts the {obj} into {k} equal piles, keeps one pile and gives the rest away.",
                "{name} packs the {obj} equally into {k} bags and keeps only one bag.",
            ),
            "gain_groups": (
                "{name} buys {p} packs with {m} {obj} in each pack.",
                "{name} gets {p} boxes of {m} {obj} each.",
            ),
            "lose_groups": (
                "{name} gives {m} {obj} to each of {p} friends.",
                "{name} fills {p} gift bags with {m} {obj} each and gives them away.",
            ),
            "lose_percent": (
                "{name} gives away {percent}% of the {obj}.",
                "{name} loses {percent}% of the {obj}.",
            ),
        },
        distractors=("{friend} has {k} {obj}.", "{friend} wants {k} {obj} for a birthday."),
    ),
    _Theme(
        unit="dollars",
        objects=("dollars",),
        start=("{name} has ${q}.", "{name} has ${q} in a piggy bank.", "{name} has saved ${q}."),
        question=(
            "How many dollars does {name} have now?",
            "How much money, in dollars, does {name} have left?",
        ),
        steps={
            "gain": (
                "{name} earns ${k} washing cars.",
                "{friend} pays {name} ${k} for help with a project.",
                "{name} gets ${k} as a birthday present.",
            ),
            "lose": (
                "{name} spends ${k} on lunch.",
                "{name} buys a book for ${k}.",
                "{name} pays ${k} for a movie ticket.",
            ),
            "scale": ("The amount of money {name} has {grows} after a good month.",),
            "split": ("{name} divides the money equally into {k} envelopes and keeps only one envelope.",),
            "gain_groups": (
                "{name} works {p} hours and earns ${m} per hour.",
                "{name} sells {p} cupcakes for ${m} each.",
            ),
            "lose_groups": (
                "{name} buys {p} notebooks that cost ${m} each.",
                "{name} buys {p} tickets at ${m} each.",
            ),
            "lose_percent": (
                "{name} donates {percent}% of the money to charity.",
                "{name} spends {percent}% of the money on a gift.",
            ),
        },
        distractors=("{friend} has ${k}.", "A toy in the shop window costs ${k}."),
    ),
    _Theme(
        unit="minutes",
        objects=("minutes",),
        start=(
            "{name} plans to practice the piano for {q} minutes this week.",
            "{name}'s practice plan for the week is {q} minutes long.",
        ),
        question=(
            "How many minutes of practice are in {name}'s plan now?",
            "How many minutes does {name} plan to practice now?",
        ),
        steps={
            "gain": (
                "{name} adds {k} more minutes to the plan.",
                "The teacher asks {name} for {k} extra minutes.",
            ),
            "lose": ("{name} cuts {k} minutes from the plan.", "{name} removes {k} minutes from the plan."),
            "scale": ("The teacher says the plan is too short, and it {grows}.",),
            "gain_groups": (
                "{name} adds {p} sessions of {m} minutes each.",
                "{name} adds {p} extra lessons that last {m} minutes each.",
            ),
            "lose_groups": ("{name} drops {p} sessions of {m} minutes each from the plan.",),
            "lose_percent": ("{name} cuts {percent}% of the planned time.",),
        },
        distractors=("{friend} practices the violin for {k} minutes a day.", "A piano lesson costs ${k}."),
    ),
    _Theme(
        unit="km",
        objects=("km",),
        start=("{name} plans a bike trip of {q} km.", "{name}'s bike route is {q} km long."),
        question=("How many km does {name}'s ride cover in total?", "How many km will {name} ride in total?"),
        steps={
            "gain": ("{name} adds a detour of {k} km.", "{name} extends the route by {k} km."),
            "lose": (
                "{name} finds a shortcut that saves {k} km.",
                "A closed road makes {name} cut {k} km from the route.",
            ),
            "scale": ("{name} decides to ride the whole route so far {times} times instead of once.",),
            "gain_groups": ("{name} adds {p} laps of {m} km each around the lake.",),
            "lose_groups": ("{name} skips {p} hills that each add {m} km to the route.",),
        },
        distractors=("{friend} rides {k} km to school every day.", "{name}'s bike has {k} gears."),
    ),
    _Theme(
        unit="liters",
        objects=("liters",),
        start=("{name}'s tank holds {q} liters of water.", "There are {q} liters of water in {name}'s tank."),
        question=(
            "How many liters of water are in {name}'s tank now?",
            "How many liters of water does the tank hold in the end?",
        ),
        steps={
            "gain": ("{name} pours {k} more liters into the tank.", "Rain adds {k} liters to the tank."),
            "lose": ("{name} uses {k} liters to water the garden.", "{k} liters leak out of the tank."),
            "gain_groups": ("{name} pours in {p} buckets of {m} liters each.",),
            "lose_groups": ("{name} fills {p} bottles of {m} liters each from the tank.",),
            "lose_percent": ("{percent}% of the water in the tank evaporates.",),
        },
        distractors=("{friend}'s tank holds {k} liters.", "The garden has {k} rows of tomatoes."),
    ),
)

_GENERIC_DISTRACTORS = (
    "{name} is {k} years old.",
    "{friend} has {k} {other}.",
    "{name} also has {k} {other}.",
    "It takes {name} {k} minutes to walk to the park.",
    "There are {k} students in {name}'s class.",
)


def _call(name: str, **arguments: int) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


@dataclass
class _Step:
    kind: str
    values: dict[str, Any]  # template slots
    calls: list[dict[str, Any]]
    result: int


class _ProblemBuilder:
    """Draws random story steps; `cap` (max_number squared) bounds every running quantity."""

    def __init__(self, rng: random.Random, max_number: int) -> None:
        self.rng = rng
        self.max_number = max_number
        self.cap = max_number * max_number

    def feasible_step(self, kind: str, q: int) -> _Step | None:
        """One random step of `kind` applied to quantity `q`, or None if it cannot apply."""
        rng, top = self.rng, self.max_number
        if kind == "gain":
            high = min(top, self.cap - q)
            if high < 2:
                return None
            k = rng.randint(2, high)
            return _Step(kind, {"k": k}, [_call("add", a=q, b=k)], q + k)
        if kind == "lose":
            high = min(top, q - 2)  # keep at least 2 so later plural nouns read well
            if high < 2:
                return None
            k = rng.randint(2, high)
            return _Step(kind, {"k": k}, [_call("subtract", a=q, b=k)], q - k)
        if kind == "scale":
            high = min(4, top, self.cap // q)
            if high < 2:
                return None
            f = rng.randint(2, high)
            grows = _GROWTH_WORDS.get(f, f"becomes {f} times as large")
            return _Step(kind, {"grows": grows, "times": f}, [_call("multiply", a=q, b=f)], q * f)
        if kind == "split":
            divisors = [k for k in range(2, min(top, q // 2) + 1) if q % k == 0]
            if not divisors:
                return None
            k = rng.choice(divisors)
            return _Step(kind, {"k": k}, [_call("divide", a=q, b=k)], q // k)
        if kind == "gain_groups":
            room = self.cap - q
            p_high = min(10, top, room // 2)
            if p_high < 2:
                return None
            p = rng.randint(2, p_high)
            m = rng.randint(2, min(top, room // p))
            total = p * m
            calls = [_call("multiply", a=p, b=m), _call("add", a=q, b=total)]
            return _Step(kind, {"p": p, "m": m}, calls, q + total)
        if kind == "lose_groups":
            room = q - 2
            p_high = min(10, top, room // 2)
            if p_high < 2:
                return None
            p = rng.randint(2, p_high)
            m = rng.randint(2, min(top, room // p))
            total = p * m
            calls = [_call("multiply", a=p, b=m), _call("subtract", a=q, b=total)]
            return _Step(kind, {"p": p, "m": m}, calls, q - total)
        if kind == "lose_percent":
            options = [pc for pc in _PERCENTS if q * pc % 100 == 0 and q - q * pc // 100 >= 2]
            if not options:
                return None
            pc = rng.choice(options)
            part = q * pc // 100
            calls = [_call("percent_of", percent=pc, value=q), _call("subtract", a=q, b=part)]
            return _Step(kind, {"percent": pc}, calls, q - part)
        raise AssertionError(f"unknown step kind {kind!r}")


def _pick_other(rng: random.Random, choices: Iterable[str], *exclude: str) -> str:
    return rng.choice([c for c in choices if c not in exclude])


# --------------------------------------------------------------------------------------------
# GSM8K

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# "20%" as a number (not "20 % 3", a remainder): "20%*50" means (20/100)*50.
_PERCENT_SIGN = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*%(?!\s*[\d.(])")
_LEADING_ZEROS = re.compile(r"(?<![\d.])0+(?=\d)")
_HUB_DATASET = "openai/gsm8k"
_GSM8K_URL = "https://github.com/openai/grade-school-math/tree/master/grade_school_math/data"


class GSM8KUnavailableError(DatasetUnavailableError):
    """GSM8K could not be fetched from the Hugging Face Hub; pass a local jsonl path instead."""


def gsm8k_expression(annotation: str) -> str | None:
    """The calculator expression of a GSM8K annotation body such as `"$2*.5=1"` -> `"2*.5"`.

    Dollar signs and thousands commas are removed, `20%` becomes `(20/100)` and leading zeros are
    dropped (`05` is not a Python number). Returns None when there is no `=` or the calculator
    refuses the expression.
    """
    expression, equals, _result = annotation.rpartition("=")
    if not equals:
        return None
    expression = expression.replace("$", "")
    expression = _THOUSANDS_COMMA.sub("", expression)
    expression = _PERCENT_SIGN.sub(r"(\1/100)", expression)
    expression = _LEADING_ZEROS.sub("", expression).strip()
    try:
        evaluate_expression(expression)
    except ValueError:
        return None
    return expression


def gsm8k_problem(record: dict[str, Any], problem_id: str) -> Problem:
    """One GSM8K record (`{"question": ..., "answer": "...<<a*b=c>>...\\n#### 9"}`) as a Problem.

    The answer after `####` is canonicalised (`1,000` -> `1000`). Every calculator annotation the
    calculator accepts becomes a `calculate` gold call; `meta` records how many were skipped
    (`skipped_annotations`) and whether the last call's value equals the answer
    (`chain_reaches_answer`: GSM8K sometimes does the last step without an annotation).
    """
    if not isinstance(record, dict) or not isinstance(record.get("question"), str) or not isinstance(
        record.get("answer"), str
    ):
        raise ValueError(f"{problem_id}: expected an object with string fields 'question' and 'answer'")
    solution = record["answer"]
    if "####" not in solution:
        raise ValueError(f"{problem_id}: the answer field has no '#### <answer>' line")
    body, _, final = solution.rpartition("####")
    value = parse_number(final.strip().replace(",", ""))
    if value is None:
        raise ValueError(f"{problem_id}: the final answer {final.strip()!r} is not a number")
    chain, skipped, last_value = [], 0, None
    for annotation in _ANNOTATION.findall(body):
        expression = gsm8k_expression(annotation)
        if expression is None:
            skipped += 1
            continue
        chain.append({"name": "calculate", "arguments": {"expression": expression}})
        last_value = evaluate_expression(expression)
    meta = {
        "source": "gsm8k",
        "steps": len(chain),
        "skipped_annotations": skipped,
        "chain_reaches_answer": last_value is not None and last_value == value,
        "solution": body.strip(),
    }
    return Problem(problem_id, "math", record["question"].strip(), canonical_number(value), chain, meta)


def gsm8k_maker(prefix: str) -> Callable[[Any, int, int], Problem]:
    """What `collect` makes of one GSM8K row: its problem (ids `gsm8k-<prefix>-<row>`), or a BadRow."""

    def make(record: Any, line: int, index: int) -> Problem:
        if not isinstance(record, dict):
            raise BadRow("expected a JSON object")
        text_field(record, "question")
        answer = text_field(record, "answer")
        annotations = len(_ANNOTATION.findall(answer))
        if annotations > MAX_LIST_ITEMS:
            raise BadRow(f"{annotations} calculator annotations; the limit is {MAX_LIST_ITEMS}")
        try:
            return gsm8k_problem(record, f"gsm8k-{prefix}-{index}")
        except ValueError as exc:  # the record's shape was checked above: what is left is its answer
            raise BadRow(str(exc).split(": ", 1)[-1], kind="gold") from exc

    return make


def read_gsm8k(path: str | Path, *, strict: bool = False, limit: int | None = None) -> Loaded:
    """GSM8K rows from an official jsonl file (`{"question", "answer"}`, `#### <answer>` last).

    Problem ids are `gsm8k-<file stem>-<row>` (row: 0-based among the file's non-blank lines)."""
    path = Path(path)
    rows = jsonl_rows(path, "GSM8K")
    return collect("gsm8k", str(path), rows, gsm8k_maker(path.stem), strict, limit)


def _read_gsm8k_file(path: str | Path, limit: int | None) -> list[Problem]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GSM8K file at {path}; expected the official jsonl (see {_GSM8K_URL})")
    return read_gsm8k(path, strict=True, limit=limit).problems


def load_gsm8k(
    path: str | Path | None = None, split: str = "test", limit: int | None = None
) -> list[Problem]:
    """GSM8K problems from a local official jsonl file, or from the Hub dataset `openai/gsm8k`.

    Args:
        path: A local `train.jsonl` / `test.jsonl` in the official format. None loads `split` of
            `openai/gsm8k` (config "main") with `datasets.load_dataset`, which needs network
            access or a cached copy.
        split: "train" or "test"; used only when `path` is None.
        limit: Keep at most this many problems (the first ones).

    Returns:
        Problems with ids `gsm8k-<file stem or split>-<index>`.

    Raises:
        GSM8KUnavailableError: when `path` is None and the Hub dataset cannot be loaded (e.g.
            offline); the message says to pass a local path.
        FileNotFoundError, ValueError: for a missing file or a malformed record (with its line).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be at least 0, got {limit}")
    if path is not None:
        return _read_gsm8k_file(path, limit)
    advice = f"download the official {split}.jsonl ({_GSM8K_URL}) and pass it: load_gsm8k(path=...)"
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise GSM8KUnavailableError(f"the `datasets` package is not installed; {advice}") from exc
    try:
        with hub_offline_from_environment():
            rows = load_dataset(_HUB_DATASET, "main", split=split)
    except Exception as exc:  # noqa: BLE001 - any failure here means the same thing to the caller
        raise GSM8KUnavailableError(
            f"could not load {_HUB_DATASET} (split {split!r}) from the Hugging Face Hub: "
            f"{type(exc).__name__}: {exc}; {advice}"
        ) from exc
    count = len(rows) if limit is None else min(limit, len(rows))
    return [gsm8k_problem(dict(rows[i]), f"gsm8k-{split}-{i}") for i in range(count)]


# --------------------------------------------------------------------------------------------
# The task


class MathTask(Task):
    """Grade-school math word problems solved with exact arithmetic function calls."""

    name = "math"
    instructions = (
        "You solve math word problems by calling the arithmetic functions below, one step at a "
        "time. Use the numbers from the problem and the results of earlier calls. The answer is "
        "a number."
    )

    def functions(self, problem: Problem | None = None) -> FunctionSet:
        """A fresh set of the arithmetic functions (they keep no state and do not depend on the problem)."""
        return FunctionSet(self.offered(list(MATH_FUNCTIONS)))

    def generate(
        self,
        n: int,
        seed: int = 0,
        *,
        min_steps: int = 2,
        max_steps: int = 4,
        max_number: int = 20,
        distractor_rate: float = 0.3,
        step_kinds: Sequence[str] | None = None,
    ) -> list[Problem]:
        """`n` generated word problems with gold chains and whole-number answers.

        Each problem tells a short story: a person starts with a quantity (items, dollars,
        minutes, km or liters; `meta["unit"]`), each following sentence changes it (gains, loses,
        buys p packs of m, gives m to each of p friends, doubles, splits into k equal piles and
        keeps one, loses a percentage), and the question asks for the final quantity. Every
        intermediate value is a whole number of at least 2, divisions are exact, and the gold
        chain has one call per operation with earlier results copied in as literals.

        Difficulty controls:
            min_steps, max_steps: the number of operations (= function calls = `meta["steps"]`)
                is drawn uniformly from this range, 1 <= min_steps <= max_steps <= 8. Packs,
                gifts to each of several friends and percentages cost two operations each.
            max_number: the largest number a sentence introduces (percentages come from 10, 20,
                25, 50 and 75), at least 5; running quantities stay at most max_number**2.
            distractor_rate: the chance, from 0 to 1, that each story sentence is followed by an
                irrelevant sentence with a number (`meta["distractors"]` counts them).

            step_kinds: the kinds of story step to use (None: all of them, see `STEP_KINDS`); must
                include "gain" and "lose", which fit any quantity. Leaving out "lose_percent"
                keeps `percent_of` out of the gold chains.

        The same seed and settings give identical problems; ids are `math-<seed>-<index>`, and a
        shorter run is a prefix of a longer one.
        """
        if n < 0:
            raise ValueError(f"n must be at least 0, got {n}")
        if not 1 <= min_steps <= max_steps <= 8:
            raise ValueError(
                f"need 1 <= min_steps <= max_steps <= 8, got min_steps={min_steps}, max_steps={max_steps}"
            )
        if max_number < 5:
            raise ValueError(f"max_number must be at least 5, got {max_number}")
        if not 0.0 <= distractor_rate <= 1.0:
            raise ValueError(f"distractor_rate must be between 0 and 1, got {distractor_rate}")
        kinds = tuple(STEP_KINDS if step_kinds is None else step_kinds)
        unknown = sorted(set(kinds) - set(STEP_KINDS))
        if unknown or not {"gain", "lose"} <= set(kinds):
            raise ValueError(
                f"step_kinds must be drawn from {list(STEP_KINDS)} and include 'gain' and 'lose', got {list(kinds)}"
            )
        rng = random.Random(seed)
        builder = _ProblemBuilder(rng, max_number)
        return [
            self._generate_one(rng, builder, f"math-{seed}-{index}", min_steps, max_steps, distractor_rate, kinds)
            for index in range(n)
        ]

    def _generate_one(
        self,
        rng: random.Random,
        builder: _ProblemBuilder,
        problem_id: str,
        min_steps: int,
        max_steps: int,
        distractor_rate: float,
        step_kinds: tuple[str, ...] = (),
    ) -> Problem:
        theme = rng.choice(_THEMES)
        name = rng.choice(_NAMES)
        obj = rng.choice(theme.objects)
        target = rng.randint(min_steps, max_steps)
        quantity = rng.randint(3, builder.max_number)

        story = [rng.choice(theme.start).format(name=name, q=quantity, obj=obj)]
        chain: list[dict[str, Any]] = []
        kinds: list[str] = []
        while len(chain) < target:
            remaining = target - len(chain)
            candidates = [k for k in theme.steps if _STEP_COST[k] <= remaining and k in step_kinds]
            # Prefer a different kind from the previous step so stories vary.
            rng.shuffle(candidates)
            candidates.sort(key=lambda k: bool(kinds) and k == kinds[-1])
            step = None
            for kind in candidates:
                step = builder.feasible_step(kind, quantity)
                if step is not None:
                    break
            if step is None:  # cannot happen: "gain" or "lose" always fits a quantity in [2, cap]
                raise AssertionError(f"no step applies to quantity {quantity}")
            friend = _pick_other(rng, _NAMES, name)
            template = rng.choice(theme.steps[step.kind])
            story.append(template.format(name=name, friend=friend, obj=obj, **step.values))
            chain.extend(step.calls)
            kinds.append(step.kind)
            quantity = step.result

        distractor_count = 0
        sentences = []
        for sentence in story:
            sentences.append(sentence)
            if rng.random() < distractor_rate:
                sentences.append(self._distractor(rng, theme, name, obj, builder.max_number))
                distractor_count += 1
        sentences.append(rng.choice(theme.question).format(name=name, obj=obj))
        meta = {
            "source": "generated",
            "steps": len(chain),
            "unit": theme.unit,
            "operations": kinds,
            "distractors": distractor_count,
        }
        return Problem(problem_id, self.name, " ".join(sentences), str(quantity), chain, meta)

    @staticmethod
    def _distractor(rng: random.Random, theme: _Theme, name: str, obj: str, max_number: int) -> str:
        template = rng.choice(theme.distractors + _GENERIC_DISTRACTORS)
        return template.format(
            name=name,
            friend=_pick_other(rng, _NAMES, name),
            obj=obj,
            other=_pick_other(rng, _OTHER_OBJECTS, obj),
            k=rng.randint(2, max_number),
        )

    def check(self, predicted: str | None, gold: str) -> bool:
        """Whether the last number in `predicted` equals `gold` exactly as a rational.

        Accepts `18`, `18.0`, `$18`, `18 dollars`, `1,800` for 1800, `Final answer: 18`, `The
        answer is 18.` and `18/1`. None, text without a number, or a gold that is not a number
        give False.
        """
        expected = last_number(gold)
        if expected is None:
            return False
        found = last_number(predicted)
        return found is not None and found == expected

    def load(self, path: str | Path, limit: int | None = None) -> list[Problem]:
        """GSM8K problems from the official jsonl at `path` (see `load_gsm8k`)."""
        return load_gsm8k(path=path, limit=limit)
