"""Every stage on the real Gemma 3 270M (model=gemma3_270m), one `launch.py` run each, on one output root.

    python -m bench.gemma3_stages [--root outputs/bench_gemma3_stages] [--shared-models DIR]

What tests/test_gemma3_stages.py checks on a tiny random Gemma 3 with the same widths, here on the real weights
at a reduced scale (8 calibration windows of 128 tokens, 8 items per scored task: the timings and the measured
sparsity, bits and bytes are the point, not the scores): the measured sparsity after each stage, the bits, the
compressed-tensors checkpoint's bytes, lm_head (tied to the 262k-token embeddings) untouched, the seconds per
stage, and the preflight's estimated peak host RAM against the measured one. One run after another: each reads
the same converted model and the SparseGPT runs share the pruned-model cache.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.common import launch, table, warm_models, write

REDUCED = (
    "calibration.num_samples=8",
    "calibration.seq_len=128",
    "benchmark.limit=8",
    "logger=none",
    "save_model=true",
)
# name -> overrides; every stage jcexp has, and the paper's two N:M masks whose M divides none of Gemma's widths.
STAGES = {
    "SparseGPT 25% + GPTQ w4 (Case B)": ("quant.case=B",),
    "SparseGPT 25% + GPTQ w4 (Case A)": ("quant.case=A",),
    "SparseGPT 25% + GPTQ w4 (joint mode)": ("quant.case=joint",),
    "wanda 25% + RTN w4": ("pruner=wanda", "quant=rtn"),
    "magnitude 25% + NF4": ("pruner=magnitude", "quant=nf4"),
    "SparseGPT 25% + LLM.int8()": ("quant=llm_int8",),
    "one-pass 25% + w4": ("variant=onepass",),
    "SparseGPT 2:6 (paper layout)": ("pruner.mask=2:6", "pruner.nm_layout=paper", "quant=none"),
    "SparseGPT 1:3 (exact layout)": ("pruner.mask=1:3", "pruner.nm_layout=exact", "quant=none"),
}


def row(name: str, result: dict[str, Any], wall: float) -> dict[str, Any]:
    s, m = result["measured"]["sparsity"], result["metrics"]
    ram = result["resources"]["measured"].get("host_ram", {})
    stages = result["stages"]
    saved = result.get("saved_model") or {}
    return {
        "stage": name,
        "sparsity after prune": s.get("after_prune"),
        "sparsity at the end": s.get("after_quant"),
        "bits": result["compression"]["quant"]["bits"],
        "TCr (measured sparsity)": m.get("tcr_measured_sparsity"),
        "checkpoint": saved.get("format"),
        "checkpoint MB": round(saved.get("bytes", 0) / 2**20, 1) if saved else None,
        "lm_head untouched": result["measured"]["lm_head_unchanged"],
        "other params changed": len(result["measured"].get("uncompressed_changed", [])),
        "prune s": round(stages.get("prune", stages.get("load_pruned", {})).get("seconds", 0), 1),
        "quantize s": round(stages.get("quantize", {}).get("seconds", 0), 1),
        "eval s": round(stages["eval"]["seconds"], 1),
        "peak RSS MB (measured / preflight)": f"{ram.get('measured_mb')} / {ram.get('estimated_mb')}",
        "measured/estimated": ram.get("measured_over_estimated"),
        "wall s": round(wall, 1),
        "perplexity (dense)": (
            f"{result['perplexity']['jc_prose_ppl']['value']:.1f} "
            f"({result['perplexity']['jc_prose_ppl']['baseline']:.1f})"
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("outputs/bench_gemma3_stages"))
    parser.add_argument("--model", default="gemma3_270m", help="tiny_gemma3 checks that the script runs")
    parser.add_argument("--shared-models", type=Path, default=None, help="reuse converted models from here")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.shared_models:
        warm_models(root / "cache", args.shared_models)
    rows, raw = [], {}
    for name, overrides in STAGES.items():
        out = launch(
            f"model={args.model}",
            *REDUCED,
            *overrides,
            f"paths.root={root}",
            "hydra.run.dir=" + str(root / "runs" / _slug(name)),
        )
        result = json.loads((root / "runs" / _slug(name) / "result.json").read_text())
        rows.append(row(name, result, out["seconds"]))
        raw[name] = {"overrides": list(overrides), "wall_seconds": out["seconds"], "stages": result["stages"]}
        print(json.dumps(rows[-1]), flush=True)
    columns = list(rows[0])
    md = (
        f"`python -m bench.gemma3_stages`: model={args.model}, "
        + " ".join(REDUCED)
        + ", one run per stage, one after another.\n\n"
        + table(rows, columns)
        + "\n"
    )
    name = "gemma3_stages" if args.model == "gemma3_270m" else f"gemma3_stages_{args.model}"
    write(name, {"model": args.model, "settings": list(REDUCED), "rows": rows, "runs": raw}, md)
    print(md)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


if __name__ == "__main__":
    main()
