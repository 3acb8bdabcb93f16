"""Where a task's problems come from: the seeded generator, or a real benchmark's train and test splits.

A profile's task section picks the source (`fcdpo.config.TaskConfig.source`):

    generated    the task's own seeded generator (the default; `tiny-cpu` uses it)
    gsm8k        GSM8K: hub `openai/gsm8k` (config "main", splits train / test) or the official jsonl files
    folio        FOLIO: the official jsonl files (train / validation), or a public hub copy
    prontoqa     ProntoQA in the json format the Logic-LM repository publishes (local files)
    proofwriter  ProofWriter in the same Logic-LM json format (local files)

Training problems come from a dataset's train split and held-out problems from its test or
validation split; a training problem whose question is also held out is dropped, so the two never
overlap.

Every reader returns a `Loaded`: the problems, and for every row of the file that did not become a
problem, its line and why (a row that is not a record of the format, or whose gold answer cannot be
read). In strict mode such a row raises instead. Accuracy on a benchmark is out of every row of the
file: `held_out` turns each unreadable row into a placeholder problem (`meta["unscored"]` says why)
that `fcdpo.evaluation.evaluate` counts as not solved without running a model on it.

Files are read defensively: an empty file, a binary file (a NUL byte) or text that is not UTF-8 is
an error naming the file and line, and a row longer than `MAX_ROW_BYTES` or a record with more than
`MAX_LIST_ITEMS` premises / options / annotations is a bad row, so one pathological line cannot
take minutes or gigabytes. Untrusted text is only ever parsed as JSON.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from fcdpo.tasks.base import DatasetUnavailableError, Problem

logger = logging.getLogger(__name__)

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

MAX_ROW_BYTES = 1 << 20  # one jsonl line; GSM8K and FOLIO rows are a few kilobytes
MAX_JSON_FILE_BYTES = 256 << 20  # a whole-file json (Logic-LM); its records are checked one by one
MAX_LIST_ITEMS = 100  # premises, options or calculator annotations of one record
MAX_TEXT_CHARS = 100_000  # a question, context or answer field


class BadRow(ValueError):
    """A row that is not a record of the format; `kind` is "malformed" or "gold" (its gold answer
    cannot be read)."""

    def __init__(self, message: str, kind: str = "malformed") -> None:
        self.kind = kind
        super().__init__(message)


@dataclass
class Rejected:
    """A row of a benchmark file that did not become a problem."""

    line: int  # 1-based line of a jsonl file; 1-based record number of a json array
    kind: str  # "malformed" (not a record of the format) or "gold" (its gold answer cannot be read)
    reason: str


@dataclass
class Loaded:
    """What a reader made of one split: its problems, and every row that did not become one."""

    dataset: str
    origin: str  # the file, or `hub:<id>[<split>]`
    problems: list[Problem] = field(default_factory=list)
    problem_rows: list[int] = field(default_factory=list)  # the line (or record number) of each problem
    rejected: list[Rejected] = field(default_factory=list)
    # Problems kept whose gold chain cannot be used (FOLIO formulas the prover cannot read): they are
    # graded by their label like any other row, but a gold chain cannot be run for them.
    notes: list[Rejected] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.problems) + len(self.rejected)

    def summary(self) -> str:
        """One line: rows, problems, and the rows left out by kind."""
        parts = [f"{self.dataset}: {self.rows} rows from {self.origin}, {len(self.problems)} problems"]
        malformed = sum(r.kind == "malformed" for r in self.rejected)
        gold = sum(r.kind == "gold" for r in self.rejected)
        if malformed:
            parts.append(f"{malformed} malformed row(s) skipped (first: line {self._first('malformed')})")
        if gold:
            parts.append(f"{gold} row(s) with an unreadable gold answer (first: line {self._first('gold')})")
        if self.notes:
            parts.append(f"{len(self.notes)} problem(s) with unreadable gold formulas (first: line {self.notes[0].line})")
        return "; ".join(parts)

    def _first(self, kind: str) -> int:
        return next(r.line for r in self.rejected if r.kind == kind)


# ---------------------------------------------------------------------------------------------
# Reading files safely


def _decode(data: bytes, path: Path, first_line: int) -> str:
    """UTF-8 text of `data`, or an error naming the file and the line of the first bad byte."""
    if b"\x00" in data:
        line = first_line + data[: data.index(b"\x00")].count(b"\n")
        raise ValueError(f"{path}:{line}: a NUL byte; this is a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data[: exc.start].count(b"\n")
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x})") from exc


def jsonl_rows(path: str | Path, what: str, max_row_bytes: int = MAX_ROW_BYTES) -> Iterator[tuple[int, Any]]:
    """`(line, record or BadRow)` for every non-blank line of a jsonl file, reading at most
    `max_row_bytes` of any line.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty (no row at all), binary, or not UTF-8; the message names the
            file and, for the last two, the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}")
    seen_row = False
    with path.open("rb") as f:
        number = 0
        while True:
            raw = f.readline(max_row_bytes + 1)
            if not raw:
                break
            number += 1
            if len(raw) > max_row_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line, a block at a time
                    raw = f.readline(1 << 16)
                seen_row = True
                yield number, BadRow(f"longer than {max_row_bytes} bytes")
                continue
            text = _decode(raw, path, number)
            if not text.strip():
                continue
            seen_row = True
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, BadRow(f"not JSON ({exc})")
    if not seen_row:
        raise ValueError(f"{path}: empty file; expected {what} records, one JSON object per line")


