"""Fault injection with real processes and files: damaged cache entries are rebuilt, never used; W&B failing
at init or at write leaves result.json whole with the error recorded; a failing write never leaves a partial
result. (The SIGKILLed sweep job is in test_sweep.py; a full disk and an unwritable output dir are in the
bad-input catalog, tests/bad_inputs.py.)"""

import errno
import json
import os
from pathlib import Path

import pytest

from jcexp.results import atomic_write_json, index_path
from jcexp.run import run

from .conftest import TINY, launch


def _corrupt_weights(directory: Path) -> None:
    weights = next(directory.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # a torn write after the entry was published


def test_damaged_pruned_model_and_baseline_are_rebuilt(compose, tmp_path):
    cache = tmp_path / "cache"
    first = run(compose(*TINY, "save_model=false", "quant.bits=4", f"paths.cache_dir={cache}"))
    entry, baseline = Path(first["prune_cache"]["path"]), Path(first["baseline"]["path"])
    _corrupt_weights(entry)  # its key file is intact: only the weights are damaged
    baseline.write_text('{"key": {"model": ')  # a baseline cut off mid-write
    again = run(compose(*TINY, "save_model=false", "quant.bits=3", f"paths.cache_dir={cache}"))
    assert again["prune_cache"]["reused"] is False and "prune" in again["stages"]
    assert again["baseline"]["reused"] is False and "eval_dense" in again["stages"]
    assert json.loads(baseline.read_text())["eval"]["scores"]  # rewritten whole
    # The rebuilt entry is sound: the next bit width reuses it, with the same pruning as a fresh one.
    third = run(compose(*TINY, "save_model=false", "quant.bits=8", f"paths.cache_dir={cache}"))
    assert third["prune_cache"]["reused"] is True
    assert third["measured"]["prune"] == first["measured"]["prune"]


def test_damaged_result_index_entry_is_recomputed(compose, tmp_path):
    cache = tmp_path / "cache"
    cfg = compose(*TINY, "save_model=false", "pruner.sparsity=0", f"paths.cache_dir={cache}")
    first = run(cfg)
    index = index_path(cache, first["config_hash"])
    index.write_text(index.read_text()[:200])
    other = compose(
        *TINY,
        "save_model=false",
        "pruner.sparsity=0",
        f"paths.cache_dir={cache}",
        f"paths.root={tmp_path / 'b'}",
    )
    again = run(other)
    assert not again.get("resumed_from") and "quantize" in again["stages"]
    assert json.loads(index.read_text())["status"] == "complete"


@pytest.mark.parametrize(
    "logger_override, failure",
    [("logger.mode=bogus", "mode"), ("logger.dir=__FILE__/wandb", "")],
    ids=["invalid-mode", "unwritable-dir"],
)
def test_wandb_failure_keeps_the_result_and_reports_it(tmp_path, logger_override, failure):
    """The user's command as a real process; W&B fails at init (bad mode) or when creating its files."""
    blocker = tmp_path / "a_file"
    blocker.write_text("W&B cannot create a directory under a file")
    override = logger_override.replace("__FILE__", str(blocker))
    # Its own cache: a result stored by another test would be reused, and reuse logs nothing to W&B.
    proc = launch(
        *TINY, "save_model=false", f"paths.cache_dir={tmp_path / 'cache'}", override, outputs=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "W&B logging failed (result.json is intact)" in proc.stdout + proc.stderr
    (path,) = tmp_path.glob("runs/*/*/result.json")
    result = json.loads(path.read_text())
    assert result["status"] == "complete" and result["metrics"]["tcr"] > 0
    assert result["tracking"]["status"] == "failed" and failure in result["tracking"]["error"].lower()


def test_a_failing_write_leaves_the_old_result_and_no_partial_file(tmp_path, monkeypatch):
    """ENOSPC at fsync (a disk filling up mid-write): the previous result.json stays whole, no temp is left."""
    path = tmp_path / "result.json"
    atomic_write_json(path, {"status": "complete", "n": 1})

    def disk_full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the OS call, not our code
    with pytest.raises(OSError, match="No space left"):
        atomic_write_json(path, {"status": "complete", "n": 2, "big": "x" * 10_000})
    assert json.loads(path.read_text()) == {"status": "complete", "n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
