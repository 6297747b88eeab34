"""Sequential evaluation (benchmark.ci_target): seeded chunks, stopping on Sr's interval, an incrementally
extended dense baseline, and scores recomputed from the merged items exactly as lm-eval aggregates them.

The tiny random model answers jc_nextsentence identically whatever its compression (near-uniform logits), so
there Sr's interval is a point and one round meets any target; on jc_lastword it scores 0, Sr is undefined and
the items run out. Both are used on purpose below."""

import math

import pytest

from jcexp import items, sequential
from jcexp.config import ConfigError

from .conftest import TINY

SEQ = (*TINY, "save_model=false", "benchmark.limit=null")
NEXT = ("~benchmark.scores.jc_lastword", "~benchmark.perplexity.jc_prose_ppl")  # jc_nextsentence only
LAST = ("~benchmark.scores.jc_nextsentence",)  # jc_lastword and jc_prose_ppl


def _dense_calls(monkeypatch) -> list[dict]:
    """Every dense evaluation's chosen documents (the dense one's response cache is named dense-...)."""
    import jcexp.evaluate as ev

    calls, real = [], ev.evaluate

    def spy(*args, **kwargs):
        if "dense-" in str(kwargs.get("resume")):
            calls.append(kwargs.get("samples"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "evaluate", spy)
    return calls


FLOORS_OFF = ("benchmark.ci_min_items=0", "benchmark.ci_min_discordant=0")


def test_a_loose_target_stops_after_one_round_on_an_interval_that_did_not_collapse(compose):
    """With the floors off, one round meets a loose target, but the interval is the stop rule's: at the first
    look's O'Brien-Fleming level (64 of 197 items: information fraction 0.325) and never of width zero, though
    the two models agree on every item (the percentile bootstrap gave [1, 1] here). The record states the
    boundary, the planned fractions and that the target was within reach."""
    from jcexp import anytime
    from jcexp.run import run

    result = run(compose(*SEQ, *NEXT, *FLOORS_OFF, "benchmark.ci_target=0.9", "benchmark.ci_chunk=64"))
    seq = result["benchmark"]["sequential"]
    assert seq["stopped_because"] == "ci_target" and seq["rounds"] == 1 and seq["looks_planned"] == 4
    assert seq["items_used"] == {"jc_nextsentence": 64}
    assert result["n_samples"]["jc_nextsentence"] == {"original": 197, "effective": 64}
    lo, hi = result["metrics"]["sr_ci"]
    assert lo < 1.0 < hi and (hi - lo) / 2 <= 0.9
    assert seq["sr_interval"]["ci"] == [lo, hi] and seq["sr_interval"]["discordant"] == 0
    fractions = (64 / 197, 128 / 197, 192 / 197, 1.0)
    assert seq["information_fractions"] == pytest.approx(fractions)
    assert seq["sr_interval"]["level"] == pytest.approx(anytime.look_levels(0.95, fractions)[0])
    assert seq["boundary"] == anytime.BOUNDARY and seq["ci_target_reach"]["verdict"] == "reachable"
    assert "delta-method" in result["metrics"]["ci"]["method"]
    assert len(items.read(result["run_dir"])["scores"]["jc_nextsentence"]["items"]) == 64


def test_the_issues_tiny_run_never_stops_on_a_zero_width_interval(compose):
    """pruner=none quant.bits=8, ci_target=0.2, ci_chunk=4: the 8-bit model agrees with the dense one on every
    item, so no round has a discordant item and the run never stops by ci_target; what it reports at the end is
    a real interval, not [1, 1]."""
    from jcexp.run import run

    result = run(
        # seed=1: its own dense baseline entry (the session's cache is shared; the next test counts dense items).
        compose(
            *SEQ,
            *NEXT,
            "seed=1",
            "pruner=none",
            "quant.bits=8",
            "benchmark.ci_target=0.2",
            "benchmark.ci_chunk=4",
        )
    )
    seq = result["benchmark"]["sequential"]
    lo, hi = result["metrics"]["sr_ci"]
    assert hi - lo > 0
    if seq["stopped_because"] == "ci_target":
        assert seq["sr_interval"]["discordant"] >= 10 and seq["sr_interval"]["ci"] == [lo, hi]
    else:
        assert seq["stopped_because"] == "items exhausted" and seq["items_used"] == {"jc_nextsentence": 197}


def test_an_impossible_target_uses_every_item_and_matches_a_full_evaluation(compose):
    from jcexp.run import run

    seq_run = run(compose(*SEQ, *LAST, "benchmark.ci_target=1e-6", "benchmark.ci_chunk=100"))
    full = run(compose(*SEQ, *LAST))
    seq = seq_run["benchmark"]["sequential"]
    assert seq["stopped_because"] == "items exhausted" and seq["rounds"] == 3
    assert seq["items_used"] == {"jc_lastword": 237, "jc_prose_ppl": 15}
    for section in ("tasks", "perplexity"):
        for task, row in full[section].items():
            for key in ("value", "baseline"):
                assert seq_run[section][task][key] == pytest.approx(row[key], rel=1e-9, abs=1e-12), (
                    task,
                    key,
                )
    # Item by item the same values: the logged doc ids line up across chunks.
    a, b = items.read(seq_run["run_dir"]), items.read(full["run_dir"])
    assert a["scores"] == b["scores"]
    for doc, (ll, weight) in b["perplexity"]["jc_prose_ppl"]["items"].items():
        assert a["perplexity"]["jc_prose_ppl"]["items"][doc] == pytest.approx([ll, weight], rel=1e-9)


def test_recomputed_scores_equal_lm_evals_aggregate(compose):
    """sequential.aggregate on a plain evaluation's items gives lm-eval's own scores and stderrs."""
    from jcexp.evaluate import build_tasks
    from jcexp.run import run

    cfg = compose(*TINY, "save_model=false", "benchmark.limit=24")
    result = run(cfg)
    lay = sequential.layout(cfg.benchmark, build_tasks(cfg.benchmark))
    vals = sequential.from_sidecar(items.read(result["run_dir"]), lay)
    for task, row in result["tasks"].items():
        per_leaf = {leaf: list(d.values()) for leaf, d in vals[task].items()}
        value, stderr = sequential.aggregate(per_leaf, row["metric"], lay.pooled[task])
        assert value == pytest.approx(row["value"], abs=1e-9)
        assert stderr == pytest.approx(row["stderr"], abs=1e-9)
    for task, row in result["perplexity"].items():
        per_leaf = {leaf: list(d.values()) for leaf, d in vals[task].items()}
        value, _ = sequential.aggregate(per_leaf, row["metric"], lay.pooled[task])
        assert math.isclose(value, row["value"], rel_tol=1e-9)


def test_the_dense_baseline_grows_by_the_new_items_only(compose, monkeypatch):
    from jcexp.run import run

    first = run(
        compose(*SEQ, *NEXT, *FLOORS_OFF, "benchmark.ci_target=0.9", "benchmark.ci_chunk=64", "quant.bits=4")
    )
    assert first["benchmark"]["sequential"]["rounds"] == 1
    # The next run needs three rounds: the rule is held from stopping for two.
    stops, real = iter([False, False, True]), sequential.look
    monkeypatch.setattr(sequential, "look", lambda *a, **k: {**real(*a, **k), "stop": next(stops)})
    calls = _dense_calls(monkeypatch)
    second = run(
        compose(*SEQ, *NEXT, *FLOORS_OFF, "benchmark.ci_target=0.1", "benchmark.ci_chunk=64", "quant.bits=3")
    )
    seq = second["benchmark"]["sequential"]
    assert seq["rounds"] == 3 and seq["items_used"] == {"jc_nextsentence": 192}
    # The first 64 documents were cached by the first run: only rounds 2 and 3 reach the dense model.
    order = sequential.orders(sequential.Layout({}, {}, set(), {"jc_nextsentence": 197}, {}), 0)
    new = order["jc_nextsentence"][64:192]
    assert sorted(i for c in calls for i in c["jc_nextsentence"]) == sorted(new)
    assert seq["dense_items_evaluated"] == 128
    assert second["baseline"]["path"] == first["baseline"]["path"]
    assert second["n_samples"]["jc_nextsentence"]["effective"] == 192
    stored = items.read(second["baseline"]["path"].rsplit("/", 1)[0])
    assert len(stored["scores"]["jc_nextsentence"]["items"]) == 192


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("benchmark.ci_target=0",), "must be in (0, 1)"),
        (("benchmark.ci_target=1.5",), "must be in (0, 1)"),
        (("benchmark.ci_target=0.05", "benchmark.ci_chunk=0"), "ci_chunk=0 must be positive"),
        (("benchmark.ci_target=0.05", "benchmark.limit=16"), "set benchmark.limit=null"),
    ],
)
def test_bad_sequential_settings_fail_before_compute(compose, monkeypatch, overrides, message):
    from jcexp import scoring
    from jcexp.run import run

    def no_compute(*a, **k):
        raise AssertionError("computed before the config was checked")

    monkeypatch.setattr(scoring, "dense_baseline", no_compute)
    base = SEQ if "benchmark.limit=16" not in overrides else (*TINY, "save_model=false")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(compose(*base, *overrides))


