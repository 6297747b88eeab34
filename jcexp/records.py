"""The records of a sweep, and what the report and the plots say about one run.

Reading: the complete ``result.json`` files under a directory, the ``failure.json`` records of points that
left no result, and the run directories that left neither. About one run: its point (sparsity, mask, bits),
its label in tables and plots ("25% 4bit", "2:8 3bit (rtn)"), which kind of compression it is (pruning only,
quantization only, joint; dense is none of them) and its recorded TCr, Sr and SrCr.

jcexp.report (tables) and jcexp.plots (figures) both read runs through this module and never through each
other. Reads files only: no torch, no W&B, no matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jcexp.results import RESULT_FILE, read_json

FAILURE_FILE = "failure.json"

Result = dict[str, Any]


# Reading a sweep directory.


def collect(root: str | Path) -> tuple[list[Result], list[str]]:
    """Complete results under ``root``, and the run directories that have none (failed or unfinished)."""
    results, missing = [], []
    result_files = sorted(Path(root).rglob(RESULT_FILE))
    for path in result_files:
        data = read_json(path)
        if data and data.get("status") == "complete":
            results.append(data)
        else:
            missing.append(str(path.parent))
    has_result = {str(p.parent) for p in result_files}
    for marker in (".hydra", FAILURE_FILE):
        for found in sorted(Path(root).rglob(marker)):
            run = str(found.parent)
            if run not in has_result and run not in missing:
                missing.append(run)
    return results, missing


def collect_failures(root: str | Path) -> list[dict[str, Any]]:
    """Points that left a failure.json (the worker's traceback or the launcher's exit cause) and no result."""
    failures = []
    for record in sorted(Path(root).rglob(FAILURE_FILE)):
        if (record.parent / RESULT_FILE).exists():
            continue
        data = read_json(record) or {}
        failures.append(
            {
                "point": ",".join(data.get("overrides") or []) or record.parent.name,
                "cause": data.get("cause", "unknown"),
                "record": str(record),
            }
        )
    return failures


@dataclass(frozen=True)
class Sweep:
    """A sweep directory as read: complete results, failed points, and run directories with neither."""

    results: list[Result]
    failures: list[dict[str, Any]]
    missing: list[str]


def read_sweep(root: str | Path) -> Sweep:
    results, missing = collect(root)
    failures = collect_failures(root)
    failed_dirs = {str(Path(f["record"]).parent) for f in failures}
    return Sweep(results, failures, [m for m in missing if m not in failed_dirs])


# One run: its point, its kind, its label.


def point(result: Result) -> tuple[float, str | None, int]:
    """(sparsity %, mask, bits) of a run, as compressed."""
    p, q = result["compression"]["pruner"], result["compression"]["quant"]
    return float(p.get("sparsity") or 0.0), p.get("mask"), int(q.get("bits") or 16)


def is_pruning_only(result: Result) -> bool:
    s, _, b = point(result)
    return s > 0 and b == 16


def is_quant_only(result: Result) -> bool:
    s, _, b = point(result)
    return s == 0 and b < 16


def is_joint(result: Result) -> bool:
    s, _, b = point(result)
    return s > 0 and b < 16


DEFAULT_METHODS = ("sparsegpt", "gptq", "none", None)


# What a label says of GPTQ's case after pruning; the paper's own (B, its tool's) goes unnamed.
CASE_NAMES = {"A": "case A", "joint": "joint mode"}


def method_names(result: Result) -> list[str]:
    """The methods a label names: those that are not the paper's (SparseGPT -> GPTQ in Case B)."""
    p, q = result["compression"]["pruner"], result["compression"]["quant"]
    names = [m for m in (p.get("name"), q.get("name")) if m not in DEFAULT_METHODS]
    case = CASE_NAMES.get(q.get("case") or "")
    return [*names, case] if case else names


