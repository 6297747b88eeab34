"""Shared by the benchmarks: the machine, a timed subprocess with its peak memory, and result files.

Every benchmark compares variants measured in the same invocation, on the same machine, one after another,
and reports their ratio: absolute seconds on shared 2-core machines drift by tens of percent between runs.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("JCEXP_BENCH_RESULTS", ROOT / "bench" / "results"))
LAUNCH = ROOT / "launch.py"


def machine() -> dict[str, Any]:
    import torch

    from jcexp.plan import library_versions

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": library_versions(),
    }


def timed(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> dict[str, Any]:
    """Run a command; wall seconds and the peak RSS of its whole process tree (driver plus sweep workers),
    sampled every 100 ms. Raises with the output tail if it fails."""
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    full_env.pop("JCEXP_UID", None)
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.wait(0.1):
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    done.set()
    thread.join()
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-4000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak / 2**20, 1), "output": out}


def launch(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return timed([sys.executable, str(LAUNCH), *args], env=env)


def warm_models(cache: Path, shared_models: Path) -> None:
    """A fresh cache directory that shares the converted models: the GGUF conversion is set-up, not a stage."""
    cache.mkdir(parents=True, exist_ok=True)
    shared_models.mkdir(parents=True, exist_ok=True)
    link = cache / "models"
    if not link.exists():
        link.symlink_to(shared_models.resolve(), target_is_directory=True)


def results_under(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("result.json"))]


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return "" if v is None else str(v)


def write(name: str, payload: dict[str, Any], markdown: str) -> Path:
    """bench/results/<name>.json (the figures and the machine) and <name>.md (the table printed)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    head = f"### {name}\n\n{payload['machine']['date']}, {payload['machine']['cpu']}, {payload['machine']['cores']} cores, "
    head += f"{payload['machine']['ram_gib']} GiB, GPU: {payload['machine']['gpu'] or 'none'}\n\n"
    (RESULTS / f"{name}.md").write_text(head + markdown + "\n")
    print(head + markdown, flush=True)
    return path
