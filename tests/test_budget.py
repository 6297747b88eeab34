"""The budget race end to end (experiment=budget): the real sweeper, launcher, llm-compressor and lm-eval on the
tiny random Llama, scored on a benchmark whose answers are the dense model's own choices (tests/dense_choice.py),
so that compression has something to lose. Nothing is mocked; W&B is offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import dense_choice
from tests.conftest import ROOT, TINY

CALIB = ("calibration.num_samples=16", "calibration.seq_len=64")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """(outputs root, benchmark overrides): the tiny model built once, its dense-choice task beside it."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import jcexp.config  # noqa: F401

    root = tmp_path_factory.mktemp("budget")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"paths.cache_dir={root / 'cache'}", "logger=none"])
    model_dir = instantiate(cfg.model.source).hf_dir()
    tasks = root / "dense_choice"
    assert dense_choice.build(tasks, model_dir) >= 256
    return root, dense_choice.overrides(tasks)


def _budget_cmd(*args: str) -> list[str]:
    """`python launch.py -m experiment=budget model=tiny_random logger=none <args>`."""
    return [
        sys.executable,
        str(ROOT / "launch.py"),
        "-m",
        "experiment=budget",
        "model=tiny_random",
        "logger=none",
        *args,
    ]


def _race(root: Path, extra: list[str], sweep: Path, cache: Path | None = None, **popen):
    cmd = _budget_cmd(
        *CALIB,
        f"hydra.sweep.dir={sweep}",
        f"paths.cache_dir={cache or root / 'cache'}",
        *extra,
    )
    env = {**os.environ, "JCEXP_OUTPUTS": str(root / "outputs")}
    env.pop("JCEXP_UID", None)
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, **popen)
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads((sweep / "budget.json").read_text())


WORSE = [
    "budget.tcr=0.8125",
    "budget.tolerance=0.07",
    "budget.space.pruners=[]",
    "budget.space.quantizers=[rtn]",
    "budget.space.bits=[2,4]",
    "budget.space.group_sizes=[64]",
    "save_model=false",
]
SAME = [
    "budget.tcr=0.75",
    "budget.tolerance=0.01",
    "budget.space.pruners=[]",
    "budget.space.quantizers=[rtn,gptq]",
    "budget.space.bits=[4]",
]


# The held-out prose as a perplexity task beside the dense-choice items: each run records per-document KL to
# dense on its 15 documents (jcexp/divergence.py), which the race screens on.
PROSE = ["+benchmark.perplexity.jc_prose_ppl='word_perplexity,none'"]


def test_a_clearly_worse_candidate_is_screened_out_by_kl_in_the_first_round(bench):
    root, benchmark = bench
    sweep = root / "worse"
    state = _race(root, [*WORSE, *benchmark, *PROSE], sweep)
    r = state["race"]
    assert [c["name"] for c in state["candidates"]] == ["rtn w2 g64", "rtn w4 g64"]
    bad = r["standings"]["rtn w2 g64"]
    assert r["screened"] and r["screen_share"] == 0.25 and r["screened_out"] == ["rtn w2 g64"]
    assert not bad["alive"] and bad["screened_round"] == 1 < r["looks"], bad
    assert bad["kl_versus"] == "rtn w4 g64" and bad["kl_ratio_ci"][0] > 1 and bad["kl_documents"] == 15
    assert r["outcome"] == "winner" and r["winner"] == "rtn w4 g64" and len(r["rounds"]) == 1
    text = (sweep / "budget.md").read_text()
    assert "**Claim: rtn w4 g64 wins** among the candidates the KL screen kept" in text
    assert "screened out by KL at round 1" in text
    assert bad["verdict"] == "screened out" and r["standings"]["rtn w4 g64"]["verdict"] == "winner"
    assert (sweep / "budget.png").stat().st_size > 0
    # Fewer items than the grid; the KL counted once per candidate as its 15 prose documents.
    assert state["items"]["kl"] == 2 * 15 and state["items"]["race"] < state["items"]["grid"]
    # Every round's job went through the launcher, each in its own directory with its result.
    assert len(list(sweep.glob("*/result.json"))) == r["standings"]["rtn w4 g64"]["rounds"] + bad["rounds"]


