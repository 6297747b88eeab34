"""Finished results: their config hash, their atomic write, and the lookups that make a rerun resume.

What the hash covers (which spellings are one experiment) is decided with the schema, in
jcexp.config.effective_config; this module only hashes, stores and finds results.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from jcexp.cache import KeyedCache
from jcexp.config import effective_config
from jcexp.files import atomic_write_json, key_hash, read_json
from jcexp.items import ITEMS_FILE

__all__ = ["atomic_write_json", "read_json"]  # re-exported: callers write records through this module

RESULT_FILE = "result.json"
SCHEMA_VERSION = 1


def config_hash(cfg: dict[str, Any]) -> str:
    """The hash of a resolved config's effective form (jcexp.config.effective_config)."""
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
    if (source / ITEMS_FILE).is_file() and source.resolve() != target.resolve():
        shutil.copyfile(source / ITEMS_FILE, target / ITEMS_FILE)


def task_config_hash(cfg: Any) -> str:
    """The hash of a composed task config (a DictConfig, with or without its ``hydra`` node)."""
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
