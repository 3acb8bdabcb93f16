"""Specification of the math task: functions, calculator, generator, answer check, GSM8K loading."""

from __future__ import annotations

import json
import re
import time

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from fcdpo.functions import FunctionSet
from fcdpo.tasks import get_task
from fcdpo.tasks.calculator import ExpressionError, evaluate_expression
from fcdpo.tasks.math import (
    GSM8KUnavailableError,
    MathTask,
    add,
    calculate,
    canonical_number,
    divide,
    gsm8k_expression,
    load_gsm8k,
    multiply,
    percent_of,
    remainder,
    round_to,
    subtract,
)

TASK = MathTask()

# Difficulty settings the property test sweeps: (min_steps, max_steps, max_number, distractor_rate).
SETTINGS = [
    (2, 4, 20, 0.3),
    (1, 1, 5, 0.0),
    (2, 6, 50, 1.0),
    (4, 6, 12, 0.5),
    (3, 3, 100, 0.2),
    (1, 8, 9, 0.7),
]


def run_gold_chain(problem):
    return TASK.functions().run_chain(problem.gold_chain)


# --------------------------------------------------------------------------------------------
# Functions


def test_functions_compute_exactly_on_sympy_numbers():
    assert add(a=0.1, b=0.2) == sympy.Rational(3, 10)
    assert subtract(a=10, b=4) == 6
    assert multiply(a=2.5, b=4) == 10 and isinstance(multiply(a=2.5, b=4), sympy.Integer)
    assert divide(a=7, b=2) == sympy.Rational(7, 2)
    assert remainder(a=17, b=5) == 2
    assert percent_of(percent=25, value=80) == 20
    assert percent_of(percent=12.5, value=8) == 1
    assert round_to(value=2.5, digits=0) == 3
    assert round_to(value=-2.5, digits=0) == -3
    assert round_to(value=3.456, digits=2) == sympy.Rational(346, 100)
    assert round_to(value=1234, digits=-2) == 1200
    assert calculate(expression="(16 - 3 - 4) * 2") == 18


def test_division_by_zero_is_a_clear_value_error():
    with pytest.raises(ValueError, match="divide by zero"):
        divide(a=3, b=0)
    with pytest.raises(ValueError, match="zero"):
        remainder(a=3, b=0)


def test_division_by_zero_is_an_error_observation():
    observation = TASK.functions().execute({"name": "divide", "arguments": {"a": 3, "b": 0}})
    assert not observation.ok
    assert observation.error == "execution_error"
    assert "divide by zero" in observation.content


def test_function_results_are_formatted_exactly_for_the_model():
    functions = TASK.functions()
    assert functions.execute({"name": "divide", "arguments": {"a": 7, "b": 2}}).content == "3.5"
    assert functions.execute({"name": "divide", "arguments": {"a": 7, "b": 3}}).content == "7/3"
    assert functions.execute({"name": "add", "arguments": {"a": 0.1, "b": 0.2}}).content == "0.3"


def test_functions_refuse_non_numbers_and_huge_results():
    with pytest.raises(ValueError, match="a must be a number"):
        add(a="3", b=4)
    with pytest.raises(ValueError, match="b must be a number"):
        add(a=3, b=True)
    with pytest.raises(ValueError, match="finite"):
        multiply(a=float("inf"), b=2)
    with pytest.raises(ValueError, match="too large"):
        multiply(a=10**60, b=10**60)
    with pytest.raises(ValueError, match="digits"):
        round_to(value=1.5, digits=11)


def test_function_set_describes_every_function_with_an_example():
    functions = TASK.functions()
    assert isinstance(functions, FunctionSet)
    assert functions.names == [
        "add", "subtract", "multiply", "divide", "remainder", "percent_of", "round_to", "calculate"
    ]
    description = functions.describe()
    for name in functions.names:
        assert re.search(rf"Example: {name}\(", description)
    assert functions.example_call() == "add(a=3, b=4)"


def test_system_prompt_holds_instructions_and_function_descriptions():
    prompt = get_task("math").system_prompt()
    assert prompt.startswith(TASK.instructions)
    assert "calculate(expression: str)" in prompt
    assert "Final answer:" in prompt


# --------------------------------------------------------------------------------------------
# Calculator