def label(result: Result) -> str:
    """'25% 4bit', with the method named when it is not the paper's (SparseGPT -> GPTQ, Case B)."""
    s, mask, bits = point(result)
    prune = mask or (f"{s:g}%" if s else "")
    quant = f"{bits}bit" if bits < 16 else ""
    methods = method_names(result)
    base = " ".join(x for x in (prune, quant) if x) or "dense"
    return f"{base} ({', '.join(methods)})" if methods else base


def parse_label(text: str) -> tuple[float, str | None, int, list[str]]:
    """The inverse of ``label`` (e.g. for report.csv's config column): (sparsity %, mask, bits, method names).

    An N:M mask stands for 100·N/M percent, as the pruner records it; a percentage comes back as ``label``
    printed it (``:g``, six significant digits)."""
    base, _, methods = text.partition(" (")
    sparsity, mask, bits = 0.0, None, 16
    for word in base.split():
        if word.endswith("bit") and word[:-3].isdigit():
            bits = int(word[:-3])
        elif word.endswith("%"):
            sparsity = float(word[:-1])
        elif word.count(":") == 1 and word.replace(":", "").isdigit():
            n, m = (int(x) for x in word.split(":"))
            sparsity, mask = 100.0 * n / m, word
        elif word != "dense":
            raise ValueError(f"not a run label: {text!r}")
    return sparsity, mask, bits, methods.removesuffix(")").split(", ") if methods else []


def quant_method(result: Result) -> str:
    """The quantizer as a figure's legend names it: 'gptq', 'gptq, case A'."""
    q = result["compression"]["quant"]
    case = CASE_NAMES.get(q.get("case") or "")
    return (q.get("name") or "unnamed") + (f", {case}" if case else "")


# What a run recorded.


def model_of(result: Result) -> str:
    return result["model"]["name"]


def tcr_of(result: Result) -> float:
    """The run's theoretical compression rate (a fraction), as recorded."""
    return result["metrics"]["tcr"]


def tcr_key(result: Result) -> float:
    """TCr rounded so that points at equal compression compare equal (joint vs quantization only)."""
    return round(tcr_of(result), 6)


def sr_of(result: Result) -> float | None:
    return result["metrics"]["sr"]


def srcr_of(result: Result) -> float | None:
    return result["metrics"]["srcr"]


def by_model(results: list[Result]) -> dict[str, list[Result]]:
    """The runs of each model, models in name order, runs in the order given."""
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(model_of(r), []).append(r)
    return dict(sorted(groups.items()))


def with_errors(results: list[Result]) -> list[Result]:
    """The runs that recorded the error analysis (``errors.enabled``)."""
    return [r for r in results if (r["measured"].get("errors") or {}).get("stages")]


# Per-item sidecars (jcexp/items.py): the paired intervals read them.


def items_of(result: Result) -> dict[str, Any] | None:
    """The run's per-item sidecar: beside its result.json, else where it was computed (a reused result)."""
    from jcexp import items

    for where in (result.get("run_dir"), result.get("resumed_from")):
        found = items.read(where) if where else None
        if items.complete(found):
            return found
    return None


def dense_items_of(result: Result) -> dict[str, Any] | None:
    """The dense baseline's sidecar, cached beside its baseline.json."""
    from jcexp import items

    path = (result.get("baseline") or {}).get("path")
    found = items.read(Path(path).parent) if path else None
    return found if items.complete(found) else None


def baseline_key(result: Result) -> str | None:
    """The hash of the dense baseline's key (its cache entry is named by it), wherever that cache lives."""
    base = result.get("baseline") or {}
    return base.get("key") or (Path(base["path"]).parent.name if base.get("path") else None)


def same_baseline(a: Result, b: Result) -> bool:
    """Two runs are paired when their dense baselines have the same key: the same model, items, settings and
    versions, even when they ran under different output roots (and so different cache directories)."""
    key = baseline_key(a)
    return key is not None and key == baseline_key(b)
