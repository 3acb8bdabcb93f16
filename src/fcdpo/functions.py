"""The function engine: describe callable functions to a model, parse its calls, run them safely.

Layer: functions and tasks; imports only `fcdpo.safe_text`.

A `FunctionSet` wraps plain typed Python callables with Google-style docstrings::

    def multiply(a: float, b: float) -> float:
        \"\"\"Multiply two numbers.

        Example: multiply(a=3, b=4)

        Args:
            a: The first factor.
            b: The second factor.
        \"\"\"

From each callable it derives the prompt text (`describe`), the OpenAI / Hugging Face tool schema
(`schemas`) and the argument types used to check calls. Model text is untrusted: it is parsed with
`ast` / `json` only (never evaluated), bounded in size and nesting before any parsing, and every
problem with it becomes a `ParseError`. Execution never raises for a bad call: unknown names, bad
arguments, exceptions and timeouts come back as an error `Observation` the model can read.

Two surface syntaxes are understood:

* Python calls, as in the paper: `multiply(a=3, b=4)`. The callee must be a bare name and every
  argument a literal (numbers, strings, booleans, None, lists / tuples / dicts of those).
* JSON tool calls: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes / Qwen), a bare
  JSON object with `name` and `arguments`, or OpenAI `tool_calls` via `calls_from_tool_calls`.

One rule for names in both: a function name is ASCII (`[A-Za-z_][A-Za-z0-9_]*`) exactly as written,
and argument names are kept exactly as written. Nothing is normalised, so a full-width `ｓｙｓｔｅｍ(...)`
(which Python itself would read as `system`) is refused, never mapped onto a registered name. Strings
in arguments have lone surrogates replaced by U+FFFD (see `fcdpo.safe_text`), so every call can be
stored and sent. Arguments given as objects are bounded in size like arguments given as text.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import keyword
import math
import re
import threading
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from fcdpo.safe_text import scrub

__all__ = [
    "DEFAULT_MAX_INPUT_CHARS",
    "DEFAULT_MAX_NESTING",
    "TRUNCATION_MARKER",
    "Call",
    "FunctionSet",
    "Observation",
    "ParseError",
    "calls_from_tool_calls",
    "format_value",
    "parse_call",
    "parse_json_call",
    "parse_python_call",
]

DEFAULT_MAX_INPUT_CHARS = 4000  # one model turn; longer text is refused before parsing
DEFAULT_MAX_NESTING = 20  # brackets deeper than this are refused before parsing
TRUNCATION_MARKER = "... [truncated {n} characters]"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_POSITIONAL_KEY = re.compile(r"[0-9]+\Z")


def _is_positional_key(key: Any) -> bool:
    return isinstance(key, str) and _POSITIONAL_KEY.match(key) is not None


# --------------------------------------------------------------------------------------------
# Calls, observations, errors


class ParseError(ValueError):
    """Model text that is not an acceptable call.

    `kind` is a short code: "empty", "too_long", "too_deep", "syntax", "not_a_call",
    "not_literal", "several_calls" (two calls written on one line) or "bad_json". The message says
    what was wrong and where.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across worker processes
        return (type(self), (self.kind, self.message))


