"""Whatever text a model writes, the chain stays runnable, storable and sendable."""

from __future__ import annotations

import json

import pytest

from fcdpo.agent import Agent, AgentConfig
from fcdpo.backends import Completion, to_openai_messages
from fcdpo.functions import DEFAULT_MAX_INPUT_CHARS, FunctionSet, ParseError, calls_from_tool_calls, parse_call
from fcdpo.rollouts import read_trajectories, rollout
from fcdpo.tasks import Problem, get_task
from tests.scripted import ScriptedBackend

MATH = get_task("math")


def problem(pid="p1"):
    return Problem(id=pid, task="math", question="Ann has 2 apples and gets 3 more. How many?", answer="5",
                   gold_chain=[{"name": "add", "arguments": {"a": 2, "b": 3}}], meta={"steps": 1})


def run(script, **config):
    [trajectory] = Agent(MATH, ScriptedBackend({problem().question: script}), AgentConfig(**config)).run([problem()])
    return trajectory


def storable(trajectory) -> str:
    line = json.dumps(trajectory.to_dict(), ensure_ascii=False)
    line.encode("utf-8")  # raises for a lone surrogate
    return line


# --------------------------------------------------------------------------- lone surrogates


@pytest.mark.parametrize("script", [
    ['add(a=2, b="\\ud800")', "Final answer: 5"],  # a Python string escape
    ['<tool_call>{"name": "add", "arguments": {"a": 2, "b": "\\udfff"}}</tool_call>', "Final answer: 5"],  # JSON
    ['{"name": "\\ud800", "arguments": {}}', "Final answer: 5"],
    ["Thinking \ud800 about it.", "Final answer: 5\udc00"],  # surrogates in the text itself
    [[{"type": "function", "function": {"name": "add", "arguments": {"a": "\ud800", "\udc01": 1}}}], "Final answer: 5"],
])
def test_lone_surrogates_in_model_text_leave_the_chain_storable_and_sendable(tmp_path, script):
    trajectory = run(script)
    storable(trajectory)
    json.dumps(to_openai_messages(trajectory.messages), ensure_ascii=False).encode("utf-8")
    agent = Agent(MATH, ScriptedBackend({problem().question: script}), AgentConfig())
    [written] = rollout([problem()], agent, tmp_path / "t.jsonl", k=1, progress=False)
    assert read_trajectories(tmp_path / "t.jsonl") == [written]


def test_a_surrogate_escape_in_a_call_becomes_the_replacement_character():
    assert parse_call('f(x="a\\ud800b")').arguments == {"x": "a\ufffdb"}
    assert parse_call('{"name": "f", "arguments": {"x": "\\udc00"}}').arguments == {"x": "\ufffd"}
    assert parse_call('{"name": "f", "arguments": "{\\"x\\": \\"\\\\ud800\\"}"}').arguments == {"x": "\ufffd"}


# --------------------------------------------------------------------------- one rule for names


def system(command: str) -> str:
    """Run a shell command.

    Example: system(command="ls")

    Args:
        command: The command.
    """
    raise AssertionError("never run")


def add(a: int, b: int) -> int:
    """Add two numbers.

    Example: add(a=1, b=2)

    Args:
        a: The first.
        b: The second.
    """
    return a + b


@pytest.mark.parametrize("text", [
    'ｓｙｓｔｅｍ(command="ls")',  # full-width: NFKC maps it to `system`
    'ｓystem(command="ls")',
    'ﬁle(command="ls")',  # a ligature: NFKC gives `file`
    'ádd(a=1, b=2)',  # non-ASCII that normalises to itself
    '{"name": "ｓｙｓｔｅｍ", "arguments": {"command": "ls"}}',
    '<tool_call>{"name": "ádd", "arguments": {}}</tool_call>',
])
def test_a_function_name_must_be_ascii_as_written_in_both_syntaxes(text):
    with pytest.raises(ParseError) as error:
        parse_call(text)
    assert error.value.kind == "not_a_call" and "function name must be ASCII" in str(error.value)


