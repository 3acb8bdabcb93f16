"""Benchmark files read safely: rows of jsonl and json files, bounded in size, every unreadable row counted.

Layer: functions and tasks; imports only `fcdpo.tasks.base`.

The readers of each format (GSM8K in `fcdpo.tasks.math`, FOLIO in `fcdpo.tasks.fol`, Logic-LM's
json in `fcdpo.tasks.sources`) turn rows into problems with `collect`.

Every reader returns a `Loaded`: the problems, and for every row of the file that did not become a
problem, its line and why (a row that is not a record of the format, or whose gold answer cannot be
read). In strict mode such a row raises instead.

Files are read defensively: an empty file, a binary file (a NUL byte) or text that is not UTF-8 is
an error naming the file and line, and a row longer than `MAX_ROW_BYTES` or a record with more than
`MAX_LIST_ITEMS` premises / options / annotations is a bad row, so one pathological line cannot
take minutes or gigabytes. So is a row nested too deeply for the JSON parser, one with an integer of
more digits than Python converts, and one whose text holds a lone surrogate (which no UTF-8 file can
store). A UTF-8 byte-order mark is ignored. A file of more than `MAX_ROWS` rows, and a file none of
whose rows is a record of its format (another dataset's file, say), is an error naming the file;
only the first `MAX_WARNINGS` skipped rows are logged one by one, then their count. Untrusted text is
only ever parsed as JSON.

Rows of a jsonl file are named by their line (`train.jsonl:12`), records of a json array by their
number (`dev.json: record 50`), since one record spans many lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from fcdpo.tasks.base import Problem

logger = logging.getLogger(__name__)

MAX_ROW_BYTES = 1 << 20  # one jsonl line; GSM8K and FOLIO rows are a few kilobytes
MAX_JSON_FILE_BYTES = 256 << 20  # a whole-file json (Logic-LM); its records are checked one by one
MAX_LIST_ITEMS = 100  # premises, options or calculator annotations of one record
MAX_TEXT_CHARS = 100_000  # a question, context or answer field
MAX_ROWS = 100_000  # rows of one file; GSM8K's train split, the largest read, has 7,473
MAX_WARNINGS = 20  # skipped rows logged one by one; the rest are counted in one line


class BadRow(ValueError):
    """A row that is not a record of the format; `kind` is "malformed" or "gold" (its gold answer
    cannot be read)."""

    def __init__(self, message: str, kind: str = "malformed") -> None:
        self.kind = kind
        super().__init__(message)


@dataclass
class Rejected:
    """A row of a benchmark file that did not become a problem."""

    line: int  # 1-based line of a jsonl file; 1-based record number of a json array (see `Loaded.unit`)
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
    unit: str = "line"  # what a row's number counts: "line" (jsonl) or "record" (a json array)

    @property
    def rows(self) -> int:
        return len(self.problems) + len(self.rejected)

    def summary(self) -> str:
        """One line: rows, problems, and the rows left out by kind."""
        parts = [f"{self.dataset}: {self.rows} rows from {self.origin}, {len(self.problems)} problems"]
        malformed = sum(r.kind == "malformed" for r in self.rejected)
        gold = sum(r.kind == "gold" for r in self.rejected)
        if malformed:
            parts.append(f"{malformed} malformed row(s) skipped (first: {self.unit} {self._first('malformed')})")
        if gold:
            parts.append(f"{gold} row(s) with an unreadable gold answer (first: {self.unit} {self._first('gold')})")
        if self.notes:
            parts.append(f"{len(self.notes)} problem(s) with unreadable gold formulas "
                         f"(first: {self.unit} {self.notes[0].line})")
        return "; ".join(parts)

    def where(self, number: int) -> str:
        """A row of the origin, for messages: `train.jsonl:12`, or `dev.json: record 50`."""
        return f"{self.origin}:{number}" if self.unit == "line" else f"{self.origin}: record {number}"

    def _first(self, kind: str) -> int:
        return next(r.line for r in self.rejected if r.kind == kind)


def _decode(data: bytes, path: Path, first_line: int) -> str:
    """UTF-8 text of `data`, or an error naming the file and the line of the first bad byte. A
    byte-order mark opening the file (`first_line` 1) is dropped."""
    if b"\x00" in data:
        line = first_line + data[: data.index(b"\x00")].count(b"\n")
        raise ValueError(f"{path}:{line}: a NUL byte; this is a binary file, not text")
    try:
        return data.decode("utf-8-sig" if first_line == 1 else "utf-8")
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
            yield number, _json_row(text)
    if not seen_row:
        raise ValueError(f"{path}: empty file; expected {what} records, one JSON object per line")


def _json_row(text: str) -> Any:
    """One row's JSON value, or a BadRow saying why it is none: not JSON, nested deeper than the
    parser goes, or an integer longer than Python converts (each a ValueError or RecursionError
    that would otherwise abort the whole load naming no file)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return BadRow(f"not JSON ({exc})")
    except RecursionError:
        return BadRow("JSON nested too deeply")
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        return BadRow(f"not readable JSON ({str(exc)[:200]})")


# A JSON string, or a bracket or comma outside strings: enough to find where each record of an array
# starts and ends without parsing it.
_JSON_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')


