"""The single-model agent: the paper's step-by-step chain of function calls.

Layer: agents; imports the functions, tasks, backends, settings and safe_text.

Given a problem and its task's functions, the agent builds the prompt (a system prompt with the
function descriptions and example calls injected, optional few-shot chains), then loops:

    model turn → a call, a thought or the final answer
               → call: execute it, append the observation (or the error) as a `tool` message
               → parse error: tell the model what was wrong in a `user` message (bounded retries)
               → thought: keep it and ask for the next turn
               → final answer: grade it and stop

A chain also stops at `max_steps` model turns, at `max_errors` errors, or when it has spent its
`token_budget` of generated tokens. All unfinished chains advance together: each step is one
batched call to the backend, so many problems cost far less than one at a time.

Every chain is recorded as standard chat messages plus the tools' JSON schemas, the answer, the gold
answer, correctness and counts (see `Trajectory`), so any chat template can render it and TRL can
take it unchanged.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from fcdpo.functions import TRUNCATION_MARKER, Call, FunctionSet, ParseError, calls_from_tool_calls
from fcdpo.safe_text import scrub, scrub_text
from fcdpo.settings import AgentConfig

if TYPE_CHECKING:
    from fcdpo.backends import Backend, Completion
    from fcdpo.tasks import Problem, Task

FINAL_ANSWER = re.compile(r"final answer\s*:\s*(.*)", re.IGNORECASE | re.DOTALL)
# Text that was meant as a call: a name followed by "(", or a JSON tool call. Linear in the text: a
# name starts only where no word character precedes it, and a line's indent does not run past its
# end, so no run of letters or of blank lines is scanned again from each of its positions.
_CALL_ATTEMPT = re.compile(r"(?<!\w)[A-Za-z_]\w*\s*\(|<tool_call>|^[^\S\n]*\{", re.MULTILINE)

ERROR_KINDS = ("parse_error", "unknown_function", "bad_arguments", "execution_error", "timeout")
STOP_REASONS = ("answer", "max_steps", "max_errors", "token_budget")


def untrusted_turn(completion: "Completion", max_chars: int) -> tuple[str, list[dict] | None]:
    """A model turn's text and tool calls as a chain keeps them: lone surrogates become U+FFFD, and
    text longer than `max_chars` (a server that ignores `max_tokens`) is cut."""
    return _bounded(scrub_text(completion.text or ""), max_chars), scrub(completion.tool_calls)


@dataclass
class Trajectory:
    """One chain, as written to JSONL (one line per chain)."""

    id: str
    task: str
    problem_id: str
    sample: int
    model: str
    agent: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    answer: str | None
    gold: str
    correct: bool
    steps: int  # model turns
    calls: int  # function calls executed (valid or not)
    errors: dict[str, int]  # counts per kind in ERROR_KINDS
    stop: str  # one of STOP_REASONS
    tokens: dict[str, int]  # prompt / completion tokens over the chain
    seconds: float
    meta: dict[str, Any] = field(default_factory=dict)  # the problem's meta (steps, hops, source)
    # What wrote the chain (model, agent, settings, temperature, seed); set by `fcdpo.rollouts.rollout`.
    producer: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Trajectory":
        return cls(**row)


@dataclass
class Turn:
    """A model turn, classified."""

    kind: str  # "call", "answer", "thought" or "parse_error"
    calls: list[Call] = field(default_factory=list)
    answer: str | None = None
    error: str | None = None


def read_turn(text: str, tool_calls: list[dict] | None, functions: FunctionSet, syntax: str) -> Turn:
    """Classify one model turn: native tool calls, else `Final answer:`, else a call, else a thought.

    Text that looks like an attempted call but does not parse is a parse error (the model is told
    why); any other text is a thought.
    """
    if tool_calls:
        try:
            return Turn("call", calls=calls_from_tool_calls(tool_calls))
        except ParseError as exc:
            return Turn("parse_error", error=str(exc))
    final = FINAL_ANSWER.search(text or "")
    if final:
        return Turn("answer", answer=final.group(1).strip())
    try:
        return Turn("call", calls=[functions.parse(text, "json" if syntax == "json" else "auto")])
    except ParseError as exc:
        if exc.kind in ("too_long", "too_deep") or _CALL_ATTEMPT.search(text or ""):
            return Turn("parse_error", error=str(exc))
        return Turn("thought")


def assistant_message(call: Call, syntax: str) -> dict[str, Any]:
    """The assistant turn that makes `call`, in the given surface syntax."""
    if syntax == "python":
        return {"role": "assistant", "content": call.to_python()}
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": call.name, "arguments": dict(call.arguments)}}],
    }


def tool_message(call: Call, content: str) -> dict[str, Any]:
    return {"role": "tool", "name": call.name, "content": content}


def few_shot_text(examples: list["Problem"], task: "Task") -> str:
    """Solved examples for the system prompt: question, calls with results, final answer."""
    blocks = []
    for problem in examples:
        functions = task.functions(problem)
        lines = [f"Question: {problem.question}"]
        for step in problem.gold_chain:
            call = Call.from_dict(step)
            lines.append(f"{call.to_python()}\nResult: {functions.execute(call).content}")
        lines.append(f"Final answer: {problem.answer}")
        blocks.append("\n".join(lines))
    return "\n\nExamples:\n\n" + "\n\n".join(blocks) if blocks else ""


def prompt_messages(problem: "Problem", task: "Task", config: AgentConfig, shots: str = "") -> list[dict[str, Any]]:
    """The opening of a chain: the system prompt with the functions injected, then the question."""
    return [
        {"role": "system", "content": task.system_prompt(config.syntax) + shots},
        {"role": "user", "content": task.user_message(problem)},
    ]


def gold_messages(problem: "Problem", task: "Task", syntax: str = "python", shots: str = "") -> list[dict[str, Any]]:
    """The problem's gold chain as a whole conversation (prompt, calls, observations, answer)."""
    messages = prompt_messages(problem, task, AgentConfig(syntax=syntax), shots)
    functions = task.functions(problem)
    for step in problem.gold_chain:
        call = Call.from_dict(step)
        messages.append(assistant_message(call, syntax))
        messages.append(tool_message(call, functions.execute(call).content))
    messages.append({"role": "assistant", "content": f"Final answer: {problem.answer}"})
    return messages


