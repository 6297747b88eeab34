"""Paper-style tables and the verdict from a directory of result.json files (a sweep, or any tree of runs).

    python -m jcexp.report <sweep_dir>
    python -m jcexp.report --compare <run A> <run B>   # Sr(A) - Sr(B) with its paired 95% interval
    python -m jcexp.report ... --margin 0.03           # the equivalence margin, in Sr (default 0.05)

Writes ``report.md`` and ``report.csv`` into the directory. Works on a partial sweep: points without a
complete result are listed as missing. Reads results only: no torch, no W&B.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jcexp import items, metrics, paired, verdicts
from jcexp.plots import write_plots
from jcexp.records import (
    by_model,
    collect_failures,
    dense_items_of,
    is_joint,
    is_quant_only,
    items_of,
    label,
    model_of,
    point,
    read_sweep,
    same_baseline,
    sr_of,
    srcr_of,
    tcr_key,
    tcr_of,
    with_errors,
)
from jcexp.results import RESULT_FILE, read_json

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
        ci = r["metrics"].get("sr_ci") or [None, None]
        row.update(
            sr=sr_of(r),
            sr_ci_lo=ci[0],
            sr_ci_hi=ci[1],
            sr1=r["metrics"]["sr1"],
            # Beside Sr, not in it: KL(dense || compressed) on the held-out prose, top-1 agreement, flips.
            **_retention_cells(r),
            srcr=srcr_of(r),
            # One configuration's SrCr is a constant times Sr: its interval is Sr's, scaled.
            srcr_ci_lo=(r["metrics"].get("srcr_ci") or [None, None])[0],
            srcr_ci_hi=(r["metrics"].get("srcr_ci") or [None, None])[1],
            # What pruning removed (old results have only the final zeros, rounding zeros included).
            sparsity_measured=r["measured"]["sparsity"].get("pruned", r["measured"]["sparsity"]["final"]),
            zeros_final=r["measured"]["sparsity"]["final"],
            tcr_measured_sparsity=r["metrics"].get("tcr_measured_sparsity"),
            # N:M: the share of the layout's full groups holding N zeros after the last stage.
            nm_groups_holding=(
                r["measured"].get("nm_after_quant") or r["measured"].get("nm_after_prune") or {}
            ).get("groups_holding"),
            run_dir=r["run_dir"],
        )
        rows.append(row)
    return rows


def _retention_cells(r: dict[str, Any]) -> dict[str, Any]:
    """result.json's distribution-level retention as flat columns (None for results written before it)."""
    ret = r.get("retention") or {}
    ci = ret.get("kld_ci") or [None, None]
    flips = (ret.get("flips") or {}).get("all") or {}
    return {
        "kld": ret.get("kld"),
        "kld_ci_lo": ci[0],
        "kld_ci_hi": ci[1],
        "top1_agreement": ret.get("top1_agreement"),
        "flips_correct_to_wrong": flips.get("correct_to_wrong"),
        "flips_wrong_to_correct": flips.get("wrong_to_correct"),
        "flip_rate": ret.get("flip_rate"),
    }


def _sig(x: float | None, digits: int = 3) -> str:
    """Significant digits: a KL spans 1e-5 (a tiny model's 8 bit) to 1 nat, where fixed decimals print 0.0000."""
    return "n/a" if x is None else f"{x:#.{digits}g}"


def _kl_cell(row: dict[str, Any]) -> str:
    if row["kld"] is None:
        return "n/a"
    ci = f" [{_sig(row['kld_ci_lo'])}, {_sig(row['kld_ci_hi'])}]" if row["kld_ci_lo"] is not None else ""
    return f"{_sig(row['kld'])}{ci}"


def _flips_cell(row: dict[str, Any]) -> str:
    if row["flip_rate"] is None:
        return "n/a"
    return f"-{row['flips_correct_to_wrong']} +{row['flips_wrong_to_correct']} ({_fmt(row['flip_rate'], 100, 1)}%)"


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