def _array_rows(text: str, path: Path, what: str) -> list[Any]:
    """The records of a JSON array read one by one, a record that cannot be read becoming a BadRow
    (with its line): for an array the parser refused as a whole only for how deep or how long one
    of its values is."""
    records: list[Any] = []
    depth, start, line, counted = 0, None, 1, 0
    for match in _JSON_STRUCTURE.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth == 1:
                start = match.end()
        elif token in "]}" or token == ",":
            if depth == 1 and start is not None:
                body = text[start : match.start()]
                line += text.count("\n", counted, start)
                counted = start
                if body.strip():
                    first = line + body[: len(body) - len(body.lstrip())].count("\n")
                    record = _json_row(body)
                    if isinstance(record, BadRow):
                        record = BadRow(f"line {first}: {record}", record.kind)
                    records.append(record)
                start = match.end()
            if token != ",":
                depth -= 1
    if depth != 0:
        raise ValueError(f"{path}: not a JSON array of {what} records (its brackets do not close)")
    return records


def json_records(path: str | Path, what: str, max_bytes: int = MAX_JSON_FILE_BYTES) -> list[Any]:
    """The records of a whole-file JSON array (Logic-LM's format); a record nested too deeply or
    holding an over-long integer is a BadRow in its place, so the rest of the file still loads.

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
    except (RecursionError, ValueError):  # one value too deep or too long: read record by record
        if not text.lstrip().startswith("["):
            raise ValueError(f"{path}: expected a JSON array of {what} records") from None
        data = _array_rows(text, path, what)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of {what} records, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{path}: the array is empty; expected {what} records")
    return data


def collect(
    dataset: str,
    origin: str,
    rows: Iterator[tuple[int, Any]],
    make: Callable[[Any, int, int], Problem],
    strict: bool,
    limit: int | None,
    unit: str = "line",
) -> Loaded:
    """Turn `(line, record)` rows into a Loaded; `make(record, line, index)` raises BadRow (or
    KeyError / TypeError / ValueError, taken as a malformed row). `unit` says what the numbers
    count: "line", or "record" for a json array.

    Raises:
        ValueError: in strict mode, the first row that is not a problem; in any mode, more than
            `MAX_ROWS` rows, or rows none of which is a problem; each names the origin.
    """
    loaded = Loaded(dataset, origin, unit=unit)
    for index, (line, record) in enumerate(rows):
        if limit is not None and loaded.rows >= limit:
            break
        if index >= MAX_ROWS:
            raise ValueError(f"{origin}: more than {MAX_ROWS} rows; the limit for one {dataset} file is {MAX_ROWS} "
                             "(pass a limit to read only the first rows)")
        try:
            if isinstance(record, BadRow):
                raise record
            problem = make(record, line, index)
            _check_encodable(problem)
        except (BadRow, KeyError, TypeError, ValueError, RecursionError) as exc:
            kind = exc.kind if isinstance(exc, BadRow) else "malformed"
            reason = f"missing key {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)[:500]
            if strict:
                if kind == "malformed":
                    raise ValueError(f"{loaded.where(line)}: not a {dataset} record ({reason})") from exc
                raise ValueError(f"{loaded.where(line)}: the gold answer cannot be read ({reason})") from exc
            if len(loaded.rejected) < MAX_WARNINGS:
                logger.warning("%s: row skipped (%s)", loaded.where(line), reason)
            loaded.rejected.append(Rejected(line, kind, reason))
            continue
        error = problem.meta.get("gold_chain_error")
        if error is not None:
            loaded.notes.append(Rejected(line, "gold", error))
        loaded.problems.append(problem)
        loaded.problem_rows.append(line)
    if len(loaded.rejected) > MAX_WARNINGS:
        logger.warning("%s: %d more rows skipped (%d in all)", origin, len(loaded.rejected) - MAX_WARNINGS,
                       len(loaded.rejected))
    if loaded.rejected and not loaded.problems:
        first = loaded.rejected[0]
        raise ValueError(
            f"{origin}: none of its {len(loaded.rejected)} rows is a {dataset} record (first, "
            f"{loaded.where(first.line)}: {first.reason}); is it a {dataset} file?")
    return loaded


def _check_encodable(problem: Problem) -> None:
    """BadRow when the problem cannot be written as UTF-8: a lone surrogate (`"\\ud800"` in JSON) in
    its text would load, then fail every later write of the problem."""
    try:
        json.dumps(problem.to_dict(), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRow(f"a lone surrogate (U+{ord(exc.object[exc.start]):04X}) in its text; "
                     "UTF-8 cannot store it") from None


def text_field(record: dict[str, Any], key: str) -> str:
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise BadRow(f"{key!r} must be a non-empty string")
    if len(value) > MAX_TEXT_CHARS:
        raise BadRow(f"{key!r} is {len(value)} characters long; the limit is {MAX_TEXT_CHARS}")
    return value


@contextlib.contextmanager
def hub_offline_from_environment() -> Iterator[None]:
    """Honour HF_HUB_OFFLINE / HF_DATASETS_OFFLINE as set now, not as they were at import time.

    `datasets` and `huggingface_hub` read these variables once when imported; if they were
    imported earlier, a later offline setting would be ignored and `load_dataset` would retry the
    network for about half a minute.
    """
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("HF_DATASETS_OFFLINE", ""))
    if not any(flag.strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags):
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved
