"""Where a task's problems come from: the seeded generator, or a real benchmark's train and test splits.

Layer: functions and tasks; imports the task modules (their readers and records); none imports it.

A profile's task section picks the source (`fcdpo.settings.TaskConfig.source`):

    generated    the task's own seeded generator (the default; `tiny-cpu` uses it)
    gsm8k        GSM8K: hub `openai/gsm8k` (config "main", splits train / test) or the official jsonl files
    folio        FOLIO: the official jsonl files (train / validation), or a public hub copy
    prontoqa     ProntoQA in the json format the Logic-LM repository publishes (local files)
    proofwriter  ProofWriter in the same Logic-LM json format (local files)

Training problems come from a dataset's train split and held-out problems from its test or
validation split; a training problem whose question is also held out is dropped, so the two never
overlap.

Files are read safely by the readers of each format (`read_gsm8k` in `fcdpo.tasks.math`, `read_folio`
in `fcdpo.tasks.fol`, `read_logiclm` here; see `fcdpo.tasks.records`): each returns a `Loaded`, the
problems and every row that did not become one. Accuracy on a benchmark is out of every row of the
file: `held_out` turns each unreadable row into a placeholder problem (`meta["unscored"]` says why)
that `fcdpo.evaluation.evaluate` counts as not solved without running a model on it.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from fcdpo.tasks.base import DatasetUnavailableError, Problem
from fcdpo.tasks.fol import QUESTION_PREFIX, folio_maker, label_of, read_folio
from fcdpo.tasks.math import gsm8k_maker, read_gsm8k
from fcdpo.tasks.prontoqa import gold_chain
from fcdpo.tasks.records import (  # noqa: F401 - jsonl_rows: also importable from here
    MAX_LIST_ITEMS,
    BadRow,
    Loaded,
    Rejected,
    collect,
    hub_offline_from_environment,
    json_records,
    jsonl_rows,
    text_field,
)

SOURCES = ("generated", "gsm8k", "folio", "prontoqa", "proofwriter")
TASK_OF_SOURCE = {"gsm8k": "math", "folio": "fol", "prontoqa": "fol", "proofwriter": "fol"}
# The split each dataset's held-out problems come from, and its training split.
SPLITS = {
    "gsm8k": {"train": "train", "eval": "test"},
    "folio": {"train": "train", "eval": "validation"},
    "prontoqa": {"train": "train", "eval": "dev"},
    "proofwriter": {"train": "train", "eval": "dev"},
}
HUB = {"gsm8k": ("openai/gsm8k", "main"), "folio": ("tasksource/folio", None)}
WHERE_TO_GET = {
    "gsm8k": "https://github.com/openai/grade-school-math/tree/master/grade_school_math/data (train.jsonl, test.jsonl)",
    "folio": "https://github.com/Yale-LILY/FOLIO/tree/main/data (folio-train.jsonl, folio-validation.jsonl)",
    "prontoqa": "https://github.com/teacherpeterpan/Logic-LLM/tree/main/data/ProntoQA (dev.json)",
    "proofwriter": "https://github.com/teacherpeterpan/Logic-LLM/tree/main/data/ProofWriter (dev.json)",
}

# ---------------------------------------------------------------------------------------------
# One split of a dataset: a local file, or the Hugging Face Hub


def _path_keys(dataset: str, split: str, task: str | None) -> str:
    """The profile keys that give a split a local file, e.g. `tasks.math.train_path`."""
    task = task or TASK_OF_SOURCE[dataset]
    keys = [key for key, name in SPLITS[dataset].items() if name == split] or ["train", "eval"]
    return " / ".join(f"tasks.{task}.{key}_path" for key in keys)


def _hub_rows(dataset: str, split: str, hub: str | None,
              task: str | None = None) -> tuple[str, Iterator[tuple[int, Any]]]:
    """Rows of a hub dataset's split, or DatasetUnavailableError saying how to give a local file."""
    name, config = HUB.get(dataset, (None, None))
    if hub is not None:
        name, config = hub, (config if hub == name else None)
    advice = (f"download the official files ({WHERE_TO_GET[dataset]}) and set the profile's "
              f"{_path_keys(dataset, split, task)} to them")
    if name is None:
        raise DatasetUnavailableError(f"{dataset} is not on the Hugging Face Hub here; {advice}")
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise DatasetUnavailableError(f"the `datasets` package is not installed; {advice}") from exc
    try:
        with hub_offline_from_environment():
            table = load_dataset(name, config, split=split) if config else load_dataset(name, split=split)
    except Exception as exc:  # noqa: BLE001 - any failure here means the same thing to the caller
        raise DatasetUnavailableError(
            f"could not load {dataset} ({name}, split {split!r}) from the Hugging Face Hub: "
            f"{type(exc).__name__}: {exc}; {advice}"
        ) from exc
    return f"hub:{name}[{split}]", ((i + 1, dict(table[i])) for i in range(len(table)))


