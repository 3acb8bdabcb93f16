"""Figures of a run: accuracy with intervals, the size/accuracy trade-off, DPO training curves, the
failure taxonomy and accuracy by difficulty.

Layer: stages; imports `fcdpo.evaluation`, and `fcdpo.finetuning` for the name of the curves it writes.

Each `plot_*` function takes a table written by `fcdpo.evaluation` (or training-log records) and an
output folder, writes `<name>.png` and `<name>.pdf` there and returns their paths; the matching
`*_figure` function returns the matplotlib `Figure` itself. Figures are drawn on matplotlib's
object API (no pyplot), so nothing depends on or changes the interactive backend, and no seaborn.
A model keeps its colour in every figure (`model_colors`).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, PercentFormatter

from fcdpo import arms
from fcdpo.evaluation import OUTCOMES, model_labels, read_tables

# Colour-blind-safe colours (Okabe & Ito); the run's own models always get the same ones. Each training
# arm's label and colour are its record's (`fcdpo.arms`).
FIXED_STYLES = {
    "teacher": ("Teacher", "#0072B2"),
    "student": ("Student, before training", "#7f7f7f"),
    "multi": ("Multi-LLM agent (GLPFT)", "#CC79A7"),
    "multi_one_stage": ("Multi-LLM, one stage", "#44AA99"),
    "multi_sft": ("Multi-LLM from the SFT model", "#882255"),
}


def model_styles() -> dict[str, tuple[str, str]]:
    """Every model's (legend label, colour): the run's fixed models and every registered arm."""
    return {**FIXED_STYLES, **{name: (arms.get(name).title, arms.get(name).colour) for name in arms.names()}}

_SPARE_COLOURS = ("#000000", "#F0E442", "#bcbd22", "#17becf")
DATASET_NAMES = {"math": "Math (held-out)", "fol": "Logic (held-out)", "gsm8k": "GSM8K test", "folio": "FOLIO validation"}
OUTCOME_STYLES = {
    "correct": ("Correct", "#009E73"),
    "wrong_answer": ("Wrong final answer", "#E69F00"),
    "parse_error": ("Parse error", "#D55E00"),
    "unknown_function": ("Unknown function", "#CC79A7"),
    "bad_arguments": ("Bad arguments", "#0072B2"),
    "execution_error": ("Execution error", "#56B4E9"),
    "out_of_steps": ("Out of steps", "#999999"),
}
DIFFICULTY_AXES = {"steps": "Reasoning steps (calls in the gold chain)", "hops": "Reasoning hops (rules chained)"}
# Keys of a DPO log (TRL's names); evaluation entries carry an `eval_` prefix.
# (key, panel title, y-axis label, whether a percentage)
CURVES = (
    ("loss", "Training loss", "nats (DPO, plus any NLL term)", False),
    ("rewards/margins", "Reward margin, chosen − rejected", "β × log-ratio", False),
    ("rewards/accuracies", "Reward accuracy", "pairs ranked right", True),
)
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "legend.frameon": False,
    "savefig.dpi": 150,
}


# ------------------------------------------------------------------------------------------------
# Shared pieces


def model_colors(models: Iterable[str]) -> dict[str, str]:
    """A colour per model label: fixed for teacher / student / sft / dpo, spare colours in order for others."""
    spare = iter(_SPARE_COLOURS * 4)
    styles = model_styles()
    return {m: styles[m][1] if m in styles else next(spare) for m in dict.fromkeys(models)}


def model_name(label: str) -> str:
    """How a model label reads in a legend."""
    return model_styles().get(label, (label, None))[0]


def dataset_name(name: str) -> str:
    return DATASET_NAMES.get(name, name)


def _ordered(labels: Iterable[str], first: Sequence[str]) -> list[str]:
    labels = list(dict.fromkeys(labels))
    return [x for x in first if x in labels] + [x for x in labels if x not in first]


def _as_frame(table: pd.DataFrame | Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return table if isinstance(table, pd.DataFrame) else pd.DataFrame(list(table))


def _metric(metrics: pd.DataFrame, name: str) -> pd.DataFrame:
    return metrics[metrics["metric"] == name]


def save_figure(figure: Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Write `figure` as `<stem>.png` and `<stem>.pdf` in `out_dir` (tight bounding box)."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.pdf"]
    with rc_context(STYLE):
        for path in paths:
            figure.savefig(path, bbox_inches="tight")
    return paths


def _new_figure(width: float, height: float) -> Figure:
    with rc_context(STYLE):
        return Figure(figsize=(width, height), layout="constrained")


# ------------------------------------------------------------------------------------------------
# Single against multi: alpha-UMi's step-level metrics

STEP_METRICS = {"plan_acc": "Plan\nACC", "act_em": "Act\nEM", "arg_f1": "Arg\nF1", "hallucination": "Hallu",
                "answer_acc": "Answer\nACC"}


def step_metrics_figure(table: pd.DataFrame) -> Figure:
    """Grouped bars per dataset: each agent's step-level metrics with the gold history given.

    `table` is `fcdpo.evaluation.step_metric_table`'s: by method (`method`, `dataset`, each metric with
    `<metric>_low` / `_high`, drawn as error bars) or by model (`model`, `dataset`; `task` in older
    runs). Metrics are shares in [0, 1]; Hallu is better low, the others better high.
    """
    table = _as_frame(table)
    metrics = [m for m in STEP_METRICS if m in table.columns]
    if table.empty or not metrics:
        raise ValueError("the step-metrics table has no rows to plot")
    who = "method" if "method" in table.columns else "model"
    where = "dataset" if "dataset" in table.columns else "task"
    tasks = _ordered(table[where].unique(), list(DATASET_NAMES))
    models = _ordered(table[who].unique(), model_labels())
    colours = model_colors(models)
    width = 0.8 / len(models)
    with rc_context(STYLE):
        figure = _new_figure(max(6.5, 3.8 * len(tasks)), 4.0)
        panels = figure.subplots(1, len(tasks), sharey=True, squeeze=False)[0]
        for axes, task in zip(panels, tasks):
            for i, model in enumerate(models):
                row = table[(table[who] == model) & (table[where] == task)]
                if row.empty:
                    continue
                row = row.iloc[0]
                xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(metrics))]
                ys = [100 * float(row[m]) for m in metrics]
                errors = None
                if all(f"{m}_low" in row.index for m in metrics):
                    errors = [[100 * (float(row[m]) - float(row[f"{m}_low"])) for m in metrics],
                              [100 * (float(row[f"{m}_high"]) - float(row[m])) for m in metrics]]
                axes.bar(xs, ys, width * 0.92, color=colours[model], yerr=errors, capsize=2,
                         label=model_name(model) if task == tasks[0] else None)
            axes.set_xticks(range(len(metrics)), [STEP_METRICS[m] for m in metrics])
            axes.set_title(dataset_name(task))
            axes.set_ylim(0, 105)
            axes.yaxis.set_major_formatter(PercentFormatter(100))
            axes.grid(axis="x", visible=False)
        panels[0].set_ylabel("Share of steps (%)")
        figure.suptitle("Step-level metrics with the gold history given (Hallu: lower is better)")
        figure.legend(loc="outside lower center", ncol=min(len(models), 4))
    return figure


def plot_step_metrics(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """`step_metrics.png` / `.pdf`: see `step_metrics_figure`."""
    return save_figure(step_metrics_figure(table), out_dir, "step_metrics")


# ------------------------------------------------------------------------------------------------
# Accuracy by model and dataset


def accuracy_figure(metrics: pd.DataFrame) -> Figure:
    """Grouped bars: accuracy of each model on each dataset, with 95% bootstrap intervals."""
    metrics = _as_frame(metrics)
    accuracy = _metric(metrics, "accuracy")
    if accuracy.empty:
        raise ValueError("the metrics table has no accuracy rows to plot")
    datasets = _ordered(accuracy["dataset"], list(DATASET_NAMES))
    models = _ordered(accuracy["model"], model_labels())
    colours = model_colors(models)
    problems = _metric(metrics, "problems").set_index(["model", "dataset"])["value"]
    width = 0.8 / len(models)
    with rc_context(STYLE):
        figure = _new_figure(max(6.5, 1.5 + 0.6 * len(datasets) * len(models)), 4.6)
        axes = figure.add_subplot()
        for i, model in enumerate(models):
            rows = accuracy[accuracy["model"] == model].set_index("dataset")
            xs, ys, errors = [], [], [[], []]
            for j, dataset in enumerate(datasets):
                if dataset not in rows.index:
                    continue
                row = rows.loc[dataset]
                xs.append(j + (i - (len(models) - 1) / 2) * width)
                ys.append(100 * row["value"])
                errors[0].append(100 * max(row["value"] - row["ci_low"], 0) if not math.isnan(row["ci_low"]) else 0)
                errors[1].append(100 * max(row["ci_high"] - row["value"], 0) if not math.isnan(row["ci_high"]) else 0)
            bars = axes.bar(xs, ys, width * 0.92, color=colours[model], label=model_name(model),
                            yerr=errors, capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333333"})
            for bar, y, high in zip(bars, ys, errors[1]):
                axes.text(bar.get_x() + bar.get_width() / 2, y + high + 1.5, f"{y:.0f}", ha="center",
                          va="bottom", fontsize=8, color="#333333")
        ticks = []
        for dataset in datasets:
            counts = {int(problems[(m, dataset)]) for m in models if (m, dataset) in problems.index}
            size = f"\n{counts.pop()} problems" if len(counts) == 1 else ""
            ticks.append(dataset_name(dataset) + size)
        axes.set_xticks(range(len(datasets)), ticks)
        axes.set_ylim(0, 112)
        axes.set_yticks(range(0, 101, 20))
        axes.yaxis.set_major_formatter(PercentFormatter(100))
        axes.set_ylabel("Accuracy (% of problems correct)")
        axes.set_title("Accuracy by model and task")
        axes.grid(axis="x", visible=False)
        figure.legend(loc="outside lower center", ncol=min(len(models), 4),
                      title="Model (error bars: 95% bootstrap interval over problems)")
    return figure


def plot_accuracy(metrics: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """`accuracy.png` / `.pdf`: see `accuracy_figure`."""
    return save_figure(accuracy_figure(metrics), out_dir, "accuracy")


# ------------------------------------------------------------------------------------------------
# Accuracy against model size


def tradeoff_figure(metrics: pd.DataFrame) -> Figure:
    """Accuracy against parameter count (log scale), one panel per dataset: the teacher and the student
    before and after training. Models of the same size (a student and its adapters) are nudged apart
    sideways, by a tenth of a decade, so their intervals stay readable."""
    metrics = _as_frame(metrics)
    accuracy = _metric(metrics, "accuracy").set_index(["model", "dataset"])
    sizes = _metric(metrics, "parameters").groupby("model")["value"].first().dropna()
    models = [m for m in _ordered(accuracy.index.get_level_values("model"), model_labels()) if m in sizes.index]
    if not models:
        raise ValueError("no model has both an accuracy and a parameter count to plot")
    datasets = _ordered(accuracy.index.get_level_values("dataset"), list(DATASET_NAMES))
    colours = model_colors(_ordered(accuracy.index.get_level_values("model"), model_labels()))
    # Same-size models are spread by a few percent of a decade around their true size.
    nudged, seen = {}, {}
    for model in models:
        size = sizes[model]
        same = seen.setdefault(size, [])
        same.append(model)
    for size, group in seen.items():
        for i, model in enumerate(group):
            nudged[model] = size * 10 ** (0.1 * (i - (len(group) - 1) / 2))
    low, high = min(sizes[models]), max(sizes[models])
    with rc_context(STYLE):
        figure = _new_figure(3.4 * len(datasets) + 1.8, 3.8)
        panels = figure.subplots(1, len(datasets), sharey=True, squeeze=False)[0]
        for axes, dataset in zip(panels, datasets):
            for model in models:
                if (model, dataset) not in accuracy.index:
                    continue
                row = accuracy.loc[(model, dataset)]
                y = 100 * row["value"]
                error = [[100 * max(row["value"] - row["ci_low"], 0)], [100 * max(row["ci_high"] - row["value"], 0)]]
                axes.errorbar([nudged[model]], [y], yerr=error, fmt="o", markersize=7, color=colours[model],
                              capsize=3, label=model_name(model))
            axes.set_xscale("log")
            axes.set_xlim(low / 4, high * 4)
            axes.xaxis.set_major_formatter(FuncFormatter(_count_label))
            axes.xaxis.set_minor_formatter(NullFormatter())
            axes.set_title(dataset_name(dataset))
            axes.set_xlabel("Parameters (log scale" + ("; equal sizes side by side)" if len(seen) < len(models) else ")"))
        panels[0].set_ylabel("Accuracy (% of problems correct)")
        panels[0].set_ylim(-4, 105)  # a point at 0% stays whole
        panels[0].yaxis.set_major_formatter(PercentFormatter(100))
        handles, labels = panels[0].get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        figure.legend(unique.values(), unique.keys(), loc="outside lower center", ncol=min(len(unique), 4),
                      title="Model (error bars: 95% bootstrap interval over problems)")
        figure.suptitle("Accuracy against model size")
    return figure


def _count_label(value: float, _position: Any = None) -> str:
    """A parameter count as people write it: 900K, 6.1M, 7B."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def plot_tradeoff(metrics: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """`tradeoff.png` / `.pdf`: see `tradeoff_figure`."""
    return save_figure(tradeoff_figure(metrics), out_dir, "tradeoff")


# ------------------------------------------------------------------------------------------------
# Failure taxonomy


def taxonomy_figure(metrics: pd.DataFrame) -> Figure:
    """Stacked horizontal bars, one panel per dataset: the share of chains with each outcome
    (see `fcdpo.evaluation.outcome`) for each model."""
    metrics = _as_frame(metrics)
    rows = metrics[metrics["metric"].str.startswith("outcome_")]
    if rows.empty:
        raise ValueError("the metrics table has no outcome_* rows to plot")
    datasets = _ordered(rows["dataset"], list(DATASET_NAMES))
    models = _ordered(rows["model"], model_labels())
    shares = rows.assign(outcome=rows["metric"].str.removeprefix("outcome_")).set_index(["model", "dataset", "outcome"])
    with rc_context(STYLE):
        figure = _new_figure(9.0, 0.8 + len(datasets) * (0.45 * len(models) + 0.7))
        panels = figure.subplots(len(datasets), 1, sharex=True, squeeze=False)[:, 0]
        for axes, dataset in zip(panels, datasets):
            present = [m for m in models if (m, dataset, "correct") in shares.index]
            left = np.zeros(len(present))
            for name in OUTCOMES:
                label, colour = OUTCOME_STYLES[name]
                values = np.array([100 * shares["value"].get((m, dataset, name), 0.0) for m in present])
                bars = axes.barh(range(len(present)), values, left=left, color=colour, label=label, height=0.7)
                for bar, value in zip(bars, values):
                    if value >= 7:
                        axes.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height() / 2,
                                  f"{value:.0f}", ha="center", va="center", fontsize=8,
                                  color="white" if name != "out_of_steps" else "black")
                left += values
            axes.set_yticks(range(len(present)), [model_name(m) for m in present])
            axes.invert_yaxis()
            axes.set_xlim(0, 100)
            axes.set_title(dataset_name(dataset), loc="left")
            axes.grid(axis="y", visible=False)
        panels[-1].xaxis.set_major_formatter(PercentFormatter(100))
        panels[-1].set_xlabel("Share of chains (%)")
        handles, labels = panels[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncol=4, title="Outcome of the chain")
        figure.suptitle("How each chain ended (failure taxonomy)")
    return figure


def plot_failure_taxonomy(metrics: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """`failure_taxonomy.png` / `.pdf`: see `taxonomy_figure`."""
    return save_figure(taxonomy_figure(metrics), out_dir, "failure_taxonomy")


# ------------------------------------------------------------------------------------------------
# Accuracy by difficulty


def difficulty_figure(by_difficulty: pd.DataFrame) -> Figure:
    """Accuracy against problem difficulty (math: steps, logic: hops), one panel per dataset, one
    line per model with 95% bootstrap intervals (nudged sideways so they do not hide each other)."""
    table = _as_frame(by_difficulty)
    if table.empty:
        raise ValueError("the difficulty table is empty")
    datasets = _ordered(table["dataset"], list(DATASET_NAMES))
    models = _ordered(table["model"], model_labels())
    colours = model_colors(models)
    with rc_context(STYLE):
        figure = _new_figure(3.6 * len(datasets) + 1.8, 3.8)
        panels = figure.subplots(1, len(datasets), sharey=True, squeeze=False)[0]
        for axes, dataset in zip(panels, datasets):
            rows = table[table["dataset"] == dataset]
            for i, model in enumerate(models):
                line = rows[rows["model"] == model].sort_values("difficulty")
                if line.empty:
                    continue
                x = line["difficulty"].to_numpy(float) + 0.07 * (i - (len(models) - 1) / 2)
                y = 100 * line["accuracy"].to_numpy(float)
                error = [100 * (line["accuracy"] - line["ci_low"]).clip(lower=0).to_numpy(float),
                         100 * (line["ci_high"] - line["accuracy"]).clip(lower=0).to_numpy(float)]
                axes.errorbar(x, y, yerr=error, marker="o", markersize=5, capsize=2.5, linewidth=1.5,
                              color=colours[model], label=model_name(model))
            measure = rows["measure"].iloc[0]
            axes.set_xlabel(DIFFICULTY_AXES.get(measure, measure))
            levels = sorted(rows["difficulty"].unique())
            axes.set_xticks(levels, [f"{level:g}" for level in levels])  # only the levels measured
            axes.set_xlim(levels[0] - 0.5, levels[-1] + 0.5)
            axes.set_title(dataset_name(dataset))
        panels[0].set_ylabel("Accuracy (% of problems correct)")
        panels[0].set_ylim(-4, 105)
        panels[0].yaxis.set_major_formatter(PercentFormatter(100))
        handles, labels = panels[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4),
                      title="Model (error bars: 95% bootstrap interval over problems)")
        figure.suptitle("Accuracy by problem difficulty")
    return figure


def plot_accuracy_by_difficulty(by_difficulty: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """`accuracy_by_difficulty.png` / `.pdf`: see `difficulty_figure`."""
    return save_figure(difficulty_figure(by_difficulty), out_dir, "accuracy_by_difficulty")


# ------------------------------------------------------------------------------------------------
# Training curves


def read_training_log(path: str | Path) -> list[dict[str, float]]:
    """Training-log records (`step`, `loss`, `rewards/margins`, ...) from a file or a folder.

    A folder is a trained arm's (`fcdpo.runs.training_dir`): the curves `fcdpo.finetuning` writes
    there as it trains (`read_curves`), else the newest `checkpoint-*/trainer_state.json` TRL left.
    A file is a JSON list of records, a JSON object holding one under `log_history` (Hugging Face
    `trainer_state.json`), `history`, `logs` or `records`, a JSONL file of records, or a CSV with a
    header. Only numeric values are kept; any key may be missing. An absent path or a folder with
    no log gives an empty list.
    """
    from fcdpo.finetuning import CURVES_FILE

    path = Path(path)
    if path.is_dir():
        checkpoints = sorted(path.glob("checkpoint-*/trainer_state.json"),
                             key=lambda p: int(p.parent.name.rsplit("-", 1)[-1]) if p.parent.name.rsplit("-", 1)[-1].isdigit() else -1)
        candidates = [path / CURVES_FILE, *checkpoints[::-1]]
        for candidate in candidates:
            records = _records_in(candidate) if candidate.is_file() else []
            if records:
                return records
        return []
    if not path.is_file():
        return []
    return _records_in(path)


def _records_in(path: Path) -> list[dict[str, float]]:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".csv":
            raw: Any = list(csv.DictReader(text.splitlines()))
        elif path.suffix == ".jsonl":
            raw = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            raw = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error):
        return []
    if isinstance(raw, dict):
        raw = next((raw[k] for k in ("log_history", "history", "logs", "records") if isinstance(raw.get(k), list)), [])
    if not isinstance(raw, list):
        return []
    records = []
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        record = {}
        for key, value in entry.items():
            number = _number(value)
            if number is not None:
                record[str(key)] = number
        if record:
            records.append(record)
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            return None
    return None


def training_curves_figure(records: Sequence[Mapping[str, Any]], title: str = "DPO training") -> Figure:
    """Loss, reward margin and reward accuracy against the training step (a panel for each curve the
    records have; evaluation entries, `eval_<key>`, are drawn as points on the same panel)."""
    records = [dict(r) for r in records]
    panels_wanted = [curve for curve in CURVES
                     if any(_number(r.get(curve[0])) is not None or _number(r.get(f"eval_{curve[0]}")) is not None
                            for r in records)]
    if not panels_wanted:
        raise ValueError(f"no training records with any of {[curve[0] for curve in CURVES]}")
    with rc_context(STYLE):
        figure = _new_figure(3.6 * len(panels_wanted), 3.4)
        panels = figure.subplots(1, len(panels_wanted), squeeze=False)[0]
        for axes, (key, name, label, percent) in zip(panels, panels_wanted):
            scale = 100.0 if percent else 1.0
            for series, style in ((key, {"color": "#009E73", "linewidth": 1.6, "label": "training batches"}),
                                  (f"eval_{key}", {"color": "#0072B2", "marker": "o", "markersize": 5,
                                                   "linestyle": "--", "label": "validation pairs"})):
                points = [(_step(r, i), _number(r.get(series))) for i, r in enumerate(records)]
                points = [(x, y * scale) for x, y in points if y is not None]
                if points:
                    xs, ys = zip(*sorted(points))
                    if len(points) <= 40 and "marker" not in style:
                        style = {**style, "marker": ".", "markersize": 4}
                    axes.plot(xs, ys, **style)
            axes.set_xlabel("Training step (optimizer updates)")
            axes.set_ylabel(label)
            axes.set_title(name)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            if percent:
                axes.set_ylim(0, 105)
                axes.yaxis.set_major_formatter(PercentFormatter(100))
            if key == "rewards/margins":
                axes.axhline(0, color="#999999", linewidth=0.8)
        handles, labels = panels[0].get_legend_handles_labels()
        for axes in panels[1:]:
            for handle, text in zip(*axes.get_legend_handles_labels()):
                if text not in labels:
                    handles.append(handle)
                    labels.append(text)
        figure.legend(handles, labels, loc="outside lower center", ncol=2)
        figure.suptitle(title)
    return figure


def _step(record: Mapping[str, Any], index: int) -> float:
    step = _number(record.get("step"))
    return step if step is not None else float(index)


def plot_training_curves(records: Sequence[Mapping[str, Any]], out_dir: str | Path,
                         title: str = "DPO training", stem: str = "dpo_training") -> list[Path]:
    """`dpo_training.png` / `.pdf`: see `training_curves_figure`."""
    return save_figure(training_curves_figure(records, title), out_dir, stem)


# ------------------------------------------------------------------------------------------------
# Everything at once


EXTRA_SEED = r".+-s\d+"  # the label of a method trained with an extra seed (`fcdpo.training.seed_labels`)


def _bar_label(method: str, seeds: int) -> str:
    """A method's bar label on lines of one word ("onpolicy_dpo" → "onpolicy", "dpo"; "dpo − sft" → "dpo", "− sft"), so six bars a panel stay readable."""
    return "\n".join([*re.split(r"_| (?=− )", method), f"n={int(seeds)}"])