@pytest.mark.parametrize(
    "expression, value",
    [
        ("16-3-4", 9),
        ("2*.5", 1),
        ("100/5", 20),
        ("7/2", sympy.Rational(7, 2)),
        ("0.1 + 0.2", sympy.Rational(3, 10)),
        ("-(3 - 5) * 2", 4),
        ("+4", 4),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("17 % 5", 2),
        ("2 ** 10", 1024),
        ("2 ** -2", sympy.Rational(1, 4)),
        ("1_000 * 1.5", 1500),
        ("1e3 / 8", 125),
        ("(((1 + 2)))", 3),
    ],
)
def test_calculator_evaluates_exactly(expression, value):
    result = evaluate_expression(expression)
    assert result == value
    assert isinstance(result, sympy.Rational)


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("__import__('os')", "function call"),
        ("x + 1", "name 'x'"),
        ("(1).real", "attribute"),
        ("1 < 2", "comparison"),
        ("'3' * 3", "str literal"),
        ("True + 1", "bool literal"),
        ("1,000 * 2", "tuple"),
        ("[1, 2]", "list"),
        ("lambda: 1", "lambda"),
        ("1 if 1 else 2", "conditional"),
        ("~1", "Invert"),
        ("3 ^ 1", "BitXor"),
        ("1 +", "not a valid expression"),
        ("", "empty"),
        ("1 / 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("9**9**9", "exponent 387420489"),
        ("2 ** 65", "exponent 65"),
        ("2 ** 0.5", "not a whole number"),
        ("(10**50) ** 3", "too large"),
        ("10**60 * 10**60", "too large"),
        ("1e999999999", "too large"),
        ("1" * 101, "too large"),
    ],
)
def test_calculator_refuses_with_a_clear_value_error(expression, reason):
    with pytest.raises(ExpressionError, match=re.escape(reason)):
        evaluate_expression(expression)


def test_calculator_refuses_deep_nesting_before_parsing():
    with pytest.raises(ExpressionError, match="nested more than 30 deep"):
        evaluate_expression("(" * 31 + "1" + ")" * 31)
    assert evaluate_expression("(" * 30 + "1" + ")" * 30) == 1


def test_calculator_refuses_a_megabyte_quickly():
    start = time.perf_counter()
    with pytest.raises(ExpressionError, match="characters long"):
        evaluate_expression("1+" * 500_000 + "1")
    with pytest.raises(ExpressionError, match="characters long"):
        evaluate_expression("(" * 1_000_000)
    assert time.perf_counter() - start < 0.5


def test_calculator_handles_long_flat_expressions_within_the_length_limit():
    assert evaluate_expression("+".join(["1"] * 250)) == 250
    assert evaluate_expression("-" * 499 + "1") == -1


def test_calculator_errors_are_value_errors_and_error_observations():
    assert issubclass(ExpressionError, ValueError)
    observation = TASK.functions().execute({"name": "calculate", "arguments": {"expression": "open('x')"}})
    assert not observation.ok and "function call" in observation.content


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80))
def test_calculate_on_arbitrary_text_raises_only_value_error(text):
    try:
        result = calculate(expression=text)
    except ValueError:
        return
    assert isinstance(result, sympy.Rational)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789.+-*/%() e_", max_size=60))
def test_calculate_on_arithmetic_looking_text_raises_only_value_error(text):
    try:
        result = calculate(expression=text)
    except ValueError:
        return
    assert isinstance(result, sympy.Rational)


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.sampled_from("+-*"))
def test_calculator_agrees_with_integer_arithmetic(a, b, op):
    expected = {"+": a + b, "-": a - b, "*": a * b}[op]
    assert evaluate_expression(f"({a}) {op} ({b})") == expected


# --------------------------------------------------------------------------------------------
# Generator


def test_every_gold_chain_reproduces_its_answer_across_seeds_and_settings():
    checked = 0
    for seed in range(100):
        for min_steps, max_steps, max_number, rate in SETTINGS:
            difficulty = dict(min_steps=min_steps, max_steps=max_steps, max_number=max_number)
            problems = TASK.generate(5, seed=seed, distractor_rate=rate, **difficulty)
            for problem in problems:
                observations = run_gold_chain(problem)
                assert len(observations) == len(problem.gold_chain) == problem.meta["steps"]
                assert all(o.ok for o in observations), (problem.id, observations)
                assert TASK.check(observations[-1].content, problem.answer), problem
                checked += 1
    assert checked == 3000


