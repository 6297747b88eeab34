"""An estimate, not a measurement: the paper's full grid on Llama-3.1-8B on one 24 GB GPU (the paper used A10s),
from the stage costs measured by bench/stages.py and the stage counts of jcexp's experiment configs.

    python -m bench.estimate [--gpu-tflops 50] [--gpu-gbps 600] [--decode-batch 16]

How: (1) the stage counts come from expanding conf/experiment/{pruning_only,quantization_only,joint_tcr,
semi_structured}.yaml, with and without jcexp's caches; (2) SparseGPT/GPTQ time is fitted on CPU as
a·tokens + b (bench/stages.py measured two calibration sizes), then each part is scaled by its FLOP ratio
8B/SmolLM2 (per-token: 2·(params + Σ d_in²); fixed: Σ d_in³/3 + 2·d_out·d_in²) and by the ratio of the GPU's
effective FLOP rate (--gpu-tflops) to the CPU's, measured from the calibration forward; (3) evaluation of the
generative suites is modelled as prefill FLOPs at --gpu-tflops plus decode steps that read the bf16 weights
at --gpu-gbps, --decode-batch sequences at a time, with the token counts below (assumptions, per question).
"""

from __future__ import annotations

import argparse
import itertools
import json

import yaml

from bench.common import RESULTS, ROOT, table

# (d_in, d_out) of every Linear, per decoder layer, and the layer count.
SMOLLM2 = ([(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)], 30)
LLAMA_8B = (
    [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096), (4096, 14336), (4096, 14336), (14336, 4096)],
    32,
)
# Questions, prompt tokens (with the few-shot examples) and generated tokens per question: assumptions.
SUITE = {
    "mmlu_pro": (12032, 1500, 250),
    "bbh_cot_fewshot": (6511, 1000, 150),
    "minerva_math": (5000, 1000, 300),
}
PAPER_EXPERIMENTS = ("pruning_only", "quantization_only", "joint_tcr", "semi_structured")


def _flops(shape: tuple[list[tuple[int, int]], int]) -> dict[str, float]:
    layers, n = shape
    return {
        "params": n * sum(i * o for i, o in layers),
        "per_token": n * sum(2 * i * o + 2 * i * i for i, o in layers),  # forward + Hessian accumulation
        "fixed": n * sum(i**3 / 3 + 2 * o * i * i for i, o in layers),  # Cholesky + column sweep updates
    }


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()) or {}


