"""The run folder's layout is known in one place (fcdpo.runs): every stage and notebook asks it for paths."""

import re
from pathlib import Path

import pytest

from fcdpo import runs

ROOT = Path(__file__).resolve().parents[1]


def test_the_layout_is_the_one_the_module_docstring_draws(tmp_path):
    assert runs.rollouts_file(tmp_path, "math") == tmp_path / "rollouts" / "teacher-math.jsonl"
    assert runs.rollouts_file(tmp_path, "fol", "student") == tmp_path / "rollouts" / "student-fol.jsonl"
    assert runs.problems_file(tmp_path, "fol", "dev") == tmp_path / "problems" / "fol-dev.jsonl"
    assert runs.preferences_dir(tmp_path, "sft") == runs.preferences_dir(tmp_path) == tmp_path / "preferences"
    assert runs.preferences_dir(tmp_path, "step_dpo") == tmp_path / "preferences-step"
    assert runs.onpolicy_round_dir(tmp_path, "onpolicy_dpo", 1) == tmp_path / "preferences-onpolicy"
    assert runs.onpolicy_round_dir(tmp_path, "onpolicy_dpo-s1", 2) == tmp_path / "preferences-onpolicy-onpolicy_dpo-s1-round2"
    assert runs.training_dir(tmp_path, runs.seed_label("dpo", 0, 0)) == tmp_path / "training" / "dpo"
    assert runs.training_dir(tmp_path, runs.seed_label("sft", 2, 0)) == tmp_path / "training" / "sft-s2"
    with pytest.raises(ValueError, match="grpo.*trains on no preference pairs"):
        runs.preferences_dir(tmp_path, "grpo")


def test_no_stage_or_notebook_spells_out_a_run_folder_path():
    """A path literal like `run / "training"` outside fcdpo.runs would be a second copy of the layout."""
    spelled = re.compile(r'(run|run_path|run_dir)\)? / \\?"(rollouts|preferences|training|evaluation|problems|lab|notebooks)')
    sources = [p for p in (ROOT / "src" / "fcdpo").rglob("*.py") if p.name != "runs.py"]
    found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in sources + sorted((ROOT / "notebooks").glob("*.ipynb"))
             for m in spelled.finditer(p.read_text(encoding="utf-8"))]
    assert found == []
