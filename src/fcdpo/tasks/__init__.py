"""The reasoning tasks: math word problems and first-order logic.

Layer: functions and tasks; imports the task modules, `fcdpo.settings` and `fcdpo.runs`.

A generated task's problems come in splits drawn from the profile's seed (`split_problems`): `eval`,
`train` and `dev`, disjoint by question, then the sealed `test` and `length` splits (`sealed_sets`),
disjoint from all of those and from the tiny lab's own training problems (`lab_problems`).
"""

from __future__ import annotations

from typing import Any, Iterable

from fcdpo import runs
from fcdpo.tasks.base import DatasetUnavailableError, Problem, Task, gold_computation, load_problems, save_problems


def get_task(
    name: str,
    functions: list[str] | None = None,
    function_examples: bool = True,
    brief_prompt: bool = False,
    echo_next: bool = False,
) -> Task:
    """The task called `name` ("math" or "fol"), offering only `functions` if given, and describing
    them with their example calls unless `function_examples` is false (or in one line each with
    `brief_prompt`, see `Task.system_prompt`). `echo_next` (fol only) makes each recorded statement's
    result hand out the question's next statement (`FolTask.functions`)."""
    if name == "math":
        from fcdpo.tasks.math import MathTask

        task: Task = MathTask()
    elif name == "fol":
        from fcdpo.tasks.fol import FolTask

        task = FolTask()
    else:
        raise ValueError(f"unknown task {name!r}; expected 'math' or 'fol'")
    if echo_next and name != "fol":
        raise ValueError(f"echo_next is a fol option; task {name!r} has no statements to hand out")
    task.echo_next = echo_next
    task.function_examples = function_examples
    task.brief_prompt = brief_prompt
    if functions is not None:
        task.function_names = tuple(functions)
        task.functions()  # fail now on an unknown name, not mid-run
    return task


def split_problems(task: Task, sizes: dict[str, int], seed: int = 0, **difficulty) -> dict[str, list[Problem]]:
    """Disjoint problem sets, e.g. `{"eval": 200, "train": 400}`, for one task.

    Splits are drawn in the order given, each from its own seed, and a problem whose question already
    appears in an earlier split is skipped, so no held-out question is ever trained on. Put the
    held-out split first: its problems then do not depend on the sizes of the others.
    """
    seen: set[str] = set()
    splits = {}
    for index, (split, size) in enumerate(sizes.items()):
        draw = size
        while True:
            candidates = task.generate(draw, seed=seed * 1000 + index, **difficulty)
            fresh = [p for p in candidates if p.question not in seen]
            unique = list({p.question: p for p in fresh}.values())
            if len(unique) >= size or draw > 50 * size + 100:
                break
            draw *= 2
        if len(unique) < size:
            raise ValueError(
                f"{task.name}: only {len(unique)} distinct new problems for split {split!r} (wanted {size}); "
                "the difficulty settings allow too few different problems"
            )
        chosen = sorted(unique, key=candidates.index)[:size]
        for problem in chosen:
            problem.id = f"{task.name}-{split}-{problem.id.rsplit('-', 1)[-1]}"
        seen.update(p.question for p in chosen)
        splits[split] = chosen
    return splits


