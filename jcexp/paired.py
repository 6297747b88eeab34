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
    """95% intervals of each task's R_t, of Sr (eq. 12) and of Sr1 (eq. 11), from one paired draw."""
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
    return {
        "tasks": {t: _interval(v, level) for t, v in r_t.items()},
        "sr": _interval(sr, level),
        "sr1": _interval(sr1, level),
        **describe(resamples, seed, level),
    }


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
    return {**out, "diff": point, "ci": ci, "discordant": wald["discordant"], "method": DIFFERENCE_METHOD}


def family_intervals(
    models: Mapping[str, TaskItems],
    statistics: Mapping[str, Callable[[dict[str, dict[str, float]]], float]],
    *,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, dict[str, Any]]:
    """Each statistic's point, its own percentile interval, and a family-wise interval, from one paired draw.

    ``models`` maps a name to its per-item values (all scored on the same items, e.g. runs against one dense
    baseline); a statistic maps {name: {task: mean}} to a number (a difference of Sr, a difference in
    differences, SrCr). Every statistic is computed on the same resampled items, so their joint distribution
    is kept, and the family-wise interval uses it: the simultaneous percentile bootstrap (max statistic over
    the family). Each statistic's resampled values are turned into their two-sided tail probability; the
    level alpha* is the (1 - level) quantile of each resample's smallest tail probability, so that with
    probability ``level`` every statistic lies inside its own (1 - alpha*) percentile interval at once. The
    adjusted interval is that percentile interval: wider than the unadjusted one, and read with the same
    rule. A statistic undefined on more than 1% of resamples gets no interval and is left out of the family."""
    names = list(models)
    tasks = sorted(next(iter(models.values())))
    draws = resampled_means([models[n] for n in names], tasks, resamples, seed)
    aligned = _aligned([models[n] for n in names], tasks)
    point_means = {n: {t: float(aligned[t][j].mean()) for t in tasks} for j, n in enumerate(names)}

    def means_at(b: int) -> dict[str, dict[str, float]]:
        return {n: {t: float(draws[t][b, j]) for t in tasks} for j, n in enumerate(names)}

    per_draw = [means_at(b) for b in range(resamples)]
    out: dict[str, dict[str, Any]] = {}
    kept: dict[str, np.ndarray] = {}
    for name, stat in statistics.items():
        point = _safe(stat, point_means)
        values = [_safe(stat, m) for m in per_draw]
        ci = _interval(values, level)
        out[name] = {"point": point, "ci": ci, "ci_adjusted": None, "undefined": None}
        if point is None or ci is None:
            out[name]["undefined"] = "undefined on the shared items or on more than 1% of resamples"
            continue
        kept[name] = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    if kept:
        matrix = np.vstack(list(kept.values()))  # [statistics, resamples]
        ranks = (np.argsort(np.argsort(matrix, axis=1), axis=1) + 1) / resamples
        tail = np.minimum(1.0, 2 * np.minimum(ranks, 1 - ranks + 1 / resamples))
        tail[np.isnan(matrix)] = 1.0  # an undefined draw of one statistic says nothing about the others
        alpha = float(np.quantile(tail.min(axis=0), 1 - level))
        alpha = min(alpha, 1 - level)
        for name, row in zip(kept, matrix, strict=True):
            finite = row[np.isfinite(row)]
            lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            out[name]["ci_adjusted"] = [float(lo), float(hi)]
            out[name]["adjusted_level"] = 1 - alpha
    for entry in out.values():
        entry.update(family=len(kept), method=FAMILY_METHOD, resamples=resamples, seed=seed, level=level)
    return out


DIFFERENCE_METHOD = METHOD + "; widened to the regularized paired delta-method interval where that is wider"
FAMILY_METHOD = (
    "paired percentile bootstrap over items; family-wise intervals by the simultaneous percentile bootstrap "
    "(max statistic over the family, one draw shared by every run)"
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
