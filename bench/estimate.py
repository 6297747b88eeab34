"""An estimate, not a measurement: the paper's full grid on Llama-3.1-8B on one GPU, an A10 (24 GB, the paper's)
and an H100 (80 GB), from the stage costs measured by bench/stages.py and the stage counts of jcexp's configs.

    python -m bench.estimate [--gpus a10,h100] [--utilization 0.85]

How: (1) the stage counts come from expanding conf/experiment/{pruning_only,quantization_only,joint_tcr,
semi_structured}.yaml, with and without jcexp's caches; (2) SparseGPT/GPTQ time is fitted on CPU as
a·tokens + b (bench/stages.py measured two calibration sizes), then each part is scaled by its FLOP ratio
8B/SmolLM2 (per-token: 2·(params + Σ d_in²); fixed: Σ d_in³/3 + 2·d_out·d_in²) and by the ratio of the GPU's
effective FLOP rate to the CPU's, measured from the calibration forward; (3) evaluation of the generative
suites, with the settings of conf/benchmark/paper.yaml (batch, max_length, max_gen_toks per task), is modelled
as prefill FLOPs at the effective rate plus decode steps that read the weights and the KV cache at the GPU's
memory bandwidth, for lm-eval's HF backend (static batches that wait for their longest answer) and for its
vLLM backend (continuous batching as deep as the KV cache allows). vLLM's KV cache is what jcexp's preflight
budgets (jcexp/memory.py: vllm_budget): gpu_memory_utilization x the card's memory, less the checkpoint's
weights (bf16 for the dense baseline and the 2-, 3- and 16-bit points, packed W4A16/W8A16 for the 4- and 8-bit
ones), the profile's activations and CUDA graphs, after this process's and vLLM's CUDA contexts are left
outside. With prefix caching (on by default in vLLM) each task's few-shot prefix is computed and held once per
group of questions that share it, when the KV cache can hold every group's prefix beside the batch; otherwise
every prompt is computed and held whole. The token counts below are assumptions, per question.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math

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
# The few-shot part of each prompt, shared by every question of a group (tokens), and the number of groups
# (distinct prefixes): MMLU-Pro's 5 examples per subject (14), BBH's 3 CoT examples per subtask (27), MATH's one
# 4-shot Minerva prompt per subject (7). Assumptions, within SUITE's prompt lengths.
SHARED_PREFIX = {"mmlu_pro": (1200, 14), "bbh_cot_fewshot": (850, 27), "minerva_math": (750, 7)}

# The GPUs (assumptions from the vendors' data sheets, no GPU was measured): the memory the card reports (what
# torch.cuda.mem_get_info and vLLM see as total), the dense bf16 tensor-core peak, the memory bandwidth, and
# lm-eval HF's batch_size on that card (conf/benchmark/paper.yaml: 3 fits an A10; 16 on 80 GB).
# The effective rate is EFFICIENCY of the peak for both (the A10's 50 of 125 TFLOP/s, as this estimate always
# assumed). NVIDIA's A10 data sheet: 24 GB GDDR6, 600 GB/s, 125 TFLOP/s bf16 dense (250 with sparsity); its H100
# SXM5 data sheet: 80 GB HBM3, 3.35 TB/s, 1,979 TFLOP/s bf16 "with sparsity", that is 989.4 dense (the PCIe card:
# 2.0 TB/s, 756 dense).
EFFICIENCY = 0.4
GPUS = {
    "a10": {
        "label": "A10 (24 GB)",
        "total_bytes": 23028 * 2**20,
        "peak_tflops": 125.0,
        "gbps": 600.0,
        "hf_batch": 3,
    },
    "h100": {
        "label": "H100 SXM (80 GB)",
        "total_bytes": 81559 * 2**20,
        "peak_tflops": 989.4,
        "gbps": 3350.0,
        "hf_batch": 16,
    },
}
# How vLLM reads each kind of checkpoint: the dense baseline and the 2-, 3- and 16-bit points from bf16
# weights, the 4- and 8-bit GPTQ points packed (conf/evaluator/vllm.yaml: packed_bits).
FORMATS = {"dense": 16, "w4a16": 4, "w8a16": 8}


def llama_8b_shapes():
    """Llama-3.1-8B as jcexp's preflight sees it (from its config; nothing built)."""
    from jcexp.memory import ModelShapes

    layer, n = LLAMA_8B
    linear = sum(i * o for i, o in layer)
    return ModelShapes(
        params=8_030_261_248,
        dtype="bfloat16",
        layers=n,
        hidden=4096,
        intermediate=14336,
        heads=32,
        kv_heads=8,
        head_dim=128,
        vocab=128256,
        max_positions=131072,
        layer_linears=tuple(layer),
        layer_params=linear + 2 * 4096,
        compressible_params=n * linear,
    )


