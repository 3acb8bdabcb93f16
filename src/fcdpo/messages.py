"""Chat messages as datasets store them: Arrow-safe rows, and the agent's messages back from them.

Layer: settings and formats; imports nothing of fcdpo.

A chain's messages are standard chat messages (`role`, `content`, optional `name` and `tool_calls`).
Arrow stores a list of dicts as one struct type shared by every row, so tool-call `arguments` would gain
the keys of every other function's arguments (as nulls). They are therefore stored as JSON strings, and
messages lose the keys they do not have (`arrow_safe`); `restore_messages` gives back the agent's
messages exactly (arguments as dicts), which is what a chat template expects. Preference pairs, GLPFT
rows and the tiny lab's training rows are all stored so.
"""

from __future__ import annotations

import json
from typing import Any

MESSAGE_KEYS = ("role", "content", "name", "tool_calls")


class MessageError(ValueError):
    """A message that cannot be stored as it is; the message says which key and why."""


def arrow_safe(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as stored: tool-call arguments as JSON strings, only the keys in MESSAGE_KEYS.

    Raises MessageError for a message with any other key, so nothing is silently lost.
    """
    safe = []
    for position, message in enumerate(messages):
        unknown = sorted(set(message) - set(MESSAGE_KEYS))
        if unknown:
            raise MessageError(f"message {position} ({message.get('role')}) has unknown key(s) {unknown}; "
                               f"a stored message may only have {list(MESSAGE_KEYS)}")
        row: dict[str, Any] = {"role": message["role"], "content": message.get("content") or ""}
        if message.get("name") is not None:
            row["name"] = message["name"]
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = call.get("function", call)
                arguments = function.get("arguments", {})
                calls.append({
                    "type": call.get("type", "function"),
                    "function": {
                        "name": function["name"],
                        "arguments": arguments if isinstance(arguments, str)
                        else json.dumps(arguments, ensure_ascii=False),
                    },
                })
            row["tool_calls"] = calls
        safe.append(row)
    return safe


def restore_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored messages back in the agent's form: no null keys, tool-call arguments as dicts."""
    restored = []
    for message in messages:
        row = {key: value for key, value in message.items() if value is not None}
        if row.get("tool_calls"):
            calls = []
            for call in row["tool_calls"]:
                function = dict(call["function"])
                if isinstance(function.get("arguments"), str):
                    function["arguments"] = json.loads(function["arguments"])
                calls.append({"type": call.get("type") or "function", "function": function})
            row["tool_calls"] = calls
        else:
            row.pop("tool_calls", None)
        restored.append(row)
    return restored


def restore_tools(tools: str | list | None) -> list[dict[str, Any]] | None:
    """The `tools` column as the chat template takes it: a list of schemas, or None."""
    return json.loads(tools) if isinstance(tools, str) else tools
