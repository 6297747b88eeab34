"""A timed SmolLM2 point on the GPU, beside the same point on this node's CPU and the same point on the GPU
scored by evaluator=vllm (`make gpu-check` runs it after tests/test_gpu.py). Writes
bench/results/gpu_check.{json,md}; bench.render copies the table into docs/performance.md ("GPU path,
measured").

    python -m bench.gpu_check [--point s25_w4] [--limit 0] [--vllm on|off] [--gate]

Without the vLLM environment (`make vllm-env`, or JCEXP_VLLM_PYTHON) it refuses to run, naming the checks it
would skip, unless told ``--vllm off`` (`make gpu-check SKIP_VLLM=1`): a gpu-check that passes must have
checked vLLM, or say that it did not. ``--gate`` only makes that decision (no GPU needed).

Every run starts from an empty cache (the converted GGUF is shared), so each pays for its dense baseline, its
SparseGPT and its GPTQ: the ratios compare whole runs, measured in one invocation on one node.

Agreement is counted in items: per task, for the compressed model and the dense baseline, how many items the
two runs scored differently (from each run's items.json), against CPU_GPU_TOLERANCE (CPU against GPU) and
VLLM_TOLERANCE (evaluator=vllm against evaluator=hf); perplexity within a relative bound; Sr is reported, not
bounded (it follows from the task scores). vLLM scores the packed W4A16 checkpoint in bfloat16 (the evaluator's
dtype) with its int4 kernel, HF the model's float32 weights with the same quantized values baked in, so items
near a tie may flip and greedy generations may part. Outside a tolerance the figures are still written, and
the command exits non-zero naming each difference.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import launch, table, warm_models, write

# Agreement between two runs of one point, in items, not in Sr: per task, how many items may score differently
# (the larger of a count and a share of the task's items), for the compressed model and the dense baseline;
# perplexity within a relative bound. Sr follows from the task scores and has no bound of its own: on the tiny
# suite one flipped item moves it by 0.5, so a bound in Sr was either meaningless or brittle.
# CPU against GPU (same evaluator, float32): different reduction orders in SparseGPT/GPTQ and the forward.
CPU_GPU_TOLERANCE = {"items": 1, "share": 0.02, "ppl_rel": 0.02}
# evaluator=vllm against evaluator=hf on one GPU: vLLM scores the packed W4A16 checkpoint in bfloat16.
VLLM_TOLERANCE = {"items": 2, "share": 0.03, "ppl_rel": 0.03}


def allowed_flips(n: int, tolerance: dict[str, float]) -> int:
    """Items of a task of ``n`` that may score differently: the larger of the count and the share."""
    return max(int(tolerance["items"]), math.floor(tolerance["share"] * n))


def flipped(a: dict[str, float], b: dict[str, float]) -> int:
    """Items two runs scored differently (an item only one of them has counts as different)."""
    return sum(1 for i in a.keys() | b.keys() if i not in a or i not in b or abs(a[i] - b[i]) > 1e-9)


def vllm_python() -> str | None:
    """evaluator=vllm's interpreter as a run resolves it (JCEXP_VLLM_PYTHON, else .venv-vllm/bin/python), or
    None where there is none."""
    from jcexp.evaluate import resolve_python

    try:
        return resolve_python(os.environ.get("JCEXP_VLLM_PYTHON", ".venv-vllm/bin/python"))
    except FileNotFoundError:
        return None


# What `make gpu-check` does not prove without the vLLM environment.
VLLM_CHECKS = (
    "tests/test_gpu.py::test_smollm2_point_scored_by_vllm_agrees_with_hf",
    "bench.gpu_check's evaluator=vllm run against evaluator=hf",
)


def vllm_gate(skip: bool) -> tuple[bool, str]:
    """Whether `make gpu-check` may go on, and the line that says why: without the vLLM environment it may only
    when asked to skip vLLM (SKIP_VLLM=1), and it says what it skips either way."""
    what = "; ".join(VLLM_CHECKS)
    if skip:
        return True, f"gpu-check: SKIP_VLLM=1: skipping the evaluator=vllm checks ({what})"
    python = vllm_python()
    if python is None:
        where = os.environ.get("JCEXP_VLLM_PYTHON", ".venv-vllm/bin/python")
        return False, (
            f"gpu-check: no vLLM environment ({where} is not an executable Python), so it would skip the "
            f"evaluator=vllm checks ({what}) and cannot pass: build it with `make vllm-env` (or point "
            "JCEXP_VLLM_PYTHON at a Python with vllm and lm-eval), or run `make gpu-check SKIP_VLLM=1` to check "
            "the GPU path without vLLM"
        )
    return True, f"gpu-check: vLLM environment {python}: the evaluator=vllm checks run"


def _item_scores(result: dict[str, Any], model: str) -> dict[str, dict[str, float]] | None:
    """Per task, item id -> score of a run's compressed model or its dense baseline (items.json beside each)."""
    from jcexp import items

    if model == "compressed":
        where = result.get("run_dir")
    else:
        where = (
            str(Path(result["baseline"]["path"]).parent)
            if (result.get("baseline") or {}).get("path")
            else None
        )
    found = items.read(where) if where else None
    return items.scores(found) if found and found.get("scores") else None


