"""A stopping rule for sequential evaluation whose reported interval stays valid however many times it looked.

Sequential evaluation (jcexp/sequential.py) scores items a chunk at a time and stops once Sr's interval is narrow
enough. Reading an ordinary 95% interval after every chunk and stopping at the first narrow one is not a 95%
procedure: the look is chosen by the data, and an early chunk in which the dense and the compressed model never
disagree gives a percentile bootstrap of exactly [1, 1], which meets any target (simulated, 3 tasks x 1000 items,
1% of right answers flipped, chunk 64, target 0.03: 95% of runs stopped at the first look, and the interval covered
the truth in 66% of them).

The rule here is group-sequential, with a fixed maximum number of looks ``K`` (the number of rounds, known before
the first look) and Bonferroni alpha spending: every look's interval is computed at level ``1 - alpha / K``
(``alpha = 1 - level``, ``look_level``). By the union bound the K intervals cover the truth *all together* with
probability at least ``1 - alpha``, so the interval reported at whichever look the run ends — stopped by this rule,
by any other, or because the items ran out — is a valid ``level`` interval, for any number of looks up to K. The
run stops when that interval's half-width is at most the target *and* the floors hold: every task has at least
``min_items`` items, and at least ``min_discordant`` items (over all tasks) on which the models' values differ. A
normal-approximation interval from a handful of discordant items is not to be trusted even when it is narrow.

The interval (``delta_interval``) is a paired delta-method (Wald) interval for any smooth statistic of several
models' per-task means (Sr of one model against the dense one, or the difference of two models' Sr against the
same dense model), on the items that every model has: per task, the [models x items] matrix of those items, its
mean vector and covariance; ``Var(statistic) = sum_t g_t' Cov_t g_t / n_t``, ``g_t`` the statistic's gradient in
the models' means on task t (central finite differences, so any statistic works), and ``point ± z se``.

Regularization: each task's covariance (only the covariance) is computed as if pseudo-items of weight 1/2 sat
at every vertex of {0, 1}^m (m models) beside the real items, each with weight 1: for two models that is +0.5 in
each cell of the 2x2 agreement table, the paired-proportions adjustment of Agresti & Min (2005), the matched
counterpart of Agresti-Caffo. The weighted covariance is divided by the total weight (n + 2^(m-1)) and then, as
above, by the real n. So when every model agrees on every item the interval is narrow but never of width zero,
and with few items it is wider than the unadjusted one. The point estimate is the statistic of the real items'
means, never of the pseudo-items.

The union bound is exact; each look's interval is a normal approximation, which the pseudo-items and the floors
guard. tests/test_sequential_coverage.py measures the coverage by simulation, including a case where the old rule
fails. Pure: numpy and the standard library only, no torch, no I/O.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from jcexp import metrics

METHOD = (
    "paired delta-method (Wald) interval on the items every model has; per-task covariance with pseudo-items "
    "of weight 1/2 at each vertex of {0,1}^m; Bonferroni alpha spending over a fixed number of looks"
)
PSEUDO_WEIGHT = 0.5  # per vertex of {0,1}^m: +0.5 per cell of the 2x2 table for two models (Agresti-Min)
STEP = 1e-6  # central finite differences of the statistic in each model's task mean

TaskItems = Mapping[str, Mapping[Any, float]]  # task -> item id -> value in [0, 1]
Means = list[dict[str, float]]  # one {task: mean} per model
Statistic = Callable[[Means], float]


def look_level(level: float, looks: int) -> float:
    """Each look's level under Bonferroni spending over ``looks`` looks: 1 - (1 - level) / looks."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if looks < 1:
        raise ValueError(f"looks must be at least 1, got {looks}")
    return 1 - (1 - level) / looks


# ------------------------------------------------------------------------------------------- statistics
def retention(kind: str = "sr2") -> Statistic:
    """Sr (eq. 12, ``sr2``) or Sr1 (eq. 11) of model 1 against model 0 (the dense model)."""
    return lambda m: metrics.semantic_retention(m[1], m[0], kind)


def difference(kind: str = "sr2") -> Statistic:
    """Sr(model 1) - Sr(model 2), both against model 0 (the dense model), as jcexp.paired.difference_interval."""
    return lambda m: (
        metrics.semantic_retention(m[1], m[0], kind) - metrics.semantic_retention(m[2], m[0], kind)
    )


