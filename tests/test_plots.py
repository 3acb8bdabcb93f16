"""Figures: each is written as non-empty PNG and PDF, labelled, and drawn from the tables' numbers."""

import json

import pytest

from fcdpo.evaluation import difficulty_table, metrics_table, write_table
from fcdpo.finetuning import write_curves
from fcdpo.plots import (
    accuracy_figure,
    difficulty_figure,
    model_colors,
    plot_accuracy,
    plot_accuracy_by_difficulty,
    plot_all,
    plot_failure_taxonomy,
    plot_tradeoff,
    plot_training_curves,
    read_training_log,
    taxonomy_figure,
    tradeoff_figure,
    training_curves_figure,
)
from tests.test_evaluation import chain

SKILL = {"teacher": 0.9, "student": 0.4, "sft": 0.6, "dpo": 0.7}


def runs():
    """Hand-built chains of four models on two datasets, with accuracies near SKILL."""
    out = {}
    for model, skill in SKILL.items():
        for dataset, task, key in (("math", "math", "steps"), ("fol", "fol", "hops")):
            chains = []
            for i in range(20):
                level = 1 + i % 3
                correct = (i * 7 % 20) / 20 < skill
                stop = "answer" if correct or i % 2 else ("max_errors" if i % 4 == 0 else "max_steps")
                chains.append(chain(f"{dataset}-{i}", task=task, meta={key: level}, correct=correct,
                                    answer="12" if correct else ("3" if i % 2 else None), stop=stop,
                                    errors={"parse_error": 3} if stop == "max_errors" else None))
            out[(model, dataset)] = chains
    return out


PARAMETERS = {"teacher": 6.1e6, "student": 9e5, "sft": 9e5, "dpo": 9e5}
METRICS = metrics_table(runs(), parameters=PARAMETERS, resamples=200)
BY_DIFFICULTY = difficulty_table(runs(), resamples=200)
DPO_LOG = [{"step": s, "loss": 0.69 - 0.01 * s, "rewards/margins": 0.05 * s, "rewards/accuracies": min(1.0, 0.5 + 0.02 * s),
            "learning_rate": 1e-5} for s in range(1, 31)] + [{"step": 30, "eval_loss": 0.45, "eval_rewards/margins": 1.2,
                                                             "eval_rewards/accuracies": 0.8}]


def assert_written(paths):
    png, pdf = paths
    assert png.suffix == ".png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert pdf.suffix == ".pdf" and pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 5_000


def described(axes, which):
    """An axis says what it shows: a label, or named categories on its ticks."""
    label = getattr(axes, f"get_{which}label")()
    names = [tick.get_text() for tick in getattr(axes, f"get_{which}ticklabels")()]
    return bool(label) or any(name and not name.replace(".", "").replace("−", "").isdigit() for name in names)


def assert_labelled(figure):
    """Every data panel has a title; x and y are described (shared axes on one panel of the row or column)."""
    panels = [axes for axes in figure.axes if axes.has_data()]
    assert panels
    assert all(axes.get_title() or axes.get_title(loc="left") for axes in panels)
    assert any(described(axes, "x") for axes in panels) and any(described(axes, "y") for axes in panels)
    assert figure.get_suptitle() or len(panels) == 1


@pytest.mark.parametrize("plot, table", [
    (plot_accuracy, METRICS), (plot_tradeoff, METRICS), (plot_failure_taxonomy, METRICS),
    (plot_accuracy_by_difficulty, BY_DIFFICULTY), (plot_training_curves, DPO_LOG),
])
def test_each_plot_writes_a_png_and_a_pdf(tmp_path, plot, table):
    assert_written(plot(table, tmp_path / "figures"))


@pytest.mark.parametrize("make, table", [
    (accuracy_figure, METRICS), (tradeoff_figure, METRICS), (taxonomy_figure, METRICS),
    (difficulty_figure, BY_DIFFICULTY), (training_curves_figure, DPO_LOG),
])
def test_each_figure_has_titles_and_axis_labels(make, table):
    assert_labelled(make(table))


def test_accuracy_bars_are_the_table_accuracies_in_percent_with_their_intervals():
    figure = accuracy_figure(METRICS)
    axes = figure.axes[0]
    heights = sorted(round(bar.get_height(), 6) for bar in axes.patches)
    accuracy = METRICS[METRICS["metric"] == "accuracy"]
    assert heights == sorted(round(100 * v, 6) for v in accuracy["value"])
    assert axes.get_ylabel() == "Accuracy (% of problems correct)"
    assert "Math (held-out)" in axes.get_xticklabels()[0].get_text()


def test_the_tradeoff_uses_a_log_parameter_axis_and_needs_parameter_counts():
    figure = tradeoff_figure(METRICS)
    assert all(axes.get_xscale() == "log" for axes in figure.axes if axes.has_data())
    assert "Parameters" in figure.axes[0].get_xlabel()
    with pytest.raises(ValueError, match="parameter count"):
        tradeoff_figure(METRICS[METRICS["metric"] != "parameters"])