def comparison(
    a: dict[str, Any],
    b: dict[str, Any],
    tolerance: dict[str, float],
    labels: tuple[str, str] = ("hf", "vllm"),
) -> dict[str, Any]:
    """Two result.json records of one point (e.g. evaluator=hf and evaluator=vllm, or CPU and GPU): per task and
    model (compressed, dense) the two scores and how many items they scored differently, against
    ``allowed_flips``; per perplexity task the relative difference. Items are counted from each run's items.json
    where both have it, else from the scores (|Δ| x n: a lower bound on the flips). ``disagreements`` names each
    row beyond its tolerance."""
    la, lb = labels
    rows: list[dict[str, Any]] = []
    for model, key in (("compressed", "value"), ("dense", "baseline")):
        ia, ib = _item_scores(a, model), _item_scores(b, model)
        for task, row in a["tasks"].items():
            n = (a.get("n_samples", {}).get(task) or {}).get("effective")
            va, vb = row[key], b["tasks"][task][key]
            if ia and ib and task in ia and task in ib:
                diff, how, n = flipped(ia[task], ib[task]), "items.json", n or len(ia[task])
            else:
                diff, how = (round(abs(va - vb) * n) if n else None), "scores"
            allowed = allowed_flips(n, tolerance) if n else None
            rows.append(
                {
                    "task": task,
                    "model": model,
                    la: va,
                    lb: vb,
                    "diff": diff,
                    "tolerance": allowed,
                    "unit": f"items of {n} ({how})",
                }
            )
        for task, row in a["perplexity"].items():
            va, vb = row[key], b["perplexity"][task][key]
            rows.append(
                {
                    "task": task,
                    "model": model,
                    la: va,
                    lb: vb,
                    "diff": abs(vb / va - 1),
                    "tolerance": tolerance["ppl_rel"],
                    "unit": "relative",
                }
            )
    out = []
    for r in rows:
        if r["diff"] is None or r["tolerance"] is None or not r["diff"] <= r["tolerance"] + 1e-9:
            out.append(
                f"{r['task']} {r['model']}: {la} {r[la]}, {lb} {r[lb]} ({r['diff']} > {r['tolerance']} {r['unit']})"
            )
    # Sr is reported beside, not bounded: it follows from the task scores above.
    sr = {la: a["metrics"].get("sr"), lb: b["metrics"].get("sr")}
    return {"tolerance": tolerance, "rows": rows, "disagreements": out, "sr": sr}


