"""The one keyed cache (jcexp/cache.py) that every reused artefact goes through, and the guard on the one
private llm-compressor function jcexp replaces (jcexp/compress/seam.py)."""

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from jcexp.cache import KEY_FILE, KeyedCache


def _write(text: str):
    def build(tmp: Path) -> None:
        (tmp / "payload.txt").write_text(text)

    return build


def test_entry_is_built_once_and_reused(tmp_path):
    cache = KeyedCache(tmp_path)
    entry, reused = cache.get_or_build({"a": 1}, _write("one"))
    assert not reused and (entry / "payload.txt").read_text() == "one"
    assert json.loads((entry / KEY_FILE).read_text()) == {"a": 1}
    again, reused = cache.get_or_build({"a": 1}, _write("two"))
    assert reused and again == entry and (entry / "payload.txt").read_text() == "one"
    other, reused = cache.get_or_build({"a": 2}, _write("two"))
    assert not reused and other != entry


def test_damaged_or_foreign_entries_are_rebuilt_never_used(tmp_path):
    cache = KeyedCache(tmp_path)
    entry, _ = cache.get_or_build({"a": 1}, _write("one"))

    def check(e: Path) -> str | None:
        return None if (e / "payload.txt").read_text() == "one" else "payload damaged"

    (entry / "payload.txt").write_text("torn")
    _, reused = cache.get_or_build({"a": 1}, _write("one"), check=check)
    assert not reused and (entry / "payload.txt").read_text() == "one"
    (entry / KEY_FILE).write_text(json.dumps({"a": 99}))  # another key's files under this name
    assert cache.lookup({"a": 1}) is None
    _, reused = cache.get_or_build({"a": 1}, _write("one"))
    assert not reused and json.loads((entry / KEY_FILE).read_text()) == {"a": 1}


def test_a_build_that_fails_leaves_nothing_behind(tmp_path):
    cache = KeyedCache(tmp_path)

    def crash(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        cache.get_or_build({"a": 1}, crash)
    assert cache.lookup({"a": 1}) is None
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def _slow_build(root: str, log: str) -> None:
    def build(tmp: Path) -> None:
        with open(log, "a") as fh:
            fh.write("built\n")
        time.sleep(1.0)
        (tmp / "payload.txt").write_text("done")

    KeyedCache(root).get_or_build({"k": "shared"}, build)


def test_concurrent_processes_build_an_entry_once(tmp_path):
    log = tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_slow_build, args=(str(tmp_path / "c"), str(log))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert log.read_text().count("built") == 1


def test_result_index_goes_through_the_keyed_cache(tmp_path):
    from jcexp.results import index_path, index_result, indexed_result

    result = {"status": "complete", "config_hash": "abc123", "run_dir": "x"}
    index_result(tmp_path, result)
    assert indexed_result(tmp_path, "abc123") == result
    index_path(tmp_path, "abc123").write_text('{"status": "compl')  # torn after publishing
    assert indexed_result(tmp_path, "abc123") is None


def test_seam_guard_names_a_different_llmcompressor(monkeypatch):
    from jcexp.compress import seam

    assert seam.seam_problem() is None  # the pinned version is installed
    monkeypatch.setattr(seam, "version", lambda _pkg: "0.15.0")
    assert "llm-compressor 0.15.0 is installed" in seam.seam_problem()
    with pytest.raises(RuntimeError, match="0.15.0"), seam.sweep_replaced_by(lambda *a: None):
        pass


def test_seam_guard_names_a_changed_sweep_signature(monkeypatch):
    from llmcompressor.modifiers.gptq import base

    from jcexp.compress import seam

    monkeypatch.setattr(base, "quantize_weight", lambda weights, hessians, quant_args: None)
    assert "jcexp's sweep expects" in seam.seam_problem()


def test_case_b_is_refused_before_compute_when_the_seam_moved(compose, monkeypatch):
    from jcexp.compress import seam
    from jcexp.config import ConfigError
    from jcexp.plan import Plan

    from .conftest import TINY

    monkeypatch.setattr(seam, "version", lambda _pkg: "0.15.0")
    with pytest.raises(ConfigError, match="port jcexp/compress/seam.py"):
        Plan(compose(*TINY, "quant.case=B"))
    Plan(compose(*TINY, "quant.case=A"))  # stock GPTQ does not use the seam
