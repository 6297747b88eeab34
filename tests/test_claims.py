"""The claims table (bench/paper_study.py) and its family-wise intervals (jcexp.paired.family_intervals), on a
synthetic study: result.json files and per-item sidecars written here with known effects, no model. Mocks
nothing: the study is read from disk as the real one is."""

from pathlib import Path

import numpy as np
import pytest

from bench import paper_study
from jcexp import items, metrics, paired, verdicts
from jcexp.files import atomic_write_json

N = 400  # items per task
TASKS = ("a", "b")


def _dense(rng) -> dict[str, np.ndarray]:
    return {t: (rng.random(N) < 0.7).astype(float) for t in TASKS}


def _flip(dense: dict[str, np.ndarray], rng, drop: float) -> dict[str, np.ndarray]:
    """A compressed model: each right answer of the dense model lost with probability ``drop``."""
    return {t: np.where((v == 1) & (rng.random(N) < drop), 0.0, v) for t, v in dense.items()}


def _sidecar(values: dict[str, np.ndarray]) -> dict:
    return {
        "scores": {
            t: {"metric": "acc,none", "items": {str(i): float(x) for i, x in enumerate(v)}}
            for t, v in values.items()
        },
        "perplexity": {},
    }


def _write_run(
    root: Path, dense_dir: Path, name: str, values, sparsity=0.0, bits=16, mask=None, quant="gptq", case=None
):
    run_dir = root / "multirun" / "x" / name
    run_dir.mkdir(parents=True)
    items.write(run_dir, _sidecar(values))
    comp = {t: float(v.mean()) for t, v in values.items()}
    base = {t: float(np.mean(list(v.values()))) for t, v in items.scores(items.read(dense_dir)).items()}
    sr = metrics.semantic_retention(comp, base)
    atomic_write_json(
        run_dir / "result.json",
        {
            "status": "complete",
            "config_hash": name,
            "run_dir": str(run_dir),
            "seed": 0,
            "model": {"name": "m"},
            "compression": {
                "pruner": {"name": "sparsegpt" if sparsity else "none", "sparsity": sparsity, "mask": mask},
                "quant": {"name": quant if bits < 16 else "none", "bits": bits, "case": case},
            },
            "metrics": {
                "tcr": metrics.tcr(sparsity, bits),
                "sr": sr,
                "srcr": metrics.srcr(sr, sparsity, bits),
            },
            "measured": {"sparsity": {"pruned": sparsity / 100, "pruned_still_zero": sparsity / 100}},
            "baseline": {"path": str(dense_dir / "baseline.json"), "key": dense_dir.name},
        },
    )


GRID = {
    # name: (sparsity, bits, mask, quant, case, drop)
    "p25": (25, 16, None, "gptq", None, 0.02),
    "p33": (33.333, 16, None, "gptq", None, 0.03),
    "p50": (50, 16, None, "gptq", None, 0.15),
    "p75": (75, 16, None, "gptq", None, 0.6),
    "q8": (0, 8, None, "gptq", None, 0.0),
    "q4": (0, 4, None, "gptq", None, 0.03),
    "q3": (0, 3, None, "gptq", None, 0.25),
    "q2": (0, 2, None, "gptq", None, 0.7),
    "j25_4": (25, 4, None, "gptq", "B", 0.06),
    "j25_4A": (25, 4, None, "gptq", "A", 0.06),
    "j33_3": (33.333, 3, None, "gptq", "B", 0.3),
}


def _study(root: Path, seed: int = 0, drops: dict[str, float] | None = None) -> Path:
    """A grid the claims read, with effects chosen so that each kind of verdict occurs (``drops`` changes some)."""
    rng = np.random.default_rng(seed)
    dense = _dense(rng)
    dense_dir = root / "cache" / "baselines" / "k0"
    dense_dir.mkdir(parents=True)
    items.write(dense_dir, _sidecar(dense))
    for name, (s, b, mask, quant, case, drop) in GRID.items():
        drop = (drops or {}).get(name, drop)
        values = dense if drop == 0 else _flip(dense, rng, drop)
        _write_run(root, dense_dir, name, values, s, b, mask, quant, case)
    return root


@pytest.fixture
def study_root(tmp_path) -> Path:
    return _study(tmp_path)


def _by_text(judged):
    return {j.claim.text: j for j in judged}


def test_claims_are_judged_with_margins_and_family_adjustment(study_root):
    judged, family = paper_study.judge(paper_study.Study(study_root), margin=0.05, resamples=2000)
    by = _by_text(judged)
    assert family == sum(1 for j in judged if j.claim.papers and j.verdict != "not measured")
    central = by["TCr 81.25%: 25% + 4 bit beats 3 bit alone (by about 20 points)"]
    assert central.verdict == central.adjusted == "holds"
    lo, hi = central.result["ci"]
    alo, ahi = central.result["ci_adjusted"]
    assert alo < lo < hi < ahi  # the family-wise interval is wider
    # 8 bit answers exactly as dense: equivalent to it, within ±5 points (not merely "contains 0").
    assert by["8-bit GPTQ is equivalent to the dense model"].verdict == "holds"
    # Points that did not run are said so, not guessed.
    assert by["3 bit keeps more than 2 bit"].verdict == "holds"
    assert by["2:8 keeps more than 1:4 (16 bit)"].verdict == "not measured"
    # Case A and B drop 6% of right answers each, independently: no direction, and the interval is too wide
    # for ±1 point, so "approximates" is inconclusive there, while the DiD/equality rule never says "holds" for
    # an interval that merely contains 0.
    case = paper_study.judge(paper_study.Study(study_root), margin=0.01, resamples=2000)[0]
    approx = _by_text(case)["Case A approximates Case B (25% + 4 bit)"]
    assert approx.result["ci"][0] < 0 < approx.result["ci"][1]
    assert approx.verdict == "inconclusive"


