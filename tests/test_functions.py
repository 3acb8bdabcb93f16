"""The function engine: prompt text, schemas, parsing of both call syntaxes, safe execution."""

from __future__ import annotations

import json
import pickle
import threading
import time
from fractions import Fraction
from types import SimpleNamespace

import pytest
import sympy

from fcdpo.functions import (
    TRUNCATION_MARKER,
    Call,
    FunctionSet,
    Observation,
    ParseError,
    calls_from_tool_calls,
    format_value,
    parse_call,
    parse_json_call,
    parse_python_call,
)

# --------------------------------------------------------------------------------------------
# Sample functions


def multiply(a: float, b: float) -> float:
    """Multiply two numbers and return the exact product.

    Example: multiply(a=3, b=4)

    Args:
        a: The first factor.
        b: The second factor.

    Returns:
        The product a * b.
    """
    return sympy.Rational(str(a)) * sympy.Rational(str(b))


def divide(a: float, b: float) -> float:
    """Divide a by b.

    Example: divide(a=7, b=2)

    Args:
        a: The dividend.
        b: The divisor, not zero.
    """
    if b == 0:
        raise ValueError("cannot divide by zero")
    return sympy.Rational(str(a)) / sympy.Rational(str(b))


def count_words(text: str, minimum_length: int = 1) -> int:
    """Count the words in a text that have at least `minimum_length` letters.

    Example: count_words(text="two words")

    Args:
        text: The text to count words in.
        minimum_length: The shortest word that counts.
    """
    return sum(len(word) >= minimum_length for word in text.split())


def total(values: list[float]) -> float:
    """Add up a list of numbers.

    Example: total(values=[1, 2.5])

    Args:
        values: The numbers to add.
    """
    return sum(values)


def is_even(n: int) -> bool:
    """Whether a whole number is even.

    Example: is_even(n=4)

    Args:
        n: The number to test.
    """
    return n % 2 == 0


def nap(seconds: float) -> str:
    """Sleep for a while and say so.

    Example: nap(seconds=0.01)

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "rested"


def repeat(word: str, times: int) -> str:
    """Repeat a word.

    Example: repeat(word="ha", times=3)

    Args:
        word: The word to repeat.
        times: How many times.
    """
    return word * times


@pytest.fixture
def functions() -> FunctionSet:
    return FunctionSet([multiply, divide, count_words, total, is_even, nap, repeat], time_limit=0.5)


# --------------------------------------------------------------------------------------------
# Prompt text and schemas


def test_describe_shows_signature_description_and_example_per_function():
    text = FunctionSet([multiply, count_words]).describe()
    assert text == (
        "multiply(a: float, b: float) -> float\n"
        "  Multiply two numbers and return the exact product.\n"
        "  Example: multiply(a=3, b=4)\n"
        "\n"
        "count_words(text: str, minimum_length: int = 1) -> int\n"
        "  Count the words in a text that have at least `minimum_length` letters.\n"
        "  Example: count_words(text=\"two words\")"
    )


def test_describe_shows_list_types():
    assert FunctionSet([total]).describe().startswith("total(values: list[float]) -> float\n")


def test_example_call_is_the_first_functions_example(functions):
    assert functions.example_call() == "multiply(a=3, b=4)"
    assert functions.names == ["multiply", "divide", "count_words", "total", "is_even", "nap", "repeat"]


def test_schema_follows_the_hugging_face_tool_format_without_the_example_line():
    schema = FunctionSet([multiply]).schemas()[0]
    assert schema == {
        "type": "function",
        "function": {
            "name": "multiply",
            "description": "Multiply two numbers and return the exact product.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"type": "number", "description": "The first factor."},
                    "b": {"type": "number", "description": "The second factor."},
                },
                "required": ["a", "b"],
            },
            "return": {"type": "number", "description": "The product a * b."},
        },
    }


def test_schema_marks_defaulted_parameters_optional_and_types_list_items():
    count_schema, total_schema = FunctionSet([count_words, total]).schemas()
    assert count_schema["function"]["parameters"]["required"] == ["text"]
    assert count_schema["function"]["parameters"]["properties"]["minimum_length"]["type"] == "integer"
    values = total_schema["function"]["parameters"]["properties"]["values"]
    assert values == {"type": "array", "items": {"type": "number"}, "description": "The numbers to add."}


def test_schemas_are_copies_callers_may_edit(functions):
    functions.schemas()[0]["function"]["name"] = "changed"
    assert functions.schemas()[0]["function"]["name"] == "multiply"


class Counter:
    """Functions bound to per-chain state, as a knowledge base's methods are."""

    def __init__(self) -> None:
        self.count = 0

    def bump(self, by: int) -> int:
        """Add to the counter and return its new value.

        Example: bump(by=2)

        Args:
            by: How much to add.
        """
        self.count += by
        return self.count


