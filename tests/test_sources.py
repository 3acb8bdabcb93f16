"""Real benchmarks as task sources: GSM8K, FOLIO, ProntoQA and ProofWriter files in their official
formats (records written here, no real data in the repository), profiles that train and evaluate on
them, accuracy out of every row, and loaders that refuse bad input cleanly."""

from __future__ import annotations

import json
import logging

import pytest

from fcdpo.config import load_profile
from fcdpo.evaluation import benchmark_problems, evaluate
from fcdpo.tasks import get_task, problem_sets
from fcdpo.tasks.base import DatasetUnavailableError
from fcdpo.tasks.fol import QUESTION_PREFIX, concept_predicate, singular
from fcdpo.tasks.sources import (
    MAX_LIST_ITEMS,
    jsonl_rows,
    load_split,
    option_label,
    read_folio,
    read_gsm8k,
    read_logiclm,
    real_splits,
)
from tests.scripted import ScriptedBackend
from tests.test_evaluation import gold_scripts

GSM8K_TRAIN = [
    {"question": "Ann has 3 boxes of 4 pens. How many pens?", "answer": "3 boxes of 4: <<3*4=12>>12\n#### 12"},
    {"question": "Bo had 10 dollars and spent 4. How many are left?", "answer": "<<10-4=6>>6 left\n#### 6"},
    {"question": "Cy reads 5 pages a day for 6 days. How many pages?", "answer": "<<5*6=30>>30\n#### 30"},
    # The same question as a test row: it must never be trained on.
    {"question": "Di has 7 apples and eats 2. How many are left?", "answer": "<<7-2=5>>5\n#### 5"},
]
GSM8K_TEST = [
    {"question": "Di has 7 apples and eats 2. How many are left?", "answer": "<<7-2=5>>5\n#### 5"},
    {"question": "Ed buys 2 packs of 8 cards. How many cards?", "answer": "<<2*8=16>>16\n#### 16"},
    {"question": "Fay splits 12 sweets among 3. How many each?", "answer": "no final answer line"},
]
FOLIO_TRAIN = [
    {"story_id": 1, "example_id": 1,
     "premises": "All squares are four-sided.\nThis object is a square.",
     "premises-FOL": "∀x (Square(x) → FourSided(x))\nSquare(thisObject)",
     "conclusion": "This object is four-sided.", "conclusion-FOL": "FourSided(thisObject)", "label": "True"},
]
FOLIO_VALIDATION = [
    {"story_id": 2, "example_id": 10,
     "premises": ["Dr. Smith's dogs are hand-made toys.", "Rex is one of Dr. Smith's dogs."],
     "premises-FOL": ["∀x (DogOf(x, dr.smith) → Hand-made(x) ∧ Toy(x))", "DogOf(rex, dr.smith)"],
     "conclusion": "Rex is hand-made.", "conclusion-FOL": "Hand-made(rex)", "label": "True"},
    {"story_id": 3, "example_id": 11,
     "premises": ["O’Brien either sings or dances, but not both.", "O’Brien sings."],
     "premises-FOL": ["Sings(o’brien) ⊕ Dances(o’brien)", "Sings(o’brien)"],
     "conclusion": "O’Brien dances exactly when he is a star.",
     "conclusion-FOL": "Dances(o’brien) ⟷ Star(o’brien)", "label": "Uncertain"},
    {"story_id": 4, "example_id": 12,
     "premises": ["Everyone who reads is wise.", "Tom reads."],
     "premises-FOL": ["∀x (Reads(x) → Wise(x))", "Reads(tom) ∧ (Wise(tom)"],
     "conclusion": "Tom is wise.", "conclusion-FOL": "Wise(tom)", "label": "True"},
]
PRONTOQA = [
    {"id": "ProntoQA_1",
     "context": "Jompuses are not shy. Jompuses are yumpuses. Each yumpus is aggressive. Each yumpus is a "
                "dumpus. Dumpuses are not wooden. Every dumpus is a lorpus. Lorpuses are sour. Max is a jompus.",
     "question": "Is the following statement true or false? Max is sour.",
     "options": ["A) True", "B) False"], "answer": "A"},
    {"id": "ProntoQA_2",
     "context": "Every wumpus is a tumpus. Tumpuses are not bright. Sally is a wumpus.",
     "question": "Is the following statement true or false? Sally is bright.",
     "options": ["A) True", "B) False"], "answer": "B"},
]
PROOFWRITER = [
    {"id": "ProofWriter_RelNoneg-OWA-D5-1_Q1",
     "context": "The bald eagle chases the cat. The cat is big. If something chases the cat then it is red.",
     "question": "Based on the above information, is the following statement true, false, or unknown? "
                 "The bald eagle is red.",
     "options": ["A) True", "B) False", "C) Unknown"], "answer": "A"},
    {"id": "ProofWriter_RelNoneg-OWA-D5-1_Q2", "context": "The cat is big.",
     "question": "Based on the above information, is the following statement true, false, or unknown? "
                 "The cat is young.",
     "options": ["A) True", "B) False", "C) Unknown"], "answer": "C"},
]


