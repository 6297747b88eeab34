"""The per-run result record: config hash, atomic write, and the lookups that make a rerun resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jcexp.cache import KeyedCache
from jcexp.files import atomic_write_json, key_hash, read_json

__all__ = ["atomic_write_json", "read_json"]  # re-exported: callers write records through this module

RESULT_FILE = "result.json"
SCHEMA_VERSION = 1
# Keys that name or place a run, or check it before it starts, but do not change what it computes.
_NOT_IN_HASH = (
    "paths",
    "logger",
    "run_name",
    "tags",
    "threads",
    "hydra",
    "cache_pruned",
    "resources",
    "equivalence_margin",
)

# What an inactive stage contributes to the hash: exactly what `pruner=none` / `quant=none` compose to, so that
# every way of saying "this stage does nothing" is one experiment with one hash, and results of the `none`
# choices keep the hash they had before this canonical form existed (tests/test_experiments.py checks both).
NO_PRUNER = {
    "_target_": "jcexp.compress.Pruner",
    "name": "none",
    "sparsity": 0.0,
    "mask": None,
    "modifier": None,
    "fused": False,
}
NO_QUANT = {
    "_target_": "jcexp.compress.Quantizer",
    "name": "none",
    "bits": 16,
    "group_size": None,
    "symmetric": True,
    "case": None,
    "modifier": None,
}


# jcexp's own GPTQ sweeps (jcexp/compress/): bumped when the algorithm changes, so that results of the earlier
# one are recomputed rather than reused. 2: Case B propagates the error of pruned weights (SparseGPT's joint
# mode) and one-pass picks each N:M group's mask when its sweep reaches it (issue 11).
# 1 for Case B as llm-compressor <= 0.12 ran it (quant.case=B, issue 18); 3 for the joint mode, whose groups
# now follow static act-order as stock GPTQ's do (issue 18).
SWEEP_REVISIONS = {
    "jcexp.compress.case_b.CaseBGPTQModifier": 1,
    "jcexp.compress.joint_mode.JointModeGPTQModifier": 3,
    "jcexp.compress.one_pass.OnePassSparseGPTQModifier": 2,
}


def pruner_active(pruner: dict[str, Any]) -> bool:
    """As jcexp.compress.Pruner (the same rule, jcexp.config.prunes), or fused into the quantizer's sweep."""
    from jcexp.config import ConfigError, parse_mask, prunes

    if pruner.get("fused"):
        return True
    try:
        nm = parse_mask(pruner.get("mask"))
    except ConfigError:  # refused by check_values; hashed as written
        return pruner.get("modifier") is not None
    return prunes(pruner.get("modifier"), pruner.get("sparsity") or 0, nm)


def _masked(pruner: dict[str, Any]) -> bool:
    from jcexp.config import ConfigError, parse_mask

    try:
        return parse_mask(pruner.get("mask")) is not None
    except ConfigError:
        return True


def quant_active(quant: dict[str, Any]) -> bool:
    """As jcexp.compress.Quantizer (the same rule, jcexp.config.quantizes)."""
    from jcexp.config import quantizes

    return quantizes(quant.get("modifier"), quant.get("bits", 16))


