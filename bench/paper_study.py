"""The paper's study on one model, and its qualitative claims set beside what jcexp measured.

    python -m bench.paper_study run  --root outputs/study [overrides...]   # the five experiments (+ Case A/B, one-pass)
    python -m bench.paper_study claims --root outputs/study > docs/reproduction_claims.md

``run`` launches each experiment as a user would (``python launch.py -m experiment=...``), one after another on
one root, so the result index and the pruned-model cache are shared, and records each one's wall time.
``claims`` reads the results (no torch) and judges every claim from paired bootstrap intervals over the items
(jcexp/paired.py): a difference whose 95% interval excludes 0 in the claimed direction "holds", in the other
direction "does not hold", and one whose interval contains 0 is "within noise".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from jcexp.records import collect, label, point, sr_of, srcr_of, tcr_of
from jcexp.report import paired_difference, run_variant

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = (
    "pruning_only",
    "quantization_only",
    "joint_tcr",
    "semi_structured",
    "simple_quantizers",
    "case_ab",
    "onepass_vs_sequential",
)
TIMING_FILE = "study_timing.json"


def run_study(root: Path, overrides: list[str]) -> dict[str, Any]:
    timings = {}
    for exp in EXPERIMENTS:
        start = time.time()
        cmd = [
            sys.executable,
            str(ROOT / "launch.py"),
            "-m",
            f"experiment={exp}",
            f"paths.root={root}",
            *overrides,
        ]
        code = subprocess.call(cmd, cwd=ROOT)
        timings[exp] = {"seconds": round(time.time() - start, 1), "returncode": code}
    record = {"experiments": timings, "total_seconds": sum(t["seconds"] for t in timings.values())}
    (root / TIMING_FILE).write_text(json.dumps(record, indent=1))
    return record


# ----------------------------------------------------------------------------------------------- claims
class Study:
    """The study's results, one per config hash (an experiment reusing another's point finds the same one)."""

    def __init__(self, root: Path):
        results, _ = collect(root / "multirun")
        self.runs = {r["config_hash"]: r for r in results}.values()

    def find(
        self, sparsity: float, bits: int, variant: str, mask: str | None = None
    ) -> dict[str, Any] | None:
        for r in self.runs:
            s, m, b = point(r)
            if abs(s - sparsity) < 0.01 and m == mask and b == bits and run_variant(r) == variant:
                return r
        return None


def _sr(r: dict[str, Any] | None) -> str:
    if r is None:
        return "not run"
    ci = r["metrics"].get("sr_ci")
    text = f"Sr {sr_of(r):.3f}"
    return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _compare(a: dict[str, Any] | None, b: dict[str, Any] | None, expect: str) -> tuple[str, str]:
    """(what was measured, verdict) for the claim Sr(a) > Sr(b) (expect '>'), Sr(a) < Sr(b) ('<'), or that the
    two are about equal ('=': it holds when the interval of the difference contains 0)."""
    if a is None or b is None:
        return "a point did not run", "not measured"
    diff = paired_difference(a, b)
    gain = 100 * (sr_of(a) - sr_of(b))
    if diff is None or diff["ci"] is None:
        return f"{label(a)} {_sr(a)} vs {label(b)} {_sr(b)}: {gain:+.1f} points (no interval)", "no interval"
    lo, hi = (100 * x for x in diff["ci"])
    measured = (
        f"{label(a)} {_sr(a)} vs {label(b)} {_sr(b)}: {gain:+.1f} points, 95% CI [{lo:+.1f}, {hi:+.1f}]"
    )
    if expect == "=":
        ahead = label(a) if lo > 0 else label(b)
        return measured, "holds (within noise)" if diff["within_noise"] else f"does not hold ({ahead} ahead)"
    if diff["within_noise"]:
        return measured, "within noise"
    holds = (lo > 0) if expect == ">" else (hi < 0)
    return measured, "holds" if holds else "does not hold"


def _near_dense(r: dict[str, Any] | None) -> tuple[str, str]:
    """The claim 'about as good as dense': Sr's interval contains 1, or lies above 0.97."""
    if r is None:
        return "not run", "not measured"
    ci = r["metrics"].get("sr_ci")
    if not ci:
        return _sr(r), "no interval"
    verdict = "holds" if ci[0] <= 1.0 <= ci[1] or ci[0] >= 0.97 else "does not hold"
    return f"{label(r)} {_sr(r)}", verdict