def test_a_full_width_name_never_runs_the_function_it_normalises_to():
    functions = FunctionSet([add, system])
    for text in ['ｓｙｓｔｅｍ(command="ls")', '{"name": "ｓｙｓｔｅｍ", "arguments": {"command": "ls"}}']:
        with pytest.raises(ParseError):
            functions.parse(text)
    [call] = calls_from_tool_calls([{"function": {"name": "add", "arguments": {"ａ": 1, "b": 2}}}])
    assert functions.execute(call).error == "bad_arguments"


def test_argument_names_are_kept_as_written_in_both_syntaxes():
    functions = FunctionSet([add])
    python = functions.parse("add(ａ=1, b=2)")  # Python itself would read `ａ` as `a`
    json_call = functions.parse('{"name": "add", "arguments": {"ａ": 1, "b": 2}}')
    assert python.arguments == json_call.arguments == {"ａ": 1, "b": 2}
    assert functions.execute(python).error == functions.execute(json_call).error == "bad_arguments"
    assert functions.execute(functions.parse("add(a=1, b=2)")).content == "3"


# --------------------------------------------------------------------------- bounds on a turn


def many_calls(n, name="add"):
    return [{"type": "function", "function": {"name": name, "arguments": {"a": i, "b": 1}}} for i in range(n)]


def test_errors_among_many_native_calls_end_the_turn_at_max_errors():
    trajectory = run([many_calls(300, name="nope"), "Final answer: 5"], syntax="json", max_errors=3)
    assert trajectory.calls == 3 and trajectory.errors["unknown_function"] == 3 and trajectory.stop == "max_errors"
    assert len(trajectory.messages) == 2 + 2 * 3


def test_only_max_calls_per_turn_native_calls_run_and_the_rest_is_an_error():
    trajectory = run([many_calls(300), "Final answer: 5"], syntax="json", max_calls_per_turn=4, max_errors=3)
    assert trajectory.calls == 4 and trajectory.errors["parse_error"] == 1 and trajectory.correct
    feedback = trajectory.messages[2 + 2 * 4]
    assert feedback["role"] == "user" and "300 function calls in one turn; only the first 4" in feedback["content"]


def test_tool_arguments_given_as_objects_are_bounded_like_text():
    for arguments in ({"a": "x" * (DEFAULT_MAX_INPUT_CHARS + 1)},
                      {f"k{i}": i for i in range(DEFAULT_MAX_INPUT_CHARS)},
                      {"a": [[1] * 100] * 100},
                      {"a": 7 ** 20000}):
        with pytest.raises(ParseError) as error:
            calls_from_tool_calls([{"function": {"name": "add", "arguments": arguments}}])
        assert error.value.kind == "too_long"
    text = json.dumps({"a": "x" * (DEFAULT_MAX_INPUT_CHARS - 20)})  # within the text bound ...
    [as_text] = calls_from_tool_calls([{"function": {"name": "add", "arguments": text}}])
    [as_object] = calls_from_tool_calls([{"function": {"name": "add", "arguments": json.loads(text)}}])
    assert as_text == as_object  # ... and within the object bound alike


class Enormous(ScriptedBackend):
    def complete(self, chats, **kwargs):
        return [Completion("Let me think. " + "blah " * 200_000, None, 10, 96, "length") for _ in chats]


def test_an_enormous_response_is_cut_before_it_is_stored_or_sent_back():
    config = AgentConfig(max_steps=2)
    [trajectory] = Agent(MATH, Enormous({}), config).run([problem()])
    texts = [m["content"] for m in trajectory.messages if m["role"] == "assistant"]
    assert len(texts) == 2 and all(len(t) < config.max_turn_chars + 100 for t in texts)
    assert texts[0].endswith("[truncated 984014 characters]")


@pytest.mark.parametrize("field, value", [("max_steps", 0), ("max_errors", -3), ("max_new_tokens", 0),
                                          ("token_budget", 1.5), ("max_calls_per_turn", 0), ("few_shot", -1)])
def test_agent_counts_must_be_positive_whole_numbers(field, value):
    with pytest.raises(ValueError, match=f"agent.{field} must be a whole number"):
        AgentConfig(**{field: value})
