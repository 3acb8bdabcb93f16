"""The multi-LLM agent's role data: single-agent chains as planner, caller and summarizer turns.

Layer: agents; imports `fcdpo.multi_agent`, `fcdpo.agent` and the functions.

    chain = role_chain(trajectory, task)      # a correct, clean single-agent chain as role turns, or None
    samples = role_samples(chain, task)       # per role, TRL prompt-completion rows: GLPFT's data
    gold = gold_role_messages(problem, task)  # a problem's gold chain as role turns (step metrics)

Planner thoughts are templated (`call_thought`, `CONCLUSION_THOUGHT`): a single agent's chain holds
no planner, so every converted chain reads the same way, as `fcdpo.multi_agent` documents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fcdpo.agent import FINAL_ANSWER, Trajectory, assistant_message, gold_messages
from fcdpo.functions import ParseError
from fcdpo.multi_agent import (
    ROLES,
    backbone_prompt,
    call_thought,
    conclusion_thought,
    read_call,
    role_prompt,
    role_turn,
    role_view,
)

if TYPE_CHECKING:
    from fcdpo.tasks import Problem, Task


def _chain_syntax(messages: list[dict[str, Any]]) -> str:
    return "json" if any(m.get("tool_calls") for m in messages) else "python"


def role_messages(
    task: "Task", question: str, steps: list[tuple[dict[str, Any], dict[str, Any]]], answer_turn: str,
    syntax: str = "python", carry_results: bool = False,
) -> list[dict[str, Any]]:
    """A multi-agent chain from solved steps: for each (call message, tool message) a planner turn
    `call_thought(name)`, the caller's turn and the observation; then `conclusion_thought()` and the
    summarizer's `answer_turn`. With `carry_results` each planner turn after the first observation
    restates it (`MultiAgentConfig.carry_results`)."""
    messages = [{"role": "system", "content": backbone_prompt(task, syntax)}, {"role": "user", "content": question}]
    result: str | None = None
    for call_message, observation in steps:
        messages.append(role_turn("planner", call_thought(observation["name"], result)))
        messages.append({**call_message, "name": "caller"})
        messages.append(dict(observation))
        if carry_results:
            result = (observation.get("content") or "").strip()
    messages.append(role_turn("planner", conclusion_thought(result)))
    messages.append(role_turn("summarizer", answer_turn))
    return messages


def role_chain(trajectory: Trajectory, task: "Task", carry_results: bool = False) -> list[dict[str, Any]] | None:
    """A correct single-agent chain as a multi-agent chain with templated planner thoughts, or None.

    Only clean chains convert: correct, and every assistant turn either one call whose observation is
    not an error, or the final answer last. Chains with thoughts, parse errors, error observations or
    several calls in one turn give None (they would need planner thoughts that say why, which the
    chain does not hold). The answer turn is kept as written.
    """
    if not trajectory.correct:
        return None
    messages = trajectory.messages
    body = messages[2:]
    if len(messages) < 3 or messages[1].get("role") != "user" or len(body) % 2 != 1:
        return None
    *pairs, last = body
    if last.get("role") != "assistant" or not FINAL_ANSWER.search(last.get("content") or ""):
        return None
    steps = []
    functions = task.functions()
    syntax = _chain_syntax(messages)
    for call_message, observation in zip(pairs[0::2], pairs[1::2]):
        if call_message.get("role") != "assistant" or observation.get("role") != "tool":
            return None
        if (observation.get("content") or "").startswith("Error"):
            return None
        try:
            call = read_call(call_message.get("content") or "", call_message.get("tool_calls"), functions, syntax)
        except ParseError:
            return None
        if call.name != observation.get("name") or call.name not in functions:
            return None
        steps.append((assistant_message(call, syntax), observation))
    return role_messages(task, messages[1]["content"], steps, last["content"].strip(), syntax, carry_results)


def gold_role_messages(problem: "Problem", task: "Task", syntax: str = "python",
                       carry_results: bool = False) -> list[dict[str, Any]]:
    """A problem's gold chain as a multi-agent chain (templated thoughts, `Final answer: <gold>`)."""
    gold = gold_messages(problem, task, syntax)
    steps = list(zip(gold[2:-1:2], gold[3:-1:2]))
    return role_messages(task, task.user_message(problem), steps, gold[-1]["content"], syntax, carry_results)


def role_samples(messages: list[dict[str, Any]], task: "Task", syntax: str | None = None) -> dict[str, list[dict]]:
    """Per role, one TRL prompt-completion sample for each of that role's turns in a multi-agent chain.

    A sample is `{"prompt": role_view(messages before the turn, role_prompt(role)), "completion":
    [the turn without its name]}`: exactly what the agent sends the role and what it should answer.
    """
    syntax = syntax or _chain_syntax(messages)
    prompts = {role: role_prompt(task, role, syntax) for role in ROLES}
    samples: dict[str, list[dict]] = {role: [] for role in ROLES}
    for index, message in enumerate(messages):
        role = message.get("name") if message["role"] == "assistant" else None
        if role in samples:
            completion = {k: v for k, v in message.items() if k != "name"}
            samples[role].append({"prompt": role_view(messages[:index], prompts[role]), "completion": [completion]})
    return samples


