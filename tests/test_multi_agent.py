"""The multi-LLM agent (planner, caller, summarizer): control flow, role data, step metrics, adapters."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fcdpo.agent import Agent, AgentConfig, Trajectory, gold_messages
from fcdpo.backends import Completion, HFBackend
from fcdpo.multi_agent import (
    CONCLUSION_THOUGHT,
    ROLES,
    MultiAgent,
    MultiAgentConfig,
    RoleBackends,
    backbone_prompt,
    call_thought,
    load_adapter_role_backends,
    read_decision,
    role_prompt,
)
from fcdpo.roles import gold_role_messages, role_chain, role_samples
from fcdpo.rollouts import read_trajectories, rollout
from fcdpo.step_metrics import argument_f1, step_metrics
from fcdpo.tasks import Problem, get_task
from fcdpo.tinylab import build_model, build_tokenizer
from tests.scripted import ScriptedBackend

MATH = get_task("math")
APPLES = "Ann has 2 apples and gets 3 more. How many apples does she have?"
CALL_ADD = call_thought("add")


def problem(question=APPLES, answer="5", pid="p1", chain=None):
    chain = chain or [{"name": "add", "arguments": {"a": 2, "b": 3}}]
    return Problem(id=pid, task="math", question=question, answer=answer, gold_chain=chain, meta={"steps": len(chain)})


class RoleScript:
    """One role's scripted model: the n-th time a question reaches it, it answers entry n of that
    question's script (the last entry repeats). Entries are text or a list of native tool calls."""

    def __init__(self, scripts: dict[str, list], name: str = "scripted"):
        self.scripts = scripts
        self.name = name
        self.seen: Counter[str] = Counter()
        self.batches: list[int] = []
        self.chats: list[list[dict]] = []

    def complete(self, chats, *, tools=None, max_new_tokens=128, temperature=0.0, seed=None):
        self.batches.append(len(chats))
        self.chats.extend(chats)
        replies = []
        for chat in chats:
            question = chat[1]["content"]
            script = self.scripts[question]
            entry = script[min(self.seen[question], len(script) - 1)]
            self.seen[question] += 1
            if isinstance(entry, list):
                replies.append(Completion("", entry, prompt_tokens=10, completion_tokens=5, finish_reason="stop"))
            else:
                replies.append(Completion(entry, None, prompt_tokens=10, completion_tokens=len(entry.split()) + 1,
                                          finish_reason="stop"))
        return replies


def team(planner: dict, caller: dict | None = None, summarizer: dict | None = None) -> RoleBackends:
    return RoleBackends({
        "planner": RoleScript(planner),
        "caller": RoleScript(caller or {}),
        "summarizer": RoleScript(summarizer or {}),
    })


def run(backends, problems=None, **config):
    agent = MultiAgent(MATH, backends, MultiAgentConfig(**config))
    return agent.run(problems or [problem()])


def roles_of(trajectory: Trajectory) -> list[str]:
    return [m.get("name", m["role"]) if m["role"] == "assistant" else m["role"] for m in trajectory.messages]


# --------------------------------------------------------------------------- control flow


def test_the_planner_asks_the_caller_reads_the_result_and_the_summarizer_answers():
    backends = team({APPLES: [CALL_ADD, CONCLUSION_THOUGHT]}, {APPLES: ["add(a=2, b=3)"]},
                    {APPLES: ["Final answer: 5"]})
    [t] = run(backends)
    assert t.correct and t.answer == "5" and t.stop == "answer" and t.agent == "multi"
    assert roles_of(t) == ["system", "user", "planner", "caller", "tool", "planner", "summarizer"]
    assert t.messages[3] == {"role": "assistant", "content": "add(a=2, b=3)", "name": "caller"}
    assert t.messages[4] == {"role": "tool", "name": "add", "content": "5"}
    assert t.steps == 4 and t.calls == 1 and sum(t.errors.values()) == 0
    assert t.meta["multi_agent"] == {"turns": {"planner": 2, "caller": 1, "summarizer": 1}, "missing_decisions": 0}
    assert t.meta["steps"] == 1  # the problem's own meta is kept
    assert t.messages[0]["content"] == backbone_prompt(MATH)


