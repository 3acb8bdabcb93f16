"""A safe, exact arithmetic evaluator for expressions written by a model.

Layer: functions and tasks; imports nothing of fcdpo.

The expression is parsed with `ast` and only number literals, `+ - * / // % **`, unary signs and
parentheses are evaluated; everything else (names, calls, attributes, comparisons, strings, ...)
is refused. Arithmetic is exact on rationals: `0.1 + 0.2` is `3/10` and `7 / 2` is `7/2`.

Size limits keep a hostile expression from costing time or memory:

* at most `MAX_EXPRESSION_CHARS` characters, checked before anything else;
* brackets nested at most `MAX_NESTING` deep, checked by a linear scan before `ast.parse`
  (the parser itself would recurse on deep nesting);
* exponents must be whole numbers with magnitude at most `MAX_EXPONENT`;
* every literal and every intermediate result must have numerator and denominator below
  `MAX_MAGNITUDE`, and a power is refused before it is computed when its size would exceed that.

Every refusal is an `ExpressionError`, a `ValueError` whose message says what was wrong and at
which column.
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction

import sympy

MAX_EXPRESSION_CHARS = 500
MAX_NESTING = 30
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10**100
# A float literal's decimal exponent beyond this cannot give a number within MAX_MAGNITUDE, and
# Fraction("1e999999999") would first build the whole power of ten.
_MAX_LITERAL_EXPONENT = 200
_MAX_MAGNITUDE_BITS = MAX_MAGNITUDE.bit_length()

_OPENING = "([{"
_CLOSING = ")]}"
_FLOAT_LITERAL = re.compile(r"(?P<mantissa>[0-9_]*\.?[0-9_]*)(?:[eE](?P<exponent>[+-]?[0-9_]+))?")


class ExpressionError(ValueError):
    """An expression the calculator refuses or cannot evaluate; the message says why."""


def evaluate_expression(expression: str) -> sympy.Rational:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: Text such as `"(16 - 3 - 4) * 2"` or `"2 * .5"`.

    Returns:
        The exact value as a sympy number (an `Integer` when the value is whole).

    Raises:
        ExpressionError: for anything other than numbers, the allowed operators and parentheses,
            for division by zero, and for inputs or results beyond the size limits.
    """
    if not isinstance(expression, str):
        raise ExpressionError(f"expression must be text, got {type(expression).__name__}")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(
            f"expression is {len(expression)} characters long; the limit is {MAX_EXPRESSION_CHARS}"
        )
    _check_nesting(expression)
    source = expression.strip()
    if not source:
        raise ExpressionError("expression is empty")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        where = f" at column {exc.offset}" if exc.offset else ""
        raise ExpressionError(f"not a valid expression{where}: {exc.msg}") from None
    except (ValueError, MemoryError, RecursionError) as exc:  # e.g. null bytes
        raise ExpressionError(f"not a valid expression: {exc}") from None
    value = _Evaluator(source).evaluate(tree.body)
    return sympy.Rational(value.numerator, value.denominator)


def _check_nesting(expression: str) -> None:
    depth = 0
    for column, char in enumerate(expression, 1):
        if char in _OPENING:
            depth += 1
            if depth > MAX_NESTING:
                raise ExpressionError(
                    f"brackets are nested more than {MAX_NESTING} deep at column {column}"
                )
        elif char in _CLOSING:
            depth -= 1


def _check_size(value: Fraction, what: str, node: ast.AST) -> Fraction:
    if abs(value.numerator) >= MAX_MAGNITUDE or value.denominator >= MAX_MAGNITUDE:
        raise ExpressionError(
            f"{what} at column {_column(node)} is too large (numerator and denominator must stay "
            f"below 10**{len(str(MAX_MAGNITUDE)) - 1})"
        )
    return value


def _column(node: ast.AST) -> int:
    return getattr(node, "col_offset", 0) + 1


class _Evaluator:
    """Walks the parsed expression; `source` gives float literals their exact written digits."""

    def __init__(self, source: str) -> None:
        self.source = source

    def evaluate(self, node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant):
            return self._literal(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.evaluate(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            left = self.evaluate(node.left)
            right = self.evaluate(node.right)
            return _check_size(self._binary(node, left, right), "result", node)
        raise ExpressionError(
            f"{_describe(node)} at column {_column(node)} is not allowed; use only numbers, "
            "+ - * / // % **, and parentheses"
        )

    def _literal(self, node: ast.Constant) -> Fraction:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ExpressionError(
                f"{type(value).__name__} literal {value!r} at column {_column(node)} is not a number"
            )
        if isinstance(value, int):
            return _check_size(Fraction(value), "number", node)
        written = ast.get_source_segment(self.source, node) or repr(value)
        match = _FLOAT_LITERAL.fullmatch(written)
        if match is None:
            raise ExpressionError(f"number {written!r} at column {_column(node)} is not understood")
        exponent = int(match["exponent"] or "0")
        if abs(exponent) > _MAX_LITERAL_EXPONENT:
            raise ExpressionError(f"number {written!r} at column {_column(node)} is too large")
        return _check_size(Fraction(written), "number", node)

    def _binary(self, node: ast.BinOp, left: Fraction, right: Fraction) -> Fraction:
        op = node.op
        if isinstance(op, ast.Add):
            return left + right
        if isinstance(op, ast.Sub):
            return left - right
        if isinstance(op, ast.Mult):
            return left * right
        if isinstance(op, (ast.Div, ast.FloorDiv, ast.Mod)):
            if right == 0:
                raise ExpressionError(f"division by zero at column {_column(node)}")
            if isinstance(op, ast.Div):
                return left / right
            if isinstance(op, ast.FloorDiv):
                return Fraction(left // right)
            return left % right
        if isinstance(op, ast.Pow):
            return _power(node, left, right)
        raise ExpressionError(
            f"operator {type(op).__name__} at column {_column(node)} is not allowed; use only "
            "+ - * / // % **"
        )


def _power(node: ast.BinOp, base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise ExpressionError(
            f"exponent {exponent} at column {_column(node)} is not a whole number"
        )
    power = exponent.numerator
    if abs(power) > MAX_EXPONENT:
        raise ExpressionError(
            f"exponent {power} at column {_column(node)} is too large; the limit is {MAX_EXPONENT}"
        )
    if base == 0 and power < 0:
        raise ExpressionError(f"division by zero at column {_column(node)} (0 to a negative power)")
    # Refuse before computing: (bits - 1) * power is a lower bound on the result's bit length.
    largest_part = max(abs(base.numerator), base.denominator)
    if (largest_part.bit_length() - 1) * abs(power) > _MAX_MAGNITUDE_BITS:
        raise ExpressionError(f"power at column {_column(node)} is too large")
    return base**power


def _describe(node: ast.AST) -> str:
    names = {
        ast.Name: "name",
        ast.Call: "function call",
        ast.Attribute: "attribute access",
        ast.Subscript: "subscript",
        ast.Compare: "comparison",
        ast.BoolOp: "boolean operator",
        ast.Lambda: "lambda",
        ast.IfExp: "conditional expression",
        ast.Tuple: "tuple (write 1000, not 1,000)",
        ast.List: "list",
    }
    for kind, description in names.items():
        if isinstance(node, kind):
            if isinstance(node, ast.Name):
                return f"name {node.id!r}"
            return description
    if isinstance(node, ast.UnaryOp):
        return f"operator {type(node.op).__name__}"
    return type(node).__name__