def gains_figure(methods: pd.DataFrame) -> Figure:
    """Gain over the untrained student by method, one panel per dataset: the mean over seeds with its
    paired bootstrap 95% interval (`fcdpo.evaluation.method_table`); the number of seeds as n in the label."""
    methods = _as_frame(methods)
    if methods.empty or "gain" not in methods:
        raise ValueError("no method has a gain over the student to plot")
    datasets = _ordered(methods["dataset"], list(DATASET_NAMES))
    colours = model_colors(m for m in methods["method"] if "−" not in m)  # one colour per method, all panels
    bars = max(methods.groupby("dataset").size())
    with rc_context(STYLE):
        figure = _new_figure(max(3.2, 0.75 * bars + 0.6) * len(datasets) + 1.0, 3.6)
        panels = figure.subplots(1, len(datasets), sharey=True, squeeze=False)[0]
        for axes, dataset in zip(panels, datasets):
            rows = methods[methods["dataset"] == dataset].reset_index(drop=True)
            y = 100 * rows["gain"]
            error = [100 * (rows["gain"] - rows["gain_low"]).clip(lower=0), 100 * (rows["gain_high"] - rows["gain"]).clip(lower=0)]
            axes.bar(range(len(rows)), y, yerr=error, color=[colours.get(m, "tab:grey") for m in rows["method"]],
                     capsize=4)
            axes.axhline(0, color="black", linewidth=0.8)
            axes.set_xticks(range(len(rows)))
            axes.set_xticklabels([_bar_label(m, s) for m, s in zip(rows["method"], rows["seeds"])], fontsize=8)
            axes.set_title(DATASET_NAMES.get(dataset, dataset))
        panels[0].set_ylabel("gain over the student (points)")
    return figure