def test_bound_methods_register_without_self_and_keep_their_state():
    counter = Counter()
    functions = FunctionSet([counter.bump])
    assert functions.describe().startswith("bump(by: int) -> int\n")
    assert list(functions.schemas()[0]["function"]["parameters"]["properties"]) == ["by"]
    assert [o.content for o in functions.run_chain([{"name": "bump", "arguments": {"by": 2}}] * 2)] == ["2", "4"]


# --------------------------------------------------------------------------------------------
# Registration errors


def no_annotation(a) -> int:  # noqa: ANN001 - the missing annotation is the point
    """Lacks an annotation.

    Example: no_annotation(a=1)

    Args:
        a: A number.
    """
    return a


def no_docstring(a: int) -> int:
    return a


def no_example(a: int) -> int:
    """Lacks an example.

    Args:
        a: A number.
    """
    return a


def wrong_example(a: int) -> int:
    """Its example calls another function.

    Example: multiply(a=1, b=2)

    Args:
        a: A number.
    """
    return a


def mistyped_example(a: int) -> int:
    """Its example passes a string for an int.

    Example: mistyped_example(a="one")

    Args:
        a: A number.
    """
    return a


def undocumented_argument(a: int, b: int) -> int:
    """Describes only one of its arguments.

    Example: undocumented_argument(a=1, b=2)

    Args:
        a: A number.
    """
    return a + b


def unsupported_type(a: set) -> int:
    """Takes a set, which a model cannot write as JSON.

    Example: unsupported_type(a=[1])

    Args:
        a: Numbers.
    """
    return len(a)


@pytest.mark.parametrize(
    ("function", "error", "fragment"),
    [
        (no_annotation, TypeError, "no_annotation: parameter 'a' has no type annotation"),
        (no_docstring, ValueError, "no_docstring has no docstring"),
        (no_example, ValueError, "no_example: the docstring needs exactly one `Example:"),
        (wrong_example, ValueError, "wrong_example: the Example line calls 'multiply'"),
        (mistyped_example, ValueError, "mistyped_example: the Example line"),
        (undocumented_argument, ValueError, "undocumented_argument: the docstring's Args: section does not describe 'b'"),
        (unsupported_type, TypeError, "unsupported_type: parameter 'a' has unsupported type set"),
    ],
)
def test_registration_errors_name_the_function(function, error, fragment):
    with pytest.raises(error) as excinfo:
        FunctionSet([function])
    assert fragment in str(excinfo.value)


def round_to(value: float, digits: int | None = None) -> "NotImportedHere":  # noqa: F821
    """Round a number; its return annotation names a type that is not importable here.

    Example: round_to(value=2.5)

    Args:
        value: The number to round.
        digits: How many decimal places, or None for a whole number.
    """
    return round(value, digits)


def test_an_unresolvable_return_annotation_does_not_stop_registration():
    functions = FunctionSet([round_to])
    assert functions.describe().startswith("round_to(value: float, digits: int | None = None) -> NotImportedHere\n")
    assert functions.execute(Call("round_to", {"value": 2.345, "digits": 1})).content == "2.3"
    assert functions.execute(Call("round_to", {"value": 2.345, "digits": None})).content == "2"
    assert functions.execute(Call("round_to", {"value": 2.3, "digits": "1"})).content == (
        "Error: round_to: argument 'digits' must be int | None, got str '1'"
    )