def test_gold_chain_uses_literal_integers_and_every_result_feeds_a_later_call():
    for problem in TASK.generate(200, seed=7, min_steps=3, max_steps=6):
        results = [o.value for o in run_gold_chain(problem)]
        arguments = [list(call["arguments"].values()) for call in problem.gold_chain]
        assert all(type(value) is int for values in arguments for value in values)
        for step, result in enumerate(results[:-1]):
            later = [value for values in arguments[step + 1 :] for value in values]
            assert result in later, (problem.question, problem.gold_chain)


def test_generation_is_deterministic_and_prefix_stable():
    settings_ = dict(min_steps=2, max_steps=5, max_number=30, distractor_rate=0.5)
    first = [p.to_dict() for p in TASK.generate(50, seed=3, **settings_)]
    again = [p.to_dict() for p in TASK.generate(50, seed=3, **settings_)]
    shorter = [p.to_dict() for p in TASK.generate(20, seed=3, **settings_)]
    other_seed = [p.to_dict() for p in TASK.generate(50, seed=4, **settings_)]
    assert first == again
    assert shorter == first[:20]
    assert [p["question"] for p in other_seed] != [p["question"] for p in first]
    assert [p["id"] for p in first[:3]] == ["math-3-0", "math-3-1", "math-3-2"]


@pytest.mark.parametrize("min_steps, max_steps", [(1, 1), (2, 2), (2, 6), (5, 6), (8, 8)])
def test_steps_stay_within_bounds_and_cover_them(min_steps, max_steps):
    problems = TASK.generate(300, seed=11, min_steps=min_steps, max_steps=max_steps)
    steps = {p.meta["steps"] for p in problems}
    assert steps == set(range(min_steps, max_steps + 1))
    for problem in problems:
        assert len(problem.gold_chain) == problem.meta["steps"]
        assert len(problem.meta["operations"]) <= problem.meta["steps"]


def test_answers_are_whole_numbers_and_every_intermediate_is_a_positive_integer():
    for problem in TASK.generate(500, seed=5, min_steps=2, max_steps=6, max_number=15):
        assert re.fullmatch(r"[1-9]\d*", problem.answer)
        for observation in run_gold_chain(problem):
            assert isinstance(observation.value, sympy.Integer) and observation.value >= 1


def test_max_number_bounds_the_numbers_in_each_story():
    for problem in TASK.generate(300, seed=9, max_number=12, distractor_rate=1.0):
        numbers = [int(n) for n in re.findall(r"\d+", problem.question)]
        percents = {int(n) for n in re.findall(r"(\d+)%", problem.question)}
        assert all(n <= 12 or n in percents for n in numbers), problem.question


def test_distractor_rate_controls_irrelevant_sentences():
    none = TASK.generate(200, seed=2, distractor_rate=0.0)
    every = TASK.generate(200, seed=2, distractor_rate=1.0)
    assert all(p.meta["distractors"] == 0 for p in none)
    # One distractor after the opening sentence and after each story sentence.
    for problem in every:
        story_sentences = 1 + len(problem.meta["operations"])
        assert problem.meta["distractors"] == story_sentences
    # Without distractors every number in the text feeds the gold chain.
    for problem in none:
        used = {v for call in problem.gold_chain for v in call["arguments"].values()}
        for number in re.findall(r"\d+", problem.question):
            assert int(number) in used, problem.question
    some = TASK.generate(400, seed=2, distractor_rate=0.3)
    fraction = sum(p.meta["distractors"] for p in some) / sum(1 + len(p.meta["operations"]) for p in some)
    assert 0.2 < fraction < 0.4


def test_distractors_leave_the_gold_chain_and_answer_valid():
    for problem in TASK.generate(200, seed=13, distractor_rate=1.0, max_steps=6):
        observations = run_gold_chain(problem)
        assert TASK.check(observations[-1].content, problem.answer)


