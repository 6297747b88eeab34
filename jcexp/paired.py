"""Paired bootstrap intervals for the paper's retentions (eqs. 10-12) and for differences between two models.

The dense and the compressed model answer the same items, and their answers are strongly correlated, so the
interval of a retention comes from resampling *items*, with the same draw applied to every model: each task's
items are resampled with replacement (tasks are resampled independently, each keeping its own size), the
statistic is recomputed from the resampled task means, and the interval is the 2.5th and 97.5th percentile of
those values (the percentile bootstrap). Seeded, and the method and number of resamples are recorded.

Inputs are per-item values keyed by item id, as the sidecars hold them (jcexp/items.py): a number per item for
a score (acc, exact_match), or a (log-likelihood, weight) pair per document for perplexity. Pure: numpy only,
no torch, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jcexp import anytime, metrics

METHOD = "paired percentile bootstrap over items, each task resampled with replacement"
RESAMPLES = 2000
LEVEL = 0.95

ItemValues = Mapping[Any, float]  # item id -> score
TaskItems = Mapping[str, ItemValues]  # task -> its items


def _aligned(models: Sequence[TaskItems], tasks: Sequence[str]) -> dict[str, np.ndarray]:
    """Per task, a [models, items] array over the item ids every model has."""
    out = {}
    for task in tasks:
        ids = set(models[0][task])
        for m in models[1:]:
            ids &= set(m[task])
        if not ids:
            raise ValueError(f"task {task!r}: the models share no items")
        order = sorted(ids, key=str)
        out[task] = np.array([[float(m[task][i]) for i in order] for m in models])
    return out


def resampled_means(
    models: Sequence[TaskItems], tasks: Sequence[str], n: int, seed: int
) -> dict[str, np.ndarray]:
    """Per task, the [resamples, models] task means under one paired draw of items (the same for all models)."""
    rng = np.random.default_rng(seed)
    out = {}
    for task, values in _aligned(models, tasks).items():
        k = values.shape[1]
        idx = rng.integers(0, k, size=(n, k))
        # Each resample as counts per item: [resamples, items] @ [items, models] needs no [models, resamples,
        # items] copy (a family of 40 runs at 10,000 resamples would hold hundreds of MB).
        counts = np.bincount((idx + k * np.arange(n)[:, None]).ravel(), minlength=n * k).reshape(n, k)
        out[task] = counts @ values.T / k
    return out


def _interval(samples: Sequence[float | None], level: float) -> list[float] | None:
    """None when the statistic is undefined on more than 1% of resamples (e.g. a dense score of 0 on a
    resample of a handful of items): no honest interval then."""
    finite = np.asarray([s for s in samples if s is not None and math.isfinite(s)])
    if len(finite) < len(samples) * 0.99:
        return None
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return [float(lo), float(hi)]


def _safe(f: Callable[..., float], *args: Any, **kwargs: Any) -> float | None:
    """f(*args), or None where the statistic is undefined on this resample (a dense score of 0)."""
    try:
        return f(*args, **kwargs)
    except (ValueError, ZeroDivisionError):
        return None


def bootstrap(
    models: Sequence[TaskItems],
    tasks: Sequence[str],
    statistic: Callable[[list[dict[str, float]]], float],
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> list[float] | None:
    """The paired percentile interval of ``statistic``, a function of each model's task means."""
    means = resampled_means(models, tasks, resamples, seed)
    k = len(models)
    values = []
    for b in range(resamples):
        per_model = [{t: float(means[t][b, j]) for t in tasks} for j in range(k)]
        values.append(_safe(statistic, per_model))
    return _interval(values, level)