def json_records(path: str | Path, what: str, max_bytes: int = MAX_JSON_FILE_BYTES) -> list[Any]:
    """The records of a whole-file JSON array (Logic-LM's format).

    Raises:
        FileNotFoundError, ValueError: no file; an empty, binary, non-UTF-8 or oversized file; not a
            JSON array (with the line of the JSON error).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path}: {size} bytes; the limit for one {what} file is {max_bytes}")
    text = _decode(path.read_bytes(), path, 1)
    if not text.strip():
        raise ValueError(f"{path}: empty file; expected a JSON array of {what} records")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of {what} records, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{path}: the array is empty; expected {what} records")
    return data


def _collect(
    dataset: str,
    origin: str,
    rows: Iterator[tuple[int, Any]],
    make: Callable[[Any, int, int], Problem],
    strict: bool,
    limit: int | None,
) -> Loaded:
    """Turn `(line, record)` rows into a Loaded; `make(record, line, index)` raises BadRow (or
    KeyError / TypeError / ValueError, taken as a malformed row)."""
    loaded = Loaded(dataset, origin)
    for index, (line, record) in enumerate(rows):
        if limit is not None and loaded.rows >= limit:
            break
        try:
            if isinstance(record, BadRow):
                raise record
            problem = make(record, line, index)
        except (BadRow, KeyError, TypeError, ValueError) as exc:
            kind = exc.kind if isinstance(exc, BadRow) else "malformed"
            reason = f"missing key {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            if strict:
                if kind == "malformed":
                    raise ValueError(f"{origin}:{line}: not a {dataset} record ({reason})") from exc
                raise ValueError(f"{origin}:{line}: the gold answer cannot be read ({reason})") from exc
            logger.warning("%s:%s: row skipped (%s)", origin, line, reason)
            loaded.rejected.append(Rejected(line, kind, reason))
            continue
        error = problem.meta.get("gold_chain_error")
        if error is not None:
            loaded.notes.append(Rejected(line, "gold", error))
        loaded.problems.append(problem)
        loaded.problem_rows.append(line)
    return loaded


def _text(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise BadRow(f"{key!r} must be a non-empty string")
    if len(value) > MAX_TEXT_CHARS:
        raise BadRow(f"{key!r} is {len(value)} characters long; the limit is {MAX_TEXT_CHARS}")
    return value


# ---------------------------------------------------------------------------------------------
# GSM8K


def _gsm8k_maker(prefix: str) -> Callable[[Any, int, int], Problem]:
    from fcdpo.tasks.math import _ANNOTATION, gsm8k_problem

    def make(record: Any, line: int, index: int) -> Problem:
        if not isinstance(record, dict):
            raise BadRow("expected a JSON object")
        _text(record, "question")
        answer = _text(record, "answer")
        annotations = len(_ANNOTATION.findall(answer))
        if annotations > MAX_LIST_ITEMS:
            raise BadRow(f"{annotations} calculator annotations; the limit is {MAX_LIST_ITEMS}")
        try:
            return gsm8k_problem(record, f"gsm8k-{prefix}-{index}")
        except ValueError as exc:  # the record's shape was checked above: what is left is its answer
            raise BadRow(str(exc).split(": ", 1)[-1], kind="gold") from exc

    return make


def read_gsm8k(path: str | Path, *, strict: bool = False, limit: int | None = None) -> Loaded:
    """GSM8K rows from an official jsonl file (`{"question", "answer"}`, `#### <answer>` last).

    Problem ids are `gsm8k-<file stem>-<row>` (row: 0-based among the file's non-blank lines)."""
    path = Path(path)
    rows = jsonl_rows(path, "GSM8K")
    return _collect("gsm8k", str(path), rows, _gsm8k_maker(path.stem), strict, limit)


def _hub_rows(dataset: str, split: str, hub: str | None) -> tuple[str, Iterator[tuple[int, Any]]]:
    """Rows of a hub dataset's split, or DatasetUnavailableError saying how to give a local file."""
    from fcdpo.tasks.math import _hub_offline_from_environment

    name, config = HUB.get(dataset, (None, None))
    if hub is not None:
        name, config = hub, (config if hub == name else None)
    advice = (f"download the official files ({WHERE_TO_GET[dataset]}) and set the profile's "
              f"tasks.<task>.train_path / eval_path to them")
    if name is None:
        raise DatasetUnavailableError(f"{dataset} is not on the Hugging Face Hub here; {advice}")
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise DatasetUnavailableError(f"the `datasets` package is not installed; {advice}") from exc
    try:
        with _hub_offline_from_environment():
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
            "profile's tasks.<task>.train_path / eval_path to it")
    origin, rows = _hub_rows(dataset, split, hub)
    make = _gsm8k_maker(split) if dataset == "gsm8k" else _folio_maker()
    return _collect(dataset, origin, rows, make, strict, limit)


