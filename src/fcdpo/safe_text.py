"""Text that came from a model or a server, made safe to store and to send.

Layer: settings and formats; imports nothing of fcdpo.

Python strings may hold lone surrogates (U+D800..U+DFFF), which JSON text can spell (`"\\ud800"`)
but UTF-8 cannot encode: one such character in a chain makes the chain impossible to write to a
JSONL file or to send to an HTTP endpoint. `scrub` replaces each with U+FFFD, the replacement
character, wherever text crosses into this program.
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (the same object when there is none)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub(REPLACEMENT, text)
    return text


def scrub(value: Any) -> Any:
    """`value` with `scrub_text` applied to every string in it, keys included (lists, tuples, dicts).

    Values without a lone surrogate are returned as they are, not copied.
    """
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        items = [(scrub(k), scrub(v)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items())):
            return value
        return dict(items)
    if isinstance(value, (list, tuple)):
        items = [scrub(v) for v in value]
        if all(v is v0 for v, v0 in zip(items, value)):
            return value
        return type(value)(items)
    return value
