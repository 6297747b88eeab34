"""Paper-style tables and the verdict from a directory of result.json files (a sweep, or any tree of runs).

    python -m jcexp.report <sweep_dir>

Writes ``report.md`` and ``report.csv`` into the directory. Works on a partial sweep: points without a
complete result are listed as missing. Reads results only: no torch, no W&B.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jcexp import metrics
from jcexp.results import RESULT_FILE, read_json

FAILURE_FILE = "failure.json"


def collect(root: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Complete results under ``root``, and the run directories that have none (failed or unfinished)."""
    results, missing = [], []
    for path in sorted(Path(root).rglob(RESULT_FILE)):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            missing.append(str(path.parent))
            continue
        if data.get("status") == "complete":
            results.append(data)
        else:
            missing.append(str(path.parent))
    has_result = {str(p.parent) for p in Path(root).rglob(RESULT_FILE)}
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


def stage_counts(results: list[dict[str, Any]]) -> dict[str, int]:
    """How much work this sweep did versus reused: the prune-once and resume guarantees, counted."""
    counts = dict.fromkeys(
        (
            "results_reused",
            "baseline_evaluated",
            "baseline_reused",
            "prune_ran",
            "prune_reused",
            "quantize_ran",
            "eval_ran",
        ),
        0,
    )
    for r in results:
        if r.get("resumed_from"):
            counts["results_reused"] += 1
            continue
        stages = r.get("stages", {})
        counts["baseline_reused" if (r.get("baseline") or {}).get("reused") else "baseline_evaluated"] += 1
        cache = r.get("prune_cache")
        if cache and cache.get("reused"):
            counts["prune_reused"] += 1
        elif "prune" in stages:
            counts["prune_ran"] += 1
        counts["quantize_ran"] += "quantize" in stages
        counts["eval_ran"] += "eval" in stages
    return counts


def point(result: dict[str, Any]) -> tuple[float, str | None, int]:
    """(sparsity %, mask, bits) of a run, as compressed."""
    p, q = result["compression"]["pruner"], result["compression"]["quant"]
    return float(p.get("sparsity") or 0.0), p.get("mask"), int(q.get("bits") or 16)


DEFAULT_METHODS = ("sparsegpt", "gptq", "none", None)


def label(result: dict[str, Any]) -> str:
    """'25% 4bit', with the method named when it is not the paper's (SparseGPT -> GPTQ, Case A)."""
    s, mask, bits = point(result)
    p, q = result["compression"]["pruner"], result["compression"]["quant"]
    prune = mask or (f"{s:g}%" if s else "")
    quant = f"{bits}bit" if bits < 16 else ""
    methods = [m for m in (p.get("name"), q.get("name")) if m not in DEFAULT_METHODS]
    if q.get("case") == "B":
        methods.append("case B")
    base = " ".join(x for x in (prune, quant) if x) or "dense"
    return f"{base} ({', '.join(methods)})" if methods else base


def _fmt(x: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x * scale:.{digits}f}"


def tcr_table(results: list[dict[str, Any]]) -> list[str]:
    """Table I for the sparsities and bit widths this sweep covers (16 bit and 0% always included)."""
    sparsities = sorted({0.0, *(point(r)[0] for r in results)})
    bits = sorted({16, *(point(r)[2] for r in results)}, reverse=True)
    lines = ["| Quant. \\ Pruning | " + " | ".join(f"{s:g}%" for s in sparsities) + " |"]
    lines.append("|---" * (len(sparsities) + 1) + "|")
    for b in bits:
        lines.append(
            f"| {b} bit | " + " | ".join(f"{100 * metrics.tcr(s, b):.4g}%" for s in sparsities) + " |"
        )
    return lines


def score_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(results, key=lambda r: (r["model"]["name"], -metrics.tcr(*_sb(r)), label(r))):
        row = {"model": r["model"]["name"], "config": label(r), "tcr": r["metrics"]["tcr"]}
        for task, t in r["tasks"].items():
            row[task] = t["value"]
            row[f"{task}_stderr"] = t["stderr"]
        for task, t in r.get("perplexity", {}).items():
            row[task] = t["value"]
        row.update(
            sr=r["metrics"]["sr"],
            sr1=r["metrics"]["sr1"],
            srcr=r["metrics"]["srcr"],
            sparsity_measured=r["measured"]["sparsity"]["final"],
            run_dir=r["run_dir"],
        )
        rows.append(row)
    return rows


