"""Grid cost: the 6-point sweep `pruner.sparsity=0,25,33.3 quant.bits=3,4` as one jcexp multirun (prune once
per sparsity, one dense baseline) vs the same 6 runs each on its own, with no pruned-model or baseline cache.

    python -m bench.grid [--limit 32] [--samples 16]

Both sides start from empty caches sharing only the converted model. Reports both wall times, their ratio, and
the SparseGPT runs and dense evaluations each side did (counted from the result files, not assumed).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

from bench.common import launch, results_under, table, warm_models, write
from bench.overhead import checkpoint_dir

SPARSITIES, BITS = ("0", "25", "33.3"), ("3", "4")


def _counts(results: list[dict]) -> dict[str, int]:
    return {
        "points": len(results),
        "sparsegpt_runs": sum("prune" in r["stages"] for r in results),
        "dense_evals": sum("eval_dense" in r["stages"] for r in results),
        "gptq_runs": sum("quantize" in r["stages"] for r in results),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=32, help="documents per task")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument(
        "--model", default="smollm2_135m", help="tiny_random: a smoke run (tests/test_bench.py)"
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="jcexp-bench-grid-"))
    checkpoint_dir(work / "warm", args.model)
    models = work / "warm" / "models"
    common = (
        f"model={args.model}",
        f"calibration.num_samples={args.samples}",
        f"calibration.seq_len={args.seq_len}",
        f"benchmark.limit={args.limit}",
        "logger=none",
    )

    warm_models(work / "sweep_cache", models)
    sweep = launch(
        "-m",
        f"pruner.sparsity={','.join(SPARSITIES)}",
        f"quant.bits={','.join(BITS)}",
        *common,
        f"paths.root={work / 'sweep'}",
        f"paths.cache_dir={work / 'sweep_cache'}",
    )
    separate_s, separate_peak = 0.0, 0.0
    for i, (s, b) in enumerate(itertools.product(SPARSITIES, BITS)):
        cache = work / f"alone_cache{i}"
        warm_models(cache, models)
        one = launch(
            f"pruner.sparsity={s}",
            f"quant.bits={b}",
            *common,
            "cache_pruned=false",
            f"paths.root={work / f'alone{i}'}",
            f"paths.cache_dir={cache}",
        )
        separate_s += one["seconds"]
        separate_peak = max(separate_peak, one["peak_rss_mb"])
    rows = [
        {
            "variant": "jcexp sweep (prune once, one baseline)",
            "seconds": sweep["seconds"],
            "peak_rss_mb": sweep["peak_rss_mb"],
            **_counts(results_under(work / "sweep")),
        },
        {
            "variant": "6 runs, no caches",
            "seconds": round(separate_s, 2),
            "peak_rss_mb": separate_peak,
            **_counts([r for i in range(6) for r in results_under(work / f"alone{i}")]),
        },
    ]
    ratio = rows[0]["seconds"] / rows[1]["seconds"]
    md = table(
        rows, ["variant", "seconds", "peak_rss_mb", "points", "sparsegpt_runs", "gptq_runs", "dense_evals"]
    )
    md += f"\n\nsweep / separate runs: **{ratio:.3f}** (saves {100 * (1 - ratio):.1f}% of the wall time)"
    md += f"\n\nsettings: SmolLM2-135M, calibration {args.samples}x{args.seq_len}, {args.limit} documents per task, CPU, one job at a time"
    write("grid", {"settings": vars(args), "rows": rows, "ratio": ratio}, md)


if __name__ == "__main__":
    main()
