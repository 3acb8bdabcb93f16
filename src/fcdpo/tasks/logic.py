"""First-order formulas in FOLIO notation, and a z3-backed prover over them.

Layer: functions and tasks (the FOL task's, `fcdpo.tasks.fol`); imports nothing of fcdpo.

Notation (each Unicode symbol has an ASCII spelling):

    ∀x  forall x      universal quantifier (an optional "." may follow the variable)
    ∃x  exists x      existential quantifier
    ¬   ~  !          negation
    ∧   &             conjunction
    ∨   |             disjunction
    ⊕   ^             exclusive or
    →   ->            implication (right-associative)
    ↔   ⟷  <->        biconditional
    =   ≠  !=         equality / inequality of terms

Binding strength, tightest first: ¬, ∧, then ∨ and ⊕ (same level, left to right), →, ↔.
A quantifier's scope reaches as far right as possible (as in NLTK and most textbooks):
`∀x P(x) → Q(x)` reads `∀x (P(x) → Q(x))`; parenthesise to end it earlier.

Atoms are predicates applied to terms, `Tall(john)`, `Loves(x, y)`, or a bare identifier used as a
proposition, `Raining`. A term is an identifier: a bound variable where a quantifier over that name
is in scope, a constant otherwise. Identifiers start with a letter, digit or underscore and go on
with those, apostrophes (`'`, `’`) and, where another name character follows, `.` and `-`
(`Dr.Smith`, `Hand-made`, `O’Brien`; a `.` before `)` or `,` also belongs to the name: `apple_inc.`),
as FOLIO's names do; a quantifier's variable is letters, digits and underscores only, so `∀x.P(x)`
reads as before. `forall` and `exists` are reserved. Each name keeps one role in a formula and across a knowledge base: a
predicate of a fixed arity, a proposition, or a constant.

Every malformed input raises `FormulaError`, whose message names the problem and its character
position (0-based). Text longer than `MAX_FORMULA_CHARS` or with parentheses nested deeper than
`MAX_DEPTH` is refused before parsing; other nesting (negations, quantifiers, operator chains) is
refused as the parser meets it, so recursion stays bounded and hostile strings fail fast.

`KnowledgeBase` holds premises and answers "True" / "False" / "Unknown" for a conclusion. There
is no unique-names assumption: two constants may denote the same entity unless the premises say
otherwise, matching FOLIO's semantics. Premises that contradict each other raise
`InconsistentPremises` rather than proving everything, and a query z3 cannot settle within its
time budget raises `ProofTimeout` rather than passing for "Unknown".

Where every premise is quantifier-free or universal (`∀x ∀y ...` over a quantifier-free body) and
the conclusion is quantifier-free, as in the structured `add_fact` / `add_rule` / `query` chains,
the prover hands z3 the premises' instances over the constants named instead of the quantified
formulas. Without function symbols such a set has a model exactly when its instances do (Herbrand's
theorem; its equality version where `=` occurs), so the answers are the same, and z3 settles a
ground problem in well under a millisecond where quantifier instantiation takes several.
Grounding is part of the proof: it is bounded in size (`MAX_INSTANCES`, `MAX_GROUND_NODES`, beyond
which z3 gets the quantified premises) and runs inside the call's time budget, which it checks as
it goes; a budget spent while grounding or translating raises `ProofTimeout` like one spent in z3.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Union

import z3

MAX_FORMULA_CHARS = 2000
MAX_DEPTH = 50
MAX_PREMISES = 200
DEFAULT_TIMEOUT_MS = 1500
MAX_INSTANCES = 10_000  # ground instances of all premises together; more and z3 gets the quantifiers
MAX_GROUND_NODES = 100_000  # formula nodes in all those instances together; likewise

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


class FormulaError(ValueError):
    """A formula that cannot be read; `position` is the 0-based character offset or None."""

    def __init__(self, message: str, position: int | None = None) -> None:
        self.position = position
        super().__init__(message if position is None else f"{message} (position {position})")


class InconsistentPremises(ValueError):
    """The premises contradict each other, so every conclusion would follow from them."""


class ProofTimeout(TimeoutError):
    """z3 neither proved nor refuted a query within its time limit (or gave up for another reason)."""


# ---------------------------------------------------------------------------------------------
# Syntax tree


@dataclass(frozen=True)
class Term:
    """A constant or a bound variable."""

    name: str
    bound: bool


@dataclass(frozen=True)
class Atom:
    """A predicate applied to terms; no arguments makes it a proposition."""

    predicate: str
    args: tuple[Term, ...]
    position: int = field(default=0, compare=False)  # where it was read, for error messages


@dataclass(frozen=True)
class Equals:
    """Two terms denote the same entity."""

    left: Term
    right: Term
    position: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Not:
    """Negation."""

    operand: "Formula"


@dataclass(frozen=True)
class Connective:
    """`op` is one of "∧", "∨", "⊕" (any number of operands, left to right) or "→", "↔" (two)."""

    op: str
    operands: tuple["Formula", ...]


@dataclass(frozen=True)
class Quantified:
    """`quantifier` is "∀" or "∃"."""

    quantifier: str
    variable: str
    body: "Formula"


Formula = Union[Atom, Equals, Not, Connective, Quantified]

def format_formula(formula: Formula) -> str:
    """FOLIO notation for a formula; parsing the text gives the same formula back."""
    if isinstance(formula, Atom):
        if not formula.args:
            return formula.predicate
        return f"{formula.predicate}({', '.join(t.name for t in formula.args)})"
    if isinstance(formula, Equals):
        return f"{formula.left.name} = {formula.right.name}"
    if isinstance(formula, Not):
        inner = formula.operand
        text = format_formula(inner)
        return "¬" + (text if isinstance(inner, (Atom, Not)) else f"({text})")
    if isinstance(formula, Quantified):
        body = formula.body
        text = format_formula(body)
        if isinstance(body, (Connective, Equals)):
            text = f"({text})"
        return f"{formula.quantifier}{formula.variable} {text}"
    parts = []
    for operand in formula.operands:
        text = format_formula(operand)
        # Quantifiers reach rightwards, so one inside a connective needs its own parentheses.
        if isinstance(operand, (Connective, Quantified)):
            text = f"({text})"
        parts.append(text)
    return f" {formula.op} ".join(parts)


# ---------------------------------------------------------------------------------------------
# Tokens

_SYMBOLS = [  # longest first so "<->" is not read as "<" then "->"
    ("<->", "↔"), ("->", "→"), ("!=", "≠"),
    ("∀", "∀"), ("∃", "∃"), ("¬", "¬"), ("~", "¬"), ("!", "¬"),
    ("∧", "∧"), ("&", "∧"), ("∨", "∨"), ("|", "∨"), ("⊕", "⊕"), ("^", "⊕"),
    ("→", "→"), ("↔", "↔"), ("⟷", "↔"), ("≠", "≠"), ("=", "="),
    ("(", "("), (")", ")"), (",", ","), (".", "."),
]
_KEYWORDS = {"forall": "∀", "exists": "∃"}
RESERVED_WORDS = frozenset(_KEYWORDS)


@dataclass(frozen=True)
class _Token:
    kind: str  # a symbol from _SYMBOLS' second column, "name", or "end"
    text: str
    position: int


def _is_name_char(ch: str) -> bool:
    return ch.isalpha() or ch in "0123456789_"


_APOSTROPHES = "'’"
_JOINERS = ".-"  # inside a name only where a name character follows (so `->` and `∀x.` stay symbols)


def _name_end(text: str, start: int, plain: bool) -> int:
    """Where the identifier starting at `start` ends; `plain` reads letters, digits and `_` only."""
    i, n = start, len(text)
    while i < n:
        ch = text[i]
        if _is_name_char(ch) or (not plain and ch in _APOSTROPHES):
            i += 1
        elif not plain and ch in _JOINERS and i + 1 < n and (
                _is_name_char(text[i + 1]) or (ch == "." and text[i + 1] in "),")):
            i += 1
        else:
            break
    return i


def _describe(token: _Token) -> str:
    return "end of formula" if token.kind == "end" else repr(token.text)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if _is_name_char(ch):
            start = i
            after_quantifier = bool(tokens) and tokens[-1].kind in ("∀", "∃")
            i = _name_end(text, start, plain=after_quantifier)
            word = text[start:i]
            tokens.append(_Token(_KEYWORDS.get(word, "name"), word, start))
            continue
        for spelling, kind in _SYMBOLS:
            if text.startswith(spelling, i):
                tokens.append(_Token(kind, spelling, i))
                i += len(spelling)
                break
        else:
            raise FormulaError(f"unexpected character {ch!r}", i)
    tokens.append(_Token("end", "", n))
    return tokens


def _check_bounds(text: str) -> None:
    if not isinstance(text, str):
        raise FormulaError(f"a formula must be a string, not {type(text).__name__}")
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"formula is {len(text)} characters long; the limit is {MAX_FORMULA_CHARS}")
    if not text.strip():
        raise FormulaError("empty formula", 0)
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
            if depth > MAX_DEPTH:
                raise FormulaError(f"parentheses nested deeper than {MAX_DEPTH}", i)
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise FormulaError("unmatched ')'", i)
    if depth > 0:
        raise FormulaError(f"{depth} unclosed '('", len(text))


# ---------------------------------------------------------------------------------------------
# Parser


class _Parser:
    """Recursive descent over the token list. `depth` counts open parentheses, negations and
    quantifiers, so recursion stays within MAX_DEPTH levels whatever the input."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0
        self.bound: list[str] = []  # variables in scope, innermost last
        self.roles: dict[str, tuple[str, int]] = {}  # name -> (role, arity), role in predicate/constant
        self.heights: dict[int, int] = {}  # id(node) -> height of the subtree it roots

    def node(self, formula: Formula, children: tuple[Formula, ...], position: int) -> Formula:
        """Register a new tree node; long operator chains are refused here, since they nest the
        tree (and every later recursive walk over it) without nesting parentheses."""
        height = 1 + max((self.heights[id(c)] for c in children), default=0)
        if height > MAX_DEPTH:
            raise FormulaError(f"formula nested deeper than {MAX_DEPTH}", position)
        self.heights[id(formula)] = height
        return formula

    # helpers
    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expect(self, kind: str, what: str) -> _Token:
        if self.token.kind != kind:
            raise FormulaError(f"expected {what} but found {_describe(self.token)}", self.token.position)
        return self.advance()

    def enter(self, position: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FormulaError(f"formula nested deeper than {MAX_DEPTH}", position)

    def note_role(self, name: str, role: str, arity: int, position: int) -> None:
        previous = self.roles.setdefault(name, (role, arity))
        if previous != (role, arity):
            raise FormulaError(
                f"{name!r} is {_role_text(role, arity)} here but {_role_text(*previous)} earlier",
                position,
            )

    # grammar
    def parse(self) -> Formula:
        formula = self.biconditional()
        if self.token.kind != "end":
            raise FormulaError(
                f"expected a connective or the end of the formula but found {_describe(self.token)}",
                self.token.position,
            )
        return formula

    def biconditional(self) -> Formula:
        formula = self.implication()
        while self.token.kind == "↔":
            position = self.advance().position
            operands = (formula, self.implication())
            formula = self.node(Connective("↔", operands), operands, position)
        return formula

    def implication(self) -> Formula:
        operands = [self.disjunction()]
        positions = []
        while self.token.kind == "→":
            positions.append(self.advance().position)
            operands.append(self.disjunction())
        formula = operands.pop()
        while operands:  # right-associative: a → b → c is a → (b → c)
            pair = (operands.pop(), formula)
            formula = self.node(Connective("→", pair), pair, positions.pop())
        return formula

    def disjunction(self) -> Formula:
        formula = self.conjunction()
        while self.token.kind in ("∨", "⊕"):
            operator = self.advance()
            op, position = operator.kind, operator.position
            right = self.conjunction()
            if isinstance(formula, Connective) and formula.op == op:
                operands = formula.operands + (right,)  # chains of one operator stay flat
            else:
                operands = (formula, right)
            formula = self.node(Connective(op, operands), operands, position)
        return formula

    def conjunction(self) -> Formula:
        operands = [self.unary()]
        position = self.token.position
        while self.token.kind == "∧":
            self.advance()
            operands.append(self.unary())
        if len(operands) == 1:
            return operands[0]
        return self.node(Connective("∧", tuple(operands)), tuple(operands), position)

    def unary(self) -> Formula:
        token = self.token
        if token.kind == "¬":
            self.advance()
            self.enter(token.position)
            operand = self.unary()
            self.depth -= 1
            return self.node(Not(operand), (operand,), token.position)
        if token.kind in ("∀", "∃"):
            self.advance()
            variable = self.expect("name", f"a variable after {token.text!r}")
            if self.token.kind == ".":
                self.advance()
            if variable.text in self.roles and self.roles[variable.text][0] == "predicate":
                raise FormulaError(f"{variable.text!r} is a predicate, not a variable", variable.position)
            self.enter(token.position)
            self.bound.append(variable.text)
            body = self.biconditional()
            self.bound.pop()
            self.depth -= 1
            return self.node(Quantified(token.kind, variable.text, body), (body,), token.position)
        return self.primary()

    def primary(self) -> Formula:
        token = self.token
        if token.kind == "(":
            self.advance()
            self.enter(token.position)
            formula = self.biconditional()
            self.expect(")", "')'")
            self.depth -= 1
            return formula
        if token.kind != "name":
            raise FormulaError(f"expected a formula but found {_describe(token)}", token.position)
        self.advance()
        if self.token.kind == "(":
            return self.application(token)
        if self.token.kind in ("=", "≠"):
            left = self.term(token)
            op = self.advance()
            right = self.term(self.expect("name", f"a term after {op.text!r}"))
            equality = self.node(Equals(left, right, token.position), (), token.position)
            if op.kind == "≠":
                return self.node(Not(equality), (equality,), token.position)
            return equality
        if token.text in self.bound:
            raise FormulaError(f"variable {token.text!r} used as a formula", token.position)
        self.note_role(token.text, "predicate", 0, token.position)
        return self.node(Atom(token.text, (), token.position), (), token.position)

    def application(self, name: _Token) -> Atom:
        if name.text in self.bound:
            raise FormulaError(f"variable {name.text!r} used as a predicate", name.position)
        self.advance()  # "("
        args = [self.term(self.expect("name", "a term"))]
        while self.token.kind == ",":
            self.advance()
            args.append(self.term(self.expect("name", "a term")))
        self.expect(")", "',' or ')'")
        self.note_role(name.text, "predicate", len(args), name.position)
        atom = Atom(name.text, tuple(args), name.position)
        self.node(atom, (), name.position)
        return atom

    def term(self, token: _Token) -> Term:
        if token.text in self.bound:
            return Term(token.text, bound=True)
        self.note_role(token.text, "constant", 0, token.position)
        return Term(token.text, bound=False)


def _role_text(role: str, arity: int) -> str:
    if role == "constant":
        return "a constant"
    if arity == 0:
        return "a proposition"
    return f"a predicate with {arity} argument{'s' if arity != 1 else ''}"


def parse_formula(text: str) -> Formula:
    """Parse one formula in FOLIO notation (or its ASCII spelling).

    Raises:
        FormulaError: the text is not a well-formed formula, is too long or nests too deep.
    """
    _check_bounds(text)
    return _Parser(text).parse()


def symbols(formula: Formula) -> dict[str, tuple[str, int]]:
    """The non-logical names a formula uses: name -> ("predicate", arity) or ("constant", 0)."""
    found: dict[str, tuple[str, int]] = {}
    stack: list[Formula] = [formula]
    while stack:
        node = stack.pop()
        if isinstance(node, Atom):
            found[node.predicate] = ("predicate", len(node.args))
            terms: tuple[Term, ...] = node.args
        elif isinstance(node, Equals):
            terms = (node.left, node.right)
        else:
            terms = ()
            if isinstance(node, Not):
                stack.append(node.operand)
            elif isinstance(node, Quantified):
                stack.append(node.body)
            elif isinstance(node, Connective):
                stack.extend(node.operands)
        for term in terms:
            if not term.bound:
                found[term.name] = ("constant", 0)
    return found


# ---------------------------------------------------------------------------------------------
# z3 translation and proof


class KnowledgeBase:
    """Premises in first-order logic, queried with z3.

    Example:
        kb = KnowledgeBase()
        kb.add("∀x (Wumpus(x) → Tumpus(x))")
        kb.add("Wumpus(alex)")
        kb.prove("Tumpus(alex)")  # "True"; "Yumpus(alex)" would give "Unknown"

    Args:
        timeout_ms: z3 time budget for one `prove` call (split over its solver checks).
        max_premises: how many premises `add` accepts before refusing more.
        instantiate: give z3 the instances of universal premises over the constants named, where
            that decides the same question (see the module docstring); False always gives it the
            quantified formulas.
    """

    def __init__(self, timeout_ms: int = DEFAULT_TIMEOUT_MS, max_premises: int = MAX_PREMISES,
                 instantiate: bool = True) -> None:
        self.timeout_ms = timeout_ms
        self.max_premises = max_premises
        self.instantiate = instantiate
        self._premises: list[Formula] = []
        self._signature: dict[str, tuple[str, int]] = {}

    @property
    def premises(self) -> list[str]:
        """The premises added so far, in FOLIO notation."""
        return [format_formula(p) for p in self._premises]

    def add(self, formula: str) -> Formula:
        """Add a premise and return it parsed.

        Raises:
            FormulaError: the formula is malformed or uses a name in a different role or arity
                than earlier premises.
            ValueError: the knowledge base already holds `max_premises` premises.
        """
        if len(self._premises) >= self.max_premises:
            raise ValueError(f"the knowledge base is full ({self.max_premises} premises)")
        parsed = self.parse(formula)
        self._signature.update(symbols(parsed))
        self._premises.append(parsed)
        return parsed

    def prove(self, conclusion: str) -> str:
        """Whether the premises entail the conclusion: "True", "False" (they entail its negation)
        or "Unknown" (neither).

        Raises:
            FormulaError: the conclusion is malformed or clashes with the premises' names.
            InconsistentPremises: the premises contradict each other.
            ProofTimeout: z3 could not decide within `timeout_ms`.
        """
        parsed = self.parse(conclusion)
        deadline = time.monotonic() + self.timeout_ms / 1000
        premises = self._premises
        if self.instantiate:
            try:
                premises = _instances(self._premises, parsed, deadline) or self._premises
            except _OutOfTime:
                raise ProofTimeout(f"no answer within {self.timeout_ms} ms") from None
        # z3 objects are not thread-safe, and a proof abandoned by a caller's time limit may still
        # be running in another thread: each proof has a context of its own. Making one costs more
        # than a small proof, so idle ones are reused; a context goes back only once `_decide` has
        # returned, when no z3 object of its proof is left.
        with _IDLE_LOCK:
            context = _IDLE_CONTEXTS.pop() if _IDLE_CONTEXTS else None
        context = context or z3.Context()
        outcome = _decide(context, premises, parsed, self.timeout_ms, deadline)
        with _IDLE_LOCK:
            if len(_IDLE_CONTEXTS) < _MAX_IDLE_CONTEXTS:
                _IDLE_CONTEXTS.append(context)
        if outcome == "inconsistent":
            raise InconsistentPremises("the premises contradict each other")
        if outcome not in (TRUE, FALSE, UNKNOWN):
            raise ProofTimeout(outcome)
        return outcome

    def parse(self, text: str) -> Formula:
        """Parse a formula and check its names against the premises' without adding it.

        Raises:
            FormulaError: as for `add`.
        """
        parsed = parse_formula(text)
        for name, role in symbols(parsed).items():
            known = self._signature.get(name)
            if known is not None and known != role:
                position = _first_position(parsed, name)
                raise FormulaError(
                    f"{name!r} is {_role_text(*role)} here but {_role_text(*known)} in an earlier premise",
                    position,
                )
        return parsed



_IDLE_CONTEXTS: list[z3.Context] = []
_IDLE_LOCK = threading.Lock()
_MAX_IDLE_CONTEXTS = 8


def _decide(context: z3.Context, premises: list[Formula], conclusion: Formula, timeout_ms: int,
            deadline: float | None = None) -> str:
    """TRUE, FALSE or UNKNOWN for `conclusion`; "inconsistent" when the premises contradict each
    other; otherwise why z3 gave up (the time budget, which ends at `deadline`, included). Nothing
    z3 made here outlives the call."""
    deadline = time.monotonic() + timeout_ms / 1000 if deadline is None else deadline
    entity = z3.DeclareSort("Entity", context)
    solver = z3.Solver(ctx=context)
    names: dict[tuple[str, int], z3.AstRef] = {}
    translated = []
    for premise in premises:  # thousands of ground instances take a while to translate
        if time.monotonic() > deadline:
            return f"no answer within {timeout_ms} ms"
        translated.append(_to_z3(premise, context, entity, names))
    solver.add(*translated)
    del translated
    goal = _to_z3(conclusion, context, entity, names)
    status = _check(solver, deadline, timeout_ms)
    if status != "sat":
        return "inconsistent" if status == "unsat" else status
    for negated_goal, answer in ((z3.Not(goal), TRUE), (goal, FALSE)):
        solver.push()
        solver.add(negated_goal)
        status = _check(solver, deadline, timeout_ms)
        solver.pop()
        if status == "unsat":
            return answer
        if status != "sat":
            return status
    return UNKNOWN


def _check(solver: z3.Solver, deadline: float, timeout_ms: int) -> str:
    """"sat", "unsat", or why z3 could not tell within what is left of the time budget."""
    remaining_ms = int((deadline - time.monotonic()) * 1000)
    if remaining_ms <= 0:
        return f"no answer within {timeout_ms} ms"
    solver.set("timeout", remaining_ms)
    result = solver.check()
    if result == z3.unknown:
        reason = solver.reason_unknown()
        if "timeout" in reason or "canceled" in reason:
            return f"no answer within {timeout_ms} ms"
        return f"z3 gave up ({reason})"
    return "sat" if result == z3.sat else "unsat"


class _OutOfTime(Exception):
    """The proof's time budget ran out while grounding."""


def _instances(premises: list[Formula], conclusion: Formula, deadline: float | None = None) -> list[Formula] | None:
    """The premises' instances over the constants that they and the conclusion name (one stand-in
    constant if none), or None where that would not decide the same question: a premise with a
    quantifier other than leading ∀s, a quantified conclusion, no premises with a quantifier at
    all (nothing to gain), or more than `MAX_INSTANCES` instances or `MAX_GROUND_NODES` nodes in
    them. Raises `_OutOfTime` once `time.monotonic()` passes `deadline`."""
    split = [_universal(p) for p in premises]
    goal = _universal(conclusion)
    if (goal is None or goal[0]  # the conclusion must be quantifier-free
            or any(s is None for s in split) or all(not variables for variables, _ in split)):
        return None
    names = sorted({name for f in (*premises, conclusion) for name, (role, _) in symbols(f).items()
                    if role == "constant"})
    domain = [Term(name, False) for name in names] or [Term("anything", False)]
    counts = [len(domain) ** len(variables) for variables, _ in split]
    if sum(counts) > MAX_INSTANCES:
        return None
    if sum(count * _size(body) for count, (_, body) in zip(counts, split)) > MAX_GROUND_NODES:
        return None
    instances = []
    for variables, body in split:
        for values in itertools.product(domain, repeat=len(variables)):
            if deadline is not None and time.monotonic() > deadline:
                raise _OutOfTime
            instances.append(_substitute(body, dict(zip(variables, values))))
    return instances


def _size(formula: Formula) -> int:
    """Nodes in a quantifier-free formula: atoms and their arguments, equalities and their two
    sides, negations, connectives."""
    count, stack = 0, [formula]
    while stack:
        node = stack.pop()
        count += 1
        if isinstance(node, Atom):
            count += len(node.args)
        elif isinstance(node, Equals):
            count += 2
        elif isinstance(node, Not):
            stack.append(node.operand)
        elif isinstance(node, Connective):
            stack.extend(node.operands)
    return count


def _universal(formula: Formula) -> tuple[tuple[str, ...], Formula] | None:
    """A formula's leading ∀ variables and the quantifier-free body under them; None if any other
    quantifier occurs. A variable bound twice keeps the inner binding, as substitution will."""
    variables: list[str] = []
    while isinstance(formula, Quantified) and formula.quantifier == "∀":
        variables.append(formula.variable)
        formula = formula.body
    stack: list[Formula] = [formula]
    while stack:
        node = stack.pop()
        if isinstance(node, Quantified):
            return None
        if isinstance(node, Not):
            stack.append(node.operand)
        elif isinstance(node, Connective):
            stack.extend(node.operands)
    return tuple(variables), formula


def _substitute(formula: Formula, values: dict[str, Term]) -> Formula:
    """A quantifier-free formula with its bound variables replaced by `values`' constants."""
    def term(t: Term) -> Term:
        return values.get(t.name, t) if t.bound else t

    if isinstance(formula, Atom):
        return Atom(formula.predicate, tuple(term(a) for a in formula.args), formula.position)
    if isinstance(formula, Equals):
        return Equals(term(formula.left), term(formula.right), formula.position)
    if isinstance(formula, Not):
        return Not(_substitute(formula.operand, values))
    assert isinstance(formula, Connective), formula  # _universal let no quantifier through
    return Connective(formula.op, tuple(_substitute(o, values) for o in formula.operands))


def _to_z3(formula: Formula, ctx: z3.Context, entity: z3.SortRef,
           names: dict[tuple[str, int], z3.AstRef] | None = None) -> z3.BoolRef:
    """The formula as a z3 term over the uninterpreted sort `entity`. `names` caches the
    constants and predicates made, for formulas translated together (the z3 API is slow to make them)."""
    scopes: list[dict[str, z3.ExprRef]] = []
    names = {} if names is None else names

    def term(t: Term) -> z3.ExprRef:
        if t.bound:
            for scope in reversed(scopes):
                if t.name in scope:
                    return scope[t.name]
        # Prefixes keep constants, predicates and bound variables apart in z3's namespace.
        key = ("c_" + t.name, -1)
        if key not in names:
            names[key] = z3.Const(key[0], entity)
        return names[key]

    def convert(node: Formula) -> z3.BoolRef:
        if isinstance(node, Atom):
            key = ("p_" + node.predicate, len(node.args))
            if key not in names:
                names[key] = (z3.Bool(key[0], ctx) if not node.args
                              else z3.Function(key[0], *[entity] * len(node.args), z3.BoolSort(ctx)))
            if not node.args:
                return names[key]
            return names[key](*[term(a) for a in node.args])
        if isinstance(node, Equals):
            return term(node.left) == term(node.right)
        if isinstance(node, Not):
            return z3.Not(convert(node.operand), ctx)
        if isinstance(node, Quantified):
            variable = z3.Const(f"v{len(scopes)}_{node.variable}", entity)
            scopes.append({node.variable: variable})
            body = convert(node.body)
            scopes.pop()
            quantify = z3.ForAll if node.quantifier == "∀" else z3.Exists
            return quantify([variable], body)
        operands = [convert(o) for o in node.operands]
        if node.op == "∧":
            return z3.And(*operands)
        if node.op == "∨":
            return z3.Or(*operands)
        if node.op == "→":
            return z3.Implies(operands[0], operands[1])
        if node.op == "↔":
            return operands[0] == operands[1]
        result = operands[0]
        for operand in operands[1:]:  # ⊕ chains fold left to right
            result = z3.Xor(result, operand)
        return result

    try:
        return convert(formula)
    finally:
        # `convert` refers to itself through a closure cell, a cycle that would keep this call's z3
        # objects for the garbage collector to free later, from any thread; clearing the cells frees
        # them now, while their context is still this proof's alone.
        del convert, term


def _first_position(formula: Formula, name: str) -> int | None:
    stack: list[Formula] = [formula]
    while stack:
        node = stack.pop()
        if isinstance(node, Atom):
            if node.predicate == name or any(a.name == name for a in node.args):
                return node.position
        elif isinstance(node, Equals):
            if name in (node.left.name, node.right.name):
                return node.position
        elif isinstance(node, Not):
            stack.append(node.operand)
        elif isinstance(node, Quantified):
            stack.append(node.body)
        elif isinstance(node, Connective):
            stack.extend(reversed(node.operands))
    return None