def test_generated_problems_vary_and_carry_their_metadata():
    problems = TASK.generate(400, seed=1, max_steps=6)
    assert {p.meta["unit"] for p in problems} == {"items", "dollars", "minutes", "km", "liters"}
    operations = {k for p in problems for k in p.meta["operations"]}
    assert operations == {"gain", "lose", "scale", "split", "gain_groups", "lose_groups", "lose_percent"}
    assert len({p.question.split()[0] for p in problems}) >= 15  # many different names
    for problem in problems:
        assert problem.task == "math" and problem.meta["source"] == "generated"
        assert problem.question.endswith("?")
        assert "{" not in problem.question and "}" not in problem.question
        assert " 1 " not in problem.question  # no "1 marbles": every amount is at least 2


@pytest.mark.parametrize(
    "settings_, message",
    [
        (dict(min_steps=0), "min_steps"),
        (dict(min_steps=4, max_steps=3), "min_steps"),
        (dict(max_steps=9), "max_steps"),
        (dict(max_number=4), "max_number"),
        (dict(distractor_rate=1.5), "distractor_rate"),
    ],
)
def test_bad_difficulty_settings_are_refused(settings_, message):
    with pytest.raises(ValueError, match=message):
        TASK.generate(3, seed=0, **settings_)


def test_unknown_difficulty_setting_is_a_type_error():
    with pytest.raises(TypeError, match="distractors"):
        TASK.generate(3, seed=0, distractors=0.5)


# --------------------------------------------------------------------------------------------
# Answer check


@pytest.mark.parametrize(
    "predicted",
    [
        "18",
        "18.0",
        "18.00",
        "$18",
        "18 dollars",
        "Final answer: 18",
        "The answer is 18.",
        "18/1",
        "36/2",
        "So 9 * 2 = 18",
        "Final answer: $18.00.",
        "  18\n",
    ],
)
def test_check_accepts_equivalent_forms(predicted):
    assert TASK.check(predicted, "18")


@pytest.mark.parametrize(
    "predicted, gold",
    [
        ("1,800", "1800"),
        ("$1,800.50", "1800.5"),
        ("Final answer: -3", "-3"),
        ("3.5", "7/2"),
        ("7/2", "3.5"),
        ("0.5", "1/2"),
        ("1800", "1,800"),
    ],
)
def test_check_compares_exactly_as_rationals(predicted, gold):
    assert TASK.check(predicted, gold)


@pytest.mark.parametrize(
    "predicted",
    [
        None, "", "I do not know.", "17", "18.5", "180", "1.8", "-18", "18 then 19", "18/0",
        "Final answer: eighteen",
    ],
)
def test_check_rejects_wrong_or_missing_answers(predicted):
    assert not TASK.check(predicted, "18")


def test_check_takes_the_last_number_and_ignores_hyphens():
    assert TASK.check("First 5, then 10 - 3 = 7", "7")
    assert not TASK.check("First 5, then 10 - 3 = 7", "-3")
    assert TASK.check("Step 2: 12. Step 3: 12/4 = 3", "3")


def test_check_with_a_gold_that_is_not_a_number_is_false():
    assert not TASK.check("18", "eighteen")


def test_canonical_numbers():
    assert canonical_number(sympy.Integer(18)) == "18"
    assert canonical_number(sympy.Rational(7, 2)) == "3.5"
    assert canonical_number(sympy.Rational(-1, 8)) == "-0.125"
    assert canonical_number(sympy.Rational(7, 3)) == "7/3"


# --------------------------------------------------------------------------------------------
# GSM8K

GSM8K_RECORDS = [
    {
        "question": "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
        "muffins for her friends every day with four. She sells the remainder at the farmers' market daily "
        "for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?",
        "answer": "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
        "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n#### 18",
    },
    {
        "question": "A robe takes 2 bolts of blue fiber and half that much white fiber. "
        "How many bolts in total does it take?",
        "answer": "It takes 2/2=<<2/2=1>>1 bolt of white fiber\n"
        "So the total amount of fabric is 2+1=<<2+1=3>>3 bolts of fabric\n#### 3",
    },
    {
        "question": "Josh decides to try flipping a house. He buys a house for $80,000 and then puts in "
        "$50,000 in repairs. This increased the value of the house by 150%. How much profit did he make?",
        "answer": "The cost of the house and repairs came out to "
        "80,000+50,000=$<<80000+50000=130000>>130,000\n"
        "He increased the value of the house by 80,000*1.5=<<80000*1.5=120000>>120,000\n"
        "So the new value of the house is 120,000+80,000=$<<120000+80000=200000>>200,000\n"
        "So he made a profit of 200,000-130,000=$<<200000-130000=70000>>70,000\n#### 70000",
    },
    {
        "question": "A shop sells 4 bikes for $1,200 in total and gives 20% of each sale to charity. "
        "How much money does it keep from 5 bikes?",
        "answer": "One bike costs <<$1,200/4=$300>>$300.\nCharity gets <<20%*300=60>>60 per bike, so "
        "<<300-60=240>>240 is kept.\nFrom 5 bikes: <<5*240=1,200>>1,200\n#### 1,200",
    },
]