def test_duplicate_function_names_are_refused():
    with pytest.raises(ValueError, match="two functions are named 'multiply'"):
        FunctionSet([multiply, multiply])


def test_lambdas_are_refused_for_want_of_a_name():
    with pytest.raises(TypeError, match="plain function name"):
        FunctionSet([lambda a: a])


def test_time_limit_must_be_positive():
    with pytest.raises(ValueError, match="time_limit"):
        FunctionSet([multiply], time_limit=0)


# --------------------------------------------------------------------------------------------
# Python-call syntax


def test_python_call_with_keyword_arguments_parses(functions):
    assert functions.parse("multiply(a=3, b=4.5)") == Call("multiply", {"a": 3, "b": 4.5})


def test_python_call_literals_of_every_kind_parse():
    call = parse_python_call('f(a=-3, b=+2.5, c="x", d=True, e=None, f=[1, (2, 3)], g={"k": [-1]})')
    assert call.arguments == {
        "a": -3, "b": 2.5, "c": "x", "d": True, "e": None, "f": [1, [2, 3]], "g": {"k": [-1]}
    }


def test_positional_arguments_are_named_by_the_function_set(functions):
    assert functions.parse("multiply(3, b=4)") == Call("multiply", {"a": 3, "b": 4})


def test_signature_free_parser_keeps_positional_arguments_by_index():
    call = parse_python_call('multiply(3, 4, c="x")')
    assert call.arguments == {"0": 3, "1": 4, "c": "x"}
    assert call.to_python() == 'multiply(3, 4, c="x")'


@pytest.mark.parametrize(
    "text",
    [
        "`multiply(a=3, b=4)`",
        "```python\nmultiply(a=3, b=4)\n```",
        "```multiply(a=3, b=4)```",
        "Action: multiply(a=3, b=4)",
        "Step 2: `multiply(a=3, b=4)`",
        "I need the product of 3 and 4.\nSo I call multiply(a=3, b=4).",
        "Thought: first add, then... actually\nmultiply(a=1, b=1)\nmultiply(a=3, b=4)",
        "multiply(\n    a=3,\n    b=4,\n)",
        "Thought: lay it out.\n```python\nmultiply(\n    a=3,\n    b=4\n)\n```",
        "multiply(a=3, b=4)\nFinal answer: 12",
    ],
)
def test_python_call_is_found_among_thoughts_fences_and_labels(functions, text):
    assert functions.parse(text, syntax="python") == Call("multiply", {"a": 3, "b": 4})


def test_strings_keep_brackets_quotes_and_unicode_line_separators():
    call = parse_python_call('add_fact(entity="Alex (the cat)", concept="it\'s \u2028 a \x85 [test]")')
    assert call.arguments == {"entity": "Alex (the cat)", "concept": "it's \u2028 a \x85 [test]"}


def test_unknown_function_names_still_parse_so_execution_can_report_them(functions):
    assert functions.parse("subtract(a=1, b=2)") == Call("subtract", {"a": 1, "b": 2})


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("The answer is twelve.", "not_a_call"),
        ("Final answer: 12", "not_a_call"),
        ("multiply(a=3, b=", "syntax"),
        ("multiply(a=3, a=4)", "syntax"),
        ("math.floor(x=1)", "not_a_call"),
        ("multiply(a=x, b=4)", "not_literal"),
        ("multiply(a=3*4, b=4)", "not_literal"),
        ("multiply(*[3, 4])", "not_literal"),
        ("multiply(a={1, 2}, b=4)", "not_literal"),
        ("multiply(a={1: 2}, b=4)", "not_literal"),
        ("multiply(a=b'3', b=4)", "not_literal"),
        ("multiply(a=3j, b=4)", "not_literal"),
        ("multiply(a=-x, b=4)", "not_literal"),
        ("multiply(a=float('nan'), b=4)", "not_literal"),
        ("multiply(a=1e999, b=4)", "not_literal"),
    ],
)
def test_unacceptable_python_text_raises_a_parse_error_of_the_right_kind(functions, text, kind):
    with pytest.raises(ParseError) as excinfo:
        functions.parse(text, syntax="python")
    assert excinfo.value.kind == kind