def with_errors(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that recorded the error analysis (``errors.enabled``)."""
    return [r for r in results if (r["measured"].get("errors") or {}).get("stages")]


def error_lines(results: list[dict[str, Any]]) -> list[str]:
    """Runs with ``errors.enabled``: pooled relative layer error per stage, and E_A/E_B beside eq. 7's 1/(1-p)."""
    runs = with_errors(results)
    if not runs:
        return []
    md = [
        "## Layer reconstruction errors (eqs. 2-9)",
        "",
        "||WX - W^X||² summed over layers, relative to ||WX||², on the dense model's calibration inputs. "
        "prune and quant are against each stage's input, total against the dense model.",
        "",
        "| model | config | prune | quant | total | E_A/E_B pooled | E_A/E_B layer median [min, max] | "
        "eq. 7 first order 1/(1-p) |",
        "|---" * 8 + "|",
    ]
    for r in sorted(runs, key=lambda r: (r["model"]["name"], _sb(r), label(r))):
        e = r["measured"]["errors"]
        st, c = e["stages"], e.get("case_ratio")
        rel = [_fmt((st.get(k) or {}).get("rel"), 1, 5) for k in ("prune", "quant", "total")]
        ratio = (
            [
                _fmt(c["pooled"]),
                f"{_fmt(c['layer_median'])} [{_fmt(c['layer_min'])}, {_fmt(c['layer_max'])}]",
                _fmt(c["first_order"]),
            ]
            if c
            else ["", "", ""]
        )
        md.append("| " + " | ".join([r["model"]["name"], label(r), *rel, *ratio]) + " |")
    return [*md, ""]


def _sb(r: dict[str, Any]) -> tuple[float, int]:
    s, _, b = point(r)
    return s, b


def verdict(results: list[dict[str, Any]]) -> list[str]:
    """The paper's question on this sweep's data: at each TCr where both exist, does joint compression retain
    more than quantization alone, and by how many points of Sr?"""
    lines = []
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_model.setdefault(r["model"]["name"], []).append(r)
    for model, runs in sorted(by_model.items()):
        quant_only = {round(r["metrics"]["tcr"], 6): r for r in runs if _sb(r)[0] == 0 and _sb(r)[1] < 16}
        joint = [r for r in runs if _sb(r)[0] > 0 and _sb(r)[1] < 16]
        for j in sorted(joint, key=lambda r: r["metrics"]["tcr"]):
            q = quant_only.get(round(j["metrics"]["tcr"], 6))
            if q is None or j["metrics"]["sr"] is None or q["metrics"]["sr"] is None:
                continue
            gain = 100 * (j["metrics"]["sr"] - q["metrics"]["sr"])
            word = "retains more than" if gain > 0 else "retains less than" if gain < 0 else "ties"
            lines.append(
                f"- {model}, TCr {100 * j['metrics']['tcr']:.4g}%: {label(j)} (Sr {j['metrics']['sr']:.3f}) "
                f"{word} {label(q)} (Sr {q['metrics']['sr']:.3f}) by {gain:+.1f} points of Sr"
            )
    return lines or ["- no TCr has both a joint and a quantization-only point in this sweep"]


@dataclass
class Report:
    """What write_report produced: the files, and the tables the W&B summary run carries."""

    markdown: Path
    csv: Path
    plots: list[Path]
    rows: list[dict[str, Any]]
    tcr_table: list[str]
    verdict: list[str]
    counts: dict[str, int]
    failures: list[dict[str, Any]]
    missing: list[str]


def write_report(root: str | Path) -> Report:
    from jcexp.plots import write_plots

    root = Path(root)
    results, missing = collect(root)
    failures = collect_failures(root)
    failed_dirs = {str(Path(f["record"]).parent) for f in failures}
    missing = [m for m in missing if m not in failed_dirs]
    rows = score_rows(results)
    tasks = sorted({t for r in results for t in r["tasks"]})
    ppl = sorted({t for r in results for t in r.get("perplexity", {})})
    counts = stage_counts(results)
    table_i = tcr_table(results)
    verdict_lines = verdict(results)
    plots = write_plots(results, root / "plots") if results else []
    md = [
        f"# jcexp report: {root}",
        "",
        f"{len(results)} complete run(s), {len(failures)} failed, {len(missing)} missing.",
        "",
    ]
    md += ["## Theoretical compression rate (Table I)", "", *table_i, ""]
    md += ["## Scores (x100, ± stderr), retention and SrCr", ""]
    head = ["model", "config", "TCr", *tasks, *ppl, "Sr", "Sr1", "SrCr", "measured sparsity"]
    md += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in rows:
        cells = [row["model"], row["config"], f"{100 * row['tcr']:.4g}%"]
        cells += [f"{_fmt(row.get(t), 100, 1)} ± {_fmt(row.get(f'{t}_stderr'), 100, 1)}" for t in tasks]
        cells += [_fmt(row.get(t), 1, 2) for t in ppl]
        cells += [
            _fmt(row["sr"]),
            _fmt(row["sr1"]),
            _fmt(row["srcr"]),
            _fmt(row["sparsity_measured"], 100, 2) + "%",
        ]
        md.append("| " + " | ".join(cells) + " |")
    md += ["", "## Verdict: joint vs quantization-only at equal TCr", "", *verdict_lines, ""]
    md += [
        "## Work done vs reused",
        "",
        f"- results reused from earlier launches (same config hash): {counts['results_reused']}",
        f"- dense baseline: evaluated {counts['baseline_evaluated']}, reused {counts['baseline_reused']}",
        f"- prune (SparseGPT/Wanda): ran {counts['prune_ran']}, reused from cache {counts['prune_reused']}",
        f"- quantize: ran {counts['quantize_ran']}",
        f"- compressed-model evaluations: ran {counts['eval_ran']}",
        "",
    ]
    md += error_lines(results)
    if plots:
        md += ["## Plots", "", *(f"![{p.stem}]({p.relative_to(root)})" for p in plots), ""]
    if failures:
        md += [
            "## Failed points",
            "",
            *(f"- {f['point']}: {f['cause']} ({f['record']})" for f in failures),
            "",
        ]
    if missing:
        md += ["## Missing points (no result, no failure record)", "", *(f"- {m}" for m in missing), ""]
    (root / "report.md").write_text("\n".join(md))
    with open(root / "report.csv", "w", newline="") as fh:
        fields = sorted(
            {k for row in rows for k in row}, key=lambda k: (k not in ("model", "config", "tcr"), k)
        )
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return Report(
        markdown=root / "report.md",
        csv=root / "report.csv",
        plots=plots,
        rows=rows,
        tcr_table=table_i,
        verdict=verdict_lines,
        counts=counts,
        failures=failures,
        missing=missing,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir")
    args = parser.parse_args(argv)
    print(write_report(args.sweep_dir).markdown)


if __name__ == "__main__":
    main()