def write_jsonl(path, records, extra_lines=()):
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def benchmark_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    return {
        "gsm8k-train": write_jsonl(data / "train.jsonl", GSM8K_TRAIN),
        "gsm8k-test": write_jsonl(data / "test.jsonl", GSM8K_TEST),
        "folio-train": write_jsonl(data / "folio-train.jsonl", FOLIO_TRAIN),
        "folio-validation": write_jsonl(data / "folio-validation.jsonl", FOLIO_VALIDATION),
    }


def real_profile(name, tmp_path, files, **more):
    overrides = {
        "run_dir": str(tmp_path / "run"),
        "tasks.math.train_path": str(files["gsm8k-train"]), "tasks.math.eval_path": str(files["gsm8k-test"]),
        "tasks.fol.train_path": str(files["folio-train"]), "tasks.fol.eval_path": str(files["folio-validation"]),
        **more,
    }
    return load_profile(name, overrides)


# ---------------------------------------------------------------------------------------------
# Section 1: sources, splits, accuracy out of every row


@pytest.mark.parametrize("name", ["colab-t4", "a100"])
def test_the_gpu_profiles_train_on_gsm8k_and_folio_train_and_evaluate_on_every_held_out_row(name):
    profile = load_profile(name)
    math, fol = profile.tasks["math"], profile.tasks["fol"]
    assert (math.source, fol.source) == ("gsm8k", "folio")
    assert math.eval is None and fol.eval is None  # the full GSM8K test and FOLIO validation sets


def test_tiny_cpu_keeps_the_generators():
    profile = load_profile("tiny-cpu")
    assert {t.source for t in profile.tasks.values()} == {"generated"}


def test_a_profile_on_local_files_splits_train_from_test_and_keeps_every_test_row(tmp_path, benchmark_files, capsys):
    profile = real_profile("colab-t4", tmp_path, benchmark_files)
    sets = problem_sets(profile)
    math, fol = sets["math"], sets["fol"]
    # Every test row is there, in file order; the row without a readable answer is a placeholder.
    assert [p.answer for p in math["eval"]] == ["5", "16", ""]
    assert math["eval"][2].meta["unscored"].startswith("gold:")
    assert "####" in math["eval"][2].meta["unscored"]
    # The training row that repeats a test question is dropped and reported.
    train_questions = {p.question for p in math["train"]}
    assert len(math["train"]) == 3 and not train_questions & {p.question for p in math["eval"]}
    assert all(p.meta["source"] == "gsm8k" for p in math["train"])
    assert [p.answer for p in fol["eval"]] == ["True", "Unknown", "True"]
    assert [p.id for p in fol["train"]] == ["folio-1"]
    out = capsys.readouterr().out
    assert "1 training problem(s) dropped" in out and "unreadable gold answer" in out
    assert "unreadable gold formulas" in out
    assert (profile.run_path / "problems" / "math-eval.jsonl").exists()