def paired_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """Sr(a) - Sr(b) with its paired bootstrap interval over the items both answered (jcexp/paired.py), or
    None when the two were not scored against the same dense baseline or lack per-item sidecars. A difference
    that cannot be computed comes back with ``ci`` None and the reason in ``undefined``."""
    if not same_baseline(a, b):
        return None
    dense, ia, ib = dense_items_of(a), items_of(a), items_of(b)
    if dense is None or ia is None or ib is None:
        return None
    return paired.difference_interval(items.scores(dense), items.scores(ia), items.scores(ib), seed=a["seed"])


@dataclass(frozen=True)
class Comparison:
    """Sr(A) - Sr(B): the word (jcexp/verdicts.py), the difference on the shared items, its interval."""

    word: str
    diff: float | None
    ci: list[float] | None
    margin: float
    why: str | None = None  # why there is no interval, or why it cannot decide (the discordance floor)

    def text(self) -> str:
        """'higher by +26.9 points of Sr (95% CI [+22.1, +31.5]; equivalence margin ±5 points of Sr)'."""
        if self.ci is None:
            gain = "" if self.diff is None else f" ({100 * self.diff:+.1f} points of Sr)"
            return f"{self.word}{gain}: no paired interval ({self.why})"
        floor = f"; {self.why}" if self.why else ""  # below the discordance floor: inconclusive, and why
        return (
            f"{self.word}: {100 * self.diff:+.1f} points of Sr, 95% CI {verdicts.points(self.ci)} "
            f"(equivalence margin {verdicts.margin_text(self.margin)}{floor})"
        )


def comparison(a: dict[str, Any], b: dict[str, Any], margin: float = verdicts.DEFAULT_MARGIN) -> Comparison:
    diff = paired_difference(a, b)
    if diff is None:
        why = (
            "per-item results missing"
            if same_baseline(a, b)
            else "not scored against the same dense baseline"
        )
        # No paired items: the recorded Sr values' difference is all there is, and no verdict is read from it.
        gain = None if sr_of(a) is None or sr_of(b) is None else sr_of(a) - sr_of(b)
        return Comparison(verdicts.UNDEFINED, gain, None, margin, why)
    if diff["ci"] is None:
        return Comparison(verdicts.UNDEFINED, diff["diff"], None, margin, diff["undefined"])
    word = verdicts.difference_word(diff["ci"], margin, discordant=diff["discordant"])
    return Comparison(word, diff["diff"], diff["ci"], margin, verdicts.below_floor(diff["discordant"]))


