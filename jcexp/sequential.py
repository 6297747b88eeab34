"""Sequential evaluation (``benchmark.ci_target=h``): score items in a fixed, seeded order, a chunk at a time,
and stop once Sr's paired 95% interval is at most ``h`` wide on either side, or when the items run out.

The stop is jcexp/anytime.py's: a fixed number of looks (the rounds, known before the first) at information
fractions known before the first (each round's share of the scored items, from the layout below), O'Brien-Fleming
repeated confidence intervals (Lan-DeMets spending), so the interval read at whichever round the run ends is a
valid 95% interval however many rounds it looked, and floors on items (``benchmark.ci_min_items``) and on items where the two models disagree
(``benchmark.ci_min_discordant``), so a round in which they never disagree cannot stop the run on an interval
of width zero. That interval is the one the record reports as Sr's (``metrics.sr_ci``).

Every leaf task's documents are visited in one seeded permutation (the same for the dense and the compressed
model, independent of either). Per round, the largest leaf of each benchmark task gets ``benchmark.ci_chunk``
documents and every other leaf of it a share in proportion to its size, so that a group stopped early weighs its
leaves as the full group does (equal chunks would weigh MMLU-Pro's subjects equally). Each round scores the
compressed model on its next chunk and the dense model only on the documents its cached per-item results lack;
the dense baseline's sidecar grows in place under the cache entry's lock, so a later run that needs more items
scores only the new ones. The final scores are recomputed from the merged per-item values (``aggregate``),
as lm-eval aggregates them, and the record says how many items each leaf task used and why it stopped.

Per-item values are held here as ``Values``: benchmark task -> leaf task -> document index (str) -> value.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from jcexp import anytime, items
from jcexp import lm_eval_worker as worker
from jcexp.evaluate import BuiltTasks, EvalResult, Score
from jcexp.files import atomic_write_json, file_lock, read_json

log = logging.getLogger("jcexp")

Values = dict[str, dict[str, dict[str, Any]]]
Samples = dict[str, list[int]]  # leaf task -> document indices (lm-eval's simple_evaluate ``samples``)
BASELINE_FILE = "baseline.json"


@dataclass
class Layout:
    """The benchmark's tasks as lm-eval builds them."""

    leaves: dict[str, list[str]]  # benchmark task -> its leaf tasks
    metrics: dict[str, str]  # benchmark task -> "metric,filter"
    perplexity: set[str]  # the benchmark tasks reported beside Sr
    sizes: dict[str, int]  # leaf task -> documents
    pooled: dict[str, bool]  # benchmark task -> its leaves' items pooled (one leaf, or weight_by_size)


def layout(bench, tasks: BuiltTasks) -> Layout:
    """Leaves and group weighting of each benchmark task, read from the tasks the plan built
    (jcexp.evaluate.build_tasks: documents per leaf task, counted there)."""
    leaves, pooled = {}, {}
    metrics = {**dict(bench.scores), **dict(bench.perplexity)}
    for name, metric in metrics.items():
        loaded = tasks.by_name[name]
        leaves[name] = sorted(worker.leaf_tasks(loaded))
        pooled[name] = True
        group = loaded[0] if len(loaded) == 1 and worker._is_group(loaded[0]) else None
        for agg in (group.aggregate_metric_list or []) if group is not None else []:
            if agg.metric == metric.partition(",")[0]:
                pooled[name] = bool(agg.weight_by_size)
    return Layout(leaves, metrics, set(bench.perplexity), dict(tasks.documents), pooled)


def orders(lay: Layout, seed: int) -> dict[str, list[int]]:
    """Each leaf task's documents in a seeded order: a function of (seed, task name, size) only."""
    return {
        leaf: [int(i) for i in np.random.default_rng([seed, zlib.crc32(leaf.encode())]).permutation(n)]
        for leaf, n in lay.sizes.items()
    }