# --------------------------------------------------------------------------------------------- interval
def align(models: Sequence[TaskItems], tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """Per task, the [models, items] array over the item ids every model has (in model 0's order); a task
    some model lacks, or on which they share no item, gets an array with no column."""
    if not models:
        raise ValueError("no models")
    out = {}
    for task in tasks:
        per_model = [m.get(task) or {} for m in models]
        ids = [i for i in per_model[0] if all(i in other for other in per_model[1:])]
        out[task] = np.array([[float(m[i]) for i in ids] for m in per_model], dtype=float).reshape(
            len(models), len(ids)
        )
    return out


@functools.lru_cache(maxsize=16)
def _vertices(m: int) -> np.ndarray:
    return np.array(list(itertools.product((0.0, 1.0), repeat=m)), dtype=float)  # [2^m, m]


def _covariance(values: np.ndarray, weight: float = PSEUDO_WEIGHT) -> np.ndarray:
    """The [m, m] covariance of the task's items (weight 1) and the pseudo-items (``weight`` at each vertex of
    {0,1}^m, 1/2 by default), divided by their total weight."""
    vertices = _vertices(values.shape[0])
    total = values.shape[1] + weight * len(vertices)
    mean = (values.sum(axis=1) + weight * vertices.sum(axis=0)) / total
    real, pseudo = values - mean[:, None], vertices - mean
    return (real @ real.T + weight * (pseudo.T @ pseudo)) / total


def delta_interval_aligned(
    values: Mapping[str, np.ndarray],
    statistic: Statistic,
    level: float,
    *,
    pseudo_weight: float = PSEUDO_WEIGHT,
    also: Sequence[float] = (),
) -> dict[str, Any]:
    """``delta_interval`` on already aligned items: per task, a [models, items] array whose columns are the items
    every model has (``align``); the tasks are its keys, in order. The sequential loop and the simulations call
    this directly; ``delta_interval`` builds the arrays and calls it. ``pseudo_weight``: each vertex's weight
    (1/2, Agresti-Min's, suits a 95% interval; ``pseudo_weight_for`` scales it for other levels). ``also``:
    further levels, each with its own ``pseudo_weight_for`` weight, returned in "ci_at" {level: [lo, hi]}
    from the same gradient (jcexp/paired.py's family-wise intervals)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tasks = list(values)
    arrays = {t: np.asarray(values[t], dtype=float) for t in tasks}
    out: dict[str, Any] = {
        "point": None,
        "ci": None,
        "se": None,
        "half_width": None,
        "level": level,
        "n": {t: int(a.shape[1]) for t, a in arrays.items()},
        "discordant": sum(int((a != a[:1]).any(axis=0).sum()) for a in arrays.values() if a.size),
        "method": METHOD,
        "undefined": None,
        "ci_at": {},
    }
    if not tasks:
        return {**out, "undefined": "no tasks"}
    if empty := [t for t in tasks if arrays[t].shape[1] == 0]:
        return {**out, "undefined": f"no item shared by every model on {', '.join(empty)}"}
    m = arrays[tasks[0]].shape[0]
    if any(a.ndim != 2 or a.shape[0] != m for a in arrays.values()):
        raise ValueError("every task's array must be [models, items] with the same number of models")
    means = {t: [float(x) for x in a.mean(axis=1)] for t, a in arrays.items()}
    base = [{t: means[t][j] for t in tasks} for j in range(m)]

    def at(task: str | None = None, model: int = 0, shift: float = 0.0) -> float:
        point = [dict(d) for d in base]
        if task is not None:
            point[model][task] += shift
        return float(statistic(point))

    try:
        point = at()
        grads = {
            t: np.array([(at(t, j, STEP) - at(t, j, -STEP)) / (2 * STEP) for j in range(m)]) for t in tasks
        }
    except (ValueError, ZeroDivisionError) as e:
        return {**out, "undefined": f"statistic undefined: {e}"}
    if not math.isfinite(point):
        return {**out, "undefined": f"statistic is {point}"}

    def variance(weight: float) -> float:
        return sum(
            float(g @ _covariance(arrays[t], weight) @ g) / arrays[t].shape[1] for t, g in grads.items()
        )

    var = variance(pseudo_weight)
    if not math.isfinite(var) or var < 0:
        return {**out, "point": point, "undefined": f"variance is {var}"}
    se = math.sqrt(var)
    half = NormalDist().inv_cdf(0.5 + level / 2) * se
    for extra in also:
        h = NormalDist().inv_cdf(0.5 + extra / 2) * math.sqrt(max(0.0, variance(pseudo_weight_for(extra))))
        out["ci_at"][extra] = [point - h, point + h]
    return {**out, "point": point, "ci": [point - half, point + half], "se": se, "half_width": half}


def delta_interval(
    models: Sequence[TaskItems], tasks: Sequence[str], statistic: Statistic, level: float
) -> dict[str, Any]:
    """The paired delta-method interval of ``statistic`` at ``level`` (two-sided), on the items every model has.

    ``models[j][task][item_id]`` is model j's value on an item (0/1 accuracy, or any number in [0, 1]);
    ``statistic`` maps one {task: mean} per model to a float (``retention()``, ``difference()``). The point
    estimate and the interval come from the same items: those every model has, per task. Returns {"point",
    "ci": [lo, hi], "se", "half_width", "level", "n": {task: items}, "discordant": items (over tasks) on which the
    models' values are not all equal, "method", "undefined"}. Where the statistic is undefined (it raises
    ValueError or ZeroDivisionError, e.g. a dense mean of 0) or a task has no item every model has, "ci" is None
    and "undefined" says why: it does not raise for those."""
    return delta_interval_aligned(align(models, tasks), statistic, level)


def pseudo_weight_for(level: float) -> float:
    """The pseudo-items' weight for an interval at ``level``: 1/2 at 95%, scaled by (z / 1.96)^2, as the
    Agresti-Coull adjustment adds z^2 / 2 pseudo-observations. At Bonferroni levels (z near 3) a fixed 1/2
    is too little: with a few one-sided discordant items (nested errors) the estimated variance is small exactly
    when the count is low, and 12 claims at 99.6% each missed together 6% of the time (tests/test_claims.py)."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return PSEUDO_WEIGHT * max(1.0, (z / NormalDist().inv_cdf(0.975)) ** 2)


# ------------------------------------------------------------------------------------------------- rule
@dataclass(frozen=True)
class StopRule:
    """Stop at a look once the statistic's half-width is at most ``target``, over at most ``looks`` looks.

    Every look's interval is at level ``look_level(level, looks)`` (Bonferroni spending), so the interval
    reported at the look where the run ends — stopped here, or because the items ran out — is a valid ``level``
    interval whatever the number of looks taken, up to ``looks``; taking more than ``looks`` looks would void
    it, and ``decide`` refuses a look past it. Floors: the run does not stop before every task has
    ``min_items`` items (or all its items, when ``sizes`` says it has fewer) and the models disagree on at least
    ``min_discordant`` items over all tasks. Two models that agree everywhere therefore run until the items run
    out, with a narrow interval."""

    target: float
    looks: int
    level: float = 0.95
    min_items: int = 64
    min_discordant: int = 10

    def __post_init__(self) -> None:
        if not self.target > 0:
            raise ValueError(f"target must be positive, got {self.target}")
        if self.min_items < 0 or self.min_discordant < 0:
            raise ValueError("the floors must be non-negative")
        look_level(self.level, self.looks)  # checks both

    @property
    def look_level(self) -> float:
        return look_level(self.level, self.looks)

    def decide(
        self,
        models: Sequence[TaskItems],
        tasks: Sequence[str],
        statistic: Statistic,
        look: int,
        *,
        sizes: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """The interval at look ``look`` (1-based, at most ``looks``), as ``delta_interval`` returns it at
        ``look_level``, with "stop" (bool) and "why": "ci_target" when it stops, else what blocked it:
        "undefined", "min_items", "min_discordant" or "wider_than_target". ``sizes``: each task's number of
        items in all, to lower its item floor to that."""
        self._check(look)
        return self._judge(delta_interval(models, tasks, statistic, self.look_level), look, sizes)

    def decide_aligned(
        self,
        values: Mapping[str, np.ndarray],
        statistic: Statistic,
        look: int,
        *,
        sizes: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """``decide`` on already aligned items (``align``, ``delta_interval_aligned``)."""
        self._check(look)
        return self._judge(delta_interval_aligned(values, statistic, self.look_level), look, sizes)

    def _check(self, look: int) -> None:
        if not 1 <= look <= self.looks:
            raise ValueError(
                f"look {look} is outside 1..{self.looks}: the spending covers {self.looks} looks"
            )

    def _judge(self, interval: dict[str, Any], look: int, sizes: Mapping[str, int] | None) -> dict[str, Any]:
        def floor(task: str) -> int:
            return self.min_items if sizes is None or task not in sizes else min(self.min_items, sizes[task])

        if interval["undefined"] is not None:
            why = "undefined"
        elif any(n < floor(t) for t, n in interval["n"].items()):
            why = "min_items"
        elif interval["discordant"] < self.min_discordant:
            why = "min_discordant"
        elif interval["half_width"] > self.target:
            why = "wider_than_target"
        else:
            why = "ci_target"
        return {
            **interval,
            "stop": why == "ci_target",
            "why": why,
            "look": look,
            "looks": self.looks,
            "target": self.target,
            "family_level": self.level,
        }
