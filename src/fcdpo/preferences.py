"""Preference pairs from teacher chains: a correct chain (chosen) against an incorrect one (rejected).

Layer: stages; imports rollouts, the agent, the profile, backends, tasks, messages and the run folder's layout.

    trajectories = read_trajectories(runs.rollouts_file(run, "math"))
    pairs, report = build_pairs(trajectories, syntax="python", pairs_per_prompt=4)
    splits = split_by_problem(pairs, validation=0.1, seed=0)
    dataset = save_preferences(splits, runs.preferences_dir(run), report)

Pairs are only ever made between chains of the same prompt (the same problem, rendered the same way).
A prompt whose chains are all correct or all incorrect gives no pair: it is dropped and counted in the
report. The train / validation split is drawn by problem, never by pair, so no problem's chains are on
both sides.

Two more arms build rows of the same format: `build_step_pairs` cuts a correct and an incorrect chain
where they part ways (the shared history becomes the prompt; `preferences-step/`), and
`build_onpolicy_preference_dataset` pairs the student's own sampled chains (`preferences-onpolicy/`).

Rows follow TRL's conversational preference format:

- `prompt`: the opening messages (system prompt with the functions, the question);
- `chosen` / `rejected`: the rest of each chain, assistant turns with the tool results (and any
  feedback turns) between them, up to the final answer;
- `tools`: a JSON string, the tool schemas passed to the chat template, or `"null"` when the chain
  was written in Python-call syntax (the agent then passes no schemas: the system prompt describes the
  functions), so training renders every prompt exactly as the agent did;
- `task`, `problem_id`, `chosen_id`, `rejected_id`: where the pair comes from.

Messages are stored Arrow-safe (`fcdpo.messages.arrow_safe`: tool-call arguments as JSON strings);
`restore_messages` gives back the agent's messages exactly, which is what a chat template expects.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

# restore_messages and restore_tools read stored pairs back (notebook 02 imports them from here)
from fcdpo import arms, runs
from fcdpo.messages import arrow_safe, restore_messages, restore_tools  # noqa: F401

if TYPE_CHECKING:
    from datasets import DatasetDict

    from fcdpo.agent import Trajectory

SPLITS = ("train", "validation")


class PreferenceError(ValueError):
    """Trajectories or settings that cannot be turned into preference pairs; the message says which and why."""


def assistant_turns(messages: list[dict[str, Any]]) -> tuple[str, ...]:
    """The model's own turns of a chain (content and native tool calls), as comparable text.

    Two chains with the same assistant turns made the same calls in the same order; since functions are
    deterministic, the observations between them are the same too.
    """
    turns = []
    for message in messages:
        if message["role"] == "assistant":
            calls = json.dumps(message.get("tool_calls") or [], sort_keys=True, ensure_ascii=False)
            turns.append(f"{(message.get('content') or '').strip()}\u0000{calls}")
    return tuple(turns)


def split_prompt(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A chain cut where the model starts: (prompt messages, completion messages).

    Raises PreferenceError when the chain has no assistant turn, or no user turn before the first one.
    """
    start = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if start is None:
        raise PreferenceError("a chain without any assistant turn cannot be a preference completion")
    if not any(m["role"] == "user" for m in messages[:start]):
        raise PreferenceError("a chain must open with a user turn (the question) before the first assistant turn")
    return messages[:start], messages[start:]