@pytest.fixture
def gsm8k_file(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in GSM8K_RECORDS), encoding="utf-8")
    return path


def test_gsm8k_loader_reads_answers_and_calculator_annotations(gsm8k_file):
    problems = TASK.load(gsm8k_file)
    assert [p.answer for p in problems] == ["18", "3", "70000", "1200"]
    assert [p.id for p in problems] == ["gsm8k-test-0", "gsm8k-test-1", "gsm8k-test-2", "gsm8k-test-3"]
    assert problems[0].gold_chain == [
        {"name": "calculate", "arguments": {"expression": "16-3-4"}},
        {"name": "calculate", "arguments": {"expression": "9*2"}},
    ]
    assert problems[3].gold_chain[:2] == [
        {"name": "calculate", "arguments": {"expression": "1200/4"}},
        {"name": "calculate", "arguments": {"expression": "(20/100)*300"}},
    ]
    for problem in problems:
        assert problem.task == "math"
        assert problem.meta["source"] == "gsm8k"
        assert problem.meta["steps"] == len(problem.gold_chain)
        assert problem.meta["chain_reaches_answer"] is True
        assert problem.meta["skipped_annotations"] == 0
        observations = run_gold_chain(problem)
        assert all(o.ok for o in observations)
        assert TASK.check(observations[-1].content, problem.answer)


def test_gsm8k_loader_respects_limit(gsm8k_file):
    assert [p.answer for p in load_gsm8k(gsm8k_file, limit=2)] == ["18", "3"]


def test_gsm8k_annotation_cleanup():
    assert gsm8k_expression("$2*.5=$1") == "2*.5"
    assert gsm8k_expression("1,000*2=2,000") == "1000*2"
    assert gsm8k_expression("50%*80=40") == "(50/100)*80"
    assert gsm8k_expression("10%3=1") == "10%3"
    assert gsm8k_expression("05*2=10") == "5*2"
    assert gsm8k_expression("no equals sign") is None
    assert gsm8k_expression("x*2=10") is None


def test_gsm8k_refused_annotations_are_counted_and_flagged(tmp_path):
    path = tmp_path / "odd.jsonl"
    record = {"question": "q?", "answer": "a <<x*2=10>>10 and <<3+4=7>>7 and then 8\n#### 8"}
    path.write_text(json.dumps(record) + "\n")
    (problem,) = load_gsm8k(path)
    assert problem.gold_chain == [{"name": "calculate", "arguments": {"expression": "3+4"}}]
    assert problem.meta["skipped_annotations"] == 1
    assert problem.meta["chain_reaches_answer"] is False


def test_gsm8k_malformed_record_names_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(GSM8K_RECORDS[0]), json.dumps({"question": "q", "answer": "no final"})]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: .*####"):
        load_gsm8k(path)


def test_gsm8k_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="official jsonl"):
        load_gsm8k(tmp_path / "missing.jsonl")


def test_gsm8k_from_the_hub_offline_fails_fast_and_says_to_pass_a_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(GSM8KUnavailableError, match=r"load_gsm8k\(path=\.\.\.\)"):
        load_gsm8k(split="test")
    assert time.perf_counter() - start < 20


def test_step_kinds_limit_the_functions_gold_chains_use():
    problems = MathTask().generate(300, seed=5, step_kinds=["gain", "lose", "scale", "split", "gain_groups"])
    used = {step["name"] for p in problems for step in p.gold_chain}
    assert used <= {"add", "subtract", "multiply", "divide"}
    with pytest.raises(ValueError, match="gain"):
        MathTask().generate(1, step_kinds=["scale"])
