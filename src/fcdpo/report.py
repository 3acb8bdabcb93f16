"""A run's report: `runs/<profile>/report.md`, written from the run folder's own files, never by hand.

Layer: stages; imports the run folder's layout, the ledger, the arm registry and, for a sealed run's
unseen-computation subset, the evaluation.

    python -m fcdpo.report --profile tiny-cpu        # after notebook 04; notebook 05 writes it too

The report holds what a reader needs to cite a run: the environment (Python, the libraries, the CPU
or GPU), the commit, each notebook's wall time (papermill's record in the executed copies), the study's
table (every arm on every scored dataset: accuracy over seeds with the lowest and highest seed, the gain
over the untrained student, and against SFT the difference, its interval over seeds and problems and
the Holm-adjusted p: `fcdpo.evaluation.comparison_table`), what each arm cost (`costs.csv`), the
sealed splits' make-up, the ledger's count of looks, and the figures. The README's result tables are
copied from the committed report of the reference run (`docs/report-tiny-cpu.md`) by
`python -m fcdpo.report --readme docs/report-tiny-cpu.md`, and a test keeps them equal.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import pandas as pd

from fcdpo import arms, ledger, runs


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _machine() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"CPU {model or platform.processor() or 'unknown'}, {os.cpu_count()} cores"


def notebook_times(run: Path) -> dict[str, float]:
    """Seconds each executed notebook took, from papermill's metadata in `notebooks/`."""
    out = {}
    for path in sorted(runs.notebooks_dir(run).glob("*.ipynb")):
        try:
            duration = json.loads(path.read_text())["metadata"]["papermill"]["duration"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(duration, (int, float)):
            out[path.stem] = round(float(duration), 1)
    return out


def _percent(value: Any, signed: bool = False) -> str:
    if value is None or pd.isna(value):
        return "–"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}%"