def build_pairs(
    trajectories: Iterable["Trajectory"],
    syntax: str,
    pairs_per_prompt: int = 4,
    drop_identical: bool = True,
    balance_tasks: bool = False,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pair correct with incorrect chains of the same prompt; returns (rows, report).

    Args:
        trajectories: Graded chains, typically `k` per problem (several tasks may be mixed).
        syntax: The agent's syntax when the chains were sampled ("python" or "json"); with "json" the
            tool schemas were given to the chat template and are kept in the `tools` column.
        pairs_per_prompt: At most this many pairs per prompt. They are drawn (seeded) so that the
            chosen and the rejected chains are as varied as the prompt allows: a chain is reused only
            when every other chain of its side has been used as often.
        drop_identical: Collapse chains with the same assistant turns into one (k samples often
            repeat), and never pair two chains with the same assistant turns.
        balance_tasks: Keep the same number of pairs for every task (the smallest task's count),
            dropping whole prompts first, in a seeded order.
        seed: Seed of every random choice; the same inputs give the same rows.

    Returns:
        Rows in TRL's conversational preference format (see the module docstring), ordered by task
        and problem, and a report: per task, the problems seen, the prompts dropped for having no
        correct chain (`no_correct`) or no incorrect chain (`no_incorrect`), duplicate chains
        collapsed, identical pairs skipped, pairs kept and pairs cut for balance.
    """
    if syntax not in ("python", "json"):
        raise PreferenceError(f"syntax must be 'python' or 'json', got {syntax!r}")
    if pairs_per_prompt < 1:
        raise PreferenceError(f"pairs_per_prompt must be at least 1, got {pairs_per_prompt}")
    groups = _group_by_prompt(trajectories)
    rng = random.Random(seed)
    counts: dict[str, Counter] = defaultdict(Counter)
    problems: dict[str, set[str]] = defaultdict(set)
    by_task: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)  # rows grouped by prompt
    for task, tally, correct, incorrect in _both_sides(groups, drop_identical, counts, problems):
        candidates = [(c, r) for c in correct for r in incorrect]
        if drop_identical:
            kept = [(c, r) for c, r in candidates if assistant_turns(c.messages) != assistant_turns(r.messages)]
            tally["identical_pairs"] += len(candidates) - len(kept)
            candidates = kept
        if not candidates:
            tally["no_distinct_pair"] += 1
            continue
        chosen_pairs = _varied_pairs(candidates, pairs_per_prompt, rng)
        by_task[task].append([_row(c, r, syntax) for c, r in chosen_pairs])

    rows = _balanced_rows(by_task, balance_tasks, counts, rng)
    settings = {"syntax": syntax, "pairs_per_prompt": pairs_per_prompt, "drop_identical": drop_identical,
                "balance_tasks": balance_tasks, "seed": seed}
    return rows, _pair_report(settings, counts, problems, by_task, rows)


def _pair_report(settings: dict[str, Any], counts: Mapping[str, Counter], problems: Mapping[str, set[str]],
                 by_task: Mapping[str, list[list[dict[str, Any]]]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`build_pairs`' report: its settings, and per task what was seen, dropped, collapsed and kept."""
    report_tasks = {}
    for task in sorted(counts):
        tally = counts[task]
        report_tasks[task] = {
            "problems": len(problems[task]),
            **{key: tally[key] for key in ("prompts", "chains", "correct_chains", "no_correct", "no_incorrect",
                                            "no_distinct_pair", "duplicate_chains", "identical_pairs")},
            "prompts_paired": sum(1 for prompt_rows in by_task.get(task, []) if prompt_rows),
            "balanced_away": tally["balanced_away"],
            "pairs": sum(1 for row in rows if row["task"] == task),
        }
    return {"settings": settings, "tasks": report_tasks, "pairs": len(rows)}


def first_divergence(chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> int | None:
    """Index of the first message where two chains part ways, or None where they never do.

    Messages are compared exactly as stored (`arrow_safe`), so the messages before the index are the
    same text, hence the same tokens under any chat template. None when the chains are identical or
    one is a prefix of the other (no turn of one side to set against a turn of the other).
    """
    for index, (a, b) in enumerate(zip(chosen, rejected)):
        if _comparable(a) != _comparable(b):
            return index
    return None


def _comparable(message: dict[str, Any]) -> str:
    return json.dumps(arrow_safe([message])[0], sort_keys=True, ensure_ascii=False)


def build_step_pairs(
    trajectories: Iterable["Trajectory"],
    syntax: str,
    pairs_per_prompt: int = 4,
    rest_of_chain: bool = False,
    drop_identical: bool = True,
    balance_tasks: bool = False,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Step-level pairs (Step-DPO): a correct and an incorrect chain of one prompt, cut where they part ways.

    The messages both chains share (system prompt, question, and every identical assistant and tool
    turn before the first assistant turn where they differ) become the pair's `prompt`; `chosen` and
    `rejected` are the two diverging assistant turns, or with `rest_of_chain` the rest of each chain
    from there (tool results inside it are context and carry no loss, see `fcdpo.training`). The
    preference then falls on the step that decided the outcome, not on the shared steps before it.

    Pairs are only made within one prompt (task, problem and rendered prompt, as in `build_pairs`).
    A candidate pair gives no row when the chains never part ways (identical, or one a prefix of the
    other: `no_divergence`) or part ways at a turn that is not an assistant turn on both sides
    (`not_at_assistant`); two candidates that give the same row count once (`duplicate_steps`).

    Returns rows in the format of `build_pairs` (so `save_preferences`, `tokenize_pair` and the DPO
    trainer take them as they are) and a report like its own, with per task the number of pairs cut
    at each assistant turn (`cut_turns`: 0 is the model's first turn).
    """
    if syntax not in ("python", "json"):
        raise PreferenceError(f"syntax must be 'python' or 'json', got {syntax!r}")
    if pairs_per_prompt < 1:
        raise PreferenceError(f"pairs_per_prompt must be at least 1, got {pairs_per_prompt}")
    groups = _group_by_prompt(trajectories)
    rng = random.Random(seed)
    counts: dict[str, Counter] = defaultdict(Counter)
    problems: dict[str, set[str]] = defaultdict(set)
    by_task: dict[str, list[list[dict[str, Any]]]] = defaultdict(list)
    for task, tally, correct, incorrect in _both_sides(groups, drop_identical, counts, problems):
        steps: dict[str, tuple[Any, Any, int]] = {}  # one candidate per distinct row
        for c in correct:
            for r in incorrect:
                _, chosen_turns = split_prompt(c.messages)
                _, rejected_turns = split_prompt(r.messages)
                if drop_identical and assistant_turns(c.messages) == assistant_turns(r.messages):
                    tally["identical_pairs"] += 1
                    continue
                index = first_divergence(chosen_turns, rejected_turns)
                if index is None:
                    tally["no_divergence"] += 1
                    continue
                if chosen_turns[index]["role"] != "assistant" or rejected_turns[index]["role"] != "assistant":
                    tally["not_at_assistant"] += 1
                    continue
                key = json.dumps([_comparable(m) for m in chosen_turns[: index + 1]]
                                 + [_comparable(rejected_turns[index])]
                                 + ([_comparable(m) for m in chosen_turns[index + 1:]]
                                    + [_comparable(m) for m in rejected_turns[index + 1:]] if rest_of_chain else []))
                if key in steps:
                    tally["duplicate_steps"] += 1
                    continue
                steps[key] = (c, r, index)
        if not steps:
            tally["no_distinct_pair"] += 1
            continue
        cut_of = {(c.id, r.id): index for c, r, index in steps.values()}
        picked = _varied_pairs([(c, r) for c, r, _ in steps.values()], pairs_per_prompt, rng)
        by_task[task].append([_step_row(c, r, cut_of[(c.id, r.id)], rest_of_chain, syntax) for c, r in picked])

    rows = _balanced_rows(by_task, balance_tasks, counts, rng)
    cuts: dict[str, Counter] = defaultdict(Counter)  # the model's turns before the cut, per kept pair
    for row in rows:
        cuts[row["task"]][sum(1 for m in row["prompt"] if m["role"] == "assistant")] += 1
    report_tasks = {}
    for task in sorted(counts):
        tally = counts[task]
        report_tasks[task] = {
            "problems": len(problems[task]),
            **{key: tally[key] for key in ("prompts", "chains", "correct_chains", "no_correct", "no_incorrect",
                                           "no_distinct_pair", "duplicate_chains", "identical_pairs", "no_divergence",
                                           "not_at_assistant", "duplicate_steps")},
            "prompts_paired": sum(1 for prompt_rows in by_task.get(task, []) if prompt_rows),
            "balanced_away": tally["balanced_away"],
            "cut_turns": {str(turn): n for turn, n in sorted(cuts[task].items())},
            "pairs": sum(1 for row in rows if row["task"] == task),
        }
    report = {
        "settings": {
            "kind": "step",
            "syntax": syntax,
            "pairs_per_prompt": pairs_per_prompt,
            "rest_of_chain": rest_of_chain,
            "drop_identical": drop_identical,
            "balance_tasks": balance_tasks,
            "seed": seed,
        },
        "tasks": report_tasks,
        "pairs": len(rows),
    }
    return rows, report


def _step_row(chosen: "Trajectory", rejected: "Trajectory", index: int, rest_of_chain: bool,
              syntax: str) -> dict[str, Any]:
    prompt, chosen_turns = split_prompt(chosen.messages)
    _, rejected_turns = split_prompt(rejected.messages)
    end = None if rest_of_chain else index + 1
    tools = chosen.tools if syntax == "json" else None
    return {
        "prompt": arrow_safe(prompt + chosen_turns[:index]),
        "chosen": arrow_safe(chosen_turns[index:end]),
        "rejected": arrow_safe(rejected_turns[index:end]),
        "tools": json.dumps(tools, ensure_ascii=False),
        "task": chosen.task,
        "problem_id": chosen.problem_id,
        "chosen_id": chosen.id,
        "rejected_id": rejected.id,
    }


def _group_by_prompt(trajectories: Iterable["Trajectory"]) -> dict[tuple[str, str, str], list["Trajectory"]]:
    """Chains grouped by (task, problem, rendered prompt): the only chains that may be paired."""
    groups: dict[tuple[str, str, str], list["Trajectory"]] = defaultdict(list)
    for trajectory in trajectories:
        prompt, _ = split_prompt(trajectory.messages)
        key = (trajectory.task, trajectory.problem_id, json.dumps(prompt, sort_keys=True, ensure_ascii=False))
        groups[key].append(trajectory)
    return groups


def _both_sides(
    groups: dict[tuple[str, str, str], list["Trajectory"]],
    drop_identical: bool,
    counts: dict[str, Counter],
    problems: dict[str, set[str]],
) -> Iterator[tuple[str, Counter, list["Trajectory"], list["Trajectory"]]]:
    """Per prompt, in a fixed order: (task, its tally, correct chains, incorrect chains), for the
    prompts that have both kinds (distinct ones with `drop_identical`); counts the others in the tally."""
    for (task, problem_id, _), chains in sorted(groups.items()):
        tally = counts[task]
        problems[task].add(problem_id)
        tally["prompts"] += 1
        tally["chains"] += len(chains)
        chains = sorted(chains, key=lambda t: (t.sample, t.id))
        correct = [t for t in chains if t.correct]
        incorrect = [t for t in chains if not t.correct]
        tally["correct_chains"] += len(correct)
        if drop_identical:
            correct, incorrect = _distinct(correct), _distinct(incorrect)
            tally["duplicate_chains"] += len(chains) - len(correct) - len(incorrect)
        if not correct:
            tally["no_correct"] += 1
        elif not incorrect:
            tally["no_incorrect"] += 1
        else:
            yield task, tally, correct, incorrect


def _balanced_rows(
    by_task: dict[str, list[list[dict[str, Any]]]], balance_tasks: bool, counts: dict[str, Counter], rng: random.Random
) -> list[dict[str, Any]]:
    """The rows of every task in task order; with `balance_tasks`, each task cut to the smallest's count."""
    if balance_tasks and len(by_task) > 1:
        cap = min(sum(len(rows) for rows in prompts) for prompts in by_task.values())
        for task, prompts in by_task.items():
            by_task[task], counts[task]["balanced_away"] = _cut_to(prompts, cap, rng)
    return [row for task in sorted(by_task) for prompt_rows in by_task[task] for row in prompt_rows]


def _cut_to(
    prompts: list[list[dict[str, Any]]], cap: int, rng: random.Random
) -> tuple[list[list[dict[str, Any]]], int]:
    """`prompts` cut to `cap` pairs: whole prompts dropped in a seeded order, then pairs of the last ones."""
    total = sum(len(rows) for rows in prompts)
    order = list(range(len(prompts)))
    rng.shuffle(order)
    dropped: set[int] = set()
    for index in order:
        if total - len(prompts[index]) >= cap and total > cap:
            dropped.add(index)
            total -= len(prompts[index])
    kept = [list(rows) for i, rows in enumerate(prompts) if i not in dropped]
    while total > cap:  # no whole prompt fits the excess: cut single pairs from the end
        kept[-1].pop()
        total -= 1
        if not kept[-1]:
            kept.pop()
    cut = sum(len(rows) for rows in prompts) - cap
    return kept, max(cut, 0)


def _distinct(chains: list["Trajectory"]) -> list["Trajectory"]:
    """The first chain of every distinct sequence of assistant turns, in order."""
    seen: set[tuple[str, ...]] = set()
    kept = []
    for chain in chains:
        turns = assistant_turns(chain.messages)
        if turns not in seen:
            seen.add(turns)
            kept.append(chain)
    return kept


def _varied_pairs(candidates: list[tuple[Any, Any]], n: int, rng: random.Random) -> list[tuple[Any, Any]]:
    """Up to `n` pairs, each time the one whose chains have been used least so far (ties: seeded order)."""
    pool = list(candidates)
    rng.shuffle(pool)
    uses: Counter = Counter()
    picked = []
    while pool and len(picked) < n:
        best = min(range(len(pool)), key=lambda i: (uses[pool[i][0].id] + uses[pool[i][1].id], i))
        chosen, rejected = pool.pop(best)
        uses[chosen.id] += 1
        uses[rejected.id] += 1
        picked.append((chosen, rejected))
    return picked


def _row(chosen: "Trajectory", rejected: "Trajectory", syntax: str) -> dict[str, Any]:
    prompt, chosen_turns = split_prompt(chosen.messages)
    _, rejected_turns = split_prompt(rejected.messages)
    tools = chosen.tools if syntax == "json" else None
    return {
        "prompt": arrow_safe(prompt),
        "chosen": arrow_safe(chosen_turns),
        "rejected": arrow_safe(rejected_turns),
        "tools": json.dumps(tools, ensure_ascii=False),
        "task": chosen.task,
        "problem_id": chosen.problem_id,
        "chosen_id": chosen.id,
        "rejected_id": rejected.id,
    }


def split_by_problem(
    rows: list[dict[str, Any]], validation: float = 0.1, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Train and validation rows, split by problem within each task (never by pair).

    Every task gives `round(validation × its problems)` problems to validation (at least one when
    `validation` > 0 and the task has two or more problems), chosen with `seed`; all pairs of a
    problem land on the same side.
    """
    if not 0.0 <= validation < 1.0:
        raise PreferenceError(f"validation must be a fraction in [0, 1), got {validation}")
    problems_by_task: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        if row["problem_id"] not in problems_by_task[row["task"]]:
            problems_by_task[row["task"]].append(row["problem_id"])
    held_out: set[tuple[str, str]] = set()
    rng = random.Random(seed)
    for task in sorted(problems_by_task):
        ids = sorted(problems_by_task[task])
        rng.shuffle(ids)
        count = round(validation * len(ids))
        if validation > 0 and count == 0 and len(ids) >= 2:
            count = 1
        held_out.update((task, problem_id) for problem_id in ids[:count])
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": []}
    for row in rows:
        splits["validation" if (row["task"], row["problem_id"]) in held_out else "train"].append(row)
    return splits


def features():
    """The `datasets.Features` of a preference row (explicit, so an empty split still has them)."""
    from datasets import Features, List, Value

    message = {
        "role": Value("string"),
        "content": Value("string"),
        "name": Value("string"),
        "tool_calls": List({"type": Value("string"), "function": {"name": Value("string"), "arguments": Value("string")}}),
    }
    return Features({
        "prompt": List(message),
        "chosen": List(message),
        "rejected": List(message),
        "tools": Value("string"),
        "task": Value("string"),
        "problem_id": Value("string"),
        "chosen_id": Value("string"),
        "rejected_id": Value("string"),
    })


def save_preferences(
    splits: dict[str, list[dict[str, Any]]], path: str | Path, report: dict[str, Any] | None = None
) -> "DatasetDict":
    """Write the splits under `path` and return them as a `DatasetDict`.

    Writes `path/dataset/` (`DatasetDict.save_to_disk`, read back with `load_preferences`),
    `path/<split>.jsonl` (one row per line, the same rows) and, when given, `path/report.json` with the
    report completed by each split's pair and problem counts per task.
    """
    from datasets import Dataset, DatasetDict

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise PreferenceError(f"unknown split(s) {unknown}; expected {list(SPLITS)}")
    schema = features()
    dataset = DatasetDict({  # column by column, so that an empty split keeps its columns
        name: Dataset.from_dict({c: [row[c] for row in splits.get(name, [])] for c in schema}, features=schema)
        for name in SPLITS
    })
    # An empty split must still be written as one (empty) shard, or it cannot be loaded back.
    shards = {name: max(1, math.ceil((part.data.nbytes or 0) / 2**29)) for name, part in dataset.items()}
    dataset.save_to_disk(str(path / "dataset"), num_shards=shards)
    for name in SPLITS:
        with (path / f"{name}.jsonl").open("w") as out:
            for row in splits.get(name, []):
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    if report is not None:
        report = json.loads(json.dumps(report))
        for name in SPLITS:
            for task, tally in report.get("tasks", {}).items():
                rows = [r for r in splits.get(name, []) if r["task"] == task]
                tally[f"{name}_pairs"] = len(rows)
                tally[f"{name}_problems"] = len({r["problem_id"] for r in rows})
        runs.write_report(path, report)
    return dataset


def load_preferences(path: str | Path) -> "DatasetDict":
    """The `DatasetDict` written by `save_preferences` under `path`."""
    from datasets import load_from_disk

    folder = Path(path) / "dataset"
    if not folder.exists():
        raise FileNotFoundError(f"no preference dataset at {folder}: run notebook 02 (save_preferences) first")
    return load_from_disk(str(folder))


def read_report(path: str | Path) -> dict[str, Any]:
    """The report written by `save_preferences` under `path`."""
    return json.loads((Path(path) / "report.json").read_text())


def build_preference_dataset(profile: Any, trajectories: Iterable["Trajectory"] | None = None) -> tuple["DatasetDict", dict[str, Any]]:
    """Notebook 02 in one call: pairs from the profile's teacher rollouts, split and saved in the run folder.

    Reads `rollouts/teacher-<task>.jsonl` for every task of the profile (unless `trajectories` are
    given), pairs them with the profile's `preferences` settings and its agent syntax, and writes
    `preferences/` (see `save_preferences`). Returns the dataset and the report.
    """
    from fcdpo.rollouts import read_trajectories

    settings = profile.preferences
    run = profile.run_path
    if trajectories is None:
        trajectories = [t for name in profile.tasks for t in read_trajectories(runs.rollouts_file(run, name))]
    trajectories = list(trajectories)
    if not trajectories:
        raise PreferenceError(f"no teacher trajectories under {run / 'rollouts'}: run notebook 01 first")
    rows, report = build_pairs(
        trajectories,
        syntax=profile.agent.syntax,
        pairs_per_prompt=settings.pairs_per_prompt,
        drop_identical=settings.drop_identical,
        balance_tasks=settings.balance_tasks,
        seed=settings.seed,
    )
    splits = split_by_problem(rows, settings.validation, settings.seed)
    report["settings"]["validation"] = settings.validation
    dataset = save_preferences(splits, runs.preferences_dir(run), report)
    return dataset, read_report(runs.preferences_dir(run))


def build_step_preference_dataset(
    profile: Any, trajectories: Iterable["Trajectory"] | None = None
) -> tuple["DatasetDict", dict[str, Any]]:
    """The step_dpo arm's pairs: `build_step_pairs` on the profile's teacher rollouts, in `preferences-step/`.

    The same chains and settings as `build_preference_dataset`, split by problem the same way (the
    validation problems are drawn among those with step pairs); completions are the diverging turns,
    or the rest of the chains with `preferences.step_rest_of_chain`. Returns the dataset and the report.
    """
    from fcdpo.rollouts import read_trajectories

    settings = profile.preferences
    run = profile.run_path
    if trajectories is None:
        trajectories = [t for name in profile.tasks for t in read_trajectories(runs.rollouts_file(run, name))]
    trajectories = list(trajectories)
    if not trajectories:
        raise PreferenceError(f"no teacher trajectories under {run / 'rollouts'}: run notebook 01 first")
    rows, report = build_step_pairs(
        trajectories,
        syntax=profile.agent.syntax,
        pairs_per_prompt=settings.pairs_per_prompt,
        rest_of_chain=settings.step_rest_of_chain,
        drop_identical=settings.drop_identical,
        balance_tasks=settings.balance_tasks,
        seed=settings.seed,
    )
    splits = split_by_problem(rows, settings.validation, settings.seed)
    report["settings"]["validation"] = settings.validation
    folder = runs.pairs_dir(run, "step")
    dataset = save_preferences(splits, folder, report)
    return dataset, read_report(folder)


def student_rollouts(profile: Any, backend: Any = None, progress: bool = False,
                     name: str = "student") -> list["Trajectory"]:
    """The student's own chains on the training problems: `rollouts/<name>-<task>.jsonl` for every task.

    `rollouts.k` chains per problem at `training.onpolicy_temperature` (default `rollouts.temperature`), graded by the task's answer check, with
    the profile's agent, exactly as the teacher was sampled in notebook 01 (`fcdpo.rollouts.rollout`:
    resumable, refusing a file written by another model). `backend` defaults to the profile's student;
    a trained student (a later round of on-policy DPO) writes under another `name`.
    """
    from fcdpo.agent import Agent
    from fcdpo.rollouts import rollout
    from fcdpo.tasks import problem_sets

    run = profile.run_path
    if backend is None:
        from fcdpo.backends import load_backend
        from fcdpo.config import student_spec

        backend = load_backend(student_spec(profile), root=run)
    settings = profile.rollouts
    chosen = getattr(getattr(profile, "training", None), "onpolicy_temperature", None)
    temperature = settings.temperature if chosen is None else chosen
    chains = []
    for task, splits in problem_sets(profile).items():
        agent = Agent(profile.task(task), backend, profile.agent)
        chains += rollout(splits["train"], agent, runs.rollouts_file(run, task, name), k=settings.k,
                          temperature=temperature, seed=settings.seed, batch_size=settings.batch_size,
                          progress=progress)
    return chains


def build_onpolicy_preference_dataset(
    profile: Any, trajectories: Iterable["Trajectory"] | None = None, backend: Any = None, progress: bool = False,
    name: str = "student", folder: str | Path | None = None,
) -> tuple["DatasetDict", dict[str, Any]]:
    """The onpolicy_dpo arm's pairs: the student's own correct against its own incorrect chains, in `preferences-onpolicy/`.

    Samples the student (`student_rollouts`, unless `trajectories` are given) and pairs its chains with
    `build_pairs` and the profile's `preferences` settings: pairs only ever join chains of one problem,
    and the split is drawn by problem. The report adds, per task, what the sampling cost and found
    (`rollouts`: chains, accuracy, generated tokens). `name` and `folder` place the rollouts
    (`rollouts/<name>-<task>.jsonl`) and the pairs elsewhere, for a later round sampled from a trained
    student. Returns the dataset and the report.
    """
    settings = profile.preferences
    run = profile.run_path
    trajectories = list(trajectories) if trajectories is not None else student_rollouts(profile, backend, progress,
                                                                                           name)
    if not trajectories:
        raise PreferenceError("no student chains to pair: the profile has no training problems")
    rows, report = build_pairs(
        trajectories,
        syntax=profile.agent.syntax,
        pairs_per_prompt=settings.pairs_per_prompt,
        drop_identical=settings.drop_identical,
        balance_tasks=settings.balance_tasks,
        seed=settings.seed,
    )
    report["settings"]["kind"] = "onpolicy"
    report["settings"]["validation"] = settings.validation
    report["rollouts"] = {}
    for task in sorted({t.task for t in trajectories}):
        chains = [t for t in trajectories if t.task == task]
        report["rollouts"][task] = {
            "chains": len(chains),
            "problems": len({t.problem_id for t in chains}),
            "accuracy": sum(t.correct for t in chains) / len(chains),
            "completion_tokens": sum(t.tokens.get("completion", 0) for t in chains),
        }
    splits = split_by_problem(rows, settings.validation, settings.seed)
    folder = Path(folder) if folder is not None else runs.pairs_dir(run, "student")
    dataset = save_preferences(splits, folder, report)
    return dataset, read_report(folder)


def method_preferences(profile: Any, method: str, progress: bool = False) -> "DatasetDict":
    """The preference pairs a training method trains on, for a profile's run, by its arm's `data`
    (`fcdpo.arms`).

    "teacher": the teacher's pairs written by notebook 02 (`preferences/`); "step": step pairs
    rebuilt from the teacher's rollouts (`build_step_preference_dataset`); "student": the student's
    own pairs (`build_onpolicy_preference_dataset`, sampling what is not yet in `rollouts/`). The
    rebuilt ones are deterministic functions of the rollouts, so rebuilding never makes them stale.
    Under a multi-process launch (`WORLD_SIZE` > 1) nothing is sampled or written: the method's pairs
    are read from its folder, which must already hold them.
    """
    try:
        arm = arms.get(method)
    except arms.ArmError as error:
        raise PreferenceError(str(error)) from None
    if not arm.pairs:
        pair_arms = [name for name in arms.names() if arms.get(name).pairs]
        raise PreferenceError(f"no preference pairs for method {method!r}; pair-trained arms: {pair_arms}")
    folder = runs.preferences_dir(profile.run_path, method)
    if arm.data == "teacher" or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under `accelerate launch` every process would sample and write the same files: the pairs
        # must have been built beforehand, in one process (notebook 03, or this function).
        if arm.data != "teacher" and not (folder / "dataset").exists():
            raise PreferenceError(f"no {method} pairs in {folder}: build them in one process first "
                                  f"(fcdpo.preferences.method_preferences(profile, {method!r}))")
        return load_preferences(folder)
    if arm.data == "step":
        return build_step_preference_dataset(profile)[0]
    return build_onpolicy_preference_dataset(profile, progress=progress)[0]
