"""Model text is untrusted: whatever it is, parsing raises nothing but ParseError, hostile text is
refused quickly, and nothing it names is ever run unless it is a plain call of a registered function."""

from __future__ import annotations

import json
import keyword
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcdpo.functions import (
    Call,
    FunctionSet,
    ParseError,
    calls_from_tool_calls,
    parse_call,
    parse_json_call,
    parse_python_call,
)

# Each test under FUZZ tries hundreds of generated inputs: they are marked slow (left out of -m 'not slow').
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

calls_made: list[dict] = []


def add(a: float, b: float) -> float:
    """Add two numbers; records every call so tests can tell whether anything ran.

    Example: add(a=1, b=2)

    Args:
        a: The first number.
        b: The second number.
    """
    calls_made.append({"a": a, "b": b})
    return a + b


def system(command: str) -> str:
    """A sentinel named like a dangerous function; records every call.

    Example: system(command="x")

    Args:
        command: Ignored.
    """
    calls_made.append({"command": command})
    return "ran"


@pytest.fixture(autouse=True)
def no_calls_yet():
    calls_made.clear()


def sentinel_set() -> FunctionSet:
    return FunctionSet([add, system], time_limit=1.0)


# --------------------------------------------------------------------------------------------
# Arbitrary text


FRAGMENTS = [
    "(", ")", "[", "]", "{", "}", "=", ",", '"', "'", "`", "```", ":", "-", "+", ".", "*", "**", "\\",
    "\n", " ", "0", "1", "9", "1e309", "-0.5", "True", "None", "add", "a", "b", "x", "_", "lambda",
    "<tool_call>", "</tool_call>", '{"name": ', '"add"', '"arguments": ', "Action: ", "Final answer: ",
    "NaN", "Infinity", "\x00", "\u2028", "é", "f\"", "__import__", "os.system",
]
fragment_text = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=60
).map("".join)
any_text = st.one_of(st.text(), fragment_text)


def parses_or_refuses(parse, text) -> Call | None:
    try:
        call = parse(text)
    except ParseError as exc:
        assert exc.kind in {"empty", "too_long", "too_deep", "syntax", "not_a_call", "not_literal", "bad_json"}
        return None
    assert isinstance(call, Call) and call.name.isidentifier()
    return call


@pytest.mark.slow
@FUZZ
@given(any_text)
def test_python_parser_raises_only_parse_errors(text):
    parses_or_refuses(parse_python_call, text)


@pytest.mark.slow
@FUZZ
@given(any_text)
def test_json_parser_raises_only_parse_errors(text):
    parses_or_refuses(parse_json_call, text)


@pytest.mark.slow
@FUZZ
@given(any_text, st.sampled_from(["auto", "python", "json"]))
def test_function_set_parse_raises_only_parse_errors_and_execute_never_raises(text, syntax):
    functions = sentinel_set()
    call = parses_or_refuses(lambda t: functions.parse(t, syntax=syntax), text)
    if call is not None:
        observation = functions.execute(call)
        assert observation.ok or observation.content.startswith("Error: ")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.slow
@FUZZ
@given(json_values)
def test_arbitrary_json_values_as_tool_calls_raise_only_parse_errors(value):
    for tool_calls in ([value], [{"function": {"name": "add", "arguments": value}}], value):
        try:
            calls_from_tool_calls(tool_calls)
        except ParseError:
            pass
    parses_or_refuses(parse_json_call, "<tool_call>" + json.dumps(value) + "</tool_call>")
    parses_or_refuses(parse_json_call, json.dumps({"name": "add", "arguments": value}))


@pytest.mark.slow
@FUZZ
@given(st.dictionaries(st.text(max_size=5), json_values, max_size=4), st.text(max_size=8))
def test_execute_never_raises_for_any_arguments(arguments, name):
    functions = sentinel_set()
    for call_name in (name, "add", "system"):
        observation = functions.execute({"name": call_name, "arguments": arguments})
        assert isinstance(observation.content, str)
        assert observation.ok == (observation.error is None)


# --------------------------------------------------------------------------------------------
# Round trips: what the engine writes, it reads back


def no_brackets(text: str) -> bool:
    return not any(c in text for c in "()[]{}")  # brackets in strings count towards the depth bound


literal_strings = st.text(max_size=12).filter(no_brackets)
literals = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | literal_strings,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(literal_strings, inner, max_size=3),
    max_leaves=8,
)
identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True).filter(
    lambda name: not keyword.iskeyword(name)  # True, False and None are keywords too
)
calls = st.builds(Call, identifiers, st.dictionaries(identifiers, literals, max_size=4))


