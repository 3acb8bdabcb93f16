"""The agent loop, driven by a scripted test-double model."""

import threading

import pytest

from fcdpo.agent import Agent, AgentConfig, advance_all, gold_messages, read_turn
from fcdpo.functions import FunctionSet
from fcdpo.tasks import Problem, get_task
from tests.scripted import ScriptedBackend

MATH = get_task("math")


def problem(question="Ann has 2 apples and gets 3 more. How many apples does she have?", answer="5", pid="p1"):
    return Problem(id=pid, task="math", question=question, answer=answer,
                   gold_chain=[{"name": "add", "arguments": {"a": 2, "b": 3}}], meta={"steps": 1})


def run(scripts, problems=None, **config):
    problems = problems or [problem()]
    backend = ScriptedBackend(scripts)
    agent = Agent(MATH, backend, AgentConfig(**config))
    return agent.run(problems), backend


def test_a_correct_chain_calls_reads_the_observation_and_answers():
    q = problem().question
    [t], _ = run({q: ["add(a=2, b=3)", "Final answer: 5"]})
    assert t.correct and t.answer == "5" and t.stop == "answer"
    assert t.steps == 2 and t.calls == 1 and sum(t.errors.values()) == 0
    assert [m["role"] for m in t.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert t.messages[3] == {"role": "tool", "name": "add", "content": "5"}


def test_a_parse_error_is_explained_and_the_model_recovers():
    q = problem().question
    [t], _ = run({q: ["add(a=2, b=)", "add(a=2, b=3)", "Final answer: 5"]})
    assert t.correct and t.errors["parse_error"] == 1
    feedback = t.messages[3]
    assert feedback["role"] == "user" and feedback["content"].startswith("Error: syntax")


def test_an_unknown_function_gets_an_error_observation_listing_the_real_ones():
    q = problem().question
    [t], _ = run({q: ["plus(a=2, b=3)", "add(a=2, b=3)", "Final answer: 5"]})
    assert t.correct and t.errors["unknown_function"] == 1
    assert "unknown function 'plus'" in t.messages[3]["content"] and "add" in t.messages[3]["content"]


def test_bad_arguments_get_an_error_observation_naming_the_argument():
    q = problem().question
    [t], _ = run({q: ['add(a="two", b=3)', "add(a=2, b=3)", "Final answer: 5"]})
    assert t.correct and t.errors["bad_arguments"] == 1
    assert "'a'" in t.messages[3]["content"]


def test_a_chain_that_never_answers_stops_at_the_step_limit():
    q = problem().question
    [t], _ = run({q: ["add(a=2, b=3)"]}, max_steps=4)
    assert t.stop == "max_steps" and t.steps == 4 and t.answer is None and not t.correct


def test_an_answer_with_no_calls_is_graded_like_any_other():
    q = problem().question
    [right], _ = run({q: ["Final answer: 5"]})
    assert right.correct and right.calls == 0 and right.steps == 1
    [wrong], _ = run({q: ["Final answer: 6"]})
    assert not wrong.correct and wrong.answer == "6"


def test_repeated_errors_end_the_chain():
    q = problem().question
    [t], _ = run({q: ["add(a=2, b=)"]}, max_errors=2, max_steps=10)
    assert t.stop == "max_errors" and t.errors["parse_error"] == 2


def test_the_token_budget_ends_the_chain():
    q = problem().question
    [t], _ = run({q: ["I think about it " * 10]}, token_budget=30, max_steps=10)
    assert t.stop == "token_budget" and t.tokens["completion"] >= 30


def test_a_thought_is_kept_and_the_chain_continues():
    q = problem().question
    [t], _ = run({q: ["First I add the apples.", "add(a=2, b=3)", "Final answer: 5"]})
    assert t.correct and sum(t.errors.values()) == 0 and t.steps == 3


def test_unfinished_chains_advance_together_in_one_batch_per_step():
    quick = problem(pid="quick")
    slow = problem(question="Bo has 2 pens and finds 3. How many pens?", pid="slow")
    [a, b], backend = run({quick.question: ["Final answer: 5"],
                           slow.question: ["add(a=2, b=3)", "Final answer: 5"]}, problems=[quick, slow])
    assert a.correct and b.correct
    assert backend.calls == [2, 1]


def test_a_steps_function_calls_run_side_by_side_and_give_the_same_chains(monkeypatch):
    # Each call waits at a two-party barrier, so it only returns if another chain's call runs at
    # the same time; run one after the other, every call would fail with a broken barrier.
    monkeypatch.setattr("fcdpo.agent._CALL_THREADS", 2)
    barrier = threading.Barrier(2, timeout=1.5)

    def paired_add(a: float, b: float) -> float:
        """Add, once another call is running too.

        Example: paired_add(a=1, b=2)

        Args:
            a: A number.
            b: A number.
        """
        barrier.wait()
        return a + b

    class PairedMath(type(MATH)):
        def functions(self, problem=None):
            return FunctionSet([paired_add], time_limit=5.0)

    problems = [problem(question=f"Q{i}: add {i} and 1.", answer=str(i + 1), pid=f"p{i}") for i in range(4)]
    backend = ScriptedBackend({p.question: [f"paired_add(a={i}, b=1)", f"Final answer: {i + 1}"]
                               for i, p in enumerate(problems)})
    chains = Agent(PairedMath(), backend, AgentConfig()).run(problems)
    assert [t.messages[3]["content"] for t in chains] == ["1", "2", "3", "4"]
    assert [t.correct for t in chains] == [True] * 4 and all(t.errors["execution_error"] == 0 for t in chains)


def test_advance_all_reraises_a_chains_error_after_running_the_others():
    done = []

    def advance(chain, value):
        if chain == "bad":
            raise RuntimeError("boom")
        done.append((chain, value))

    with pytest.raises(RuntimeError, match="boom"):
        advance_all(advance, ["a", "bad", "c"], [1, 2, 3])
    assert sorted(done) == [("a", 1), ("c", 3)]


def test_native_json_tool_calls_are_executed():
    q = problem().question
    call = [{"type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]
    [t], _ = run({q: [call, "Final answer: 5"]}, syntax="json")
    assert t.correct and t.calls == 1
    assert t.messages[2]["tool_calls"][0]["function"] == {"name": "add", "arguments": {"a": 2, "b": 3}}


def test_gold_messages_render_the_gold_chain_with_its_observations():
    messages = gold_messages(problem(), MATH)
    assert messages[2] == {"role": "assistant", "content": "add(a=2, b=3)"}
    assert messages[3]["content"] == "5"
    assert messages[-1] == {"role": "assistant", "content": "Final answer: 5"}


@pytest.mark.parametrize("text, kind", [
    ("multiply(a=3, b=4)", "call"),
    ("Final answer: 12", "answer"),
    ("I should multiply next.", "thought"),
    ("multiply(a=3, b=", "parse_error"),
    ("__import__('os').system('x')", "parse_error"),
])
def test_each_turn_is_a_call_an_answer_a_thought_or_a_parse_error(text, kind):
    assert read_turn(text, None, MATH.functions(), "python").kind == kind


def test_two_calls_on_one_line_are_an_error_the_chain_survives():
    text = "add(a=2, b=3); multiply(a=5, b=4)"
    [chain], _ = run({problem().question: [text, "add(a=2, b=3)", "Final answer: 5"]})
    assert chain.errors["parse_error"] == 1 and chain.calls == 1 and chain.correct
    assert "2 function calls on one line" in chain.messages[3]["content"]
    assert [m["content"] for m in chain.messages if m["role"] == "tool"] == ["5"]  # multiply never ran


def test_an_unknown_syntax_is_refused():
    with pytest.raises(ValueError, match="syntax"):
        AgentConfig(syntax="yaml")


def test_the_agent_gives_each_chain_functions_of_its_own_problem():
    # echo_next functions hand out the next statement of the chain's own question, as in the gold chain
    task = get_task("fol", ["add_fact", "add_rule", "query"], echo_next=True)
    problems = task.generate(3, seed=4, min_hops=1, max_hops=2, distractors=1, chain="text")
    gold = {task.user_message(p): gold_messages(p, task) for p in problems}
    backend = ScriptedBackend({q: [m["content"] for m in chain[2::2]] for q, chain in gold.items()})
    for chain in Agent(task, backend, AgentConfig()).run(problems):
        assert chain.correct and chain.messages == gold[chain.messages[1]["content"]]
        assert chain.messages[3]["content"].startswith("ok. Next: ")
        assert chain.messages[1]["content"].splitlines()[-1].startswith("Next: ")