def vllm_memory(gpu: dict, fmt: str, utilization: float, max_length: int) -> dict:
    """jcexp's preflight budget for the vLLM child on this GPU (jcexp/memory.py: vllm_budget), in bytes."""
    from jcexp import memory

    shapes = llama_8b_shapes()
    bits = FORMATS[fmt]
    work = memory.Workload(
        eval_device="cuda",
        compress_device="cuda",
        prune=False,
        quant=bits < 16,
        quant_calibrated=bits < 16,
        calib_samples=1,
        calib_seq_len=1,
        eval=memory.EvalLoad(batch=None, max_length=max_length),
        save_packed=bits < 16,
        bits=bits,
        group_size=128,
        eval_process="subprocess",
        eval_backend="vllm",
        vllm_gpu_fraction=utilization,
        gpu_total_bytes=gpu["total_bytes"],
    )
    budget = memory.vllm_budget(shapes, work, packed=bits < 16)
    outside = budget["parent_cuda_context"] + budget["vllm_cuda_context"]
    _, max_seqs = memory.vllm_defaults(gpu["total_bytes"])
    return {
        **budget,
        "free_needed_at_start": int(utilization * gpu["total_bytes"]) + outside,
        # as the preflight names it (jcexp/preflight.py: _vllm_problems), rounded down
        "largest_utilization": math.floor(100 * (gpu["total_bytes"] - outside) / gpu["total_bytes"]) / 100,
        "max_seqs": max_seqs,
    }


def paper_eval_settings() -> dict:
    """batch_size, max_length and each task's max_gen_toks, as conf/benchmark/paper.yaml sets them."""
    bench = yaml.safe_load((ROOT / "conf" / "benchmark" / "paper.yaml").read_text())
    generation = bench.get("generation") or {}
    return {
        "batch_size": bench.get("batch_size"),
        "max_length": bench.get("max_length"),
        "max_gen_toks": {t: (generation.get(t) or {}).get("max_gen_toks", 256) for t in SUITE},
    }