@pytest.mark.parametrize(
    "text",
    [
        "add(a=1, b=2); multiply(a=3, b=4)",
        "add(a=1, b=2) multiply(a=3, b=4)",
        "First `add(a=1, b=2)`, then `multiply(a=3, b=4)`.",
        'note(s=")") multiply(a=3, b=4)',
    ],
)
def test_two_calls_on_one_line_are_refused_not_cut_down_to_the_last(functions, text):
    with pytest.raises(ParseError) as excinfo:
        functions.parse(text, syntax="python")
    assert excinfo.value.kind == "several_calls" and "2 function calls on one line" in str(excinfo.value)


@pytest.mark.parametrize(
    "text",
    [
        "add(\n  a=1,\n  b=add(a=2, b=3)\n)",
        "add(a=1,\n    b=multiply(a=3, b=4))",
        "add(a=multiply(\n  a=3, b=4), b=1)",
    ],
)
def test_a_call_nested_in_another_over_several_lines_is_refused_not_run_inside_out(functions, text):
    with pytest.raises(ParseError) as excinfo:
        functions.parse(text, syntax="python")
    assert excinfo.value.kind == "not_literal"


@pytest.mark.parametrize(
    "text",
    [
        "The function add(a, b) adds; I need multiply(a=3, b=4).",  # only one call that would run
        "I will call multiply(a=3, b=4) now.",
        "Action: `multiply(a=3, b=4)`.",
    ],
)
def test_one_call_with_prose_on_its_line_is_still_read(functions, text):
    assert functions.parse(text, syntax="python") == Call("multiply", {"a": 3, "b": 4})


def test_parse_errors_keep_their_kind_through_pickling():
    error = pickle.loads(pickle.dumps(ParseError("too_deep", "brackets nested deeper than 20")))
    assert (error.kind, error.message) == ("too_deep", "brackets nested deeper than 20")


def test_parse_errors_say_which_argument_is_wrong():
    with pytest.raises(ParseError, match="argument 'b' must be a literal value, not a variable name"):
        parse_python_call("multiply(a=3, b=c)")


def test_text_over_the_size_limit_is_refused():
    with pytest.raises(ParseError) as excinfo:
        parse_python_call("multiply(a=3, b=4)" + " " * 4000)
    assert excinfo.value.kind == "too_long"
    assert FunctionSet([multiply], max_input_chars=5000).parse("multiply(a=3, b=4)" + " " * 4000)


def test_nesting_over_the_depth_limit_is_refused():
    deep = "total(values=" + "[" * 21 + "]" * 21 + ")"
    with pytest.raises(ParseError) as excinfo:
        parse_python_call(deep)
    assert excinfo.value.kind == "too_deep"
    assert parse_python_call(deep, max_nesting=30).name == "total"


# --------------------------------------------------------------------------------------------
# JSON tool calls


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "divide", "arguments": {"a": 7, "b": 2}}\n</tool_call>',
        'Let me divide.\n<tool_call>{"name": "divide", "arguments": {"a": 7, "b": 2}}',
        '{"name": "divide", "arguments": {"a": 7, "b": 2}}',
        '{"name": "divide", "arguments": "{\\"a\\": 7, \\"b\\": 2}"}',
        '{"name": "divide", "parameters": {"a": 7, "b": 2}}',
        '{"type": "function", "function": {"name": "divide", "arguments": {"a": 7, "b": 2}}}',
        '```json\n{"name": "divide", "arguments": {"a": 7, "b": 2}}\n```',
    ],
)
def test_json_tool_calls_parse(functions, text):
    assert functions.parse(text) == Call("divide", {"a": 7, "b": 2})
    assert functions.parse(text, syntax="json") == Call("divide", {"a": 7, "b": 2})


