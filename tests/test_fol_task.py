"""The FOL task: generated problems, their gold chains, the functions, the answer check, FOLIO."""

import collections
import json
import logging

import pytest

from fcdpo.tasks import get_task
from fcdpo.tasks.base import Problem
from fcdpo.tasks.fol import QUESTION_PREFIX, FolTask, concept_predicate, entity_constant, statements_of
from fcdpo.tasks.logic import KnowledgeBase

TASK = FolTask()

# (seed, settings): fictional and real concepts, every hop count, with and without distractors.
SETTINGS = [
    (0, dict(min_hops=1, max_hops=1, distractors=0)),
    (1, dict(min_hops=1, max_hops=3, distractors=2)),
    (2, dict(min_hops=3, max_hops=5, distractors=4)),
    (3, dict(min_hops=5, max_hops=5, distractors=6)),
    (4, dict(min_hops=1, max_hops=5, distractors=3, fictional=False)),
    (5, dict(min_hops=4, max_hops=5, distractors=6, fictional=False)),
    (6, dict(min_hops=1, max_hops=2, distractors=1, fictional=False)),
]
PER_SETTING = 300  # 2,100 problems in all


@pytest.fixture(scope="module")
def problems():
    return {seed: TASK.generate(PER_SETTING, seed=seed, **kwargs) for seed, kwargs in SETTINGS}


@pytest.mark.slow
def test_every_gold_chain_runs_cleanly_and_ends_in_the_label(problems):
    failures = []
    for batch in problems.values():
        for problem in batch:
            observations = TASK.functions().run_chain(problem.gold_chain)
            if not all(o.ok for o in observations) or not TASK.check(observations[-1].content, problem.answer):
                failures.append((problem.id, [o.content for o in observations], problem.answer))
    assert sum(len(b) for b in problems.values()) == len(SETTINGS) * PER_SETTING
    assert failures == []


def test_all_premises_together_prove_the_label_so_distractors_never_change_it(problems):
    for batch in problems.values():
        for problem in batch[:60]:
            kb = KnowledgeBase()
            for formula in problem.meta["premises_fol"]:
                kb.add(formula)
            assert kb.prove(problem.meta["conclusion_fol"]) == problem.answer, problem.question


def test_gold_chains_add_then_query_once(problems):
    for batch in problems.values():
        for problem in batch:
            names = [step["name"] for step in problem.gold_chain]
            assert names[-1] == "query"
            assert set(names[:-1]) <= {"add_fact", "add_rule"} and names[0] == "add_fact"


def test_labels_are_roughly_balanced(problems):
    counts = collections.Counter(p.answer for batch in problems.values() for p in batch)
    total = sum(counts.values())
    assert set(counts) == {"True", "False", "Unknown"}
    for count in counts.values():
        assert 0.27 < count / total < 0.40, counts


def test_hop_counts_stay_in_range_and_match_the_proof_path(problems):
    for seed, kwargs in SETTINGS:
        seen = set()
        for problem in problems[seed]:
            hops = problem.meta["hops"]
            seen.add(hops)
            assert kwargs["min_hops"] <= hops <= kwargs["max_hops"]
            rules = [s for s in problem.gold_chain if s["name"] == "add_rule"]
            if problem.answer == "Unknown":
                assert len(rules) >= hops  # everything the entity's facts reach
            else:
                assert len(rules) == hops  # exactly the path from the fact to the answer
        assert seen == set(range(kwargs["min_hops"], kwargs["max_hops"] + 1))


def test_meta_and_ids_follow_the_problem_format(problems):
    for seed, batch in problems.items():
        for i, problem in enumerate(batch):
            assert problem.id == f"fol-{seed}-{i}"
            assert problem.task == "fol"
            assert problem.meta["label"] == problem.answer
            assert problem.meta["source"] == "generated"
            assert Problem.from_dict(json.loads(json.dumps(problem.to_dict()))) == problem


def test_questions_state_premises_then_ask_true_false_or_unknown(problems):
    for batch in problems.values():
        for problem in batch[:50]:
            premises, question = problem.question.split("\n")
            assert question.startswith(QUESTION_PREFIX + " ") and question.endswith(".")
            assert premises.endswith(".") and len(premises) < 800


