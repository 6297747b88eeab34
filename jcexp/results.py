"""The per-run result record: config hash, atomic write, and the lookups that make a rerun resume."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
SCHEMA_VERSION = 1
# Keys that name or place a run but do not change what it computes.
_NOT_IN_HASH = ("paths", "logger", "run_name", "tags", "threads", "hydra", "cache_pruned")


def effective_config(cfg: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in cfg.items() if k not in _NOT_IN_HASH}
    # The opt-in error analysis adds measurements, not a different model: while it is off, results keep the
    # hash they had before it existed, so stored results stay reusable.
    if not (out.get("errors") or {}).get("enabled"):
        out.pop("errors", None)
    return out


def config_hash(cfg: dict[str, Any]) -> str:
    blob = json.dumps(effective_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The parsed file, or None when it is missing or unreadable (a corrupt entry is never used)."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def complete_result(path: str | Path, expected_hash: str) -> dict[str, Any] | None:
    data = read_json(path)
    if data and data.get("status") == "complete" and data.get("config_hash") == expected_hash:
        return data
    return None


# A stable index of finished results, keyed by config hash only. Hydra gives every launch a new run or sweep
# directory, so "same directory" cannot be how a rerun recognises finished work.
def index_path(cache_dir: str | Path, chash: str) -> Path:
    return Path(cache_dir) / "results" / f"{chash}.json"


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
    chash = task_config_hash(cfg)
    return complete_result(index_path(cfg.paths.cache_dir, chash), chash)


def reuse_result(stored: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Copy a finished result into a new run directory, saying where it was computed."""
    result = dict(stored)
    result["resumed_from"] = stored.get("resumed_from") or stored.get("run_dir")
    result["run_dir"] = str(run_dir)
    atomic_write_json(Path(run_dir) / RESULT_FILE, result)
    return result


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive flock: concurrent sweep jobs wait for one another instead of computing the same cache
    entry twice. The kernel drops it when the holder dies, so a killed job never leaves it stuck."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
