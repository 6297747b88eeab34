"""A stopping rule for sequential evaluation whose reported interval stays valid however many times it looked.

Sequential evaluation (jcexp/sequential.py) scores items a chunk at a time and stops once Sr's interval is narrow
enough. Reading an ordinary 95% interval after every chunk and stopping at the first narrow one is not a 95%
procedure: the look is chosen by the data, and an early chunk in which the dense and the compressed model never
disagree gives a percentile bootstrap of exactly [1, 1], which meets any target (simulated, 3 tasks x 1000 items,
1% of right answers flipped, chunk 64, target 0.03: 95% of runs stopped at the first look, and the interval covered
the truth in 66% of them).

The rule here is group-sequential, with a fixed maximum number of looks ``K`` (the number of rounds, known before
the first look) at information fractions ``t_1 < ... < t_K = 1`` also known in advance (the share of the suite's
items each look has scored: jcexp/sequential.py's layout hands out items in fixed chunks). Each look's interval is
an O'Brien-Fleming-type repeated confidence interval: ``point ± c_k se_k``, with the boundaries ``c_k`` from the
Lan-DeMets O'Brien-Fleming alpha-spending function ``alpha(t) = 2 - 2 Phi(z_{alpha/2} / sqrt(t))``: the
probability that the look-k statistic is the first to leave its boundary is ``alpha(t_k) - alpha(t_{k-1})``
under the joint normal of the looks' statistics (independent increments: ``Z_k sqrt(t_k)`` is a Brownian motion
at ``t_k``), computed by numerical integration on a grid (``boundaries``; checked against Monte Carlo in
tests/test_sequential_coverage.py). All K intervals then cover together with probability ``level`` (to the
normal approximation), so the interval reported at whichever look the run ends is a valid ``level`` interval.
Early looks spend almost nothing (their intervals are wide), and the last one is close to a fixed-n interval
(c_K = 2.04 for 4 equal looks, 2.15 for 16, against 1.96), where Bonferroni over K looks (this module's rule
before issue 26, ``look_level``; still the budget race's) pays z = 2.50 at K = 4 and 2.73 at K = 16 on every look.
The run stops when that interval's half-width is at most the target *and* the floors hold: every task has at least
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

Each look's interval is a normal approximation, which the pseudo-items and the floors guard. tests/test_sequential_coverage.py measures the coverage by simulation, including a case where the old rule
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
    "of weight 1/2 at each vertex of {0,1}^m"
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
    return _covariance_of(values.shape[1], values.sum(axis=1), values @ values.T, weight)


def _covariance_of(n: int, sums: np.ndarray, products: np.ndarray, weight: float) -> np.ndarray:
    """``_covariance`` from the real items' count, sums and cross-products (computed once per task, whatever
    the weights asked for): (sum of x x' over all points) / total - mean mean'."""
    vertices = _vertices(len(sums))
    total = n + weight * len(vertices)
    mean = (sums + weight * vertices.sum(axis=0)) / total
    return (products + weight * (vertices.T @ vertices)) / total - np.outer(mean, mean)


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
        point = list(base)  # only the shifted model's means are copied (this runs 4 m T + 1 times)
        if task is not None:
            point[model] = {**base[model], task: base[model][task] + shift}
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

    moments = {t: (a.shape[1], a.sum(axis=1), a @ a.T) for t, a in arrays.items()}

    def variance(weight: float) -> float:
        return sum(
            float(g @ _covariance_of(*moments[t], weight) @ g) / moments[t][0] for t, g in grads.items()
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


# --------------------------------------------------------------------------------------------- boundaries
BOUNDARY = (
    "O'Brien-Fleming-type repeated confidence intervals: Lan-DeMets O'Brien-Fleming alpha spending over the "
    "planned information fractions, boundaries by numerical integration of the looks' joint normal"
)
GRID_STEP = 0.002  # the Brownian motion's grid (in units of sd at t = 1); Monte Carlo agrees to 1e-3 of alpha
GRID_HALF = 9.0
MAX_Z = 7.5  # a look that may spend less than ~1e-13 gets this boundary (its level stays below 1 in floats)


def obrien_fleming_spending(t: float, alpha: float) -> float:
    """Lan-DeMets' O'Brien-Fleming-type spending function: the alpha spent by information fraction ``t``."""
    if t <= 0:
        return 0.0
    z = NormalDist().inv_cdf(1 - alpha / 2)
    return 2 - 2 * NormalDist().cdf(z / math.sqrt(min(t, 1.0)))


def fractions_for(looks: int) -> tuple[float, ...]:
    """Equally spaced information fractions k / looks."""
    return tuple((k + 1) / looks for k in range(looks))


@functools.lru_cache(maxsize=64)
def boundaries(fractions: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    """The two-sided boundaries ``c_k`` (in z units) at the information ``fractions`` (increasing, the last 1):
    P(|Z_j| <= c_j for j < k, |Z_k| > c_k) = spending(t_k) - spending(t_{k-1}) under Brownian motion,
    ``Z_k = B(t_k) / sqrt(t_k)``. The density of B on the region not yet left is carried on a grid from look to
    look (convolved with the increment's normal kernel, and cut at the boundary)."""
    if not fractions or any(b <= a for a, b in itertools.pairwise((0.0, *fractions))):
        raise ValueError(f"information fractions must increase from above 0: {fractions}")
    if abs(fractions[-1] - 1.0) > 1e-9:
        raise ValueError(f"the last information fraction must be 1, got {fractions[-1]}")
    x = np.arange(-GRID_HALF, GRID_HALF + GRID_STEP / 2, GRID_STEP)
    radius = np.abs(x)
    order = np.argsort(-radius, kind="stable")
    mass = np.exp(-(x**2) / (2 * fractions[0]))
    mass /= mass.sum()
    out, spent, before = [], 0.0, 0.0
    for k, t in enumerate(fractions):
        if k:
            dt = t - before
            half = math.ceil(8 * math.sqrt(dt) / GRID_STEP)
            kernel = np.exp(-((np.arange(-half, half + 1) * GRID_STEP) ** 2) / (2 * dt))
            mass = np.convolve(mass, kernel / kernel.sum(), mode="same")
        wanted = obrien_fleming_spending(t, alpha) - spent
        outside = np.cumsum(mass[order])  # mass beyond each radius, from the outside in
        i = int(np.searchsorted(outside, wanted))
        edge = float(radius[order][min(i, len(x) - 1)]) if wanted > 1e-13 else GRID_HALF
        spent += float(mass[radius > edge].sum())
        mass = np.where(radius <= edge, mass, 0.0)
        out.append(min(MAX_Z, edge / math.sqrt(t)))
        before = t
    return tuple(out)


def look_levels(level: float, fractions: Sequence[float]) -> tuple[float, ...]:
    """Each look's two-sided level under O'Brien-Fleming spending: 2 Phi(c_k) - 1."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return tuple(2 * NormalDist().cdf(c) - 1 for c in boundaries(tuple(fractions), round(1 - level, 12)))


# ------------------------------------------------------------------------------------------------- rule
@dataclass(frozen=True)
class StopRule:
    """Stop at a look once the statistic's half-width is at most ``target``, over at most ``looks`` looks.

    Look k's interval is an O'Brien-Fleming-type repeated confidence interval at ``levels[k - 1]`` (Lan-DeMets
    spending over ``fractions``, the looks' planned information fractions; equally spaced when not given), so
    the interval reported at the look where the run ends — stopped here, or because the items ran out — is a
    valid ``level`` interval whatever the number of looks taken, up to ``looks``; taking more than ``looks``
    looks would void it, and ``decide`` refuses a look past it. Floors: the run does not stop before every task has
    ``min_items`` items (or all its items, when ``sizes`` says it has fewer) and the models disagree on at least
    ``min_discordant`` items over all tasks. Two models that agree everywhere therefore run until the items run
    out, with a narrow interval."""

    target: float
    looks: int
    level: float = 0.95
    min_items: int = 64
    min_discordant: int = 10
    fractions: tuple[float, ...] | None = None  # each look's share of the items; None: k / looks

    def __post_init__(self) -> None:
        if not self.target > 0:
            raise ValueError(f"target must be positive, got {self.target}")
        if self.min_items < 0 or self.min_discordant < 0:
            raise ValueError("the floors must be non-negative")
        look_level(self.level, self.looks)  # checks both
        if self.fractions is not None and len(self.fractions) != self.looks:
            raise ValueError(f"{len(self.fractions)} information fractions for {self.looks} looks")
        self.levels  # noqa: B018 - checks the fractions now, not at the first look

    @property
    def levels(self) -> tuple[float, ...]:
        """Each look's level (O'Brien-Fleming-type repeated confidence intervals)."""
        return look_levels(self.level, self.fractions or fractions_for(self.looks))

    def level_at(self, look: int) -> float:
        self._check(look)
        return self.levels[look - 1]

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
        ``level_at(look)``, with "stop" (bool) and "why": "ci_target" when it stops, else what blocked it:
        "undefined", "min_items", "min_discordant" or "wider_than_target". ``sizes``: each task's number of
        items in all, to lower its item floor to that."""
        return self.decide_aligned(align(models, tasks), statistic, look, sizes=sizes)

    def decide_aligned(
        self,
        values: Mapping[str, np.ndarray],
        statistic: Statistic,
        look: int,
        *,
        sizes: Mapping[str, int] | None = None,
    ) -> dict[str, Any]:
        """``decide`` on already aligned items (``align``, ``delta_interval_aligned``)."""
        # The pseudo-items keep Agresti-Min's weight 1/2 here: scaled by (z/1.96)^2 as the claims' Bonferroni
        # intervals are, O'Brien-Fleming's early z of 4-7 would make the early looks' intervals wider still, and
        # the coverage with 1/2 is 0.98-1.00 (tests/test_sequential_coverage.py).
        return self._judge(delta_interval_aligned(values, statistic, self.level_at(look)), look, sizes)

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
            "boundary": BOUNDARY,
            "z": NormalDist().inv_cdf(0.5 + interval["level"] / 2),
        }