def retention_intervals(
    dense: TaskItems,
    compressed: TaskItems,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """95% intervals of each task's R_t, of Sr (eq. 12) and of Sr1 (eq. 11), from one paired draw.

    Each is the hull of the percentile interval and the regularized paired delta-method interval
    (jcexp/anytime.py): a compressed model that answers every item as the dense one would otherwise get
    exactly [1, 1], a claim of no loss at all that a few hundred items cannot support."""
    tasks = sorted(dense)
    means = resampled_means([dense, compressed], tasks, resamples, seed)
    r_t: dict[str, list[float | None]] = {t: [] for t in tasks}
    sr, sr1 = [], []
    for b in range(resamples):
        base = {t: float(means[t][b, 0]) for t in tasks}
        comp = {t: float(means[t][b, 1]) for t in tasks}
        for t in tasks:
            r_t[t].append(_safe(metrics.retention, comp[t], base[t]))
        sr.append(_safe(metrics.semantic_retention, comp, base, kind="sr2"))
        sr1.append(_safe(metrics.semantic_retention, comp, base, kind="sr1"))
    aligned = anytime.align([dense, compressed], tasks)

    def wald(on: Sequence[str], statistic: anytime.Statistic) -> list[float] | None:
        return anytime.delta_interval_aligned({t: aligned[t] for t in on}, statistic, level)["ci"]

    def task_ratio(t: str) -> anytime.Statistic:
        return lambda m: metrics.retention(m[1][t], m[0][t])

    return {
        "tasks": {t: hull(_interval(v, level), wald([t], task_ratio(t))) for t, v in r_t.items()},
        "sr": hull(_interval(sr, level), wald(tasks, anytime.retention("sr2"))),
        "sr1": hull(_interval(sr1, level), wald(tasks, anytime.retention("sr1"))),
        **describe(resamples, seed, level),
        "method": RETENTION_METHOD,
    }


def hull(ci: Sequence[float] | None, other: Sequence[float] | None) -> list[float] | None:
    """The smallest interval holding both; None when the first is None (the percentile interval decides
    whether the statistic is defined often enough to have an interval at all)."""
    if ci is None:
        return None
    if other is None:
        return [float(ci[0]), float(ci[1])]
    return [float(min(ci[0], other[0])), float(max(ci[1], other[1]))]


def discordant(values: Mapping[str, np.ndarray], pairs: Sequence[tuple[int, int]]) -> int:
    """Items (over tasks) on which at least one of ``pairs`` (rows of the [models, items] arrays) disagree: the
    count that the discordance floor of jcexp/verdicts.py reads. Only the compared runs count; an item on
    which both differ from the dense model in the same way says nothing about their difference."""
    total = 0
    for a in values.values():
        if a.size:
            total += int(np.logical_or.reduce([a[i] != a[j] for i, j in pairs]).sum())
    return total


def difference_interval(
    dense: TaskItems,
    a: TaskItems,
    b: TaskItems,
    *,
    kind: str = "sr2",
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, Any]:
    """Sr(a) - Sr(b), both against the same dense model, with its paired interval. The point estimate and the
    interval come from the same items (those all three answered). Where the difference is undefined (a dense
    task mean of 0 on the shared items, or on too many resamples) ``ci`` is None and ``undefined`` says why:
    never an exception, so a sweep's report is still written."""
    tasks = sorted(dense)

    def diff(m: list[dict[str, float]]) -> float:
        return metrics.semantic_retention(m[1], m[0], kind) - metrics.semantic_retention(m[2], m[0], kind)

    out: dict[str, Any] = {"diff": None, "ci": None, "undefined": None, **describe(resamples, seed, level)}
    try:
        aligned = _aligned([dense, a, b], tasks)
    except ValueError as exc:
        return {**out, "undefined": str(exc)}
    point = _safe(diff, [{t: float(v[j].mean()) for t, v in aligned.items()} for j in range(3)])
    if point is None:
        return {**out, "undefined": "Sr is undefined on the shared items (a dense task mean of 0)"}
    ci = bootstrap([dense, a, b], tasks, diff, resamples=resamples, seed=seed, level=level)
    if ci is None:
        return {
            **out,
            "diff": point,
            "undefined": "Sr is undefined on more than 1% of resamples (a dense task mean near 0)",
        }
    # Two runs that agree on every shared item get a percentile interval of exactly [0, 0], which would call
    # them equivalent within any margin on 20 items. The regularized delta-method interval (jcexp/anytime.py)
    # never collapses: the interval is the hull of the two, and says how many items disagreed.
    wald = anytime.delta_interval([dense, a, b], tasks, anytime.difference(kind), level)
    if wald["ci"] is not None:
        ci = [min(ci[0], wald["ci"][0]), max(ci[1], wald["ci"][1])]
    return {
        **out,
        "diff": point,
        "ci": ci,
        "discordant": discordant(aligned, [(1, 2)]),  # a vs b: the dense model's own errors do not count
        "method": DIFFERENCE_METHOD,
    }


def family_intervals(
    models: Mapping[str, TaskItems],
    statistics: Mapping[str, Callable[[dict[str, dict[str, float]]], float]],
    *,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = LEVEL,
    reads: Mapping[str, Sequence[str]] | None = None,
    compared: Mapping[str, Sequence[tuple[str, str]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each statistic's point, its own 95% interval and a family-wise interval, on the items every run shares.

    ``models`` maps a name to its per-item values (all scored on the same items, e.g. runs against one dense
    baseline); a statistic maps {name: {task: mean}} to a number (a difference of Sr, a difference in
    differences, a difference of SrCr). ``reads[stat]``: the runs the statistic reads (default: every run whose
    shift moves it); ``compared[stat]``: the pairs of runs it compares, whose disagreements are its
    ``discordant`` count (default: items on which the runs it reads are not all equal).

    Own interval (``ci``): the hull of the paired percentile bootstrap and the regularized paired delta-method
    interval at ``level`` (jcexp/anytime.py: pseudo-items, so two runs that agree on every item never get a
    zero-width interval). ``resamples=0`` leaves the bootstrap out (the simulations of tests/test_claims.py).

    Family-wise interval (``ci_adjusted``): the hull of the own interval and the regularized delta-method
    interval at the Bonferroni level ``1 - (1 - level) / m`` for the ``m`` statistics of the family, so that
    all of them cover together with probability at least ``level`` (union bound), its pseudo-items weighted
    for that level (``anytime.pseudo_weight_for``: with Agresti-Min's fixed 1/2, 12 nested differences on
    2 x 400 items erred together in 6.0% of 1000 families). Why not the simultaneous
    percentile bootstrap (max statistic over the family), which this function used before: it has no
    regularization, collapses at zero disagreement, and its family-wise error on 29 Sr differences on
    2 x 100 items with 4% flips was 0.086 (issue 26), while Bonferroni with the regularized interval stays
    under 0.05 in every setting tests/test_claims.py simulates (the issue's: 0.000 of 500 families, 0.54
    unadjusted; nested flips; zero-disagreement pairs). A statistic undefined on the shared items, or on more than
    1% of resamples, gets no interval and is left out of the family."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    names = list(models)
    tasks = sorted(next(iter(models.values())))
    aligned = _aligned([models[n] for n in names], tasks)
    point_means = {n: {t: float(aligned[t][j].mean()) for t in tasks} for j, n in enumerate(names)}
    per_draw: list[dict[str, dict[str, float]]] = []
    if resamples:
        draws = resampled_means([models[n] for n in names], tasks, resamples, seed)
        per_draw = [
            {n: {t: float(draws[t][b, j]) for t in tasks} for j, n in enumerate(names)}
            for b in range(resamples)
        ]
    out: dict[str, dict[str, Any]] = {}
    # Statistic -> the runs it reads, and its regularized interval at the Bonferroni level for the whole family
    # (computed with the own interval, from the same gradient; again below if some statistic is left out).
    kept: dict[str, tuple[list[int], list[str], list[float] | None]] = {}
    bonferroni = 1 - (1 - level) / max(1, len(statistics))
    for name, stat in statistics.items():
        point = _safe(stat, point_means)
        entry: dict[str, Any] = {"point": point, "ci": None, "ci_adjusted": None, "undefined": None}
        out[name] = entry
        read = list(reads[name]) if reads and name in reads else _read_by(stat, point_means, names)
        idx = [names.index(r) for r in read]
        pairs = (
            [(names.index(x), names.index(y)) for x, y in compared[name]]
            if compared and name in compared
            else None
        )
        entry["discordant"] = (
            discordant(aligned, pairs)
            if pairs
            else sum(int((a[idx] != a[idx][:1]).any(axis=0).sum()) for a in aligned.values() if idx)
        )
        wald = _delta_on(aligned, idx, read, point_means, stat, level, also=(bonferroni,)) if idx else None
        boot = _interval([_safe(stat, m) for m in per_draw], level) if resamples else None
        if point is None or (resamples and boot is None) or wald is None or wald["ci"] is None:
            entry["undefined"] = "undefined on the shared items or on more than 1% of resamples"
            continue
        entry["ci"] = hull(boot, wald["ci"]) if boot is not None else list(wald["ci"])
        kept[name] = (idx, read, wald["ci_at"].get(bonferroni))
    m = len(kept)
    adjusted_level = 1 - (1 - level) / m if m else level
    for name, (idx, read, at_family) in kept.items():
        entry = out[name]
        if m != len(statistics):
            at_family = _delta_on(aligned, idx, read, point_means, statistics[name], adjusted_level)["ci"]
        entry["ci_adjusted"] = hull(entry["ci"], at_family)
        entry["adjusted_level"] = adjusted_level
    for entry in out.values():
        entry.update(family=m, method=FAMILY_METHOD, resamples=resamples, seed=seed, level=level)
    return out


def _read_by(
    stat: Callable[[dict[str, dict[str, float]]], float], means: dict[str, dict[str, float]], names: list[str]
) -> list[str]:
    """The runs whose means move the statistic (each shifted on every task at once)."""
    base = _safe(stat, means)
    if base is None:
        return names
    out = []
    for n in names:
        moved = [
            _safe(stat, {**means, n: {t: v + sign * 1e-4 for t, v in means[n].items()}}) for sign in (1, -1)
        ]
        if any(v is None or abs(v - base) > 1e-12 for v in moved):
            out.append(n)
    return out


def _delta_on(
    aligned: dict[str, np.ndarray],
    idx: list[int],
    read: list[str],
    means: dict[str, dict[str, float]],
    stat: Callable[[dict[str, dict[str, float]]], float],
    level: float,
    also: Sequence[float] = (),
) -> dict[str, Any]:
    """The regularized delta-method interval of a statistic of many runs, on the runs it reads only (the
    pseudo-items sit at the 2^k vertices of the k runs read, not of the whole family), at ``level`` and at
    each of ``also`` (in "ci_at")."""

    def on(sub: anytime.Means) -> float:
        return stat({**means, **dict(zip(read, sub, strict=True))})

    weight = anytime.pseudo_weight_for(level)
    return anytime.delta_interval_aligned(
        {t: a[idx] for t, a in aligned.items()}, on, level, pseudo_weight=weight, also=also
    )


RETENTION_METHOD = METHOD + "; each interval the hull with the regularized paired delta-method interval"
DIFFERENCE_METHOD = METHOD + "; widened to the regularized paired delta-method interval where that is wider"
FAMILY_METHOD = (
    "own: hull of the paired percentile bootstrap over items and the regularized paired delta-method "
    "interval; family-wise: hull of the own interval and the regularized delta-method interval at the "
    "Bonferroni level 1 - alpha/m"
)


def _means(items: TaskItems, tasks: Sequence[str]) -> dict[str, float]:
    return {t: float(np.mean([float(v) for v in items[t].values()])) for t in tasks}


# ------------------------------------------------------------------------------------------- perplexity
DocLogliks = Mapping[Any, Sequence[float]]  # document id -> (log-likelihood, weight: words or bytes)


def perplexity(docs: DocLogliks) -> float:
    """lm-eval's weighted perplexity: exp(-sum of log-likelihoods / sum of weights)."""
    ll = sum(v[0] for v in docs.values())
    weight = sum(v[1] for v in docs.values())
    return math.exp(-ll / weight)


def perplexity_retention_interval(
    dense: DocLogliks,
    compressed: DocLogliks,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> list[float] | None:
    """The paired interval of ppl_dense / ppl_compressed, resampling documents."""
    ids = sorted(set(dense) & set(compressed), key=str)
    d = np.array([dense[i] for i in ids], dtype=float)
    c = np.array([compressed[i] for i in ids], dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    ppl_d = np.exp(-d[idx, 0].sum(1) / d[idx, 1].sum(1))
    ppl_c = np.exp(-c[idx, 0].sum(1) / c[idx, 1].sum(1))
    return _interval(list(ppl_d / ppl_c), level)


def describe(resamples: int, seed: int, level: float) -> dict[str, Any]:
    return {"method": METHOD, "resamples": resamples, "seed": seed, "level": level}
