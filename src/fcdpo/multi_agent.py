"""The multi-LLM agent of alpha-UMi (Shen et al. 2024, arXiv 2401.07324): planner, caller, summarizer.

Layer: agents; imports `fcdpo.agent` and the functions, tasks, backends and settings.

One chain is a conversation between three role models:

    planner    → a short thought ending in a decision: `Next: caller`, `Next: conclusion` or `Next: give up`
    caller     → exactly one function call (the same syntax and parser as the single agent)
               → executed; the observation (or the error) is appended and the planner speaks again
    summarizer → `Final answer: X`, written once the planner concludes

    planner → (caller → execute → observation → planner)* → summarizer

Rules, each applied the same way everywhere (agent, training data, step metrics):

- **Missing decision**: a planner turn without a `Next:` marker counts as `Next: caller`. The caller reads
  the thought and makes the call it suggests; the chain's `meta["multi_agent"]["missing_decisions"]`
  counts such turns. When several markers appear, the last one decides.
- **Give up** ends the chain at once with no answer (`stop="give_up"`, not correct), as in alpha-UMi:
  the summarizer is not asked to guess.
- **Step bound**: at most `max_steps` planner turns per chain. A `Next: caller` on the last allowed
  planner turn ends the chain (`stop="max_steps"`): no planner turn would remain to read the result.
- **Caller errors**: text that is not one call (a parse error, a final answer, several native tool
  calls) gets the single agent's feedback as a `user` message and goes back to the planner; a call
  to an unknown function or with bad arguments gets the engine's error observation, as usual. Both
  count towards `max_errors`.
- **Summarizer**: its answer is the text after `Final answer:`, or its whole turn when the marker is
  missing (answering is the only thing it does).
- **Token budget**: generated tokens of all roles together; a chain over budget stops after the turn
  that crossed it (`stop="token_budget"`), unless that turn finished the chain.

Trajectories use the single agent's `Trajectory` record and message format, so evaluation and
preference-pair code apply unchanged. `agent` is "multi"; `steps` counts the model turns of all
roles; every assistant message carries `"name": "planner" | "caller" | "summarizer"`;
`messages[0]` is the team's system prompt (`backbone_prompt`). Each role model sees the same chat
with its own system prompt (`role_prompt`) and without the `name` keys (`role_view`), so any chat
template and OpenAI-compatible server takes it.

Role models come from a `RoleBackends`: three backends, one backend for all roles, or one base model
with three LoRA adapters switched per role (`load_adapter_role_backends`). All chains waiting for the
same role advance in one backend call.

`fcdpo.roles` turns single-agent chains into role turns (the GLPFT training data), and
`fcdpo.step_metrics` scores each role's next turn given the gold history.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from fcdpo.agent import (
    FINAL_ANSWER,
    ChainState,
    Trajectory,
    advance_all,
    assistant_message,
    tool_message,
    untrusted_turn,
)
from fcdpo.functions import Call, FunctionSet, ParseError, calls_from_tool_calls
from fcdpo.settings import ROLES, MultiAgentConfig

if TYPE_CHECKING:
    from fcdpo.backends import Backend, Completion, HFBackend
    from fcdpo.tasks import Problem, Task

DECISIONS = ("caller", "conclusion", "give_up")
STOP_REASONS = ("answer", "give_up", "max_steps", "max_errors", "token_budget")
_DECISION = re.compile(r"next\s*:\s*(caller|conclusion|give[\s_-]*up)", re.IGNORECASE)

# Deterministic planner thoughts for chains that have none (single-agent chains, gold chains).
CONCLUSION_THOUGHT = "I have the answer.\nNext: conclusion"


def _carried(result: str | None) -> str:
    return "" if result is None else f"Result: {result}\n"


def call_thought(name: str, result: str | None = None) -> str:
    """The planner turn that asks for a call to `name`, e.g. "I will call add next.\\nNext: caller".

    With `result` (the last observation, when `MultiAgentConfig.carry_results` is on) the thought
    restates it first, "Result: 5\\nI will call multiply next.\\nNext: caller", so that the caller
    finds the value it must copy in the turn just before its own."""
    return f"{_carried(result)}I will call {name} next.\nNext: caller"


def conclusion_thought(result: str | None = None) -> str:
    """The planner turn that hands over to the summarizer (`CONCLUSION_THOUGHT`), with the last
    observation restated first when `result` is given (see `call_thought`)."""
    return f"{_carried(result)}{CONCLUSION_THOUGHT}"


def read_decision(text: str | None) -> str | None:
    """The planner's decision in `text`: "caller", "conclusion", "give_up", or None without a marker.

    The last `Next: ...` marker wins (case and spacing are free: `next: Give up` counts).
    """
    found = _DECISION.findall(text or "")
    if not found:
        return None
    last = found[-1].lower()
    return "give_up" if last.startswith("give") else last


# --------------------------------------------------------------------------- prompts


_TEAM = (
    "A team of three solves each problem: a planner decides what to do next, a caller writes each "
    "function call, and a summarizer writes the final answer."
)
_ROLE_HOW = {
    "planner": (
        "You are the planner. You never write function calls yourself. In each turn, read the question "
        "and the results so far, say in one short sentence what to do next, then end the turn with one "
        "line: `Next: caller` when a function should be called next (name it), `Next: conclusion` when "
        "the results answer the question, or `Next: give up` when the functions cannot solve it."
    ),
    "caller": (
        "You are the caller. The planner's last turn says what to do next. Write exactly one function "
        "call{syntax_hint} and nothing else."
    ),
    "summarizer": (
        "You are the summarizer. The planner has decided that the results so far answer the question. "
        "Write `Final answer: <answer>` and nothing else."
    ),
}


def _syntax_hint(task: "Task", syntax: str) -> str:
    if syntax == "python":
        return (" in Python syntax with keyword arguments, for example "
                f"`{task.functions().example_call(task.function_examples)}`,")
    return ""


def _functions_block(task: "Task", syntax: str) -> str:
    # With native tool calls the chat template injects the schemas (the single agent's convention).
    return f"\n\nFunctions:\n{task.functions().describe(task.function_examples)}" if syntax == "python" else ""


# Brief prompts (`Task.brief_prompt`, python syntax): the task's first instruction, one line on the
# role, and one line per function, as the single agent's brief prompt. Tiny models trained from scratch
# copy from the question far better behind a short prompt (docs/tiny-lab.md).
_BRIEF_HOW = {
    "planner": "You plan: name the function to call next and end with `Next: caller`, or `Next: conclusion` "
               "once a result answers the question, or `Next: give up`.",
    "caller": "You call: one function call per turn, e.g. `{example}`.",
    "summarizer": "You answer: `Final answer: <answer>`.",
    "backbone": "A planner names the next call (`Next: caller`) or concludes (`Next: conclusion`); a caller "
                "writes one call, e.g. `{example}`; a summarizer writes `Final answer: <answer>`.",
}


def _brief(task: "Task", syntax: str) -> bool:
    return syntax == "python" and bool(getattr(task, "brief_prompt", False))


def _brief_prompt(task: "Task", who: str) -> str:
    functions = task.functions()
    first = task.instructions.split(". ")[0].rstrip(".") + "."
    how = _BRIEF_HOW[who].format(example=functions.example_call(False))
    listing = "" if who == "summarizer" else f"\nFunctions:\n{functions.describe(False, brief=True)}"
    return f"{first} {how}{listing}"


def role_prompt(task: "Task", role: str, syntax: str = "python") -> str:
    """The system prompt of one role: the task's instructions, the team, the role's job, the functions.

    A task with `brief_prompt` (python syntax) gets the brief form: its first instruction, one line on
    the role and, except for the summarizer, one line per function."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    if _brief(task, syntax):
        return _brief_prompt(task, role)
    how = _ROLE_HOW[role].format(syntax_hint=_syntax_hint(task, syntax))
    return f"{task.instructions}\n\n{_TEAM} {how}{_functions_block(task, syntax)}"