def test_the_training_sample_is_seeded_and_never_overlaps_the_held_out_split(tmp_path, benchmark_files):
    paths = {"train": benchmark_files["gsm8k-train"], "eval": benchmark_files["gsm8k-test"]}
    first, _ = real_splits("gsm8k", "math", {"eval": None, "train": 2}, seed=4, paths=paths)
    again, _ = real_splits("gsm8k", "math", {"eval": None, "train": 2}, seed=4, paths=paths)
    assert [p.id for p in first["train"]] == [p.id for p in again["train"]]
    assert len(first["train"]) == 2
    only_train, _ = real_splits("gsm8k", "math", {"train": None}, paths=paths)
    assert "Di has 7 apples" not in " ".join(p.question for p in only_train["train"])


def test_a_held_out_limit_keeps_the_first_rows(tmp_path, benchmark_files):
    paths = {"eval": benchmark_files["gsm8k-test"]}
    sets, _ = real_splits("gsm8k", "math", {"eval": 2}, paths=paths)
    assert [p.answer for p in sets["eval"]] == ["5", "16"]


def test_offline_without_a_local_file_fails_at_once_naming_the_dataset_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    profile = load_profile("colab-t4", {"run_dir": str(tmp_path)})
    with pytest.raises(DatasetUnavailableError, match=r"gsm8k.*openai/gsm8k.*train_path"):
        problem_sets(profile)
    with pytest.raises(DatasetUnavailableError, match=r"folio.*github.com/Yale-LILY/FOLIO.*eval_path"):
        load_split("folio", "validation")
    with pytest.raises(DatasetUnavailableError, match="prontoqa has no hub source"):
        load_split("prontoqa", "dev")


def test_a_source_must_fit_its_task(tmp_path):
    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "tasks.math.source": "folio"})
    with pytest.raises(ValueError, match="'fol' task"):
        problem_sets(profile)
    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "tasks.math.source": "mmlu"})
    with pytest.raises(ValueError, match="expected one of"):
        problem_sets(profile)
    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path), "tasks.math.eval": None})
    with pytest.raises(ValueError, match="need a number"):
        problem_sets(profile)


def test_accuracy_on_a_benchmark_is_out_of_every_row(tmp_path, benchmark_files):
    """Two gradable rows solved, one row without a readable answer: 2 of 3, not 2 of 2."""
    sets = benchmark_problems(benchmark_files["gsm8k-test"], None)
    assert len(sets["gsm8k"]) == 3
    runnable = [p for p in sets["gsm8k"] if not p.meta.get("unscored")]
    backend = ScriptedBackend(gold_scripts(runnable))  # a chat on any other question is a KeyError
    result = evaluate({"teacher": backend}, {"math": get_task("math")}, sets, None, tmp_path, progress=False)
    row = result.summary.set_index("dataset").loc["gsm8k"]
    assert row["problems"] == 3 and row["chains"] == 2 and row["unscored_problems"] == 1
    assert row["accuracy"] == pytest.approx(2 / 3)
    assert backend.calls == [2, 2]  # two chains advanced together, a call then an answer: none for row 3


def test_a_folio_row_with_unreadable_formulas_is_graded_by_its_label_and_reported(tmp_path, benchmark_files):
    loaded = read_folio(benchmark_files["folio-validation"])
    assert len(loaded.problems) == 3 and not loaded.rejected
    [note] = loaded.notes
    # file, row, which premise, the formula and the position
    assert note.line == 3 and str(benchmark_files["folio-validation"]) in note.reason
    assert "premise 2 of 2" in note.reason and "'Reads(tom) ∧ (Wise(tom)'" in note.reason
    assert "position" in note.reason
    assert loaded.problems[2].gold_chain == [] and loaded.problems[2].answer == "True"


def test_folio_names_with_dots_dashes_and_apostrophes_run_to_their_labels(benchmark_files):
    loaded = read_folio(benchmark_files["folio-validation"])
    task = get_task("fol")
    for problem in loaded.problems[:2]:
        observations = task.functions().run_chain(problem.gold_chain)
        assert all(o.ok for o in observations), observations
        assert task.check(observations[-1].content, problem.answer)


# ---------------------------------------------------------------------------------------------
# Section 2: ProntoQA / ProofWriter in Logic-LM's format