def load_split(
    dataset: str,
    split: str,
    path: str | Path | None = None,
    *,
    hub: str | None = None,
    strict: bool = False,
    limit: int | None = None,
    task: str | None = None,
) -> Loaded:
    """One split of a real dataset, from `path` if given, else from the Hugging Face Hub.

    Args:
        dataset: "gsm8k", "folio", "prontoqa" or "proofwriter".
        split: the split's name on the hub ("train", "test", "validation"); with `path` it only
            names the problems.
        path: a local file in the dataset's official format.
        hub: another hub id than the default (`openai/gsm8k`, `tasksource/folio`).
        strict: raise on the first row that is not a record or whose gold answer cannot be read
            (default: skip it, count it in `rejected` and log it).
        limit: read at most this many rows.
        task: the profile's task the split is for, named in the advice of an error (default: the
            dataset's task).

    Raises:
        DatasetUnavailableError: no path, and the hub cannot give the split (offline, no copy);
            the message names the dataset and how to provide a local file.
        FileNotFoundError, ValueError: as for the file readers.
    """
    if dataset not in TASK_OF_SOURCE:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(TASK_OF_SOURCE)}")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no {dataset} file at {path}; download the official files ({WHERE_TO_GET[dataset]})")
        if dataset == "gsm8k":
            return read_gsm8k(path, strict=strict, limit=limit)
        if dataset == "folio":
            return read_folio(path, strict=strict, limit=limit)
        return read_logiclm(path, dataset, strict=strict, limit=limit)
    if dataset in ("prontoqa", "proofwriter"):
        raise DatasetUnavailableError(
            f"{dataset} has no hub source; download the Logic-LM json ({WHERE_TO_GET[dataset]}) and set the "
            f"profile's {_path_keys(dataset, split, task)} to it")
    origin, rows = _hub_rows(dataset, split, hub, task)
    make = gsm8k_maker(split) if dataset == "gsm8k" else folio_maker(origin)
    return collect(dataset, origin, rows, make, strict, limit)


# ---------------------------------------------------------------------------------------------
# ProntoQA and ProofWriter in Logic-LM's format

# "A) True" / "B) False" / "C) Unknown": the letter and the label it stands for.
_OPTION = re.compile(r"^\s*\(?([A-Z])\)\s*(.+?)\s*$")
DEFAULT_OPTIONS = {"A": "True", "B": "False", "C": "Unknown"}


def option_label(answer: Any, options: Any = None) -> str | None:
    """The label an option letter stands for: with Logic-LM's `options` (`["A) True", "B) False"]`)
    the option's text, else A / B / C as True / False / Unknown. None when it is none of these."""
    if not isinstance(answer, str):
        return None
    letter = answer.strip().strip("()").upper()
    table = dict(DEFAULT_OPTIONS)
    if isinstance(options, list):
        parsed = [_OPTION.match(o) for o in options if isinstance(o, str)]
        if parsed and all(parsed):
            table = {m.group(1): m.group(2) for m in parsed if m}
    if letter in table:
        return label_of(table[letter])
    return label_of(answer)


def _statement(question: str) -> str:
    """The statement asked about: the text after the question's last "?" (Logic-LM writes
    "Is the following statement true or false? Max is sour.")."""
    head, mark, tail = question.rpartition("?")
    statement = tail.strip() if mark and tail.strip() else question.strip()
    return statement


def _logiclm_maker(dataset: str) -> Callable[[Any, int, int], Problem]:
    def make(record: Any, line: int, index: int) -> Problem:
        if not isinstance(record, dict):
            raise BadRow("expected a JSON object")
        context, question = text_field(record, "context"), text_field(record, "question")
        options = record.get("options")
        if options is not None and (not isinstance(options, list) or len(options) > MAX_LIST_ITEMS):
            raise BadRow(f"'options' must be a list of at most {MAX_LIST_ITEMS} strings")
        answer = option_label(record["answer"], options)
        if answer is None:
            raise BadRow(f"answer {record['answer']!r} is no option of {options!r}", kind="gold")
        statement = _statement(question)
        record_id = record.get("id")
        meta: dict[str, Any] = {"hops": None, "label": answer, "source": dataset, "row": line}
        if dataset == "prontoqa":
            try:
                chain = gold_chain(context, statement)
            except ValueError as exc:
                chain = []
                meta["gold_chain_error"] = str(exc)
        else:  # ProofWriter's relational sentences have no structured calls
            chain = []
        return Problem(
            id=str(record_id) if isinstance(record_id, (str, int)) and not isinstance(record_id, bool)
            else f"{dataset}-{index}",
            task="fol",
            question=f"{context.strip()}\n{QUESTION_PREFIX} {statement}",
            answer=answer,
            gold_chain=chain,
            meta=meta,
        )

    return make