def test_real_concept_problems_use_real_words():
    problem = TASK.generate(1, seed=0, min_hops=5, max_hops=5, fictional=False)[0]
    words = {"feline", "carnivore", "mammal", "vertebrate", "animal", "living thing", "plant", "bird"}
    assert any(w in problem.question for w in words)
    assert "umpus" not in problem.question


def test_generation_is_deterministic_per_seed():
    first = TASK.generate(40, seed=7, max_hops=4)
    assert first == TASK.generate(40, seed=7, max_hops=4)
    assert first[:10] == TASK.generate(10, seed=7, max_hops=4)
    assert [p.question for p in first] != [p.question for p in TASK.generate(40, seed=8, max_hops=4)]


def test_texts_vary_in_wording():
    text = " ".join(p.question for p in TASK.generate(100, seed=0))
    for phrase in ("Every ", "Each ", "All ", "No ", " are not ", "If something is", " is not "):
        assert phrase in text


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(min_hops=0),
        dict(max_hops=6),
        dict(min_hops=3, max_hops=2),
        dict(distractors=-1),
        dict(distractors=7),
    ],
)
def test_impossible_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        TASK.generate(1, **kwargs)


# ---------------------------------------------------------------------------------------------
# Functions


def test_structured_helpers_build_and_query_a_knowledge_base():
    functions = TASK.functions()
    run = functions.execute
    assert run({"name": "add_fact", "arguments": {"entity": "Alex", "concept": "a wumpus"}}).content == "ok"
    assert run({"name": "add_rule", "arguments": {"premise": "wumpus", "conclusion": "tumpus"}}).content == "ok"
    assert run({"name": "add_rule", "arguments": {"premise": "tumpus", "conclusion": "red", "negated": True}}).ok
    assert run({"name": "query", "arguments": {"entity": "alex", "concept": "Tumpus"}}).content == "True"
    assert run({"name": "query", "arguments": {"entity": "Alex", "concept": "red"}}).content == "False"
    not_red = {"entity": "Alex", "concept": "red", "negated": True}
    assert run({"name": "query", "arguments": not_red}).content == "True"
    assert run({"name": "query", "arguments": {"entity": "Alex", "concept": "yumpus"}}).content == "Unknown"


def test_helpers_and_raw_formulas_share_one_knowledge_base():
    functions = TASK.functions()
    steps = [
        {"name": "add_premise", "arguments": {"formula": "∀x (Wumpus(x) → Living_thing(x))"}},
        {"name": "add_fact", "arguments": {"entity": "Sally Smith", "concept": "wumpus"}},
        {"name": "prove", "arguments": {"conclusion": "Living_thing(sally_smith)"}},
        {"name": "query", "arguments": {"entity": "Sally Smith", "concept": "living thing"}},
    ]
    assert [o.content for o in functions.run_chain(steps)] == ["ok", "ok", "True", "True"]


def test_each_function_set_starts_with_an_empty_knowledge_base():
    first = TASK.functions()
    first.execute({"name": "add_fact", "arguments": {"entity": "Alex", "concept": "wumpus"}})
    second = TASK.functions()
    query = {"name": "query", "arguments": {"entity": "Alex", "concept": "wumpus"}}
    assert first.execute(query).content == "True"
    assert second.execute(query).content == "Unknown"


@pytest.mark.parametrize(
    "call, message",
    [
        ({"name": "add_fact", "arguments": {"entity": "Alex", "concept": "wum-pus"}}, "'-'"),
        ({"name": "add_fact", "arguments": {"entity": "", "concept": "wumpus"}}, "empty"),
        ({"name": "add_fact", "arguments": {"entity": "forall", "concept": "wumpus"}}, "reserved"),
        ({"name": "add_fact", "arguments": {"entity": "Alex", "concept": "x" * 61}}, "longer"),
        ({"name": "add_rule", "arguments": {"premise": "wumpus", "conclusion": "Tumpus(x)"}}, "'('"),
        ({"name": "add_premise", "arguments": {"formula": "∀x (Wumpus(x) →"}}, "position"),
        ({"name": "add_premise", "arguments": {"formula": "__import__('os')"}}, "position 11"),
        ({"name": "prove", "arguments": {"conclusion": "Tumpus(alex"}}, "unclosed"),
    ],
)
def test_bad_arguments_come_back_as_error_observations(call, message):
    observation = TASK.functions().execute(call)
    assert not observation.ok
    assert observation.content.startswith("Error: ") and message in observation.content


