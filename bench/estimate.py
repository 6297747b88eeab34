"""An estimate, not a measurement: the paper's full grid on Llama-3.1-8B on one 24 GB GPU (the paper used A10s),
from the stage costs measured by bench/stages.py and the stage counts of jcexp's experiment configs.

    python -m bench.estimate [--gpu-tflops 50] [--gpu-gbps 600] [--gpu-gb 24]

How: (1) the stage counts come from expanding conf/experiment/{pruning_only,quantization_only,joint_tcr,
semi_structured}.yaml, with and without jcexp's caches; (2) SparseGPT/GPTQ time is fitted on CPU as
a·tokens + b (bench/stages.py measured two calibration sizes), then each part is scaled by its FLOP ratio
8B/SmolLM2 (per-token: 2·(params + Σ d_in²); fixed: Σ d_in³/3 + 2·d_out·d_in²) and by the ratio of the GPU's
effective FLOP rate (--gpu-tflops) to the CPU's, measured from the calibration forward; (3) evaluation of the
generative suites, with the weights resident on the GPU and the settings of conf/benchmark/paper.yaml (batch,
max_length, max_gen_toks per task), is modelled as prefill FLOPs at --gpu-tflops plus decode steps that read
the bf16 weights and the KV cache at --gpu-gbps, for lm-eval's HF backend (static batches that wait for their
longest answer) and for its vLLM backend (continuous batching as deep as the KV budget allows), with the token
counts below (assumptions, per question).
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
# (The third column is kept for older results; GENERATED below holds the generation model.)
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
                if key == "point":
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


# Llama-3.1-8B and Mistral-7B: 32 layers x 8 KV heads x 128 dims, K and V, bf16.
KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2
PARAMS_8B = 8.03e9
WEIGHT_BYTES_8B = 2 * PARAMS_8B
# Generated tokens per answer (mean, 90th percentile): assumptions for an 8B base model's chain of thought.
GENERATED = {"mmlu_pro": (250, 700), "bbh_cot_fewshot": (150, 400), "minerva_math": (300, 900)}


def paper_eval_settings() -> dict:
    """batch_size, max_length and each task's max_gen_toks, as conf/benchmark/paper.yaml sets them."""
    bench = yaml.safe_load((ROOT / "conf" / "benchmark" / "paper.yaml").read_text())
    generation = bench.get("generation") or {}
    return {
        "batch_size": bench.get("batch_size"),
        "max_length": bench.get("max_length"),
        "max_gen_toks": {t: (generation.get(t) or {}).get("max_gen_toks", 256) for t in SUITE},
    }


def eval_hours(backend: str, settings: dict, gpu_gb: float, tflops: float, gbps: float) -> dict:
    """One evaluation of the paper's suite: prefill at `tflops`, decode memory-bound at `gbps` (each step reads
    the weights and the batch's KV cache). hf: static batches of batch_size, each decoding until its slowest
    answer stops (the 90th percentile, capped by max_gen_toks). vllm: continuous batching, as many sequences as
    the KV budget (90% of the GPU less the weights) holds, decoding the mean answer length."""
    flops = tflops * 1e12
    bw = gbps * 1e9
    prefill = sum(q * p for q, p, _ in SUITE.values()) * 2 * PARAMS_8B / flops
    decode = 0.0
    for task, (questions, prompt, _) in SUITE.items():
        mean_gen, p90_gen = GENERATED[task]
        cap = settings["max_gen_toks"][task]
        if backend == "hf":
            batch = int(settings["batch_size"])
            steps = -(-questions // batch) * min(cap, p90_gen)
            context = prompt + min(cap, p90_gen) / 2
        else:
            budget = 0.9 * gpu_gb * 2**30 - WEIGHT_BYTES_8B
            batch = max(1, min(256, int(budget / (KV_BYTES_PER_TOKEN * (prompt + mean_gen)))))
            steps = questions * min(cap, mean_gen) / batch
            context = prompt + min(cap, mean_gen) / 2
        decode += steps * (WEIGHT_BYTES_8B + batch * context * KV_BYTES_PER_TOKEN) / bw
    return {
        "backend": backend,
        "prefill_h": prefill / 3600,
        "decode_h": decode / 3600,
        "hours": (prefill + decode) / 3600,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gpu-tflops", type=float, default=50.0, help="effective bf16 TFLOP/s (A10 peak: 125)"
    )
    parser.add_argument("--gpu-gbps", type=float, default=600.0, help="memory bandwidth, GB/s (A10: 600)")
    parser.add_argument("--gpu-gb", type=float, default=24.0, help="GPU memory, GB (A10: 24)")
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
    settings = paper_eval_settings()
    evals = {b: eval_hours(b, settings, args.gpu_gb, args.gpu_tflops, args.gpu_gbps) for b in ("hf", "vllm")}
    hf_kv_worst = int(settings["batch_size"]) * int(settings["max_length"]) * KV_BYTES_PER_TOKEN / 2**30

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
        compress = (
            c["sparsegpt"] * per_stage["prune"]["gpu_8b_s"] + c["gptq"] * per_stage["quantize"]["gpu_8b_s"]
        )
        row = {"variant": variant, **c}
        for backend, ev in evals.items():
            row[f"gpu_hours_{backend}"] = round(compress / 3600 + c["evaluations"] * ev["hours"], 1)
        rows.append(row)
    md = f"paper grid: {len(points)} points ({', '.join(f'{p}/{b}' for p, b in points)}) plus the dense model\n\n"
    md += (
        f"evaluation settings (conf/benchmark/paper.yaml): batch {settings['batch_size']}, max_length "
        f"{settings['max_length']}, max_gen_toks {settings['max_gen_toks']}; HF's worst-case KV cache at that "
        f"batch and length: {hf_kv_worst:.1f} GiB, beside 15.0 GiB of bf16 weights\n\n"
    )
    md += table(
        [
            {"stage": "SparseGPT, one run", "hours": per_stage["prune"]["gpu_8b_s"] / 3600},
            {"stage": "GPTQ, one run", "hours": per_stage["quantize"]["gpu_8b_s"] / 3600},
            *(
                {"stage": f"MMLU-Pro + BBH + MATH, one evaluation, {b}", "hours": ev["hours"]}
                for b, ev in evals.items()
            ),
        ],
        ["stage", "hours"],
    )
    md += "\n\n" + table(
        rows, ["variant", "sparsegpt", "gptq", "evaluations", "gpu_hours_hf", "gpu_hours_vllm"]
    )
    md += (
        f"\n\nassumptions: one {args.gpu_gb:g} GB GPU at {args.gpu_tflops:g} effective TFLOP/s and "
        f"{args.gpu_gbps:g} GB/s (CPU here: {cpu_flops / 1e9:.1f} GFLOP/s measured in the calibration forward), "
        f"{args.calib_tokens} calibration tokens, questions/prompt tokens {SUITE}, generated tokens "
        f"(mean, p90) {GENERATED}"
    )
    payload = {
        "settings": {**vars(args), "eval": settings},
        "per_stage": per_stage,
        "eval": evals,
        "counts": rows,
        "points": points,
    }
    from bench.common import write

    write("estimate", payload, md)


if __name__ == "__main__":
    main()
