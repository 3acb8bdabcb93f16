"""Evaluation: every model of a run, the same agent, held-out problems, metrics with intervals.

Layer: stages; imports rollouts and training, the agent, the profile, settings, backends, tasks and the run folder's layout.

    result = evaluate({"teacher": {"kind": "hf", "model": "lab/teacher"}, "dpo": student_backend},
                      {"math": math_task}, {"math": held_out}, profile.agent, profile.run_path)
    result.summary          # one row per (model, dataset), one column per metric

Each model runs the same `fcdpo.agent.Agent` on each problem set, greedy by default (pass@k with
sampling is an option). Chains are appended to `<run>/evaluation/trajectories/<decoding>/
<model>-<dataset>.jsonl` through `fcdpo.rollouts.rollout`, so a rerun skips every chain already
written and loads no model whose chains are all on disk. Chains written by another version of a
model (a retrained adapter, a rebuilt tiny lab, other agent settings; see `model_fingerprint`) are
not resumed but redone.

Metrics are pure functions of `Trajectory` records:

- accuracy, with a seeded 95% percentile-bootstrap interval over problems (a problem's samples are
  resampled together); pass@k (unbiased estimator) when there are k > 1 samples per problem;
- call quality over call attempts (executed calls plus turns that failed to parse): valid-call rate
  (parsed, known function, arguments accepted by the signature), parse-error rate,
  hallucinated-function rate (a name not in the function set), argument-error rate (the signature
  refused the arguments); these four sum to 1. The execution-error rate (a valid call whose function
  raised or timed out, e.g. a division by zero) is a part of the valid calls;
- mean model turns and calls per chain, prompt and generated tokens per problem, seconds per problem;
- the outcome of each chain (see `outcome`) as shares of chains;
- the last result and the answer (see `last_result`): of the chains whose last function result reads
  as an answer (`Task.result_answer`: a number, a proof's verdict), the share whose result is right
  (`result_correct_rate`: the calls computed the answer) and, of those that answered, the share whose
  answer is that result (`answer_follows_result_rate`: the chain answered what it computed). A
  model can fail either way: compute the wrong thing, or compute the right thing and answer another;
- accuracy by difficulty: `meta["steps"]` (math) or `meta["hops"]` (fol).

Tables are written to `<run>/evaluation/`: `metrics.{csv,json}` (tidy, one row per model × dataset
× metric), `summary.{csv,json}` (wide), `by_difficulty.{csv,json}` and `models.json`.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import math
import re
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from fcdpo import arms, runs
from fcdpo.agent import Agent, AgentConfig, Trajectory
from fcdpo.rollouts import rollout

if TYPE_CHECKING:
    from fcdpo.config import Profile
    from fcdpo.tasks import Problem, Task

# A chain's outcome, in the order the taxonomy is reported.
OUTCOMES = (
    "correct",
    "wrong_answer",
    "parse_error",
    "unknown_function",
    "bad_arguments",
    "execution_error",
    "out_of_steps",
)
# When errors tie, the one that happens earlier in handling a turn wins: parse, look up, bind, run.
_ERROR_PRECEDENCE = ("parse_error", "unknown_function", "bad_arguments", "execution_error")
DIFFICULTY_KEYS = {"math": "steps", "fol": "hops"}
# The columns of the tidy table, in order.
METRIC_COLUMNS = ("model", "task", "dataset", "metric", "value", "ci_low", "ci_high")
_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


# ------------------------------------------------------------------------------------------------
# Metrics of one chain


def outcome(trajectory: Trajectory) -> str:
    """What became of a chain, one of `OUTCOMES`, by this precedence:

    1. `correct`: the final answer was graded correct (errors on the way do not matter);
    2. `wrong_answer`: the chain gave a final answer and it was wrong;
    3. a chain stopped for too many errors (`stop == "max_errors"`) without an answer is put down to
       its dominant error: the kind it made most often among parse errors, unknown functions, bad
       arguments and execution errors (timeouts count as execution errors); ties go to the kind
       met earlier in handling a turn (parse, then look-up, then binding, then running);
    4. `out_of_steps`: any other chain without an answer: it used up its turns or its token budget,
       or (multi-model agent) its planner gave up; a few errors on the way do not make it an error
       chain.
    """
    if trajectory.correct:
        return "correct"
    if trajectory.answer is not None:
        return "wrong_answer"
    if trajectory.stop == "max_errors":
        counts = _error_counts(trajectory)
        worst = max(_ERROR_PRECEDENCE, key=lambda kind: (counts[kind], -_ERROR_PRECEDENCE.index(kind)))
        if counts[worst] > 0:
            return worst
    return "out_of_steps"


def last_result(trajectory: Trajectory) -> str | None:
    """The chain's last function result that reads as an answer to its problem (`Task.result_answer`),
    or None: no call, or the last result is an error or an acknowledgement."""
    results = [m for m in trajectory.messages if m.get("role") == "tool"]
    if not results:
        return None
    content, reader = results[-1].get("content"), _answer_reader(trajectory.task)
    return reader.result_answer(content) if isinstance(content, str) and reader is not None else None


def result_rates(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """What the chains computed against what they answered (NaN where no chain qualifies).

    `result_correct_rate`: of the chains whose last result reads as an answer, the share where it is
    the gold answer. `answer_follows_result_rate`: of those that also answered, the share whose answer
    is that result. A model can compute the right verdict and answer another one; accuracy alone
    does not tell the two failures apart.
    """
    nan = math.nan
    computed = [(t, r) for t in trajectories if (r := last_result(t)) is not None]
    answered = [(t, r) for t, r in computed if t.answer is not None]
    checker = _answer_reader(trajectories[0].task) if trajectories else None  # computed is empty without one
    return {
        "result_correct_rate": (sum(checker.check(r, t.gold) for t, r in computed) / len(computed)
                                if computed else nan),
        "answer_follows_result_rate": (sum(checker.check(t.answer, r) for t, r in answered) / len(answered)
                                       if answered else nan),
    }


@functools.lru_cache(maxsize=None)
def _answer_reader(name: str) -> "Task | None":
    """The task that reads and checks answers of chains of task `name`; None for a task fcdpo does not know."""
    from fcdpo.tasks import get_task

    try:
        return get_task(name)
    except ValueError:
        return None


def _error_counts(trajectory: Trajectory) -> Counter[str]:
    errors = trajectory.errors or {}
    counts = Counter({kind: int(errors.get(kind, 0)) for kind in _ERROR_PRECEDENCE})
    counts["execution_error"] += int(errors.get("timeout", 0))
    return counts


def difficulty(trajectory: Trajectory) -> int | None:
    """The chain's problem difficulty: `meta["steps"]` for math, `meta["hops"]` for fol, else None."""
    key = DIFFICULTY_KEYS.get(trajectory.task)
    value = (trajectory.meta or {}).get(key) if key else None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# ------------------------------------------------------------------------------------------------