@pytest.mark.slow
@FUZZ
@given(calls)
def test_python_rendering_parses_back_to_the_same_call(call):
    assert parse_python_call(call.to_python()) == call


@pytest.mark.slow
@FUZZ
@given(calls, st.sampled_from(["{}", "<tool_call>\n{}\n</tool_call>", "Calling it.\n<tool_call>{}"]))
def test_json_rendering_parses_back_to_the_same_call(call, template):
    assert parse_call(template.format(json.dumps(call.to_dict()))) == call


@pytest.mark.slow
@FUZZ
@given(calls, st.sampled_from(["{}", "Action: {}", "Thought: ok.\n```python\n{}\n```", "I call `{}` now."]))
def test_python_call_survives_common_wrappings(call, template):
    assert parse_call(template.format(call.to_python()), syntax="python") == call


# --------------------------------------------------------------------------------------------
# Hostile text


HOSTILE = [
    "__import__('os').system('x')",
    'os.system("x")',
    "system.__call__(command='x')",
    "add(a=__import__('os'), b=1)",
    "add(a=system(command='x'), b=1)",
    "(lambda: 1)()",
    "(lambda: system(command='x'))()",
    "add(a=[x for x in range(9)], b=1)",
    "add(a=9**9**9, b=1)",
    "add(a=10**100000, b=1)",
    "add(a=1e309, b=1)",
    "add(a=-1e309, b=1)",
    "add(a=" + "[" * 10000 + "]" * 10000 + ", b=1)",
    "add(a=" + "[" * 10000,
    "add(a=" + "-" * 3990 + "1, b=1)",
    "add(a=" + "(" * 50 + "1" + ")" * 50 + ", b=1)",
    "add(a=1, b=" + '"' + "x" * 1_000_000 + '")',
    'add(a=f"{1}", b=1)',
    'add(a=f"{system(command=1)}", b=1)',
    'add(**{"a": 1, "b": 2})',
    "add(*[1, 2])",
    'getattr(add, "x")()',
    "add.__globals__['system'](command='x')",
    "[add(a=1, b=2)][0]",
    "add(a=1, b=2)()",
    "add(a=1, b=2) + system(command='x')",
    "add(a=(yield), b=1)",
    "add(a=(b := 1), b=1)",
    "add(a=1 if True else 2, b=1)",
    "add(a=not 1, b=1)",
    "add(a={**{}}, b=1)",
    "add(a=..., b=1)",
    "add(a=b'x', b=1)",
    "add(a=1j, b=1)",
    "add(a=1, b=2, a=3)",
    "import os; os.system('x')",
    "<tool_call>" + "[" * 10000 + "</tool_call>",
    '{"name": "add", "arguments": {"a": NaN, "b": 1}}',
    '{"name": "add", "arguments": "' + "[" * 5000 + '"}',
    '{"name": "__import__", "arguments": {"name": "os"}}' + " " * 5000,
    '{"name": "os.system", "arguments": {"command": "x"}}',
    "x" * 1_000_000,
    "(" * 1_000_000,
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("syntax", ["auto", "python", "json"])
def test_hostile_text_is_refused_quickly_and_nothing_runs(text, syntax):
    functions = sentinel_set()
    start = time.perf_counter()
    with pytest.raises(ParseError):
        functions.parse(text, syntax=syntax)
    assert time.perf_counter() - start < 1.0
    assert calls_made == []


def test_hostile_tool_calls_are_refused_and_nothing_runs():
    hostile = [
        {"function": {"name": "os.system", "arguments": '{"command": "x"}'}},
        {"function": {"name": "add", "arguments": "[" * 100_000}},
        {"function": {"name": "add", "arguments": '{"a": ' + "[" * 30 + "]" * 30 + "}"}},
        {"function": {"name": "add", "arguments": {"a": math.inf, "b": 1}}},
        {"function": {"name": "add", "arguments": {"a": object(), "b": 1}}},
    ]
    for tool_call in hostile:
        start = time.perf_counter()
        with pytest.raises(ParseError):
            calls_from_tool_calls([tool_call])
        assert time.perf_counter() - start < 1.0
    assert calls_made == []


def test_a_builtin_name_is_just_an_unknown_function():
    functions = sentinel_set()
    call = functions.parse("exec('system(command=1)')")
    assert call == Call("exec", {"0": "system(command=1)"})
    assert functions.execute(call).error == "unknown_function"
    assert calls_made == []


def test_a_plain_literal_call_of_a_registered_function_is_what_runs():
    functions = sentinel_set()
    observation = functions.execute(functions.parse("Thought: add them.\nadd(a=1, b=2)"))
    assert observation.content == "3"
    assert calls_made == [{"a": 1, "b": 2}]
