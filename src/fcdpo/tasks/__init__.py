"""The reasoning tasks: math word problems and first-order logic.

Layer: functions and tasks; imports the task modules, `fcdpo.settings` and `fcdpo.runs`.
"""

from fcdpo import runs
from fcdpo.tasks.base import DatasetUnavailableError, Problem, Task, load_problems, save_problems


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


def _repository_path(path: str | None):
    """A profile's file path: as given when absolute, else relative to the repository root."""
    if path is None:
        return None
    from pathlib import Path

    from fcdpo.settings import CONFIG_DIR

    return Path(path) if Path(path).is_absolute() else CONFIG_DIR.parent / path


__all__ = ["Problem", "Task", "get_task", "load_problems", "problem_sets", "save_problems", "split_problems"]
