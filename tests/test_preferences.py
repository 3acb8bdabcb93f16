"""Preference pairs: correct against incorrect chains of one prompt, split by problem, saved for TRL."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcdpo.agent import Agent, AgentConfig, Trajectory
from fcdpo.config import load_profile
from fcdpo.functions import Call
from fcdpo.messages import MessageError, arrow_safe, restore_messages, restore_tools
from fcdpo.preferences import (
    PreferenceError,
    assistant_turns,
    build_onpolicy_preference_dataset,
    build_pairs,
    build_preference_dataset,
    build_step_pairs,
    build_step_preference_dataset,
    first_divergence,
    load_preferences,
    read_report,
    save_preferences,
    split_by_problem,
)
from fcdpo.tasks import get_task
from tests.scripted import ScriptedBackend

# Which samples of problem i are correct: problem 0 is always solved, problem 1 never, the others
# alternate (samples 0 and 2 right, 1 and 3 wrong).
MIXED = {0: (True, True, True, True), 1: (False, False, False, False)}
ALTERNATING = (True, False, True, False)


def scripted_chains(task_name: str = "math", n: int = 5, seed: int = 1, syntax: str = "python",
                    outcomes: dict[int, tuple[bool, ...]] | None = None, k: int = 4) -> list[Trajectory]:
    """`k` chains per problem from a scripted model: the gold calls, then a right or a wrong answer.

    Sample s of a correct chain opens with s thoughts, so correct chains differ from each other; a
    wrong chain answers `wrong<s>`. `outcomes[i]` says which samples of problem i are correct
    (default: MIXED, then ALTERNATING).
    """
    outcomes = {**MIXED, **(outcomes or {})}
    task = get_task(task_name)
    problems = task.generate(n, seed=seed)
    chains = []
    for sample in range(k):
        scripts = {}
        for i, problem in enumerate(problems):
            correct = outcomes.get(i, ALTERNATING)[sample]
            calls = []
            for step in problem.gold_chain:
                call = Call.from_dict(step)
                calls.append([{"type": "function", "function": {"name": call.name, "arguments": dict(call.arguments)}}]
                             if syntax == "json" else call.to_python())
            thoughts = ["Let me work step by step."] * sample if correct else []
            answer = f"Final answer: {problem.answer}" if correct else f"Final answer: wrong{sample}"
            scripts[problem.question] = thoughts + calls + [answer]
        agent = Agent(task, ScriptedBackend(scripts), AgentConfig(syntax=syntax, max_steps=12))
        chains += agent.run(problems, samples=[sample] * len(problems))
    return chains


@pytest.fixture(scope="module")
def math_chains():
    return scripted_chains("math", n=5)


@pytest.fixture(scope="module")
def fol_chains():
    return scripted_chains("fol", n=4)


def test_pairs_join_a_correct_and_an_incorrect_chain_of_the_same_prompt(math_chains):
    rows, _ = build_pairs(math_chains, syntax="python")
    by_id = {t.id: t for t in math_chains}
    assert rows
    for row in rows:
        chosen, rejected = by_id[row["chosen_id"]], by_id[row["rejected_id"]]
        assert chosen.correct and not rejected.correct
        assert chosen.problem_id == rejected.problem_id == row["problem_id"]
        assert restore_messages(row["prompt"]) == chosen.messages[:2] == rejected.messages[:2]
        assert restore_messages(row["prompt"] + row["chosen"]) == chosen.messages
        assert restore_messages(row["prompt"] + row["rejected"]) == rejected.messages
        assert row["chosen"][-1]["content"].startswith("Final answer:")
        assert json.loads(row["tools"]) is None  # Python-call chains were prompted without schemas


def test_prompts_without_a_correct_or_an_incorrect_chain_are_dropped_and_counted(math_chains, fol_chains):
    rows, report = build_pairs(math_chains + fol_chains, syntax="python")
    for task, chains in (("math", math_chains), ("fol", fol_chains)):
        problem_ids = sorted({t.problem_id for t in chains})
        tally = report["tasks"][task]
        assert tally["no_correct"] == 1 and tally["no_incorrect"] == 1
        assert tally["problems"] == len(problem_ids) and tally["chains"] == len(chains)
        assert tally["prompts_paired"] == len(problem_ids) - 2
        paired = {r["problem_id"] for r in rows if r["task"] == task}
        all_correct = {t.problem_id for t in chains if t.problem_id not in paired and t.correct}
        all_wrong = {t.problem_id for t in chains if t.problem_id not in paired and not t.correct}
        assert len(all_correct) == len(all_wrong) == 1
    assert report["pairs"] == len(rows)


def test_pairs_per_prompt_caps_the_pairs_and_varies_both_sides(math_chains):
    rows, _ = build_pairs(math_chains, syntax="python", pairs_per_prompt=2)
    per_problem = {}
    for row in rows:
        per_problem.setdefault(row["problem_id"], []).append(row)
    for pairs in per_problem.values():  # 2 distinct correct × 2 distinct wrong chains each
        assert len(pairs) == 2
        assert len({p["chosen_id"] for p in pairs}) == 2 and len({p["rejected_id"] for p in pairs}) == 2
    more, _ = build_pairs(math_chains, syntax="python", pairs_per_prompt=10)
    assert len(more) == 4 * len(per_problem)  # every one of the 2 × 2 combinations, no more


def test_identical_chains_are_collapsed_and_never_paired(math_chains):
    chains = [t for t in math_chains if t.problem_id == math_chains[2].problem_id]
    right = next(t for t in chains if t.correct)
    twin = replace(right, id=right.id + "-twin", sample=9, correct=False)  # same turns, graded wrong
    copy = replace(right, id=right.id + "-copy", sample=8)
    rows, report = build_pairs(chains + [twin, copy], syntax="python", pairs_per_prompt=10)
    tally = report["tasks"]["math"]
    assert tally["duplicate_chains"] == 1 and tally["identical_pairs"] == 1
    assert all(assistant_turns(r["chosen"]) != assistant_turns(r["rejected"]) for r in rows)
    assert all(r["chosen_id"] != copy.id for r in rows)
    kept, report = build_pairs(chains + [twin, copy], syntax="python", pairs_per_prompt=10, drop_identical=False)
    assert report["tasks"]["math"]["identical_pairs"] == 0 and len(kept) > len(rows)


def test_balancing_gives_every_task_the_same_number_of_pairs(math_chains, fol_chains):
    rows, report = build_pairs(math_chains + fol_chains, syntax="python", balance_tasks=True)
    unbalanced, _ = build_pairs(math_chains + fol_chains, syntax="python")
    counts = {task: sum(r["task"] == task for r in rows) for task in ("math", "fol")}
    assert counts["math"] == counts["fol"] == min(sum(r["task"] == t for r in unbalanced) for t in counts)
    assert sum(t["balanced_away"] for t in report["tasks"].values()) == len(unbalanced) - len(rows)


def test_pairing_is_deterministic_for_a_seed_whatever_the_input_order(math_chains):
    first, _ = build_pairs(math_chains, syntax="python", pairs_per_prompt=2, seed=3)
    again, _ = build_pairs(list(reversed(math_chains)), syntax="python", pairs_per_prompt=2, seed=3)
    assert first == again


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.dictionaries(st.sampled_from(["math", "fol"]),
                          st.lists(st.integers(1, 4), min_size=1, max_size=12), min_size=1),
    validation=st.floats(0.0, 0.9),
    seed=st.integers(0, 1000),
)
def test_split_by_problem_never_puts_a_problem_on_both_sides(sizes, validation, seed):
    rows = [{"task": task, "problem_id": f"{task}-{p}", "pair": j}
            for task, pairs in sizes.items() for p, n in enumerate(pairs) for j in range(n)]
    splits = split_by_problem(rows, validation, seed)
    sides = {name: {(r["task"], r["problem_id"]) for r in part} for name, part in splits.items()}
    assert not sides["train"] & sides["validation"]
    assert sorted(map(str, splits["train"] + splits["validation"])) == sorted(map(str, rows))
    for task, pairs in sizes.items():
        held = sum(1 for t, _ in sides["validation"] if t == task)
        expected = round(validation * len(pairs))
        assert held == (max(expected, 1) if validation > 0 and len(pairs) >= 2 else expected)
    assert split_by_problem(rows, validation, seed) == splits


def test_a_validation_fraction_outside_zero_to_one_is_an_error():
    with pytest.raises(PreferenceError, match="validation"):
        split_by_problem([], 1.0)


def test_tool_call_arguments_survive_the_dataset_on_disk(tmp_path):
    chains = scripted_chains("math", n=4, syntax="json")
    rows, report = build_pairs(chains, syntax="json")
    dataset = save_preferences(split_by_problem(rows, 0.3, 0), tmp_path, report)
    loaded = load_preferences(tmp_path)
    by_id = {t.id: t for t in chains}
    stored = list(loaded["train"]) + list(loaded["validation"])
    assert len(stored) == len(rows) == len(dataset["train"]) + len(dataset["validation"])
    calls = 0
    for row in stored:
        chosen = by_id[row["chosen_id"]]
        assert restore_messages(row["prompt"] + row["chosen"]) == chosen.messages  # arguments are dicts again
        assert restore_tools(row["tools"]) == chosen.tools
        calls += sum(1 for m in row["chosen"] if m["tool_calls"])
        for message in row["chosen"]:
            for call in message["tool_calls"] or []:
                assert isinstance(call["function"]["arguments"], str)  # JSON strings in Arrow
    assert calls > 0
    jsonl = [json.loads(line) for name in ("train", "validation")
             for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert [r["chosen_id"] for r in jsonl] == [r["chosen_id"] for r in stored]
    assert all(restore_messages(r["chosen"]) == restore_messages(s["chosen"]) for r, s in zip(jsonl, stored))
    saved = read_report(tmp_path)["tasks"]["math"]
    assert saved["train_pairs"] == len(loaded["train"]) and saved["validation_pairs"] == len(loaded["validation"])


def test_an_empty_validation_split_is_still_a_dataset_with_the_columns(tmp_path, math_chains):
    rows, _ = build_pairs(math_chains, syntax="python")
    save_preferences(split_by_problem(rows, 0.0), tmp_path)
    dataset = load_preferences(tmp_path)
    assert len(dataset["validation"]) == 0 and dataset["validation"].column_names == dataset["train"].column_names
    assert len(dataset["train"]) == len(rows)


@pytest.mark.parametrize("syntax", ["python", "json"])
def test_the_tokenized_prompt_is_an_exact_prefix_of_both_completions(syntax):
    from fcdpo.tinylab import build_tokenizer

    chains = scripted_chains("fol", n=4, syntax=syntax)
    rows, _ = build_pairs(chains, syntax=syntax)
    tokenizer = build_tokenizer([m.get("content") or "" for t in chains for m in t.messages], vocab_size=400)
    for row in rows:
        tools = restore_tools(row["tools"])
        prompt = restore_messages(row["prompt"])
        prompt_ids = tokenizer.apply_chat_template(prompt, tools=tools, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        for side in ("chosen", "rejected"):
            ids = tokenizer.apply_chat_template(prompt + restore_messages(row[side]), tools=tools, tokenize=True,
                                                return_dict=True)["input_ids"]
            assert ids[: len(prompt_ids)] == prompt_ids and len(ids) > len(prompt_ids)


def test_a_message_with_an_unknown_key_is_refused_not_dropped():
    with pytest.raises(MessageError, match="reasoning"):
        arrow_safe([{"role": "assistant", "content": "x", "reasoning": "hidden"}])


def test_bad_settings_are_errors(math_chains):
    with pytest.raises(PreferenceError, match="syntax"):
        build_pairs(math_chains, syntax="yaml")
    with pytest.raises(PreferenceError, match="pairs_per_prompt"):
        build_pairs(math_chains, syntax="python", pairs_per_prompt=0)


def test_the_profile_stage_reads_the_rollouts_and_writes_the_run_folder(tmp_path, math_chains, fol_chains):
    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "preferences.validation": 0.25})
    (tmp_path / "rollouts").mkdir()
    for task, chains in (("math", math_chains), ("fol", fol_chains)):
        with (tmp_path / "rollouts" / f"teacher-{task}.jsonl").open("w") as out:
            out.writelines(json.dumps(t.to_dict()) + "\n" for t in chains)
    dataset, report = build_preference_dataset(profile)
    assert set(report["tasks"]) == {"math", "fol"}
    assert len(dataset["train"]) + len(dataset["validation"]) == report["pairs"] > 0
    assert report["settings"]["validation"] == 0.25
    assert (tmp_path / "preferences" / "dataset").is_dir() and (tmp_path / "preferences" / "train.jsonl").exists()


def test_no_rollouts_is_an_error_that_says_what_to_run(tmp_path):
    with pytest.raises(PreferenceError, match="notebook 01"):
        build_preference_dataset(load_profile("tiny-cpu", {"run_dir": str(tmp_path)}))


# --------------------------------------------------------------------------- step-level pairs


@pytest.mark.parametrize("rest_of_chain", [False, True])
@pytest.mark.parametrize("syntax", ["python", "json"])
def test_step_pairs_share_the_history_up_to_the_cut_token_for_token(syntax, rest_of_chain):
    from fcdpo.tinylab import build_tokenizer

    chains = scripted_chains("math", n=5, syntax=syntax) + scripted_chains("fol", n=4, syntax=syntax)
    rows, report = build_step_pairs(chains, syntax=syntax, rest_of_chain=rest_of_chain)
    assert rows and report["pairs"] == len(rows)
    by_id = {t.id: t for t in chains}
    tokenizer = build_tokenizer([m.get("content") or "" for t in chains for m in t.messages], vocab_size=600)
    cut_late = 0
    for row in rows:
        chosen, rejected = by_id[row["chosen_id"]], by_id[row["rejected_id"]]
        prompt = restore_messages(row["prompt"])
        shared = len(prompt)
        assert prompt == chosen.messages[:shared] == rejected.messages[:shared]
        first_chosen, first_rejected = restore_messages(row["chosen"])[0], restore_messages(row["rejected"])[0]
        assert first_chosen["role"] == first_rejected["role"] == "assistant" and first_chosen != first_rejected
        assert first_chosen == chosen.messages[shared] and first_rejected == rejected.messages[shared]
        if rest_of_chain:
            assert prompt + restore_messages(row["chosen"]) == chosen.messages
            assert prompt + restore_messages(row["rejected"]) == rejected.messages
        else:
            assert len(row["chosen"]) == len(row["rejected"]) == 1
        cut_late += any(m["role"] == "tool" for m in prompt)
        # Token for token: the prompt as rendered for generation begins both whole chains as rendered.
        tools = restore_tools(row["tools"])
        prompt_ids = tokenizer.apply_chat_template(prompt, tools=tools, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        for chain in (chosen, rejected):
            ids = tokenizer.apply_chat_template(chain.messages, tools=tools, tokenize=True,
                                                return_dict=True)["input_ids"]
            assert ids[: len(prompt_ids)] == prompt_ids and len(ids) > len(prompt_ids)
    assert cut_late  # some pairs part ways after tool results (the wrong final answers), not at the start
    assert sum(sum(t["cut_turns"].values()) for t in report["tasks"].values()) == len(rows)


def test_step_pairs_never_mix_problems_and_prefer_the_correct_chain(math_chains, fol_chains):
    chains = math_chains + fol_chains
    rows, report = build_step_pairs(chains, syntax="python", pairs_per_prompt=2)
    by_id = {t.id: t for t in chains}
    for row in rows:
        chosen, rejected = by_id[row["chosen_id"]], by_id[row["rejected_id"]]
        assert chosen.correct and not rejected.correct
        assert (chosen.task, chosen.problem_id) == (rejected.task, rejected.problem_id) == (row["task"], row["problem_id"])
        assert chosen.messages[:2] == rejected.messages[:2]  # the same rendered prompt
    per_problem = {}
    for row in rows:
        per_problem[(row["task"], row["problem_id"])] = per_problem.get((row["task"], row["problem_id"]), 0) + 1
    assert per_problem and max(per_problem.values()) <= 2
    assert report["tasks"]["math"]["no_incorrect"] == 1 and report["tasks"]["math"]["no_correct"] == 1
    # Rows of one problem are never repeated.
    keys = [json.dumps([r["prompt"], r["chosen"], r["rejected"]]) for r in rows]
    assert len(keys) == len(set(keys))


def test_identical_or_prefix_chains_give_no_step_pair(math_chains):
    solved = next(t for t in math_chains if t.correct and t.sample == 0)
    twin = replace(solved, id=solved.id + "-twin", correct=False, sample=9)
    rows, report = build_step_pairs([solved, twin], syntax="python")
    assert rows == [] and report["tasks"]["math"]["identical_pairs"] == 1
    rows, report = build_step_pairs([solved, twin], syntax="python", drop_identical=False)
    assert rows == [] and report["tasks"]["math"]["no_divergence"] == 1
    cut_short = replace(solved, id=solved.id + "-short", correct=False, sample=8, messages=solved.messages[:-1])
    rows, report = build_step_pairs([solved, cut_short], syntax="python")
    assert rows == [] and report["tasks"]["math"]["no_divergence"] == 1
    assert first_divergence(solved.messages, solved.messages) is None


def test_step_pairs_load_as_a_preference_dataset(tmp_path, math_chains, fol_chains):
    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "preferences.validation": 0.25,
                                        "preferences.step_rest_of_chain": True})
    (tmp_path / "rollouts").mkdir()
    for task, chains in (("math", math_chains), ("fol", fol_chains)):
        with (tmp_path / "rollouts" / f"teacher-{task}.jsonl").open("w") as out:
            out.writelines(json.dumps(t.to_dict()) + "\n" for t in chains)
    dataset, report = build_step_preference_dataset(profile)
    assert report["settings"]["rest_of_chain"] is True and report["settings"]["kind"] == "step"
    assert len(dataset["train"]) + len(dataset["validation"]) == report["pairs"] > 0
    assert (tmp_path / "preferences-step" / "dataset").is_dir()
    assert not (tmp_path / "preferences").exists()  # the paper's pairs are left alone
    with pytest.raises(PreferenceError, match="syntax"):
        build_step_pairs(math_chains, syntax="yaml")


# --------------------------------------------------------------------------- on-policy pairs


def recording_students(problems, profile):
    """`backend_for(adapter)` as `fcdpo.training.train_onpolicy` takes it: a fresh `AlternatingStudent`
    per round, named by its round, and the list of adapters each round was sampled with."""
    sampled_with = []

    def backend_for(adapter):
        sampled_with.append(adapter)
        student = AlternatingStudent(problems, profile)
        student.name = f"alternating-{len(sampled_with)}"
        return student

    return backend_for, sampled_with


class AlternatingStudent:
    """A test-double student: the gold calls of each problem, then an answer that is right on every
    other chain of that problem (the 1st, 3rd, … answer given to a question) and wrong otherwise."""

    name = "alternating-student"

    def __init__(self, problems, profile):
        # keyed by the user turn that opens each problem's chain, as the profile's task writes it
        opening = {p.question: profile.task(p.task).user_message(p) for p in problems}
        self.calls = {opening[p.question]: [Call.from_dict(step).to_python() for step in p.gold_chain]
                      for p in problems}
        self.answers = {opening[p.question]: p.answer for p in problems}
        self.given: dict[str, int] = {}

    def complete(self, chats, *, tools=None, max_new_tokens=128, temperature=0.0, seed=None):
        from fcdpo.backends import Completion

        replies = []
        for chat in chats:
            question = chat[1]["content"]
            turn = sum(1 for m in chat if m["role"] == "assistant")
            if turn < len(self.calls[question]):
                text = self.calls[question][turn]
            else:
                count = self.given[question] = self.given.get(question, 0) + 1
                text = f"Final answer: {self.answers[question] if count % 2 else f'wrong{count}'}"
            replies.append(Completion(text, None, prompt_tokens=10, completion_tokens=3, finish_reason="stop"))
        return replies


def test_onpolicy_pairs_come_from_the_students_own_graded_chains_of_one_problem(tmp_path):
    from fcdpo.rollouts import read_trajectories
    from fcdpo.tasks import problem_sets

    profile = load_profile("tiny-cpu", {
        "run_dir": str(tmp_path), "rollouts.k": 4, "preferences.validation": 0.0,
        "tasks.math.train": 3, "tasks.math.eval": 2, "tasks.math.dev": 0,
        "tasks.fol.train": 2, "tasks.fol.eval": 2, "tasks.fol.dev": 0})
    train = [p for splits in problem_sets(profile).values() for p in splits["train"]]
    dataset, report = build_onpolicy_preference_dataset(profile, backend=AlternatingStudent(train, profile))
    chains = {t.id: t for name in ("math", "fol")
              for t in read_trajectories(tmp_path / "rollouts" / f"student-{name}.jsonl")}
    assert len(chains) == 4 * len(train)  # k chains per training problem, written where rollouts go
    assert all(t.model == "alternating-student" for t in chains.values())
    assert {name: r["accuracy"] for name, r in report["rollouts"].items()} == {"math": 0.5, "fol": 0.5}
    assert report["settings"]["kind"] == "onpolicy"
    rows = list(dataset["train"])
    assert len(rows) == report["pairs"] > 0
    assert {r["problem_id"] for r in rows} == {p.id for p in train}  # every problem has right and wrong chains
    for row in rows:
        chosen, rejected = chains[row["chosen_id"]], chains[row["rejected_id"]]
        assert chosen.correct and not rejected.correct  # graded by the task's answer check
        assert chosen.problem_id == rejected.problem_id == row["problem_id"]
    assert (tmp_path / "preferences-onpolicy" / "dataset").is_dir()


def test_a_multi_process_launch_reads_the_arms_pairs_and_never_samples(tmp_path, monkeypatch, math_chains):
    from fcdpo.preferences import method_preferences

    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "preferences.validation": 0.0})
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(PreferenceError, match="in one process first"):
        method_preferences(profile, "onpolicy_dpo")
    assert not (tmp_path / "rollouts").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    built, _ = build_step_preference_dataset(profile, math_chains)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert method_preferences(profile, "step_dpo")["train"]["chosen_id"] == built["train"]["chosen_id"]