def test_the_last_tool_call_block_is_taken():
    text = '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {}}</tool_call>'
    assert parse_json_call(text).name == "b"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("<tool_call>{not json}</tool_call>", "bad_json"),
        ('<tool_call>["divide", 7, 2]</tool_call>', "bad_json"),
        ('{"arguments": {"a": 1}}', "not_a_call"),
        ('{"name": "os.system", "arguments": {}}', "not_a_call"),
        ('{"name": "divide", "arguments": [7, 2]}', "bad_json"),
        ('{"name": "divide", "arguments": "not json"}', "bad_json"),
        ('{"name": "divide", "arguments": {"a": NaN, "b": 1}}', "bad_json"),
        ('{"name": "divide", "arguments": {"a": Infinity, "b": 1}}', "bad_json"),
        ('{"name": "divide", "arguments": {"a": ' + "[" * 25 + "]" * 25 + "}}", "too_deep"),
        ("multiply(a=3, b=4)", "bad_json"),
    ],
)
def test_unacceptable_json_raises_a_parse_error_of_the_right_kind(text, kind):
    with pytest.raises(ParseError) as excinfo:
        parse_json_call(text)
    assert excinfo.value.kind == kind


def test_auto_syntax_reads_json_only_for_tool_call_tags_or_a_leading_brace():
    assert parse_call('  {"name": "f", "arguments": {}}').name == "f"
    assert parse_call('Thinking...\n<tool_call>{"name": "f", "arguments": {}}</tool_call>').name == "f"
    assert parse_call('Thinking {about it}\nf(a={"x": 1})').arguments == {"a": {"x": 1}}
    with pytest.raises(ParseError):
        parse_call('{"name": "f", "arguments": {}}', syntax="python")


def test_an_unknown_syntax_is_a_programming_error(functions):
    with pytest.raises(ValueError, match="unknown call syntax 'xml'") as excinfo:
        functions.parse("multiply(a=1, b=2)", syntax="xml")
    assert not isinstance(excinfo.value, ParseError)


def test_openai_tool_calls_become_calls():
    as_object = SimpleNamespace(
        id="call_1", type="function", function=SimpleNamespace(name="divide", arguments='{"a": 7, "b": 2}')
    )
    as_dict = {"id": "call_2", "type": "function", "function": {"name": "multiply", "arguments": {"a": 1, "b": 2}}}
    assert calls_from_tool_calls([as_object, as_dict]) == [
        Call("divide", {"a": 7, "b": 2}),
        Call("multiply", {"a": 1, "b": 2}),
    ]
    assert calls_from_tool_calls(None) == []


@pytest.mark.parametrize(
    "tool_calls",
    [
        "divide",
        [SimpleNamespace(id="x")],
        [{"function": {"name": "divide", "arguments": "{"}}],
        [{"function": {"name": 3, "arguments": "{}"}}],
    ],
)
def test_malformed_tool_calls_raise_parse_errors(tool_calls):
    with pytest.raises(ParseError):
        calls_from_tool_calls(tool_calls)


# --------------------------------------------------------------------------------------------
# Calls as text and dicts


def test_call_renders_in_python_syntax_with_double_quoted_strings():
    call = Call("add_fact", {"entity": "Alex", "concept": 'say "hi"\n', "weight": 0.5, "tags": ["a", 1]})
    assert call.to_python() == 'add_fact(entity="Alex", concept="say \\"hi\\"\\n", weight=0.5, tags=["a", 1])'
    assert parse_python_call(call.to_python()) == call


def test_call_to_dict_is_the_gold_chain_shape():
    call = Call("multiply", {"a": 3, "b": 4})
    assert call.to_dict() == {"name": "multiply", "arguments": {"a": 3, "b": 4}}
    assert Call.from_dict(call.to_dict()) == call
    assert parse_json_call(json.dumps(call.to_dict())) == call


# --------------------------------------------------------------------------------------------
# Execution


