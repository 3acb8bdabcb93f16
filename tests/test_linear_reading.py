"""Model text is read in time linear in its length: no shape of turn stalls a run.

A regular expression holds the GIL, so no thread-based deadline stops a slow search; the only
defence is that every pattern run on untrusted text is linear, and that the text is cut where it
enters (a chain's turn, a step-metrics reply).

These tests assert no speed: each read runs in a child process that must finish within `HANG`
seconds, hundreds of times what a linear read of a megabyte takes (well under 0.1 s) and a vanishing
part of what a quadratic one took (over ten minutes). The times themselves are measured by
`benchmarks/text_readers.py`."""

from __future__ import annotations

import multiprocessing

import pytest

from fcdpo.agent import Agent, AgentConfig, read_turn
from fcdpo.multi_agent import read_decision, summary_answer
from fcdpo.step_metrics import step_metrics
from fcdpo.tasks import Problem, get_task
from fcdpo.tasks.math import last_number
from tests.scripted import ScriptedBackend

MATH = get_task("math")
MEGABYTE = 1_000_000
# Shapes that made a search start again at every position: runs of word characters with no "(",
# blank lines before no "{", and their mixtures.
ADVERSARIAL = {
    "letters": "x" * MEGABYTE,
    "calls": "a(" * (MEGABYTE // 2),
    "words": "a " * (MEGABYTE // 2),
    "blank lines": "\n" * MEGABYTE,
    "indented blank lines": " \n" * (MEGABYTE // 2),
    "letters then a space": "x" * (MEGABYTE - 2) + " (",
    "digits": "1" * MEGABYTE,
}


HANG = 30.0  # seconds: a stalled search, not a slow machine


def finishes(function, *args) -> bool:
    """Whether `function(*args)` returns within HANG seconds, run in a forked child (a stalled regular
    expression cannot be interrupted in this process); the child is killed if it does not."""
    child = multiprocessing.get_context("fork").Process(target=function, args=args, daemon=True)
    child.start()
    child.join(HANG)
    stalled = child.is_alive()
    if stalled:
        child.kill()
        child.join()
    return not stalled and child.exitcode == 0


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_the_turn_reader_never_stalls_on_a_megabyte(shape):
    functions = MATH.functions()
    assert finishes(read_turn, ADVERSARIAL[shape], None, functions, "python")
    assert finishes(read_turn, ADVERSARIAL[shape], None, functions, "json")


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_the_multi_agent_readers_never_stall_on_a_megabyte(shape):
    assert finishes(read_decision, ADVERSARIAL[shape])
    assert finishes(summary_answer, ADVERSARIAL[shape])


def test_a_long_word_is_still_a_thought_and_a_broken_call_still_a_parse_error():
    functions = MATH.functions()
    assert read_turn("x" * 5000, None, functions, "python").kind == "parse_error"  # too long to be read
    assert read_turn("I will think about it.", None, functions, "python").kind == "thought"
    assert read_turn("Let me call multiply(a=3,", None, functions, "python").kind == "parse_error"
    assert read_turn("\n\n  {\"name\": ", None, functions, "python").kind == "parse_error"


@pytest.mark.parametrize("text", ["111," * 4000, "1,000" * 3200 + ",", "1" * 16_000 + "x"])
def test_last_number_never_stalls_on_long_runs_of_digits_and_groups(text):
    assert finishes(last_number, text * 8)


def test_last_number_still_reads_thousands_and_lists():
    assert last_number("The answer is $1,800.") == 1800
    assert last_number("the numbers 3,4") == 4
    assert last_number("1,234,567 apples") == 1234567


def test_step_metrics_cut_a_reply_as_a_chain_cuts_a_turn():
    question = "Ann has 2 apples and gets 3 more. How many apples does she have?"
    problem = Problem("p1", "math", question, "5", [{"name": "add", "arguments": {"a": 2, "b": 3}}])
    config = AgentConfig()
    backend = ScriptedBackend({question: ["x" * MEGABYTE]})
    records: list[dict] = []
    step_metrics(Agent(MATH, backend, config), [problem], records=records)
    assert records and all(len(r["text"]) < config.max_turn_chars + 100 for r in records)