def _interval(low: Any, high: Any) -> str:
    if low is None or pd.isna(low):
        return ""
    return f" [{100 * low:+.1f}, {100 * high:+.1f}]"


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (no index), numbers as pandas prints them, a missing one as –."""
    def cell(value: Any) -> str:
        return "–" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def results_table(comparison: pd.DataFrame, accuracy: pd.DataFrame | None = None,
                  order: list[str] | None = None) -> str:
    """The study's table in Markdown: one row per model, one group of columns per dataset; methods in
    `order` (default: the arm registry's)."""
    if comparison.empty:
        return "_No arm was compared._\n"
    datasets = sorted(comparison["dataset"].unique(), key=lambda d: (d.split("-")[0] != "math", d))
    order = [m for m in (order or arms.names()) if m in set(comparison["method"])]
    header = "| model | " + " | ".join(f"{d}: accuracy | {d}: gain over student | {d}: − sft [interval], Holm p"
                                          for d in datasets) + " |"
    lines = [header, "|" + "---|" * (1 + 3 * len(datasets))]
    if accuracy is not None:
        for model in [m for m in ("teacher", "student", "multi") if m not in order]:
            cells = []
            for d in datasets:
                row = accuracy[(accuracy["model"] == model) & (accuracy["dataset"] == d)]
                cells += [_percent(row["accuracy"].iloc[0]) if len(row) else "–", "", ""]
            if any(cells):
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
    rows = comparison.set_index(["method", "dataset"])
    for method in order:
        cells = []
        for d in datasets:
            if (method, d) not in rows.index:
                cells += ["–", "–", "–"]
                continue
            r = rows.loc[(method, d)]
            cells.append(f"{_percent(r['accuracy'])} ({_percent(r['min'])}–{_percent(r['max'])}, {int(r['seeds'])} seeds)")
            cells.append(_percent(r.get("gain"), True) + _interval(r.get("gain_low"), r.get("gain_high")))
            if pd.isna(r.get("p_holm", float("nan"))):
                cells.append("baseline" if method == "sft" else "–")
            else:
                cells.append(_percent(r["vs_sft"], True) + _interval(r["vs_sft_low"], r["vs_sft_high"])
                             + f", p = {r['p_holm']:.3f}")
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _unseen_tables(profile: Any, folder: Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The unseen-computation tables of a sealed run (`evaluation.unseen_comparison`), computed from the
    chains on disk when an older run did not write them; None on other splits or without such problems."""
    if getattr(profile.evaluation, "split", None) != "test" or not (folder / "comparison.csv").exists():
        return None
    if not (folder / "comparison_unseen.csv").exists():
        from fcdpo.evaluation import unseen_comparison

        if unseen_comparison(profile) is None:
            return None
    return pd.read_csv(folder / "comparison_unseen.csv"), pd.read_csv(folder / "accuracy_unseen.csv")


HEADLINE = ("<!-- headline:start -->", "<!-- headline:end -->")


def headline_table(comparison: pd.DataFrame, accuracy: pd.DataFrame | None = None) -> str:
    """The README's table: one row per model, one column per dataset; an arm's cell is its accuracy over
    seeds and, against SFT, the difference with its interval and Holm's p."""
    if comparison.empty:
        return "_No arm was compared._\n"
    datasets = sorted(comparison["dataset"].unique(), key=lambda d: (d.split("-")[-1] != "test", d.split("-")[0] != "math", d))
    lines = ["| model | " + " | ".join(f"`{d}`" for d in datasets) + " |", "|" + "---|" * (1 + len(datasets))]
    if accuracy is not None:
        for model in ("teacher", "student", "multi"):
            cells = []
            for d in datasets:
                row = accuracy[(accuracy["model"] == model) & (accuracy["dataset"] == d)]
                cells.append(_percent(row["accuracy"].iloc[0]) if len(row) else "–")
            if any(cell != "–" for cell in cells):
                lines.append(f"| {model} | " + " | ".join(cells) + " |")
    rows = comparison.set_index(["method", "dataset"])
    for method in [m for m in arms.names() if m in set(comparison["method"])]:
        cells = []
        for d in datasets:
            if (method, d) not in rows.index:
                cells.append("–")
                continue
            r = rows.loc[(method, d)]
            cell = f"{_percent(r['accuracy'])}"
            if not pd.isna(r.get("p_holm", float("nan"))):
                cell += (f"; {_percent(r['vs_sft'], True)}{_interval(r['vs_sft_low'], r['vs_sft_high'])}, "
                         f"p {r['p_holm']:.2f}")
            cells.append(cell)
        lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def headline_block(report_text: str) -> str:
    """The headline table of a written report, markers included."""
    start, end = HEADLINE
    if start not in report_text or end not in report_text:
        raise ValueError("the report has no headline table (written by an older fcdpo?); write it again")
    return start + report_text.split(start, 1)[1].split(end, 1)[0] + end


def sync_readme(report: str | Path, readme: str | Path) -> bool:
    """Copy the headline table of `report` into `readme` between the same markers; True if it changed."""
    block = headline_block(Path(report).read_text())
    text = Path(readme).read_text()
    start, end = HEADLINE
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} … {end} block to fill")
    new = text.split(start, 1)[0] + block + text.split(end, 1)[1]
    Path(readme).write_text(new)
    return new != text


def write_report(profile: Any, figures: Path | None = None, commit: str | None = None) -> Path:
    """Write `<run>/report.md` from the run folder and return its path."""
    run = profile.run_path
    folder = runs.evaluation_dir(run)
    comparison = pd.read_csv(folder / "comparison.csv") if (folder / "comparison.csv").exists() else pd.DataFrame()
    summary = pd.read_csv(folder / "summary.csv") if (folder / "summary.csv").exists() else None
    costs = pd.read_csv(folder / "costs.csv") if (folder / "costs.csv").exists() else pd.DataFrame()
    head, changed = ledger.commit() if commit is None else (commit, False)
    times = notebook_times(run)
    parts = [f"# Report: `{profile.name}`\n",
             f"- commit `{head}`{' (with uncommitted changes)' if changed else ''}; evaluation split "
             f"`{profile.evaluation.split}`",
             f"- machine: {_machine()}",
             "- " + ", ".join(f"{k} {v}" for k, v in _versions().items()),
             "- notebooks: " + (", ".join(f"{k} {v:,.0f} s" for k, v in times.items())
                                + f"; {sum(times.values()) / 60:.1f} min in all" if times else "not run by the pipeline"),
             "", "## Headline", "",
             "Accuracy, mean over seeds; for each arm against `sft`, the difference in points with its hierarchical "
             "interval at the Bonferroni level of the arms compared, and Holm's adjusted one-sided p.", "",
             HEADLINE[0], headline_table(comparison, summary) + HEADLINE[1], "",
             "## Results", "",
             "Greedy decoding. Accuracy is the mean over seeds (lowest–highest seed). Gains are in points with "
             "a hierarchical bootstrap interval (seeds, then problems); against SFT at the Bonferroni level of "
             "the arms compared, with Holm's adjusted one-sided p for \"beats SFT\".", "",
             results_table(comparison, summary)]
    unseen = _unseen_tables(profile, folder)
    if unseen is not None:
        table, accuracy = unseen
        parts += ["## Math problems whose computation the lab's teacher never saw", "",
                  "The same chains, on the sealed math problems whose gold calls with their arguments were in none "
                  "of the lab teacher's training problems (`unseen_by_lab_teacher` in the sealed splits' make-up): "
                  "a right answer there cannot be a computation the teacher recalled. Few problems: wide intervals.",
                  "", results_table(table, accuracy)]
    multi = folder / "multi_llm.csv"
    if multi.exists():
        table = pd.read_csv(multi)
        parts += ["## The multi-LLM agents against the single agent's SFT", "",
                  "alpha-UMi's comparison, a family of its own (Holm over the multi-LLM variants).", "",
                  results_table(table, summary, ["sft", *sorted(m for m in table["method"].unique() if m != "sft")])]
        steps = folder / "step_methods.csv"
        if steps.exists():
            shown = pd.read_csv(steps)
            for column in shown.columns:
                if shown[column].dtype.kind == "f":
                    shown[column] = (100 * shown[column]).round(1)
            parts += ["Step metrics with the gold history given, in % (mean over seeds, hierarchical 95% interval "
                      "over seeds and problems in the `_low` / `_high` columns):", "", markdown_table(shown), ""]
    if not costs.empty:
        shown = costs.copy()
        for column in ("train_seconds", "train_seconds_total"):
            if column in shown:
                shown[column] = shown[column].round(0)
        parts += ["## What each arm cost (per seed unless said)", "", markdown_table(shown), ""]
    sealed = folder / "sealed_splits.json"
    if sealed.exists():
        make_up = json.loads(sealed.read_text())
        for splits in make_up.values():  # the ids are in the file; the report counts them
            for info in splits.values():
                if "unseen_by_lab_teacher" in info:
                    info["unseen_by_lab_teacher"] = len(info["unseen_by_lab_teacher"])
        parts += ["## The sealed splits", "", "```json", json.dumps(make_up, indent=2), "```", ""]
    looks = ledger.looks(ledger.read())
    if looks:
        parts += ["## The ledger", "", "Scorings of the sealed splits in `docs/ledger.jsonl`, and the distinct "
                  "recipes among them (a rerun of one recipe is not a new look):", ""]
        parts += [f"- `{split}`: {v['scorings']} scorings, {v['recipes']} recipe(s)" for split, v in sorted(looks.items())]
        parts.append("")
    if figures is not None and Path(figures).exists():
        parts += ["## Figures", ""] + [f"- `{p.name}`" for p in sorted(Path(figures).glob("*.png"))] + [""]
    path = run / "report.md"
    path.write_text("\n".join(parts))
    return path


def main(argv: list[str] | None = None) -> None:
    import argparse

    from fcdpo.config import load_profile

    parser = argparse.ArgumentParser(description="Write runs/<profile>/report.md from the run folder.")
    parser.add_argument("--profile", default="tiny-cpu")
    parser.add_argument("--run-dir", help="another run folder of this profile (e.g. a copy)")
    parser.add_argument("--commit", help="the commit the run was made at, when the report is written later")
    parser.add_argument("--readme", metavar="REPORT", help="copy REPORT's headline table into README.md, nothing else")
    args = parser.parse_args(argv)
    if args.readme:
        readme = Path(__file__).resolve().parents[2] / "README.md"
        print(f"{readme}: {'updated' if sync_readme(args.readme, readme) else 'already up to date'}")
        return
    overrides = {"run_dir": args.run_dir} if args.run_dir else None
    print(write_report(load_profile(args.profile, overrides), commit=args.commit))


if __name__ == "__main__":
    main()