@pytest.mark.parametrize(
    ("text", "content"),
    [
        ("multiply(a=3, b=4)", "12"),
        ("divide(a=7, b=2)", "3.5"),
        ("divide(a=7, b=3)", "7/3"),
        ("divide(a=-1, b=8)", "-0.125"),
        ("total(values=[1, 2])", "3"),
        ("total(values=[1.5, 2])", "3.5"),
        ("is_even(n=4)", "True"),
        ('count_words(text="one two three")', "3"),
        ('repeat(word="ha", times=2)', "haha"),
    ],
)
def test_results_are_formatted_for_the_model(functions, text, content):
    observation = functions.execute(functions.parse(text))
    assert observation == Observation(content, ok=True, value=observation.value, error=None)


def test_observation_keeps_the_raw_value(functions):
    assert functions.execute(Call("divide", {"a": 7, "b": 3})).value == sympy.Rational(7, 3)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (sympy.Integer(12), "12"),
        (sympy.Rational(7, 2), "3.5"),
        (sympy.Rational(-1, 40), "-0.025"),
        (sympy.Rational(7, 3), "7/3"),
        (Fraction(3, 4), "0.75"),
        (12.0, "12"),
        (0.1, "0.1"),
        (-3.0, "-3"),
        (True, "True"),
        (False, "False"),
        (7, "7"),
        ("text", "text"),
        ([sympy.Integer(1), 2.5], "[1, 2.5]"),
    ],
)
def test_format_value(value, text):
    assert format_value(value) == text


def test_unknown_function_is_an_error_observation_listing_the_valid_names():
    observation = FunctionSet([multiply, divide]).execute(Call("subtract", {"a": 1}))
    assert observation.ok is False and observation.error == "unknown_function"
    assert observation.content == "Error: unknown function 'subtract'. Available functions: multiply, divide"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (Call("multiply", {"a": 3}), "multiply: missing argument 'b' (float)"),
        (Call("multiply", {"a": 3, "b": 4, "c": 5}), "multiply: unexpected argument 'c'; multiply takes (a, b)"),
        (Call("multiply", {"0": 3, "1": 4, "2": 5}), "multiply: too many positional arguments; multiply takes (a, b)"),
        (Call("multiply", {"a": "3", "b": 4}), "multiply: argument 'a' must be float (a number), got str '3'"),
        (Call("multiply", {"a": True, "b": 4}), "multiply: argument 'a' must be float (a number), got bool True"),
        (Call("is_even", {"n": 2.5}), "is_even: argument 'n' must be int (a whole number), got float 2.5"),
        (Call("is_even", {"n": False}), "is_even: argument 'n' must be int (a whole number), got bool False"),
        (Call("repeat", {"word": 5, "times": 2}), "repeat: argument 'word' must be str (a quoted string), got int 5"),
        (
            Call("total", {"values": [1, "2"]}),
            "total: argument 'values': element 1 must be float (a number), got str '2'",
        ),
        (Call("total", {"values": 3}), "total: argument 'values' must be list[float] (a list), got int 3"),
    ],
)
def test_bad_arguments_are_an_error_observation_naming_the_argument(functions, call, message):
    observation = functions.execute(call)
    assert (observation.ok, observation.error) == (False, "bad_arguments")
    assert observation.content == f"Error: {message}"


def test_int_parameters_accept_integral_floats_as_ints_and_float_parameters_accept_ints(functions):
    assert functions.execute(Call("repeat", {"word": "ab", "times": 2.0})).content == "abab"
    assert functions.execute(Call("multiply", {"a": 3, "b": 4})).ok


def test_defaults_fill_missing_optional_arguments(functions):
    assert functions.execute(Call("count_words", {"text": "a bb ccc"})).content == "3"
    assert functions.execute(Call("count_words", {"text": "a bb ccc", "minimum_length": 2})).content == "2"


def test_an_exception_in_the_function_is_an_execution_error_observation(functions):
    observation = functions.execute(Call("divide", {"a": 1, "b": 0}))
    assert observation == Observation("Error: cannot divide by zero", ok=False, error="execution_error")


def test_an_exception_without_a_message_is_named_by_its_type():
    def fail(a: int) -> int:
        """Always fails.

        Example: fail(a=1)

        Args:
            a: Ignored.
        """
        raise KeyError()

    assert FunctionSet([fail]).execute(Call("fail", {"a": 1})).content == "Error: KeyError"


