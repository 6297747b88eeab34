"""Paper-style tables and the verdict from a directory of result.json files (a sweep, or any tree of runs).

    python -m jcexp.report <sweep_dir>

Writes ``report.md`` and ``report.csv`` into the directory. Works on a partial sweep: points without a
complete result are listed as missing. Reads results only: no torch, no W&B.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jcexp import metrics
from jcexp.plots import write_plots
from jcexp.records import (
    by_model,
    collect_failures,
    is_joint,
    is_quant_only,
    label,
    model_of,
    point,
    read_sweep,
    sr_of,
    srcr_of,
    tcr_key,
    tcr_of,
    with_errors,
)

# collect_failures lived here before jcexp.records: it stays importable from the report.
__all__ = ["Report", "collect_failures", "main", "write_report"]


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
    for r in sorted(results, key=lambda r: (model_of(r), -metrics.tcr(*_sb(r)), label(r))):
        row = {"model": model_of(r), "config": label(r), "tcr": tcr_of(r)}
        for task, t in r["tasks"].items():
            row[task] = t["value"]
            row[f"{task}_stderr"] = t["stderr"]
        for task, t in r.get("perplexity", {}).items():
            row[task] = t["value"]
        row.update(
            sr=sr_of(r),
            sr1=r["metrics"]["sr1"],
            srcr=srcr_of(r),
            # What pruning removed (old results have only the final zeros, rounding zeros included).
            sparsity_measured=r["measured"]["sparsity"].get("pruned", r["measured"]["sparsity"]["final"]),
            zeros_final=r["measured"]["sparsity"]["final"],
            run_dir=r["run_dir"],
        )
        rows.append(row)
    return rows


def error_lines(results: list[dict[str, Any]]) -> list[str]:
    """Runs with ``errors.enabled``: pooled relative layer error per stage, and the measured Case A / Case B
    output-error ratio (the counterpart of eq. 7's E_A/E_B, not its per-column weight-space E_j)."""
    runs = with_errors(results)
    if not runs:
        return []
    md = [
        "## Layer reconstruction errors (eqs. 2-9)",
        "",
        "||WX - W^X||² summed over layers, relative to ||WX||², on the dense model's calibration inputs. "
        "prune and quant are against each stage's input, total against the dense model. "
        "A/B: Case A's quantization output error over Case B's, from the same pruned weights on the same inputs, "
        "summed over layers (pooled) or per layer. It is the output-space counterpart of eq. 7's E_A/E_B, not "
        "the paper's per-column weight-space E_j; eq. 7's firm claim is the limit A/B -> 1 as p -> 0.",
        "",
        "| model | config | prune | quant | total | A/B pooled | A/B layer median [min, max] |",
        "|---" * 7 + "|",
    ]
    for r in sorted(runs, key=lambda r: (model_of(r), _sb(r), label(r))):
        e = r["measured"]["errors"]
        st, c = e["stages"], e.get("case_ratio")
        rel = [_fmt((st.get(k) or {}).get("rel"), 1, 5) for k in ("prune", "quant", "total")]
        ratio = (
            [
                _fmt(c["pooled"]),
                f"{_fmt(c['layer_median'])} [{_fmt(c['layer_min'])}, {_fmt(c['layer_max'])}]",
            ]
            if c
            else ["", ""]
        )
        md.append("| " + " | ".join([model_of(r), label(r), *rel, *ratio]) + " |")
    return [*md, ""]


def _sb(r: dict[str, Any]) -> tuple[float, int]:
    s, _, b = point(r)
    return s, b


def verdict(results: list[dict[str, Any]]) -> list[str]:
    """The paper's question on this sweep's data: at each TCr where both exist, does joint compression retain
    more than quantization alone, and by how many points of Sr?"""
    lines = []
    for model, runs in by_model(results).items():
        quant_only = {tcr_key(r): r for r in runs if is_quant_only(r)}
        for j in sorted(filter(is_joint, runs), key=tcr_of):
            q = quant_only.get(tcr_key(j))
            if q is None or sr_of(j) is None or sr_of(q) is None:
                continue
            gain = 100 * (sr_of(j) - sr_of(q))
            word = "retains more than" if gain > 0 else "retains less than" if gain < 0 else "ties"
            lines.append(
                f"- {model}, TCr {100 * tcr_of(j):.4g}%: {label(j)} (Sr {sr_of(j):.3f}) "
                f"{word} {label(q)} (Sr {sr_of(q):.3f}) by {gain:+.1f} points of Sr"
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
    root = Path(root)
    sweep = read_sweep(root)
    results, failures, missing = sweep.results, sweep.failures, sweep.missing
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