def test_contradictory_premises_are_an_error_observation_not_a_proof():
    steps = [
        {"name": "add_fact", "arguments": {"entity": "Alex", "concept": "wumpus"}},
        {"name": "add_fact", "arguments": {"entity": "Alex", "concept": "wumpus", "negated": True}},
        {"name": "query", "arguments": {"entity": "Alex", "concept": "tumpus"}},
    ]
    last = TASK.functions().run_chain(steps)[-1]
    assert not last.ok and "contradict" in last.content
    assert not TASK.check(last.content, "True")


def test_names_are_normalised_into_identifiers():
    assert entity_constant("Alex") == "alex"
    assert entity_constant("  Sally   Smith ") == "sally_smith"
    assert concept_predicate("an impus") == "Impus"
    assert concept_predicate("Living thing") == "Living_thing"
    with pytest.raises(ValueError):
        concept_predicate("wumpus; drop")


def test_the_system_prompt_shows_every_function_with_an_example():
    prompt = TASK.system_prompt()
    assert prompt.startswith(TASK.instructions)
    for name in ("add_fact", "add_rule", "query", "add_premise", "prove"):
        assert f"{name}(" in prompt
    assert 'add_fact(entity="Alex", concept="wumpus")' in prompt
    assert get_task("fol").name == "fol"


def test_docstring_examples_are_calls_the_engine_accepts():
    functions = TASK.functions()
    for line in functions.describe().splitlines():
        if line.strip().startswith("Example: "):
            call = functions.parse(line.split("Example: ", 1)[1])
            assert functions.execute(call).ok, line


# ---------------------------------------------------------------------------------------------
# Answer check


@pytest.mark.parametrize(
    "predicted, gold, expected",
    [
        ("True", "True", True),
        ("true", "True", True),
        ("Final answer: True", "True", True),
        ("The statement is false.", "False", True),
        ("Uncertain", "Unknown", True),
        ("unknown", "Uncertain", True),
        ("It is not true at first sight, but in the end it is False", "False", True),
        ("False", "True", False),
        ("Unknown", "False", False),
        ("I cannot tell", "Unknown", False),
        ("", "True", False),
        (None, "True", False),
        ("Error: unknown function 'querry'", "Unknown", False),
        ("TRUE.", "True", True),
        ("untrue", "True", False),
    ],
)
def test_check_reads_the_last_label_word(predicted, gold, expected):
    assert TASK.check(predicted, gold) is expected


# ---------------------------------------------------------------------------------------------
# FOLIO

FOLIO_RECORDS = [
    {
        "story_id": 1,
        "example_id": 101,
        "premises": "All people who regularly drink coffee are dependent on caffeine.\n"
        "People either regularly drink coffee or joke about being addicted to caffeine.\n"
        "No one who jokes about being addicted to caffeine is unaware that caffeine is a drug.\n"
        "Rina is either a student and unaware that caffeine is a drug, or neither a student nor "
        "unaware that caffeine is a drug.",
        "premises-FOL": "∀x (DrinkRegularly(x, coffee) → IsDependentOn(x, caffeine))\n"
        "∀x (DrinkRegularly(x, coffee) ⊕ Jokes(x, addictedToCaffeine))\n"
        "∀x (Jokes(x, addictedToCaffeine) → ¬Unaware(x, caffeineIsDrug))\n"
        "(Student(rina) ∧ Unaware(rina, caffeineIsDrug)) ⊕ "
        "¬(Student(rina) ∨ Unaware(rina, caffeineIsDrug))",
        "conclusion": "If Rina is a student, then she is dependent on caffeine.",
        "conclusion-FOL": "Student(rina) → IsDependentOn(rina, caffeine)",
        "label": "True",
    },
    {
        "story_id": 2,
        "example_id": 102,
        "premises": [
            "All squares are four-sided.",
            "All four-sided things are shapes.",
            "No circle is four-sided.",
            "This object is a square.",
        ],
        "premises-FOL": [
            "∀x (Square(x) → FourSided(x))",
            "∀x (FourSided(x) → Shape(x))",
            "∀x (Circle(x) → ¬FourSided(x))",
            "Square(thisObject)",
        ],
        "conclusion": "This object is a circle.",
        "conclusion-FOL": "Circle(thisObject)",
        "label": "False",
    },
    {
        "story_id": 3,
        "example_id": 103,
        "premises": "Some evergreens are not objects of worship.\n"
        "All fir trees are evergreens.\n"
        "Some objects of worship are fir trees.",
        "premises-FOL": "∃x (Evergreen(x) ∧ ¬ObjectOfWorship(x))\n"
        "∀x (FirTree(x) → Evergreen(x))\n"
        "∃x (ObjectOfWorship(x) ∧ FirTree(x))",
        "conclusion": "Some fir trees are not objects of worship.",
        "conclusion-FOL": "∃x (FirTree(x) ∧ ¬ObjectOfWorship(x))",
        "label": "Uncertain",
    },
]