# ---------------------------------------------------------------------------------------------
# FOLIO


def _folio_maker() -> Callable[[Any, int, int], Problem]:
    from fcdpo.tasks.fol import MAX_FOLIO_PREMISES, folio_formula_error, folio_record

    def make(record: Any, line: int, index: int) -> Problem:
        if isinstance(record, dict) and "label" in record and isinstance(record["label"], str):
            from fcdpo.tasks.fol import label_of

            if label_of(record["label"]) is None:
                raise BadRow(f"label {record['label']!r} is not True, False or Uncertain", kind="gold")
        problem = folio_record(record, line, max_premises=min(MAX_FOLIO_PREMISES, MAX_LIST_ITEMS))
        error = folio_formula_error(problem)
        if error is not None:
            logger.warning("FOLIO row %s: the gold formulas cannot be read: %s", line, error)
            problem.meta["gold_chain_error"] = error
            problem.gold_chain = []
        return problem

    return make


def read_folio(path: str | Path, *, strict: bool = False, limit: int | None = None) -> Loaded:
    """FOLIO rows from an official jsonl file (`premises`, `premises-FOL`, `conclusion`,
    `conclusion-FOL`, `label`).

    A record whose label is not True / False / Uncertain has no readable gold answer (rejected,
    kind "gold"). A record whose formulas the prover cannot read is kept, graded by its label, with
    an empty gold chain and `meta["gold_chain_error"]` naming the premise or conclusion, the formula
    and the position; it is listed in `notes` with its line."""
    path = Path(path)
    loaded = _collect("folio", str(path), jsonl_rows(path, "FOLIO"), _folio_maker(), strict, limit)
    for note in loaded.notes:
        note.reason = f"{path}:{note.line}: {note.reason}"
    return loaded


# ---------------------------------------------------------------------------------------------
# ProntoQA and ProofWriter in Logic-LM's format

# "A) True" / "B) False" / "C) Unknown": the letter and the label it stands for.
_OPTION = re.compile(r"^\s*\(?([A-Z])\)\s*(.+?)\s*$")
DEFAULT_OPTIONS = {"A": "True", "B": "False", "C": "Unknown"}


def option_label(answer: Any, options: Any = None) -> str | None:
    """The label an option letter stands for: with Logic-LM's `options` (`["A) True", "B) False"]`)
    the option's text, else A / B / C as True / False / Unknown. None when it is none of these."""
    from fcdpo.tasks.fol import label_of

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
    from fcdpo.tasks.fol import QUESTION_PREFIX
    from fcdpo.tasks.prontoqa import gold_chain

    def make(record: Any, line: int, index: int) -> Problem:
        if not isinstance(record, dict):
            raise BadRow("expected a JSON object")
        context, question = _text(record, "context"), _text(record, "question")
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
    return _collect(dataset, str(path), rows, _logiclm_maker(dataset), strict, limit)


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
    """
    if dataset not in TASK_OF_SOURCE:
        raise ValueError(f"unknown source {dataset!r}; expected one of {list(SOURCES)}")
    paths = paths or {}
    out: dict[str, list[Problem]] = {}
    report: list[str] = []
    # The held-out split is read even when only training problems are asked for: they must avoid it.
    loaded = load_split(dataset, SPLITS[dataset]["eval"], paths.get("eval"), hub=hub, strict=strict)
    report.append(loaded.summary())
    whole = held_out(loaded, task, "eval")  # a training problem must avoid all of it, not only the rows used
    if "eval" in sizes:
        limit = sizes["eval"]
        out["eval"] = whole if limit is None else whole[:limit]
    if "train" in sizes:
        loaded = load_split(dataset, SPLITS[dataset]["train"], paths.get("train"), hub=hub, strict=strict)
        report.append(loaded.summary())
        out["train"], dropped = training(loaded, whole, sizes["train"], seed)
        if dropped:
            report.append(f"{dataset}: {dropped} training problem(s) dropped: their question is held out")
    return out, report