def vllm_comparison(hf: dict[str, Any], vllm: dict[str, Any]) -> dict[str, Any]:
    """evaluator=hf against evaluator=vllm on one point, within VLLM_TOLERANCE."""
    return comparison(hf, vllm, VLLM_TOLERANCE, ("hf", "vllm"))


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--point", default="s25_w4")
    parser.add_argument("--limit", type=int, default=0, help="documents per task (0: the full offline suite)")
    parser.add_argument(
        "--vllm",
        choices=("on", "off"),
        default="on",
        help="also score the point with evaluator=vllm (on: refused without the vLLM environment)",
    )
    parser.add_argument(
        "--gate",
        action="store_true",
        help="only say whether the vLLM checks can run (no GPU needed), and exit",
    )
    args = parser.parse_args(argv)
    ok, line = vllm_gate(skip=args.vllm == "off")
    print(line, flush=True)
    if not ok:
        sys.exit(1)
    if args.gate:
        return
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench.gpu_check: no CUDA device visible; run it on a GPU node")
    with_vllm = args.vllm == "on"
    with tempfile.TemporaryDirectory(prefix="jcexp-gpu-check-") as tmp:
        root = Path(tmp)
        runs = [("cuda", "hf"), ("cpu", "hf"), *([("cuda", "vllm")] if with_vllm else [])]
        done = [_run(d, args.point, args.limit, root, root / "models", e) for d, e in runs]
        (gpu, gpu_result), (cpu, cpu_result) = done[0], done[1]
        cpu_gpu = comparison(cpu_result, gpu_result, CPU_GPU_TOLERANCE, ("cpu", "gpu"))
        vllm_vs_hf = vllm_comparison(gpu_result, done[2][1]) if with_vllm else None
    rows = [row for row, _ in done]
    cols = ["device", "evaluator", "wall_s", "eval_dense_s", "prune_s", "quantize_s", "eval_s"]
    cols += ["peak_cuda_mb", "peak_rss_mb", "sr", "compress_on", "eval_on"]
    md = f"`python -m bench.gpu_check --point {args.point} --limit {args.limit}` (SmolLM2-135M, fp32)\n\n"
    md += table(rows, cols)
    md += f"\n\nCPU / GPU wall time: {cpu['wall_s'] / gpu['wall_s']:.2f}x. "
    md += _agreement_md("CPU against GPU (evaluator=hf)", cpu_gpu, ("cpu", "gpu"))
    payload: dict[str, Any] = {"settings": vars(args), "rows": rows, "cpu_vs_gpu": cpu_gpu}
    if vllm_vs_hf is not None:
        vllm_row = done[2][0]
        payload["vllm_vs_hf"] = vllm_vs_hf
        fmt = done[2][1]["placement"]["compressed_eval"].get("checkpoint_format")

        def ratio(key: str) -> str:
            a, b = gpu.get(key), vllm_row.get(key)
            return f"{a / b:.2f}x" if a and b else "n/a"

        md += (
            f"\n\nevaluator=vllm against evaluator=hf on the GPU (vLLM read the {fmt} checkpoint in bfloat16, "
            f"HF the in-memory float32 model): HF / vLLM wall time {ratio('wall_s')}, compressed evaluation "
            f"{ratio('eval_s')}. The vLLM row's peak_cuda_mb is this process's only (vLLM runs in a child). "
        )
        md += _agreement_md("evaluator=vllm against evaluator=hf", vllm_vs_hf, ("hf", "vllm"))
    else:
        md += f"\n\nevaluator=vllm not run (--vllm off): {'; '.join(VLLM_CHECKS)} skipped."
    write("gpu_check", payload, md)
    failed = [
        f"{what}: " + "; ".join(c["disagreements"])
        for what, c in (("CPU against GPU", cpu_gpu), ("evaluator=vllm against evaluator=hf", vllm_vs_hf))
        if c and c["disagreements"]
    ]
    if failed:
        sys.exit("bench.gpu_check: beyond the tolerance: " + " | ".join(failed))
    if not with_vllm:
        print("bench.gpu_check: passed WITHOUT the evaluator=vllm checks (--vllm off)")


def _agreement_md(title: str, c: dict[str, Any], labels: tuple[str, str]) -> str:
    t = c["tolerance"]
    md = (
        f"{title}: at most {t['items']} items or {t['share']:.0%} of a task's items may score differently "
        f"(compressed and dense), perplexity within {t['ppl_rel']:.0%}; Sr (not bounded: it follows from the "
        f"tasks) {c['sr'][labels[0]]} against {c['sr'][labels[1]]}.\n\n"
    )
    md += table(c["rows"], ["task", "model", *labels, "diff", "tolerance", "unit"])
    return (
        md
        + "\n\n"
        + (
            "Within the tolerance."
            if not c["disagreements"]
            else "**Outside the tolerance:** " + "; ".join(c["disagreements"])
        )
    )


if __name__ == "__main__":
    main()