def _same_quantizer(joint: dict[str, Any], candidates: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The quantization-only run a joint run is judged against: the same quantizer when the sweep has it (NF4
    with NF4), else GPTQ (the cases and one-pass are GPTQ variants), else any. Without this a sweep holding
    both GPTQ and NF4 at one TCr compared against whichever came last."""
    name = joint["compression"]["quant"].get("name")
    for wanted in (name, "gptq"):
        for q in candidates:
            if q["compression"]["quant"].get("name") == wanted:
                return q
    return candidates[0] if candidates else None


def margin_of(results: list[dict[str, Any]]) -> float:
    """The equivalence margin the runs were configured with (``equivalence_margin``), else the default."""
    for r in results:
        found = (r.get("config") or {}).get("equivalence_margin")
        if found is not None:
            return float(found)
    return verdicts.DEFAULT_MARGIN


def verdict(results: list[dict[str, Any]], margin: float | None = None) -> list[str]:
    """The paper's question on this sweep's data: at each TCr where both exist, does joint compression retain
    more than quantization alone? Higher / lower / equivalent / inconclusive, from the paired interval and
    the equivalence margin (jcexp/verdicts.py)."""
    return [line for _, _, line in verdict_entries(results, margin)] or [
        "- no TCr has both a joint and a quantization-only point in this sweep"
    ]


def verdict_entries(results: list[dict[str, Any]], margin: float | None = None) -> list[tuple[str, str, str]]:
    """(key 'model/tcr_81.25', word, line) for each joint run and its quantization-only partner."""
    margin = margin_of(results) if margin is None else margin
    entries = []
    for model, runs in by_model(results).items():
        quant_only: dict[Any, list[dict[str, Any]]] = {}
        for r in runs:
            if is_quant_only(r):
                quant_only.setdefault(tcr_key(r), []).append(r)
        for j in sorted(filter(is_joint, runs), key=tcr_of):
            q = _same_quantizer(j, quant_only.get(tcr_key(j), []))
            if q is None or sr_of(j) is None or sr_of(q) is None:
                continue
            found = comparison(j, q, margin)
            line = (
                f"- {model}, TCr {100 * tcr_of(j):.4g}%: {label(j)} (Sr {sr_of(j):.3f}) against "
                f"{label(q)} (Sr {sr_of(q):.3f}): {found.text()}"
            )
            entries.append((f"{model}/tcr_{100 * tcr_of(j):.4g}/{label(j)}", found.word, line))
    return entries


# Pairs of runs at the same point (sparsity, mask, bits) that differ in one method: what each comparison names.
def run_variant(r: dict[str, Any]) -> str:
    p, q = r["compression"]["pruner"], r["compression"]["quant"]
    if p.get("fused"):
        return "one-pass"
    # A quantizer at 16 bit quantizes nothing (quant.bits=16 in a grid): the same run as quant=none.
    if (q.get("bits") or 16) >= 16:
        return "none"
    if q.get("case") in CASE_VARIANTS:
        return CASE_VARIANTS[q["case"]]
    return q.get("name") or "none"


# GPTQ's cases after pruning other than the paper's tool's (B, plain "gptq").
CASE_VARIANTS = {"A": "Case A", "joint": "joint mode"}
COMPARISONS = (
    ("Case A", "gptq", "Case A vs Case B"),
    ("joint mode", "gptq", "joint mode vs Case B"),
    ("gptq", "one-pass", "sequential vs one-pass"),
    ("gptq", "nf4", "GPTQ vs NF4"),
    ("gptq", "llm_int8", "GPTQ vs LLM.int8()"),
)


def comparison_lines(results: list[dict[str, Any]], margin: float | None = None) -> list[str]:
    """Case A and the joint mode vs Case B, one-pass vs sequential, NF4 (and LLM.int8()) vs GPTQ: each pair at
    the same point, with the paired interval of the Sr difference and its word."""
    margin = margin_of(results) if margin is None else margin
    lines = []
    for model, runs in by_model(results).items():
        at: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
        for r in runs:
            at.setdefault(point(r), {})[run_variant(r)] = r
        for _, variants in sorted(at.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])):
            for first, second, name in COMPARISONS:
                a, b = variants.get(first), variants.get(second)
                if a is None or b is None or sr_of(a) is None or sr_of(b) is None:
                    continue
                lines.append(
                    f"- {model}, {label(b)}: {name}: Sr {sr_of(a):.3f} vs {sr_of(b):.3f}, "
                    f"{comparison(a, b, margin).text()}"
                )
    return lines


def compare(a_path: str | Path, b_path: str | Path, margin: float | None = None) -> str:
    """``--compare A B``: Sr(A) - Sr(B) for two runs (run directories or result.json files)."""

    def load(path: str | Path) -> dict[str, Any]:
        path = Path(path)
        data = read_json(path / RESULT_FILE if path.is_dir() else path)
        if not data:
            raise SystemExit(f"no readable result.json at {path}")
        return data

    a, b = load(a_path), load(b_path)
    margin = margin_of([a, b]) if margin is None else margin
    if sr_of(a) is None or sr_of(b) is None:
        return f"{label(a)} vs {label(b)}: {verdicts.UNDEFINED}: Sr is undefined for one of them"
    return (
        f"{label(a)} (Sr {sr_of(a):.3f}) vs {label(b)} (Sr {sr_of(b):.3f}): {comparison(a, b, margin).text()}"
    )


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
    # The verdict's word per joint run ('model/tcr_81.25/25% 4bit' -> 'higher'), and the margin it used.
    verdict_words: dict[str, str]
    margin: float
    failures: list[dict[str, Any]]
    missing: list[str]


def write_report(root: str | Path, margin: float | None = None) -> Report:
    root = Path(root)
    sweep = read_sweep(root)
    results, failures, missing = sweep.results, sweep.failures, sweep.missing
    margin = margin_of(results) if margin is None else margin
    rows = score_rows(results)
    tasks = sorted({t for r in results for t in r["tasks"]})
    ppl = sorted({t for r in results for t in r.get("perplexity", {})})
    counts = stage_counts(results)
    table_i = tcr_table(results)
    entries = verdict_entries(results, margin)
    verdict_lines = [line for _, _, line in entries] or verdict(results, margin)
    plots = write_plots(results, root / "plots") if results else []
    md = [
        f"# jcexp report: {root}",
        "",
        f"{len(results)} complete run(s), {len(failures)} failed, {len(missing)} missing.",
        "",
    ]
    md += ["## Theoretical compression rate (Table I)", "", *table_i, ""]
    md += ["## Scores (x100, ± stderr), retention and SrCr", ""]
    md += [
        "Beside Sr (the paper's metric), not in it: KL = mean per-token KL(dense || compressed) on the held-out "
        "prose, nats (top-k bucketed: a lower bound of the full KL), 95% document-level bootstrap interval; "
        "top-1 agree = share of those tokens whose most likely next token is the dense model's; flips = items "
        "correct -> wrong (-) and wrong -> correct (+) over the scored items, and their share.",
        "",
    ]
    head = [
        "model",
        "config",
        "TCr",
        *tasks,
        *ppl,
        "Sr [95% CI]",
        "KL nats/token [95% CI]",
        "top-1 agree",
        "flips lost/gained (rate)",
        "Sr1",
        "SrCr [95% CI]",
        "pruned (measured)",
    ]
    md += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in rows:
        cells = [row["model"], row["config"], f"{100 * row['tcr']:.4g}%"]
        cells += [f"{_fmt(row.get(t), 100, 1)} ± {_fmt(row.get(f'{t}_stderr'), 100, 1)}" for t in tasks]
        cells += [_fmt(row.get(t), 1, 2) for t in ppl]
        cells += [
            _fmt(row["sr"])
            + (f" [{_fmt(row['sr_ci_lo'])}, {_fmt(row['sr_ci_hi'])}]" if row["sr_ci_lo"] is not None else ""),
            _kl_cell(row),
            _fmt(row["top1_agreement"], 100, 1) + ("%" if row["top1_agreement"] is not None else ""),
            _flips_cell(row),
            _fmt(row["sr1"]),
            _fmt(row["srcr"])
            + (
                f" [{_fmt(row['srcr_ci_lo'])}, {_fmt(row['srcr_ci_hi'])}]"
                if row["srcr_ci_lo"] is not None
                else ""
            ),
            _fmt(row["sparsity_measured"], 100, 2)
            + "%"
            + (
                f" (N:M groups {_fmt(row['nm_groups_holding'], 100, 1)}%)"
                if row["nm_groups_holding"] is not None
                else ""
            ),
        ]
        md.append("| " + " | ".join(cells) + " |")
    md += [
        "",
        "## Verdict: joint vs quantization-only at equal TCr",
        "",
        f"Paired 95% intervals of the difference in Sr; equivalence margin {verdicts.margin_text(margin)}: "
        "*equivalent* when the whole interval lies inside it, *higher*/*lower* when it excludes 0, "
        "*inconclusive* otherwise (jcexp/verdicts.py).",
        "",
        *verdict_lines,
        "",
    ]
    compared = comparison_lines(results, margin)
    if compared:
        md += ["## Paired comparisons at the same point", "", *compared, ""]
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
        verdict_words={key: word for key, word, _ in entries},
        margin=margin,
        failures=failures,
        missing=missing,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", nargs="?")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two runs: Sr(A) - Sr(B) with its CI")
    parser.add_argument(
        "--margin",
        type=float,
        default=None,
        help="equivalence margin in Sr (default: the runs' setting, 0.05)",
    )
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(*args.compare, margin=args.margin))
        return
    if not args.sweep_dir:
        parser.error("give a sweep directory, or --compare A B")
    print(write_report(args.sweep_dir, margin=args.margin).markdown)


if __name__ == "__main__":
    main()