@dataclass
class Call:
    """One function call: a name and its arguments.

    Arguments are keyed by parameter name. A call parsed from Python syntax without knowing the
    function's signature keeps positional arguments under the keys "0", "1", ... (digit strings are
    never parameter names); `FunctionSet.parse` maps them to parameter names.
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)

    def to_python(self) -> str:
        """The call in the paper's syntax, e.g. `add_fact(entity="Alex", concept="wumpus")`."""
        positional = sorted(
            ((int(k), v) for k, v in self.arguments.items() if _is_positional_key(k)), key=lambda kv: kv[0]
        )
        keywords = [(k, v) for k, v in self.arguments.items() if not _is_positional_key(k)]
        parts = [_python_literal(v) for _, v in positional]
        parts += [f"{k}={_python_literal(v)}" for k, v in keywords]
        return f"{self.name}({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        """`{"name": ..., "arguments": {...}}`, the gold-chain / JSON tool-call shape."""
        return {"name": self.name, "arguments": dict(self.arguments)}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Call":
        """A call from `{"name": ..., "arguments": {...}}`; raises ParseError if malformed."""
        return _call_from_mapping(row, DEFAULT_MAX_INPUT_CHARS, DEFAULT_MAX_NESTING)


@dataclass
class Observation:
    """What one call produced, as the model will see it.

    `content` is the formatted result ("12") or an error text starting with "Error: ".
    `error` is None when `ok`, else "unknown_function", "bad_arguments", "execution_error" or
    "timeout". `value` is the function's raw return value when `ok`.
    """

    content: str
    ok: bool
    value: Any = None
    error: str | None = None


def _python_literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid Python
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_python_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_python_literal(str(k))}: {_python_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


# --------------------------------------------------------------------------------------------
# Bounds checked before any parsing


def _check_bounds(text: Any, max_chars: int, max_nesting: int) -> str:
    if not isinstance(text, str):
        raise ParseError("empty", f"expected text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise ParseError("too_long", f"{len(text)} characters; at most {max_chars} are accepted")
    if not text.strip():
        raise ParseError("empty", "no text")
    # Counts brackets even inside strings: over-strict only for strings full of brackets, and
    # keeps ast / json from ever seeing deep nesting (which can exhaust the C stack).
    depth = 0
    for match in re.finditer(r"[\[\](){}]", text):
        if match.group() in "([{":
            depth += 1
            if depth > max_nesting:
                raise ParseError(
                    "too_deep", f"brackets nested deeper than {max_nesting} at character {match.start()}"
                )
        elif depth:
            depth -= 1
    return text


# --------------------------------------------------------------------------------------------
# Python-call syntax

_FENCE_OPEN = re.compile(r"^\s*```(?:[\w+-]*(?=\s|$))?\s*")  # a language tag ends at whitespace
_FENCE_CLOSE = re.compile(r"\s*```\s*$")
_LINE_LABEL = re.compile(r"^(?:[-*>]\s+|\d+[.)]\s+)?(?:[A-Za-z][\w ]{0,30}:\s+)?")
_CALL_START = re.compile(r"(?<![\w.])[A-Za-z_]\w*[ \t]*\(")
_ANY_CALL_START = re.compile(r"(?<![\w.])(?!\d)\w+[ \t]*\(")  # non-ASCII names too, to report them
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_TRAILING_PUNCTUATION = re.compile(r"\)\s*[.;,]+\s*$")


def parse_python_call(
    text: str, *, max_chars: int = DEFAULT_MAX_INPUT_CHARS, max_nesting: int = DEFAULT_MAX_NESTING
) -> Call:
    """The last call written in Python syntax in `text`, e.g. `multiply(a=3, b=4)`.

    Tolerates code fences, backticks, a leading label such as `Action:`, free text before the call
    on its line, and free-text lines before it: the bottom-most line holding a call wins. A call
    may span several lines. Two calls on one line (`add(a=1, b=2); multiply(a=3, b=4)`) and a call
    nested in another are refused, never cut down to one of their calls. Positional arguments are kept under the keys "0", "1", ... since the
    signature is unknown here (`FunctionSet.parse` names them). Raises ParseError and nothing else.
    """
    text = _check_bounds(text, max_chars, max_nesting)
    # Split on newlines only: str.splitlines would also split inside strings at \x85, \u2028, ...
    lines = [_strip_fences(line) for line in text.split("\n")]
    whole = _FENCE_CLOSE.sub("", _FENCE_OPEN.sub("", text.strip())).strip().strip("`").strip()
    whole_error: ParseError | None = None
    if "\n" in whole:  # the whole text may be one call laid out over several lines
        try:
            return _parse_python_expression(whole)
        except ParseError as exc:
            whole_error = exc if _CALL_START.match(whole) else None
    if whole_error is not None and whole_error.kind != "syntax":
        # The whole text is one Python call, just not a plain one (a call nested in another, laid
        # out over lines): refuse it rather than run a call picked out of it.
        raise whole_error
    first_error: ParseError | None = None
    for index in reversed(range(len(lines))):
        for position, candidate in enumerate(_candidates_at(lines, index)):
            try:
                call = _parse_python_expression(candidate)
            except ParseError as exc:
                # Report the failure of the bottom-most thing that looked like a call.
                if first_error is None and _ANY_CALL_START.match(candidate):
                    first_error = exc
                if position == 0 and exc.kind != "syntax":
                    # The line is Python, just not a plain call (`f(x)()`, `[f(a=1)][0]`): refuse
                    # it rather than pick a call out of it. Only prose is searched for calls.
                    break
                continue
            if position > 0:  # picked out of the line: it must be the only call written there
                _refuse_several_calls(lines[index])
            return call
    if first_error is not None:
        raise first_error
    if whole_error is not None:
        raise whole_error
    raise ParseError("not_a_call", "no function call such as `multiply(a=3, b=4)` found")


def _refuse_several_calls(line: str) -> None:
    """ParseError ("several_calls") when `line` holds more than one call that would parse
    (`add(a=1, b=2); multiply(a=3, b=4)`): one of them must not run silently in place of the other.
    Text that only looks like a call (`add(a, b)` in prose) does not count."""
    calls, end = 0, -1
    for match in list(_CALL_START.finditer(line))[:_MAX_CALLS_LOOKED_AT]:
        if match.start() < end:
            continue  # inside a call already counted
        close = _closing_parenthesis(line, match.end() - 1)
        if close is None:
            continue
        try:
            _parse_python_expression(line[match.start() : close + 1])
        except ParseError:
            continue
        calls, end = calls + 1, close + 1
    if calls > 1:
        raise ParseError("several_calls", f"{calls} function calls on one line; write one call per turn")


_MAX_CALLS_LOOKED_AT = 16  # call starts checked on one line; the line is at most `max_chars` long


def _closing_parenthesis(text: str, opening: int) -> int | None:
    """Where the bracket opened at `opening` closes, skipping brackets inside string literals; None
    when it does not close on this text."""
    depth, quote, escaped = 0, "", False
    for position in range(opening, len(text)):
        char = text[position]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return position
    return None


def _strip_fences(line: str) -> str:
    return _FENCE_CLOSE.sub("", _FENCE_OPEN.sub("", line))


def _candidates_at(lines: list[str], index: int) -> Iterator[str]:
    """What to try at one line: the line itself first, then calls within it, then a call
    starting there and spanning several lines."""
    yield from _line_candidates(lines[index])
    block = _multiline_block(lines, index)
    if block is not None:
        yield block


def _bracket_balance(text: str) -> int:
    return sum(1 if c in "([{" else -1 for c in text if c in "()[]{}")


def _multiline_block(lines: list[str], index: int) -> str | None:
    """The lines from `index` until its brackets close, if a call starts there and stays open.

    Blocks starting inside another open block nest, so with nesting bounded the lines scanned
    stay within `max_nesting` times the text.
    """
    first = _LINE_LABEL.sub("", lines[index].strip(), count=1).strip().lstrip("`")
    if not _CALL_START.match(first):
        return None
    balance = _bracket_balance(first)
    if balance <= 0:
        return None
    block = [first]
    for line in lines[index + 1 :]:
        block.append(line)
        balance += _bracket_balance(line)
        if balance <= 0:
            return _TRAILING_PUNCTUATION.sub(")", "\n".join(block).rstrip().rstrip("`").rstrip())
    return None


def _line_candidates(line: str) -> list[str]:
    """The line without label, backticks and trailing punctuation, then substrings of it that
    may be a call (code spans, text from a call's name to the last parenthesis)."""
    stripped = line.strip()
    if not stripped:
        return []
    candidates = []
    bare = _LINE_LABEL.sub("", stripped, count=1).strip().strip("`").strip()
    bare = _TRAILING_PUNCTUATION.sub(")", bare)
    candidates.append(bare)
    candidates.extend(span.strip() for span in reversed(_CODE_SPAN.findall(stripped)))
    # Free text before the call on the same line: "I will call multiply(a=3, b=4) now."
    closing = stripped.rfind(")")
    for match in list(_CALL_START.finditer(stripped))[:4]:
        if match.start() < closing:
            candidates.append(stripped[match.start() : closing + 1])
    unique = []
    for candidate in candidates:
        if candidate and candidate not in unique:
            unique.append(candidate)
    return unique


def _parse_python_expression(source: str) -> Call:
    try:
        with warnings.catch_warnings():  # e.g. invalid escapes in model text are not our warnings
            warnings.simplefilter("ignore")
            tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as exc:
        # ValueError covers null bytes, unencodable text and over-long integer literals.
        raise ParseError("syntax", f"not valid Python: {_first_line(exc)}") from None
    node = tree.body
    if not isinstance(node, ast.Call):
        raise ParseError("not_a_call", f"expected a function call, got a {type(node).__name__} expression")
    if not isinstance(node.func, ast.Name):
        raise ParseError(
            "not_a_call", f"the called function must be a plain name, not {_describe_node(node.func)}"
        )
    # Python reads identifiers NFKC-normalised (a full-width `ｓｙｓｔｅｍ` is `system`): names are
    # taken as written instead, and a function name must be ASCII, as in JSON calls.
    name = ast.get_source_segment(source, node.func) or ""
    if not _IDENTIFIER.match(name):
        raise ParseError("not_a_call", f"a function name must be ASCII letters, digits and _, got {name!r:.60}")
    arguments: dict[str, Any] = {}
    for index, arg in enumerate(node.args):
        if isinstance(arg, ast.Starred):
            raise ParseError("not_literal", "`*` unpacking is not allowed in a call")
        arguments[str(index)] = _literal_value(arg, f"positional argument {index}")
    for kw in node.keywords:
        if kw.arg is None:
            raise ParseError("not_literal", "`**` unpacking is not allowed in a call")
        written = _written_keyword(source, kw)
        if written in arguments:
            raise ParseError("syntax", f"argument {written!r} is given twice")
        arguments[written] = _literal_value(kw.value, f"argument {written!r}")
    return Call(name, scrub(arguments))


def _written_keyword(source: str, kw: ast.keyword) -> str:
    """A keyword argument's name as the source spells it (ast gives it NFKC-normalised)."""
    segment = ast.get_source_segment(source, kw) or kw.arg or ""
    match = re.match(r"[^\s=]+", segment)
    return match.group() if match else (kw.arg or "")


def _first_line(exc: BaseException) -> str:
    message = (str(exc) or type(exc).__name__).splitlines()[0]
    return message[:200]


_LITERAL_CONSTANTS = (str, int, float, bool, type(None))


def _check_literal_node(node: ast.AST, where: str) -> None:
    """Raise unless `node` is a plain literal; recursion depth is bounded by the nesting check."""
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, _LITERAL_CONSTANTS):
            raise ParseError("not_literal", f"{where}: {type(node.value).__name__} values are not allowed")
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise ParseError("not_literal", f"{where}: the number is not finite")
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = node.operand
        if (
            isinstance(operand, ast.Constant)
            and isinstance(operand.value, (int, float))
            and not isinstance(operand.value, bool)
        ):
            _check_literal_node(operand, where)
            return
        raise ParseError("not_literal", f"{where}: a sign may only precede a number")
    if isinstance(node, (ast.List, ast.Tuple)):
        for element in node.elts:
            if isinstance(element, ast.Starred):
                raise ParseError("not_literal", f"{where}: `*` unpacking is not allowed")
            _check_literal_node(element, where)
        return
    if isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values):
            if key is None:
                raise ParseError("not_literal", f"{where}: `**` unpacking is not allowed")
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                raise ParseError("not_literal", f"{where}: dictionary keys must be strings")
            _check_literal_node(value, where)
        return
    raise ParseError("not_literal", f"{where} must be a literal value, not {_describe_node(node)}")