def test_a_call_over_the_time_limit_returns_a_timeout_observation_quickly():
    functions = FunctionSet([nap], time_limit=0.2)
    start = time.perf_counter()
    observation = functions.execute(Call("nap", {"seconds": 3}))
    assert time.perf_counter() - start < 1.0
    assert (observation.ok, observation.error) == (False, "timeout")
    assert observation.content == "Error: nap did not finish within 0.2 seconds"


def test_a_call_waits_for_an_overrunning_call_so_calls_never_overlap():
    running = threading.Lock()
    overlaps = []

    def hold(seconds: float) -> str:
        """Hold a lock for a while.

        Example: hold(seconds=0.01)

        Args:
            seconds: How long.
        """
        if not running.acquire(blocking=False):
            overlaps.append(seconds)
            return "overlap"
        try:
            time.sleep(seconds)
        finally:
            running.release()
        return "held"

    functions = FunctionSet([hold], time_limit=0.3)
    assert functions.execute(Call("hold", {"seconds": 0.4})).error == "timeout"
    assert functions.execute(Call("hold", {"seconds": 0.01})).content == "held"  # waited ~0.1 s
    assert functions.execute(Call("hold", {"seconds": 1.0})).error == "timeout"
    still_running = functions.execute(Call("hold", {"seconds": 0.01}))
    assert still_running.error == "timeout" and "earlier call is still running" in still_running.content
    assert overlaps == []


def test_long_output_is_truncated_with_a_marker():
    functions = FunctionSet([repeat], max_output_chars=10)
    observation = functions.execute(Call("repeat", {"word": "x", "times": 25}))
    assert observation.ok
    assert observation.content == "x" * 10 + TRUNCATION_MARKER.format(n=15)
    assert observation.value == "x" * 25


def test_execute_accepts_gold_chain_dicts_and_never_raises_on_malformed_ones(functions):
    assert functions.execute({"name": "multiply", "arguments": {"a": 2, "b": 3}}).content == "6"
    assert functions.execute(None).error == "unknown_function"  # type: ignore[arg-type]
    assert functions.execute({"arguments": {}}).error == "unknown_function"
    assert functions.execute({"name": "multiply", "arguments": [2, 3]}).error == "bad_arguments"
    assert functions.execute({"name": "multiply", "arguments": {1: 2}}).error == "bad_arguments"


def test_run_chain_executes_steps_in_order_and_reports_each():
    counter = Counter()
    functions = FunctionSet([counter.bump, divide])
    chain = [
        {"name": "bump", "arguments": {"by": 3}},
        {"name": "divide", "arguments": {"a": 1, "b": 0}},
        {"name": "bump", "arguments": {"by": 4}},
    ]
    observations = functions.run_chain(chain)
    assert [o.content for o in observations] == ["3", "Error: cannot divide by zero", "7"]
    assert [o.ok for o in observations] == [True, False, True]


def test_without_a_time_limit_calls_run_in_the_calling_thread():
    def thread_name(tag: str) -> str:
        """The name of the thread running the call.

        Example: thread_name(tag="x")

        Args:
            tag: Ignored.
        """
        return threading.current_thread().name

    current = threading.current_thread().name
    assert FunctionSet([thread_name], time_limit=None).execute(Call("thread_name", {"tag": ""})).content == current
    assert FunctionSet([thread_name]).execute(Call("thread_name", {"tag": ""})).content != current


def test_closures_of_one_definition_each_call_their_own():
    def make(total: list[int]):
        def bump(by: int) -> int:
            """Add to this set's running total and return it.

            Example: bump(by=1)

            Args:
                by: how much to add.
            """
            total.append(by)
            return sum(total)

        return bump

    first, second = FunctionSet([make([])]), FunctionSet([make([100])])  # the second reads the first's description
    assert first.execute(Call("bump", {"by": 1})).content == "1"
    assert second.execute(Call("bump", {"by": 1})).content == "101"
    assert first.execute(Call("bump", {"by": 2})).content == "3"
    assert first.describe() == second.describe()
