"""Property: whatever JSON (or bytes) a server answers with, decoding gives a valid Completion or a
BackendError, nothing else."""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcdpo.backends import BackendError, Completion, decode_completion
from fcdpo.safe_text import scrub_text

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


def anything(valid):
    """Mostly `valid`, sometimes any JSON value in its place."""
    return st.one_of(valid, valid, json_values)


tool_calls = st.lists(anything(st.fixed_dictionaries(
    {"function": anything(st.fixed_dictionaries({"name": anything(st.text(max_size=10)),
                                                 "arguments": anything(st.text(max_size=30) | json_values.map(json.dumps))}))},
    optional={"id": st.text(max_size=5), "type": st.just("function")})), max_size=3)
messages = st.fixed_dictionaries({}, optional={
    "role": anything(st.just("assistant")),
    "content": anything(st.none() | st.text(max_size=30)
                        | st.lists(anything(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)})),
                                   max_size=3)),
    "tool_calls": anything(st.none() | tool_calls),
})
choices = st.lists(anything(st.fixed_dictionaries({}, optional={
    "message": anything(messages), "finish_reason": anything(st.sampled_from(["stop", "length", "tool_calls"]))})),
    max_size=2)
usage = st.none() | st.fixed_dictionaries({}, optional={"prompt_tokens": anything(st.integers(0, 10**6)),
                                                        "completion_tokens": anything(st.integers(0, 10**6))})
answers = anything(st.fixed_dictionaries({}, optional={"choices": anything(choices), "usage": anything(usage),
                                                       "error": st.none() | json_values, "id": st.text(max_size=5)}))


def assert_valid(completion: Completion) -> None:
    assert isinstance(completion.text, str)
    assert completion.finish_reason in ("stop", "length")
    for count in (completion.prompt_tokens, completion.completion_tokens):
        assert type(count) is int and count >= 0
    if completion.tool_calls is not None:
        assert completion.tool_calls and all(
            call["type"] == "function" and isinstance(call["function"]["name"], str)
            and isinstance(call["function"]["arguments"], (dict, str)) for call in completion.tool_calls)
    # storable and sendable: valid UTF-8 JSON
    json.dumps([completion.text, completion.tool_calls], ensure_ascii=False).encode("utf-8")


def decoded(data, native_tools=True):
    try:
        completion = decode_completion(data, native_tools)
    except BackendError:
        return None
    assert_valid(completion)
    return completion


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answers, st.booleans())
def test_any_parsed_answer_gives_a_valid_completion_or_a_backend_error(payload, native_tools):
    decoded(payload, native_tools)
    decoded(json.dumps(payload).encode(), native_tools)  # the same answer as the bytes on the wire


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_bytes_give_a_valid_completion_or_a_backend_error(data):
    decoded(data)


# A high surrogate just before a low one is a pair, which JSON reads as one character: left out.
with_surrogates = st.text(st.characters() | st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]),
                          max_size=40).filter(lambda t: not re.search("[\ud800-\udbff][\udc00-\udfff]", t))


@settings(max_examples=200, deadline=None)
@given(with_surrogates, with_surrogates)
def test_text_and_arguments_with_any_characters_come_back_storable(text, argument):
    # JSON may spell lone surrogates ("\\ud800"); they come back as U+FFFD, everything else unchanged.
    body = json.dumps({"choices": [{"message": {"content": text, "tool_calls": [
        {"function": {"name": "f", "arguments": json.dumps({"x": argument})}}]}}]})
    completion = decoded(body.encode())
    assert completion.text == scrub_text(text)
    assert completion.tool_calls[0]["function"]["arguments"] == {"x": scrub_text(argument)}