def effective_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the hash covers: the resolved config, less what does not change the computation.

    Equal experiments hash equal: `quant=none` and `quant.bits=16` (no quantization either way), `pruner=none`
    and `pruner.sparsity=0` (no mask) are the same run, and so is any calibration setting of a run that
    compresses nothing. This canonical form changed the hash of stored results whose pruner or quantizer was
    inactive without being `none` (e.g. `quant.bits=16` points), of runs that compress nothing, and of NF4 runs
    (their backend is now resolved, conf/quant/nf4.yaml): those are recomputed once, not reused."""
    out = {k: v for k, v in cfg.items() if k not in _NOT_IN_HASH}
    # evaluator.request_chunk says what a killed evaluation keeps (its response cache), not what is computed.
    if isinstance(out.get("evaluator"), dict):
        out["evaluator"] = {k: v for k, v in out["evaluator"].items() if k != "request_chunk"}
    # The opt-in error analysis adds measurements, not a different model: while it is off, results keep the
    # hash they had before it existed, so stored results stay reusable.
    if not (out.get("errors") or {}).get("enabled"):
        out.pop("errors", None)
    # Sequential evaluation off (benchmark.ci_target unset) is the full suite every earlier result ran: those
    # keep their hash (jcexp/sequential.py).
    bench = out.get("benchmark")
    if isinstance(bench, dict) and bench.get("ci_target") is None:
        out["benchmark"] = {
            k: v
            for k, v in bench.items()
            if k not in ("ci_target", "ci_chunk", "ci_min_items", "ci_min_discordant")
        }
    pruning = "pruner" in out and pruner_active(out["pruner"])
    quantizing = "quant" in out and quant_active(out["quant"])
    if "pruner" in out and (
        not pruning or out["pruner"].get("nm_layout") == "exact" or not _masked(out["pruner"])
    ):
        # The layout changes nothing without a mask, and "exact" is what every earlier mask ran with: those
        # results keep their hash (pruner.nm_layout, jcexp/nm.py).
        out["pruner"] = {k: v for k, v in out["pruner"].items() if k != "nm_layout"}
    if "quant" in out:
        # quant.case means nothing without pruning (stock GPTQ runs): one spelling, None (config.effective_case).
        from jcexp.config import effective_case

        out["quant"] = {**out["quant"], "case": effective_case(out["quant"].get("case"), pruning)}
    if "quant" in out and quant_active(out["quant"]):
        target = (out["quant"].get("modifier") or {}).get("_target_")
        if target in SWEEP_REVISIONS:
            out["quant"] = {**out["quant"], "sweep_revision": SWEEP_REVISIONS[target]}
    if "pruner" in out and not pruning:
        out["pruner"] = dict(NO_PRUNER)
    if "quant" in out and not quantizing:
        out["quant"] = dict(NO_QUANT)
    # No stage runs: calibration data is never built (the scores are the dense model's). Error analysis reads
    # calibration windows, so with it on they stay.
    if "pruner" in out and "quant" in out and not (pruning or quantizing or "errors" in out):
        out.pop("calibration", None)
    return out


def config_hash(cfg: dict[str, Any]) -> str:
    return key_hash(effective_config(cfg))


def complete_result(path: str | Path, expected_hash: str) -> dict[str, Any] | None:
    data = read_json(path)
    if data and data.get("status") == "complete" and data.get("config_hash") == expected_hash:
        return data
    return None


# A stable index of finished results, keyed by config hash only. Hydra gives every launch a new run or sweep
# directory, so "same directory" cannot be how a rerun recognises finished work.
def _result_index(cache_dir: str | Path) -> KeyedCache:
    return KeyedCache(Path(cache_dir) / "results", name=lambda key: key["config_hash"])


def index_path(cache_dir: str | Path, chash: str) -> Path:
    """Where the index keeps the finished result of this config hash."""
    return _result_index(cache_dir).path({"config_hash": chash}) / RESULT_FILE


def indexed_result(cache_dir: str | Path, chash: str) -> dict[str, Any] | None:
    """The complete result of this config hash from any earlier launch, else None."""
    key = {"config_hash": chash}
    entry = _result_index(cache_dir).lookup(
        key, check=lambda e: None if complete_result(e / RESULT_FILE, chash) else "no complete result.json"
    )
    return None if entry is None else read_json(entry / RESULT_FILE)


def index_result(cache_dir: str | Path, result: dict[str, Any]) -> None:
    """Publish a finished result in the index (the latest one for its hash wins), with its per-item sidecar."""

    def build(tmp: Path) -> None:
        _copy_items(Path(result["run_dir"]), tmp)
        atomic_write_json(tmp / RESULT_FILE, result)

    _result_index(cache_dir).put({"config_hash": result["config_hash"]}, build)


def _copy_items(source: Path, target: Path) -> None:
    import shutil

    from jcexp.items import ITEMS_FILE

    if (source / ITEMS_FILE).is_file() and source.resolve() != target.resolve():
        shutil.copyfile(source / ITEMS_FILE, target / ITEMS_FILE)


def task_config_hash(cfg: Any) -> str:
    """The hash of a composed task config (a DictConfig, with or without its ``hydra`` node)."""
    from omegaconf import OmegaConf

    if "hydra" in cfg:  # the driver holds the full config; the worker's task config has no hydra node
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    return config_hash(resolved)


def stored_result(cfg: Any) -> dict[str, Any] | None:
    """The complete result of this config if any earlier launch finished it, else None."""
    return indexed_result(cfg.paths.cache_dir, task_config_hash(cfg))


def reuse_result(stored: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Copy a finished result into a new run directory, saying where it was computed."""
    result = dict(stored)
    result["resumed_from"] = stored.get("resumed_from") or stored.get("run_dir")
    result["run_dir"] = str(run_dir)
    cache_dir = ((stored.get("config") or {}).get("paths") or {}).get("cache_dir")
    index_dir = index_path(cache_dir, stored["config_hash"]).parent if cache_dir else None
    for source in (index_dir, Path(stored["run_dir"])):
        if source is not None and source.is_dir():
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            _copy_items(source, Path(run_dir))
            break
    atomic_write_json(Path(run_dir) / RESULT_FILE, result)
    return result