def test_identical_candidates_end_without_a_claim_or_a_choice(bench):
    """The two 4-bit models answer alike, item for item: no item on which they disagree, below the discordance
    floor (jcexp/verdicts.py), so neither a drop nor a claim of equivalence; the leader is not called a choice."""
    root, benchmark = bench
    sweep = root / "same"
    state = _race(root, [*SAME, *benchmark], sweep)
    r = state["race"]
    assert sorted(c["name"] for c in state["candidates"]) == ["gptq w4", "rtn w4"]
    assert r["standings"]["gptq w4"]["sr"] == r["standings"]["rtn w4"]["sr"]
    assert r["outcome"] == "not separated" and r["winner"] is None and r["claim"] is None
    assert sorted(r["unseparated"]) == ["gptq w4", "rtn w4"]
    assert {s["verdict"] for s in r["standings"].values()} == {"no claim"}
    other = next(s for n, s in r["standings"].items() if n != r["leader"])
    assert other["discordant"] == 0 and "only 0 items" in other["reason"]
    text = (sweep / "budget.md").read_text()
    assert "**No claim: " in text and "not the race's choice" in text


def test_a_race_killed_after_its_first_round_resumes_without_recomputing(bench, tmp_path):
    root, benchmark = bench
    sweep, cache = tmp_path / "killed", tmp_path / "cache"
    args = [*SAME, *benchmark, "save_model=false"]
    proc = _race(
        root, args, sweep, cache, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state_file = sweep / "budget.json"
    deadline = time.time() + 600
    while time.time() < deadline:
        if state_file.exists() and 1 in json.loads(state_file.read_text()).get("rounds_run", []):
            break
        assert proc.poll() is None, "the race ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}
    assert {"0", "1"} <= set(first)  # round 1's two jobs finished before the kill

    state = _race(root, args, sweep, cache)
    assert state["race"]["outcome"] == "not separated"
    results = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}
    for job, result in results.items():
        rounds = result["benchmark"]["sequential"]["rounds"]
        if rounds == 1:  # round 1: reused whole, by config hash
            assert result.get("resumed_from"), job
            continue
        if result.get("resumed_from"):
            continue
        # A later round that ran after the resume: the compressed model came from the cache, and only the
        # new round's items were scored.
        stages = result["stages"]
        assert "load_compressed" in stages, (job, sorted(stages))
        assert all(stages[k].get("from_cache") for k in ("quantize",) if k in stages), stages
        assert result["benchmark"]["sequential"]["items_evaluated"] <= 64, result["benchmark"]  # one chunk
    compressed = [p for p in (cache / "compressed").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(compressed) == 2  # one entry per candidate, built once


def test_fixed_rounds_reuse_the_compressed_model_and_the_items_already_scored(compose):
    from jcexp.run import run

    base = (*TINY, "benchmark.limit=null", "pruner.sparsity=25", "quant.bits=4")
    one = run(compose(*base, "benchmark.ci_rounds=1"))
    two = run(compose(*base, "benchmark.ci_rounds=2"))
    s1, s2 = one["benchmark"]["sequential"], two["benchmark"]["sequential"]
    assert (s1["rounds"], s2["rounds"]) == (1, 2) and s2["stopped_because"] == "ci_rounds"
    assert "load_compressed" not in one["stages"]
    assert "load_compressed" in two["stages"]
    # The stage timings are round 1's (its pruning may itself have come from the shared pruned-model cache).
    stages = [k for k in ("prune", "load_pruned", "quantize") if k in two["stages"]]
    assert "quantize" in stages and all(two["stages"][k]["from_cache"] for k in stages), two["stages"]
    # Round 2 scored only its own chunk: what it used minus what round 1 had.
    used1, used2 = sum(s1["items_used"].values()), sum(s2["items_used"].values())
    assert s2["items_evaluated"] == used2 - used1 > 0
    assert two["measured"] == one["measured"]  # the first run's measurements stand for the model
    assert two["config_hash"] != one["config_hash"]


def test_a_budget_without_one_target_is_refused_before_any_job(bench, tmp_path):
    root, benchmark = bench
    cmd = _budget_cmd()
    env = {**os.environ, "JCEXP_OUTPUTS": str(tmp_path)}
    for extra, message in (
        ([], "needs exactly one target"),
        (["budget.tcr=0.8125", "budget.bits_per_weight=3"], "needs exactly one target"),
        (["budget.tcr=1.5"], "must be in (0, 1)"),
        (["budget.tcr=0.8125", "pruner.sparsity=0,25"], "is a sweep"),
    ):
        out = subprocess.run([*cmd, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode != 0 and message in out.stdout + out.stderr, (extra, out.stderr[-2000:])
        assert not list(tmp_path.rglob("result.json"))


def test_the_candidates_are_every_expressible_recipe_in_the_band(tmp_path):
    """The default space at TCr 81.25% on the tiny model, listed without running anything (max_rounds=0)."""
    cmd = _budget_cmd(
        "budget.tcr=0.8125", "hydra.sweeper.max_rounds=0", f"hydra.sweep.dir={tmp_path / 'list'}"
    )
    out = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "JCEXP_OUTPUTS": str(tmp_path)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    state = json.loads((tmp_path / "list" / "budget.json").read_text())
    names = {c["name"] for c in state["candidates"]}
    assert {
        "gptq w3",
        "rtn w3",
        "sparsegpt 25% + gptq w4 case B",
        "one-pass 25% + gptq w4",
        "sparsegpt 25% + nf4 w4",
        "sparsegpt 62.5% + llm_int8 w8",
        "sparsegpt 2:8 + gptq w4 case B",
        "sparsegpt 1:4 + rtn w4",
    } <= names
    assert all(abs(c["tcr"] - 0.8125) <= 0.02 + 1e-9 for c in state["candidates"])
    why = {e["name"]: e["why"] for e in state["excluded"]}
    assert "NF4Quantize is 4-bit only" in why["nf4 w3"]  # refused by the same checks a run makes
    assert "LLMInt8Quantize is 8-bit only" in why["sparsegpt 25% + llm_int8 w4"]
    assert not list(tmp_path.rglob("result.json"))


def _synthetic_state() -> dict:
    import numpy as np

    from jcexp import race

    rng = np.random.default_rng(0)
    dense = (rng.random(128) < 0.8).astype(float)
    models = {"a": dense.copy(), "b": np.where(rng.random(128) < 0.5, 1 - dense, dense), "c": dense.copy()}
    r = race.Race(["a", "b", "c"], looks=2)
    split = {"t": None}
    items = lambda v: {"t": dict(enumerate(v[:64]))}  # noqa: E731
    # c answers as a does, but its per-document KL to dense is 3x a's on 15 documents: screened out by KL.
    kl = {n: {str(j): f * (1 + j / 10) for j in range(15)} for n, f in (("a", 0.1), ("b", 0.1), ("c", 0.3))}
    r.look(1, items(dense), {n: items(v) for n, v in models.items()}, list(split), kl=kl)
    return {
        "target": {"what": "TCr", "value": 0.8125, "tolerance": 0.02},
        "model": "synthetic",
        "benchmark": "made up",
        "seed": 0,
        "chunk": 64,
        "space": {},
        "candidates": [
            {"name": "a", "tcr": 0.8125, "bits_per_weight": 4.3, "bits_source": "measured scales"},
            {"name": "b", "tcr": 0.8125, "bits_per_weight": 3.2, "bits_source": "estimated"},
            {"name": "c", "tcr": 0.8125, "bits_per_weight": 4.6, "bits_source": "estimated"},
        ],
        "excluded": [{"name": "c", "why": "not expressible: nf4 is 4-bit only"}],
        "race": r.to_dict(),
        "items": {"race": 192 + 45, "kl": 45, "grid": 3 * 128, "share": 237 / 384},
        "seconds": {"compress": 1.0, "eval": 2.0},
    }


def test_budget_records_and_the_w_and_b_run(tmp_path):
    """budget.md, the plot and the W&B run (offline: a W&B server cannot exist here) from a race's state."""
    from jcexp import budget
    from jcexp.tracking import WandbTracker

    state = budget.write_outputs(tmp_path, _synthetic_state())
    text = (tmp_path / "budget.md").read_text()
    assert "**Claim: a wins**" in text and "below a at round 1" in text and "nf4 is 4-bit only" in text
    # The screen's verdict, its interval of KL / the KL leader's, and what the screened-out claim is about.
    assert "among the candidates the KL screen kept" in text and "a claim about KL, not Sr): c." in text
    assert "screened out: screened out by KL at round 1: KL to dense [" in text and "| 3.00 [" in text
    assert state["race"]["standings"]["c"]["verdict"] == "screened out"
    assert (
        "45 of the race's" in text and "The first round screens on each candidate's per-document KL" in text
    )
    # b: fewer bits, lower Sr; a: more bits, higher Sr (c: a's Sr, more bits)
    assert state["frontier"] == ["b", "a"]
    assert (tmp_path / "budget.png").stat().st_size > 0
    logged = WandbTracker(mode="offline", dir=str(tmp_path / "wandb"), group="g").log_budget(
        state, tmp_path / "budget.png", name="budget_g"
    )
    assert logged["status"] == "logged", logged
    assert json.loads((tmp_path / "budget.json").read_text())["race"]["winner"] == "a"