@pytest.fixture
def folio_file(tmp_path):
    path = tmp_path / "folio-validation.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in FOLIO_RECORDS), encoding="utf-8")
    return path


def test_folio_records_load_with_gold_chains_that_prove_their_labels(folio_file):
    problems = TASK.load(folio_file)
    assert [p.answer for p in problems] == ["True", "False", "Unknown"]
    assert [p.id for p in problems] == ["folio-101", "folio-102", "folio-103"]
    for problem, record in zip(problems, FOLIO_RECORDS):
        assert problem.meta["source"] == "folio" and problem.meta["label"] == problem.answer
        assert problem.question.endswith(f"{QUESTION_PREFIX} {record['conclusion']}")
        premise_count = len(problem.meta["premises_fol"])
        assert [s["name"] for s in problem.gold_chain] == ["add_premise"] * premise_count + ["prove"]
        observations = TASK.functions().run_chain(problem.gold_chain)
        assert all(o.ok for o in observations)
        assert TASK.check(observations[-1].content, problem.answer)


def test_folio_limit_stops_early(folio_file):
    assert [p.answer for p in TASK.load(folio_file, limit=2)] == ["True", "False"]


@pytest.mark.parametrize(
    "bad_line",
    [
        "{not json",
        json.dumps(["a list"]),
        json.dumps({k: v for k, v in FOLIO_RECORDS[1].items() if k != "conclusion-FOL"}),
        json.dumps({**FOLIO_RECORDS[1], "label": "Maybe"}),
        json.dumps({**FOLIO_RECORDS[1], "premises-FOL": 3}),
    ],
)
def test_a_malformed_folio_line_is_an_error_naming_file_and_line(tmp_path, bad_line):
    path = tmp_path / "bad.jsonl"
    good_line = json.dumps(FOLIO_RECORDS[0], ensure_ascii=False)
    path.write_text(good_line + "\n\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:3"):
        TASK.load(path)


def test_folio_records_with_unreadable_formulas_are_skipped_or_refused(tmp_path, caplog):
    unreadable = {**FOLIO_RECORDS[1], "conclusion-FOL": "Circle(this$object)"}  # `-` may be inside a name
    path = tmp_path / "odd.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in (FOLIO_RECORDS[0], unreadable)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        assert [p.answer for p in TASK.load(path)] == ["True"]
    assert f"{path}:2" in caplog.text
    with pytest.raises(ValueError, match=f"{path}:2.*position"):
        TASK.load(path, strict=True)


@pytest.mark.parametrize(
    ("offered", "named", "absent"),
    [
        (None, ["add_fact", "add_rule", "add_premise", "query", "prove"], []),
        (["add_fact", "add_rule", "query"], ["add_fact", "add_rule", "query"], ["add_premise", "prove"]),
        (["add_premise", "prove"], ["add_premise", "prove"], ["add_fact", "add_rule", "query"]),
    ],
)
def test_the_instructions_name_only_the_functions_offered(offered, named, absent):
    task = get_task("fol", offered)
    text = task.instructions
    assert all(name in text for name in named) and not any(name in text for name in absent)
    assert task.system_prompt().startswith(text)