def read_logiclm(path: str | Path, dataset: str, *, strict: bool = False, limit: int | None = None) -> Loaded:
    """ProntoQA or ProofWriter records from a Logic-LM json file: an array of
    `{"id", "context", "question", "options": ["A) True", ...], "answer": "A"}`.

    The option letter becomes True / False / Unknown. ProntoQA's sentences become a gold chain of
    `add_fact` / `add_rule` / `query` calls (`fcdpo.tasks.prontoqa`); ProofWriter's get none."""
    path = Path(path)
    records = json_records(path, dataset)
    rows = ((number, record) for number, record in enumerate(records, 1))
    return collect(dataset, str(path), rows, _logiclm_maker(dataset), strict, limit, unit="record")


# ---------------------------------------------------------------------------------------------
# A profile's splits


def placeholder(dataset: str, task: str, rejected: Rejected, split: str) -> Problem:
    """A held-out row that cannot be graded: evaluation counts it as not solved and runs nothing on it."""
    return Problem(
        id=f"{dataset}-{split}-row{rejected.line}",
        task=task,
        question="",
        answer="",
        meta={"source": dataset, "row": rejected.line, "unscored": f"{rejected.kind}: {rejected.reason}"},
    )


def held_out(loaded: Loaded, task: str, split: str, limit: int | None = None) -> list[Problem]:
    """Every row of a held-out split in file order: its problems, and a placeholder for each row that
    did not become one, so accuracy is out of every row. `limit` keeps the first rows."""
    items = [(row, p) for row, p in zip(loaded.problem_rows, loaded.problems)]
    items += [(r.line, placeholder(loaded.dataset, task, r, split)) for r in loaded.rejected]
    items.sort(key=lambda pair: pair[0])
    problems = [p for _, p in items]
    return problems if limit is None else problems[:limit]


def training(loaded: Loaded, held: list[Problem], size: int | None, seed: int) -> tuple[list[Problem], int]:
    """Up to `size` training problems (a seeded sample; None: all), none of whose questions is held
    out, and how many were dropped for that."""
    questions = {p.question for p in held if not p.meta.get("unscored")}
    fresh = [p for p in loaded.problems if p.question not in questions]
    dropped = len(loaded.problems) - len(fresh)
    if size is not None and size < len(fresh):
        rng = random.Random(f"train-{loaded.dataset}-{seed}")
        picked = sorted(rng.sample(range(len(fresh)), size))
        fresh = [fresh[i] for i in picked]
    return fresh, dropped


def real_splits(
    dataset: str,
    task: str,
    sizes: dict[str, int | None],
    seed: int = 0,
    *,
    paths: dict[str, str | Path | None] | None = None,
    hub: str | None = None,
    strict: bool = False,
) -> tuple[dict[str, list[Problem]], list[str]]:
    """A real dataset's held-out (`eval`) and training (`train`) problems, and report lines.

    `sizes` maps "eval" / "train" to a count or None (all). `paths` maps them to local files (else
    the hub). The held-out list has a placeholder for every unreadable row; the training list has
    only problems, none with a held-out question.

    Raises:
        DatasetUnavailableError: a split can be read neither from a file nor from the hub; one
            error names every such split.
        ValueError: training problems are asked for and none is left once the held-out questions
            are dropped (the train file is the held-out file, say); as for `load_split`.
    """
    if dataset not in TASK_OF_SOURCE:
        raise ValueError(f"unknown source {dataset!r}; expected one of {list(SOURCES)}")
    paths = paths or {}
    out: dict[str, list[Problem]] = {}
    report: list[str] = []
    # The held-out split is read even when only training problems are asked for: they must avoid it.
    loaded: dict[str, Loaded] = {}
    missing: list[str] = []
    for key in ("eval", "train") if "train" in sizes else ("eval",):
        try:
            loaded[key] = load_split(dataset, SPLITS[dataset][key], paths.get(key), hub=hub, strict=strict, task=task)
        except DatasetUnavailableError as exc:
            missing.append(str(exc))
    if missing:
        raise DatasetUnavailableError("\n".join(missing))
    report.append(loaded["eval"].summary())
    whole = held_out(loaded["eval"], task, "eval")  # a training problem must avoid all of it, not only the rows used
    if "eval" in sizes:
        limit = sizes["eval"]
        out["eval"] = whole if limit is None else whole[:limit]
    if "train" in sizes:
        train = loaded["train"]
        report.append(train.summary())
        out["train"], dropped = training(train, whole, sizes["train"], seed)
        if not out["train"] and sizes["train"] != 0:
            same = paths.get("train") is not None and paths.get("train") == paths.get("eval")
            raise ValueError(
                f"{dataset}: no training problems for tasks.{task}: every one of the {len(train.problems)} "
                f"problem(s) of {train.origin} has its question in the held-out split ({loaded['eval'].origin})"
                + ("; train_path and eval_path name the same file" if same else ""))
        if dropped:
            report.append(f"{dataset}: {dropped} training problem(s) dropped: their question is held out")
    return out, report
