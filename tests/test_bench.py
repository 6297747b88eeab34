"""The benchmarks run end to end (on the tiny model, into a temp dir) so that `make bench` cannot rot.
Their figures are not checked: speed is measured by bench/, never asserted by tests."""

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT


@pytest.mark.parametrize(
    "bench, args",
    [
        ("overhead", ["--limit=8", "--samples=8", "--seq-len=64"]),
        ("stages", ["--sizes=8x64,16x64", "--limits=4,8"]),
    ],
)
def test_benchmark_runs_and_writes_its_table(tmp_path, bench, args):
    env = {**os.environ, "JCEXP_BENCH_RESULTS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{bench}", "--model=tiny_random", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / f"{bench}.json").read_text())
    assert data["machine"]["cores"] and (tmp_path / f"{bench}.md").read_text().startswith(f"### {bench}")
    if bench == "overhead":
        assert data["runs"][0]["same_scores"] is True  # both sides did the same work
