"""A timed SmolLM2 point on the GPU, beside the same point on this node's CPU (`make gpu-check` runs it after
tests/test_gpu.py). Writes bench/results/gpu_check.{json,md}; bench.render copies the table into
docs/performance.md ("GPU path, measured").

    python -m bench.gpu_check [--point s25_w4] [--limit 0]

Both runs start from an empty cache (the converted GGUF is shared), so each pays for its dense baseline, its
SparseGPT and its GPTQ: the ratio compares whole runs, measured in one invocation on one node.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.common import launch, table, warm_models, write


def _run(device: str, point: str, limit: int, root: Path, models: Path) -> dict:
    out = root / device
    warm_models(out / "cache", models)
    args = [f"point={point}", f"device={device}", "logger=none", "save_model=false"]
    if limit:
        args.append(f"benchmark.limit={limit}")
    timing = launch(*args, f"paths.root={out}", f"paths.cache_dir={out / 'cache'}")
    result = json.loads(next(out.rglob("result.json")).read_text())
    stages = result["stages"]
    return {
        "device": device,
        "wall_s": timing["seconds"],
        **{
            f"{k}_s": v["seconds"]
            for k, v in stages.items()
            if k in ("eval_dense", "prune", "quantize", "eval")
        },
        "peak_cuda_mb": max((v.get("peak_cuda_mb") or 0) for v in stages.values()) or None,
        "peak_rss_mb": result["peak_rss_mb"],
        "sr": result["metrics"]["sr"],
        "compress_on": result["placement"]["compress"],
        "eval_on": ",".join(result["placement"]["compressed_eval"]["devices"]),
    }


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--point", default="s25_w4")
    parser.add_argument("--limit", type=int, default=0, help="documents per task (0: the full offline suite)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench.gpu_check: no CUDA device visible; run it on a GPU node")
    with tempfile.TemporaryDirectory(prefix="jcexp-gpu-check-") as tmp:
        root = Path(tmp)
        rows = [_run(d, args.point, args.limit, root, root / "models") for d in ("cuda", "cpu")]
    gpu, cpu = rows
    cols = ["device", "wall_s", "eval_dense_s", "prune_s", "quantize_s", "eval_s"]
    cols += ["peak_cuda_mb", "peak_rss_mb", "sr", "compress_on", "eval_on"]
    md = f"`python -m bench.gpu_check --point {args.point} --limit {args.limit}` (SmolLM2-135M, fp32)\n\n"
    md += table(rows, cols)
    md += f"\n\nCPU / GPU wall time: {cpu['wall_s'] / gpu['wall_s']:.2f}x; |ΔSr| = {abs(cpu['sr'] - gpu['sr']):.4f}"
    write("gpu_check", {"settings": vars(args), "rows": rows}, md)


if __name__ == "__main__":
    main()