def test_each_role_sees_the_chain_under_its_own_system_prompt_without_role_names():
    backends = team({APPLES: [CALL_ADD, CONCLUSION_THOUGHT]}, {APPLES: ["add(a=2, b=3)"]},
                    {APPLES: ["Final answer: 5"]})
    [t] = run(backends)
    planner, caller, summarizer = (backends[role].chats for role in ROLES)
    for role, chats in zip(ROLES, (planner, caller, summarizer)):
        assert all(chat[0] == {"role": "system", "content": role_prompt(MATH, role)} for chat in chats)
        assert all("name" not in m for chat in chats for m in chat if m["role"] == "assistant")
    assert caller[0][-1] == {"role": "assistant", "content": CALL_ADD}  # the thought it acts on
    assert planner[1][-1] == {"role": "tool", "name": "add", "content": "5"}
    unnamed = [{k: v for k, v in m.items() if not (k == "name" and m["role"] == "assistant")} for m in t.messages]
    assert summarizer[0][1:] == unnamed[1:-1]


def test_role_prompts_carry_the_function_docs_and_the_roles_instructions():
    for role in ROLES:
        prompt = role_prompt(MATH, role)
        assert prompt.startswith(MATH.instructions) and MATH.functions().describe() in prompt
        assert f"You are the {role}." in prompt
    assert "Next: give up" in role_prompt(MATH, "planner")
    assert "add(a=3, b=4)" in role_prompt(MATH, "caller")
    assert "Functions:" not in role_prompt(MATH, "caller", "json")  # the chat template shows the tools


def test_give_up_ends_the_chain_without_asking_the_summarizer():
    backends = team({APPLES: ["These functions cannot count apples.\nNext: give up"]})
    [t] = run(backends)
    assert t.stop == "give_up" and t.answer is None and not t.correct
    assert roles_of(t) == ["system", "user", "planner"]
    assert backends["caller"].batches == [] and backends["summarizer"].batches == []


def test_a_planner_turn_without_a_decision_marker_goes_to_the_caller():
    backends = team({APPLES: ["Add the apples.", "Done: Next: conclusion"]}, {APPLES: ["add(a=2, b=3)"]},
                    {APPLES: ["Final answer: 5"]})
    [t] = run(backends)
    assert t.correct and t.meta["multi_agent"]["missing_decisions"] == 1
    assert roles_of(t) == ["system", "user", "planner", "caller", "tool", "planner", "summarizer"]


@pytest.mark.parametrize("text, decision", [
    ("I will call add next.\nNext: caller", "caller"),
    ("I have it.\nNext: conclusion", "conclusion"),
    ("Next: give up", "give_up"),
    ("next:Give_Up", "give_up"),
    ("NEXT :  Conclusion.", "conclusion"),
    ("Next: caller ... on reflection, Next: conclusion", "conclusion"),  # the last marker decides
    ("I will add the numbers.", None),
    ("", None),
])
def test_the_planners_decision_is_its_last_next_marker(text, decision):
    assert read_decision(text) == decision


def test_a_chain_that_never_concludes_stops_at_the_planner_turn_bound():
    backends = team({APPLES: [CALL_ADD]}, {APPLES: ["add(a=2, b=3)"]})
    [t] = run(backends, max_steps=3)
    assert t.stop == "max_steps" and t.answer is None and not t.correct
    # The third planner turn asks for a call no planner turn could read: the chain ends there.
    assert t.meta["multi_agent"]["turns"] == {"planner": 3, "caller": 2, "summarizer": 0}
    assert roles_of(t)[-1] == "planner"


def test_a_caller_parse_error_is_explained_and_the_planner_speaks_again():
    backends = team({APPLES: [CALL_ADD, CALL_ADD, CONCLUSION_THOUGHT]}, {APPLES: ["add(a=2, b=", "add(a=2, b=3)"]},
                    {APPLES: ["Final answer: 5"]})
    [t] = run(backends)
    assert t.correct and t.errors["parse_error"] == 1 and t.calls == 1
    assert roles_of(t)[2:6] == ["planner", "caller", "user", "planner"]
    feedback = t.messages[4]["content"]
    assert feedback.startswith("Error: syntax") and "add(a=3, b=4)" in feedback
    assert t.messages[3] == {"role": "assistant", "name": "caller", "content": "add(a=2, b="}


