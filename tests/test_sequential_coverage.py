"""The sequential stopping rule (jcexp/anytime.py): the interval it reports where the run ends covers the true Sr
as often as it claims, measured by simulation, including a case where the old rule (stop at the first look whose
plain 95% interval is narrow enough) fails; and the interval's unit behaviour.

The simulation: per task t, the dense model is right on an item with probability p_t; the compressed model gives
the dense answer except for flips (a right answer turned wrong with probability f10, a wrong one turned right with
probability f01). The truth is the superpopulation Sr = sum_t E[compressed_t] / sum_t p_t. Each replicate draws
its items afresh and visits them in order, ``chunk`` new items per task per look, until the rule stops or the items
run out (K = ceil(largest task / chunk) looks); the interval reported there is checked against the truth. The data
are drawn with numpy for all replicates at once; every stop decision and interval goes through
jcexp.anytime.StopRule.decide_aligned, the code the sequential loop runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pytest

from jcexp import anytime, metrics

SR = anytime.retention()
REPLICATES = 500


@dataclass(frozen=True)
class Case:
    sizes: tuple[int, ...]
    p: tuple[float, ...]  # the dense model's accuracy per task
    f10: float  # P(compressed wrong | dense right)
    f01: float  # P(compressed right | dense wrong)
    chunk: int = 64
    target: float = 0.03

    @property
    def truth(self) -> float:
        comp = [p * (1 - self.f10) + (1 - p) * self.f01 for p in self.p]
        return sum(comp) / sum(self.p)

    @property
    def looks(self) -> int:
        return math.ceil(max(self.sizes) / self.chunk)

    def draw(self, replicates: int, seed: int) -> list[np.ndarray]:
        """Per task, a [replicates, 2 (dense, compressed), items] array of 0/1 values."""
        rng = np.random.default_rng(seed)
        out = []
        for n, p in zip(self.sizes, self.p, strict=True):
            dense = rng.random((replicates, n)) < p
            flip = rng.random((replicates, n)) < np.where(dense, self.f10, self.f01)
            out.append(np.stack([dense, dense ^ flip], axis=1).astype(float))
        return out


LOW = Case(sizes=(1000, 1000, 1000), p=(0.6, 0.45, 0.75), f10=0.01, f01=0.0)
ORDINARY = Case(sizes=(1000, 1000, 1000), p=(0.6, 0.45, 0.75), f10=0.12, f01=0.04)
# Sr's variance has a floor at the 100-item task's, once it is all used: 0.03 is out of reach there, 0.05 is not.
UNEQUAL = Case(sizes=(100, 400, 2000), p=(0.6, 0.45, 0.75), f10=0.07, f01=0.02, target=0.05)
CASES = {"low_disagreement": (LOW, 1), "ordinary": (ORDINARY, 2), "unequal_sizes": (UNEQUAL, 3)}


def simulate(case: Case, replicates: int = REPLICATES, seed: int = 0, **rule: float) -> dict[str, float]:
    """Coverage of the new rule's reported interval, the mean look it ended at and the mean fraction of items
    it used."""
    data = case.draw(replicates, seed)
    tasks = [f"t{i}" for i in range(len(case.sizes))]
    sizes = dict(zip(tasks, case.sizes, strict=True))
    stop = anytime.StopRule(case.target, case.looks, **rule)
    covered, looks, used = 0, 0, 0
    for r in range(replicates):
        for k in range(1, case.looks + 1):
            values = {t: d[r, :, : k * case.chunk] for t, d in zip(tasks, data, strict=True)}
            got = stop.decide_aligned(values, SR, k, sizes=sizes)
            if got["stop"]:
                break
        covered += got["ci"] is not None and got["ci"][0] <= case.truth <= got["ci"][1]
        looks += k
        used += sum(got["n"].values())
    return {
        "coverage": covered / replicates,
        "mean_look": looks / replicates,
        "items_used": used / replicates / sum(case.sizes),
    }


def simulate_old(case: Case, replicates: int = REPLICATES, seed: int = 0) -> dict[str, float]:
    """The old rule, vectorized over replicates: a plain 95% delta-method interval of Sr (no pseudo-items, no
    spending, no floors), stop at the first look where its half-width is at most the target."""
    data = case.draw(replicates, seed)
    z = 1.959963984540054
    done = np.zeros(replicates, bool)
    covered = np.zeros(replicates, bool)
    first = np.zeros(replicates, bool)
    for k in range(1, case.looks + 1):
        parts = [d[:, :, : k * case.chunk] for d in data]
        dense = sum(x[:, 0].mean(axis=1) for x in parts)
        sr = sum(x[:, 1].mean(axis=1) for x in parts) / dense
        # Var(Sr) = sum_t Var(c - Sr d)_t / n_t / (sum_t dense_t)^2
        var = (
            sum((x[:, 1] - sr[:, None] * x[:, 0]).var(axis=1, ddof=1) / x.shape[2] for x in parts) / dense**2
        )
        half = z * np.sqrt(var)
        now = ~done & ((half <= case.target) | (k == case.looks))
        covered |= now & (np.abs(sr - case.truth) <= half)
        first |= now & (k == 1)
        done |= now
    return {"coverage": float(covered.mean()), "stopped_at_first_look": float(first.mean())}


@pytest.mark.parametrize("name", list(CASES))
def test_the_reported_interval_covers_the_truth(name):
    case, seed = CASES[name]
    got = simulate(case, seed=seed)
    assert got["coverage"] >= 0.93, got
    assert got["items_used"] < 0.9, got  # it does stop early, on the data: the looks are data-dependent


def test_every_looks_interval_covers_together():
    """The repeated-confidence-interval property the stop rests on: all the looks' intervals cover the truth at
    once in at least 95% of replicates (500, ORDINARY in chunks of 128: 8 looks, every look taken; 2 Monte Carlo
    standard errors of slack). Plain 95% intervals at every look (no spending) fail this: stopping on the width alone barely
    moves the reported interval's coverage, so only this joint check sees the spending go."""
    case, reps = dataclasses.replace(ORDINARY, chunk=128), REPLICATES
    data = case.draw(reps, 7)
    tasks = [f"t{i}" for i in range(len(case.sizes))]
    rule = anytime.StopRule(case.target, case.looks, min_items=0, min_discordant=0)
    every = np.ones(reps, bool)
    for k in range(1, case.looks + 1):
        for r in range(reps):
            if every[r]:
                got = rule.decide_aligned(
                    {t: d[r, :, : k * case.chunk] for t, d in zip(tasks, data, strict=True)}, SR, k
                )
                every[r] = got["ci"][0] <= case.truth <= got["ci"][1]
    assert every.mean() >= 0.95 - 2 * math.sqrt(0.05 * 0.95 / reps), every.mean()


