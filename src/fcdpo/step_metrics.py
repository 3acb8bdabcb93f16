"""Step-level metrics of alpha-UMi: each role's next turn scored against the gold history.

Layer: agents; imports `fcdpo.multi_agent`, `fcdpo.roles`, `fcdpo.agent` and the functions.

    table = step_metrics(MultiAgent(task, team, config), problems)  # plan_acc, act_em, arg_f1, ...
    table = step_metrics(Agent(task, backend, config), problems)    # the single agent, scored the same way

Every query gives a role the gold chain up to one of its turns (`fcdpo.roles.gold_role_messages`) and
reads its reply the way the agent would; notebook 04 writes the table to `evaluation/step_metrics.csv`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from fcdpo.agent import Agent, gold_messages, read_turn, untrusted_turn
from fcdpo.functions import Call, FunctionSet, ParseError
from fcdpo.multi_agent import ROLES, MultiAgent, read_call, read_decision, summary_answer
from fcdpo.roles import gold_role_messages, role_samples

if TYPE_CHECKING:
    from fcdpo.backends import Completion
    from fcdpo.tasks import Problem, Task


def argument_f1(predicted: Mapping[str, Any], gold: Mapping[str, Any]) -> float:
    """F1 of the (key, value) pairs of two argument dicts; 1.0 when both are empty.

    Numbers compare by value (3 == 3.0), booleans only with booleans, lists element by element.
    """
    def pairs(arguments: Mapping[str, Any]) -> set[tuple[str, Any]]:
        return {(str(k), _hashable(v)) for k, v in arguments.items()}

    p, g = pairs(predicted), pairs(gold)
    if not p and not g:
        return 1.0
    return 2 * len(p & g) / (len(p) + len(g))


def _hashable(value: Any) -> Any:
    if isinstance(value, bool):  # True == 1 in Python, but `negated=True` is not `negated=1`
        return ("bool", value)
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    return value


@dataclass
class _Query:
    """One scored step: whom to ask, with which chat, and what the right next turn holds."""

    problem: "Problem"
    role: str  # planner | caller | summarizer; "single" for a single-agent turn
    step: int
    chat: list[dict[str, Any]]
    gold_decision: str | None = None  # scored by plan_acc
    gold_call: Call | None = None  # scored by act_em, hallucination, arg_f1, parse_error_rate
    scores_answer: bool = False  # scored by answer_acc


@dataclass
class _Reading:
    """What one turn says, read the way the agent reads it."""

    decision: str | None = None
    call: Call | None = None
    parse_error: bool = False
    answer: str | None = None


def _multi_agent_queries(agent: "MultiAgent", problem: "Problem") -> list[_Query]:
    chain = gold_role_messages(problem, agent.task, agent.config.syntax, agent.config.carry_results)
    queries = []
    for role, samples in role_samples(chain, agent.task, agent.config.syntax).items():
        for step, sample in enumerate(samples):
            target = sample["completion"][0]
            query = _Query(problem, role, step, sample["prompt"], scores_answer=role == "summarizer")
            if role == "planner":
                query.gold_decision = read_decision(target["content"])
            elif role == "caller":
                query.gold_call = read_call(target.get("content") or "", target.get("tool_calls"),
                                            agent.task.functions(), agent.config.syntax)
            queries.append(query)
    return queries


def _single_agent_queries(agent: "Agent", problem: "Problem") -> list[_Query]:
    # The single agent's own prompt: its few-shot block, when it has one, is part of it.
    gold = gold_messages(problem, agent.task, agent.config.syntax, getattr(agent, "_shots", ""))
    n = len(problem.gold_chain)
    return [
        _Query(problem, "single", step, gold[: 2 + 2 * step],
               gold_decision="caller" if step < n else "conclusion",
               gold_call=Call.from_dict(problem.gold_chain[step]) if step < n else None,
               scores_answer=step == n)
        for step in range(n + 1)
    ]


def _read(role: str, completion: "Completion", functions: FunctionSet, syntax: str, max_chars: int) -> _Reading:
    # Cut as a chain cuts a turn: model text reaches the readers' patterns only bounded.
    text, tool_calls = untrusted_turn(completion, max_chars)
    text = text.strip()
    if role == "planner":
        return _Reading(decision=read_decision(text) or "caller")  # the missing-decision rule
    if role == "caller":
        try:
            return _Reading(call=read_call(text, tool_calls, functions, syntax))
        except ParseError:
            return _Reading(parse_error=True)
    if role == "summarizer":
        return _Reading(answer=summary_answer(text))
    turn = read_turn(text, tool_calls, functions, syntax)  # a single-agent turn
    return _Reading(
        decision={"call": "caller", "parse_error": "caller", "answer": "conclusion"}.get(turn.kind),
        call=turn.calls[0] if turn.kind == "call" and len(turn.calls) == 1 else None,
        parse_error=turn.kind == "parse_error",
        answer=turn.answer,
    )


# The scores a step can get (keys of `_score`'s result), averaged into the metrics of `step_metrics`.
_SCORED = ("plan_correct", "act_em", "hallucination", "arg_f1", "parse_error", "correct")


def _score(query: _Query, role: str, completion: "Completion", task: "Task", names: set[str],
           syntax: str, max_chars: int) -> dict[str, Any]:
    """One step's record: which problem, role and step, the text (cut at `max_chars`), and the scores
    its query asks for."""
    reading = _read(role, completion, task.functions(), syntax, max_chars)
    result: dict[str, Any] = {"problem_id": query.problem.id, "role": role, "step": query.step,
                              "text": untrusted_turn(completion, max_chars)[0].strip()}
    if query.gold_decision is not None:
        result["plan_correct"] = reading.decision == query.gold_decision
    if query.gold_call is not None:
        call = reading.call
        result["act_em"] = call is not None and call.name == query.gold_call.name
        result["hallucination"] = call is not None and call.name not in names
        result["arg_f1"] = argument_f1(call.arguments, query.gold_call.arguments) if result["act_em"] else 0.0
        result["parse_error"] = reading.parse_error
    if query.scores_answer:
        answer = reading.answer
        result["correct"] = answer is not None and task.check(answer, query.problem.answer)
    return result


def step_metrics(
    agent: "MultiAgent | Agent",
    problems: list["Problem"],
    temperature: float = 0.0,
    seed: int | None = None,
    records: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """alpha-UMi's step-level metrics, each role's next turn scored given the gold history.

    For every problem's gold chain of n calls (rendered as `gold_role_messages`): the planner is
    asked n + 1 times (before each call, the gold decision is `caller`; after the last, `conclusion`),
    the caller n times (given the gold planner thought `call_thought(name)`, restating the last
    result under `carry_results`), and the summarizer once
    (given the whole gold chain). All queries of one role go in one backend call.

    - `plan_acc`: planner decisions equal to the gold one (a missing marker counts as `caller`).
    - `act_em`: caller steps whose parsed call names the gold function.
    - `hallucination`: caller steps whose parsed call names no function of the task.
    - `arg_f1`: mean over caller steps of `argument_f1(predicted, gold)`, 0 when the text does not
      parse or names another function (those arguments belong to a different call).
    - `parse_error_rate`: caller steps whose text is not one call.
    - `answer_acc`: summarizer answers that pass the task's check.

    A single-agent `Agent` is scored the same way on `gold_messages` prefixes: its turn before call i
    gives the decision (a call or a parse error → `caller`, an answer → `conclusion`, a thought →
    none) and, when it is a call, the caller metrics; its turn after the last call gives the decision
    and the answer.

    Each scored step is appended to `records` when given (`problem_id`, `role`, `step`, `text`, and
    that step's scores), for inspection. A reply is read and recorded as a chain keeps a turn: cut
    at the agent's `max_turn_chars`.
    """
    multi = isinstance(agent, MultiAgent)
    syntax = agent.config.syntax
    make_queries = _multi_agent_queries if multi else _single_agent_queries
    queries = [query for problem in problems for query in make_queries(agent, problem)]  # type: ignore[arg-type]
    names = set(agent.task.functions().names)
    tools = agent.schemas if syntax == "json" else None
    scores: dict[str, list[float]] = {k: [] for k in _SCORED}
    for index, role in enumerate(ROLES if multi else ("single",)):
        group = [q for q in queries if q.role == role]
        if not group:
            continue
        backend = agent.backends[role] if multi else agent.backend  # type: ignore[union-attr]
        completions = backend.complete([q.chat for q in group], tools=tools, max_new_tokens=agent.config.max_new_tokens,
                                       temperature=temperature, seed=None if seed is None else seed + index)
        for query, completion in zip(group, completions, strict=True):
            result = _score(query, role, completion, agent.task, names, syntax, agent.config.max_turn_chars)
            for key, value in result.items():
                if key in scores:
                    scores[key].append(float(value))
            if records is not None:
                records.append(result)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return {
        "agent": agent.name,
        "problems": len(problems),
        "plan_steps": len(scores["plan_correct"]),
        "call_steps": len(scores["act_em"]),
        "plan_acc": mean(scores["plan_correct"]),
        "act_em": mean(scores["act_em"]),
        "hallucination": mean(scores["hallucination"]),
        "arg_f1": mean(scores["arg_f1"]),
        "parse_error_rate": mean(scores["parse_error"]),
        "answer_acc": mean(scores["correct"]),
    }