def claims(study: Study) -> list[tuple[str, str, str, str]]:
    """(paper's claim, where, what jcexp measured, verdict)."""
    f = study.find
    rows = []

    def add(claim: str, where: str, measured_verdict: tuple[str, str]) -> None:
        rows.append((claim, where, *measured_verdict))

    add(
        "Pruning alone degrades gracefully to 33.333%: 33.333% keeps more than 50%",
        "IV-B.1, Fig. 1",
        _compare(f(33.333, 16, "none"), f(50, 16, "none"), ">"),
    )
    add("... and 50% keeps more than 75%", "Table II", _compare(f(50, 16, "none"), f(75, 16, "none"), ">"))
    add("8-bit GPTQ is near the dense model", "IV-B.1, Fig. 2", _near_dense(f(0, 8, "gptq")))
    add(
        "4 bit keeps more than 3 bit (3 bit is the critical threshold)",
        "Fig. 2",
        _compare(f(0, 4, "gptq"), f(0, 3, "gptq"), ">"),
    )
    add(
        "3 bit keeps more than 2 bit (2 bit fails)",
        "Table III",
        _compare(f(0, 3, "gptq"), f(0, 2, "gptq"), ">"),
    )
    add(
        "At TCr 50%, 8-bit quantization beats 50% pruning",
        "IV-B.1",
        _compare(f(0, 8, "gptq"), f(50, 16, "none"), ">"),
    )
    add(
        "At TCr 75%, 4-bit quantization beats 75% pruning",
        "IV-B.1",
        _compare(f(0, 4, "gptq"), f(75, 16, "none"), ">"),
    )
    add(
        "TCr 75%: 50% + 8 bit underperforms 4 bit alone",
        "IV-B.3, Fig. 5",
        _compare(f(50, 8, "gptq"), f(0, 4, "gptq"), "<"),
    )
    add(
        "TCr 81.25%: 25% + 4 bit beats 3 bit alone (by about 20 points)",
        "IV-B.3, Fig. 5 (central claim)",
        _compare(f(25, 4, "gptq"), f(0, 3, "gptq"), ">"),
    )
    add(
        "TCr 87.5%: 33.333% + 3 bit beats 2 bit alone",
        "IV-B.3, Fig. 5",
        _compare(f(33.333, 3, "gptq"), f(0, 2, "gptq"), ">"),
    )
    add(
        "GPTQ 4 bit and NF4 differ little before pruning",
        "Table IV, Fig. 4",
        _compare(f(0, 4, "gptq"), f(0, 4, "nf4"), "="),
    )
    add("... and after 25% pruning", "Table IV", _compare(f(25, 4, "gptq"), f(25, 4, "nf4"), "="))
    add(
        "GPTQ 8 bit and LLM.int8() differ little before pruning",
        "Table IV",
        _compare(f(0, 8, "gptq"), f(0, 8, "llm_int8"), "="),
    )
    add("... and after 50% pruning", "Table IV", _compare(f(50, 8, "gptq"), f(50, 8, "llm_int8"), "="))
    for bits in (16, 4, 3):
        variant = "none" if bits == 16 else "gptq"
        add(
            f"25% sparsity: 2:8 keeps at least as much as 1:4 ({bits} bit)",
            "IV-B.4, Figs. 7-8",
            _compare(f(25, bits, variant, "2:8"), f(25, bits, variant, "1:4"), ">"),
        )
    for mask in ("2:8", "1:4"):
        add(
            f"{mask} + 4 bit beats 3 bit alone at TCr 81.25%",
            "IV-B.4, Fig. 8",
            _compare(f(25, 4, "gptq", mask), f(0, 3, "gptq"), ">"),
        )
    for mask in ("2:6", "1:3"):
        add(
            f"{mask} + 3 bit beats 2 bit alone at TCr 87.5%",
            "IV-B.4, Fig. 8",
            _compare(f(33.333, 3, "gptq", mask), f(0, 2, "gptq"), ">"),
        )
        add(
            f"Rigid {mask} hurts more than unstructured 33.333% (pruning only)",
            "IV-B.4, Fig. 7",
            _compare(f(33.333, 16, "none"), f(33.333, 16, "none", mask), ">"),
        )
    add(
        "Case A approximates Case B (25% + 4 bit)",
        "III-B",
        _compare(f(25, 4, "gptq"), f(25, 4, "Case B"), "="),
    )
    add(
        "... at 33.333% + 3 bit",
        "III-B",
        _compare(f(33.333, 3, "gptq"), f(33.333, 3, "Case B"), "="),
    )
    add(
        "Open question 1: one-pass joint beats sequential (25% + 4 bit)",
        "VI",
        _compare(f(25, 4, "one-pass"), f(25, 4, "gptq"), ">"),
    )
    add("... at 33.333% + 3 bit", "VI", _compare(f(33.333, 3, "one-pass"), f(33.333, 3, "gptq"), ">"))
    return rows


def srcr_rows(study: Study) -> list[str]:
    """SrCr of each joint point beside the paper's estimate SrCr_p · SrCr_q (Fig. 6)."""
    from jcexp.metrics import srcr_estimate

    out = ["| joint point | TCr | SrCr_j | SrCr_p · SrCr_q |", "|---|---|---|---|"]
    for s, b in ((25, 4), (33.333, 3), (50, 8)):
        j, p, q = study.find(s, b, "gptq"), study.find(s, 16, "none"), study.find(0, b, "gptq")
        if j and p and q and None not in (sr_of(j), sr_of(p), sr_of(q)):
            est = srcr_estimate(sr_of(p), sr_of(q), s, b)
            out.append(f"| {label(j)} | {100 * tcr_of(j):.4g}% | {srcr_of(j):.3f} | {est:.3f} |")
    return out


def claims_markdown(root: Path) -> str:
    study = Study(root)
    md = [
        "| # | the paper's claim | where | jcexp measured (Sr [95% CI]; difference in points of Sr [95% CI]) | verdict |",
        "|---|---|---|---|---|",
    ]
    for i, (claim, where, measured, verdict) in enumerate(claims(study), 1):
        md.append(f"| {i} | {claim} | {where} | {measured} | **{verdict}** |")
    return "\n".join([*md, "", *srcr_rows(study), ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "claims"])
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "study")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every experiment (run only)")
    args = parser.parse_args(argv)
    if args.action == "run":
        print(json.dumps(run_study(args.root.resolve(), args.overrides), indent=1))
    else:
        print(claims_markdown(args.root))


if __name__ == "__main__":
    main()