def paper_points() -> list[tuple[str, int]]:
    """(pruning, bits) of every point the four paper experiments sweep; pruning is '0', a sparsity or 'N:M'."""
    points = set()
    for name in PAPER_EXPERIMENTS:
        exp = _load(name)
        params = exp["hydra"]["sweeper"]["params"]
        keys = list(params)
        disabled = {
            k.rpartition("/")[2] for d in exp.get("defaults", []) for k, v in d.items() if v == "none"
        }
        for combo in itertools.product(*(str(params[k]).split(",") for k in keys)):
            # conf/config.yaml's defaults: sparsegpt at 25%, gptq at 4 bit; `override /x: none` disables x.
            prune = "0" if "pruner" in disabled else "25"
            bits = 16 if "quant" in disabled else 4
            for key, value in zip(keys, combo, strict=True):
                if key == "+point":
                    point = yaml.safe_load((ROOT / "conf" / "point" / f"{value}.yaml").read_text())
                    p, q = point.get("pruner", {}), point.get("quant", {})
                    prune = p.get("mask") or str(p.get("sparsity", prune))
                    bits = q.get("bits", bits)
                elif key == "pruner.sparsity":
                    prune = value
                elif key == "quant.bits":
                    bits = int(value)
            points.add((prune if prune not in ("0.0", "0") else "0", int(bits)))
    return sorted(points)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gpu-tflops", type=float, default=50.0, help="effective bf16 TFLOP/s (A10 peak: 125)"
    )
    parser.add_argument("--gpu-gbps", type=float, default=600.0, help="memory bandwidth, GB/s (A10: 600)")
    parser.add_argument("--decode-batch", type=int, default=16)
    parser.add_argument("--calib-tokens", type=int, default=512 * 2048, help="the paper's 512 C4 samples")
    args = parser.parse_args(argv)

    stages = json.loads((RESULTS / "stages.json").read_text())
    a_row, b_row = stages["rows"][0], stages["rows"][-1]
    small, big = _flops(SMOLLM2), _flops(LLAMA_8B)
    cpu_flops = 2 * small["params"] * b_row["tokens"] / b_row["calib_forward_s"]
    gpu_flops = args.gpu_tflops * 1e12
    per_stage = {}
    for stage in ("prune", "quantize"):
        slope = (b_row[f"{stage}_s"] - a_row[f"{stage}_s"]) / (b_row["tokens"] - a_row["tokens"])
        slope = max(slope, 0.0)
        fixed = max(a_row[f"{stage}_s"] - slope * a_row["tokens"], 0.0)
        cpu_8b = (
            slope * args.calib_tokens * big["per_token"] / small["per_token"]
            + fixed * big["fixed"] / small["fixed"]
        )
        per_stage[stage] = {
            "cpu_slope_s_per_token": slope,
            "cpu_fixed_s": fixed,
            "gpu_8b_s": cpu_8b * cpu_flops / gpu_flops,
        }
    prefill = sum(q * p for q, p, _ in SUITE.values()) * 2 * big["params"] / gpu_flops
    steps = sum(q * g for q, _, g in SUITE.values()) / args.decode_batch
    decode = steps * (2 * big["params"]) / (args.gpu_gbps * 1e9)
    eval_s = prefill + decode

    points = paper_points()
    pruned = [p for p in points if p[0] != "0"]
    counts = {
        "jcexp": {
            "sparsegpt": len({p for p, _ in pruned}),
            "gptq": sum(b < 16 for _, b in points),
            "evaluations": len(points) + 1,  # every point, and the dense baseline once
        },
        "without caches": {
            "sparsegpt": len(pruned),
            "gptq": sum(b < 16 for _, b in points),
            "evaluations": 2 * len(points),  # each run evaluates its own dense baseline
        },
    }
    rows = []
    for variant, c in counts.items():
        hours = (
            c["sparsegpt"] * per_stage["prune"]["gpu_8b_s"]
            + c["gptq"] * per_stage["quantize"]["gpu_8b_s"]
            + c["evaluations"] * eval_s
        ) / 3600
        rows.append({"variant": variant, **c, "gpu_hours": round(hours, 1)})
    md = f"paper grid: {len(points)} points ({', '.join(f'{p}/{b}' for p, b in points)}) plus the dense model\n\n"
    md += table(
        [
            {"stage": "SparseGPT, one run", "hours": per_stage["prune"]["gpu_8b_s"] / 3600},
            {"stage": "GPTQ, one run", "hours": per_stage["quantize"]["gpu_8b_s"] / 3600},
            {"stage": "MMLU-Pro + BBH + MATH, one evaluation", "hours": eval_s / 3600},
        ],
        ["stage", "hours"],
    )
    md += "\n\n" + table(rows, ["variant", "sparsegpt", "gptq", "evaluations", "gpu_hours"])
    md += (
        f"\n\nassumptions: {args.gpu_tflops:g} effective TFLOP/s and {args.gpu_gbps:g} GB/s on the GPU "
        f"(CPU here: {cpu_flops / 1e9:.1f} GFLOP/s measured in the calibration forward), {args.calib_tokens} "
        f"calibration tokens, decode batch {args.decode_batch}, token counts per question {SUITE}"
    )
    payload = {
        "settings": vars(args),
        "per_stage": per_stage,
        "eval_s": eval_s,
        "counts": rows,
        "points": points,
    }
    from bench.common import write

    write("estimate", payload, md)


if __name__ == "__main__":
    main()
