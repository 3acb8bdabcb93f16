"""A profile's problem splits are disjoint, stable and consistent with the functions it offers."""

import pytest

from fcdpo.config import load_profile
from fcdpo.tasks import get_task, load_problems, problem_sets, split_problems


@pytest.mark.parametrize("name, difficulty", [
    ("math", {"min_steps": 2, "max_steps": 2, "max_number": 6, "distractor_rate": 0.0}),
    ("fol", {"min_hops": 1, "max_hops": 1, "distractors": 0}),
])
def test_splits_share_no_question_even_when_the_generator_repeats_itself(name, difficulty):
    splits = split_problems(get_task(name), {"eval": 60, "train": 120}, seed=0, **difficulty)
    eval_questions = {p.question for p in splits["eval"]}
    train_questions = {p.question for p in splits["train"]}
    assert len(eval_questions) == 60 and len(train_questions) == 120
    assert not eval_questions & train_questions


def test_the_held_out_split_does_not_depend_on_the_size_of_the_others():
    task = get_task("math")
    small = split_problems(task, {"eval": 20, "train": 10}, seed=3)
    large = split_problems(task, {"eval": 20, "train": 300}, seed=3)
    assert [p.question for p in small["eval"]] == [p.question for p in large["eval"]]


def test_problem_sets_are_written_to_the_run_folder(tmp_path):
    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "tasks.math.train": 5, "tasks.math.eval": 4,
                                        "tasks.fol.train": 3, "tasks.fol.eval": 2})
    sets = problem_sets(profile)
    assert load_problems(tmp_path / "problems" / "math-eval.jsonl") == sets["math"]["eval"]
    assert [len(sets["fol"][s]) for s in ("eval", "train")] == [2, 3]


def test_a_gold_chain_needing_a_function_the_profile_leaves_out_is_an_error(tmp_path):
    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "tasks.math.functions": ["add", "subtract"],
                                        "tasks.math.difficulty": {"step_kinds": ["gain", "lose", "scale"]}})
    with pytest.raises(ValueError, match="leaves out"):
        problem_sets(profile)