# Metrics of many chains


def bootstrap_interval(
    values: Sequence[float], resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """A percentile-bootstrap interval for the mean of `values`; (nan, nan) for no values.

    The same values, resamples and seed always give the same interval.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(low), float(high))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem with `c` correct chains among `n` samples (Chen et al. 2021):
    the chance that at least one of `k` samples drawn without replacement is correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def paired_gain(
    runs: Sequence[Sequence[Trajectory]], baseline: Sequence[Trajectory], resamples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """(gain, low, high): mean accuracy of `runs` (one list of chains per training seed) minus the
    `baseline`'s on the same problems, with a paired bootstrap 95% interval over problems.

    Each problem's gain is its mean correctness over the runs (and their samples) minus the
    baseline's; problems are resampled with their seeds pooled, as the seeds see the same problems.
    Only problems every run and the baseline answered count.
    """
    groups = [_by_problem(chains) for chains in runs]
    base = _by_problem(baseline)
    shared = sorted(set(base).intersection(*groups)) if groups else []
    if not shared:
        return (math.nan, math.nan, math.nan)
    diffs = [
        np.mean([np.mean([t.correct for t in g[p]]) for g in groups]) - np.mean([t.correct for t in base[p]])
        for p in shared
    ]
    low, high = bootstrap_interval(diffs, resamples, 0.95, seed)
    return (float(np.mean(diffs)), low, high)


def method_table(
    trajectories: Mapping[tuple[str, str], Sequence[Trajectory]],
    methods: Mapping[str, Sequence[str]],
    baseline: str = "student",
    versus: tuple[str, str] | None = ("dpo", "sft"),
    resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (method, dataset): accuracy as mean over the method's seeds with their spread, and
    the gain over `baseline` with a paired bootstrap interval (`paired_gain`).

    `methods` maps a method to the model labels of its seeds (e.g. `{"dpo": ["dpo", "dpo-s1"]}`);
    labels without chains are left out. With `versus`, a row "dpo − sft" gives the first method's
    gain over the second, paired the same way (seeds pooled on each side).
    """
    datasets = sorted({dataset for _, dataset in trajectories})
    rows = []
    for dataset in datasets:
        if (baseline, dataset) not in trajectories:
            continue
        base = trajectories[(baseline, dataset)]
        pooled: dict[str, list[Sequence[Trajectory]]] = {}
        for method, labels in methods.items():
            runs = [trajectories[(label, dataset)] for label in labels if (label, dataset) in trajectories]
            if not runs:
                continue
            pooled[method] = runs
            accuracies = [accuracy_with_interval(chains, 1)[0] for chains in runs]
            gain, low, high = paired_gain(runs, base, resamples, seed)
            rows.append({"method": method, "dataset": dataset, "seeds": len(runs),
                         "accuracy": float(np.mean(accuracies)), "min": min(accuracies), "max": max(accuracies),
                         "baseline": baseline, "baseline_accuracy": accuracy_with_interval(base, 1)[0],
                         "gain": gain, "gain_low": low, "gain_high": high})
        if versus and all(m in pooled for m in versus):
            first, second = (pooled[m] for m in versus)
            # Paired per problem: the first method's mean over its seeds minus the second's.
            gain, low, high = paired_gain(first, [t for chains in second for t in chains], resamples, seed)
            rows.append({"method": f"{versus[0]} − {versus[1]}", "dataset": dataset,
                         "seeds": min(len(first), len(second)), "accuracy": math.nan, "min": math.nan,
                         "max": math.nan, "baseline": versus[1], "baseline_accuracy": math.nan,
                         "gain": gain, "gain_low": low, "gain_high": high})
    return pd.DataFrame(rows)


def correctness(runs: Sequence[Sequence[Trajectory]], problems: Sequence[str]) -> np.ndarray:
    """Seeds × problems, 1 where a seed's chain for the problem is correct (the mean over its samples)."""
    out = np.zeros((len(runs), len(problems)))
    index = {problem: i for i, problem in enumerate(problems)}
    for row, chains in enumerate(runs):
        for problem, group in _by_problem(chains).items():
            if problem in index:
                out[row, index[problem]] = np.mean([t.correct for t in group])
    return out


def comparison_table(
    trajectories: Mapping[tuple[str, str], Sequence[Trajectory]],
    methods: Mapping[str, Sequence[str]],
    baseline: str = "sft",
    untrained: str = "student",
    resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """The study's table: per (method, dataset), accuracy over seeds, the gain over the untrained
    student and over `baseline`, each with a hierarchical bootstrap interval (seeds, then problems:
    `fcdpo.stats.hierarchical_gain`), and the one-sided p-value of "beats `baseline`" adjusted with
    Holm over every method compared with it on that dataset, with the interval at the Bonferroni level
    of that many comparisons (`fcdpo.stats.corrected_level`)."""
    from fcdpo.stats import corrected_level, hierarchical_gain, holm

    rows = []
    for dataset in sorted({dataset for _, dataset in trajectories}):
        problems = sorted({t.problem_id for (label, d), chains in trajectories.items() if d == dataset for t in chains})
        scored = {method: [trajectories[(label, dataset)] for label in labels if (label, dataset) in trajectories]
                  for method, labels in methods.items()}
        scored = {method: runs for method, runs in scored.items() if runs}
        matrices = {method: correctness(runs, problems) for method, runs in scored.items()}
        base = correctness([trajectories[(untrained, dataset)]], problems) if (untrained, dataset) in trajectories else None
        compared = [m for m in matrices if m != baseline] if baseline in matrices else []
        level = corrected_level(len(compared))
        versus = {m: hierarchical_gain(matrices[m], matrices[baseline], resamples, seed, level) for m in compared}
        adjusted = holm({m: v["p"] for m, v in versus.items()})
        for method, matrix in matrices.items():
            per_seed = matrix.mean(axis=1)
            row = {"method": method, "dataset": dataset, "seeds": matrix.shape[0], "problems": len(problems),
                   "accuracy": float(per_seed.mean()), "min": float(per_seed.min()), "max": float(per_seed.max())}
            if base is not None:
                over = hierarchical_gain(matrix, base, resamples, seed)
                row.update(gain=over["gain"], gain_low=over["low"], gain_high=over["high"])
            if method in versus:
                v = versus[method]
                row.update({f"vs_{baseline}": v["gain"], f"vs_{baseline}_low": v["low"], f"vs_{baseline}_high": v["high"],
                            "level": level, "p": v["p"], "p_holm": adjusted[method]})
            rows.append(row)
    return pd.DataFrame(rows)


def _by_problem(trajectories: Sequence[Trajectory]) -> dict[str, list[Trajectory]]:
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        groups[t.problem_id].append(t)
    return groups


def accuracy_with_interval(
    trajectories: Sequence[Trajectory], resamples: int = 1000, level: float = 0.95, seed: int = 0,
    unscored: int = 0,
) -> tuple[float, float, float]:
    """(accuracy, low, high): the share of correct chains and its bootstrap interval over problems.

    With several samples per problem, a problem's chains are resampled together (each problem
    contributes its share of correct samples), so the interval is not made narrower by the samples.
    `unscored` problems (benchmark rows whose gold answer cannot be read) count as not solved.
    """
    if not trajectories and not unscored:
        return (math.nan, math.nan, math.nan)
    per_problem = [np.mean([t.correct for t in group]) for group in _by_problem(trajectories).values()]
    per_problem += [0.0] * unscored
    low, high = bootstrap_interval(per_problem, resamples, level, seed)
    return (float(np.mean(per_problem)), low, high)


def chain_metrics(
    trajectories: Sequence[Trajectory], resamples: int = 1000, seed: int = 0, unscored: int = 0
) -> dict[str, dict]:
    """Every metric of a group of chains: `{metric: {"value", "ci_low", "ci_high"}}`.

    Rates over call attempts are NaN when the chains made no call attempt; an empty group gives
    an empty dict. See the module docstring for the definitions. `unscored` problems (benchmark rows
    whose gold answer cannot be read; no chain was run) count in `problems` and as not solved in
    accuracy and pass@k, and are reported as `unscored_problems`.
    """
    if not trajectories and not unscored:
        return {}
    nan = math.nan
    problems = _by_problem(trajectories)
    accuracy, low, high = accuracy_with_interval(trajectories, resamples, seed=seed, unscored=unscored)
    values: dict[str, float] = {
        "chains": len(trajectories),
        "problems": len(problems) + unscored,
    }
    metrics = {name: {"value": float(v), "ci_low": nan, "ci_high": nan} for name, v in values.items()}
    metrics["accuracy"] = {"value": accuracy, "ci_low": low, "ci_high": high}
    samples = min((len(group) for group in problems.values()), default=1)
    if samples > 1:
        rates = [pass_at_k(len(g), sum(t.correct for t in g), samples) for g in problems.values()]
        rates += [0.0] * unscored
        metrics[f"pass@{samples}"] = {"value": float(np.mean(rates)), "ci_low": nan, "ci_high": nan}
    metrics["unscored_problems"] = {"value": float(unscored), "ci_low": nan, "ci_high": nan}
    if not trajectories:
        return metrics

    errors = Counter()
    for t in trajectories:
        errors.update(_error_counts(t))
    calls = sum(t.calls for t in trajectories)
    attempts = calls + errors["parse_error"]

    def rate(count: float) -> float:
        return count / attempts if attempts else nan

    chains = len(trajectories)
    scored = len(problems) or 1
    values = {
        "answered_rate": sum(t.answer is not None for t in trajectories) / chains,
        "valid_call_rate": rate(calls - errors["unknown_function"] - errors["bad_arguments"]),
        "parse_error_rate": rate(errors["parse_error"]),
        "hallucinated_function_rate": rate(errors["unknown_function"]),
        "argument_error_rate": rate(errors["bad_arguments"]),
        "execution_error_rate": rate(errors["execution_error"]),
        "mean_steps": sum(t.steps for t in trajectories) / chains,
        "mean_calls": calls / chains,
        "prompt_tokens_per_problem": sum(t.tokens.get("prompt", 0) for t in trajectories) / scored,
        "generated_tokens_per_problem": sum(t.tokens.get("completion", 0) for t in trajectories) / scored,
        "seconds_per_problem": sum(t.seconds for t in trajectories) / scored,
    }
    outcomes = Counter(outcome(t) for t in trajectories)
    values.update({f"outcome_{name}": outcomes[name] / chains for name in OUTCOMES})
    values.update(result_rates(trajectories))
    metrics.update({name: {"value": float(v), "ci_low": nan, "ci_high": nan} for name, v in values.items()})
    return metrics


# ------------------------------------------------------------------------------------------------
# Tables


def metrics_table(
    trajectories: Mapping[tuple[str, str], Sequence[Trajectory]],
    parameters: Mapping[str, float | None] | None = None,
    resamples: int = 1000,
    seed: int = 0,
    unscored: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """The tidy table: one row per (model, dataset, metric), columns `METRIC_COLUMNS`.

    `trajectories` maps (model label, dataset name) to that model's chains on that dataset (one
    task per dataset). `parameters` adds a `parameters` row per model and dataset where known.
    `unscored` maps a dataset to its rows that could not be graded (counted as not solved).
    `ci_low` / `ci_high` are the 95% bootstrap bounds for accuracy, NaN for other metrics.
    """
    rows = []
    for (model, dataset), chains in trajectories.items():
        if not chains:
            continue
        task = _single_task(chains, f"{model}/{dataset}")
        metrics = chain_metrics(chains, resamples, seed, unscored=(unscored or {}).get(dataset, 0))
        count = (parameters or {}).get(model)
        if count is not None:
            metrics["parameters"] = {"value": float(count), "ci_low": math.nan, "ci_high": math.nan}
        for name, cell in metrics.items():
            rows.append({"model": model, "task": task, "dataset": dataset, "metric": name, **cell})
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The tidy table made wide: one row per (model, task, dataset), a column per metric, plus
    `accuracy_ci_low` / `accuracy_ci_high`. Rows keep the order models and datasets first appear in."""
    if metrics.empty:
        return pd.DataFrame(columns=["model", "task", "dataset"])
    keys = ["model", "task", "dataset"]
    order = list(dict.fromkeys(metrics["metric"]))
    rows = pd.MultiIndex.from_frame(metrics[keys].drop_duplicates())
    wide = metrics.set_index(keys + ["metric"])["value"].unstack("metric")
    wide = wide.reindex(index=rows, columns=order).reset_index()
    for count in ("chains", "problems"):
        if count in wide:
            wide[count] = wide[count].astype("Int64")
    accuracy = metrics[metrics["metric"] == "accuracy"][keys + ["ci_low", "ci_high"]]
    accuracy = accuracy.rename(columns={"ci_low": "accuracy_ci_low", "ci_high": "accuracy_ci_high"})
    wide = wide.merge(accuracy, on=keys, how="left")
    first = [c for c in ("chains", "problems", "accuracy", "accuracy_ci_low", "accuracy_ci_high") if c in wide]
    wide = wide[keys + first + [c for c in wide.columns if c not in keys and c not in first]]
    wide.columns.name = None
    return wide


def difficulty_table(
    trajectories: Mapping[tuple[str, str], Sequence[Trajectory]], resamples: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Accuracy by difficulty: one row per (model, dataset, difficulty level) with columns model,
    task, dataset, measure ("steps" or "hops"), difficulty, chains, accuracy, ci_low, ci_high.
    Chains without a difficulty (FOLIO) are left out."""
    rows = []
    for (model, dataset), chains in trajectories.items():
        levels: dict[int, list[Trajectory]] = defaultdict(list)
        for t in chains:
            level = difficulty(t)
            if level is not None:
                levels[level].append(t)
        for level in sorted(levels):
            group = levels[level]
            accuracy, low, high = accuracy_with_interval(group, resamples, seed=seed)
            rows.append({
                "model": model, "task": group[0].task, "dataset": dataset,
                "measure": DIFFICULTY_KEYS[group[0].task], "difficulty": level, "chains": len(group),
                "accuracy": accuracy, "ci_low": low, "ci_high": high,
            })
    columns = ["model", "task", "dataset", "measure", "difficulty", "chains", "accuracy", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=columns)


def report_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The headline numbers of a summary table for reading: one row per (model, dataset), accuracy
    as `93.3% [86.7, 98.3]`, call rates and the last-result rates in percent, steps and generated
    tokens per problem."""
    def percent(value: float) -> str:
        return "–" if pd.isna(value) else f"{100 * value:.1f}%"

    rows = []
    for _, row in summary.iterrows():
        rows.append({
            "model": row["model"],
            "dataset": row["dataset"],
            "problems": row.get("problems"),
            "accuracy [95% CI]": f"{percent(row['accuracy'])} [{100 * row['accuracy_ci_low']:.1f}, "
                                 f"{100 * row['accuracy_ci_high']:.1f}]",
            "valid calls": percent(row.get("valid_call_rate")),
            "unknown functions": percent(row.get("hallucinated_function_rate")),
            "argument errors": percent(row.get("argument_error_rate")),
            "parse errors": percent(row.get("parse_error_rate")),
            "last result right": percent(row.get("result_correct_rate")),
            "answer = last result": percent(row.get("answer_follows_result_rate")),
            "mean steps": round(float(row["mean_steps"]), 2),
            "generated tokens / problem": round(float(row["generated_tokens_per_problem"]), 1),
        })
    return pd.DataFrame(rows)


def _single_task(chains: Sequence[Trajectory], where: str) -> str:
    tasks = sorted({t.task for t in chains})
    if len(tasks) != 1:
        raise ValueError(f"{where}: a dataset must hold one task, found {tasks}")
    return tasks[0]


def write_table(table: pd.DataFrame, folder: Path, stem: str) -> list[Path]:
    """`table` as `<stem>.csv` and `<stem>.json` (a list of records; NaN written as null)."""
    folder.mkdir(parents=True, exist_ok=True)
    csv, js = folder / f"{stem}.csv", folder / f"{stem}.json"
    table.to_csv(csv, index=False)
    records = json.loads(table.to_json(orient="records"))
    js.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    return [csv, js]


def read_tables(evaluation_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The tables an evaluation wrote: `{"metrics", "summary", "by_difficulty", "methods", "costs"}` (those present)."""
    folder = Path(evaluation_dir)
    return {stem: pd.read_csv(folder / f"{stem}.csv") for stem in ("metrics", "summary", "by_difficulty", "methods", "costs")
            if (folder / f"{stem}.csv").exists()}


# ------------------------------------------------------------------------------------------------
# Running the models


@dataclass
class Evaluation:
    """What `evaluate` produced; the tables are also on disk under `folder`."""

    folder: Path
    trajectories: dict[tuple[str, str], list[Trajectory]]  # (model label, dataset) → chains
    metrics: pd.DataFrame  # tidy: model, task, dataset, metric, value, ci_low, ci_high
    summary: pd.DataFrame  # wide: one row per (model, task, dataset)
    by_difficulty: pd.DataFrame
    parameters: dict[str, float | None] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    methods: pd.DataFrame | None = None  # trained methods over their seeds, against the student (`method_table`)
    comparison: pd.DataFrame | None = None  # against the student and SFT, hierarchical intervals (`comparison_table`)
    # the multi-LLM variants against the single agent's SFT, a family of comparisons of its own (`comparison_table`)
    multi: pd.DataFrame | None = None
    # on the sealed math splits, the problems whose computation the lab's teacher never saw (`unseen_comparison`)
    unseen: pd.DataFrame | None = None
    costs: pd.DataFrame | None = None  # what each trained method cost (`fcdpo.costs.arm_costs`)


def decoding_name(samples: int, temperature: float) -> str:
    """The trajectory sub-folder of a decoding setting: `greedy`, or e.g. `t0.7-n5` when sampling."""
    return "greedy" if temperature == 0 and samples == 1 else f"t{temperature:g}-n{samples}"


def evaluate(
    models: Mapping[str, Any],
    tasks: Mapping[str, "Task"],
    problems: Mapping[str, Sequence["Problem"]],
    agent_config: AgentConfig | None,
    run_dir: str | Path,
    *,
    samples: int = 1,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
    resamples: int = 1000,
    parameters: Mapping[str, float] | None = None,
    training_questions: Iterable[str] = (),
    progress: bool = True,
) -> Evaluation:
    """Run every model on every problem set, then write the metric tables to `<run_dir>/evaluation/`.

    Args:
        models: label → model. A label names files and figures (letters, digits, `_.+-`). A model is
            a backend spec dict for `fcdpo.backends.load_backend` (loaded from `run_dir` only if some
            of its chains are missing, and released afterwards), a backend (`.complete`), an agent
            (`.task` and `.run(problems, samples=, temperature=, seed=, on_finish=)`, as
            `fcdpo.agent.Agent`; used on the datasets of its task only), or a callable that makes
            such an agent for a task (for a multi-model agent).
        tasks: task name → `Task` (as the profile configures it); each problem's `task` picks one.
        problems: dataset name → problems of one task, e.g. `{"math": held_out, "gsm8k": test}`.
        agent_config: the agent settings every backend is wrapped with (None: the defaults).
        run_dir: the run folder.
        samples, temperature: chains per problem and sampling temperature; 1 and 0.0 is greedy
            decoding. With samples > 1, `pass@<samples>` is reported beside accuracy (pass@1).
        seed, batch_size: passed to `fcdpo.rollouts.rollout`.
        resamples: bootstrap resamples of the 95% accuracy intervals.
        parameters: parameter counts by label, for models that cannot be counted here (endpoints).
        training_questions: questions any model was trained on; evaluating on one is a ValueError.

    Chains already in a model's files are reused unless `model_fingerprint` changed since they were
    written (recorded per file in `evaluation/models.json` with the model's name and parameter count).
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    for label in [*models, *problems]:
        if not _NAME.fullmatch(label):
            raise ValueError(f"label {label!r} must be letters, digits or _ . + - (it names files)")
    datasets, unscored = _scored_datasets(problems, tasks, training_questions)
    folder = runs.evaluation_dir(run_dir)
    trajectory_dir = folder / "trajectories" / decoding_name(samples, temperature)
    known = _read_models_file(folder)
    counts: dict[str, float | None] = {}
    results: dict[tuple[str, str], list[Trajectory]] = {}
    decoding = dict(k=samples, temperature=temperature, seed=seed, batch_size=batch_size, progress=progress)
    for label, model in models.items():
        chains, known[label] = _evaluate_model(label, model, datasets, tasks, agent_config, run_dir, trajectory_dir,
                                               known.get(label, {}), decoding)
        results.update({(label, dataset): items for dataset, items in chains.items()})
        if parameters and label in parameters:  # a count given by the caller wins over the model's own
            known[label]["parameters"] = float(parameters[label])
        counts[label] = known[label]["parameters"]

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.json").write_text(json.dumps(known, indent=1, default=str) + "\n")
    metrics = metrics_table(results, counts, resamples, seed, unscored)
    summary = summary_table(metrics)
    by_difficulty = difficulty_table(results, resamples, seed)
    files = [folder / "models.json"]
    for table, stem in ((metrics, "metrics"), (summary, "summary"), (by_difficulty, "by_difficulty")):
        files += write_table(table, folder, stem)
    return Evaluation(folder, results, metrics, summary, by_difficulty, counts, files)


def _scored_datasets(
    problems: Mapping[str, Sequence["Problem"]], tasks: Mapping[str, "Task"], training_questions: Iterable[str],
) -> tuple[dict[str, tuple[list["Problem"], str]], dict[str, int]]:
    """Each dataset's gradable problems and task name, and how many rows of each cannot be graded.

    A benchmark row that cannot be graded (`meta["unscored"]`, see fcdpo.tasks.sources) is not run: it
    counts as not solved, so accuracy stays out of every row of the file. A problem that was trained on
    is a ValueError.
    """
    unscored = {name: sum(1 for p in items if p.meta.get("unscored")) for name, items in problems.items()}
    for name, count in unscored.items():
        if count:
            print(f"{name}: {count} row(s) cannot be graded and count as not solved")
    datasets = {name: ([p for p in items if not p.meta.get("unscored")], _dataset_task(name, items, tasks))
                for name, items in problems.items()}
    seen = set(training_questions)
    for name, (items, _) in datasets.items():
        leaked = [p.id for p in items if p.question in seen]
        if leaked:
            raise ValueError(f"dataset {name!r}: {len(leaked)} problem(s) were used in training, e.g. {leaked[:3]}")
    return datasets, unscored


def _evaluate_model(
    label: str, model: Any, datasets: Mapping[str, tuple[list["Problem"], str]], tasks: Mapping[str, "Task"],
    agent_config: AgentConfig | None, run_dir: str | Path, trajectory_dir: Path, known: Mapping[str, Any],
    decoding: Mapping[str, Any],
) -> tuple[dict[str, list[Trajectory]], dict[str, Any]]:
    """One model's chains on every dataset (resumed from its files, or redone when the model changed),
    and its entry of `models.json`: name, parameter count, spec and which version wrote each file.

    A spec is loaded only when some of its chains are missing, and released afterwards.
    """
    fingerprint = model_fingerprint(model, run_dir, agent_config)
    written_by = dict(known.get("files", {}))
    for name in datasets:  # chains of an earlier version of this model are not resumed but redone
        path = trajectory_dir / f"{label}-{name}.jsonl"
        key = f"{trajectory_dir.name}/{path.name}"
        if path.exists() and written_by.get(key) not in (None, fingerprint):
            print(f"{label}: {path} was written by another version of the model or of the agent settings; "
                  "evaluating again")
            path.unlink()
        written_by[key] = fingerprint
    todo = {name for name, (items, _) in datasets.items()
            if _missing_chains(trajectory_dir / f"{label}-{name}.jsonl", items, decoding["k"])}
    spec = isinstance(model, dict)
    loaded = None
    if spec and todo:
        from fcdpo.backends import load_backend

        loaded = load_backend(model, root=run_dir)
    source = loaded if loaded is not None else model
    chains: dict[str, list[Trajectory]] = {}
    agents: dict[str, Any] = {}
    for dataset, (items, task_name) in datasets.items():
        if spec and dataset not in todo:
            agent: Any = _DoneAgent(tasks[task_name])  # every chain is on disk: nothing to run
        else:
            agent = agents.get(task_name) or _agent_for(source, tasks[task_name], agent_config)
            if agent is None:
                print(f"{label}: its agent is for another task, so {dataset!r} ({task_name}) is skipped")
                continue
            agents[task_name] = agent
        chains[dataset] = rollout(items, agent, trajectory_dir / f"{label}-{dataset}.jsonl", **decoding)
    in_memory = loaded is not None or not spec
    if not spec:
        name = getattr(getattr(source, "backend", source), "name", None) or known.get("name")
    else:
        name = loaded.name if loaded is not None else known.get("name")
    # A count taken from the model in memory wins over the last run's.
    count = count_parameters(source) if in_memory else None
    entry = {"name": name, "parameters": count if count is not None else known.get("parameters"),
             "spec": model if spec else None, "files": written_by}
    del agents, source
    if loaded is not None:
        del loaded
        _release_memory()
    return chains, entry


def model_fingerprint(model: Any, run_dir: str | Path, agent_config: AgentConfig | None) -> str:
    """What identifies the chains a model produces: its spec (or name), the agent settings and, for
    local folders a spec names, each weight and config file's name, size and modification time (so a
    retrained adapter or a rebuilt tiny lab counts as a new model)."""
    config = getattr(model, "config", None) if hasattr(model, "run") else agent_config
    identity: dict[str, Any] = {"agent": asdict(config) if is_dataclass(config) else repr(config)}
    if isinstance(model, dict):
        identity["spec"] = model
        for key in ("model", "adapter"):
            value = model.get(key)
            folder = next((f for f in (Path(run_dir) / str(value), Path(str(value))) if f.is_dir()), None) \
                if isinstance(value, str) else None
            if folder is not None:
                identity[key] = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()
                                       if f.suffix in (".safetensors", ".bin", ".json", ".jinja"))
    else:
        identity["name"] = getattr(getattr(model, "backend", model), "name", None) or type(model).__name__
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dataset_task(name: str, items: Sequence["Problem"], tasks: Mapping[str, "Task"]) -> str:
    kinds = sorted({p.task for p in items})
    if len(kinds) > 1:
        raise ValueError(f"dataset {name!r} mixes tasks {kinds}; give each task its own dataset")
    task_name = kinds[0] if kinds else name
    if items and task_name not in tasks:
        raise ValueError(f"dataset {name!r} is a {task_name!r} dataset, but tasks has only {sorted(tasks)}")
    return task_name


def _missing_chains(path: Path, items: Sequence["Problem"], samples: int) -> bool:
    from fcdpo.rollouts import read_trajectories

    done = {(t.problem_id, t.sample) for t in read_trajectories(path)}
    return any((p.id, s) not in done for p in items for s in range(samples))


class _DoneAgent:
    """Stands in for a model whose chains are all on disk, so `rollout` only reads the file."""

    def __init__(self, task: "Task"):
        self.task = task

    def run(self, problems, samples=None, temperature=0.0, seed=None, on_finish=None):
        raise RuntimeError("every chain of this model is already on disk; nothing should run")


def _agent_for(model: Any, task: "Task", config: AgentConfig | None) -> Any:
    """An agent running `model` on `task`, or None for an agent built for another task."""
    if hasattr(model, "complete"):
        return Agent(task, model, config)
    if hasattr(model, "run"):
        own = getattr(getattr(model, "task", None), "name", None)
        return model if own in (None, task.name) else None
    if callable(model):
        return model(task)
    raise TypeError(f"cannot evaluate {model!r}: expected a backend spec, a backend, an agent or an agent factory")


def count_parameters(model: Any) -> float | None:
    """Parameters of a local model (a backend's `.model`, an agent's `.backend`), LoRA weights left
    out so a student and its adapters share one size; None when there is no local model to count.

    4-bit weights are counted unpacked (bitsandbytes stores two per byte of storage).
    """
    for attribute in ("backend", "model"):
        inner = getattr(model, attribute, None)
        if inner is not None and inner is not model and not hasattr(model, "parameters"):
            return count_parameters(inner)
    if not hasattr(model, "named_parameters"):
        return None
    total = 0
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            continue
        count = parameter.numel()
        if parameter.__class__.__name__ == "Params4bit":
            count *= 2 * getattr(getattr(parameter, "quant_storage", None), "itemsize", 1)
        total += count
    return float(total)


def _read_models_file(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / "models.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); delete it to rebuild it") from exc


def _release_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# What a profile evaluates


_SEEDED = re.compile(r"^(?P<method>.+)-s(?P<seed>\d+)$")


def label_groups(labels: Iterable[str]) -> dict[str, list[str]]:
    """Model labels by the method they train: `sft`, `sft-s1` and `sft-s2` under `sft` (`runs.seed_label`),
    `multi_one_stage-s1` under `multi_one_stage`; in the order first seen."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        seeded = _SEEDED.match(label)
        groups.setdefault(seeded["method"] if seeded else label, []).append(label)
    return groups


def step_metric_table(
    profile: "Profile", models: Mapping[str, Any], problems: Mapping[str, Sequence["Problem"]],
    resamples: int = 10_000, seed: int = 0, folder: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """alpha-UMi's step metrics (`fcdpo.step_metrics`) of `models` on `problems`, and the same by method.

    `models` maps labels to what `evaluate` takes: a backend spec (run as the single agent with the
    profile's agent settings) or a factory `task -> agent` (a multi-LLM team, `glpft.multi_agent_models`).
    `problems` maps a dataset to problems of one task. Returns one row per (model, dataset) with the
    means of `step_metrics`, and one per (method, dataset) — seeds grouped by `label_groups` — with each
    metric's mean over seeds and a hierarchical bootstrap interval over seeds and problems
    (`fcdpo.stats.hierarchical_interval`; a problem counts the mean of its steps). Both are written to
    `folder` (default: the run's evaluation folder) as `step_metrics` and `step_methods`.
    """
    from fcdpo.backends import load_backend
    from fcdpo.stats import hierarchical_interval
    from fcdpo.step_metrics import step_metrics

    measures = {"plan_acc": "plan_correct", "act_em": "act_em", "hallucination": "hallucination",
                "arg_f1": "arg_f1", "answer_acc": "correct"}
    rows, per_problem = [], {}
    for label, model in models.items():
        backend = load_backend(model, root=profile.run_path) if isinstance(model, dict) else None
        for dataset, items in problems.items():
            task = profile.task(items[0].task)
            agent = model(task) if backend is None else Agent(task, backend, profile.agent, name=label)
            records: list[dict[str, Any]] = []
            rows.append({"model": label, "dataset": dataset, **step_metrics(agent, list(items), records=records)})
            for measure, key in measures.items():
                by_problem: dict[str, list[float]] = defaultdict(list)
                for record in records:
                    if key in record:
                        by_problem[record["problem_id"]].append(float(record[key]))
                per_problem[(label, dataset, measure)] = {p: float(np.mean(v)) for p, v in by_problem.items()}
        del backend
        _release_memory()
    table = pd.DataFrame(rows).drop(columns=["agent"], errors="ignore")
    summary = []
    for method, labels in label_groups(models).items():
        for dataset in problems:
            row: dict[str, Any] = {"method": method, "dataset": dataset, "seeds": len(labels)}
            for measure in measures:
                scored = [per_problem[(label, dataset, measure)] for label in labels]
                shared = sorted(set.intersection(*(set(s) for s in scored)))
                if not shared:
                    continue
                interval = hierarchical_interval(np.array([[s[p] for p in shared] for s in scored]), resamples, seed)
                row.update({measure: interval["mean"], f"{measure}_low": interval["low"],
                            f"{measure}_high": interval["high"]})
            summary.append(row)
    methods = pd.DataFrame(summary)
    out = Path(folder) if folder is not None else runs.evaluation_dir(profile.run_path)
    write_table(table, out, "step_metrics")
    write_table(methods, out, "step_methods")
    return table, methods


def scored_trajectories(profile: "Profile", labels: Iterable[str], datasets: Iterable[str]
                        ) -> dict[tuple[str, str], list[Trajectory]]:
    """The greedy chains notebook 04 wrote for `labels` on `datasets` (those on disk), read back."""
    from fcdpo.rollouts import read_trajectories

    folder = runs.evaluation_dir(profile.run_path) / "trajectories" / decoding_name(
        profile.evaluation.samples, profile.evaluation.temperature)
    found = {}
    for label in labels:
        for dataset in datasets:
            path = folder / f"{label}-{dataset}.jsonl"
            if path.exists():
                found[(label, dataset)] = read_trajectories(path)
    return found


def unseen_comparison(
    profile: "Profile", trajectories: Mapping[tuple[str, str], Sequence[Trajectory]] | None = None,
    methods: Mapping[str, Sequence[str]] | None = None, seed: int = 0,
) -> pd.DataFrame | None:
    """`comparison_table` on the sealed math problems whose computation the lab's teacher never saw
    (`unseen_by_lab_teacher` of `fcdpo.tasks.sealed_sets`): a right answer there cannot come from a
    teacher that recalled it. Datasets are named `<dataset> (unseen)`; written as `comparison_unseen`.

    The same chains as the full table (default: read from the run's evaluation folder), a subset of one
    scoring, not a new one. None when no sealed split has such problems or no chains are on disk.
    """
    from fcdpo.tasks import sealed_sets
    from fcdpo.training import seed_labels, trained_methods

    _, report = sealed_sets(profile, write=False)
    unseen = {f"{task}-{split}": set(info["unseen_by_lab_teacher"]) for task, splits in report.items()
              for split, info in splits.items() if info.get("unseen_by_lab_teacher")}
    if not unseen:
        return None
    if methods is None:
        methods = {method: list(seed_labels(method, profile.training)) for method in trained_methods(profile.training)}
    if trajectories is None:
        labels = ["teacher", "student", *(label for labels in methods.values() for label in labels)]
        trajectories = scored_trajectories(profile, labels, unseen)
    subset = {(label, f"{dataset} (unseen)"): [t for t in chains if t.problem_id in unseen[dataset]]
              for (label, dataset), chains in trajectories.items() if dataset in unseen}
    subset = {key: chains for key, chains in subset.items() if chains}
    if not subset:
        return None
    table = comparison_table(subset, methods, seed=seed)
    folder = runs.evaluation_dir(profile.run_path)
    write_table(table, folder, "comparison_unseen")
    accuracy = pd.DataFrame([{"model": label, "dataset": dataset, "problems": len(chains),
                              "accuracy": float(np.mean([t.correct for t in chains]))}
                             for (label, dataset), chains in subset.items()])
    write_table(accuracy, folder, "accuracy_unseen")  # every model and seed: the report's teacher and student rows
    return table


def model_labels() -> tuple[str, ...]:
    """The run's models, in the order tables and figures show them: teacher, student, every registered
    arm (`fcdpo.arms`), the multi-LLM agents (GLPFT, and alpha-UMi's ablations: `fcdpo.glpft.VARIANTS`)."""
    return ("teacher", "student", *arms.names(), "multi", "multi_one_stage", "multi_sft")


def _recipe(profile: "Profile") -> dict[str, Any]:
    """What a ledger line's recipe hash covers: the profile's settings and the shipped lab's manifest."""
    import dataclasses

    from fcdpo.settings import CONFIG_DIR

    recipe: dict[str, Any] = {"profile": dataclasses.asdict(profile)}
    shipped = (profile.lab or {}).get("shipped")
    manifest = CONFIG_DIR.parent / shipped / "manifest.json" if shipped else None
    if manifest is not None and manifest.exists():
        recipe["lab_files"] = json.loads(manifest.read_text()).get("files")
    return recipe


def run_models(profile: "Profile") -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The backend specs of the run's models that exist, and a note for each one that does not.

    teacher and student come from the profile's `teacher` / `student` specs (default: the tiny
    lab's `lab/teacher` and `lab/student`); `sft`, `dpo` and the other arms of `training.methods`
    (each with its seeds' labels) are the student with the adapter that `fcdpo.training` writes to
    `training/<label>/adapter` (or one saved in `training/<label>` itself), present once its
    `adapter_config.json` is there.
    """
    run = profile.run_path
    specs: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for role in ("teacher", "student"):
        spec = dict(getattr(profile, role) or {"kind": "hf", "model": runs.in_run(run, runs.lab_dir(run) / role)})
        if _local_model_missing(spec, run):
            notes.append(f"{role}: {spec['model']} is not in {run} yet (notebook 01 builds it); skipped")
            continue
        specs[role] = spec
    from fcdpo.training import seed_labels, trained_methods

    labels = [label for method in trained_methods(profile.training) for label in seed_labels(method, profile.training)]
    for label in labels:
        adapter = runs.trained_adapter(run, label)
        if "student" not in specs:
            notes.append(f"{label}: no student to put the adapter on; skipped")
        elif specs["student"].get("kind") != "hf":
            notes.append(f"{label}: the student is not a local model, so no adapter can be applied; skipped")
        elif adapter is None:
            notes.append(f"{label}: no adapter in {runs.training_dir(run, label) / 'adapter'} yet (notebook 03 "
                         "trains it); skipped")
        else:
            specs[label] = {**specs["student"], "adapter": runs.in_run(run, adapter)}
    return specs, notes


def _local_model_missing(spec: dict[str, Any], run: Path) -> bool:
    """Whether an hf spec names a run-relative folder that is absent (hub ids are taken on trust)."""
    model = spec.get("model")
    if spec.get("kind") != "hf" or not isinstance(model, str):
        return False
    looks_local = model.startswith((".", "/")) or model.split("/")[0] in ("lab", "training")
    return looks_local and not (run / model).exists() and not Path(model).exists()


def benchmark_problems(
    gsm8k_path: str | Path | None,
    folio_path: str | Path | None,
    limit: int | None = None,
    root: str | Path | None = None,
) -> dict[str, list["Problem"]]:
    """The real benchmarks whose files are given: `{"gsm8k": ..., "folio": ...}`.

    A None path skips that benchmark with a printed note; a relative path is read from `root`
    (default: the repository root). A path that is set but missing is an error (FileNotFoundError),
    so a typo is not mistaken for "skip". `limit` keeps the first rows of each.

    Every row of a file is kept: a row that is not a record or whose gold answer cannot be read is a
    placeholder that `evaluate` counts as not solved (see `fcdpo.tasks.sources.held_out`), and what
    was read is printed, with the rows that could not be.
    """
    from fcdpo.settings import CONFIG_DIR
    from fcdpo.tasks.sources import held_out, load_split

    base = Path(root) if root is not None else CONFIG_DIR.parent
    found: dict[str, list[Problem]] = {}
    for name, path, task, key in (
        ("gsm8k", gsm8k_path, "math", "evaluation.gsm8k_path"),
        ("folio", folio_path, "fol", "evaluation.folio_path"),
    ):
        if path is None:
            print(f"{name}: no file given ({key} is not set); skipped")
            continue
        file = Path(path) if Path(path).is_absolute() else base / path
        if not file.is_file():
            raise FileNotFoundError(f"{key} is {str(path)!r}, but there is no file at {file}")
        loaded = load_split(name, "test", file, limit=limit)
        found[name] = held_out(loaded, task, "benchmark")
        print(loaded.summary())
    return found


def held_out_problems(profile: "Profile") -> tuple[dict[str, list["Problem"]], dict[str, dict[str, list["Problem"]]]]:
    """The problems `evaluation.split` scores, by dataset name, and every task's drawn splits.

    "dev": `math-dev`, `fol-dev` (generated tasks only). "test": the sealed `math-test`, `math-length`,
    `fol-test`, `fol-length` (`fcdpo.tasks.sealed_sets`; what was drawn goes to
    `evaluation/sealed_splits.json`). "eval": `math`, `fol`, the first held-out split. The drawn
    splits include `train`, whose questions a held-out problem must never share.
    """
    from fcdpo.tasks import problem_sets

    split = profile.evaluation.split
    if split in ("dev", "test"):
        real = sorted(name for name, task in profile.tasks.items() if task.source != "generated")
        if real:
            raise ValueError(f"evaluation.split {split!r} needs generated tasks; {real} read a dataset, which has no "
                             f"{split} split here (choose on a part of its train split instead)")
    if split == "dev":  # choosing a recipe: the dev split only, under its own dataset names
        empty = sorted(name for name, task in profile.tasks.items() if not task.dev)
        if empty:
            raise ValueError(f"evaluation.split is 'dev', but tasks {empty} have no dev problems (tasks.<name>.dev: 0)")
        sets = problem_sets(profile, ("eval", "train", "dev"))
        return {f"{name}-dev": splits["dev"] for name, splits in sets.items()}, sets
    sets = problem_sets(profile)
    if split == "eval":
        return {name: splits["eval"] for name, splits in sets.items()}, sets
    from fcdpo.tasks import sealed_sets  # the sealed splits: scored once per recipe, each scoring in the ledger

    sealed, report = sealed_sets(profile)
    empty = sorted(name for name in profile.tasks if not sealed.get(name))
    if empty:
        raise ValueError(f"evaluation.split is 'test', but tasks {empty} have no sealed problems "
                         "(tasks.<name>.test and .length are 0)")
    folder = runs.evaluation_dir(profile.run_path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sealed_splits.json").write_text(json.dumps(report, indent=2))
    return {f"{name}-{split}": items for name, splits in sealed.items() for split, items in splits.items()}, sets


def evaluate_run(profile: "Profile", models: Mapping[str, Any] | None = None, progress: bool = True) -> Evaluation:
    """Evaluate a profile's run: its models (default: `run_models`, notes printed) on the split
    `evaluation.split` names (`held_out_problems`: dev, the sealed test and length splits, or eval with
    the benchmarks its `evaluation` section names), with its agent settings. Scoring the sealed splits
    appends a line to the ledger (`fcdpo.ledger`).

    The held-out splits are drawn with `fcdpo.tasks.problem_sets` (the same problems every stage
    sees); the training split's questions are passed as `training_questions`, so a leak is an error.
    """
    settings = profile.evaluation
    if models is None:
        models, notes = run_models(profile)
        for note in notes:
            print(note)
    problems, sets = held_out_problems(profile)
    if settings.split == "eval":
        problems.update(benchmark_problems(settings.gsm8k_path, settings.folio_path, settings.benchmark_limit))
    tasks = {name: profile.task(name) for name in {p.task for items in problems.values() for p in items}}
    result = evaluate(
        models, tasks, problems, profile.agent, profile.run_path,
        samples=settings.samples, temperature=settings.temperature, seed=settings.seed,
        batch_size=settings.batch_size, resamples=settings.resamples, parameters=settings.parameters,
        training_questions=[p.question for splits in sets.values() for p in splits.get("train", [])],
        progress=progress,
    )
    from fcdpo.training import seed_labels, trained_methods

    methods = {method: list(seed_labels(method, profile.training)) for method in trained_methods(profile.training)}
    result.methods = method_table(result.trajectories, methods, resamples=settings.resamples, seed=settings.seed)
    result.files += write_table(result.methods, result.folder, "methods")
    result.comparison = comparison_table(result.trajectories, methods, seed=settings.seed)
    result.files += write_table(result.comparison, result.folder, "comparison")
    multi = {method: labels for method, labels in label_groups(models).items() if method.startswith("multi")}
    if multi and "sft" in methods:  # alpha-UMi's question: do the roles beat one model trained on the same chains?
        result.multi = comparison_table(result.trajectories, {"sft": methods["sft"], **multi}, seed=settings.seed)
        result.files += write_table(result.multi, result.folder, "multi_llm")
    if settings.split == "test":
        result.unseen = unseen_comparison(profile, result.trajectories, methods, seed=settings.seed)
        from fcdpo import ledger

        line = ledger.record(profile.name, _recipe(profile), sorted({d.rsplit("-", 1)[1] for d in problems}),
                             sorted(models))
        print(f"sealed splits scored; ledger line written to {ledger.ledger_path()} (recipe {line['recipe']})")
    from fcdpo.costs import arm_costs

    result.costs = arm_costs(profile)
    result.files += write_table(result.costs, result.folder, "costs")
    return result