def problem_sets(profile, splits: tuple[str, ...] = ("eval", "train")) -> dict[str, dict[str, list[Problem]]]:
    """Every task's problem splits for a profile, written to `<run>/problems/<task>-<split>.jsonl`.

    Sizes and the source come from the profile's `tasks` section; returns `{task: {split: problems}}`.
    A generated task draws disjoint seeded splits (`split_problems`). A real dataset
    (`fcdpo.tasks.sources`) gives its test / validation rows as `eval`, with a placeholder for every
    row that cannot be graded (evaluation counts it as not solved), and a seeded sample of its train
    split as `train`, without any held-out question; what was read is printed. Datasets that cannot
    be read (offline, no local file) are reported together in one DatasetUnavailableError.
    """
    from fcdpo.tasks.sources import SOURCES, TASK_OF_SOURCE, real_splits

    out: dict[str, dict[str, list[Problem]]] = {}
    unavailable: list[str] = []  # every dataset that cannot be read, reported together
    for name, settings in profile.tasks.items():
        task = get_task(name, settings.functions)
        sizes = {split: getattr(settings, split) for split in splits}
        if settings.source not in SOURCES:
            raise ValueError(f"tasks.{name}.source is {settings.source!r}; expected one of {list(SOURCES)}")
        if settings.source == "generated":
            missing = [split for split, size in sizes.items() if size is None]
            if missing:
                raise ValueError(f"tasks.{name}: generated problems need a number for {missing}, not null")
            out[name] = split_problems(task, sizes, profile.seed, **settings.difficulty)
        else:
            if TASK_OF_SOURCE[settings.source] != name:
                raise ValueError(f"tasks.{name}.source is {settings.source!r}, a dataset of the "
                                 f"{TASK_OF_SOURCE[settings.source]!r} task")
            paths = {split: _repository_path(getattr(settings, f"{split}_path")) for split in ("train", "eval")}
            try:
                out[name], report = real_splits(settings.source, name, sizes, profile.seed, paths=paths,
                                                hub=settings.hub, strict=settings.strict)
            except DatasetUnavailableError as exc:
                unavailable.append(str(exc))
                continue
            for line in report:
                print(line)
        offered = set(task.functions().names)
        for split, problems in out[name].items():
            for problem in problems:
                missing = {step["name"] for step in problem.gold_chain} - offered
                if missing and settings.source == "generated":
                    raise ValueError(
                        f"{name}: problem {problem.id}'s gold chain calls {sorted(missing)}, which the profile's "
                        f"tasks.{name}.functions leaves out"
                    )
            save_problems(problems, runs.problems_file(profile.run_path, name, split))
    if unavailable:
        raise DatasetUnavailableError("\n".join(unavailable))
    return out


def held_out_sets(profile) -> dict[str, dict[str, list[Problem]]]:
    """The profile's eval, train and dev problems per task: what the lab never trains on."""
    sets = {}
    for name, settings in profile.tasks.items():
        sizes = {"eval": settings.eval, "train": settings.train, "dev": settings.dev}
        sets[name] = split_problems(profile.task(name), sizes, profile.seed, **settings.difficulty)
    return sets


def lab_problems(lab, tasks: dict[str, Task], difficulty: dict[str, dict[str, Any]],
                 held_out: Iterable[str] = ()) -> dict[str, list[Problem]]:
    """The tiny lab's training problems per task (`lab`: a `LabConfig`), as many as its larger recipe
    needs: drawn from `lab.data_seed`, skipping questions in `held_out` and repeated ones. The teacher
    learns from the first `lab.teacher.problems_per_task`, the student from the first
    `lab.student.problems_per_task` (`fcdpo.tinylab.lab_conversations`)."""
    seen = set(held_out)
    wanted = max(lab.teacher.problems_per_task, lab.student.problems_per_task)
    result = {}
    for name in sorted(tasks):
        task, settings = tasks[name], difficulty.get(name, {})
        kept: list[Problem] = []
        draw = wanted
        while len(kept) < wanted:
            kept = []
            names = set(seen)
            for problem in task.generate(draw, seed=lab.data_seed, **settings):
                if problem.question not in names:
                    names.add(problem.question)
                    kept.append(problem)
            if draw > 20 * wanted:
                raise ValueError(
                    f"{name}: only {len(kept)} distinct training problems outside the held-out ones "
                    f"(wanted {wanted}); lower problems_per_task or widen the difficulty settings"
                )
            draw *= 2
        result[name] = kept[:wanted]
    return result


# The sealed splits draw from seeds of their own, after the profile's eval (0), train (1) and dev (2).
SEALED_SPLITS = {"test": 3, "length": 4}
COMMUTATIVE = ("add", "multiply")  # a computation with these operands swapped is the same computation


def canonical_computation(problem: Problem) -> tuple:
    """`gold_computation` with the operands of commutative calls in order: add(a=2, b=3) is add(a=3, b=2)."""
    return tuple((name, tuple(sorted(v for _, v in args))) if name in COMMUTATIVE else (name, args)
                 for name, args in gold_computation(problem))


