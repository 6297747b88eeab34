"""Sweeps through the real jcexp_local launcher (submitit local processes) on the tiny model: grid, GPU slots,
resume by config hash, failure isolation. Nothing is mocked; a SIGKILL stands in for an OOM kill."""

import json
import os
from pathlib import Path

import pytest

from .conftest import ROOT, TINY, launch

BASE = (*TINY, "save_model=false", "device=cpu", "hydra.launcher.max_parallel=2", "hydra.launcher.poll_s=0.2")


def sweep_dirs(outputs: Path) -> list[Path]:
    return sorted(p for p in outputs.glob("multirun/*/*") if p.is_dir())


def results(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A 2x2 grid launched from outside the repo, with two fake GPU ids as slots (ids only: torch stays on CPU)."""
    out = tmp_path_factory.mktemp("grid")
    args = (
        "-m",
        *BASE,
        "pruner.sparsity=0,25",
        "quant.bits=4,16",
        "hydra.launcher.gpus=[0,1]",
        f"paths.cache_dir={out / 'cache'}",
    )
    first = launch(*args, outputs=out, cwd=out)
    second = launch(*args, outputs=out, cwd=out)
    return out, first, second


def test_grid_runs_every_point_through_submitit(grid):
    out, first, _ = grid
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = sweep_dirs(out)[0]
    runs = results(sweep)
    assert sorted((r["config"]["pruner"]["sparsity"], r["config"]["quant"]["bits"]) for r in runs) == [
        (0.0, 4),
        (0.0, 16),
        (25.0, 4),
        (25.0, 16),
    ]
    assert len(list((sweep / ".submitit").glob("*/*_submitted.pkl"))) == 4  # one submitit job per point
    # Concurrent jobs got their own slot: never two on one GPU id.
    assert {r["cuda_visible_devices"] for r in runs} == {"0", "1"}
    # ... and its share of the cores as torch threads: cores // 2 jobs at once (JCEXP_THREADS -> threads).
    assert {r["threads"] for r in runs} == {max(1, len(os.sched_getaffinity(0)) // 2)}
    # All runs of the sweep share one W&B group (offline here).
    assert len({r["tracking"]["group"] for r in runs}) == 1 and runs[0]["tracking"]["group"]


def test_grid_prunes_once_and_shares_the_baseline(grid):
    out, _, _ = grid
    runs = results(sweep_dirs(out)[0])
    assert len({r["baseline"]["path"] for r in runs}) == 1
    assert sum("prune" in r["stages"] for r in runs) == 1  # 25% pruned once for both bit widths
    md = (sweep_dirs(out)[0] / "report.md").read_text()
    assert "4 complete run(s), 0 failed, 0 missing." in md
    assert "- prune (SparseGPT/Wanda): ran 1, reused from cache 1" in md
    assert "- dense baseline: evaluated 1, reused 3" in md
    assert "| tiny_random | 25% 4bit | 81.25% |" in md
    plots = {p.name for p in (sweep_dirs(out)[0] / "plots").glob("*.png")}
    assert plots == {
        "fig1_pruning_only.png",
        "fig2_quant_only.png",
        "fig5_joint_vs_quant.png",
        "fig3_srcr.png",
        "kld.png",  # KL to the dense model and the flip rate, beside Sr (issue 26)
    }


def test_same_sweep_again_reuses_every_point_without_submitting(grid):
    out, first, second = grid
    assert second.returncode == 0, second.stderr[-3000:]
    old, new = sweep_dirs(out)
    assert old != new  # a new launch never shares a directory
    assert not (new / ".submitit").exists()  # nothing was submitted
    reused = results(new)
    assert len(reused) == 4 and all(r["resumed_from"] for r in reused)
    assert {r["config_hash"] for r in reused} == {r["config_hash"] for r in results(old)}
    assert "results reused from earlier launches (same config hash): 4" in (new / "report.md").read_text()


def test_failed_points_are_recorded_and_the_rest_finish(tmp_path):
    """Four points: one good, two raising (group size 48 does not divide 64), one SIGKILLed mid-compression
    (after pruning, inside GPTQ). The rerun reuses the good point, completes the killed one, and the two bad
    ones fail again. No result.json is ever partial."""
    killer = "tests.faults.KilledMidQuantization"
    stock = "llmcompressor.modifiers.quantization.GPTQModifier"
    args = (
        "-m",
        *BASE,
        "logger=none",
        "pruner.sparsity=25",
        "quant.bits=4",
        "quant.case=A",  # the _target_ override below runs stock GPTQ after pruning: case A
        "quant.group_size=32,48",
        f"quant.modifier._target_={stock},{killer}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    env = {"JCEXP_FAULT_ONCE": str(tmp_path / "killed-once")}
    proc = launch(*args, outputs=tmp_path, env=env)  # from the repo root, so workers can import tests.faults
    assert proc.returncode == 1
    assert "3 point(s) of the sweep failed" in proc.stderr
    sweep = sweep_dirs(tmp_path)[0]
    records = [json.loads(p.read_text()) for p in sweep.glob("*/failure.json")]

    def record(*overrides):
        return next(r for r in records if set(overrides) <= set(r["overrides"]))

    killed = record("quant.group_size=32", f"quant.modifier._target_={killer}")
    assert "died" in killed["cause"] and killed["stderr_tail"] is not None
    raised = record("quant.group_size=48", f"quant.modifier._target_={stock}")
    assert "ConfigError" in raised["cause"] and "group_size" in raised["cause"]
    assert "Traceback" in raised["traceback"]
    assert len(records) == 3 and len(results(sweep)) == 1
    for point in ("quant.group_size=48", killer):
        assert point in proc.stderr
    assert "1 complete run(s), 3 failed, 0 missing." in (sweep / "report.md").read_text()

    again = launch(*args, outputs=tmp_path, env=env)  # resume: only the failed points run again
    assert again.returncode == 1 and "2 point(s) of the sweep failed" in again.stderr
    assert (again.stdout + again.stderr).count("(complete for this config hash: reused)") == 1
    new = sweep_dirs(tmp_path)[1]
    assert len(list((new / ".submitit").glob("*/*_submitted.pkl"))) == 3
    assert len(results(new)) == 2  # the reused point and the completed killed one
    # Every result.json ever written (sweep dirs and the result index) is whole and complete.
    written = [*tmp_path.rglob("result.json"), *(tmp_path / "cache" / "results").glob("*.json")]
    assert len(written) >= 4
    for path in written:
        assert json.loads(path.read_text())["status"] == "complete", path


def test_a_bad_point_stops_the_sweep_before_any_job(tmp_path):
    proc = launch("-m", *BASE, "logger=none", "pruner.sparsity=25,150", outputs=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert "sweep not started" in proc.stderr and "pruner.sparsity=150" in proc.stderr
    assert not list(tmp_path.glob("multirun/*/*/.submitit/*"))


def test_more_parallel_jobs_than_gpus_is_refused():
    from hydra_plugins.jcexp_launcher.launcher import JcexpLocalLauncher

    assert JcexpLocalLauncher(submitit_folder="x", gpus=[0, 1], max_parallel=None)._slots() == ["0", "1"]
    assert JcexpLocalLauncher(submitit_folder="x", gpus=[], max_parallel=3)._slots() == [None] * 3
    with pytest.raises(ValueError, match="would share a GPU"):
        JcexpLocalLauncher(submitit_folder="x", gpus=[0, 1], max_parallel=3)._slots()


def test_the_default_multirun_launcher_is_jcexp_local():
    text = (ROOT / "conf" / "config.yaml").read_text()
    assert "override hydra/launcher: jcexp_local" in text


def test_the_users_grid_writes_its_report_and_plots_even_where_a_difference_is_undefined(tmp_path):
    """The grid from the README, on the tiny model: its dense scores sit near 0 on some task, so a joint vs
    quantization-only difference is undefined on many resamples. That used to raise inside the report
    ("cannot unpack non-iterable NoneType object"), leaving no report.md or plots; now the verdict says
    "undefined" with its reason, and everything is written."""
    proc = launch(
        "-m",
        *BASE,
        "logger=none",
        "pruner.sparsity=0,25,33.3",
        "quant.bits=3,4",
        f"paths.cache_dir={tmp_path / 'cache'}",
        outputs=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "writing the sweep report failed" not in proc.stderr + proc.stdout
    sweep = sweep_dirs(tmp_path)[0]
    md = (sweep / "report.md").read_text()
    assert "6 complete run(s), 0 failed, 0 missing." in md
    verdict = md.split("## Verdict")[1].split("\n## ")[0]
    lines = [line for line in verdict.splitlines() if line.startswith("- ")]
    assert len(lines) == 1  # TCr 81.25%: 25% 4bit against 3bit (the grid has no other equal-TCr pair)
    words = ("equivalent:", "higher:", "lower:", "inconclusive:", "undefined")
    assert all(any(w in line for w in words) for line in lines), lines
    assert {p.name for p in (sweep / "plots").glob("*.png")} >= {"fig2_quant_only.png", "fig3_srcr.png"}
