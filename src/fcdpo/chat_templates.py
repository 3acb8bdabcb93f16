"""Chat templates that fcdpo can train with, and a check that names the fix for one it cannot.

Layer: settings and formats; imports nothing of fcdpo.

Training needs two things of a student's chat template (`fcdpo.finetuning.assistant_tokens`):

- it renders every turn fcdpo writes: system, user, assistant (text or native `tool_calls`) and
  `tool` results, with `tools`;
- its history is stable: the prompt rendered with the generation prompt is a prefix of the prompt
  and the next turn, and a conversation's rendering is a prefix of its continuation's. Otherwise the
  tokens the model is trained on are not the tokens it saw when it wrote them.

Two families' own templates fail one of these:

- Mistral-7B-Instruct-v0.2 raises on `tool` messages (its roles must alternate user / assistant).
  `mistral-tools` (`templates/mistral-tools.jinja`) shows a tool result as an instruction turn.
- Qwen3 gives the last assistant turn a think block (`<think>\\n\\n</think>\\n\\n`) and drops it once a
  later turn exists, so its history is not stable. `qwen3-tools` is Qwen3's non-thinking format
  (the one `enable_thinking=False` gives) with the empty think block on every assistant turn, outside
  the `{% generation %}` markers: it is in the prompt the model continues, never in what it is trained
  to write.

`template_fault` finds these problems by rendering a short conversation, and `check_chat_template`
turns one into an error that says which template to set.

The templates fcdpo writes (these two and the tiny lab's) are `.jinja` files in `templates/`, one tag
per line, sharing `tool_call.jinja` (`packaged_template`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(__file__).parent / "templates"  # the .jinja files of the templates fcdpo writes
_INCLUDE = "{%- include 'tool_call.jinja' %}"  # chat templates run without a loader: spliced in here


def packaged_template(name: str) -> str:
    """The template `templates/<name>.jinja`, with `tool_call.jinja` (one tool call of an assistant turn
    as a `<tool_call>` block of JSON, shared by every template fcdpo writes) spliced in where included.

    Each tag opens with `{%-` or `{{-`, so the line breaks between tags render as nothing.
    """
    text = (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")
    return text.replace(_INCLUDE, (TEMPLATE_DIR / "tool_call.jinja").read_text(encoding="utf-8").strip())


# Qwen3's template for tool chats, with thinking off, keeping each earlier turn's empty think block.
QWEN3_TOOLS_TEMPLATE = packaged_template("qwen3-tools")
# Mistral-7B-Instruct-v0.2's format ([INST] … [/INST] answer</s>) extended to tool turns, which its own
# template refuses: a tool result is shown as an instruction turn `Result: <content>`, and each
# assistant turn (with its leading space and </s>) is marked for assistant-only masks.
MISTRAL_TOOLS_TEMPLATE = packaged_template("mistral-tools")
# Replacements for templates that cannot be trained with as they are (see the module docstring).
CHAT_TEMPLATES = {"mistral-tools": MISTRAL_TOOLS_TEMPLATE, "qwen3-tools": QWEN3_TOOLS_TEMPLATE}


# A conversation with every kind of turn fcdpo writes (python-syntax calls as text, tool results).
PROBE = [
    {"role": "system", "content": "You solve problems by calling functions."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "add(a=2, b=3)"},
    {"role": "tool", "content": "5"},
    {"role": "assistant", "content": "Final answer: 5"},
]


class ChatTemplateError(ValueError):
    """A chat template that fcdpo cannot train with; the message says what to set instead."""


def replacement_for(template: str | None) -> str | None:
    """The named template to use instead of `template`, for the families known to need one."""
    if not isinstance(template, str):
        return None
    if "<think>" in template and "<|im_start|>" in template:
        return "qwen3-tools"
    if "[INST]" in template:
        return "mistral-tools"
    return None


def template_fault(tokenizer: Any, messages: list[dict[str, Any]] | None = None,
                   tools: list[dict[str, Any]] | None = None, history: bool = True) -> str | None:
    """Why the tokenizer's chat template cannot be trained with on `messages` (default: `PROBE`), or None.

    Checks that the conversation renders and, with `history`, that each assistant turn's prompt
    (rendered with the generation prompt) begins the rendering through that turn, and that the
    rendering through each turn begins the whole conversation's. Generation alone needs only the
    first (`history=False`).
    """
    template = tokenizer.chat_template
    if template is None:
        return "it has no chat template"
    messages = messages or PROBE

    def render(part: list[dict[str, Any]], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(part, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)

    try:
        whole = render(messages)
    except Exception as exc:  # noqa: BLE001 - jinja raises its own error types, and templates raise_exception
        return f"its chat template cannot render tool turns ({type(exc).__name__}: {exc})"
    if not history:
        return None
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(messages[:index], True), render(messages[: index + 1])
        if not through.startswith(before):
            return (f"its prompt for the assistant turn at message {index} is not a prefix of the rendering "
                    "through that turn")
        if not whole.startswith(through):
            return (f"its history is not stable: the assistant turn at message {index} renders differently "
                    "once later turns follow it")
    return None


def check_chat_template(tokenizer: Any, where: str, setting: str = "chat_template", history: bool = True) -> None:
    """Raise ChatTemplateError naming the template to set when the tokenizer's cannot be used.

    `where` names the model in the message and `setting` the profile key that picks a template;
    `history=False` checks only what generation needs (see `template_fault`).
    """
    fault = template_fault(tokenizer, history=history)
    if fault is None:
        return
    template = tokenizer.chat_template
    replacement = replacement_for(template if isinstance(template, str) else None)
    fix = (f"set {setting}: {replacement}" if replacement else
           f"set {setting} to a .jinja template with {{% generation %}} markers that renders tool turns")
    raise ChatTemplateError(f"the chat template of {where!r} cannot be used: {fault}; {fix}")


def named_chat_template(name_or_path: str) -> str:
    """A chat template by name (`CHAT_TEMPLATES`) or from a `.jinja` file."""
    if name_or_path in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[name_or_path]
    path = Path(name_or_path)
    if path.suffix == ".jinja" and path.is_file():
        return path.read_text()
    raise ChatTemplateError(f"chat template {name_or_path!r} is neither a name in {sorted(CHAT_TEMPLATES)} "
                            "nor an existing .jinja file")