def test_claims_markdown_prints_the_margin_and_both_verdicts(study_root):
    md = paper_study.claims_markdown(study_root, margin=0.05)
    assert "Equivalence margin ±5 points of Sr" in md and "family-wise 95% CI" in md
    assert "| **holds** |" in md and "not measured" in md
    assert "| 25% + 4 bit | B (the paper's tool, default) |" in md and "| A | " in md


def test_family_intervals_cover_jointly_and_are_wider():
    """Ten independent null statistics: each own interval misses 0 about 5% of the time, so some of the ten
    often do; the family-wise intervals are wider and all cover 0 together about 95% of the time."""
    rng = np.random.default_rng(1)
    misses_own = misses_family = 0
    reps = 40
    for _ in range(reps):
        dense = {"t": {str(i): float(rng.random() < 0.6) for i in range(300)}}
        runs = {"dense": dense}
        for k in range(10):
            runs[f"r{k}"] = {"t": {i: (1.0 - v if rng.random() < 0.1 else v) for i, v in dense["t"].items()}}
        # Pairs of runs with the same flip rate: every difference has truth 0.
        stats = {f"d{k}": (lambda m, k=k: m[f"r{k}"]["t"] - m[f"r{(k + 1) % 10}"]["t"]) for k in range(10)}
        found = paired.family_intervals(runs, stats, resamples=1000, seed=int(rng.integers(1 << 30)))
        misses_own += any(not (e["ci"][0] <= 0 <= e["ci"][1]) for e in found.values())
        misses_family += any(not (e["ci_adjusted"][0] <= 0 <= e["ci_adjusted"][1]) for e in found.values())
        for e in found.values():
            assert e["ci_adjusted"][0] <= e["ci"][0] and e["ci"][1] <= e["ci_adjusted"][1]
    # Ten looks at 95% each miss somewhere in ~40% of replicates; the family-wise ones in ~5%.
    assert misses_own >= 6
    assert misses_family <= 6


def test_verdict_rules():
    assert verdicts.claim_verdict(">", [0.01, 0.2]) == "holds"
    assert verdicts.claim_verdict(">", [-0.2, -0.01]) == "does not hold"
    assert verdicts.claim_verdict(">", [-0.01, 0.2]) == "inconclusive"
    assert verdicts.claim_verdict("<", [-0.2, -0.01]) == "holds"
    assert verdicts.claim_verdict("=", [-0.04, 0.04], 0.05) == "holds"
    assert verdicts.claim_verdict("=", [-0.1, 0.1], 0.05) == "inconclusive"  # contains 0: still not "equal"
    assert verdicts.claim_verdict("=", [0.06, 0.2], 0.05) == "does not hold"
    assert verdicts.claim_verdict("=", None) == "undefined"
    assert verdicts.difference_word([0.01, 0.03], 0.05) == "equivalent"
    assert verdicts.difference_word([0.01, 0.3], 0.05) == "higher"
    assert verdicts.difference_word([-0.3, 0.3], 0.05) == "inconclusive"


def test_timing_sums_each_distinct_result_once(study_root):
    for i, path in enumerate(sorted(study_root.glob("multirun/x/*/result.json"))):
        data = __import__("json").loads(path.read_text())
        data["stages"] = {"eval": {"seconds": 10.0}, **({"quantize": {"seconds": 5.0}} if i % 2 else {})}
        atomic_write_json(path, data)
    md = paper_study.timing_markdown(study_root)
    assert "| eval | 11 | 110 |" in md and "| quantize | 5 | 25 |" in md


def test_two_models_form_one_family_and_a_claim_for_both_needs_both(tmp_path):
    """The second model's 25% + 4 bit loses as much as its 3 bit: the central claim holds on the first model and
    does not hold on the second, so it does not hold for both; the family is both models' claims, so each
    model's adjusted interval is wider than in its own family."""
    first = _study(tmp_path / "first")
    second = _study(tmp_path / "second", seed=1, drops={"j25_4": 0.45})
    studies = {"first": paper_study.Study(first), "second": paper_study.Study(second)}
    judged, family = paper_study.judge_models(studies, margin=0.05, resamples=2000)
    alone, alone_family = paper_study.judge(studies["first"], margin=0.05, resamples=2000)
    assert family == 2 * alone_family
    central = "TCr 81.25%: 25% + 4 bit beats 3 bit alone (by about 20 points)"
    a, b = (_by_text(judged[t])[central] for t in ("first", "second"))
    assert a.adjusted == "holds" and b.adjusted == "does not hold"
    assert paper_study.both_verdict([a.adjusted, b.adjusted]) == "does not hold"
    mine = _by_text(alone)[central]
    assert a.result["point"] == pytest.approx(mine.result["point"])  # the same statistic on the same items
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(a.result["ci_adjusted"]) > width(mine.result["ci_adjusted"])
    md = paper_study.models_markdown({"first": first, "second": second}, margin=0.05)
    assert f"form one family of {family}" in md and "first: family-wise CI, verdict" in md
    assert paper_study.both_verdict(["holds", "holds"]) == "holds"
    assert paper_study.both_verdict(["holds", "inconclusive"]) == "inconclusive"
    assert paper_study.both_verdict(["holds", "not measured"]) == "not measured"
    assert paper_study.both_verdict(["does not hold", "not measured"]) == "does not hold"