def test_the_old_rule_undercovers_with_few_disagreements():
    """Shows the simulation can fail: with ~1% flips the old rule mostly stops at the first look, often on a
    chunk without a single disagreement, where its interval is [1, 1]."""
    got = simulate_old(LOW, seed=1)
    assert got["coverage"] < 0.9, got
    assert got["stopped_at_first_look"] > 0.5, got


# -------------------------------------------------------------------------------------------------- units
def _coins(n: int, p: float, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {str(i): float(x) for i, x in enumerate(rng.random(n) < p)}


def test_look_level():
    """Bonferroni over looks: the budget race's split (jcexp/race.py)."""
    assert anytime.look_level(0.95, 1) == pytest.approx(0.95)
    assert anytime.look_level(0.95, 10) == pytest.approx(0.995)
    assert anytime.look_level(0.9, 4) == pytest.approx(0.975)
    for level, looks in ((1.0, 3), (0.0, 3), (0.95, 0)):
        with pytest.raises(ValueError):
            anytime.look_level(level, looks)


def test_obrien_fleming_boundaries_spend_alpha_as_planned():
    """The boundaries from the grid integration: one look is the fixed-n 1.96; the first look's is exactly
    z / sqrt(t_1) (nothing spent before it); four equal looks give Lan-DeMets' 3.92, 2.77, 2.30, 2.04; and a
    Monte Carlo of the looks' joint normal (independent increments) crosses some boundary with probability
    alpha, on unequal fractions too."""
    assert anytime.boundaries((1.0,), 0.05)[0] == pytest.approx(1.95996, abs=2e-3)
    four = anytime.boundaries(anytime.fractions_for(4), 0.05)
    assert four == pytest.approx((3.92, 2.772, 2.30, 2.04), abs=6e-3)
    fractions = (0.05, 0.2, 0.3, 0.5, 0.55, 0.8, 1.0)
    c = np.array(anytime.boundaries(fractions, 0.05))
    rng = np.random.default_rng(0)
    walks = np.cumsum(rng.standard_normal((100_000, 7)) * np.sqrt(np.diff((0.0, *fractions))), axis=1)
    crossed = (np.abs(walks / np.sqrt(fractions)) > c).any(axis=1).mean()
    assert crossed == pytest.approx(0.05, abs=2.5e-3)  # 3.6 Monte Carlo standard errors
    rule = anytime.StopRule(0.03, 20)
    assert (
        rule.levels[-1] < 0.97 < anytime.look_level(0.95, 20)
    )  # the last look: near fixed n, not Bonferroni
    assert all(a > b for a, b in zip(rule.levels, rule.levels[1:], strict=False))
    with pytest.raises(ValueError, match="must increase"):
        anytime.StopRule(0.03, 2, fractions=(0.5, 0.5))
    with pytest.raises(ValueError, match="must be 1"):
        anytime.StopRule(0.03, 2, fractions=(0.5, 0.9))


def test_identical_models_give_a_small_nonzero_width():
    dense = {"a": _coins(1000, 0.6, 0), "b": _coins(500, 0.3, 1)}
    got = anytime.delta_interval([dense, dense], ["a", "b"], SR, 0.95)
    assert got["point"] == 1.0 and got["discordant"] == 0 and got["undefined"] is None
    lo, hi = got["ci"]
    assert 0 < hi - lo < 0.02 and lo < 1 < hi
    assert got["n"] == {"a": 1000, "b": 500}
    # Only the pseudo-items disagree: Var(c - Sr d) = 1 / (n + 2) per task, so Var(Sr) = sum_t 1/((n_t+2) n_t) / D^2
    total = sum(np.mean(list(d.values())) for d in dense.values())
    se = math.sqrt(1 / (1002 * 1000) + 1 / (502 * 500)) / total
    assert got["se"] == pytest.approx(se, rel=1e-4)


def test_the_point_is_the_statistic_on_the_shared_items_only():
    dense = {"a": {i: 1.0 for i in range(100)}, "b": {i: float(i % 2) for i in range(60)}}
    comp = {"a": {i: float(i % 3 > 0) for i in range(50, 200)}, "b": {i: 0.0 for i in range(30, 60)}}
    got = anytime.delta_interval([dense, comp], ["a", "b"], SR, 0.95)
    shared_a, shared_b = range(50, 100), range(30, 60)
    d = {"a": 1.0, "b": np.mean([i % 2 for i in shared_b])}
    c = {"a": np.mean([float(i % 3 > 0) for i in shared_a]), "b": 0.0}
    assert got["point"] == pytest.approx(metrics.semantic_retention(c, d))
    assert got["n"] == {"a": 50, "b": 30}
    assert got["discordant"] == sum(i % 3 == 0 for i in shared_a) + sum(i % 2 for i in shared_b)
    assert got["ci"][0] < got["point"] < got["ci"][1]


def test_undefined_statistic_is_reported_not_raised():
    zero = {"a": {i: 0.0 for i in range(20)}}
    got = anytime.delta_interval([zero, zero], ["a"], SR, 0.95)
    assert got["point"] is None and got["ci"] is None and "undefined" in got["undefined"]
    disjoint = anytime.delta_interval([{"a": {1: 1.0}}, {"a": {2: 1.0}}], ["a"], SR, 0.95)
    assert disjoint["ci"] is None and "no item shared" in disjoint["undefined"]
    missing = anytime.delta_interval([{"a": {1: 1.0}}, {"b": {1: 1.0}}], ["a"], SR, 0.95)
    assert missing["ci"] is None and missing["n"] == {"a": 0}
    rule = anytime.StopRule(0.5, 3, min_items=0, min_discordant=0)
    verdict = rule.decide([zero, zero], ["a"], SR, 1)
    assert verdict["stop"] is False and verdict["why"] == "undefined" and verdict["ci"] is None


def test_paired_difference_matches_the_agresti_min_closed_form():
    """One task, statistic = compressed mean - dense mean: the variance is that of the 2x2 table with 0.5 added
    to each cell (Agresti & Min 2005), over the real n."""
    rng = np.random.default_rng(4)
    dense = rng.random(300) < 0.6
    comp = dense ^ (rng.random(300) < 0.1)
    models = [{"t": dict(enumerate(dense.astype(float)))}, {"t": dict(enumerate(comp.astype(float)))}]
    got = anytime.delta_interval(models, ["t"], lambda m: m[1]["t"] - m[0]["t"], 0.9)
    n = 300
    p10 = (np.sum(dense & ~comp) + 0.5) / (n + 2)
    p01 = (np.sum(~dense & comp) + 0.5) / (n + 2)
    assert got["point"] == pytest.approx(comp.mean() - dense.mean())
    assert got["se"] == pytest.approx(math.sqrt((p10 + p01 - (p01 - p10) ** 2) / n), rel=1e-6)
    assert got["half_width"] == pytest.approx(1.6448536269514722 * got["se"], rel=1e-9)


def test_three_models_and_the_aligned_path_agree():
    dense = {"a": _coins(400, 0.6, 1), "b": _coins(300, 0.5, 2)}
    a = {t: {i: (1 - v if int(i) % 17 == 0 else v) for i, v in d.items()} for t, d in dense.items()}
    b = {t: {i: (0.0 if int(i) % 5 == 0 else v) for i, v in d.items()} for t, d in dense.items()}
    diff = anytime.difference()
    got = anytime.delta_interval([dense, a, b], ["a", "b"], diff, 0.95)
    sr = [
        metrics.semantic_retention(
            {t: np.mean(list(m[t].values())) for t in dense},
            {t: np.mean(list(dense[t].values())) for t in dense},
        )
        for m in (a, b)
    ]
    assert got["point"] == pytest.approx(sr[0] - sr[1]) and got["undefined"] is None
    assert got["ci"][0] < got["point"] < got["ci"][1]
    aligned = anytime.delta_interval_aligned(anytime.align([dense, a, b], ["a", "b"]), diff, 0.95)
    assert aligned == got


def test_the_stop_rule_floors_and_looks():
    rng = np.random.default_rng(0)
    d = (rng.random((1, 500)) < 0.6).astype(float)
    same = {"t": np.vstack([d, d])}
    rule = anytime.StopRule(target=0.5, looks=4)
    assert rule.decide_aligned(same, SR, 1)["why"] == "min_discordant"  # narrow, but no disagreement
    c = d.copy()
    c[0, :40] = 1 - c[0, :40]
    few = {"t": np.vstack([d, c])[:, :30]}
    assert rule.decide_aligned(few, SR, 2)["why"] == "min_items"
    wide = anytime.StopRule(target=5.0, looks=4)
    assert wide.decide_aligned(few, SR, 2)["why"] == "min_items"
    assert wide.decide_aligned(few, SR, 2, sizes={"t": 30})["stop"]  # a task that small has no more items
    got = rule.decide_aligned({"t": np.vstack([d, c])}, SR, 4)
    assert got["stop"] and got["why"] == "ci_target" and got["level"] == pytest.approx(rule.levels[3])
    assert got["z"] == pytest.approx(2.04, abs=6e-3) and "O'Brien-Fleming" in got["boundary"]
    assert (
        anytime.StopRule(1e-4, 4).decide_aligned({"t": np.vstack([d, c])}, SR, 3)["why"]
        == "wider_than_target"
    )
    with pytest.raises(ValueError):
        rule.decide_aligned(same, SR, 5)  # past the looks the spending covers