def test_option_letters_map_to_true_false_unknown():
    assert option_label("A") == "True" and option_label("B") == "False" and option_label("C") == "Unknown"
    assert option_label("B", ["A) False", "B) True"]) == "True"  # the record's own options decide
    assert option_label("(C)", ["A) True", "B) False", "C) Uncertain"]) == "Unknown"
    assert option_label("D") is None and option_label(3) is None


def test_plural_and_singular_concepts_are_one_predicate():
    assert concept_predicate("jompuses") == concept_predicate("jompus") == "Jompus"
    assert concept_predicate("living things") == concept_predicate("a living thing") == "Living_thing"
    assert [singular(w) for w in ("lorpuses", "cats", "daisies", "mice", "boxes", "houses")] == [
        "lorpus", "cat", "daisy", "mouse", "box", "house"]
    # Words that are not plurals stay as they are.
    assert [singular(w) for w in ("wumpus", "nervous", "glass", "red", "fish")] == [
        "wumpus", "nervous", "glass", "red", "fish"]


def test_a_plural_rule_and_a_singular_query_meet_in_the_prover():
    functions = get_task("fol").functions()
    observations = functions.run_chain([
        {"name": "add_rule", "arguments": {"premise": "jompuses", "conclusion": "lorpuses", "negated": True}},
        {"name": "add_fact", "arguments": {"entity": "Max", "concept": "jompus"}},
        {"name": "query", "arguments": {"entity": "Max", "concept": "lorpus"}},
    ])
    assert observations[-1].content == "False"


def test_the_generators_vocabulary_is_unchanged_by_plural_normalisation():
    from fcdpo.tasks import fol

    words = fol._FICTIONAL_NOUNS + fol._ADJECTIVES + [w for pair in fol._PARENT.items() for w in pair]
    assert [singular(w.split()[-1]) for w in words] == [w.split()[-1] for w in words]


def test_prontoqa_records_load_with_gold_chains_that_reach_their_labels(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(PRONTOQA), encoding="utf-8")
    loaded = read_logiclm(path, "prontoqa")
    assert [p.answer for p in loaded.problems] == ["True", "False"]
    assert [p.id for p in loaded.problems] == ["ProntoQA_1", "ProntoQA_2"]
    first = loaded.problems[0]
    assert first.question.endswith(f"{QUESTION_PREFIX} Max is sour.")
    assert first.gold_chain[0] == {"name": "add_rule",
                                   "arguments": {"premise": "Jompuses", "conclusion": "shy", "negated": True}}
    task = get_task("fol")
    for problem in loaded.problems:
        observations = task.functions().run_chain(problem.gold_chain)
        assert all(o.ok for o in observations)
        assert task.check(observations[-1].content, problem.answer)


def test_proofwriter_records_load_with_their_labels_and_no_gold_chain(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(PROOFWRITER), encoding="utf-8")
    loaded = read_logiclm(path, "proofwriter")
    assert [p.answer for p in loaded.problems] == ["True", "Unknown"]
    assert all(p.gold_chain == [] and p.meta["source"] == "proofwriter" for p in loaded.problems)
    assert loaded.problems[1].question.endswith(f"{QUESTION_PREFIX} The cat is young.")


def test_a_profile_can_take_prontoqa_for_its_logic_task(tmp_path):
    train, dev = tmp_path / "train.json", tmp_path / "dev.json"
    train.write_text(json.dumps(PRONTOQA[:1]), encoding="utf-8")
    dev.write_text(json.dumps(PRONTOQA[1:]), encoding="utf-8")
    profile = load_profile("tiny-cpu", {"run_dir": str(tmp_path / "run"), "tasks.fol.source": "prontoqa",
                                        "tasks.fol.train_path": str(train), "tasks.fol.eval_path": str(dev),
                                        "tasks.fol.eval": None, "tasks.fol.train": None,
                                        "tasks.math.train": 2, "tasks.math.eval": 2})
    sets = problem_sets(profile)
    assert [p.id for p in sets["fol"]["train"]] == ["ProntoQA_1"]
    assert [p.id for p in sets["fol"]["eval"]] == ["ProntoQA_2"]