@pytest.mark.parametrize("reply", ["Final answer: 5", "I would add them.", [
    {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}},
    {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 1}}},
]])
def test_a_caller_turn_that_is_not_exactly_one_call_is_a_parse_error(reply):
    backends = team({APPLES: [CALL_ADD]}, {APPLES: [reply]})
    [t] = run(backends, max_errors=1, syntax="json" if isinstance(reply, list) else "python")
    assert t.stop == "max_errors" and t.errors["parse_error"] == 1 and t.calls == 0


def test_an_unknown_function_gets_an_error_observation_and_the_planner_replans():
    backends = team({APPLES: [CALL_ADD, CALL_ADD, CONCLUSION_THOUGHT]}, {APPLES: ["plus(a=2, b=3)", "add(a=2, b=3)"]},
                    {APPLES: ["Final answer: 5"]})
    [t] = run(backends)
    assert t.correct and t.errors["unknown_function"] == 1 and t.calls == 2
    assert t.messages[4]["role"] == "tool" and "unknown function 'plus'" in t.messages[4]["content"]
    assert roles_of(t)[5] == "planner"


def test_repeated_caller_errors_end_the_chain():
    backends = team({APPLES: [CALL_ADD]}, {APPLES: ["add(a=2, b="]})
    [t] = run(backends, max_errors=2, max_steps=10)
    assert t.stop == "max_errors" and t.errors["parse_error"] == 2
    assert t.meta["multi_agent"]["turns"] == {"planner": 2, "caller": 2, "summarizer": 0}


def test_the_token_budget_covers_every_role():
    backends = team({APPLES: ["Let me think about these apples for a while. " * 3 + "Next: caller"]},
                    {APPLES: ["add(a=2, b=3)"]})
    [t] = run(backends, token_budget=40, max_steps=10)
    assert t.stop == "token_budget" and t.tokens["completion"] >= 40
    assert t.meta["multi_agent"]["turns"]["caller"] >= 1


def test_a_summarizer_without_the_marker_answers_with_its_whole_turn():
    backends = team({APPLES: [CONCLUSION_THOUGHT]}, summarizer={APPLES: ["5 apples"]})
    [t] = run(backends)
    assert t.answer == "5 apples" and t.correct and t.calls == 0


def test_chains_waiting_for_the_same_role_advance_in_one_backend_call():
    quick = problem(pid="quick")
    slow = problem(question="Bo has 2 pens and finds 3. How many pens?", pid="slow")
    backends = team(
        {quick.question: [CONCLUSION_THOUGHT], slow.question: [CALL_ADD, CONCLUSION_THOUGHT]},
        {slow.question: ["add(a=2, b=3)"]},
        {quick.question: ["Final answer: 5"], slow.question: ["Final answer: 5"]},
    )
    a, b = run(backends, problems=[quick, slow])
    assert a.correct and b.correct and (a.problem_id, b.problem_id) == ("quick", "slow")
    assert backends["planner"].batches == [2, 1]
    assert backends["caller"].batches == [1]
    assert backends["summarizer"].batches == [1, 1]


def test_one_backend_can_play_every_role():
    script = {APPLES: [CALL_ADD, "add(a=2, b=3)", CONCLUSION_THOUGHT, "Final answer: 5"]}
    [t] = MultiAgent(MATH, ScriptedBackend(script)).run([problem()])
    assert t.correct and t.model == "scripted"


def test_native_json_tool_calls_are_executed():
    call = [{"type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]
    backends = team({APPLES: [CALL_ADD, CONCLUSION_THOUGHT]}, {APPLES: [call]}, {APPLES: ["Final answer: 5"]})
    [t] = run(backends, syntax="json")
    assert t.correct and t.calls == 1
    assert t.messages[3]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 2, "b": 3}}
    assert t.tools == MATH.functions().schemas()