def test_taxonomy_segments_of_each_model_add_up_to_all_chains():
    figure = taxonomy_figure(METRICS)
    axes = figure.axes[0]
    ends = {round(bar.get_x() + bar.get_width(), 6) for bar in axes.patches if bar.get_width() > 0}
    assert max(ends) == pytest.approx(100)
    assert axes.get_xlim() == (0, 100)


def test_a_model_keeps_its_colour_whatever_the_order():
    assert model_colors(["dpo", "teacher", "x"])["dpo"] == model_colors(["teacher", "student", "dpo"])["dpo"]
    colours = model_colors(["teacher", "student", "sft", "dpo", "a", "b"])
    assert len(set(colours.values())) == 6


def test_training_curves_draw_only_the_curves_the_log_has():
    figure = training_curves_figure([{"step": 1, "loss": 0.7}, {"step": 2, "loss": 0.6, "rewards/margins": "n/a"}])
    assert [axes.get_title() for axes in figure.axes if axes.has_data()] == ["Training loss"]
    assert figure.get_suptitle() == "DPO training"
    with pytest.raises(ValueError, match="no training records"):
        training_curves_figure([{"step": 1, "learning_rate": 1e-5}])


def test_training_logs_are_read_from_trainer_state_json_jsonl_and_csv(tmp_path):
    state = tmp_path / "state"
    (state / "checkpoint-10").mkdir(parents=True)
    (state / "adapter_config.json").write_text(json.dumps({"r": 16}))
    (state / "checkpoint-10" / "trainer_state.json").write_text(json.dumps({"log_history": DPO_LOG[:10]}))
    assert read_training_log(state) == DPO_LOG[:10]

    listing = tmp_path / "log.json"
    listing.write_text(json.dumps(DPO_LOG))
    assert len(read_training_log(listing)) == len(DPO_LOG)

    lines = tmp_path / "log.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in DPO_LOG[:3]) + "\n")
    assert [r["step"] for r in read_training_log(lines)] == [1, 2, 3]

    table = tmp_path / "csv" / "log.csv"
    table.parent.mkdir()
    table.write_text("step,loss,rewards/margins,note\n1,0.69,0.0,start\n2,0.6,,\n")
    assert read_training_log(table) == [{"step": 1.0, "loss": 0.69, "rewards/margins": 0.0},
                                               {"step": 2.0, "loss": 0.6}]
    assert read_training_log(tmp_path / "absent") == []
    assert read_training_log(table.parent) == []  # a folder is an arm's: its curves or TRL's checkpoints, no guessing


def test_the_curves_fcdpo_training_writes_are_found_beside_its_report_and_adapter(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 16}))
    (tmp_path / "report.json").write_text(json.dumps({"steps": 30, "validation": {"eval_loss": 0.4}}))
    (tmp_path / "curves.json").write_text(json.dumps(DPO_LOG))
    assert read_training_log(tmp_path) == DPO_LOG


@pytest.mark.slow
def test_plot_all_writes_every_figure_with_data_and_notes_the_rest(tmp_path, capsys):
    evaluation = tmp_path / "evaluation"
    write_table(METRICS[METRICS["metric"] != "parameters"], evaluation, "metrics")
    write_table(BY_DIFFICULTY, evaluation, "by_difficulty")
    training = tmp_path / "training" / "dpo"
    training.mkdir(parents=True)
    write_curves(DPO_LOG, training)
    written = plot_all(evaluation, tmp_path / "figures", training)
    assert sorted(written) == ["accuracy", "accuracy_by_difficulty", "dpo_training", "failure_taxonomy"]
    for paths in written.values():
        assert_written(paths)
    assert "tradeoff: skipped" in capsys.readouterr().out


def test_the_step_metrics_figure_compares_single_and_multi_per_task(tmp_path):
    import pandas as pd

    from fcdpo.plots import plot_step_metrics, step_metrics_figure

    table = pd.DataFrame([
        {"model": "multi", "task": "math", "plan_acc": 0.9, "act_em": 0.8, "arg_f1": 0.7, "hallucination": 0.0, "answer_acc": 0.6},
        {"model": "dpo", "task": "math", "plan_acc": 0.8, "act_em": 0.9, "arg_f1": 0.6, "hallucination": 0.1, "answer_acc": 0.5},
        {"model": "multi", "task": "fol", "plan_acc": 0.7, "act_em": 0.6, "arg_f1": 0.5, "hallucination": 0.0, "answer_acc": 0.4},
    ])
    figure = step_metrics_figure(table)
    assert [a.get_title() for a in figure.axes] == ["Math (held-out)", "Logic (held-out)"]
    assert figure.axes[0].get_ylabel() == "Share of steps (%)"
    paths = plot_step_metrics(table, tmp_path)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
