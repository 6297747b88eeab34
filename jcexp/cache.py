"""One keyed cache for everything jcexp computes once and reuses: converted models, pruned models, dense
baselines and finished results.

An entry is a directory named by the hash of its key. Building one happens under an exclusive ``flock``
(concurrent sweep jobs wait, then reuse), into a temporary directory beside it, with the full key written
inside, and is published by one atomic rename. A reader trusts an entry only if the key inside equals its own
and the entry's own check passes, so a partial, foreign or damaged entry is rebuilt, never used.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jcexp.files import atomic_write_json, file_lock, key_hash, read_json

log = logging.getLogger("jcexp")

KEY_FILE = "jcexp_key.json"

# Why an entry cannot be used (None: it can); called on a published entry's directory.
Check = Callable[[Path], str | None]


class KeyedCache:
    """Entries under ``root``, one per key. ``name`` turns a key into the entry's directory name."""

    def __init__(self, root: str | Path, name: Callable[[dict[str, Any]], str] = key_hash):
        self.root = Path(root)
        self.name = name

    def path(self, key: dict[str, Any]) -> Path:
        return self.root / self.name(key)

    def lookup(self, key: dict[str, Any], check: Check | None = None) -> Path | None:
        """The entry's directory if it holds this key and passes ``check``; None otherwise. Takes no lock:
        entries are published whole by rename, so a reader never sees half of one."""
        entry = self.path(key)
        if read_json(entry / KEY_FILE) != key:
            return None
        problem = check(entry) if check else None
        if problem:
            log.warning("cache entry %s is damaged (%s): it will be rebuilt", entry, problem)
            return None
        return entry

    def get_or_build(
        self, key: dict[str, Any], build: Callable[[Path], None], check: Check | None = None
    ) -> tuple[Path, bool]:
        """(entry, reused). ``build(tmp)`` writes the entry's files into ``tmp``; it runs only when no usable
        entry exists, and at most once across concurrent processes."""
        entry = self.path(key)
        with file_lock(entry.with_name(entry.name + ".lock")):
            found = self.lookup(key, check)
            if found is not None:
                return found, True
            self._publish(key, build, entry)
            return entry, False

    def put(self, key: dict[str, Any], build: Callable[[Path], None]) -> Path:
        """Build and publish unconditionally, replacing any entry for this key (the latest result wins)."""
        entry = self.path(key)
        with file_lock(entry.with_name(entry.name + ".lock")):
            self._publish(key, build, entry)
        return entry

    def _publish(self, key: dict[str, Any], build: Callable[[Path], None], entry: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
        try:
            build(tmp)
            atomic_write_json(tmp / KEY_FILE, key)
            if entry.exists():  # stale, foreign or damaged: replaced, never used
                shutil.rmtree(entry)
            os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