def backbone_prompt(task: "Task", syntax: str = "python") -> str:
    """The team's system prompt: `messages[0]` of a multi-agent chain and GLPFT stage 1's prompt
    (brief, as `role_prompt`, when the task asks for brief prompts)."""
    if _brief(task, syntax):
        return _brief_prompt(task, "backbone")
    how = (
        "Each planner turn says what to do next and ends with `Next: caller`, `Next: conclusion` or "
        f"`Next: give up`; each caller turn is exactly one function call{_syntax_hint(task, syntax).rstrip(',')}; "
        "the summarizer writes `Final answer: <answer>`."
    )
    return f"{task.instructions}\n\n{_TEAM} {how}{_functions_block(task, syntax)}"


def role_view(messages: list[dict[str, Any]], system_prompt: str) -> list[dict[str, Any]]:
    """What a role model is sent: `messages` with `system_prompt` first and no `name` on assistant turns.

    Tool messages keep their `name` (the function's, as in single-agent chains).
    """
    view = [{"role": "system", "content": system_prompt}]
    for message in messages[1:]:
        if message["role"] == "assistant" and "name" in message:
            message = {k: v for k, v in message.items() if k != "name"}
        view.append(message)
    return view


def role_turn(role: str, content: str) -> dict[str, Any]:
    """An assistant message of one role (its `name`), as every multi-agent chain records it."""
    return {"role": "assistant", "name": role, "content": content}