def test_item_order_is_seeded_and_chunks_cover_every_item_once():
    lay = sequential.Layout({}, {}, set(), {"a": 10, "b": 3}, {})
    order = sequential.orders(lay, 0)
    assert order == sequential.orders(lay, 0) and order != sequential.orders(lay, 1)
    assert sorted(order["a"]) == list(range(10))
    rounds = [sequential.chunk(order, k, 4) for k in range(3)]
    assert [sorted(r) for r in rounds] == [["a", "b"], ["a"], ["a"]]
    assert sorted(i for r in rounds for i in r["a"]) == list(range(10))


def test_a_groups_leaves_get_items_in_proportion_to_their_size():
    """A stopped group measures what the full group measures: each round takes the same share of every leaf
    (equal chunks would weigh a 25-item subject like a 100-item one)."""
    lay = sequential.Layout(
        {"g": ["big", "small"], "t": ["t"]}, {}, set(), {"big": 100, "small": 25, "t": 10}, {}
    )
    order = sequential.orders(lay, 0)
    first = sequential.chunk(order, 0, 16, lay)
    assert {leaf: len(d) for leaf, d in first.items()} == {"big": 16, "small": 4, "t": 10}
    rounds = [sequential.chunk(order, k, 16, lay) for k in range(7)]
    for leaf, n in lay.sizes.items():
        assert sorted(i for r in rounds for i in r.get(leaf, [])) == list(range(n))
    used = sequential.prefix(order, 3, 16, lay)
    assert (len(used["big"]), len(used["small"])) == (48, 12)
    seq = sequential.Sequential(0.1, 16, lay, order, 0)
    assert seq.rounds == 7 and seq.rule.looks == 7
    # The looks' information fractions, known before the first: items of Sr's tasks scored by each round.
    assert seq.fractions == pytest.approx((30 / 135, 50 / 135, 70 / 135, 90 / 135, 110 / 135, 130 / 135, 1.0))
    assert seq.rule.fractions == seq.fractions