def shares(lay: Layout, size: int) -> dict[str, float]:
    """Documents per round of each leaf: ``size`` for the largest leaf of its benchmark task, the others in
    proportion to their size."""
    out: dict[str, float] = {}
    for leaves in lay.leaves.values():
        largest = max(lay.sizes[leaf] for leaf in leaves)
        for leaf in leaves:
            out[leaf] = max(out.get(leaf, 0.0), size * lay.sizes[leaf] / largest)
    return out


def allotted(lay: Layout, size: int, rounds: int) -> dict[str, int]:
    """How many of each leaf's documents the first ``rounds`` rounds cover."""
    return {
        leaf: min(lay.sizes[leaf], math.ceil(rounds * share - 1e-9))
        for leaf, share in shares(lay, size).items()
    }


def chunk(order: dict[str, list[int]], k: int, size: int, lay: Layout | None = None) -> Samples:
    """Round ``k``'s documents (0-based), leaf tasks with none left omitted. With ``lay``, each leaf's share is
    proportional to its size (``shares``); without, ``size`` for every leaf."""
    if lay is None:
        return {leaf: docs[k * size : (k + 1) * size] for leaf, docs in order.items() if docs[k * size :]}
    before, after = allotted(lay, size, k), allotted(lay, size, k + 1)
    return {
        leaf: docs[before[leaf] : after[leaf]] for leaf, docs in order.items() if after[leaf] > before[leaf]
    }


def prefix(
    order: dict[str, list[int]], rounds: int, size: int, lay: Layout | None = None
) -> dict[str, set[str]]:
    """The documents of the first ``rounds`` rounds."""
    if lay is None:
        return {leaf: {str(i) for i in docs[: rounds * size]} for leaf, docs in order.items()}
    upto = allotted(lay, size, rounds)
    return {leaf: {str(i) for i in docs[: upto[leaf]]} for leaf, docs in order.items()}


# ---------------------------------------------------------------------------------------------- values
def from_worker(out_items: dict[str, Any], lay: Layout) -> Values:
    """Values out of the worker's compacted samples ({leaf: {metric: {ids, values}}})."""
    vals: Values = {}
    for task, metric in lay.metrics.items():
        per_leaf = vals.setdefault(task, {})
        for leaf in lay.leaves[task]:
            entry = (out_items.get(leaf) or {}).get(metric)
            if entry:
                per_leaf[leaf] = {str(i): v for i, v in zip(entry["ids"], entry["values"], strict=True)}
    return vals


def _item_id(lay: Layout, task: str, leaf: str, doc: str) -> str:
    # As jcexp.items.select names them: a group's items carry their leaf task.
    return f"{leaf}/{doc}" if len(lay.leaves[task]) > 1 else doc


def to_sidecar(vals: Values, lay: Layout) -> dict[str, Any]:
    out: dict[str, Any] = {"scores": {}, "perplexity": {}}
    for task, metric in lay.metrics.items():
        found = {
            _item_id(lay, task, leaf, doc): v
            for leaf, docs in vals.get(task, {}).items()
            for doc, v in docs.items()
        }
        out["perplexity" if task in lay.perplexity else "scores"][task] = {"metric": metric, "items": found}
    return out


def from_sidecar(sidecar: dict[str, Any] | None, lay: Layout) -> Values:
    vals: Values = {t: {} for t in lay.metrics}
    for section in ("scores", "perplexity"):
        for task, entry in ((sidecar or {}).get(section) or {}).items():
            if task not in lay.metrics:
                continue
            many = len(lay.leaves[task]) > 1
            for item, v in entry["items"].items():
                leaf, doc = item.rsplit("/", 1) if many else (lay.leaves[task][0], item)
                vals[task].setdefault(leaf, {})[doc] = v
    return vals


def merge(a: Values, b: Values) -> Values:
    out: Values = {t: {leaf: dict(d) for leaf, d in per.items()} for t, per in a.items()}
    for task, per in b.items():
        for leaf, docs in per.items():
            out.setdefault(task, {}).setdefault(leaf, {}).update(docs)
    return out


