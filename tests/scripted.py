"""A scripted test-double model: it answers each chat with the next turn of that problem's script."""

from __future__ import annotations

from fcdpo.backends import Completion


class ScriptedBackend:
    """Replies from `scripts[question]`, one entry per model turn of that chain.

    An entry is either text or a list of native tool calls (dicts). `calls` records the batch size
    of every `complete` call, so tests can check that chains advance together.
    """

    name = "scripted"

    def __init__(self, scripts: dict[str, list]):
        self.scripts = scripts
        self.calls: list[int] = []

    def complete(self, chats, *, tools=None, max_new_tokens=128, temperature=0.0, seed=None):
        self.calls.append(len(chats))
        replies = []
        for chat in chats:
            question = chat[1]["content"]
            turn = sum(1 for m in chat if m["role"] == "assistant")
            script = self.scripts[question]
            entry = script[min(turn, len(script) - 1)]
            if isinstance(entry, list):
                replies.append(Completion("", entry, prompt_tokens=10, completion_tokens=5, finish_reason="stop"))
            else:
                replies.append(Completion(entry, None, prompt_tokens=10, completion_tokens=len(entry.split()) + 1,
                                          finish_reason="stop"))
        return replies