def sealed_sets(profile, write: bool = True) -> tuple[dict[str, dict[str, list[Problem]]], dict[str, Any]]:
    """Every generated task's sealed splits, `{task: {"test": [...], "length": [...]}}`, and a report.

    `test` (`tasks.<task>.test` problems) is drawn at the profile's difficulty from a seed of its own.
    No test question is in the eval, train or dev split or among the lab's training problems, and no
    two test problems share one. For math, no test problem's computation (its gold calls with their
    arguments, operands of add and multiply in either order: `canonical_computation`) is that of a
    train problem or of a problem the lab's student learned from, and no two test problems share a
    computation: a right answer cannot be recalled from training. The report counts how many test
    computations the lab's teacher saw.
    `length` (`tasks.<task>.length`) is drawn the same way at `difficulty` updated with
    `length_difficulty`, a setting beyond what the models were trained on, and also avoids the test
    questions. With `write`, both are saved as `problems/<task>-{test,length}.jsonl` in the run folder.
    """
    from fcdpo.settings import LabConfig, build

    earlier = held_out_sets(profile)
    lab = build(LabConfig, profile.lab, f"profile {profile.name!r}: lab") if profile.lab is not None else None
    lab_sets: dict[str, list[Problem]] = {}
    if lab is not None:
        tasks = {name: profile.task(name) for name in profile.tasks}
        difficulty = {name: dict(settings.difficulty) for name, settings in profile.tasks.items()}
        held = {p.question for splits in earlier.values() for ps in splits.values() for p in ps}
        lab_sets = lab_problems(lab, tasks, difficulty, held)
    out: dict[str, dict[str, list[Problem]]] = {}
    report: dict[str, Any] = {}
    for name, settings in profile.tasks.items():
        if settings.source != "generated" or not (settings.test or settings.length):
            continue
        task = profile.task(name)
        lab_all = lab_sets.get(name, [])
        questions = {p.question for ps in earlier[name].values() for p in ps} | {p.question for p in lab_all}
        computations = None
        if name == "math":
            student_data = lab_all[: lab.student.problems_per_task] if lab is not None else []
            computations = {canonical_computation(p) for p in earlier[name]["train"] + student_data}
        out[name], report[name] = {}, {}
        for split, size in (("test", settings.test), ("length", settings.length)):
            if not size:
                continue
            difficulty = {**settings.difficulty, **(settings.length_difficulty if split == "length" else {})}
            chosen = _fresh(task, split, size, profile.seed * 1000 + SEALED_SPLITS[split], difficulty,
                            questions, computations)
            questions |= {p.question for p in chosen}
            out[name][split] = chosen
            seen_by_teacher = {canonical_computation(p) for p in lab_all[: lab.teacher.problems_per_task]} if lab else set()
            report[name][split] = {
                "problems": len(chosen), "difficulty": difficulty,
                "distinct_computations": len({canonical_computation(p) for p in chosen}),
                "computations_the_lab_teacher_saw": sum(canonical_computation(p) in seen_by_teacher for p in chosen),
                "computations_in_train_or_student_data": 0 if computations is not None else None,
            }
            if computations is not None:  # math: the problems no model of the lab could have recalled
                report[name][split]["unseen_by_lab_teacher"] = [p.id for p in chosen
                                                                 if canonical_computation(p) not in seen_by_teacher]
            if write:
                save_problems(chosen, runs.problems_file(profile.run_path, name, split))
    return out, report


def _fresh(task: Task, split: str, size: int, seed: int, difficulty: dict[str, Any], questions: set[str],
           computations: set[tuple] | None) -> list[Problem]:
    """`size` problems drawn from `seed` whose questions (and, unless `computations` is None, whose
    computations) are new: outside the sets given and not repeated among themselves."""
    draw = size
    while True:
        kept: list[Problem] = []
        new_questions: set[str] = set()
        new_computations: set[tuple] = set()
        for problem in task.generate(draw, seed=seed, **difficulty):
            if problem.question in questions or problem.question in new_questions:
                continue
            if computations is not None:
                computation = canonical_computation(problem)
                if computation in computations or computation in new_computations:
                    continue
                new_computations.add(computation)
            new_questions.add(problem.question)
            kept.append(problem)
        if len(kept) >= size or draw > 50 * size + 100:
            break
        draw *= 2
    if len(kept) < size:
        raise ValueError(f"{task.name}: only {len(kept)} problems for the sealed split {split!r} are new by question"
                         f"{' and computation' if computations is not None else ''} (wanted {size}); widen the "
                         "difficulty settings or ask for fewer")
    for problem in kept[:size]:
        problem.id = f"{task.name}-{split}-{problem.id.rsplit('-', 1)[-1]}"
    return kept[:size]


def _repository_path(path: str | None):
    """A profile's file path: as given when absolute, else relative to the repository root."""
    if path is None:
        return None
    from pathlib import Path

    from fcdpo.settings import CONFIG_DIR

    return Path(path) if Path(path).is_absolute() else CONFIG_DIR.parent / path


__all__ = ["Problem", "Task", "canonical_computation", "get_task", "gold_computation", "held_out_sets", "lab_problems",
           "load_problems", "problem_sets", "save_problems", "sealed_sets", "split_problems"]