def restrict(vals: Values, docs: dict[str, set[str]]) -> Values:
    return {
        t: {leaf: {d: v for d, v in got.items() if d in docs.get(leaf, ())} for leaf, got in per.items()}
        for t, per in vals.items()
    }


def have(vals: Values, lay: Layout, leaf: str) -> set[str]:
    """The documents of ``leaf`` that every benchmark task over it has a value for."""
    sets = [set(vals.get(t, {}).get(leaf, {})) for t in lay.metrics if leaf in lay.leaves[t]]
    return set.intersection(*sets) if sets else set()


def count(vals: Values, lay: Layout) -> dict[str, int]:
    return {leaf: len(have(vals, lay, leaf)) for leaf in lay.sizes}


# ------------------------------------------------------------------------------------------- aggregates
def aggregate(per_leaf: dict[str, list[Any]], metric: str, pooled: bool = True) -> tuple[float, float | None]:
    """(value, stderr) of one benchmark task from its leaves' per-item values, as lm-eval aggregates them: the
    mean (stderr: sample std / sqrt(n)) for numbers; for (log-likelihood, weight) pairs lm-eval's weighted
    perplexity exp(-sum ll / sum weight), or bits_per_byte (stderr None: lm-eval bootstraps those). A group
    pools its leaves' items when weighted by size, else averages their means (lm-eval's group aggregation)."""
    from lm_eval.api import metrics as lm

    name = metric.partition(",")[0]
    leaves = {leaf: v for leaf, v in per_leaf.items() if v}
    if not leaves:
        raise ValueError(f"{metric}: no items")
    first = next(iter(leaves.values()))[0]
    if isinstance(first, list | tuple):
        agg = lm.bits_per_byte if name == "bits_per_byte" else lm.weighted_perplexity
        if pooled:
            return float(agg([tuple(x) for v in leaves.values() for x in v])), None
        return float(np.mean([agg([tuple(x) for x in v]) for v in leaves.values()])), None
    means = [float(lm.mean([float(x) for x in v])) for v in leaves.values()]
    errs = [lm.mean_stderr([float(x) for x in v]) if len(v) > 1 else math.nan for v in leaves.values()]
    sizes = [len(v) for v in leaves.values()]
    if len(leaves) == 1:
        value, stderr = means[0], errs[0]
    elif pooled:
        value = float(lm.mean([float(x) for v in leaves.values() for x in v]))
        stderr = lm.pooled_sample_stderr(errs, sizes)
    else:
        value, stderr = float(np.mean(means)), lm.unweighted_mean_stderr(errs)
    stderr = float(stderr) if stderr is not None and math.isfinite(stderr) else None
    return value, stderr


def rescore(result, vals: Values, lay: Layout, chance: dict[str, float | None]):
    """``result`` (an EvalResult) with its scores and perplexities recomputed from ``vals``, its items and
    n_samples set to them."""
    result.scores, result.perplexity = {}, {}
    for task, metric in lay.metrics.items():
        value, stderr = aggregate(
            {leaf: list(d.values()) for leaf, d in vals.get(task, {}).items()}, metric, lay.pooled[task]
        )
        if task in lay.perplexity:
            result.perplexity[task] = Score(task, metric, value, None, None, False)
        else:
            result.scores[task] = Score(task, metric, value, stderr, chance.get(task), True)
    used = count(vals, lay)
    result.n_samples = {leaf: {"original": n, "effective": used[leaf]} for leaf, n in lay.sizes.items()}
    result.items = to_sidecar(vals, lay)
    return result


def look(dense: Values, compressed: Values, lay: Layout, rule: anytime.StopRule, k: int) -> dict[str, Any]:
    """The stop rule's verdict on Sr after round ``k`` (1-based), on the items both models have."""
    d, c = items.scores(to_sidecar(dense, lay)), items.scores(to_sidecar(compressed, lay))
    tasks = sorted(d)
    sizes = {t: sum(lay.sizes[leaf] for leaf in lay.leaves[t]) for t in tasks}
    return rule.decide([d, c], tasks, anytime.retention("sr2"), k, sizes=sizes)


