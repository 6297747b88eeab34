"""The per-run result record: config hash, atomic write, and the lookups that make a rerun resume."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

RESULT_FILE = "result.json"
SCHEMA_VERSION = 1
# Keys that name or place a run but do not change what it computes.
_NOT_IN_HASH = ("paths", "logger", "run_name", "tags", "threads", "hydra", "cache_pruned")


def effective_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in _NOT_IN_HASH}


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
