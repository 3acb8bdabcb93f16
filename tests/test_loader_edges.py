"""Benchmark and problem files at their edges: every loader reports a bad row with its file and row
and goes on (or raises in strict mode), refuses what is not its dataset, and stays bounded in time,
memory and log lines. Each edge is injected into an otherwise good file of every format."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcdpo.config import load_profile
from fcdpo.tasks import problem_sets
from fcdpo.tasks.base import DatasetUnavailableError, Problem, load_problems, save_problems
from fcdpo.tasks.fol import singular
from fcdpo.tasks.records import MAX_ROWS, MAX_TEXT_CHARS, MAX_WARNINGS
from fcdpo.tasks.sources import read_folio, read_gsm8k, read_logiclm, real_splits
from tests.test_sources import FOLIO_TRAIN, GSM8K_TEST, GSM8K_TRAIN, PRONTOQA, write_jsonl

DEEP = "[" * 100_000 + "]" * 100_000
LONG_INTEGER = "7" * 5000
# Text that is no row of any format, injected between good rows: (what it is, the reason reported).
BAD_ROWS = {
    "deep": (DEEP, "nested too deeply"),
    "long integer": (f'{{"question": "q?", "answer": {LONG_INTEGER}}}', "not readable JSON"),
}


def gsm8k_file(tmp_path, bad):
    return write_jsonl(tmp_path / "test.jsonl", GSM8K_TEST[:2], [bad])


def folio_file(tmp_path, bad):
    return write_jsonl(tmp_path / "folio.jsonl", FOLIO_TRAIN, [bad])


READERS = {"gsm8k": (gsm8k_file, read_gsm8k), "folio": (folio_file, read_folio)}


@pytest.mark.parametrize("edge", sorted(BAD_ROWS))
@pytest.mark.parametrize("dataset", sorted(READERS))
def test_a_row_too_deep_or_too_long_for_json_is_a_bad_row_naming_file_and_line(tmp_path, caplog, dataset, edge):
    make_file, read = READERS[dataset]
    bad, reason = BAD_ROWS[edge]
    path = make_file(tmp_path, bad)
    line = len(path.read_text().splitlines())
    with caplog.at_level(logging.WARNING):
        loaded = read(path)
    assert loaded.problems and [(r.line, r.kind) for r in loaded.rejected] == [(line, "malformed")]
    assert reason in loaded.rejected[0].reason and f"{path}:{line}: row skipped" in caplog.text
    with pytest.raises(ValueError, match=rf"{path.name}:{line}: not a {dataset} record \(.*{reason}"):
        read(path, strict=True)


@pytest.mark.parametrize("edge", sorted(BAD_ROWS))
def test_a_logiclm_record_too_deep_or_too_long_is_a_bad_record_and_the_rest_load(tmp_path, edge):
    bad, reason = BAD_ROWS[edge]
    records = [json.dumps(r, indent=1) for r in PRONTOQA]
    path = tmp_path / "dev.json"
    path.write_text("[\n" + ",\n".join([records[0], bad, records[1]]) + "\n]", encoding="utf-8")
    line = 2 + records[0].count("\n") + 1  # the bad record's own line
    loaded = read_logiclm(path, "prontoqa")
    assert [p.id for p in loaded.problems] == ["ProntoQA_1", "ProntoQA_2"]
    [rejected] = loaded.rejected
    assert rejected.line == 2 and f"line {line}: " in rejected.reason and reason in rejected.reason
    assert "first: record 2" in loaded.summary()
    with pytest.raises(ValueError, match=rf"dev\.json: record 2: not a prontoqa record \(line {line}: "):
        read_logiclm(path, "prontoqa", strict=True)


def test_a_logiclm_record_is_named_by_its_number_not_as_a_line(tmp_path, caplog):
    records = PRONTOQA + [{**PRONTOQA[0], "id": "x", "context": 7}]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        read_logiclm(path, "prontoqa")
    assert f"{path}: record 3: row skipped" in caplog.text and f"{path}:3" not in caplog.text


@pytest.mark.parametrize("edge", sorted(BAD_ROWS))
def test_load_problems_names_file_and_line_of_a_row_too_deep_or_too_long(tmp_path, edge):
    path = tmp_path / "problems.jsonl"
    save_problems([Problem("p1", "math", "q?", "1")], path)
    with path.open("a") as f:
        f.write(BAD_ROWS[edge][0] + "\n")
    with pytest.raises(ValueError, match=r"problems\.jsonl:2: not a problem record"):
        load_problems(path)


def test_a_file_of_another_dataset_is_refused_naming_the_file_not_loaded_as_placeholders(tmp_path):
    gsm8k = write_jsonl(tmp_path / "test.jsonl", GSM8K_TEST)
    with pytest.raises(ValueError, match=r"test\.jsonl: none of its 3 rows is a folio record .*is it a folio file"):
        read_folio(gsm8k)
    folio = write_jsonl(tmp_path / "folio.jsonl", FOLIO_TRAIN)
    with pytest.raises(ValueError, match=r"folio\.jsonl: none of its 1 rows is a gsm8k record"):
        read_gsm8k(folio)
    gsm8k_array = tmp_path / "gsm8k.json"
    gsm8k_array.write_text(json.dumps(GSM8K_TEST))
    with pytest.raises(ValueError, match=r"gsm8k\.json: none of its 3 rows is a prontoqa record"):
        read_logiclm(gsm8k_array, "prontoqa")


def test_a_file_of_a_million_bad_rows_stops_at_the_row_limit_and_logs_a_few_lines(tmp_path, caplog):
    path = tmp_path / "ones.jsonl"
    path.write_text("1\n" * 1_000_000)
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match=rf"more than {MAX_ROWS} rows"):
        read_gsm8k(path)
    assert len(caplog.records) <= MAX_WARNINGS + 1


def test_many_bad_rows_are_logged_up_to_a_bound_then_counted(tmp_path, caplog):
    path = write_jsonl(tmp_path / "test.jsonl", GSM8K_TEST[:1], ["1"] * 500)
    with caplog.at_level(logging.WARNING):
        loaded = read_gsm8k(path)
    assert len(loaded.rejected) == 500 and len(caplog.records) == MAX_WARNINGS + 1
    assert f"{path}: {500 - MAX_WARNINGS} more rows skipped (500 in all)" in caplog.text


def test_a_lone_surrogate_is_a_bad_row_at_load_and_save_problems_names_its_file(tmp_path):
    surrogate = '{"question": "Caf\\ud800 has 2 cups. How many?", "answer": "#### 2"}'
    path = write_jsonl(tmp_path / "test.jsonl", GSM8K_TEST[:2], [surrogate])
    loaded = read_gsm8k(path)
    assert len(loaded.problems) == 2 and loaded.rejected[0].line == 3
    assert "lone surrogate (U+D800)" in loaded.rejected[0].reason
    with pytest.raises(ValueError, match=r"test\.jsonl:3: not a gsm8k record \(a lone surrogate"):
        read_gsm8k(path, strict=True)
    out = tmp_path / "problems.jsonl"
    with pytest.raises(ValueError, match=r"problems\.jsonl: problem 'p1' cannot be written as UTF-8"):
        save_problems([Problem("p1", "math", "Caf\ud800?", "1")], out)
    out.write_text('{"id": "p1", "task": "math", "question": "Caf\\ud800?", "answer": "1"}\n')
    with pytest.raises(ValueError, match=r"problems\.jsonl:1: a lone surrogate"):
        load_problems(out)


def test_a_byte_order_mark_does_not_cost_the_first_row(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", GSM8K_TEST[:2])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(read_gsm8k(path, strict=True).problems) == 2
    array = tmp_path / "dev.json"
    array.write_bytes(b"\xef\xbb\xbf" + json.dumps(PRONTOQA).encode())
    assert len(read_logiclm(array, "prontoqa", strict=True).problems) == 2
    problems = tmp_path / "problems.jsonl"
    save_problems([Problem("p1", "math", "q?", "1")], problems)
    problems.write_bytes(b"\xef\xbb\xbf" + problems.read_bytes())
    assert [p.id for p in load_problems(problems)] == ["p1"]


def test_folio_warnings_name_the_file_and_folio_text_fields_are_bounded(tmp_path, caplog):
    unreadable = {**FOLIO_TRAIN[0], "example_id": 2, "premises-FOL": "Square(thisObject\nSquare(x)"}
    long_text = {**FOLIO_TRAIN[0], "example_id": 3, "conclusion": "x" * (MAX_TEXT_CHARS + 1)}
    long_premises = {**FOLIO_TRAIN[0], "example_id": 4, "premises": ["y" * 60_000, "z" * 60_000]}
    path = write_jsonl(tmp_path / "folio.jsonl", [FOLIO_TRAIN[0], unreadable, long_text, long_premises])
    with caplog.at_level(logging.WARNING):
        loaded = read_folio(path)
    assert f"{path}:2: the gold formulas cannot be read" in caplog.text
    assert [(r.line, r.kind) for r in loaded.rejected] == [(3, "malformed"), (4, "malformed")]
    assert all("the limit is" in r.reason for r in loaded.rejected)


def test_a_training_split_left_empty_is_an_error_saying_what_and_where(tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", GSM8K_TEST)
    with pytest.raises(ValueError, match=r"no training problems for tasks\.math: .*test\.jsonl.*"
                                         r"train_path and eval_path name the same file"):
        real_splits("gsm8k", "math", {"eval": None, "train": None}, paths={"train": test, "eval": test})
    train = write_jsonl(tmp_path / "train.jsonl", GSM8K_TEST[:1])  # its only question is held out
    with pytest.raises(ValueError, match=r"every one of the 1 problem\(s\) of .*train\.jsonl"):
        real_splits("gsm8k", "math", {"eval": None, "train": None}, paths={"train": train, "eval": test})
    train = write_jsonl(tmp_path / "train.jsonl", GSM8K_TRAIN)
    sets, _ = real_splits("gsm8k", "math", {"eval": None, "train": None}, paths={"train": train, "eval": test})
    assert len(sets["train"]) == 3


def test_offline_every_missing_dataset_is_named_in_one_error_with_the_real_task_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    profile = load_profile("colab-t4", {"run_dir": str(tmp_path)})  # GSM8K and FOLIO, from the hub
    with pytest.raises(DatasetUnavailableError) as excinfo:
        problem_sets(profile)
    message = str(excinfo.value)
    assert "<task>" not in message
    for dataset, key in (("gsm8k", "tasks.math.eval_path"), ("gsm8k", "tasks.math.train_path"),
                         ("folio", "tasks.fol.eval_path"), ("folio", "tasks.fol.train_path")):
        assert dataset in message and key in message, key


@pytest.mark.parametrize("word, expected", [
    ("news", "news"), ("species", "species"), ("series", "series"), ("means", "means"),
    ("jompuses", "jompus"), ("cats", "cat"), ("daisies", "daisy"), ("glass", "glass"), ("crews", "crew"),
])
def test_singular_keeps_nouns_that_are_already_singular(word, expected):
    assert singular(word) == expected


ROW_TEXT = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["[" * 5000, '{"question": ' * 3000, "9" * 4400, "\ufeff{}", '"\\ud800"', "1", "null",
                     '{"question": "\\udfff?", "answer": "#### 1"}', json.dumps(GSM8K_TEST[0])]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW_TEXT, min_size=1, max_size=6), strict=st.booleans())
def test_any_rows_load_as_problems_and_rejected_rows_or_fail_naming_the_file(tmp_path, rows, strict):
    """Fault injection: whatever the rows, every reader returns or raises a ValueError naming the file."""
    lines = [row.replace("\n", " ").replace("\r", " ") for row in rows]
    for name, read in (("test.jsonl", read_gsm8k), ("folio.jsonl", read_folio)):
        path = tmp_path / name
        path.write_text("\n".join(lines + [json.dumps(GSM8K_TEST[1])]) + "\n", encoding="utf-8", errors="replace")
        try:
            loaded = read(path, strict=strict)
        except ValueError as exc:
            assert name in str(exc)
        else:
            assert loaded.rows >= 1 and all(r.line >= 1 for r in loaded.rejected)
    array = tmp_path / "dev.json"
    array.write_text("[" + ",".join(lines + [json.dumps(PRONTOQA[0])]) + "]", encoding="utf-8", errors="replace")
    try:
        read_logiclm(array, "prontoqa", strict=strict)
    except ValueError as exc:
        assert "dev.json" in str(exc)