# --------------------------------------------------------------------------- role backends


class RoleBackends:
    """Which backend plays each role.

    `RoleBackends({"planner": a, "caller": b, "summarizer": c})`, or `RoleBackends.shared(backend)`
    for one model (prompted, or trained on all roles) in every role.
    """

    def __init__(self, backends: Mapping[str, "Backend"], name: str | None = None):
        missing = [role for role in ROLES if role not in backends]
        unknown = sorted(set(backends) - set(ROLES))
        if missing or unknown:
            raise ValueError(f"RoleBackends needs exactly the roles {ROLES}; missing {missing}, unknown {unknown}")
        self.backends = {role: backends[role] for role in ROLES}
        names = [self.backends[role].name for role in ROLES]
        self.name = name or (names[0] if len(set(names)) == 1 else " ".join(f"{r}={n}" for r, n in zip(ROLES, names)))

    @classmethod
    def shared(cls, backend: "Backend") -> "RoleBackends":
        return cls({role: backend for role in ROLES}, name=backend.name)

    def __getitem__(self, role: str) -> "Backend":
        return self.backends[role]


class AdapterBackend:
    """One role's side of a PEFT model with several LoRA adapters: activates `adapter` before each batch.

    `backend` wraps the `PeftModel` (e.g. `HFBackend.from_loaded(peft_model, tokenizer)`); every
    `AdapterBackend` on the same `backend` shares its weights, so one base model in memory serves all
    roles. Calls must not overlap in time (each sets the active adapter of the shared model).
    """

    def __init__(self, backend: "HFBackend", adapter: str):
        if adapter not in backend.model.peft_config:
            raise ValueError(f"the model has no adapter {adapter!r}; it has {sorted(backend.model.peft_config)}")
        self.backend = backend
        self.adapter = adapter
        self.name = f"{backend.name}:{adapter}"

    def complete(self, chats: list[list[dict]], **kwargs: Any) -> list["Completion"]:
        self.backend.model.set_adapter(self.adapter)
        return self.backend.complete(chats, **kwargs)


