"""First-order logic: ProntoQA-style generated problems and FOLIO, solved with a z3 prover.

Layer: functions and tasks; imports `fcdpo.tasks.logic` (its prover), `fcdpo.functions` and the task modules base and records.

The model records what a problem states, then asks the prover. Small models copy short arguments
far better than long formulas, so beside raw formulas (`add_premise`, `prove`, FOLIO notation) it
gets structured helpers for the sentences generated problems use:

    add_fact(entity="Alex", concept="wumpus")          Alex is a wumpus.          Wumpus(alex)
    add_rule(premise="wumpus", conclusion="tumpus")    Every wumpus is a tumpus.  ∀x (Wumpus(x) → Tumpus(x))
    add_rule(premise="tumpus", conclusion="red", negated=True)   No tumpus is red.
    query(entity="Alex", concept="tumpus")             -> "True" / "False" / "Unknown"

All of them end in the same knowledge base, so the two styles can be mixed. Names are normalised:
concepts become capitalised predicates (`living thing` -> `Living_thing`, a leading "a"/"an" is
dropped) and entities lower-case constants (`Alex` -> `alex`), as in FOLIO.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fcdpo.tasks.base import Problem, Task
from fcdpo.tasks.logic import FALSE, RESERVED_WORDS, TRUE, UNKNOWN, FormulaError, KnowledgeBase
from fcdpo.tasks.records import MAX_LIST_ITEMS, MAX_TEXT_CHARS, BadRow, Loaded, collect, jsonl_rows

if TYPE_CHECKING:
    from fcdpo.functions import FunctionSet

logger = logging.getLogger(__name__)

LABELS = (TRUE, FALSE, UNKNOWN)
QUESTION_PREFIX = "True, false, or unknown:"
MAX_NAME_CHARS = 60
MAX_HOPS = 5
MAX_FOLIO_PREMISES = 100  # premises of one FOLIO record (the official files have at most about 20)
PROVER_TIMEOUT_MS = 2000
CALL_TIME_LIMIT_S = 5.0  # above the prover's own budget, so z3 reports its timeout itself

_NAME = re.compile(r"[A-Za-z0-9_ ]+")
_ARTICLE = re.compile(r"^(?:a|an)\s+", re.IGNORECASE)
_LABEL_WORD = re.compile(r"\b(true|false|unknown|uncertain)\b", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Names and formulas shared by the functions and the generator


def _clean_name(text: str, what: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a string")
    cleaned = " ".join(text.split())
    if what == "concept":
        cleaned = _ARTICLE.sub("", cleaned)
    if not cleaned:
        raise ValueError(f"{what} is empty")
    if len(cleaned) > MAX_NAME_CHARS:
        raise ValueError(f"{what} is longer than {MAX_NAME_CHARS} characters")
    if not _NAME.fullmatch(cleaned):
        bad = next(ch for ch in cleaned if not _NAME.fullmatch(ch))
        raise ValueError(f"{what} {text!r} contains {bad!r}; use letters, digits, spaces and underscores")
    return cleaned.replace(" ", "_")


def entity_constant(entity: str) -> str:
    """The constant an entity name becomes: `"Alex"` -> `alex`, `"Sally Smith"` -> `sally_smith`.

    Raises:
        ValueError: the name is empty, too long, reserved, or has characters other than letters,
            digits, spaces and underscores.
    """
    name = _clean_name(entity, "entity").lower()
    if name in RESERVED_WORDS:
        raise ValueError(f"entity {entity!r} is a reserved word")
    return name


# Plurals that no suffix rule undoes, and words ending in "-uses" whose singular ends in "-use".
_IRREGULAR_SINGULARS = {
    "mice": "mouse", "wolves": "wolf", "people": "person", "children": "child", "men": "man",
    "women": "woman", "geese": "goose", "feet": "foot", "teeth": "tooth", "leaves": "leaf",
    "knives": "knife", "wives": "wife", "lives": "life", "halves": "half", "calves": "calf",
    "elves": "elf", "shelves": "shelf", "loaves": "loaf", "thieves": "thief", "oxen": "ox",
}
_USE_WORDS = frozenset({
    "houses", "causes", "uses", "fuses", "excuses", "blouses", "spouses", "muses", "abuses",
    "clauses", "pauses", "refuses", "accuses", "amuses", "warehouses", "greenhouses",
})


# Nouns ending in s whose singular is the same word: not `news` -> `new`, `species` -> `specy`.
_SAME_SINGULAR = frozenset({
    "news", "species", "series", "means", "headquarters", "crossroads", "barracks", "gallows",
    "innings", "mathematics", "physics", "ethics", "politics", "economics", "athletics", "gymnastics",
    "measles", "mumps", "diabetes", "rabies", "herpes", "scabies",
})


def singular(word: str) -> str:
    """The singular of an English noun as ProntoQA-style text writes it: `jompuses` -> `jompus`,
    `cats` -> `cat`, `daisies` -> `daisy`, `mice` -> `mouse`. Words that do not look plural
    (`wumpus`, `nervous`, `glass`, `red`) come back unchanged, and so does a singular, including one
    that ends like a plural (`news`, `species`, `series`)."""
    lower = word.lower()
    if lower in _IRREGULAR_SINGULARS:
        return _IRREGULAR_SINGULARS[lower]
    if lower in _SAME_SINGULAR or len(lower) <= 3 or not lower.endswith("s"):
        return lower
    if lower in _USE_WORDS:
        return lower[:-1]
    if lower.endswith("ies") and len(lower) > 4:
        return lower[:-3] + "y"
    if lower.endswith(("sses", "shes", "ches", "xes", "zzes", "uses")):
        return lower[:-2]
    if lower.endswith(("ss", "us", "is")):
        return lower
    return lower[:-1]


def concept_predicate(concept: str) -> str:
    """The predicate a concept becomes: `"wumpus"` -> `Wumpus`, `"a living thing"` -> `Living_thing`.

    A plural is one predicate with its singular (`"jompuses"` and `"jompus"` -> `Jompus`, `"living
    things"` -> `Living_thing`): ProntoQA-style text says "Jompuses are not lorpuses" where a call
    names the singular. Only the last word is made singular.

    Raises:
        ValueError: as for `entity_constant`.
    """
    words = _clean_name(concept, "concept").lower().split("_")
    words[-1] = singular(words[-1])
    name = "_".join(words)
    return name[0].upper() + name[1:]


def fact_formula(entity: str, concept: str, negated: bool = False) -> str:
    """`Wumpus(alex)`, or `¬Wumpus(alex)` when negated."""
    atom = f"{concept_predicate(concept)}({entity_constant(entity)})"
    return "¬" + atom if negated else atom


def rule_formula(premise: str, conclusion: str, negated: bool = False) -> str:
    """`∀x (Wumpus(x) → Tumpus(x))`, or with `¬Tumpus(x)` when negated."""
    head = f"{concept_predicate(conclusion)}(x)"
    return f"∀x ({concept_predicate(premise)}(x) → {'¬' if negated else ''}{head})"


# ---------------------------------------------------------------------------------------------
# The functions the model calls


def statements_of(question: str) -> list[str]:
    """A question's statements in the order it states them, its question line last: the sentences of
    every line but the last (a sentence ends at a full stop followed by space, or at a line's end)."""
    lines = [line.strip() for line in question.strip().splitlines() if line.strip()]
    if not lines:
        return []
    *body, ask = lines
    sentences = [s for line in body for s in re.split(r"(?<=\.)\s+", line) if s]
    return [*sentences, ask]


def _make_functions(kb: KnowledgeBase, statements: list[str] | None = None) -> list[Callable[..., str]]:
    recorded = 0

    def ok() -> str:
        # With `statements` (echo_next), a record's result hands out the statement after the last one
        # recorded: the n-th successful record answers with statement n + 1, the question line last.
        nonlocal recorded
        recorded += 1
        if not statements:
            return "ok"
        return f"ok. Next: {statements[min(recorded, len(statements) - 1)]}"

    def add_fact(entity: str, concept: str, negated: bool = False) -> str:
        """Record that an entity is (or, with negated=True, is not) an instance of a concept.

        Example: add_fact(entity="Alex", concept="wumpus")

        Args:
            entity: The entity's name, e.g. "Alex".
            concept: A noun or adjective, e.g. "wumpus" or "red".
            negated: True for "Alex is not a wumpus".

        Returns:
            "ok".
        """
        kb.add(fact_formula(entity, concept, negated))
        return ok()

    def add_rule(premise: str, conclusion: str, negated: bool = False) -> str:
        """Record that everything that is the premise concept is also the conclusion concept
        (with negated=True: is not the conclusion concept).

        Example: add_rule(premise="wumpus", conclusion="tumpus")

        Args:
            premise: The concept the rule is about, e.g. "wumpus" in "Every wumpus is a tumpus".
            conclusion: What follows, e.g. "tumpus".
            negated: True for "No wumpus is a tumpus".

        Returns:
            "ok".
        """
        kb.add(rule_formula(premise, conclusion, negated))
        return ok()

    def query(entity: str, concept: str, negated: bool = False) -> str:
        """Ask whether the recorded facts and rules prove that an entity is (or, with
        negated=True, is not) an instance of a concept.

        Example: query(entity="Alex", concept="tumpus")

        Args:
            entity: The entity's name.
            concept: The concept asked about.
            negated: True to ask "Alex is not a tumpus".

        Returns:
            "True" if it follows, "False" if its opposite follows, "Unknown" otherwise.
        """
        return kb.prove(fact_formula(entity, concept, negated))

    def add_premise(formula: str) -> str:
        """Record a premise written as a first-order formula (FOLIO notation: ∀ ∃ ¬ ∧ ∨ ⊕ → ↔).

        Example: add_premise(formula="∀x (Wumpus(x) → Tumpus(x))")

        Args:
            formula: The formula, e.g. "Tumpus(alex) ∧ ¬Red(alex)".

        Returns:
            "ok".
        """
        kb.add(formula)
        return ok()

    def prove(conclusion: str) -> str:
        """Ask whether the premises prove a first-order formula.

        Example: prove(conclusion="Tumpus(alex)")

        Args:
            conclusion: The formula to decide.

        Returns:
            "True" if it follows, "False" if its negation follows, "Unknown" otherwise.
        """
        return kb.prove(conclusion)

    return [add_fact, add_rule, query, add_premise, prove]


# ---------------------------------------------------------------------------------------------
# Vocabulary for generated problems


@dataclass(frozen=True)
class _Concept:
    name: str
    plural: str
    adjective: bool = False

    def with_article(self) -> str:
        if self.adjective:
            return self.name
        return ("an " if self.name[0] in "aeiou" else "a ") + self.name


def _noun(name: str, plural: str | None = None) -> _Concept:
    return _Concept(name, plural or (name + "es" if name.endswith(("s", "x")) else name + "s"))


_FICTIONAL_NOUNS = [
    "wumpus", "yumpus", "zumpus", "dumpus", "impus", "jompus", "vumpus", "numpus", "tumpus",
    "rompus", "sterpus", "gorpus", "shumpus", "lempus", "lorpus", "brimpus", "grimpus", "felpus",
    "storpus", "kerpus", "frompus", "bompus", "scrompus", "timpus",
]
_ADJECTIVES = [
    "red", "blue", "bright", "dull", "small", "large", "sour", "sweet", "wooden", "metallic", "shy",
    "happy", "cold", "hot", "transparent", "opaque", "fruity", "spicy", "aggressive", "kind",
    "feisty", "nervous", "luminous", "earthy", "floral", "liquid",
]
_NAMES = [
    "Alex", "Max", "Sam", "Fae", "Rex", "Wren", "Polly", "Stella", "Sally", "Ben", "Tom", "Lily",
    "Nora", "Hugo", "Iris", "Otto", "Jack", "Mia",
]
# A small true taxonomy: every rule drawn from it holds in the real world, so real-concept
# problems never contradict what a model already knows.
_PARENT = {
    "cat": "feline", "lion": "feline", "tiger": "feline",
    "dog": "canine", "wolf": "canine", "fox": "canine",
    "feline": "carnivore", "canine": "carnivore",
    "mouse": "rodent", "rat": "rodent", "squirrel": "rodent",
    "carnivore": "mammal", "rodent": "mammal",
    "sparrow": "bird", "eagle": "bird", "penguin": "bird",
    "salmon": "fish", "trout": "fish", "shark": "fish",
    "snake": "reptile", "lizard": "reptile", "turtle": "reptile",
    "mammal": "vertebrate", "bird": "vertebrate", "fish": "vertebrate", "reptile": "vertebrate",
    "bee": "insect", "ant": "insect", "beetle": "insect",
    "snail": "mollusc", "octopus": "mollusc",
    "insect": "invertebrate", "mollusc": "invertebrate",
    "vertebrate": "animal", "invertebrate": "animal",
    "rose": "flower", "tulip": "flower", "daisy": "flower",
    "oak": "tree", "pine": "tree", "maple": "tree",
    "flower": "plant", "tree": "plant",
    "animal": "living thing", "plant": "living thing",
}
_IRREGULAR_PLURALS = {
    "mouse": "mice", "wolf": "wolves", "fish": "fish", "salmon": "salmon", "trout": "trout",
    "daisy": "daisies", "octopus": "octopuses",
}
_CHILDREN: dict[str, list[str]] = {}
for _child, _parent in _PARENT.items():
    _CHILDREN.setdefault(_parent, []).append(_child)


def _real(name: str) -> _Concept:
    return _noun(name, _IRREGULAR_PLURALS.get(name))


def _ancestors(name: str) -> list[str]:
    chain = []
    while name in _PARENT:
        name = _PARENT[name]
        chain.append(name)
    return chain


# ---------------------------------------------------------------------------------------------
# Statements and their wording


@dataclass(frozen=True)
class _Fact:
    entity: str
    concept: _Concept
    negated: bool = False

    def call(self, name: str = "add_fact") -> dict[str, Any]:
        arguments: dict[str, Any] = {"entity": self.entity, "concept": self.concept.name}
        if self.negated:
            arguments["negated"] = True
        return {"name": name, "arguments": arguments}

    def formula(self) -> str:
        return fact_formula(self.entity, self.concept.name, self.negated)

    def text(self) -> str:
        return f"{self.entity} is {'not ' if self.negated else ''}{self.concept.with_article()}"


@dataclass(frozen=True)
class _Rule:
    premise: _Concept
    conclusion: _Concept
    negated: bool = False

    def call(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {"premise": self.premise.name, "conclusion": self.conclusion.name}
        if self.negated:
            arguments["negated"] = True
        return {"name": "add_rule", "arguments": arguments}

    def formula(self) -> str:
        return rule_formula(self.premise.name, self.conclusion.name, self.negated)

    def text(self, rng: random.Random) -> str:
        a, b = self.premise, self.conclusion
        b_one, b_all = b.with_article(), (b.name if b.adjective else b.plural)
        if self.negated:
            templates = [
                f"No {a.name} is {b_one}",
                f"{a.plural.capitalize()} are not {b_all}",
                f"Every {a.name} is not {b_one}",
                f"If something is {a.with_article()}, then it is not {b_one}",
            ]
        else:
            templates = [
                f"Every {a.name} is {b_one}",
                f"{a.plural.capitalize()} are {b_all}",
                f"Each {a.name} is {b_one}",
                f"All {a.plural} are {b_all}",
                f"If something is {a.with_article()}, then it is {b_one}",
            ]
        return rng.choice(templates)


def _reachable_rules(facts: list[_Fact], rules: list[_Rule], entity: str) -> list[_Rule]:
    """The rules that fire for `entity`, in the order forward chaining reaches them."""
    derived = {f.concept for f in facts if f.entity == entity and not f.negated}
    fired: list[_Rule] = []
    frontier = True
    while frontier:
        frontier = False
        for rule in rules:
            if rule not in fired and rule.premise in derived:
                fired.append(rule)
                if not rule.negated and rule.conclusion not in derived:
                    derived.add(rule.conclusion)
                    frontier = True
    return fired


# ---------------------------------------------------------------------------------------------
# Problem construction


class _Builder:
    """One generated problem: the entity's chain of rules, the label's twist, then distractors."""

    def __init__(self, rng: random.Random, hops: int, label: str, distractors: int, fictional: bool):
        self.rng = rng
        self.hops = hops
        self.label = label
        self.fictional = fictional
        self.nouns = [_noun(n) for n in _FICTIONAL_NOUNS]
        self.adjectives = [_Concept(a, a, adjective=True) for a in _ADJECTIVES]
        self.names = list(_NAMES)
        for pool in (self.nouns, self.adjectives, self.names):
            rng.shuffle(pool)
        self.entity = self.names.pop()
        self.facts: list[_Fact] = []
        self.rules: list[_Rule] = []
        self.path: list[_Rule] = []
        if fictional:
            self._fictional_chain()
        else:
            self._real_chain()
        for _ in range(distractors):
            self._fictional_distractor() if fictional else self._real_distractor()

    # the entity's chain ------------------------------------------------------------------
    def _fictional_chain(self) -> None:
        rng, h = self.rng, self.hops
        chain = [self.nouns.pop() for _ in range(h)]
        last = self.adjectives.pop() if rng.random() < 0.3 else self.nouns.pop()
        chain.append(last)
        last_negated = rng.random() < 0.4
        self.facts.append(_Fact(self.entity, chain[0]))
        self.path = [_Rule(chain[i], chain[i + 1]) for i in range(h - 1)]
        self.path.append(_Rule(chain[h - 1], last, last_negated))
        self.rules.extend(self.path)
        # Concepts the entity provably is; distractors hang rules off these.
        self.held = chain[:h] if last_negated else chain
        if self.label != UNKNOWN:
            self.query = _Fact(self.entity, last, last_negated != (self.label == FALSE))
            return
        variants = ["converse", "other_entity"] + (["denied"] if last_negated and not last.adjective else [])
        variant = rng.choice(variants)
        target = self.adjectives.pop() if rng.random() < 0.3 else self.nouns.pop()
        if variant == "converse":  # every target is a c_k; the entity is a c_k (affirming the consequent)
            target = self.nouns.pop() if target.adjective else target
            self.rules.append(_Rule(target, rng.choice(self.held)))
        elif variant == "denied":  # every c_h is a target; the entity is not a c_h
            self.rules.append(_Rule(last, target, rng.random() < 0.3))
        else:  # another entity is something that is the target
            source = self.nouns.pop()
            self.facts.append(_Fact(self.names.pop(), source))
            self.rules.append(_Rule(source, target, rng.random() < 0.3))
        self.query = _Fact(self.entity, target, rng.random() < 0.4)

    def _real_chain(self) -> None:
        rng, h = self.rng, self.hops
        unknown = self.label == UNKNOWN
        # The unknown twist asks about a subclass of the entity's class, so it needs one.
        starts = sorted(c for c in _PARENT if len(_ancestors(c)) >= h and (not unknown or c in _CHILDREN))
        start = rng.choice(starts)
        names = [start] + _ancestors(start)
        last_negated = rng.random() < 0.4
        if last_negated:  # c_{h-1} and a sibling of it are disjoint
            sibling = rng.choice([c for c in _CHILDREN[names[h]] if c != names[h - 1]])
            names = names[:h] + [sibling]
        chain = [_real(n) for n in names[: h + 1]]
        self.facts.append(_Fact(self.entity, chain[0]))
        self.path = [_Rule(chain[i], chain[i + 1], last_negated and i == h - 1) for i in range(h)]
        self.rules.extend(self.path)
        self.held = chain[:h] if last_negated else chain
        if not unknown:
            self.query = _Fact(self.entity, chain[h], last_negated != (self.label == FALSE))
            return
        target = _real(rng.choice(_CHILDREN[start]))
        if rng.random() < 0.5:  # every target is a start; the entity is a start
            self.rules.append(_Rule(target, chain[0]))
        else:  # another entity is a target
            self.facts.append(_Fact(self.names.pop(), target))
        self.query = _Fact(self.entity, target, rng.random() < 0.4)

    # distractors ---------------------------------------------------------------------------
    def _fresh(self, adjective_chance: float = 0.3) -> _Concept:
        return self.adjectives.pop() if self.rng.random() < adjective_chance else self.nouns.pop()

    def _fictional_distractor(self) -> None:
        # Every distractor mentions at least one unused concept, so it can neither contradict
        # the problem nor settle an Unknown question.
        rng = self.rng
        kind = rng.choice(["branch", "loose_rule", "into_chain", "other_entity", "entity_fact"])
        premises = [c for c in self.held if not c.adjective]
        if kind == "branch" and premises:
            self.rules.append(_Rule(rng.choice(premises), self._fresh(), rng.random() < 0.4))
        elif kind == "loose_rule":
            self.rules.append(_Rule(self.nouns.pop(), self._fresh(), rng.random() < 0.3))
        elif kind == "into_chain":
            self.rules.append(_Rule(self.nouns.pop(), rng.choice(self.held)))
        elif kind == "other_entity" and rng.random() < 0.5:
            self.facts.append(_Fact(self.names.pop(), rng.choice(premises or self.held)))
        elif kind == "entity_fact":
            self.facts.append(_Fact(self.entity, self._fresh(), rng.random() < 0.3))
        else:
            self.facts.append(_Fact(self.names.pop(), self._fresh(), rng.random() < 0.3))

    def _real_distractor(self) -> None:
        # Every real distractor is true of the taxonomy, so the premises stay consistent, and
        # none can decide whether the entity belongs to a subclass of its own class.
        rng = self.rng
        kind = rng.choice(["parent_rule", "disjoint_rule", "other_entity", "entity_fact"])
        child = rng.choice(sorted(_PARENT))
        if kind == "parent_rule":
            rule = _Rule(_real(child), _real(_PARENT[child]))
        elif kind == "disjoint_rule":
            sibling = rng.choice([c for c in _CHILDREN[_PARENT[child]] if c != child])
            rule = _Rule(_real(child), _real(sibling), negated=True)
        else:
            if kind == "entity_fact":  # not a sibling of one of its known classes
                known = rng.choice([c for c in self.held if c.name in _PARENT])
                sibling = rng.choice([c for c in _CHILDREN[_PARENT[known.name]] if c != known.name])
                fact = _Fact(self.entity, _real(sibling), negated=True)
            else:
                fact = _Fact(self.names.pop(), _real(child))
            if fact.concept.name == self.query.concept.name:
                return  # rare: would settle the question or restate it; a missing distractor is fine
            self.facts.append(fact)
            return
        if rule not in self.rules:
            self.rules.append(rule)

    # output ----------------------------------------------------------------------------------
    def problem(self, problem_id: str, chain: str = "reasoning") -> Problem:
        rng = self.rng
        statements: list[_Fact | _Rule] = [*self.facts, *self.rules]
        sentences = [f.text() for f in self.facts] + [r.text(rng) for r in self.rules]
        order = list(range(len(sentences)))
        rng.shuffle(order)  # the same permutation a shuffle of the sentences themselves would make
        question = ". ".join(sentences[i] for i in order) + f".\n{QUESTION_PREFIX} {self.query.text()}."
        if chain == "text":  # every statement, in the order the question states it
            steps = [statements[i] for i in order]
        elif self.label == UNKNOWN:
            facts = [f for f in self.facts if f.entity == self.entity]
            steps = facts + _reachable_rules(facts, self.rules, self.entity)
        else:
            steps = [self.facts[0]] + self.path
        chain = [s.call() for s in steps] + [self.query.call("query")]
        return Problem(
            id=problem_id,
            task="fol",
            question=question,
            answer=self.label,
            gold_chain=chain,
            meta={
                "hops": self.hops,
                "label": self.label,
                "source": "generated",
                "premises_fol": [s.formula() for s in self.facts + self.rules],
                "conclusion_fol": self.query.formula(),
            },
        )


# ---------------------------------------------------------------------------------------------
# The task


class FolTask(Task):
    """First-order logic problems answered True / False / Unknown with a z3-backed knowledge base."""

    name = "fol"

    @property
    def instructions(self) -> str:  # type: ignore[override]
        """The task's guidance, naming only the functions the task offers."""
        offered = set(self.function_names or [f.__name__ for f in _make_functions(KnowledgeBase())])
        record = []
        if {"add_fact", "add_rule"} <= offered:
            record.append("each fact with add_fact and each rule with add_rule")
        if "add_premise" in offered:
            record.append("each sentence as a formula with add_premise")
        ask = [f for f in ("query", "prove") if f in offered]
        how = ""
        if record and ask:
            alternative = f" (or {record[1]})" if len(record) > 1 else ""
            asking = ask[0] + (f" (or {ask[1]})" if len(ask) > 1 else "")
            how = f"Record {record[0]}{alternative}, then ask with {asking}. "
        return (
            "Decide whether the statement after \"True, false, or unknown:\" follows from the facts and "
            f"rules given. {how}Answer True if the statement follows, False if its opposite follows, "
            "and Unknown if neither does."
        )

    def vocabulary(self) -> list[str]:
        """The generator's names, concepts (also capitalised, as a sentence may start with them) and adjectives."""
        nouns = _FICTIONAL_NOUNS + sorted(_PARENT.keys() | set(_PARENT.values()))
        return [*_NAMES, *nouns, *(n.capitalize() for n in nouns), *_ADJECTIVES]

    def __init__(self, prover_timeout_ms: int = PROVER_TIMEOUT_MS) -> None:
        self.prover_timeout_ms = prover_timeout_ms

    def functions(self, problem: Problem | None = None) -> "FunctionSet":
        """A fresh function set over an empty knowledge base (one per chain).

        With `echo_next` and a `problem`, each successful add_fact / add_rule / add_premise answers
        "ok. Next: <statement>" with the question's next statement (`statements_of`), the question
        line once every statement is recorded; otherwise it answers "ok"."""
        from fcdpo.functions import FunctionSet  # imported here: describing a problem needs no engine

        kb = KnowledgeBase(timeout_ms=self.prover_timeout_ms)
        limit = max(CALL_TIME_LIMIT_S, 2 * self.prover_timeout_ms / 1000)
        statements = statements_of(problem.question) if self.echo_next and problem is not None else None
        return FunctionSet(self.offered(list(_make_functions(kb, statements))), time_limit=limit)

    def user_message(self, problem: Problem) -> str:
        """The question; with `echo_next`, followed by a line that hands out its first statement."""
        statements = statements_of(problem.question) if self.echo_next else []
        return f"{problem.question}\nNext: {statements[0]}" if statements else problem.question

    def generate(
        self,
        n: int,
        seed: int = 0,
        *,
        min_hops: int = 1,
        max_hops: int = 3,
        distractors: int = 2,
        fictional: bool = True,
        chain: str = "reasoning",
    ) -> list[Problem]:
        """`n` ProntoQA-style problems with labels True / False / Unknown in about equal shares.

        Each problem states facts and rules about named entities and asks about one of them.
        `hops` (drawn from min_hops..max_hops, at most 5) is the number of rules the answer
        chains through. `distractors` (0 to 6) extra facts and rules do not bear on the answer
        (with real concepts, one that would repeat a statement is dropped, so a few have fewer).
        `fictional` picks made-up concepts (wumpus, yumpus, ...) over a real taxonomy (cat,
        feline, carnivore, ...). Problem `i` depends only on the seed, `i` and the settings, so a
        longer list extends a shorter one; ids are `fol-<seed>-<i>`.

        `chain` picks the gold chain: "reasoning" records the entity's facts and the rules the
        answer chains through, in that order, then queries; "text" records every statement in the
        order the question states it (a sentence-by-sentence translation, as for FOLIO), then
        queries. The questions are the same either way.
        """
        if chain not in ("reasoning", "text"):
            raise ValueError(f"chain must be 'reasoning' or 'text', got {chain!r}")
        if not 1 <= min_hops <= max_hops <= MAX_HOPS:
            raise ValueError(f"need 1 <= min_hops <= max_hops <= {MAX_HOPS}, got {min_hops} and {max_hops}")
        if not 0 <= distractors <= 6:
            raise ValueError(f"distractors must be between 0 and 6, got {distractors}")
        if n < 0:
            raise ValueError(f"n must not be negative, got {n}")
        problems = []
        for i in range(n):
            rng = random.Random(f"fol-{seed}-{i}-{min_hops}-{max_hops}-{distractors}-{fictional}")
            hops = rng.randint(min_hops, max_hops)
            label = rng.choice(LABELS)
            builder = _Builder(rng, hops, label, distractors, fictional)
            problems.append(builder.problem(f"fol-{seed}-{i}", chain))
        return problems

    def check(self, predicted: str | None, gold: str) -> bool:
        """Whether the last of True / False / Unknown (or Uncertain) named in `predicted` is the
        gold label, case-insensitively: "Final answer: true" and "The statement is false." count.
        None and error observations ("Error: ...") never match."""
        if predicted is None or predicted.lstrip().startswith("Error:"):
            return False
        guess, label = _label_in(predicted), _label_in(gold)
        return guess is not None and guess == label

    def result_answer(self, observation: str) -> str | None:
        """A proof's verdict (`query`'s "True", "False" or "Unknown"); other results ("ok.", "ok. Next:
        ...", errors) are not answers."""
        text = observation.strip()
        return text if text in LABELS else None

    def load(self, path: str | Path, limit: int | None = None, *, strict: bool = False) -> list[Problem]:
        """FOLIO problems from its official JSONL (`premises`, `premises-FOL`, `conclusion`,
        `conclusion-FOL`, `label`; premises as a newline-separated string or a list).

        The gold chain adds each FOL premise and proves the FOL conclusion. Records whose
        formulas the prover cannot read are skipped with a logged warning naming the file, line,
        premise, formula and position (`strict=True` raises instead). Note that some FOLIO
        annotations do not entail their own label, so a gold chain may end in another label than
        the answer. A line that is not a FOLIO record raises ValueError naming the file and line.
        For every row of a file, with unreadable ones counted, see `read_folio`.
        """
        loaded = read_folio(path, strict=True)
        problems: list[Problem] = []
        for problem, row in zip(loaded.problems, loaded.problem_rows):
            if limit is not None and len(problems) >= limit:
                break
            error = problem.meta.get("gold_chain_error")
            if error is not None:
                if strict:
                    raise ValueError(f"{path}:{row}: {error}")
                logger.warning("%s:%s: skipped, its formulas cannot be read (%s)", path, row, error)
                continue
            problems.append(problem)
        return problems


def _label_in(text: str) -> str | None:
    words = _LABEL_WORD.findall(text)
    if not words:
        return None
    word = words[-1].lower()
    return UNKNOWN if word in ("unknown", "uncertain") else word.capitalize()


def _lines(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        items = value.split("\n")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise ValueError(f"{key!r} must be a string or a list of strings")
    items = [v.strip() for v in items if v.strip()]
    if not items:
        raise ValueError(f"{key!r} is empty")
    _check_length(key, sum(len(v) for v in items))
    return items


def _check_length(key: str, chars: int) -> None:
    """A field's text is bounded as every benchmark text field is (`MAX_TEXT_CHARS`)."""
    if chars > MAX_TEXT_CHARS:
        raise ValueError(f"{key!r} is {chars} characters long; the limit is {MAX_TEXT_CHARS}")


def folio_record(record: Any, number: int, *, max_premises: int = MAX_FOLIO_PREMISES) -> Problem:
    """One official FOLIO record as a Problem, its formulas not yet read (see `folio_formula_error`).

    Raises:
        KeyError, TypeError, ValueError: the record is not a FOLIO record (a key is missing, a
            field has the wrong type, more than `max_premises` premises) or its label is not True,
            False or Uncertain.
    """
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    premises = _lines(record["premises"], "premises")
    premises_fol = _lines(record["premises-FOL"], "premises-FOL")
    for key, items in (("premises", premises), ("premises-FOL", premises_fol)):
        if len(items) > max_premises:
            raise ValueError(f"{key!r} has {len(items)} entries; the limit is {max_premises}")
    conclusion, conclusion_fol, label = record["conclusion"], record["conclusion-FOL"], record["label"]
    for key, value in (("conclusion", conclusion), ("conclusion-FOL", conclusion_fol), ("label", label)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{key!r} must be a non-empty string")
        _check_length(key, len(value))
    answer = label_of(label)
    if answer is None:
        raise ValueError(f"label {label!r} is not True, False or Uncertain")
    example_id = record.get("example_id", record.get("id"))
    if not isinstance(example_id, (int, str)) or isinstance(example_id, bool):
        example_id = None
    question = "\n".join(premises) + f"\n{QUESTION_PREFIX} {conclusion.strip()}"
    chain = [{"name": "add_premise", "arguments": {"formula": p}} for p in premises_fol]
    chain.append({"name": "prove", "arguments": {"conclusion": conclusion_fol.strip()}})
    return Problem(
        id=f"folio-{example_id if example_id is not None else number}",
        task="fol",
        question=question,
        answer=answer,
        gold_chain=chain,
        meta={
            "hops": None,
            "label": answer,
            "source": "folio",
            "premises_fol": premises_fol,
            "conclusion_fol": conclusion_fol.strip(),
        },
    )


def folio_formula_error(problem: Problem) -> str | None:
    """Why a FOLIO problem's gold formulas cannot be read, or None when they all can.

    The message names the premise (1-based, of how many) or the conclusion, the formula and the
    position in it, e.g. `premise 2 of 3 'Tall(x' : 1 unclosed '(' (position 6)`. All formulas are
    read against one signature, as the gold chain will add them.
    """
    premises = problem.meta.get("premises_fol") or []
    kb = KnowledgeBase()
    for index, formula in enumerate(premises, 1):
        try:
            kb.add(formula)
        except FormulaError as exc:
            return f"premise {index} of {len(premises)} {formula!r}: {exc}"
    conclusion = problem.meta.get("conclusion_fol", "")
    try:
        kb.parse(conclusion)
    except FormulaError as exc:
        return f"conclusion {conclusion!r}: {exc}"
    return None


def label_of(text: Any) -> str | None:
    """True / False / Unknown for a benchmark label (`True`, `false`, `Uncertain`, `Unknown`), else None."""
    if not isinstance(text, str):
        return None
    return {"true": TRUE, "false": FALSE, "uncertain": UNKNOWN, "unknown": UNKNOWN}.get(text.strip().lower())


def folio_maker(origin: str = "FOLIO") -> Callable[[Any, int, int], Problem]:
    """What `collect` makes of one FOLIO row: its problem, or a BadRow. `origin` (the file, or the
    hub split) names the row in warnings."""

    def make(record: Any, line: int, index: int) -> Problem:
        if isinstance(record, dict) and "label" in record and isinstance(record["label"], str):
            if label_of(record["label"]) is None:
                raise BadRow(f"label {record['label']!r} is not True, False or Uncertain", kind="gold")
        problem = folio_record(record, line, max_premises=min(MAX_FOLIO_PREMISES, MAX_LIST_ITEMS))
        error = folio_formula_error(problem)
        if error is not None:
            logger.warning("%s:%s: the gold formulas cannot be read: %s", origin, line, error)
            problem.meta["gold_chain_error"] = error
            problem.gold_chain = []
        return problem

    return make


def read_folio(path: str | Path, *, strict: bool = False, limit: int | None = None) -> Loaded:
    """FOLIO rows from an official jsonl file (`premises`, `premises-FOL`, `conclusion`,
    `conclusion-FOL`, `label`).

    A record whose label is not True / False / Uncertain has no readable gold answer (rejected,
    kind "gold"). A record whose formulas the prover cannot read is kept, graded by its label, with
    an empty gold chain and `meta["gold_chain_error"]` naming the premise or conclusion, the formula
    and the position; it is listed in `notes` with its line."""
    path = Path(path)
    loaded = collect("folio", str(path), jsonl_rows(path, "FOLIO"), folio_maker(str(path)), strict, limit)
    for note in loaded.notes:
        note.reason = f"{path}:{note.line}: {note.reason}"
    return loaded
