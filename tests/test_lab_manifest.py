"""A lab's manifest tells the truth about where it came from: paths relative to the repository (never a
folder of the machine that built it), the commit of the code, and whether the code matched that commit.
The shipped lab's own manifest is held to the same rules, and still checks out against its files."""

from __future__ import annotations

import json
import re
import warnings

import pytest

from fcdpo import tinylab
from fcdpo.tinylab import Lab, build_model, build_tokenizer, export_lab, verify_shipped
from tests.test_tinylab import CORPUS

SHIPPED = tinylab._repository_root() / "lab" / "tiny-cpu"


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


@pytest.fixture
def built(tmp_path):
    """A lab of two tiny random models, the teacher reused from the repository's shipped lab."""
    tokenizer = build_tokenizer(CORPUS, vocab_size=300)
    for role in ("teacher", "student"):
        build_model(tokenizer, hidden_size=8, num_layers=1, num_heads=2).save_pretrained(tmp_path / "built" / role)
        tokenizer.save_pretrained(tmp_path / "built" / role)
    report = {"models": {"teacher": {"steps": 1, "reused_from": str(SHIPPED / "teacher")}, "student": {"steps": 1}}}
    return Lab(tmp_path / "built", tmp_path / "built" / "teacher", tmp_path / "built" / "student", report, False)


def test_an_exported_manifest_names_repository_paths_and_marks_a_changed_tree(built, tmp_path, monkeypatch):
    monkeypatch.setattr(tinylab, "_source_state", lambda: ("a" * 40, "changed: src/fcdpo/agent.py"))
    with pytest.warns(UserWarning, match=r"uncommitted code \(changed: src/fcdpo/agent.py\)"):
        manifest = export_lab(built, tmp_path / "shipped", "k" * 16)
    assert manifest["commit"] == "a" * 40 and manifest["tree"] == "changed: src/fcdpo/agent.py"
    assert manifest["models"]["teacher"]["reused_from"] == "lab/tiny-cpu/teacher"
    assert not [s for s in strings(manifest) if s.startswith(str(tinylab._repository_root()))]
    assert verify_shipped(tmp_path / "shipped") == manifest


def test_a_lab_exported_from_a_clean_tree_says_so_without_a_warning(built, tmp_path, monkeypatch):
    monkeypatch.setattr(tinylab, "_source_state", lambda: ("b" * 40, "clean"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        manifest = export_lab(built, tmp_path / "shipped", "k" * 16)
    assert (manifest["commit"], manifest["tree"]) == ("b" * 40, "clean")


def test_the_source_state_is_a_plain_commit_and_a_tree_state():
    commit, tree = tinylab._source_state()
    assert re.fullmatch(r"[0-9a-f]{40}", commit) and "+" not in commit
    assert tree == "clean" or tree.startswith("changed: ")


def test_the_shipped_manifest_names_no_machine_path_and_states_its_tree():
    manifest = verify_shipped(SHIPPED)  # its files still match their recorded sha256
    assert not [s for s in strings(manifest) if s.startswith("/") or re.match(r"[A-Za-z]:\\", s)]
    assert re.fullmatch(r"[0-9a-f]{40}", manifest["commit"])
    assert manifest["tree"] == "clean"  # the recorded commit alone rebuilds it (built_from says how it was run)
    assert manifest["models"]["teacher"]["reused_from"] == "lab/tiny-cpu/teacher"
    assert json.loads((SHIPPED / "manifest.json").read_text()) == manifest