def load_adapter_role_backends(
    model: str | Path,
    adapters: Mapping[str, str | Path],
    *,
    name: str | None = None,
    **hf_options: Any,
) -> RoleBackends:
    """One base model, loaded once, with one LoRA adapter per role, switched before each role's batch.

    Args:
        model: The base model (folder or hub id), as for `HFBackend`.
        adapters: A PEFT adapter folder per role (all three roles), e.g. the GLPFT outputs
            `runs/<profile>/training/glpft/{planner,caller,summarizer}`.
        name: The model name written into trajectories; default `"<model>+<adapters' common folder>"`.
        hf_options: `HFBackend` options: load_in_4bit, device, dtype, batch_size.

    Each adapter is loaded with `PeftModel.load_adapter(path, adapter_name=role)`, and each role's
    backend calls `set_adapter(role)` before generating: the same outputs as loading each adapter
    on its own copy of the base, for one copy of the base weights. The planner adapter's folder
    tokenizer is used when it has one (GLPFT saves the tokenizer it trained with), else the base's.
    """
    from fcdpo.backends import BackendError, HFBackend
    from fcdpo.loading import load_adapter, saved_tokenizer

    missing = [role for role in ROLES if role not in adapters]
    if missing:
        raise ValueError(f"adapters needs a folder for every role {ROLES}; missing {missing}")
    batch_size = hf_options.pop("batch_size", None)
    base = HFBackend(model, **hf_options)
    try:
        peft_model = load_adapter(base.model, adapters[ROLES[0]], name=ROLES[0])
        for role in ROLES[1:]:
            peft_model.load_adapter(str(adapters[role]), adapter_name=role)
    except (OSError, ValueError) as exc:
        raise BackendError(f"cannot load the role adapters {dict(adapters)} on {model!r}: {exc}") from exc
    peft_model.eval()
    tokenizer = base.tokenizer
    first = Path(adapters[ROLES[0]])
    if (first / "tokenizer_config.json").is_file():  # training may have set the chat template (as HFBackend)
        tokenizer = saved_tokenizer(first)
    if name is None:
        folders = {str(Path(adapters[role]).parent) for role in ROLES}
        name = f"{model}+{folders.pop()}" if len(folders) == 1 else f"{model}+" + ",".join(
            f"{role}={adapters[role]}" for role in ROLES)
    shared = HFBackend.from_loaded(peft_model, tokenizer, name=name, batch_size=batch_size)
    return RoleBackends({role: AdapterBackend(shared, role) for role in ROLES}, name=name)


# --------------------------------------------------------------------------- the agent


class _Chain(ChainState):
    """The state of one chain while the team runs it: whose turn it is, and each role's turns."""

    def __init__(self, problem: "Problem", task: "Task", system_prompt: str, sample: int):
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": task.user_message(problem)}]
        super().__init__(problem, task, messages, sample)
        self.waiting: str | None = "planner"  # the role that speaks next; None once finished
        self.turns: Counter[str] = Counter()
        self.missing_decisions = 0

    def finish(self, reason: str) -> None:
        super().finish(reason)
        self.waiting = None