def test_a_text_order_chain_translates_every_statement_in_the_order_stated():
    settings = dict(min_hops=1, max_hops=3, distractors=2)
    reasoning = TASK.generate(60, seed=3, **settings)
    text = TASK.generate(60, seed=3, chain="text", **settings)
    for by_reasoning, by_text in zip(reasoning, text):
        assert by_text.question == by_reasoning.question and by_text.answer == by_reasoning.answer
        *records, ask = by_text.gold_chain
        assert ask == by_reasoning.gold_chain[-1] and ask["name"] == "query"
        assert len(records) == len(by_text.meta["premises_fol"])  # every fact and rule, once
        sentences = by_text.question.split("\n")[0].rstrip(".").split(". ")
        for sentence, call in zip(sentences, records):  # the i-th call records the i-th sentence
            names = [str(v) for k, v in call["arguments"].items() if k != "negated"]
            assert all(n.lower()[:4] in sentence.lower() for n in names), (sentence, call)
        observations = TASK.functions().run_chain(by_text.gold_chain)
        assert all(o.ok for o in observations) and TASK.check(observations[-1].content, by_text.answer)
    with pytest.raises(ValueError, match="chain must be"):
        TASK.generate(1, chain="shuffled")


def test_the_brief_prompt_keeps_one_line_per_function_and_the_call_format():
    full = get_task("fol", ["add_fact", "add_rule", "query"], function_examples=False)
    brief = get_task("fol", ["add_fact", "add_rule", "query"], function_examples=False, brief_prompt=True)
    text = brief.system_prompt("python")
    lines = text.splitlines()
    assert lines[1] == "Functions:" and len(lines) == 5
    for name in ("add_fact", "add_rule", "query"):
        assert sum(line.startswith(f"{name}(") for line in lines) == 1
    assert "`add_fact(entity=..., concept=...)`" in lines[0] and "Final answer: <answer>" in lines[0]
    assert len(text) < 0.75 * len(full.system_prompt("python"))
    assert brief.system_prompt("json") == full.system_prompt("json")  # the json syntax is left as it is


def test_with_echo_next_each_record_hands_out_the_next_statement_and_the_question_line_last():
    task = get_task("fol", ["add_fact", "add_rule", "query"], echo_next=True)
    for problem in task.generate(40, seed=5, min_hops=1, max_hops=3, distractors=2, chain="text"):
        statements = statements_of(problem.question)
        body, ask = problem.question.split("\n")
        assert " ".join(statements[:-1]) == body and statements[-1] == ask.strip()
        # the user turn hands out the first statement, after the whole question
        assert task.user_message(problem) == f"{problem.question}\nNext: {statements[0]}"
        assert get_task("fol").user_message(problem) == problem.question
        *records, query = task.functions(problem).run_chain(problem.gold_chain)
        # record i (0-based) translates statement i, which the question states or record i-1 handed out
        assert [o.content for o in records] == [f"ok. Next: {s}" for s in statements[1:]]
        assert task.check(query.content, problem.answer)
        assert all(o.content == "ok" for o in task.functions().run_chain(problem.gold_chain)[:-1])
    extra = task.functions(problem)
    for step in problem.gold_chain[:-1] * 2:  # more records than statements: the question line again
        last = extra.run_chain([step])[0]
    assert last.content == f"ok. Next: {statements[-1]}"
    blank = Problem(id="b", task="fol", question="  ", answer="Unknown")
    assert task.user_message(blank) == "  " and task.functions(blank).run_chain(problem.gold_chain[:1])[0].content == "ok"
    off = get_task("fol", ["add_fact", "add_rule", "query"])
    assert all(o.content == "ok" for o in off.functions(problem).run_chain(problem.gold_chain)[:-1])


def test_a_failed_record_does_not_move_the_statement_handed_out():
    task = get_task("fol", ["add_fact", "add_rule", "query"], echo_next=True)
    problem = task.generate(1, seed=2, min_hops=2, max_hops=2, distractors=1, chain="text")[0]
    functions = task.functions(problem)
    bad, good = functions.run_chain([{"name": "add_fact", "arguments": {"entity": "", "concept": "x"}},
                                     problem.gold_chain[0]])
    assert bad.error and good.content == f"ok. Next: {statements_of(problem.question)[1]}"


def test_echo_next_is_a_logic_option():
    with pytest.raises(ValueError, match="echo_next is a fol option"):
        get_task("math", echo_next=True)
