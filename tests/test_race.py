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


def test_identical_candidates_end_equivalent_without_a_winner():
    dense, models = _models(512, {"x": 0.02})
    r = race.Race(["x", "y"], looks=8, margin=0.05)
    for k in range(1, 9):
        m = _items(models["x"][: 64 * k])
        r.look(k, _items(dense[: 64 * k]), {"x": m, "y": dict(m)}, TASKS)
        if r.done:
            break
    assert r.outcome == "equivalent"
    assert r.winner is None and sorted(r.unseparated) == ["x", "y"]
    assert r.standings["y"].diff == 0 or r.standings["x"].diff == 0


def test_close_candidates_are_not_separated_when_the_items_run_out():
    r = _run({"p": 0.10, "q": 0.12}, n=256)
    assert r.outcome == "not separated"
    assert r.winner is None and sorted(r.unseparated) == ["p", "q"]


def test_no_drop_on_fewer_discordant_items_than_the_floor():
    # One round of 60 items, the bad one differing on all of them: dropped, unless the floor asks for more
    # disagreements than that.
    dense, models = _models(60, {"good": 0.0, "bad": 1.0})
    for floor, dropped in ((10, True), (61, False)):
        r = race.Race(["good", "bad"], looks=4, min_discordant=floor)
        r.look(1, _items(dense), {n: _items(v) for n, v in models.items()}, TASKS)
        assert r.standings["bad"].alive is not dropped


def test_levels_cover_every_look_of_every_pair_and_candidate():
    r = race.Race(["a", "b", "c", "d"], looks=5)
    assert r.pairs == 6
    assert r.difference_level == pytest.approx(1 - 0.05 / 30)
    assert r.sr_level == pytest.approx(1 - 0.05 / 20)


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
