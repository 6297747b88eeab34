"""Paired statistics (issue 12): the bootstrap against closed forms, the per-item sidecar round trip through real
lm-eval on the tiny Llama, and the verdict words (equivalent within a margin, higher, lower, inconclusive, undefined)."""

import json
import math
import random
from pathlib import Path

import pytest

from jcexp import items, paired, verdicts
from jcexp.run import run

from .conftest import TINY


def _coins(n: int, p: float, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    return {str(i): float(rng.random() < p) for i in range(n)}


def test_identical_models_never_get_a_collapsed_interval():
    """A model that answers every item as the dense one: the percentile bootstrap alone gives [1, 1] (no loss
    at all, from 500 items); the hull with the regularized interval is narrow but never of width zero."""
    dense = {"a": _coins(300, 0.6, 0), "b": _coins(200, 0.3, 1)}
    ci = paired.retention_intervals(dense, dense, resamples=500)
    for interval in (ci["sr"], ci["sr1"], *ci["tasks"].values()):
        assert interval[0] < 1.0 < interval[1] and interval[1] - interval[0] < 0.1
    assert ci["method"] == paired.RETENTION_METHOD and ci["resamples"] == 500 and ci["seed"] == 0


def test_independent_coin_flips_give_the_binomial_width():
    """Dense right on every item: R_t is the compressed model's accuracy, whose 95% interval is the binomial
    p ± 1.96 sqrt(p(1-p)/n)."""
    n, p = 2000, 0.5
    dense = {"t": {str(i): 1.0 for i in range(n)}}
    comp = {"t": _coins(n, p, 7)}
    lo, hi = paired.retention_intervals(dense, comp, resamples=4000, seed=3)["tasks"]["t"]
    binomial = 2 * 1.96 * math.sqrt(p * (1 - p) / n)
    assert hi - lo == pytest.approx(binomial, rel=0.08)
    acc = sum(comp["t"].values()) / n
    assert lo < acc < hi


def test_pairing_is_far_tighter_than_two_independent_stderrs():
    """A compressed model that flips 3% of a 60%-accurate dense model's answers: the paired interval of R_t is a
    fraction of what two independent stderrs would allow."""
    n = 1000
    dense = _coins(n, 0.6, 11)
    rng = random.Random(5)
    comp = {i: (1.0 - v if rng.random() < 0.03 else v) for i, v in dense.items()}
    lo, hi = paired.retention_intervals({"t": dense}, {"t": comp}, resamples=2000)["tasks"]["t"]
    unpaired = 2 * 1.96 * math.sqrt(2 * 0.6 * 0.4 / n) / 0.6  # width of R_t from two independent stderrs
    assert hi - lo < 0.4 * unpaired


def test_difference_of_two_models_in_words():
    dense = {"t": _coins(500, 0.7, 2)}
    rng = random.Random(9)
    near = {"t": {i: (1.0 - v if rng.random() < 0.02 else v) for i, v in dense["t"].items()}}
    far = {"t": {i: (0.0 if rng.random() < 0.3 else v) for i, v in dense["t"].items()}}
    same = paired.difference_interval(dense, near, near)
    # No item disagrees: the percentile bootstrap alone gives [0, 0]; the regularized interval does not collapse.
    assert same["diff"] == 0 and same["ci"][0] < 0 < same["ci"][1] < 0.02
    # ... and no item says anything about their difference: below the discordance floor, inconclusive.
    assert same["discordant"] == 0
    assert verdicts.difference_word(same["ci"], discordant=same["discordant"]) == "inconclusive"
    tiny = paired.difference_interval(dense, dense, near)
    # 2% of items flipped both ways: well inside ±5 points, so equivalent; inside ±0.5 it cannot be told.
    assert tiny["discordant"] >= verdicts.MIN_DISCORDANT
    assert verdicts.difference_word(tiny["ci"], 0.05, discordant=tiny["discordant"]) == "equivalent"
    assert verdicts.difference_word(tiny["ci"], 0.005, discordant=tiny["discordant"]) == "inconclusive"
    big = paired.difference_interval(dense, dense, far)
    assert (
        big["ci"][0] > 0.15 and verdicts.difference_word(big["ci"], discordant=big["discordant"]) == "higher"
    )
    low = paired.difference_interval(dense, far, dense)
    assert verdicts.difference_word(low["ci"], discordant=low["discordant"]) == "lower"
    # The count is a vs b only: far against far disagrees nowhere, however far both are from the dense model.
    assert paired.difference_interval(dense, far, far)["discordant"] == 0


def test_an_interval_that_merely_contains_zero_is_inconclusive_not_equal():
    """60 items on which the two runs never disagree (a true gap of a few points is easily missed): the old rule
    ("the interval contains 0") called them equal; now the interval is wider than the margin: inconclusive."""
    rng = random.Random(4)
    dense = {"t": _coins(60, 0.7, 3)}
    comp = {"t": {i: (0.0 if v and rng.random() < 0.05 else v) for i, v in dense["t"].items()}}
    diff = paired.difference_interval(dense, dense, comp)
    assert diff["discordant"] == 0 and diff["ci"][0] < 0 < diff["ci"][1]
    # Inconclusive from the interval alone (the floor is waived here to show it: discordant=10).
    assert verdicts.difference_word(diff["ci"], discordant=10) == "inconclusive"
    assert verdicts.claim_verdict("=", diff["ci"], discordant=10) == "inconclusive"
    assert verdicts.claim_verdict(">", diff["ci"], discordant=10) == "inconclusive"


def test_point_and_interval_come_from_the_same_items():
    """Run b answered 100 more items than a and dense share: the point estimate uses only the shared ones."""
    a = {"t": {str(i): 1.0 for i in range(200)}}
    b = {"t": {**{str(i): 1.0 for i in range(100)}, **{str(i): 0.0 for i in range(100, 300)}}}
    dense_short = {"t": {str(i): 1.0 for i in range(100)}}
    diff = paired.difference_interval(dense_short, a, b)
    assert diff["diff"] == 0.0 and diff["ci"][0] < 0 < diff["ci"][1]


def test_an_undefined_difference_is_reported_not_raised():
    dense = {"t": {str(i): 0.0 for i in range(20)}}
    comp = {"t": {str(i): float(i % 2) for i in range(20)}}
    diff = paired.difference_interval(dense, comp, dense)
    assert diff["ci"] is None and "undefined" in diff["undefined"]
    nearly = {"t": {str(i): float(i == 0) for i in range(20)}}  # dense right on one item of 20
    diff = paired.difference_interval(nearly, comp, nearly)
    assert diff["ci"] is None and "resamples" in diff["undefined"]


def test_perplexity_retention_interval():
    docs = {str(i): [-float(10 + i % 7), 5.0 + i % 3] for i in range(50)}
    assert paired.perplexity_retention_interval(docs, docs) == [1.0, 1.0]
    worse = {i: [v[0] * 1.1, v[1]] for i, v in docs.items()}  # 10% lower log-likelihood everywhere
    lo, hi = paired.perplexity_retention_interval(docs, worse)
    point = paired.perplexity(docs) / paired.perplexity(worse)
    assert lo <= point <= hi < 1.0


def test_sidecar_round_trip_and_intervals_in_result_json(compose):
    """Real lm-eval (log_samples) on the tiny Llama: per-item values in items.json beside result.json (not in it),
    whose means are the task scores and whose documents give the reported perplexity; the dense baseline's
    sidecar is cached with it; result.json carries the paired intervals."""
    result = run(compose(*TINY, "save_model=false", "benchmark.limit=24"))
    out = Path(result["run_dir"])
    assert "items" not in json.loads((out / "result.json").read_text())
    stored = items.read(out)
    assert items.complete(stored)
    for task, row in result["tasks"].items():
        values = list(items.scores(stored)[task].values())
        assert len(values) == 24
        assert sum(values) / len(values) == pytest.approx(row["value"])
    for task, row in result["perplexity"].items():
        assert paired.perplexity(items.documents(stored, task)) == pytest.approx(row["value"], rel=1e-9)
    dense = items.read(Path(result["baseline"]["path"]).parent)
    for task, row in result["tasks"].items():
        values = list(items.scores(dense)[task].values())
        assert sum(values) / len(values) == pytest.approx(row["baseline"])
    m = result["metrics"]
    assert m["ci"]["method"] == paired.RETENTION_METHOD and m["ci"]["resamples"] == paired.RESAMPLES
    for row in result["tasks"].values():
        if row["retention_ci"] is not None:
            lo, hi = row["retention_ci"]
            assert lo <= row["retention"] <= hi


def test_an_old_baseline_without_sidecar_is_evaluated_again(compose):
    cfg = compose(*TINY, "save_model=false", "benchmark.limit=8")
    first = run(cfg)
    base_dir = Path(first["baseline"]["path"]).parent
    (base_dir / items.ITEMS_FILE).unlink()  # a baseline cached before sidecars existed
    second = run(compose(*TINY, "save_model=false", "benchmark.limit=8", "quant.bits=3"))
    assert second["baseline"]["reused"] is False and items.complete(items.read(base_dir))


def test_report_compare_uses_the_verdict_words_and_pairs_by_baseline_key(compose, capsys, tmp_path):
    """report --compare says equivalent / higher / lower / inconclusive with the margin it used, and pairs two
    runs whose baselines share a key even when they live under different output roots."""
    import shutil

    from jcexp import report

    a = run(compose(*TINY, "save_model=false", "benchmark.limit=64"))
    b = run(compose(*TINY, "save_model=false", "benchmark.limit=64", "quant.case=A"))
    text = report.compare(a["run_dir"], b["run_dir"])
    assert "95% CI" in text and "equivalence margin ±5 points of Sr" in text
    word = report.comparison(a, b).word
    assert word in ("equivalent", "higher", "lower", "inconclusive") and text.split(": ")[1].startswith(word)
    # A run against itself: exactly zero difference, but no item on which the two disagree: below the
    # discordance floor, inconclusive at any margin, and the line says why.
    assert ": inconclusive: +0.0 points" in report.compare(a["run_dir"], a["run_dir"])
    itself = report.compare(a["run_dir"], a["run_dir"], margin=0.9)
    assert (
        ": inconclusive: +0.0 points" in itself
        and "only 0 items on which the compared runs disagree" in itself
    )
    report.main(["--compare", a["run_dir"], a["run_dir"], "--margin", "0.9"])
    out = capsys.readouterr().out
    assert "inconclusive" in out and "margin ±90 points of Sr" in out
    # The same baseline, copied under another root (another cache directory): still paired.
    moved = tmp_path / "elsewhere" / Path(a["baseline"]["path"]).parent.name
    shutil.copytree(Path(a["baseline"]["path"]).parent, moved)
    b_moved = {**b, "baseline": {"path": str(moved / "baseline.json"), "reused": True}}
    assert report.comparison(a, b_moved).ci == report.comparison(a, b).ci
    assert report.comparison(a, {**b, "baseline": {"path": "/x/other/baseline.json"}}).word == "undefined"