# ------------------------------------------------------------------------------------ the dense store
Evaluate = Callable[[Samples], Any]  # samples -> EvalResult with leaf_items (evaluate.partial_result)


class ItemStore:
    """A model's per-item cache entry (baseline.json + items.json), extended in place under its lock: the dense
    baseline's, or a budget-race candidate's (benchmark.ci_rounds)."""

    def __init__(self, entry: Path, lay: Layout):
        self.entry, self.layout = Path(entry), lay
        self.lock = self.entry.with_name(self.entry.name + ".lock")  # the one KeyedCache builds under
        self.seconds = 0.0  # evaluation time spent extending it, in this process

    def values(self) -> Values:
        return from_sidecar(items.read(self.entry), self.layout)

    def baseline(self) -> dict[str, Any]:
        return read_json(self.entry / BASELINE_FILE) or {}

    def ensure(self, samples: Samples, evaluate: Evaluate) -> int:
        """Score the dense model on the documents of ``samples`` the entry lacks; returns how many it scored."""
        with file_lock(self.lock):  # a concurrent run waits, then finds the documents there
            vals = self.values()
            missing = {}
            for leaf, docs in samples.items():
                got = have(vals, self.layout, leaf)
                if todo := [i for i in docs if str(i) not in got]:
                    missing[leaf] = todo
            if not missing:
                return 0
            result = evaluate(missing)
            self.seconds += result.seconds
            vals = merge(vals, from_worker(result.leaf_items["items"], self.layout))
            items.write(self.entry, to_sidecar(vals, self.layout))
            stored = self.baseline()
            if not stored.get("eval"):  # the first evaluation's settings and versions stand for the entry
                stored = {**stored, "eval": result.to_dict(), "chance": result.leaf_items["chance"]}
                atomic_write_json(self.entry / BASELINE_FILE, stored)
            return sum(len(v) for v in missing.values())

    def result(self, docs: dict[str, set[str]]):
        """The dense EvalResult on ``docs`` (scores recomputed from the cached items)."""
        stored = self.baseline()
        result = EvalResult.from_dict(stored["eval"])
        result.settings.pop("samples", None)  # the first dense evaluation's chunk
        return rescore(result, restrict(self.values(), docs), self.layout, stored.get("chance") or {})


