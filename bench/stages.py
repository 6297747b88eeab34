"""Stage costs on SmolLM2-135M: load, calibration forward, SparseGPT, GPTQ and evaluation, in seconds and peak
RSS, and how they scale with calibration tokens and evaluation size.

    python -m bench.stages [--sizes 16x256,64x512] [--limits 50,100]

Each (calibration size, limit) pair is one jcexp run with fresh caches; its per-stage records come from
result.json (jcexp.measure.Meter). The calibration forward (what SparseGPT and GPTQ spend capturing
layer inputs, without the solves) is timed separately: one no-grad forward over the calibration windows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import launch, results_under, table, warm_models, write
from bench.overhead import checkpoint_dir

STAGES = ("load", "calibration_data", "eval_dense", "prune", "quantize", "eval")


def calibration_forward(model_dir: Path, samples: int, seq_len: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jcexp.data import LocalProseCalibration

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor(
        LocalProseCalibration("local", samples, seq_len, 0, {}).dataset(tokenizer)["input_ids"]
    )
    start = time.perf_counter()
    with torch.no_grad():
        for row in ids:  # one window at a time, as llm-compressor's calibration loop feeds them
            model(input_ids=row[None], use_cache=False)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="16x256,64x512", help="calibration samples x tokens, one run each")
    parser.add_argument("--limits", default="50,100", help="documents per task, paired with --sizes")
    parser.add_argument(
        "--model", default="smollm2_135m", help="tiny_random: a smoke run (tests/test_bench.py)"
    )
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    limits = [int(v) for v in args.limits.split(",")]
    work = Path(tempfile.mkdtemp(prefix="jcexp-bench-stages-"))
    model_dir = checkpoint_dir(work / "warm", args.model)
    rows = []
    for i, ((samples, seq_len), limit) in enumerate(zip(sizes, limits, strict=True)):
        cache = work / f"cache{i}"
        warm_models(cache, work / "warm" / "models")
        run = launch(
            f"model={args.model}",
            f"calibration.num_samples={samples}",
            f"calibration.seq_len={seq_len}",
            f"benchmark.limit={limit}",
            "logger=none",
            f"paths.root={work / f'run{i}'}",
            f"paths.cache_dir={cache}",
        )
        (result,) = results_under(work / f"run{i}")
        docs = sum(int(n.get("effective", 0)) for n in result["n_samples"].values())
        row = {
            "calibration": f"{samples}x{seq_len}",
            "tokens": samples * seq_len,
            "eval_docs": docs,
            "calib_forward_s": round(calibration_forward(model_dir, samples, seq_len), 2),
            "run_s": run["seconds"],
            "run_peak_mb": run["peak_rss_mb"],
        }
        for stage in STAGES:
            rec = result["stages"].get(stage) or {}
            row[f"{stage}_s"] = rec.get("seconds")
            row[f"{stage}_mb"] = rec.get("peak_rss_mb")
        rows.append(row)
    cols = [
        "calibration",
        "tokens",
        "eval_docs",
        "calib_forward_s",
        *(f"{s}_s" for s in STAGES),
        "run_s",
        "run_peak_mb",
    ]
    md = (
        table(rows, cols)
        + "\n\npeak RSS per stage (MB):\n\n"
        + table(rows, ["calibration", *(f"{s}_mb" for s in STAGES)])
    )
    scaling = {}
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        scaling = {
            "tokens_ratio": b["tokens"] / a["tokens"],
            "prune_ratio": b["prune_s"] / a["prune_s"],
            "quantize_ratio": b["quantize_s"] / a["quantize_s"],
            "calib_forward_ratio": b["calib_forward_s"] / a["calib_forward_s"],
            "eval_docs_ratio": b["eval_docs"] / a["eval_docs"],
            "eval_ratio": b["eval_s"] / a["eval_s"],
        }
        md += "\n\nscaling from the first to the last row: " + ", ".join(
            f"{k} {v:.2f}" for k, v in scaling.items()
        )
    md += "\n\nsettings: SmolLM2-135M, 25% SparseGPT + 4-bit GPTQ (group 64), the offline suite, batch 8, CPU"
    write("stages", {"settings": vars(args), "rows": rows, "scaling": scaling}, md)


if __name__ == "__main__":
    main()
