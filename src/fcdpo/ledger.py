"""The ledger of sealed scorings: every time the `test` or `length` split is scored, one line.

Layer: settings and formats; imports nothing of fcdpo.

A held-out split that is looked at while things are still being chosen becomes a dev split. The
sealed splits are scored once per recipe, after the protocol is committed (docs/protocol.md), and the
ledger (`docs/ledger.jsonl`, committed) keeps the record: the date, the commit and whether the tree
had changes, the profile, a hash of the recipe (every setting that shapes the models, not where the
run is written or how fast it runs), the splits and the models scored. A rerun of the same recipe, as
a newcomer's `make reproduce` is, repeats a hash and so is not a new look; `looks` counts distinct
recipes per split.

Tests and scratch runs write elsewhere: `FCDPO_LEDGER` names another file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parents[2]
LEDGER = ROOT / "docs" / "ledger.jsonl"
# Profile keys that say where a run is written or how fast it goes, not what its models are.
NOT_RECIPE = {"name", "run_dir", "batch_size", "max_concurrency", "shared_prefix", "precompute_ref_log_probs",
              "eval_steps", "logging_steps", "gradient_checkpointing", "split"}


def ledger_path() -> Path:
    return Path(os.environ["FCDPO_LEDGER"]) if os.environ.get("FCDPO_LEDGER") else LEDGER


def recipe_hash(settings: Any) -> str:
    """sha256 (first 16 hex digits) of a profile's settings as plain data, leaving out `NOT_RECIPE` keys at any depth."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in sorted(value.items()) if k not in NOT_RECIPE}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        return value

    return hashlib.sha256(json.dumps(strip(settings), sort_keys=True, default=str).encode()).hexdigest()[:16]


def commit() -> tuple[str, bool]:
    """The repository's HEAD and whether the tracked tree differs from it (("unknown", True) outside git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True
    return head.stdout.strip(), bool(status.stdout.strip())


def record(profile: str, settings: Any, splits: Iterable[str], models: Iterable[str], note: str = "") -> dict[str, Any]:
    """Append one scoring to the ledger and return it."""
    head, dirty = commit()
    line = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "commit": head,
            "tree_changed": dirty, "profile": profile, "recipe": recipe_hash(settings),
            "splits": sorted(splits), "models": sorted(models), "note": note}
    path = ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(line) + "\n")
    return line


def read(path: str | Path | None = None) -> list[dict[str, Any]]:
    """Every line of the ledger; a line that is not a JSON object is an error naming the file and line."""
    path = Path(path) if path is not None else ledger_path()
    if not path.exists():
        return []
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError as error:
            raise ValueError(f"{path}:{number}: not a ledger line ({error})") from None
        if not isinstance(line, dict) or not {"recipe", "splits"} <= set(line):
            raise ValueError(f"{path}:{number}: a ledger line needs 'recipe' and 'splits'")
        lines.append(line)
    return lines


def looks(lines: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per split: `scorings` (lines) and `recipes` (distinct recipe hashes, the number of looks)."""
    out: dict[str, dict[str, Any]] = {}
    for line in lines:
        for split in line["splits"]:
            entry = out.setdefault(split, {"scorings": 0, "recipes": set()})
            entry["scorings"] += 1
            entry["recipes"].add(line["recipe"])
    return {split: {"scorings": e["scorings"], "recipes": len(e["recipes"])} for split, e in out.items()}