def test_a_caller_turn_with_many_tool_calls_runs_none_and_parses_none(monkeypatch):
    import fcdpo.multi_agent as multi_agent

    parsed = []  # the tool-call lists the caller's reader parsed
    real = multi_agent.calls_from_tool_calls
    monkeypatch.setattr(multi_agent, "calls_from_tool_calls", lambda calls, **kw: parsed.append(calls) or real(calls, **kw))
    many = [{"type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}] * 300
    backends = team({APPLES: [CALL_ADD, CONCLUSION_THOUGHT]}, {APPLES: [many]}, {APPLES: ["Final answer: 5"]})
    [t] = run(backends, syntax="json")
    assert t.calls == 0 and t.errors["parse_error"] == 1 and parsed == []
    assert "expected exactly one tool call, got 300" in t.messages[4]["content"]
    assert roles_of(t) == ["system", "user", "planner", "caller", "user", "planner", "summarizer"]


def test_an_overlong_role_turn_is_cut_and_lone_surrogates_replaced():
    import json

    from fcdpo.functions import TRUNCATION_MARKER

    config = MultiAgentConfig(max_new_tokens=32)
    long_thought = "Next: caller \ud800 " + "x" * 100_000
    backends = team({APPLES: [long_thought, CONCLUSION_THOUGHT]}, {APPLES: ["add(a=2, b=3)"]},
                    {APPLES: ["Final answer: 5 " + "y" * 100_000]})
    [t] = run(backends, max_new_tokens=32)
    planner, summarizer = t.messages[2], t.messages[-1]
    assert planner["content"].startswith("Next: caller \ufffd x")
    assert len(planner["content"]) <= config.max_turn_chars + len(TRUNCATION_MARKER) + 10
    assert planner["content"].endswith(TRUNCATION_MARKER.format(n=len(long_thought) - config.max_turn_chars))
    assert len(summarizer["content"]) <= config.max_turn_chars + len(TRUNCATION_MARKER) + 10
    assert t.calls == 1 and t.stop == "answer"
    json.dumps(t.messages, ensure_ascii=False).encode("utf-8")  # storable as UTF-8


def test_role_backends_need_exactly_the_three_roles():
    with pytest.raises(ValueError, match="missing \\['summarizer'\\]"):
        RoleBackends({"planner": RoleScript({}), "caller": RoleScript({})})
    with pytest.raises(ValueError, match="unknown \\['critic'\\]"):
        RoleBackends({**{role: RoleScript({}) for role in ROLES}, "critic": RoleScript({})})


def test_rollout_writes_multi_agent_trajectories_that_read_back(tmp_path):
    script = [CALL_ADD, "add(a=2, b=3)", CONCLUSION_THOUGHT, "Final answer: 5"]  # one backend, every role
    agent = MultiAgent(MATH, ScriptedBackend({APPLES: script}))
    written = rollout([problem()], agent, tmp_path / "multi.jsonl", k=2, progress=False)
    assert [t.sample for t in written] == [0, 1] and all(t.correct for t in written)
    assert sorted(read_trajectories(tmp_path / "multi.jsonl"), key=lambda t: t.sample) == written


# --------------------------------------------------------------------------- role data from chains


def single_trajectory(messages, correct=True, pid="p1") -> Trajectory:
    return Trajectory(id=f"{pid}/0", task="math", problem_id=pid, sample=0, model="teacher", agent="single",
                      messages=messages, tools=[], answer="5", gold="5", correct=correct, steps=2, calls=1,
                      errors={}, stop="answer", tokens={"prompt": 0, "completion": 0}, seconds=0.0)


def test_a_clean_correct_single_chain_becomes_planner_caller_and_summarizer_turns():
    two_steps = problem(chain=[{"name": "add", "arguments": {"a": 2, "b": 3}},
                               {"name": "multiply", "arguments": {"a": 5, "b": 2}}], answer="10")
    chain = role_chain(single_trajectory(gold_messages(two_steps, MATH)), MATH)
    assert chain[:2] == [{"role": "system", "content": backbone_prompt(MATH)}, {"role": "user", "content": APPLES}]
    assert chain[2:] == [
        {"role": "assistant", "name": "planner", "content": "I will call add next.\nNext: caller"},
        {"role": "assistant", "name": "caller", "content": "add(a=2, b=3)"},
        {"role": "tool", "name": "add", "content": "5"},
        {"role": "assistant", "name": "planner", "content": "I will call multiply next.\nNext: caller"},
        {"role": "assistant", "name": "caller", "content": "multiply(a=5, b=2)"},
        {"role": "tool", "name": "multiply", "content": "10"},
        {"role": "assistant", "name": "planner", "content": "I have the answer.\nNext: conclusion"},
        {"role": "assistant", "name": "summarizer", "content": "Final answer: 10"},
    ]
    assert chain == gold_role_messages(two_steps, MATH)


def test_calls_are_rewritten_the_canonical_way():
    messages = gold_messages(problem(), MATH)
    messages[2] = {"role": "assistant", "content": "Action: add(2, 3)"}
    chain = role_chain(single_trajectory(messages), MATH)
    assert chain[3] == {"role": "assistant", "name": "caller", "content": "add(a=2, b=3)"}


@pytest.mark.parametrize("edit", ["incorrect", "thought", "error_observation", "parse_error", "no_answer"])
def test_chains_without_a_clean_reading_are_not_converted(edit):
    messages = gold_messages(problem(), MATH)
    correct = True
    if edit == "incorrect":
        correct = False
    elif edit == "thought":
        messages.insert(2, {"role": "assistant", "content": "First I add."})
    elif edit == "error_observation":
        messages[2:2] = [{"role": "assistant", "content": "plus(a=2, b=3)"},
                         {"role": "tool", "name": "plus", "content": "Error: unknown function 'plus'"}]
    elif edit == "parse_error":
        messages[2:2] = [{"role": "assistant", "content": "add(a=2, b="}, {"role": "user", "content": "Error: syntax"}]
    else:
        messages = messages[:-1]
    assert role_chain(single_trajectory(messages, correct=correct), MATH) is None


def test_role_samples_are_exactly_what_the_agent_sends_each_role():
    two_steps = problem(chain=[{"name": "add", "arguments": {"a": 2, "b": 3}},
                               {"name": "multiply", "arguments": {"a": 5, "b": 2}}], answer="10")
    chain = gold_role_messages(two_steps, MATH)
    samples = role_samples(chain, MATH)
    assert {role: len(rows) for role, rows in samples.items()} == {"planner": 3, "caller": 2, "summarizer": 1}
    # Replaying the chain's turns through the agent shows the same prompts as the samples hold.
    turns = {role: [row["completion"][0] for row in rows] for role, rows in samples.items()}
    backends = team({APPLES: [t["content"] for t in turns["planner"]]},
                    {APPLES: [t["content"] for t in turns["caller"]]},
                    {APPLES: [t["content"] for t in turns["summarizer"]]})
    [t] = run(backends, problems=[two_steps])
    assert t.correct and t.messages == chain
    for role in ROLES:
        assert backends[role].chats == [row["prompt"] for row in samples[role]]
    assert samples["caller"][1]["completion"] == [{"role": "assistant", "content": "multiply(a=5, b=2)"}]


# --------------------------------------------------------------------------- step-level metrics


@pytest.mark.parametrize("predicted, gold, f1", [
    ({"a": 2, "b": 3}, {"a": 2, "b": 3}, 1.0),
    ({"a": 5, "b": 3}, {"a": 5, "b": 4}, 0.5),
    ({"a": 2.0}, {"a": 2, "b": 3}, 2 / 3),
    ({"x": 2, "y": 3}, {"a": 2, "b": 3}, 0.0),
    ({}, {}, 1.0),
    ({"items": [1, 2]}, {"items": [1, 2]}, 1.0),
])
def test_argument_f1_scores_key_value_pairs(predicted, gold, f1):
    assert argument_f1(predicted, gold) == pytest.approx(f1)


values = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.booleans(), st.lists(st.integers(0, 3), max_size=2))
arguments = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), values, max_size=4)