class ChainState:
    """The state of one chain while an agent runs it, and the trajectory it becomes; the single and
    the multi-LLM agent keep the same record (the multi agent's chain adds whose turn it is)."""

    def __init__(self, problem: "Problem", task: "Task", messages: list[dict[str, Any]], sample: int):
        self.problem = problem
        self.task = task
        self.functions = task.functions(problem)
        self.messages = messages
        self.sample = sample
        self.answer: str | None = None
        self.stop: str | None = None
        self.steps = 0
        self.calls = 0
        self.errors: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.started = time.perf_counter()
        self.seconds = 0.0
        self.trajectory: Trajectory | None = None

    def finish(self, reason: str) -> None:
        self.stop = reason
        self.seconds = time.perf_counter() - self.started

    def record(self, model: str, agent: str, tools: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> Trajectory:
        """The finished chain as a graded `Trajectory` (`meta` defaults to the problem's)."""
        problem = self.problem
        return Trajectory(
            id=f"{problem.id}/{self.sample}",
            task=problem.task,
            problem_id=problem.id,
            sample=self.sample,
            model=model,
            agent=agent,
            messages=self.messages,
            tools=tools,
            answer=self.answer,
            gold=problem.answer,
            correct=self.answer is not None and self.task.check(self.answer, problem.answer),
            steps=self.steps,
            calls=self.calls,
            errors={kind: self.errors.get(kind, 0) for kind in ERROR_KINDS},
            stop=self.stop or "max_steps",
            tokens={"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            seconds=round(self.seconds, 4),
            meta=dict(problem.meta) if meta is None else meta,
        )


class Agent:
    """Runs chains for a task with a backend; `run` advances a whole batch together."""

    def __init__(self, task: "Task", backend: "Backend", config: AgentConfig | None = None, name: str = "single"):
        self.task = task
        self.backend = backend
        self.config = config or AgentConfig()
        self.name = name
        self._schemas: list[dict[str, Any]] | None = None
        self._shots = ""
        if self.config.few_shot:
            # Shot problems come from a seed no split uses, so they never repeat a train or eval problem.
            self._shots = few_shot_text(task.generate(self.config.few_shot, seed=-1), task)

    @property
    def schemas(self) -> list[dict[str, Any]]:
        if self._schemas is None:
            self._schemas = self.task.functions().schemas()
        return self._schemas

    def run(
        self,
        problems: list["Problem"],
        samples: list[int] | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
        on_finish: Callable[[Trajectory], None] | None = None,
    ) -> list[Trajectory]:
        """One chain per problem (`samples[i]` numbers the i-th chain), all advanced in lockstep.

        `on_finish` is called with each trajectory as soon as its chain stops, so a caller can write
        it to disk before the slower chains of the batch are done.
        """
        samples = samples if samples is not None else [0] * len(problems)
        chains = [ChainState(p, self.task, prompt_messages(p, self.task, self.config, self._shots), s)
                  for p, s in zip(problems, samples)]
        tools = self.schemas if self.config.syntax == "json" else None
        step = 0
        while active := [c for c in chains if c.stop is None]:
            completions = self.backend.complete(
                [c.messages for c in active],
                tools=tools,
                max_new_tokens=self.config.max_new_tokens,
                temperature=temperature,
                seed=None if seed is None else seed + step,
            )
            advance_all(self._advance, active, completions)
            for chain in active:
                if chain.stop is not None:
                    chain.trajectory = chain.record(self.backend.name, self.name, self.schemas)
                    if on_finish is not None:
                        on_finish(chain.trajectory)
            step += 1
        return [c.trajectory for c in chains]

    def _advance(self, chain: ChainState, completion: "Completion") -> None:
        config = self.config
        chain.steps += 1
        chain.prompt_tokens += completion.prompt_tokens
        chain.completion_tokens += completion.completion_tokens
        text, tool_calls = untrusted_turn(completion, config.max_turn_chars)
        turn = read_turn(text, tool_calls, chain.functions, config.syntax)
        if turn.kind == "answer":
            chain.messages.append({"role": "assistant", "content": text.strip()})
            chain.answer = turn.answer
            chain.finish("answer")
            return
        if turn.kind == "call":
            for index, call in enumerate(turn.calls):
                if sum(chain.errors.values()) >= config.max_errors:
                    break  # the rest of the turn's calls are not run
                if index == config.max_calls_per_turn:
                    chain.errors["parse_error"] += 1
                    chain.messages.append({
                        "role": "user",
                        "content": f"Error: {len(turn.calls)} function calls in one turn; only the first "
                        f"{config.max_calls_per_turn} were run. Make fewer calls per turn.",
                    })
                    break
                chain.messages.append(assistant_message(call, config.syntax))
                observation = chain.functions.execute(call)
                chain.calls += 1
                if observation.error:
                    chain.errors[observation.error] += 1
                chain.messages.append(tool_message(call, observation.content))
        elif turn.kind == "parse_error":
            chain.messages.append({"role": "assistant", "content": text.strip()})
            chain.errors["parse_error"] += 1
            chain.messages.append({
                "role": "user",
                "content": f"Error: {turn.error}. Write one function call, for example "
                f"`{chain.functions.example_call()}`, or `Final answer: <answer>`.",
            })
        else:  # a thought: keep it, the next turn continues the chain
            chain.messages.append({"role": "assistant", "content": text.strip()})
        if sum(chain.errors.values()) >= config.max_errors:
            chain.finish("max_errors")
        elif chain.steps >= config.max_steps:
            chain.finish("max_steps")
        elif chain.completion_tokens >= config.token_budget:
            chain.finish("token_budget")


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + TRUNCATION_MARKER.format(n=len(text) - limit)


# Threads that run a step's function calls: chains keep separate function sets (a knowledge base
# each), and z3 proofs release the GIL, so a batch's proofs run side by side.
_CALL_THREADS = min(8, os.cpu_count() or 1)


def advance_all(advance: Callable[..., None], chains: list[Any], *per_chain: list[Any]) -> None:
    """`advance(chain, *args)` for every chain and its row of `per_chain`, on a few threads when
    there are several chains. Each call may touch only its own chain (messages, function set),
    so the result is the same as one after the other."""
    jobs = list(zip(chains, *per_chain, strict=True))
    if len(jobs) < 2 or _CALL_THREADS < 2:
        for job in jobs:
            advance(*job)
        return
    with ThreadPoolExecutor(max_workers=min(_CALL_THREADS, len(jobs)), thread_name_prefix="fcdpo-step") as pool:
        for future in [pool.submit(advance, *job) for job in jobs]:
            future.result()  # re-raises a chain's unexpected error here


def format_chain(messages: list[dict[str, Any]], system: bool = False) -> str:
    """A chain as readable text: the question, each call with its result, the answer."""
    lines = []
    for message in messages:
        role, content = message["role"], (message.get("content") or "").strip()
        if role == "system":
            if system:
                lines.append(content + "\n")
        elif role == "user":
            lines.append(("Question: " if len(lines) <= 1 else "(feedback) ") + content)
        elif role == "tool":
            lines[-1] += f"  → {content}"
        elif message.get("tool_calls"):
            for call in calls_from_tool_calls(message["tool_calls"]):
                lines.append("  " + call.to_python())
        else:
            lines.append("  " + content if not FINAL_ANSWER.match(content) else content)
    return "\n".join(lines)