# ---------------------------------------------------------------------------------------------
# Section 3: bad input


def test_an_empty_file_is_an_error_not_an_empty_benchmark(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty\.jsonl: empty file"):
        read_gsm8k(empty)
    with pytest.raises(ValueError, match="empty file"):
        read_folio(empty)
    array = tmp_path / "empty.json"
    array.write_text("[]")
    with pytest.raises(ValueError, match="the array is empty"):
        read_logiclm(array, "prontoqa")


def test_a_binary_file_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(json.dumps(GSM8K_TEST[0]).encode() + b"\n" + b"\x00\x01\x02binary")
    with pytest.raises(ValueError, match=r"model\.bin:2: a NUL byte"):
        read_gsm8k(path)


def test_a_non_utf8_file_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    lines = [json.dumps(GSM8K_TEST[0]), json.dumps(GSM8K_TEST[1]), '{"question": "Caf\xe9?", "answer": "#### 1"}']
    path.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.jsonl:3: not UTF-8"):
        read_gsm8k(path)
    array = tmp_path / "latin1.json"
    array.write_bytes('[\n{"id": 1},\n{"context": "caf\xe9"}\n]'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.json:3: not UTF-8"):
        read_logiclm(array, "prontoqa")


def test_a_bad_row_is_skipped_counted_and_reported_or_raises_when_strict(tmp_path, caplog):
    path = write_jsonl(tmp_path / "mixed.jsonl", GSM8K_TEST[:2], ["{not json", json.dumps(["a list"])])
    with caplog.at_level(logging.WARNING):
        loaded = read_gsm8k(path)
    assert len(loaded.problems) == 2 and loaded.rows == 4
    assert [(r.line, r.kind) for r in loaded.rejected] == [(3, "malformed"), (4, "malformed")]
    assert f"{path}:3" in caplog.text
    assert "2 malformed row(s) skipped (first: line 3)" in loaded.summary()
    with pytest.raises(ValueError, match=r"mixed\.jsonl:3: not a gsm8k record"):
        read_gsm8k(path, strict=True)


def test_a_logiclm_record_with_an_unknown_answer_is_a_gold_error(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(PRONTOQA + [{**PRONTOQA[0], "id": "x", "answer": "E"}]), encoding="utf-8")
    loaded = read_logiclm(path, "prontoqa")
    assert [(r.line, r.kind) for r in loaded.rejected] == [(3, "gold")]
    with pytest.raises(ValueError, match=r"dev\.json: record 3: the gold answer cannot be read"):
        read_logiclm(path, "prontoqa", strict=True)


def test_an_overlong_row_is_a_bad_row_read_only_up_to_its_bound(tmp_path):
    path = tmp_path / "long.jsonl"
    long_row = json.dumps({"question": "x" * 5000, "answer": "#### 1"})
    path.write_text(long_row + "\n" + json.dumps(GSM8K_TEST[1]) + "\n")
    rows = list(jsonl_rows(path, "GSM8K", max_row_bytes=1000))
    assert isinstance(rows[0][1], ValueError) and "longer than 1000 bytes" in str(rows[0][1])
    assert rows[1] == (2, GSM8K_TEST[1])


def test_annotation_and_premise_lists_have_bounds(tmp_path):
    many = " ".join(f"<<1+{i}={i + 1}>>" for i in range(MAX_LIST_ITEMS + 1))
    path = write_jsonl(tmp_path / "many.jsonl", [{"question": "q?", "answer": many + "\n#### 1"}, GSM8K_TEST[1]])
    loaded = read_gsm8k(path)
    assert len(loaded.problems) == 1 and "annotations; the limit" in loaded.rejected[0].reason
    premises = ["P(a)"] * (MAX_LIST_ITEMS + 1)
    record = {**FOLIO_TRAIN[0], "premises": premises, "premises-FOL": premises}
    path = write_jsonl(tmp_path / "folio.jsonl", [record, FOLIO_TRAIN[0]])
    loaded = read_folio(path)
    assert len(loaded.problems) == 1 and "the limit is" in loaded.rejected[0].reason