@settings(max_examples=200, deadline=None)
@given(arguments, arguments)
def test_argument_f1_is_symmetric_bounded_and_one_for_the_same_arguments(p, g):
    score = argument_f1(p, g)
    assert score == argument_f1(g, p) and 0.0 <= score <= 1.0
    assert argument_f1(p, p) == 1.0
    if not set(p) & set(g):
        assert score == (1.0 if not p and not g else 0.0)


def test_a_boolean_argument_never_matches_a_number():
    assert argument_f1({"negated": True}, {"negated": 1}) == 0.0
    assert argument_f1({"negated": False}, {"negated": False}) == 1.0


Q1, Q2, Q3 = "Q1: two steps", "Q2: one step", "Q3: one step"
METRIC_PROBLEMS = [
    problem(Q1, "20", "q1", [{"name": "add", "arguments": {"a": 2, "b": 3}},
                             {"name": "multiply", "arguments": {"a": 5, "b": 4}}]),
    problem(Q2, "5", "q2", [{"name": "subtract", "arguments": {"a": 9, "b": 4}}]),
    problem(Q3, "4", "q3", [{"name": "divide", "arguments": {"a": 8, "b": 2}}]),
]


def test_step_metrics_score_each_role_against_the_gold_history():
    backends = team(
        planner={
            Q1: ["Next: caller", "Next: conclusion", "Next: conclusion"],  # right, wrong (a call is due), right
            Q2: ["Subtract them.", "Next: give up"],  # no marker counts as caller: right; then wrong
            Q3: ["Next: caller", "Next: conclusion"],  # right, right
        },
        caller={
            Q1: ["add(a=2, b=3)", "multiply(a=5, b=3)"],  # exact; right name, one of two arguments right
            Q2: ["minus(a=9, b=4)"],  # a function that does not exist
            Q3: ["divide(a=8,"],  # does not parse
        },
        summarizer={Q1: ["Final answer: 20"], Q2: ["6"], Q3: ["Final answer: 4"]},
    )
    records = []
    metrics = step_metrics(MultiAgent(MATH, backends), METRIC_PROBLEMS, records=records)
    assert metrics == {
        "agent": "multi", "problems": 3, "plan_steps": 7, "call_steps": 4,
        "plan_acc": pytest.approx(5 / 7),
        "act_em": 0.5,
        "hallucination": 0.25,
        "arg_f1": pytest.approx((1 + 0.5 + 0 + 0) / 4),
        "parse_error_rate": 0.25,
        "answer_acc": pytest.approx(2 / 3),
    }
    # Each role is asked once for all its steps, with the gold history (and the gold thought).
    assert [backends[role].batches for role in ROLES] == [[7], [4], [3]]
    second_call = backends["caller"].chats[1]
    assert second_call[-3:] == [
        {"role": "assistant", "content": "add(a=2, b=3)"},
        {"role": "tool", "name": "add", "content": "5"},
        {"role": "assistant", "content": call_thought("multiply")},
    ]
    assert len(records) == 14 and {r["role"] for r in records} == set(ROLES)