class MultiAgent:
    """alpha-UMi's planner / caller / summarizer team; `run` mirrors `fcdpo.agent.Agent.run`.

    Args:
        task: The task (its functions, instructions and answer check).
        backends: A `RoleBackends`, or one backend used for every role.
        config: How chains run (`MultiAgentConfig`).
        name: The trajectories' `agent` field.
    """

    def __init__(self, task: "Task", backends: "RoleBackends | Backend", config: MultiAgentConfig | None = None,
                 name: str = "multi"):
        self.task = task
        self.backends = backends if isinstance(backends, RoleBackends) else RoleBackends.shared(backends)
        self.config = config or MultiAgentConfig()
        self.name = name
        self.system_prompt = backbone_prompt(task, self.config.syntax)
        self.role_prompts = {role: role_prompt(task, role, self.config.syntax) for role in ROLES}
        self._schemas: list[dict[str, Any]] | None = None

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
        """One chain per problem (`samples[i]` numbers the i-th chain); returns them in input order.

        Each round asks every chain waiting for the planner in one batched call, then every chain
        waiting for the caller, then every chain waiting for the summarizer. With a seed, the n-th
        backend call of the run gets `seed + n`. `on_finish` gets each trajectory as its chain stops.
        """
        samples = samples if samples is not None else [0] * len(problems)
        chains = [_Chain(problem, self.task, self.system_prompt, sample)
                  for problem, sample in zip(problems, samples, strict=True)]
        tools = self.schemas if self.config.syntax == "json" else None
        backend_calls = 0
        while any(c.waiting for c in chains):
            for role in ROLES:
                waiting = [c for c in chains if c.waiting == role]
                if not waiting:
                    continue
                completions = self.backends[role].complete(
                    [role_view(c.messages, self.role_prompts[role]) for c in waiting],
                    tools=tools,
                    max_new_tokens=self.config.max_new_tokens,
                    temperature=temperature,
                    seed=None if seed is None else seed + backend_calls,
                )
                backend_calls += 1
                advance_all(self._advance, waiting, [role] * len(waiting), completions)
                for chain in waiting:
                    if chain.stop is not None:
                        chain.trajectory = self._record(chain)
                        if on_finish is not None:
                            on_finish(chain.trajectory)
        return [c.trajectory for c in chains]

    def _advance(self, chain: _Chain, role: str, completion: "Completion") -> None:
        chain.turns[role] += 1
        chain.prompt_tokens += completion.prompt_tokens
        chain.completion_tokens += completion.completion_tokens
        text, tool_calls = untrusted_turn(completion, self.config.max_turn_chars)
        text = text.strip()
        if role == "planner":
            self._plan(chain, text)
        elif role == "caller":
            self._call(chain, text, tool_calls)
        else:
            chain.messages.append(role_turn("summarizer", text))
            chain.answer = summary_answer(text)
            chain.finish("answer")
        if chain.stop is None and chain.completion_tokens >= self.config.token_budget:
            chain.finish("token_budget")

    def _plan(self, chain: _Chain, text: str) -> None:
        chain.messages.append(role_turn("planner", text))
        decision = read_decision(text)
        if decision is None:
            chain.missing_decisions += 1
            decision = "caller"
        if decision == "give_up":
            chain.finish("give_up")
        elif decision == "conclusion":
            chain.waiting = "summarizer"
        elif chain.turns["planner"] >= self.config.max_steps:
            chain.finish("max_steps")
        else:
            chain.waiting = "caller"

    def _call(self, chain: _Chain, text: str, tool_calls: list[dict] | None) -> None:
        try:
            call = read_call(text, tool_calls, chain.functions, self.config.syntax)
        except ParseError as exc:
            chain.messages.append(role_turn("caller", text))
            chain.errors["parse_error"] += 1
            chain.messages.append({
                "role": "user",
                "content": f"Error: {exc}. Write one function call, for example `{chain.functions.example_call()}`.",
            })
        else:
            chain.messages.append({**assistant_message(call, self.config.syntax), "name": "caller"})
            observation = chain.functions.execute(call)
            chain.calls += 1
            if observation.error:
                chain.errors[observation.error] += 1
            chain.messages.append(tool_message(call, observation.content))
        if sum(chain.errors.values()) >= self.config.max_errors:
            chain.finish("max_errors")
        else:
            chain.waiting = "planner"

    def _record(self, chain: _Chain) -> Trajectory:
        meta = dict(chain.problem.meta)
        meta["multi_agent"] = {
            "turns": {role: chain.turns.get(role, 0) for role in ROLES},
            "missing_decisions": chain.missing_decisions,
        }
        chain.steps = sum(chain.turns.values())  # model turns of all roles
        return chain.record(self.backends.name, self.name, self.schemas, meta)


def summary_answer(text: str) -> str | None:
    """The summarizer's answer: the text after `Final answer:`, else its whole turn (None if empty)."""
    final = FINAL_ANSWER.search(text or "")
    return (final.group(1).strip() if final else (text or "").strip()) or None


def read_call(text: str, tool_calls: list[dict] | None, functions: FunctionSet, syntax: str) -> Call:
    """The caller's one call: native tool calls (exactly one), else the call in the text.

    Raises ParseError for anything else, including a final answer or several tool calls. The
    function name is not checked here (an unknown name becomes an error observation).
    """
    if tool_calls:
        if isinstance(tool_calls, (list, tuple)) and len(tool_calls) > 1:  # refused before any is parsed
            raise ParseError("not_a_call", f"expected exactly one tool call, got {len(tool_calls)}")
        calls = calls_from_tool_calls(tool_calls)
        if len(calls) != 1:
            raise ParseError("not_a_call", f"expected exactly one tool call, got {len(calls)}")
        return calls[0]
    return functions.parse(text, "json" if syntax == "json" else "auto")
