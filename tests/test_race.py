"""The budget race's decisions (jcexp/race.py), on per-item values made up here: pure, no model."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from jcexp import race
from jcexp.config import BudgetSpace

TASKS = ["a", "b"]


def _items(values: np.ndarray) -> dict[str, dict[int, float]]:
    half = len(values) // 2
    return {"a": dict(enumerate(values[:half])), "b": dict(enumerate(values[half:]))}


def _models(n: int, flips: dict[str, float], seed: int = 0):
    """Dense right on 80% of n items; each model flips a share of the dense answers (seeded)."""
    rng = np.random.default_rng(seed)
    dense = (rng.random(n) < 0.8).astype(float)
    out = {}
    for name, share in flips.items():
        flip = np.random.default_rng([seed, len(name), int(1000 * share)]).random(n) < share
        out[name] = np.where(flip, 1 - dense, dense)
    return dense, out


def _run(flips: dict[str, float], n: int = 512, chunk: int = 64, **kw) -> race.Race:
    dense, models = _models(n, flips)
    looks = n // chunk
    r = race.Race(list(flips), looks, **kw)
    for k in range(1, looks + 1):
        upto = k * chunk
        take = {name: _items(v[:upto]) for name, v in models.items() if name in r.alive}
        r.look(k, _items(dense[:upto]), take, TASKS)
        if r.done:
            break
    return r


def test_a_clearly_worse_candidate_is_dropped_in_an_early_round():
    r = _run({"good": 0.01, "bad": 0.45})
    s = r.standings["bad"]
    assert not s.alive and s.dropped_round is not None and s.dropped_round <= 2
    assert "below good" in s.why
    assert r.outcome == "winner" and r.winner == "good"
    assert s.diff_ci[1] < 0
    # Each candidate's record names what the race concluded about it, and from which interval.
    assert (
        r.standings["good"].verdict == "winner" and s.verdict == "dropped" and "Sr difference [" in s.reason
    )
    assert r.claim.startswith("good keeps the most") and r.to_dict()["claim"] == r.claim


def test_identical_candidates_make_no_claim():
    """Two candidates that answer every item alike: 0 items on which they disagree, below the discordance floor,
    so no claim of equivalence (nor a drop), however narrow the interval; the leader is not called a choice."""
    dense, models = _models(512, {"x": 0.02})
    r = race.Race(["x", "y"], looks=8, margin=0.05)
    for k in range(1, 9):
        m = _items(models["x"][: 64 * k])
        r.look(k, _items(dense[: 64 * k]), {"x": m, "y": dict(m)}, TASKS)
        if r.done:
            break
    assert r.outcome == "not separated" and r.claim is None
    assert r.winner is None and sorted(r.unseparated) == ["x", "y"]
    # Futile once half the looks are done: no disagreement yet, none to expect from the rest.
    assert len(r.rounds) == 4 and r.rounds[-1]["stop"].startswith("futile")
    other = r.standings["y" if r.leader == "x" else "x"]
    assert other.diff == 0 and other.discordant == 0  # candidate-vs-leader disagreements, not vs dense
    assert other.verdict == "no claim" and "only 0 items on which the compared runs disagree" in other.reason
    lead = r.standings[r.leader]
    assert lead.verdict == "no claim" and "not the race's choice" in lead.reason


def test_candidates_that_disagree_a_little_end_in_a_claim_of_equivalence():
    """y turns over 2% of x's answers both ways, on 2048 items in 8 rounds: the interval of the difference fits
    inside ±5 points once they disagree on at least the floor's 10 items (round 3 here, not before: round 2's
    interval was inside the margin on 6 disagreements), and the race ends with the claim that the two are
    equivalent within the margin."""
    n, chunk = 2048, 256
    dense, models = _models(n, {"x": 0.02})
    flip = np.random.default_rng(7).random(n) < 0.02
    y = np.where(flip, 1 - models["x"], models["x"])
    r = race.Race(["x", "y"], looks=8, margin=0.05)
    for k in range(1, 9):
        upto = k * chunk
        r.look(k, _items(dense[:upto]), {"x": _items(models["x"][:upto]), "y": _items(y[:upto])}, TASKS)
        if r.done:
            break
    assert r.outcome == "equivalent" and r.winner is None and len(r.rounds) == 3
    assert r.claim.startswith("x, y are equivalent within ±5 points of Sr")
    assert {s.verdict for s in r.standings.values()} == {"equivalent"}
    other = r.standings["y" if r.leader == "x" else "x"]
    assert other.discordant >= race.verdicts.MIN_DISCORDANT and "inside ±5 points" in other.reason


def test_close_candidates_are_not_separated_when_the_items_run_out():
    r = _run({"p": 0.10, "q": 0.12}, n=256)
    assert r.outcome == "not separated"
    assert r.winner is None and sorted(r.unseparated) == ["p", "q"]
    other = r.standings["q" if r.leader == "p" else "p"]
    assert other.verdict == "no claim" and "neither below 0 nor inside" in other.reason


def test_no_drop_on_fewer_discordant_items_than_the_floor():
    # One round of 60 items, the bad one differing on all of them: dropped, unless the floor asks for more
    # disagreements than that.
    dense, models = _models(60, {"good": 0.0, "bad": 1.0})
    for floor, dropped in ((10, True), (61, False)):
        r = race.Race(["good", "bad"], looks=4, min_discordant=floor)
        r.look(1, _items(dense), {n: _items(v) for n, v in models.items()}, TASKS)
        assert r.standings["bad"].alive is not dropped
        assert r.standings["bad"].discordant == 60
    # Never below the claims' floor (jcexp/verdicts.py), whatever the configuration asks.
    assert race.Race(["a", "b"], looks=1, min_discordant=2).min_discordant == race.verdicts.MIN_DISCORDANT


def test_one_error_budget_covers_every_look_of_every_pair_and_candidate():
    """5 looks x (6 pairs + 4 candidates) = 50 intervals share alpha = 0.05: joint level 95%, not 90%."""
    r = race.Race(["a", "b", "c", "d"], looks=5)
    assert r.pairs == 6 and r.intervals == 50
    assert r.difference_level == pytest.approx(1 - 0.05 / 50)
    assert r.sr_level == pytest.approx(1 - 0.05 / 50)
    assert (1 - r.difference_level) * 5 * 6 + (1 - r.sr_level) * 5 * 4 == pytest.approx(0.05)


def test_the_family_wise_level_holds_under_the_null():
    """Five candidates that are all the same model (independent noise only through their shared items): across
    replicates, the race must wrongly drop one in at most about 5% of races."""
    wrong = 0
    for rep in range(40):
        rng = np.random.default_rng(100 + rep)
        n = 256
        dense = (rng.random(n) < 0.7).astype(float)
        models = {f"m{i}": np.where(rng.random(n) < 0.1, 1 - dense, dense) for i in range(5)}
        r = race.Race(list(models), looks=4)
        for k in range(1, 5):
            if r.done:
                break
            r.look(k, _items(dense[: 64 * k]), {m: _items(v[: 64 * k]) for m, v in models.items()}, TASKS)
        wrong += any(not s.alive for s in r.standings.values())
    assert wrong <= 4  # 40 races, 5% family-wise: 2 expected at most, 4 allows for the binomial spread


def test_a_failed_candidate_leaves_the_race():
    dense, models = _models(128, {"a": 0.01, "b": 0.01})
    r = race.Race(["a", "b"], looks=2)
    r.fail("b", 1, "ConfigError: bad")
    r.look(1, _items(dense[:64]), {"a": _items(models["a"][:64])}, TASKS)
    assert r.outcome == "winner" and r.winner == "a"
    assert r.standings["b"].why == "failed: ConfigError: bad"


def test_looks_past_the_planned_number_are_refused():
    r = race.Race(["a", "b"], looks=1)
    with pytest.raises(ValueError, match="outside 1..1"):
        r.look(2, {}, {}, TASKS)


def test_pareto_frontier():
    pts = {"a": (3.0, 0.7), "b": (4.0, 0.9), "c": (4.5, 0.85), "d": (5.0, 0.95), "e": (3.0, 0.6)}
    assert race.pareto(pts) == ["a", "b", "d"]


def test_enumeration_at_tcr_81_25_covers_every_kind_of_recipe():
    recipes = race.space_recipes(asdict(BudgetSpace()))
    band = [r for r in recipes if race.near(r.tcr, 0.8125, 0.02)]
    names = {r.name for r in band}
    assert "gptq w3" in names  # quantization only
    assert "sparsegpt 25% + gptq w4 case B" in names  # unstructured + GPTQ, the paper's case
    assert "sparsegpt 2:8 + gptq w4 case B" in names and "sparsegpt 1:4 + rtn w4" in names  # N:M
    assert "one-pass 25% + gptq w4" in names  # one-pass
    assert "sparsegpt 62.5% + llm_int8 w8" in names and "sparsegpt 25% + nf4 w4" in names
    assert all(abs(r.tcr - 0.8125) <= 0.02 + 1e-9 for r in band)
    assert not any(r.name == "dense" for r in recipes)


def test_enumeration_cases_group_sizes_and_layouts():
    space = {
        **asdict(BudgetSpace()),
        "cases": ["A", "B", "joint"],
        "group_sizes": [None, 64],
        "nm_layouts": ["exact", "paper"],
    }
    band = [r for r in race.space_recipes(space) if race.near(r.tcr, 0.8125, 0.001)]
    names = {r.name for r in band}
    assert {"sparsegpt 25% + gptq w4 case A", "sparsegpt 25% + gptq w4 g64 case joint"} <= names
    assert "sparsegpt 2:8 (paper) + gptq w4 case B" in names
    overrides = next(r for r in band if r.name == "sparsegpt 2:8 (paper) + gptq w4 case B").overrides()
    assert "pruner.mask='2:8'" in overrides and "pruner.nm_layout=paper" in overrides


def test_bits_per_weight_counts_values_scales_and_mask():
    r = race.Recipe("sparsegpt", 25.0, None, "exact", "gptq", 4, None, "B")
    assert race.bits_per_weight(r, 128) == pytest.approx(0.75 * 4 + 16 / 128 + 1.0)
    nm = race.Recipe("sparsegpt", 25.0, "2:8", "exact", "gptq", 4, None, "B")
    assert race.bits_per_weight(nm, 64, measured_overhead=0.5) == pytest.approx(3 + 0.5 + np.log2(28) / 8)
    dense_w3 = race.Recipe("none", 0.0, None, "exact", "gptq", 3, None, None)
    assert race.bits_per_weight(dense_w3, 64) == pytest.approx(3.25)


def test_the_race_stops_when_the_remaining_items_could_not_decide():
    """Two near-identical candidates on few items: neither a drop nor equivalence within 5 points is within
    reach of all the items, so the race stops early, not separated, instead of scoring them all."""
    futile = _run({"p": 0.20, "q": 0.21}, n=256, chunk=32)
    assert futile.outcome == "not separated" and futile.winner is None
    assert len(futile.rounds) < 8 and futile.rounds[-1]["stop"].startswith("futile")
    full = _run({"p": 0.20, "q": 0.21}, n=256, chunk=32, futility=False)
    assert full.outcome == "not separated" and len(full.rounds) == 8
    assert full.rounds[-1]["stop"] == "items exhausted"
