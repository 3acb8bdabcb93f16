"""Intervals that count the training seeds, and the correction for comparing several arms at once.

Layer: settings and formats; imports nothing of fcdpo.

A trained arm's accuracy varies with its training seed as well as with the problems it is scored on.
Bootstrapping problems with seeds pooled hides the first: an arm whose seeds span 44-64% gets the
interval of one model scored on 600 problems. `hierarchical_gain` resamples both levels, the seeds of
each arm and then the problems (paired across the two arms, which are scored on the same problems),
as a two-stage bootstrap of a nested design (Davison & Hinkley 1997, section 3.8). `holm` adjusts the
p-values of several comparisons against one baseline (Holm 1979).

    gain = hierarchical_gain(correct["rpo"], correct["sft"])   # arrays: seeds × problems, 0/1
    adjusted = holm({"rpo": gain["p"], "dpo": other["p"]})
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def hierarchical_gain(
    arm: "np.ndarray", baseline: "np.ndarray", resamples: int = 10_000, seed: int = 0, level: float = 0.95,
) -> dict[str, Any]:
    """`arm`'s accuracy minus `baseline`'s, with a two-level bootstrap interval and a one-sided p-value.

    Both are 0/1 arrays of seeds × problems over the same problems in the same order (a model without
    seeds, such as the untrained student, is one row). Each resample draws each arm's seeds with
    replacement, then the problems with replacement (the same draw for both arms), and takes the
    difference of the mean accuracies. Returns `gain` (the observed difference), `low` and `high` (the
    percentile interval at `level`), `p` (the share of resamples at or below 0, with the +1 correction
    that keeps it above 0: evidence that the arm is not better), `seeds` and `problems`.
    """
    arm, baseline = np.atleast_2d(np.asarray(arm, float)), np.atleast_2d(np.asarray(baseline, float))
    if arm.shape[1] != baseline.shape[1] or arm.shape[1] == 0:
        raise ValueError(f"the two arms must be scored on the same problems: {arm.shape[1]} and {baseline.shape[1]}")
    rng = np.random.default_rng(seed)
    n = arm.shape[1]
    gains = np.empty(resamples)
    for r in range(resamples):
        problems = rng.integers(0, n, n)
        a = arm[rng.integers(0, arm.shape[0], arm.shape[0])][:, problems].mean()
        b = baseline[rng.integers(0, baseline.shape[0], baseline.shape[0])][:, problems].mean()
        gains[r] = a - b
    tail = (1 - level) / 2
    return {"gain": float(arm.mean() - baseline.mean()), "low": float(np.quantile(gains, tail)),
            "high": float(np.quantile(gains, 1 - tail)), "p": float((np.sum(gains <= 0) + 1) / (resamples + 1)),
            "seeds": (arm.shape[0], baseline.shape[0]), "problems": n}


def hierarchical_interval(matrix: "np.ndarray", resamples: int = 10_000, seed: int = 0,
                          level: float = 0.95) -> dict[str, Any]:
    """The mean of a seeds × problems array of scores (0/1, or a problem's mean over its steps), with the
    two-level bootstrap interval of `hierarchical_gain`: seeds with replacement, then problems."""
    matrix = np.atleast_2d(np.asarray(matrix, float))
    result = hierarchical_gain(matrix, np.zeros((1, matrix.shape[1])), resamples, seed, level)
    return {"mean": result["gain"], "low": result["low"], "high": result["high"], "seeds": matrix.shape[0],
            "problems": matrix.shape[1]}


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of one-sided p-values of several comparisons: the adjusted values, by
    name. A comparison is significant at 5% after correction when its adjusted p is below 0.05."""
    order = sorted(p_values, key=p_values.get)
    m, adjusted, running = len(order), {}, 0.0
    for rank, name in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[name]))
        adjusted[name] = running
    return {name: adjusted[name] for name in p_values}


def corrected_level(comparisons: int, level: float = 0.95) -> float:
    """The interval level that keeps `comparisons` intervals together at `level` (Bonferroni): Holm's
    first step, so an interval at this level above 0 means the adjusted p is below 1 − level too."""
    return 1 - (1 - level) / max(1, comparisons)