def test_step_metrics_score_the_single_agent_on_the_same_steps():
    backend = ScriptedBackend({
        Q1: ["add(a=2, b=3)", "Final answer: 5", "Final answer: 20"],  # the second turn answers too early
        Q2: ["subtract(a=9, b=4)", "Final answer: 5"],
        Q3: ["I should divide.", "Final answer: 3"],  # a thought decides nothing; a wrong answer
    })
    metrics = step_metrics(Agent(MATH, backend, AgentConfig()), METRIC_PROBLEMS)
    assert metrics["plan_steps"] == 7 and metrics["call_steps"] == 4
    assert metrics["plan_acc"] == pytest.approx(5 / 7)
    assert metrics["act_em"] == 0.5 and metrics["hallucination"] == 0.0
    assert metrics["arg_f1"] == 0.5 and metrics["answer_acc"] == pytest.approx(2 / 3)
    assert backend.calls == [7]


# --------------------------------------------------------------------------- one base, three adapters

CORPUS = [APPLES, "add(a=2, b=3)", "Final answer: 5", CALL_ADD, role_prompt(MATH, "planner")]
CHAT = [{"role": "system", "content": "Solve it."}, {"role": "user", "content": APPLES}]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """A tiny random base and three LoRA adapters with different random weights (not the identity)."""
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("adapters")
    tokenizer = build_tokenizer(CORPUS, vocab_size=300)
    model = build_model(tokenizer, hidden_size=64, num_layers=1, num_heads=2, seed=3)
    with torch.no_grad():  # larger weights than the training init: well separated logits, no near ties
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(parameter.numel()))
    model.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    paths = {}
    for seed, role in enumerate(ROLES):
        torch.manual_seed(seed)
        base = build_model(tokenizer, hidden_size=64, num_layers=1, num_heads=2, seed=3)
        base.load_state_dict(model.state_dict())
        config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
        get_peft_model(base, config).save_pretrained(folder / role)
        paths[role] = folder / role
    return folder / "base", paths