def eval_hours_hf(settings: dict, gpu: dict) -> dict:
    """lm-eval's HF backend on the in-memory bf16 model: static batches of the GPU's batch_size, each decoding
    until its slowest answer stops (the 90th percentile, capped by max_gen_toks); every prompt prefilled whole."""
    flops, bw = EFFICIENCY * gpu["peak_tflops"] * 1e12, gpu["gbps"] * 1e9
    batch = gpu["hf_batch"]
    prefill = sum(q * p for q, p, _ in SUITE.values()) * 2 * PARAMS_8B / flops
    decode = 0.0
    for task, (questions, prompt, _) in SUITE.items():
        gen = min(settings["max_gen_toks"][task], GENERATED[task][1])
        steps = -(-questions // batch) * gen
        decode += steps * (WEIGHT_BYTES_8B + batch * (prompt + gen / 2) * KV_BYTES_PER_TOKEN) / bw
    return {
        "prefill_h": prefill / 3600,
        "decode_h": decode / 3600,
        "hours": (prefill + decode) / 3600,
        "batch": batch,
    }


def eval_hours_vllm(settings: dict, gpu: dict, memory: dict, weight_bytes: float) -> dict:
    """lm-eval's vLLM backend: continuous batching, as many sequences as the KV cache holds (at most vLLM's
    max_num_seqs), decoding the mean answer length. With prefix caching, when the KV cache holds every group's
    few-shot prefix beside at least one question, a prefix is computed and held once per group and each sequence
    holds only its own question and answer; otherwise each prompt is computed and held whole. Each decode step
    reads the weights and, per sequence, its whole context's KV cache (the shared prefix included)."""
    flops, bw = EFFICIENCY * gpu["peak_tflops"] * 1e12, gpu["gbps"] * 1e9
    kv_tokens = memory["vllm_kv_cache"] / KV_BYTES_PER_TOKEN
    prefill = decode = 0.0
    per_task = {}
    for task, (questions, prompt, _) in SUITE.items():
        gen = min(settings["max_gen_toks"][task], GENERATED[task][0])
        shared, groups = SHARED_PREFIX[task]
        own = prompt - shared + gen
        cached = kv_tokens >= groups * shared + own
        if cached:
            batch = (kv_tokens - groups * shared) / own
            tokens = questions * (prompt - shared) + groups * shared
        else:
            batch = kv_tokens / (prompt + gen)
            tokens = questions * prompt
        batch = max(1, min(memory["max_seqs"], int(batch)))
        prefill += tokens * 2 * PARAMS_8B / flops
        steps = questions * gen / batch
        decode += steps * (weight_bytes + batch * (prompt + gen / 2) * KV_BYTES_PER_TOKEN) / bw
        per_task[task] = {"batch": batch, "prefix_cached": cached}
    return {
        "prefill_h": prefill / 3600,
        "decode_h": decode / 3600,
        "hours": (prefill + decode) / 3600,
        "tasks": per_task,
    }


# ------------------------------------------------------------------- compression and overheads, term by term
# Issue 29: the estimate before this put each whole compression stage at 40% of the bf16 tensor peak. Each term
# below has its own rate and its source: a measurement (bench/results/estimate_columns.json, this CPU), a
# library's code or guide, or an assumption, named beside it.
# llm-compressor's sequential pipeline runs each subgraph's calibration forward twice: once for the hooks, once
# to propagate the compressed layer's outputs (llmcompressor/pipelines/sequential/pipeline.py, propagate_error).
CALIB_PASSES = 2
# GPTQ's and SparseGPT's Hessians, their factorization and their sweeps are float32 (GPTQ_PRECISION,
# SGPT_PRECISION), with no TF32 (neither library enables it; PyTorch's matmul default keeps float32 exact):
# the non-tensor fp32 peak, from NVIDIA's data sheets (A10 31.2 TFLOP/s, H100 SXM5 67).
FP32_TFLOPS = {"a10": 31.2, "h100": 67.0, "a100": 19.5}
# For the cross-check against llm-compressor's runtime guide only (not a column of the tables): A100 SXM 80 GB,
# 312 TFLOP/s bf16 dense, 19.5 fp32 (NVIDIA's data sheet).
A100 = {"label": "A100 (80 GB)", "peak_tflops": 312.0}
# llm-compressor's runtime guide (docs 0.11, "Runtime requirements"): GPTQ weights-only on Meta-Llama-3-8B-Instruct
# on an A100, about 30 minutes, from the eager per-column sweep of those versions (the 0.14 release notes credit
# the fused Triton block with about 15x end to end on Llama-3-8B).
GUIDE_GPTQ_A100_MIN = 30
FP32_EFFICIENCY = 0.7  # assumption: X^T X over 2048-token samples is a large GEMM
FACTOR_EFFICIENCY = 0.3  # assumption: Cholesky and its inverse on 4096-14336 square matrices
# Columns swept per layer. GPTQ 0.14 batches same-shape modules into one sweep (helpers.batch_key): q, k+v, o,
# gate+up, down. SparseGPT sweeps each module: q, k, v, o, gate, up, down. (rows, cols) per sweep.
GPTQ_SWEEPS = [(4096, 4096), (2048, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]
SPARSEGPT_SWEEPS = [(4096, 4096), (1024, 4096), (1024, 4096), (4096, 4096), (14336, 4096), (14336, 4096),
                    (4096, 14336)]  # fmt: skip
# Disk: the hub snapshot read at each run's load, the evaluator's checkpoint written by jcexp and read by vLLM.
# Assumptions (a local NVMe through safetensors; a page-cached read would be faster).
DISK_READ_GBPS, DISK_WRITE_GBPS = 2.0, 1.0
# vLLM's start-up per evaluation (one child per evaluation): engine init with torch.compile and CUDA graph
# capture. vLLM PR #11005 (Meta-Llama-3-8B): torch.compile 19.4 s, graph capture 15 s, engine init 39 s;
# vLLM issue #20264: 34 s of engine init and about 60 s to the first answer with a warm compile cache.
VLLM_STARTUP_S = 60.0
# lm-eval building MMLU-Pro, BBH and MATH in the child (datasets from a local cache): an assumption; jcexp's
# offline suite builds in seconds here (bench/results/task_builds.json), the paper's suite reads 3 hub datasets.
TASK_BUILD_S = 60.0


def _sweep_columns(sweeps: list[tuple[int, int]]) -> int:
    return LLAMA_8B[1] * sum(c for _, c in sweeps)


def compression_terms(
    gpu_name: str, gpu: dict, calib_tokens: int, us_per_column: float
) -> dict[str, dict[str, float]]:
    """Seconds per run of SparseGPT, GPTQ Case B (jcexp's eager sweep) and stock GPTQ (Case A; 0.14 runs its
    sweep as one fused Triton kernel per block of 128 columns on CUDA: gptq_quantize._gptq_block_update_triton),
    term by term. The column loop is launch-bound on a GPU (tiny kernels, one column at a time): its time is the
    number of columns x the measured per-column cost of the loop's operators on this CPU with almost no FLOPs
    (a 64-row matrix), a floor."""
    layers = LLAMA_8B[1]
    bf16 = EFFICIENCY * gpu["peak_tflops"] * 1e12
    fp32 = FP32_EFFICIENCY * FP32_TFLOPS[gpu_name] * 1e12
    factor_rate = FACTOR_EFFICIENCY * FP32_TFLOPS[gpu_name] * 1e12
    forward = CALIB_PASSES * 2 * PARAMS_8B * calib_tokens / bf16
    hessian = 2 * calib_tokens * layers * sum(i * i for i, _ in LLAMA_8B[0]) / fp32  # one Hessian per Linear
    load = WEIGHT_BYTES_8B / (DISK_READ_GBPS * 1e9)
    out = {}
    for name, sweeps, loop in (
        ("SparseGPT", SPARSEGPT_SWEEPS, True),
        ("GPTQ, Case B (pruned points)", GPTQ_SWEEPS, True),
        ("GPTQ, stock (quantization only)", GPTQ_SWEEPS, False),
    ):
        factor = layers * sum(c**3 for _, c in sweeps) / factor_rate  # Cholesky, inverse, Cholesky: ~c^3
        lazy = layers * sum(r * c * c for r, c in sweeps) / fp32  # the block updates: rows x cols^2 FLOPs
        columns = _sweep_columns(sweeps)
        terms = {
            "load": load,
            "calibration_forward": forward,
            "hessians_fp32": hessian,
            "factorization": factor,
            "block_updates": lazy,
            "column_loop": columns * us_per_column * 1e-6 if loop else 0.0,
        }
        out[name] = {**terms, "total": sum(terms.values()), "columns": columns}
    return out


def eval_overheads(
    settings: dict, gpu: dict, weight_bytes: float, written: bool, chunk: int
) -> dict[str, float]:
    """Seconds per vLLM evaluation beside the prefill and decode: vLLM's start-up, lm-eval's task build, the
    checkpoint written by jcexp (compressed points; the dense baseline is read from the hub snapshot) and read
    by vLLM, and the request chunks' tails: each chunk of ``evaluator.request_chunk`` requests waits for its
    longest answer, assumed to run to max_gen_toks, decoded at a small batch (each step reads the weights once)
    after the mean answer has finished."""
    step = weight_bytes / (gpu["gbps"] * 1e9)
    tails = sum(
        math.ceil(questions / chunk) * (settings["max_gen_toks"][t] - GENERATED[t][0]) * step
        for t, (questions, _, _) in SUITE.items()
    )
    return {
        "vllm_startup": VLLM_STARTUP_S,
        "task_build": TASK_BUILD_S,
        "checkpoint_write": weight_bytes / (DISK_WRITE_GBPS * 1e9) if written else 0.0,
        "checkpoint_read": weight_bytes / (DISK_READ_GBPS * 1e9),
        "chunk_tails": tails,
    }


def column_cost() -> dict:
    """The measured column loop (bench/case_b_columns.py): the per-column floor and the 8B shapes' shares."""
    path = RESULTS / "estimate_columns.json"
    if not path.is_file():
        raise SystemExit("bench.estimate: run `python -m bench.case_b_columns` first (estimate_columns.json)")
    data = json.loads(path.read_text())
    rows = {r["shape"]: r for r in data["rows"]}
    return {"us_per_column": rows["rows64"]["us_per_column"], "rows": rows, "ops": data["ops_per_column"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", default="a10,h100", help=f"GPUs to estimate, of {sorted(GPUS)}")
    parser.add_argument(
        "--utilization",
        type=float,
        default=0.85,
        help="vLLM's gpu_memory_utilization (conf/evaluator/vllm.yaml)",
    )
    parser.add_argument("--calib-tokens", type=int, default=512 * 2048, help="the paper's 512 C4 samples")
    args = parser.parse_args(argv)
    gpus = {name: GPUS[name] for name in args.gpus.split(",")}

    stages = json.loads((RESULTS / "stages.json").read_text())
    a_row, b_row = stages["rows"][0], stages["rows"][-1]
    small, big = _flops(SMOLLM2), _flops(LLAMA_8B)
    cpu_flops = 2 * small["params"] * b_row["tokens"] / b_row["calib_forward_s"]
    cpu_8b = {}
    for stage in ("prune", "quantize"):
        slope = (b_row[f"{stage}_s"] - a_row[f"{stage}_s"]) / (b_row["tokens"] - a_row["tokens"])
        slope = max(slope, 0.0)
        fixed = max(a_row[f"{stage}_s"] - slope * a_row["tokens"], 0.0)
        cpu_8b[stage] = {
            "cpu_slope_s_per_token": slope,
            "cpu_fixed_s": fixed,
            "cpu_8b_s": slope * args.calib_tokens * big["per_token"] / small["per_token"]
            + fixed * big["fixed"] / small["fixed"],
        }
    settings = paper_eval_settings()
    points = paper_points()
    pruned = [p for p in points if p[0] != "0"]
    # vLLM reads 4- and 8-bit points packed, the rest (and the dense baseline) from bf16 weights.
    by_format = {
        "dense": sum(b not in (4, 8) for _, b in points),
        "w4a16": sum(b == 4 for _, b in points),
        "w8a16": sum(b == 8 for _, b in points),
    }
    counts = {
        "jcexp": {
            "sparsegpt": len({p for p, _ in pruned}),
            "gptq": sum(b < 16 for _, b in points),
            "evaluations": len(points) + 1,  # every point, and the dense baseline once
            "dense_evals": by_format["dense"] + 1,
        },
        "without caches": {
            "sparsegpt": len(pruned),
            "gptq": sum(b < 16 for _, b in points),
            "evaluations": 2 * len(points),  # each run evaluates its own dense baseline
            "dense_evals": by_format["dense"] + len(points),
        },
    }

    # GPTQ runs on pruned points take Case B (conf/quant/gptq.yaml: case B; jcexp.config.effective_case),
    # quantization-only points stock GPTQ.
    for c in counts.values():
        c["gptq_case_b"] = sum(b < 16 and p != "0" for p, b in points)
        c["gptq_stock"] = c["gptq"] - c["gptq_case_b"]
    baselines = {"jcexp": 1, "without caches": len(points)}
    cols_cost = column_cost()
    chunk = int(yaml.safe_load((ROOT / "conf" / "evaluator" / "vllm.yaml").read_text())["request_chunk"])

    per_gpu: dict[str, dict] = {}
    for name, gpu in gpus.items():
        rate = EFFICIENCY * gpu["peak_tflops"] * 1e12
        stage_s = {k: v["cpu_8b_s"] * cpu_flops / rate for k, v in cpu_8b.items()}  # the previous model
        comp = compression_terms(name, gpu, args.calib_tokens, cols_cost["us_per_column"])
        memory = {f: vllm_memory(gpu, f, args.utilization, settings["max_length"]) for f in FORMATS}
        vllm = {f: eval_hours_vllm(settings, gpu, memory[f], memory[f]["vllm_weights"]) for f in FORMATS}
        over = {
            (f, w): eval_overheads(settings, gpu, memory[f]["vllm_weights"], w, chunk)
            for f in FORMATS
            for w in (True, False)
        }
        hf = eval_hours_hf(settings, gpu)
        grid = {}
        for variant, c in counts.items():
            before = (c["sparsegpt"] * stage_s["prune"] + c["gptq"] * stage_s["quantize"]) / 3600
            compress = (
                c["sparsegpt"] * comp["SparseGPT"]["total"]
                + c["gptq_case_b"] * comp["GPTQ, Case B (pruned points)"]["total"]
                + c["gptq_stock"] * comp["GPTQ, stock (quantization only)"]["total"]
            ) / 3600
            packed = {f: by_format[f] for f in ("w4a16", "w8a16")}
            compute = c["dense_evals"] * vllm["dense"]["hours"] + sum(
                n * vllm[f]["hours"] for f, n in packed.items()
            )
            base = baselines[variant]
            overhead = (
                base * sum(over[("dense", False)].values())
                + (c["dense_evals"] - base) * sum(over[("dense", True)].values())
                + sum(n * sum(over[(f, True)].values()) for f, n in packed.items())
            ) / 3600
            hf_h = c["evaluations"] * (hf["hours"] + TASK_BUILD_S / 3600)
            grid[variant] = {
                "compression": round(compress, 2),
                "vllm_compute": round(compute, 2),
                "vllm_overheads": round(overhead, 2),
                "hf": round(compress + hf_h, 1),
                "vllm": round(compress + compute + overhead, 1),
                "vllm_previous_model": round(before + compute, 1),
            }
        per_gpu[name] = {
            "stage_s": stage_s,
            "compression": comp,
            "overheads": {f"{f}{'' if w else ' (not written)'}": o for (f, w), o in over.items()},
            "memory": memory,
            "vllm": vllm,
            "hf": hf,
            "grid": grid,
        }

    labels = {n: f"{g['label']}, est." for n, g in gpus.items()}
    gib = 2**30

    def row(what: str, fn) -> dict:
        return {"": what, **{labels[n]: fn(n, per_gpu[n]) for n in gpus}}

    def kv(r: dict, f: str) -> str:
        m = r["memory"][f]
        tasks = r["vllm"][f]["tasks"]
        seqs = "/".join(str(tasks[t]["batch"]) for t in SUITE)
        cached = "".join("y" if tasks[t]["prefix_cached"] else "n" for t in SUITE)
        return f"{m['vllm_kv_cache'] / gib:.2f} GiB, {seqs} seqs, prefix cached {cached}"

    cols = ["", *labels.values()]
    mem_rows = [
        row("total memory the card reports", lambda n, r: f"{gpus[n]['total_bytes'] / gib:.2f} GiB"),
        row(
            "bf16 dense / effective TFLOP/s, GB/s",
            lambda n, r: (
                f"{gpus[n]['peak_tflops']:g} / {EFFICIENCY * gpus[n]['peak_tflops']:.0f}, {gpus[n]['gbps']:g}"
            ),
        ),
        row(
            "outside vLLM's share: this process's + vLLM's CUDA contexts (assumed)",
            lambda n, r: (
                f"{(r['memory']['dense']['parent_cuda_context'] + r['memory']['dense']['vllm_cuda_context']) / gib:.2f} GiB"
            ),
        ),
        row(
            f"vLLM's share, gpu_memory_utilization={args.utilization} (free needed at start)",
            lambda n, r: (
                f"{args.utilization * gpus[n]['total_bytes'] / gib:.2f} GiB ({r['memory']['dense']['free_needed_at_start'] / gib:.2f}; at most {r['memory']['dense']['largest_utilization']:.2f} starts)"
            ),
        ),
        row(
            "weights: bf16 / W4A16 / W8A16",
            lambda n, r: " / ".join(f"{r['memory'][f]['vllm_weights'] / gib:.2f}" for f in FORMATS) + " GiB",
        ),
        row(
            "profile activations (max_num_batched_tokens), CUDA graphs (assumed)",
            lambda n, r: (
                f"{r['memory']['dense']['vllm_activations'] / gib:.2f} + {r['memory']['dense']['vllm_cuda_graphs'] / gib:.2f} GiB"
            ),
        ),
        *(
            row(
                f"KV cache, {f}: GiB, sequences decoded together (MMLU-Pro/BBH/MATH), prefix cached",
                lambda n, r, f=f: kv(r, f),
            )
            for f in FORMATS
        ),
    ]
    time_rows = [
        *(
            row(
                f"{stage}, one run",
                lambda n, r, stage=stage: round(r["compression"][stage]["total"] / 3600, 3),
            )
            for stage in per_gpu[next(iter(gpus))]["compression"]
        ),
        row("(previous model) SparseGPT, one run", lambda n, r: round(r["stage_s"]["prune"] / 3600, 3)),
        row("(previous model) GPTQ, one run", lambda n, r: round(r["stage_s"]["quantize"] / 3600, 3)),
        row(
            "MMLU-Pro + BBH + MATH, one evaluation, hf (bf16, batch 3 / 16)",
            lambda n, r: round(r["hf"]["hours"], 2),
        ),
        *(
            row(
                f"MMLU-Pro + BBH + MATH, one evaluation, vllm, {f}",
                lambda n, r, f=f: round(r["vllm"][f]["hours"], 2),
            )
            for f in FORMATS
        ),
    ]
    grid_rows = [
        {
            "variant": v,
            **c,
            **{f"{labels[n]}: {b}": per_gpu[n]["grid"][v][b] for n in gpus for b in ("hf", "vllm")},
        }
        for v, c in counts.items()
    ]
    parts = ["compression", "vllm_compute", "vllm_overheads", "vllm", "vllm_previous_model"]
    split_rows = [
        {"variant": v, "GPU": labels[n], **{k: per_gpu[n]["grid"][v][k] for k in parts}}
        for v in counts
        for n in gpus
    ]
    stages = list(per_gpu[next(iter(gpus))]["compression"])
    terms = [k for k in per_gpu[next(iter(gpus))]["compression"][stages[0]] if k not in ("columns",)]
    term_rows = [
        {
            "term": t,
            **{f"{labels[n]}: {st}": round(per_gpu[n]["compression"][st][t]) for n in gpus for st in stages},
        }
        for t in terms
    ]
    fmts = [f for f in per_gpu[next(iter(gpus))]["overheads"] if "not written" not in f]
    over_terms = list(per_gpu[next(iter(gpus))]["overheads"][fmts[0]])
    over_rows = [
        {"term": t, **{f"{labels[n]}: {f}": round(per_gpu[n]["overheads"][f][t]) for n in gpus for f in fmts}}
        for t in [*over_terms]
    ]
    md = f"paper grid: {len(points)} points ({', '.join(f'{p}/{b}' for p, b in points)}) plus the dense model\n\n"
    md += (
        f"evaluation settings (conf/benchmark/paper.yaml): max_length {settings['max_length']}, max_gen_toks "
        f"{settings['max_gen_toks']}; HF batch_size {settings['batch_size']} (A10), 16 on 80 GB; vLLM "
        f"gpu_memory_utilization {args.utilization}, its default max_num_batched_tokens / max_num_seqs "
        "(8192 / 256 below 70 GiB, 16384 / 1024 above)\n\n"
        "vLLM's memory (jcexp/memory.py: vllm_budget):\n\n"
    )
    md += table(mem_rows, cols)
    md += "\n\nhours:\n\n" + table(time_rows, cols)
    md += "\n\nGPU-hours for the grid (evaluations: the dense baseline and 2-, 3- and 16-bit points from bf16 weights, "
    md += f"{by_format['w4a16']} W4A16 and {by_format['w8a16']} W8A16 points packed, for vLLM):\n\n"
    md += table(grid_rows, list(grid_rows[0]))
    md += "\n\nthe vLLM column split (GPU-hours; the previous model: all compression at 40% of the bf16 peak, no overheads):\n\n"
    md += table(split_rows, list(split_rows[0]))
    md += (
        f"\n\ncompression, seconds per run, term by term ({cols_cost['us_per_column']} µs per swept column, "
        f"measured: bench/results/estimate_columns.json; {_sweep_columns(SPARSEGPT_SWEEPS)} columns for SparseGPT, "
        f"{_sweep_columns(GPTQ_SWEEPS)} for GPTQ):\n\n"
    )
    md += table(term_rows, list(term_rows[0]))
    check = compression_terms("a100", A100, args.calib_tokens, cols_cost["us_per_column"])
    eager = check["GPTQ, Case B (pruned points)"]
    md += (
        f"\n\ncross-check: the same terms give eager GPTQ (the per-column sweep, as Case B runs it) on an A100 "
        f"{eager['total'] / 60:.0f} min ({', '.join(f'{k} {v / 60:.1f}' for k, v in eager.items() if k not in ('total', 'columns'))} "
        f"min); llm-compressor's runtime guide puts GPTQ on Llama-3-8B at about {GUIDE_GPTQ_A100_MIN} min on an A100."
    )
    md += f"\n\nvLLM evaluation overheads, seconds per evaluation of a compressed point (request_chunk {chunk}; the dense baseline is read from the hub snapshot, not written):\n\n"
    md += table(over_rows, list(over_rows[0]))
    md += (
        f"\n\nassumptions: effective rate {EFFICIENCY:.0%} of the bf16 dense peak for prefill and compression "
        f"(CPU here: {cpu_flops / 1e9:.1f} GFLOP/s measured in the calibration forward), the full memory "
        f"bandwidth for decode, {args.calib_tokens} calibration tokens, questions/prompt tokens {SUITE}, generated "
        f"tokens (mean, p90) {GENERATED}, shared few-shot prefix tokens and groups {SHARED_PREFIX}; "
        f"float32 work at {FP32_EFFICIENCY:.0%} of the fp32 peak {FP32_TFLOPS} (factorization "
        f"{FACTOR_EFFICIENCY:.0%}), {CALIB_PASSES} calibration passes, disk {DISK_READ_GBPS} GB/s read / "
        f"{DISK_WRITE_GBPS} GB/s write, vLLM start-up {VLLM_STARTUP_S:.0f} s, task build {TASK_BUILD_S:.0f} s"
    )
    payload = {
        "settings": {**vars(args), "eval": settings, "gpus": gpus, "efficiency": EFFICIENCY},
        "columns": cols_cost,
        "cpu": {"flops": cpu_flops, **cpu_8b},
        "gpus": per_gpu,
        "counts": counts,
        "points": points,
    }
    from bench.common import write

    write("estimate", payload, md)


if __name__ == "__main__":
    main()
