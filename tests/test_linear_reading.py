"""Model text is read in time linear in its length: no shape of turn stalls a run.

A regular expression holds the GIL, so no thread-based deadline stops a slow search; the only
defence is that every pattern run on untrusted text is linear, and that the text is cut where it
enters (a chain's turn, a step-metrics reply)."""

from __future__ import annotations

import time

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


def seconds(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_the_turn_reader_takes_well_under_a_second_on_a_megabyte(shape):
    functions = MATH.functions()
    assert seconds(read_turn, ADVERSARIAL[shape], None, functions, "python") < 1.0
    assert seconds(read_turn, ADVERSARIAL[shape], None, functions, "json") < 1.0


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_the_multi_agent_readers_take_well_under_a_second_on_a_megabyte(shape):
    assert seconds(read_decision, ADVERSARIAL[shape]) < 1.0
    assert seconds(summary_answer, ADVERSARIAL[shape]) < 1.0


def test_a_long_word_is_still_a_thought_and_a_broken_call_still_a_parse_error():
    functions = MATH.functions()
    assert read_turn("x" * 5000, None, functions, "python").kind == "parse_error"  # too long to be read
    assert read_turn("I will think about it.", None, functions, "python").kind == "thought"
    assert read_turn("Let me call multiply(a=3,", None, functions, "python").kind == "parse_error"
    assert read_turn("\n\n  {\"name\": ", None, functions, "python").kind == "parse_error"


@pytest.mark.parametrize("text", ["111," * 4000, "1,000" * 3200 + ",", "1" * 16_000 + "x"])
def test_last_number_is_linear_in_its_text(text):
    assert seconds(last_number, text) < 0.5
    assert seconds(last_number, text * 8) < 2.0


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
    started = time.perf_counter()
    step_metrics(Agent(MATH, backend, config), [problem], records=records)
    assert time.perf_counter() - started < 2.0
    assert records and all(len(r["text"]) < config.max_turn_chars + 100 for r in records)