def test_rounds_that_add_only_perplexity_documents_keep_the_boundaries_valid():
    """A perplexity task needing more rounds than the scored one: Sr's information stops growing after round 2,
    and the later looks spend (next to) nothing more: their levels do not fall below round 2's."""
    lay = sequential.Layout({"a": ["a"], "p": ["p"]}, {}, {"p"}, {"a": 100, "p": 300}, {})
    seq = sequential.Sequential(0.05, 64, lay, sequential.orders(lay, 0), 0)
    assert seq.rounds == 5 and seq.fractions[0] == pytest.approx(0.64) and seq.fractions[-1] == 1.0
    levels = seq.rule.levels
    assert all(b >= levels[1] - 1e-6 for b in levels[2:]) and levels[1] < levels[0]


def test_a_target_out_of_the_suites_reach_is_said_before_the_run(caplog):
    """Three tasks of 100, 400 and 2000 items: with every item and the most favourable data the floor lets stop
    (dense right everywhere, 10 disagreements), Sr's half-width is still 0.005, so 0.001 is unreachable; a
    plausible model (5% flips, dense 60%) gets 0.03, so 0.02 is unlikely; 0.1 is reachable. (On the default
    suite, 237 + 197 items: 0.03 is unlikely, 0.05 reachable; issue 26 found 0.03 never stopped early.)"""
    import logging

    lay = sequential.Layout(
        {"a": ["a"], "b": ["b"], "c": ["c"]}, {}, set(), {"a": 100, "b": 400, "c": 2000}, {}
    )
    verdicts = {}
    for target in (0.001, 0.02, 0.1):
        seq = sequential.Sequential(target, 64, lay, sequential.orders(lay, 0), 0)
        with caplog.at_level(logging.WARNING, logger="jcexp"):
            caplog.clear()
            got = seq.warn_reach()
        verdicts[target] = got["verdict"]
        assert (got["verdict"] != "reachable") == ("out of reach" in caplog.text or "is un" in caplog.text)
        assert got["best_case_half_width"] < got["plausible_half_width"]
    assert verdicts == {0.001: "unreachable", 0.02: "unlikely", 0.1: "reachable"}
    assert sequential.Sequential(None, 64, lay, sequential.orders(lay, 0), 0).reach() is None


def test_sequential_off_keeps_every_stored_hash_and_on_changes_it(compose):
    """Results from before sequential evaluation existed ran the full suite: with ci_target unset they must be
    found again (same hash); with it set the run evaluates fewer items, so it is a different result."""
    from omegaconf import OmegaConf

    from jcexp.results import config_hash

    cfg = OmegaConf.to_container(compose(*TINY), resolve=True)
    before = {
        **cfg,
        "benchmark": {k: v for k, v in cfg["benchmark"].items() if k not in ("ci_target", "ci_chunk")},
    }
    assert config_hash(cfg) == config_hash(before)
    on = {**cfg, "benchmark": {**cfg["benchmark"], "ci_target": 0.03}}
    assert config_hash(on) != config_hash(cfg)


def test_a_stage_run_in_chunks_records_its_whole_time():
    """Sequential evaluation scores chunk after chunk under one stage name: result.json's stage must hold
    the sum (bench/sequential_eval.py compares these seconds), not the last chunk's."""
    import time

    from jcexp import measure

    records: dict = {}
    for _ in range(3):
        with measure.timed(records, "eval"):
            time.sleep(0.05)
    assert records["eval"]["calls"] == 3
    assert records["eval"]["seconds"] >= 0.15
    with measure.timed(records, "load"):
        pass
    assert "calls" not in records["load"]
