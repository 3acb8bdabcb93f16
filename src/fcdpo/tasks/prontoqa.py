"""ProntoQA's sentences as the structured FOL calls: a gold chain for a real ProntoQA problem.

Layer: functions and tasks; imports nothing of fcdpo.

ProntoQA (and the generator in `fcdpo.tasks.fol`) writes a handful of sentence forms:

    Max is a yumpus.                       add_fact(entity="Max", concept="yumpus")
    Max is not sour.                       add_fact(entity="Max", concept="sour", negated=True)
    Every yumpus is a dumpus. / Each ...   add_rule(premise="yumpus", conclusion="dumpus")
    Jompuses are not shy. / All ... are    add_rule(premise="jompuses", conclusion="shy", negated=True)
    No tumpus is sour.                     add_rule(premise="tumpus", conclusion="sour", negated=True)
    If something is a wumpus, then it is red.

Plural concepts are passed as written: `fcdpo.tasks.fol.concept_predicate` makes "jompuses" and
"jompus" one predicate. A sentence of any other form is a ValueError naming it, so a chain is
either complete or absent, never silently partial.
"""

from __future__ import annotations

import re
from typing import Any

MAX_SENTENCES = 200

_NEG = r"(?P<neg>not\s+)?"
_FORMS: list[tuple[str, re.Pattern[str]]] = [
    ("rule", re.compile(rf"^if\s+something\s+is\s+(?P<a>.+?),?\s+then\s+it\s+is\s+{_NEG}(?P<b>.+)$", re.I)),
    ("no", re.compile(r"^no\s+(?P<a>.+?)\s+(?:is|are)\s+(?P<b>.+)$", re.I)),
    ("rule", re.compile(rf"^(?:every|each)\s+(?P<a>.+?)\s+is\s+{_NEG}(?P<b>.+)$", re.I)),
    ("rule", re.compile(rf"^(?:all\s+)?(?P<a>[a-z][a-z ]*?)\s+are\s+{_NEG}(?P<b>.+)$", re.I)),
    ("fact", re.compile(rf"^(?P<e>[A-Z][A-Za-z]*)\s+is\s+{_NEG}(?P<b>.+)$")),
]
_COMPOUND = re.compile(r"\b(?:and|or|but)\b", re.I)


def sentences(text: str) -> list[str]:
    """The sentences of a context, split at full stops (ProntoQA has no abbreviations)."""
    return [s.strip() for s in re.split(r"[.\n]+", text) if s.strip()]


def _concept(text: str, sentence: str) -> str:
    text = text.strip()
    if _COMPOUND.search(text):
        raise ValueError(f"compound concept {text!r} in {sentence!r}")
    return text


def read_sentence(sentence: str) -> dict[str, Any]:
    """The call a ProntoQA sentence states (`add_fact` or `add_rule`).

    Raises:
        ValueError: the sentence is none of the forms above.
    """
    for kind, pattern in _FORMS:
        match = pattern.match(sentence.strip().rstrip("."))
        if not match:
            continue
        groups = match.groupdict()
        negated = kind == "no" or bool(groups.get("neg"))
        if kind == "fact":
            arguments: dict[str, Any] = {"entity": groups["e"], "concept": _concept(groups["b"], sentence)}
            name = "add_fact"
        else:
            arguments = {"premise": _concept(groups["a"], sentence), "conclusion": _concept(groups["b"], sentence)}
            name = "add_rule"
        if negated:
            arguments["negated"] = True
        return {"name": name, "arguments": arguments}
    raise ValueError(f"no call for the sentence {sentence!r}")


def gold_chain(context: str, statement: str) -> list[dict[str, Any]]:
    """Calls that record every sentence of `context`, then `query` the statement.

    Raises:
        ValueError: a sentence (or the statement) is of no known form, or there are more than
            `MAX_SENTENCES` sentences.
    """
    found = sentences(context)
    if len(found) > MAX_SENTENCES:
        raise ValueError(f"{len(found)} sentences; the limit is {MAX_SENTENCES}")
    chain = [read_sentence(s) for s in found]
    query = read_sentence(statement)
    if query["name"] != "add_fact":
        raise ValueError(f"the statement {statement!r} is not about one entity")
    return chain + [{"name": "query", "arguments": query["arguments"]}]