@pytest.mark.slow
def test_one_base_with_three_adapters_gives_each_role_its_own_model(adapters):
    base, paths = adapters
    backends = load_adapter_role_backends(base, paths, device="cpu")
    outputs = {role: backends[role].complete([CHAT], max_new_tokens=8)[0].text for role in ROLES}
    assert len(set(outputs.values())) == 3
    for role in ROLES:  # the same as that adapter loaded alone on its own copy of the base
        alone = HFBackend(base, adapter=paths[role], device="cpu").complete([CHAT], max_new_tokens=8)[0].text
        assert outputs[role] == alone
    # Switching back and forth changes nothing: the adapter is set before every batch.
    assert backends["planner"].complete([CHAT], max_new_tokens=8)[0].text == outputs["planner"]
    shared = {id(backends[role].backend.model) for role in ROLES}
    assert len(shared) == 1 and backends.name == f"{base}+{base.parent}"


@pytest.mark.slow
def test_the_role_adapters_drive_the_agent_from_one_loaded_base(adapters):
    base, paths = adapters
    agent = MultiAgent(MATH, load_adapter_role_backends(base, paths, device="cpu"),
                       MultiAgentConfig(max_steps=2, max_new_tokens=6))
    [t] = agent.run([problem()])
    assert t.model == f"{base}+{base.parent}" and t.stop in ("answer", "give_up", "max_steps", "max_errors")
    assert {m.get("name") for m in t.messages if m["role"] == "assistant"} <= set(ROLES)


def test_the_tokenizer_saved_with_the_adapters_is_used(adapters, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    base, paths = adapters
    copies = {role: shutil.copytree(paths[role], tmp_path / role) for role in ROLES}
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = tokenizer.chat_template.replace("Tools:", "Functions you may call:")
    tokenizer.save_pretrained(copies["planner"])  # as GLPFT saves the tokenizer it trained with
    backends = load_adapter_role_backends(base, copies, device="cpu")
    assert "Functions you may call:" in backends["caller"].backend.tokenizer.chat_template
    assert backends["caller"].complete([CHAT], max_new_tokens=2)[0].finish_reason in ("stop", "length")


def test_a_missing_role_adapter_is_refused(adapters):
    base, paths = adapters
    with pytest.raises(ValueError, match="missing \\['summarizer'\\]"):
        load_adapter_role_backends(base, {"planner": paths["planner"], "caller": paths["caller"]}, device="cpu")


@pytest.mark.slow
def test_the_adapters_switch_the_same_way_on_a_4bit_base(adapters):
    base, paths = adapters
    backends = load_adapter_role_backends(base, paths, device="cpu", load_in_4bit=True)
    outputs = {role: backends[role].complete([CHAT], max_new_tokens=8)[0].text for role in ROLES}
    assert len(set(outputs.values())) == 3
    for role in ROLES:
        alone = HFBackend(base, adapter=paths[role], device="cpu", load_in_4bit=True)
        assert outputs[role] == alone.complete([CHAT], max_new_tokens=8)[0].text
