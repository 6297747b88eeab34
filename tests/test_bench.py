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


def test_budget_race_table_names_no_choice_for_an_undecided_race():
    """Issue 26: an undecided race's leader is only the highest point estimate, never reported as its choice."""
    from bench.budget_race import render

    standing = {"kl": 0.4, "sr": 0.88, "items": 256, "verdict": "no claim", "reason": "r", "why": None}
    standings = {"a": {**standing, "full_sr": 0.90, "full_sr_ci": [0.83, 0.97]}}
    row = {"tcr": 0.8125, "candidates": 2, "outcome": "not separated", "race_choice": None, "leader": "a"}
    row |= {"grid_best": "a", "standings": standings, "kl_vs_sr": {}}
    md = render({"model": "m", "machine": {"cpu": "c", "cores": 2, "date": "d"}, "rows": [row]})
    line = next(x for x in md.splitlines() if x.startswith("| 0.812"))
    assert line.split(" | ")[3:5] == ["none (no claim)", "a"]