# -------------------------------------------------------------------------------------------- the loop
@dataclass
class Sequential:
    """One run's sequential evaluation: stop rule, chunk, task layout and item order."""

    target: float | None  # None: no stop rule (a fixed number of rounds, ``fixed``)
    size: int
    layout: Layout
    order: dict[str, list[int]]
    seed: int
    min_items: int = 64
    min_discordant: int = 10
    fixed: int | None = None  # benchmark.ci_rounds: exactly this many rounds (at most ``rounds``)

    @classmethod
    def for_plan(cls, plan) -> Sequential:
        found = getattr(plan, "_sequential", None)  # the task layout is built once per run
        if found is None:
            bench = plan.cfg.benchmark
            lay = layout(bench, plan.tasks)
            found = cls(
                None if bench.get("ci_target") is None else float(bench.ci_target),
                int(bench.ci_chunk),
                lay,
                orders(lay, plan.cfg.seed),
                plan.cfg.seed,
                int(bench.get("ci_min_items", 64)),
                int(bench.get("ci_min_discordant", 10)),
                None if bench.get("ci_rounds") is None else int(bench.ci_rounds),
            )
            plan._sequential = found
        return found

    @property
    def rounds(self) -> int:
        """The number of looks, fixed before the first: the rounds the largest share needs to use every item."""
        return max(
            math.ceil(self.layout.sizes[leaf] / share - 1e-9)
            for leaf, share in shares(self.layout, self.size).items()
        )

    def _scored(self) -> dict[str, int]:
        """Items of each task Sr is computed from (the perplexity tasks are beside it, not in it)."""
        lay = self.layout
        tasks = [t for t in lay.leaves if t not in lay.perplexity] or list(lay.leaves)
        return {t: sum(lay.sizes[leaf] for leaf in lay.leaves[t]) for t in tasks}

    @property
    def fractions(self) -> tuple[float, ...]:
        """Each look's information fraction, known before the first: the share of Sr's items scored by then."""
        leaves = [leaf for t in self._scored() for leaf in self.layout.leaves[t]]
        upto = [allotted(self.layout, self.size, k) for k in range(1, self.rounds + 1)]
        total = sum(upto[-1][leaf] for leaf in leaves)
        out = [sum(u[leaf] for leaf in leaves) / total for u in upto]
        # Strictly increasing for the boundaries (a round that adds none of Sr's items, only perplexity
        # documents, adds a sliver; conservative: that look spends next to nothing), the last exactly 1.
        for k in range(1, len(out)):
            out[k] = max(out[k], out[k - 1] + 1e-9)
        return tuple(x / out[-1] for x in out)

    @property
    def rule(self) -> anytime.StopRule:
        # Without a target the rule only supplies each look's interval (its "stop" is not read).
        target = math.inf if self.target is None else self.target
        return anytime.StopRule(
            target,
            self.rounds,
            min_items=self.min_items,
            min_discordant=self.min_discordant,
            fractions=self.fractions,
        )

    # A compressed model that flips this share of the items, against a dense model right on this share of them:
    # the "plausible" case the reach check reads (SmolLM2's joint points flipped 4-15% of 200 items).
    PLAUSIBLE_FLIPS, PLAUSIBLE_ACCURACY = 0.05, 0.6

    def reach(self) -> dict[str, Any] | None:
        """Can ``ci_target`` be reached on the suite's size? Sr's half-width with every item, at the last look's
        boundary, in two cases: the most favourable data the discordance floor lets stop (the dense model right on
        every item, the models disagreeing on exactly ``min_discordant`` items) and a plausible one
        (``PLAUSIBLE_FLIPS`` of the items flipped against a dense accuracy of ``PLAUSIBLE_ACCURACY``). Var(Sr) is
        sum_t f / n_t / D^2 (D the sum of the dense task means; with Sr near 1, an item's residual is its
        disagreement). "unreachable" when even the favourable case is wider than the target, "unlikely" when the
        plausible one is, else "reachable". None without a target."""
        if self.target is None:
            return None
        sizes = self._scored()
        z = NormalDist().inv_cdf(0.5 + self.rule.levels[-1] / 2)
        tasks, total = len(sizes), sum(sizes.values())

        def half(flips: float, accuracy: float) -> float:
            return z * math.sqrt(sum(flips / n for n in sizes.values())) / (accuracy * tasks)

        best = half(max(self.min_discordant, 1) / total, 1.0)
        plausible = half(self.PLAUSIBLE_FLIPS, self.PLAUSIBLE_ACCURACY)
        verdict = (
            "unreachable" if self.target < best else "unlikely" if self.target < plausible else "reachable"
        )
        return {
            "verdict": verdict,
            "target": self.target,
            "best_case_half_width": best,
            "plausible_half_width": plausible,
            "items": sizes,
            "z_last_look": z,
        }

    def warn_reach(self) -> dict[str, Any] | None:
        """``reach``, logged as a warning before the first round when the target is out of reach."""
        got = self.reach()
        if got and got["verdict"] != "reachable":
            log.warning(
                "sequential evaluation: ci_target %.4g is %s on %d items (%s): with every item Sr's half-width "
                "would be at least %.4f in the most favourable case and about %.4f in a plausible one "
                "(%.0f%% flips, dense accuracy %.0f%%); the run will likely use every item",
                self.target,
                got["verdict"],
                sum(got["items"].values()),
                ", ".join(f"{t} {n}" for t, n in got["items"].items()),
                got["best_case_half_width"],
                got["plausible_half_width"],
                100 * self.PLAUSIBLE_FLIPS,
                100 * self.PLAUSIBLE_ACCURACY,
            )
        return got

    def chunk(self, k: int) -> Samples:
        return chunk(self.order, k, self.size, self.layout)

    def prefix(self, rounds: int) -> dict[str, set[str]]:
        return prefix(self.order, rounds, self.size, self.layout)

    def record(
        self, rounds: int, why: str, used: dict[str, int], dense_new: int, last=None
    ) -> dict[str, Any]:
        out = {
            "ci_target": self.target,
            "chunk": self.size,
            "rounds": rounds,
            "looks_planned": self.rounds,
            "min_items": self.min_items,
            "min_discordant": self.min_discordant,
            "items_used": used,
            "stopped_because": why,
            "dense_items_evaluated": dense_new,
            "boundary": anytime.BOUNDARY,
            "information_fractions": list(self.fractions),
            "ci_target_reach": self.reach(),
        }
        if last is not None:  # the interval at the last look: valid whatever the number of looks taken
            out["sr_interval"] = {
                k: last[k] for k in ("point", "ci", "level", "discordant", "why", "method", "undefined")
            }
            out["sr_interval"]["family_level"] = last["family_level"]
        return out

    def run(self, evaluate: Evaluate, store: ItemStore, evaluate_dense: Evaluate):
        """Rounds until the stop rule stops (Sr's half-width at most the target, the floors met) or the items
        run out. Returns the compressed EvalResult; its settings carry the record under "sequential", with the
        interval of the last look (the dense result on the same items: ``store.result``)."""
        vals: Values = {}
        rule = self.rule
        self.warn_reach()  # before the first round: say when the target is out of the suite's reach
        first, seconds, dense_new, why, k, last = None, 0.0, 0, "items exhausted", 0, None
        while k < self.rounds:
            samples = self.chunk(k)
            result = evaluate(samples)
            first = first or result
            seconds += result.seconds
            vals = merge(vals, from_worker(result.leaf_items["items"], self.layout))
            dense_new += store.ensure(samples, evaluate_dense)
            k += 1
            last = look(restrict(store.values(), self.prefix(k)), vals, self.layout, rule, k)
            log.info(
                "sequential evaluation: look %d of %d, Sr %s at level %.4f, half-width %s (target %s): %s",
                k,
                self.rounds,
                last["ci"],
                last["level"],
                last["half_width"],
                self.target,
                last["why"],
            )
            if last["stop"]:
                why = "ci_target"
                break
        compressed = rescore(first, vals, self.layout, first.leaf_items["chance"])
        compressed.seconds = seconds
        compressed.leaf_items = None
        compressed.settings.pop("samples", None)  # the first round's; items_used says what was scored
        compressed.settings["sequential"] = self.record(k, why, count(vals, self.layout), dense_new, last)
        return compressed

    def run_rounds(self, own: ItemStore, evaluate: Evaluate, store: ItemStore, evaluate_dense: Evaluate):
        """Exactly ``fixed`` rounds (at most ``rounds``), no stop rule: the budget race's jobs, which the race
        stops instead (jcexp/race.py). ``own`` keeps this model's items across runs (the same model at a later
        round), so a round already scored is read back, not scored again. Returns as ``run`` does, with the
        interval at this look and the items scored anew in ``items_evaluated``."""
        rounds = min(int(self.fixed or 1), self.rounds)
        new = dense_new = 0
        for k in range(rounds):
            samples = self.chunk(k)
            new += own.ensure(samples, evaluate)
            dense_new += store.ensure(samples, evaluate_dense)
        docs = self.prefix(rounds)
        vals = restrict(own.values(), docs)
        last = look(restrict(store.values(), docs), vals, self.layout, self.rule, rounds)
        compressed = own.result(docs)
        compressed.seconds = own.seconds
        why = "items exhausted" if rounds == self.rounds else "ci_rounds"
        record = self.record(rounds, why, count(vals, self.layout), dense_new, last)
        record["items_evaluated"] = new
        record["store"] = str(own.entry)
        compressed.settings["sequential"] = record
        return compressed
