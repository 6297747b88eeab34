"""A timed SmolLM2 point on the GPU, beside the same point on this node's CPU and, where the vLLM environment
exists (`make vllm-env`), the same point on the GPU scored by evaluator=vllm (`make gpu-check` runs it after
tests/test_gpu.py). Writes bench/results/gpu_check.{json,md}; bench.render copies the table into
docs/performance.md ("GPU path, measured").

    python -m bench.gpu_check [--point s25_w4] [--limit 0] [--vllm auto|on|off]

Every run starts from an empty cache (the converted GGUF is shared), so each pays for its dense baseline, its
SparseGPT and its GPTQ: the ratios compare whole runs, measured in one invocation on one node.

evaluator=vllm is held to a stated tolerance against evaluator=hf on the same GPU (VLLM_TOLERANCE): the
scores of the compressed model and of the dense baseline per task, perplexity, and Sr. The two differ by
more than the engine: vLLM scores the packed W4A16 checkpoint in bfloat16 (the evaluator's dtype) with its
int4 kernel, HF the model's float32 weights with the same quantized values baked in, so items near a tie may
flip and greedy generations may part. Outside the tolerance the figures are still written, and the command
exits non-zero naming each difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import launch, table, warm_models, write

# evaluator=vllm against evaluator=hf, same point, same GPU: per task, 3 accuracy points or 2 items, whichever
# is more; perplexity within 3% (relative); Sr within 3 points.
VLLM_TOLERANCE = {"score_abs": 0.03, "score_items": 2, "ppl_rel": 0.03, "sr_abs": 0.03}


def vllm_python() -> str | None:
    """evaluator=vllm's interpreter as a run resolves it (JCEXP_VLLM_PYTHON, else .venv-vllm/bin/python), or
    None where there is none."""
    from jcexp.evaluate import resolve_python

    try:
        return resolve_python(os.environ.get("JCEXP_VLLM_PYTHON", ".venv-vllm/bin/python"))
    except FileNotFoundError:
        return None


def vllm_comparison(hf: dict[str, Any], vllm: dict[str, Any]) -> dict[str, Any]:
    """Two result.json records of one point, scored by evaluator=hf and evaluator=vllm: per task and for Sr the
    two values, their difference and the tolerance; ``disagreements`` names each difference beyond it."""
    tol = VLLM_TOLERANCE
    rows, out = [], []
    for task, row in hf["tasks"].items():
        n = (hf.get("n_samples", {}).get(task) or {}).get("effective")
        limit = max(tol["score_abs"], tol["score_items"] / n) if n else tol["score_abs"]
        for key in ("value", "baseline"):
            a, b = row[key], vllm["tasks"][task][key]
            rows.append(
                {
                    "task": task,
                    "model": "compressed" if key == "value" else "dense",
                    "hf": a,
                    "vllm": b,
                    "diff": abs(a - b),
                    "tolerance": limit,
                }
            )
    for task, row in hf["perplexity"].items():
        for key in ("value", "baseline"):
            a, b = row[key], vllm["perplexity"][task][key]
            rows.append(
                {
                    "task": task,
                    "model": "compressed" if key == "value" else "dense",
                    "hf": a,
                    "vllm": b,
                    "diff": abs(b / a - 1),
                    "tolerance": tol["ppl_rel"],
                }
            )
    sr_hf, sr_vllm = hf["metrics"]["sr"], vllm["metrics"]["sr"]
    if sr_hf is not None or sr_vllm is not None:
        diff = abs(sr_hf - sr_vllm) if None not in (sr_hf, sr_vllm) else float("inf")
        rows.append(
            {
                "task": "Sr",
                "model": "",
                "hf": sr_hf,
                "vllm": sr_vllm,
                "diff": diff,
                "tolerance": tol["sr_abs"],
            }
        )
    for r in rows:
        if not r["diff"] <= r["tolerance"] + 1e-9:  # a difference of exactly the tolerance (2 items) passes
            name = f"{r['task']} {r['model']}".strip()
            out.append(f"{name}: hf {r['hf']}, vllm {r['vllm']} (|Δ| {r['diff']:.4f} > {r['tolerance']:.4f})")
    return {"tolerance": tol, "rows": rows, "disagreements": out}


def _run(
    device: str, point: str, limit: int, root: Path, models: Path, evaluator: str = "hf"
) -> tuple[dict, dict]:
    out = root / (device if evaluator == "hf" else f"{device}-{evaluator}")
    warm_models(out / "cache", models)
    args = [f"point={point}", f"device={device}", f"evaluator={evaluator}", "logger=none", "save_model=false"]
    if limit:
        args.append(f"benchmark.limit={limit}")
    timing = launch(*args, f"paths.root={out}", f"paths.cache_dir={out / 'cache'}")
    result = json.loads(next(out.rglob("result.json")).read_text())
    stages = result["stages"]
    placed = result["placement"]["compressed_eval"]
    row = {
        "device": device,
        "evaluator": evaluator,
        "wall_s": timing["seconds"],
        **{
            f"{k}_s": v["seconds"]
            for k, v in stages.items()
            if k in ("eval_dense", "prune", "quantize", "eval")
        },
        # This process's own peak: a vLLM evaluation runs in a child process, whose memory is not counted.
        "peak_cuda_mb": max((v.get("peak_cuda_mb") or 0) for v in stages.values()) or None,
        "peak_rss_mb": result["peak_rss_mb"],
        "sr": result["metrics"]["sr"],
        "compress_on": result["placement"]["compress"],
        "eval_on": ",".join(placed["devices"])
        if "devices" in placed
        else f"{device}, {placed.get('checkpoint_format')}",
    }
    return row, result


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--point", default="s25_w4")
    parser.add_argument("--limit", type=int, default=0, help="documents per task (0: the full offline suite)")
    parser.add_argument(
        "--vllm",
        choices=("auto", "on", "off"),
        default="auto",
        help="also score the point with evaluator=vllm (auto: where the vLLM environment exists)",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench.gpu_check: no CUDA device visible; run it on a GPU node")
    python = vllm_python()
    if args.vllm == "on" and python is None:
        sys.exit("bench.gpu_check: --vllm on, but there is no vLLM environment: `make vllm-env` builds one")
    with_vllm = args.vllm != "off" and python is not None
    with tempfile.TemporaryDirectory(prefix="jcexp-gpu-check-") as tmp:
        root = Path(tmp)
        runs = [("cuda", "hf"), ("cpu", "hf"), *([("cuda", "vllm")] if with_vllm else [])]
        done = [_run(d, args.point, args.limit, root, root / "models", e) for d, e in runs]
    rows = [row for row, _ in done]
    (gpu, gpu_result), (cpu, _) = done[0], done[1]
    cols = ["device", "evaluator", "wall_s", "eval_dense_s", "prune_s", "quantize_s", "eval_s"]
    cols += ["peak_cuda_mb", "peak_rss_mb", "sr", "compress_on", "eval_on"]
    md = f"`python -m bench.gpu_check --point {args.point} --limit {args.limit}` (SmolLM2-135M, fp32)\n\n"
    md += table(rows, cols)
    md += f"\n\nCPU / GPU wall time: {cpu['wall_s'] / gpu['wall_s']:.2f}x; |ΔSr| = {abs(cpu['sr'] - gpu['sr']):.4f}"
    payload: dict[str, Any] = {"settings": vars(args), "rows": rows}
    if with_vllm:
        vllm_row, vllm_result = done[2]
        comparison = vllm_comparison(gpu_result, vllm_result)
        payload["vllm_vs_hf"] = comparison
        t = comparison["tolerance"]
        fmt = vllm_result["placement"]["compressed_eval"].get("checkpoint_format")

        def ratio(key: str) -> str:
            a, b = gpu.get(key), vllm_row.get(key)
            return f"{a / b:.2f}x" if a and b else "n/a"

        md += (
            f"\n\nevaluator=vllm against evaluator=hf on the GPU (vLLM read the {fmt} checkpoint in bfloat16, "
            f"HF the in-memory float32 model): HF / vLLM wall time {ratio('wall_s')}, compressed evaluation "
            f"{ratio('eval_s')}. Tolerance: ±{t['score_abs']} or {t['score_items']} items per task, "
            f"{t['ppl_rel']:.0%} of perplexity (relative), ±{t['sr_abs']} of Sr. The vLLM row's peak_cuda_mb is this "
            "process's only (vLLM runs in a child).\n\n"
        )
        md += table(comparison["rows"], ["task", "model", "hf", "vllm", "diff", "tolerance"])
        md += "\n\n" + (
            "Within the tolerance."
            if not comparison["disagreements"]
            else "**Outside the tolerance:** " + "; ".join(comparison["disagreements"])
        )
    else:
        reason = "--vllm off" if args.vllm == "off" else "no vLLM environment (`make vllm-env`)"
        md += f"\n\nevaluator=vllm not run: {reason}."
    write("gpu_check", payload, md)
    if with_vllm and payload["vllm_vs_hf"]["disagreements"]:
        sys.exit(
            "bench.gpu_check: evaluator=vllm and evaluator=hf disagree beyond the tolerance: "
            + "; ".join(payload["vllm_vs_hf"]["disagreements"])
        )


if __name__ == "__main__":
    main()