_NODE_DESCRIPTIONS = {
    ast.Name: "a variable name",
    ast.Call: "a function call",
    ast.Attribute: "an attribute access",
    ast.Subscript: "a subscript",
    ast.BinOp: "an arithmetic expression",
    ast.Lambda: "a lambda",
    ast.JoinedStr: "an f-string",
    ast.Set: "a set",
    ast.ListComp: "a comprehension",
    ast.GeneratorExp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.SetComp: "a comprehension",
}


def _describe_node(node: ast.AST) -> str:
    return _NODE_DESCRIPTIONS.get(type(node), f"a {type(node).__name__} expression")


def _literal_value(node: ast.AST, where: str) -> Any:
    _check_literal_node(node, where)
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as exc:
        raise ParseError("not_literal", f"{where}: {_first_line(exc)}") from None
    return _lists_not_tuples(value)


def _lists_not_tuples(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_lists_not_tuples(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists_not_tuples(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------------------------
# JSON tool calls

_TOOL_CALL_OPEN = "<tool_call>"


def parse_json_call(
    text: str, *, max_chars: int = DEFAULT_MAX_INPUT_CHARS, max_nesting: int = DEFAULT_MAX_NESTING
) -> Call:
    """A bare JSON object if `text` starts with `{`, else its last `<tool_call>{...}</tool_call>`
    block (the closing tag may be missing, as when generation stops at it).

    The object needs a string `name` and an `arguments` object (a JSON string holding an object,
    `parameters` instead of `arguments`, and an OpenAI `{"function": {...}}` wrapper are accepted;
    missing arguments mean none). Raises ParseError and nothing else.
    """
    text = _check_bounds(text, max_chars, max_nesting)
    if text.lstrip().startswith("{") or _TOOL_CALL_OPEN not in text:
        body = text.strip()
        if body.startswith("```"):
            body = _FENCE_CLOSE.sub("", _FENCE_OPEN.sub("", body)).strip()
        if not body.startswith("{"):
            raise ParseError("bad_json", "expected a JSON object with `name` and `arguments`")
        return _call_from_mapping(_load_json(body, "tool call"), max_chars, max_nesting)
    # The last tag that opens a JSON object: a tag may also occur inside a string of a block.
    last_error: ParseError | None = None
    for match in reversed(list(re.finditer(re.escape(_TOOL_CALL_OPEN), text))[-50:]):
        body = text[match.end() :].lstrip()
        if not body.startswith("{"):
            last_error = last_error or ParseError("bad_json", "a <tool_call> tag is not followed by a JSON object")
            continue
        try:
            return _call_from_mapping(_load_json(body, "tool call"), max_chars, max_nesting)
        except ParseError as exc:
            last_error = last_error or exc
    raise last_error or ParseError("bad_json", "no JSON object after <tool_call>")


def _reject_constant(name: str) -> Any:
    raise ParseError("bad_json", f"{name} is not a finite number")


def _load_json(body: str, where: str) -> Any:
    try:
        value, _end = json.JSONDecoder(parse_constant=_reject_constant).raw_decode(body)
    except ParseError:
        raise
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ParseError("bad_json", f"{where} is not valid JSON: {_first_line(exc)}") from None
    return value


def _call_from_mapping(value: Any, max_chars: int, max_nesting: int) -> Call:
    if not isinstance(value, dict):
        raise ParseError("bad_json", f"a call must be a JSON object, not {type(value).__name__}")
    if isinstance(value.get("function"), dict):  # OpenAI {"type": "function", "function": {...}}
        value = value["function"]
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise ParseError("not_a_call", f"the call needs a function name, got {name!r:.60}")
    if not _IDENTIFIER.match(name):
        raise ParseError("not_a_call", f"a function name must be ASCII letters, digits and _, got {name!r:.60}")
    arguments = value.get("arguments", value.get("parameters", {}))
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        if not arguments.strip():
            arguments = {}
        else:
            _check_bounds(arguments, max_chars, max_nesting)
            arguments = _load_json(arguments.strip(), "arguments")
    if not isinstance(arguments, dict):
        raise ParseError("bad_json", f"arguments must be a JSON object, not {type(arguments).__name__}")
    budget = [max_chars]  # what the arguments may take, in characters of their JSON text (about)
    for key, argument in arguments.items():
        if not isinstance(key, str):
            raise ParseError("bad_json", f"argument names must be strings, got {key!r:.60}")
        _spend(budget, len(key) + 3, "the arguments", max_chars)
        _check_json_value(argument, f"argument {key!r}", max_nesting, budget, max_chars)
    return Call(name, scrub(dict(arguments)))


def _spend(budget: list[int], size: int, where: str, max_chars: int) -> None:
    budget[0] -= size
    if budget[0] < 0:
        raise ParseError("too_long", f"{where} are longer than the {max_chars} characters accepted")


def _check_json_value(value: Any, where: str, depth_left: int, budget: list[int], max_chars: int) -> None:
    # Dicts given directly (OpenAI objects, gold chains) skipped the text bounds: check them here,
    # their depth and their size alike, counting no more than the shortest JSON text of the value
    # takes, so arguments that came as text within the bounds always pass.
    if depth_left < 0:
        raise ParseError("too_deep", f"{where} is nested too deeply")
    if isinstance(value, float) and not math.isfinite(value):
        raise ParseError("bad_json", f"{where} is not a finite number")
    if isinstance(value, str):
        size = len(value) + 2
    elif isinstance(value, bool) or value is None:
        size = 4
    elif isinstance(value, int):
        size = _digits(value)
    else:  # a float ("0.0" at least), a list or a dict ("[]")
        size = 3 if isinstance(value, float) else 2
    _spend(budget, size, "the arguments", max_chars)
    if isinstance(value, (list, tuple)):
        for element in value:
            _check_json_value(element, where, depth_left - 1, budget, max_chars)
    elif isinstance(value, dict):
        for key, element in value.items():
            if not isinstance(key, str):
                raise ParseError("bad_json", f"{where}: object keys must be strings")
            _spend(budget, len(key) + 3, "the arguments", max_chars)
            _check_json_value(element, where, depth_left - 1, budget, max_chars)
    elif not isinstance(value, _LITERAL_CONSTANTS):
        raise ParseError("bad_json", f"{where}: {type(value).__name__} values are not allowed")


def _digits(value: int) -> int:
    """About how many digits `value` has, without converting it (conversion is quadratic)."""
    return max(1, int(abs(value).bit_length() * 0.30103))


def calls_from_tool_calls(
    tool_calls: Sequence[Any] | None,
    *,
    max_chars: int = DEFAULT_MAX_INPUT_CHARS,
    max_nesting: int = DEFAULT_MAX_NESTING,
) -> list[Call]:
    """Calls from OpenAI-style `tool_calls`: objects with `.function.name` / `.function.arguments`,
    or dicts `{"function": {"name", "arguments"}}` or `{"name", "arguments"}`; `arguments` may be
    a JSON string or a dict. None means no calls. Raises ParseError and nothing else."""
    if tool_calls is None:
        return []
    if isinstance(tool_calls, (str, bytes, dict)) or not isinstance(tool_calls, Sequence):
        raise ParseError("bad_json", f"tool_calls must be a list, not {type(tool_calls).__name__}")
    calls = []
    for index, tool_call in enumerate(tool_calls):
        if isinstance(tool_call, dict):
            mapping = tool_call
        else:
            function = getattr(tool_call, "function", None)
            if function is None:
                raise ParseError("bad_json", f"tool call {index} has no function")
            if isinstance(function, dict):
                mapping = function
            else:
                mapping = {
                    "name": getattr(function, "name", None),
                    "arguments": getattr(function, "arguments", None),
                }
        calls.append(_call_from_mapping(mapping, max_chars, max_nesting))
    return calls


def parse_call(
    text: str,
    syntax: str = "auto",
    *,
    max_chars: int = DEFAULT_MAX_INPUT_CHARS,
    max_nesting: int = DEFAULT_MAX_NESTING,
) -> Call:
    """Parse one call in `syntax` "python", "json" or "auto".

    "auto" reads JSON when the text contains `<tool_call>` or starts with `{` (after whitespace
    and an optional code fence), else Python. Raises ParseError for bad text; ValueError only for
    an unknown `syntax`.
    """
    if syntax == "auto":
        syntax = "json" if _looks_like_json(text) else "python"
    if syntax == "python":
        return parse_python_call(text, max_chars=max_chars, max_nesting=max_nesting)
    if syntax == "json":
        return parse_json_call(text, max_chars=max_chars, max_nesting=max_nesting)
    raise ValueError(f"unknown call syntax {syntax!r}; expected 'python', 'json' or 'auto'")


def _looks_like_json(text: Any) -> bool:
    if not isinstance(text, str):
        return False
    if _TOOL_CALL_OPEN in text:
        return True
    head = text.lstrip()[:200]
    if head.startswith("```"):
        head = _FENCE_OPEN.sub("", head).lstrip()
    return head.startswith("{")


# --------------------------------------------------------------------------------------------
# Argument types


class _ArgumentTypeError(Exception):
    """`expected` names the wanted type; `detail`, when set, is a full message about a part."""

    def __init__(self, expected: str, detail: str | None = None):
        super().__init__(detail or expected)
        self.expected = expected
        self.detail = detail


def _type_name(annotation: Any) -> str:
    if annotation is Any:
        return "Any"
    if annotation is type(None) or annotation is None:
        return "None"
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]" if args else origin.__name__
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_SCALAR_TYPES = (int, float, str, bool)


def _check_supported(annotation: Any) -> bool:
    if annotation is Any or annotation in _SCALAR_TYPES or annotation in (list, dict, type(None)):
        return True
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return all(_check_supported(a) for a in args)
    if origin is list:
        return len(args) == 1 and _check_supported(args[0])
    if origin is dict:
        return len(args) == 2 and args[0] is str and _check_supported(args[1])
    return False


def _describe_value(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - values given as dicts may be arbitrary objects
        text = "?"
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


def _coerce(value: Any, annotation: Any) -> Any:
    """`value` converted to `annotation`'s type, or _ArgumentTypeError saying what was expected."""
    if annotation is Any:
        return value
    if annotation is type(None):
        if value is None:
            return None
        raise _ArgumentTypeError("None")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _ArgumentTypeError("bool (True or False)")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise _ArgumentTypeError("int (a whole number)")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise _ArgumentTypeError("float (a finite number)")
            return value  # ints stay ints: exact for functions that compute with sympy
        raise _ArgumentTypeError("float (a number)")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _ArgumentTypeError("str (a quoted string)")
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise _ArgumentTypeError(f"{_type_name(annotation)} (a list)")
        if not args:
            return list(value)
        converted = []
        for index, element in enumerate(value):
            try:
                converted.append(_coerce(element, args[0]))
            except _ArgumentTypeError as exc:
                inner = exc.detail or f"must be {exc.expected}, got {_describe_value(element)}"
                raise _ArgumentTypeError(_type_name(annotation), f"element {index} {inner}") from None
        return converted
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise _ArgumentTypeError(f"{_type_name(annotation)} (an object)")
        if not args:
            return dict(value)
        converted_items = {}
        for key, element in value.items():
            try:
                converted_items[key] = _coerce(element, args[1])
            except _ArgumentTypeError as exc:
                inner = exc.detail or f"must be {exc.expected}, got {_describe_value(element)}"
                raise _ArgumentTypeError(_type_name(annotation), f"entry {key!r} {inner}") from None
        return converted_items
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option)
            except _ArgumentTypeError:
                continue
        raise _ArgumentTypeError(_type_name(annotation))
    raise _ArgumentTypeError(_type_name(annotation))


# --------------------------------------------------------------------------------------------
# Result formatting


def format_value(value: Any) -> str:
    """How a return value is shown to the model.

    sympy integers and integral Python floats as `12`; rationals with a finite decimal expansion as
    the exact decimal `3.5`, others as `7/3`; bools as `True` / `False`; strings as they are; lists
    element by element.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    if getattr(value, "is_Rational", False) is True:  # sympy Integer / Rational, without importing sympy
        return _format_rational(int(value.p), int(value.q))
    if getattr(value, "is_Float", False) is True:
        return format_value(float(value))
    if type(value).__name__ == "Fraction":
        return _format_rational(value.numerator, value.denominator)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def _format_rational(p: int, q: int) -> str:
    if q == 1:
        return str(p)
    twos = fives = 0
    rest = q
    while rest % 2 == 0:
        rest //= 2
        twos += 1
    while rest % 5 == 0:
        rest //= 5
        fives += 1
    if rest != 1:
        return f"{p}/{q}"
    places = max(twos, fives)
    scaled = abs(p) * 10**places // q  # exact: q divides 10**places
    digits = str(scaled).rjust(places + 1, "0")
    whole, fraction = digits[:-places], digits[-places:].rstrip("0")
    sign = "-" if p < 0 else ""
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"


# --------------------------------------------------------------------------------------------
# Registered functions


_EXAMPLE_LINE = re.compile(r"^[ \t]*Example:[ \t]*(.+?)[ \t]*$", re.MULTILINE)
_SECTION_LINE = re.compile(r"^[ \t]*(Example|Args|Returns|Raises):", re.MULTILINE)


@dataclass
class _Function:
    name: str
    callable: Callable[..., Any]
    parameters: list[inspect.Parameter]
    hints: dict[str, Any]
    return_text: str | None
    description: str
    example: str
    schema_doc: str

    def signature_text(self) -> str:
        parts = []
        for p in self.parameters:
            text = f"{p.name}: {_type_name(self.hints[p.name])}"
            if p.default is not inspect.Parameter.empty:
                text += f" = {p.default!r}"
            parts.append(text)
        returns = f" -> {self.return_text}" if self.return_text else ""
        return f"{self.name}({', '.join(parts)}){returns}"


def _register(function: Callable[..., Any]) -> _Function:
    """Check a function and read its description, signature and example call from it. Closures
    made afresh for each chain (one knowledge base each) share their code, so what was read from
    one is reused for the next, with the new callable."""
    if isinstance(function, types.FunctionType):
        key = (function.__code__, function.__doc__, function.__defaults__, repr(function.__kwdefaults__),
               repr(function.__annotations__), id(function.__globals__))
        cached = _REGISTERED.get(key)
        if cached is None:
            cached = _REGISTERED[key] = _read_function(function)
        return dataclasses.replace(cached, callable=function)
    return _read_function(function)


_REGISTERED: dict[tuple, _Function] = {}


def _read_function(function: Callable[..., Any]) -> _Function:
    name = getattr(function, "__name__", None)
    if not isinstance(name, str) or not _IDENTIFIER.match(name) or keyword.iskeyword(name):
        raise TypeError(f"{function!r} needs a plain function name to be callable by a model")
    if not callable(function):
        raise TypeError(f"{name} is not callable")
    doc = inspect.getdoc(function)
    if not doc:
        raise ValueError(f"{name} has no docstring; it needs a description, an Example: line and Args:")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: cannot read its signature ({exc})") from None
    hints = _resolve_hints(function, name)
    parameters = list(signature.parameters.values())
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(f"{name}: parameter {p.name!r} must be an ordinary keyword-able parameter")
        if p.name not in hints:
            raise TypeError(f"{name}: parameter {p.name!r} has no type annotation")
        if not _check_supported(hints[p.name]):
            raise TypeError(
                f"{name}: parameter {p.name!r} has unsupported type {_type_name(hints[p.name])}; "
                "use int, float, str, bool or list[...] of those"
            )
    examples = _EXAMPLE_LINE.findall(doc)
    if len(examples) != 1:
        raise ValueError(f"{name}: the docstring needs exactly one `Example: {name}(...)` line")
    example = examples[0].strip().strip("`")
    try:
        example_call = parse_python_call(example)
    except ParseError as exc:
        raise ValueError(f"{name}: the Example line {example!r} is not a valid call ({exc})") from None
    if example_call.name != name:
        raise ValueError(f"{name}: the Example line calls {example_call.name!r}, not {name!r}")
    section = _SECTION_LINE.search(doc)
    description = (doc[: section.start()] if section else doc).strip()
    if not description:
        raise ValueError(f"{name}: the docstring needs a description before its Example: line")
    schema_doc = _EXAMPLE_LINE.sub("", doc)
    schema_doc = re.sub(r"\n{3,}", "\n\n", schema_doc).strip()
    _check_args_documented(name, schema_doc, parameters)
    if "return" in hints:
        return_text = _type_name(hints["return"])
    else:
        raw = getattr(function, "__annotations__", {}).get("return")
        return_text = raw.strip("'\"") if isinstance(raw, str) else None
    registered = _Function(name, function, parameters, hints, return_text, description, example, schema_doc)
    problem = _bind(registered, _map_positionals(registered, example_call).arguments)
    if isinstance(problem, str):
        raise ValueError(f"{name}: the Example line {example!r} does not fit the signature: {problem}")
    return registered


def _resolve_hints(function: Callable[..., Any], name: str) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:
        pass
    # A return annotation that cannot be resolved (e.g. a name imported for type checking only)
    # should not stop registration: resolve the parameters alone.
    annotations = dict(getattr(function, "__annotations__", {}))
    annotations.pop("return", None)
    proxy = types.SimpleNamespace(__annotations__=annotations)
    globalns = getattr(inspect.unwrap(function), "__globals__", {})
    try:
        return typing.get_type_hints(proxy, globalns=globalns)
    except Exception as exc:
        raise TypeError(f"{name}: cannot resolve its type annotations ({exc})") from None


def _check_args_documented(name: str, doc: str, parameters: list[inspect.Parameter]) -> None:
    args_block = re.search(r"^[ \t]*Args:[ \t]*\n(.*?)(?=^[ \t]*(?:Returns|Raises):|\Z)", doc, re.M | re.S)
    for p in parameters:
        if not args_block or not re.search(rf"^[ \t]*{re.escape(p.name)}:", args_block.group(1), re.M):
            raise ValueError(f"{name}: the docstring's Args: section does not describe {p.name!r}")


def _map_positionals(function: _Function, call: Call) -> Call:
    """Give positional arguments ("0", "1", ...) their parameter names where unambiguous."""
    if not any(_is_positional_key(k) for k in call.arguments):
        return call
    names = [p.name for p in function.parameters]
    arguments: dict[str, Any] = {}
    for key, value in call.arguments.items():
        if _is_positional_key(key):
            index = int(key)
            if index < len(names) and names[index] not in call.arguments:
                arguments[names[index]] = value
                continue
        arguments[key] = value
    return Call(call.name, arguments)


def _bind(function: _Function, arguments: dict[str, Any]) -> dict[str, Any] | str:
    """Keyword arguments ready for the call, or a message saying which argument is wrong."""
    names = [p.name for p in function.parameters]
    takes = ", ".join(names) if names else "no arguments"
    for key in arguments:
        if not isinstance(key, str):
            return f"argument names must be strings, got {_describe_value(key)}"
        if _is_positional_key(key):
            return f"too many positional arguments; {function.name} takes ({takes})"
        if key not in names:
            return f"unexpected argument {key!r}; {function.name} takes ({takes})"
    bound = {}
    for p in function.parameters:
        annotation = function.hints[p.name]
        if p.name not in arguments:
            if p.default is inspect.Parameter.empty:
                return f"missing argument {p.name!r} ({_type_name(annotation)})"
            continue
        value = arguments[p.name]
        try:
            bound[p.name] = _coerce(value, annotation)
        except _ArgumentTypeError as exc:
            if exc.detail:
                return f"argument {p.name!r}: {exc.detail}"
            return f"argument {p.name!r} must be {exc.expected}, got {_describe_value(value)}"
    return bound


# --------------------------------------------------------------------------------------------
# The function set


class FunctionSet:
    """Functions a model may call, with their prompt text, schemas, parser and safe executor.

    `time_limit` bounds each call in seconds (None runs calls inline without a limit). A call
    that runs over is reported as a timeout, but its worker thread cannot be killed and keeps
    running in the background: functions should bound their own work (as the calculator and the
    z3 prover do). Calls of one set never run at the same time: the next call first waits up to
    `time_limit` for an overrunning one, and is reported as a timeout if it is still running.
    `max_output_chars` truncates long results. `max_input_chars` and `max_nesting` bound the
    text `parse` accepts.
    """

    def __init__(
        self,
        functions: Sequence[Callable[..., Any]],
        *,
        time_limit: float | None = 2.0,
        max_output_chars: int = 1000,
        max_input_chars: int = DEFAULT_MAX_INPUT_CHARS,
        max_nesting: int = DEFAULT_MAX_NESTING,
    ):
        if not functions:
            raise ValueError("a FunctionSet needs at least one function")
        if time_limit is not None and not time_limit > 0:
            raise ValueError(f"time_limit must be a positive number of seconds or None, not {time_limit!r}")
        self._functions: dict[str, _Function] = {}
        for function in functions:
            registered = _register(function)
            if registered.name in self._functions:
                raise ValueError(f"two functions are named {registered.name!r}")
            self._functions[registered.name] = registered
        self.names: list[str] = list(self._functions)
        self.time_limit = time_limit
        self.max_output_chars = max_output_chars
        self.max_input_chars = max_input_chars
        self.max_nesting = max_nesting
        self._schemas: list[dict[str, Any]] | None = None
        self._overrunning: threading.Thread | None = None  # a worker still running past its limit

    def __contains__(self, name: object) -> bool:
        return name in self._functions

    def __len__(self) -> int:
        return len(self._functions)

    def describe(self, examples: bool = True, brief: bool = False) -> str:
        """Prompt text: per function its signature line, description and (with `examples`) `Example:` call.

        With `brief`, one line per function: its signature and the first sentence of its description."""
        if brief:
            return "\n".join(f"{f.signature_text()}: {_first_sentence(f.description)}" for f in self._functions.values())
        blocks = []
        for f in self._functions.values():
            description = "\n".join("  " + line if line else "" for line in f.description.splitlines())
            blocks.append(f"{f.signature_text()}\n{description}" + (f"\n  Example: {f.example}" if examples else ""))
        return "\n\n".join(blocks)

    def example_call(self, values: bool = True) -> str:
        """The first function's example call, e.g. `multiply(a=3, b=4)`; without `values`, the form
        of a call with its required arguments and no values in them, e.g. `multiply(a=..., b=...)`."""
        first = next(iter(self._functions.values()))
        if values:
            return first.example
        required = [p.name for p in first.parameters if p.default is inspect.Parameter.empty]
        return f"{first.name}({', '.join(f'{name}=...' for name in required)})"

    def schemas(self) -> list[dict[str, Any]]:
        """OpenAI / Hugging Face tool schemas (`{"type": "function", "function": {...}}`)."""
        if self._schemas is None:
            from transformers.utils import get_json_schema  # slow import, only when needed

            schemas = []
            for f in self._functions.values():
                try:
                    schemas.append(get_json_schema(_schema_proxy(f)))
                except Exception as exc:
                    raise ValueError(f"{f.name}: cannot build its tool schema ({exc})") from exc
            self._schemas = schemas
        return [json.loads(json.dumps(s)) for s in self._schemas]  # callers may edit their copy

    def parse(self, text: str, syntax: str = "auto") -> Call:
        """The call in model text (see `parse_call`), positional arguments mapped to names.

        Raises ParseError for any unacceptable text; an unknown function name still parses (the
        model learns of it from `execute`'s observation).
        """
        call = parse_call(text, syntax, max_chars=self.max_input_chars, max_nesting=self.max_nesting)
        function = self._functions.get(call.name)
        return _map_positionals(function, call) if function else call

    def execute(self, call: Call | dict[str, Any]) -> Observation:
        """Run one call; every problem comes back as an error Observation, never an exception."""
        if isinstance(call, Call):
            name, arguments = call.name, call.arguments
        elif isinstance(call, dict):
            name = call.get("name")
            arguments = call.get("arguments", {})
            if arguments is None:
                arguments = {}
        else:
            name, arguments = None, {}
        function = self._functions.get(name) if isinstance(name, str) else None
        if function is None:
            return self._error(
                "unknown_function",
                f"unknown function {name!r}. Available functions: {', '.join(self.names)}",
            )
        if not isinstance(arguments, dict):
            return self._error("bad_arguments", f"{function.name}: arguments must be a mapping of names to values")
        bound = _bind(function, _map_positionals(function, Call(function.name, dict(arguments))).arguments)
        if isinstance(bound, str):
            return self._error("bad_arguments", f"{function.name}: {bound}")
        return self._run(function, bound)

    def run_chain(self, chain: list[dict[str, Any]]) -> list[Observation]:
        """Execute gold-chain steps (`{"name", "arguments"}` dicts or Calls) in order."""
        return [self.execute(step) for step in chain]

    def _run(self, function: _Function, arguments: dict[str, Any]) -> Observation:
        outcome: list[tuple[bool, Any]] = []

        def target() -> None:
            try:
                outcome.append((True, function.callable(**arguments)))
            except BaseException as exc:  # noqa: BLE001 - a worker thread must report everything
                outcome.append((False, exc))

        if self.time_limit is None:
            target()
        else:
            # Calls of one set never overlap: functions may share state (a knowledge base, a z3
            # context), so a call waits for an overrunning predecessor, or gives up as a timeout.
            previous = self._overrunning
            if previous is not None and previous.is_alive():
                previous.join(self.time_limit)
                if previous.is_alive():
                    return self._error(
                        "timeout", f"an earlier call is still running, so {function.name} was not run"
                    )
            self._overrunning = None
            worker = threading.Thread(target=target, name=f"fcdpo-call-{function.name}", daemon=True)
            worker.start()
            worker.join(self.time_limit)
            if worker.is_alive() or not outcome:
                self._overrunning = worker
                return self._error(
                    "timeout", f"{function.name} did not finish within {self.time_limit:g} seconds"
                )
        ok, result = outcome[0]
        if not ok:
            message = str(result) or type(result).__name__
            return self._error("execution_error", message)
        try:
            content = format_value(result)
        except Exception as exc:  # noqa: BLE001 - a result's own __str__ may fail
            return self._error("execution_error", f"{function.name} returned an unprintable value ({exc})")
        return Observation(self._truncate(content), ok=True, value=result)

    def _error(self, kind: str, message: str) -> Observation:
        return Observation(self._truncate(f"Error: {message}"), ok=False, error=kind)

    def _truncate(self, content: str) -> str:
        if len(content) <= self.max_output_chars:
            return content
        return content[: self.max_output_chars] + TRUNCATION_MARKER.format(n=len(content) - self.max_output_chars)


def _schema_proxy(function: _Function) -> Callable[..., Any]:
    """A stand-in carrying the function's signature and its docstring without the Example line,
    so that `get_json_schema` keeps the example out of the description."""

    def proxy(*args: Any, **kwargs: Any) -> Any:
        return function.callable(*args, **kwargs)

    proxy.__name__ = function.name
    proxy.__qualname__ = function.name
    proxy.__doc__ = function.schema_doc
    proxy.__signature__ = inspect.Signature(function.parameters)  # type: ignore[attr-defined]
    annotations = {p.name: function.hints[p.name] for p in function.parameters}
    if "return" in function.hints:
        annotations["return"] = function.hints["return"]
    proxy.__annotations__ = annotations
    return proxy


def _first_sentence(text: str) -> str:
    """The first sentence of a description, on one line."""
    flat = " ".join(text.split())
    end = flat.find(". ")
    return flat if end < 0 else flat[: end + 1]