def plot_gains(methods: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """`gains.png` / `.pdf`: see `gains_figure`."""
    return save_figure(gains_figure(methods), out_dir, "gains")


def plot_all(evaluation_dir: str | Path, out_dir: str | Path, training_dir: str | Path | None = None) -> dict[str, list[Path]]:
    """Every figure whose data exists: evaluation tables from `evaluation_dir` (written by
    `fcdpo.evaluation.evaluate`), DPO logs from `training_dir` (e.g. `<run>/training/dpo`).

    A figure without data (no parameter counts, no difficulty levels, no training log) is skipped
    with a printed note. Returns `{figure name: [png, pdf]}`.
    """
    tables = read_tables(evaluation_dir)
    metrics = tables.get("metrics", pd.DataFrame(columns=["model", "task", "dataset", "metric", "value"]))
    by_difficulty = tables.get("by_difficulty", pd.DataFrame())
    # Per-model figures show each method's first seed; the `gains` figure shows every seed's mean.
    metrics = metrics[~metrics["model"].astype(str).str.fullmatch(EXTRA_SEED)]
    if "model" in by_difficulty:
        by_difficulty = by_difficulty[~by_difficulty["model"].astype(str).str.fullmatch(EXTRA_SEED)]
    jobs = {
        "accuracy": lambda: plot_accuracy(metrics, out_dir),
        "tradeoff": lambda: plot_tradeoff(metrics, out_dir),
        "failure_taxonomy": lambda: plot_failure_taxonomy(metrics, out_dir),
        "accuracy_by_difficulty": lambda: plot_accuracy_by_difficulty(by_difficulty, out_dir),
    }
    if "methods" in tables:
        jobs["gains"] = lambda: plot_gains(tables["methods"], out_dir)
    step_table = next((Path(evaluation_dir) / f"{stem}.csv" for stem in ("step_methods", "step_metrics")
                       if (Path(evaluation_dir) / f"{stem}.csv").exists()), None)
    if step_table is not None:
        jobs["step_metrics"] = lambda: plot_step_metrics(pd.read_csv(step_table), out_dir)
    if training_dir is not None:
        records = read_training_log(training_dir)
        jobs["dpo_training"] = lambda: plot_training_curves(records, out_dir)
    written = {}
    for name, job in jobs.items():
        try:
            written[name] = job()
        except ValueError as exc:
            print(f"{name}: skipped ({exc})")
    return written
