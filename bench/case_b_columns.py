"""Case B's column sweep (jcexp/compress/case_b.py: quantize_kept_only) at Llama-3.1-8B layer shapes on this CPU:
where its time goes, and how many Python iterations of the per-column loop a whole 8B model runs.

    flock /tmp/jcexp-heavy.lock python -m bench.case_b_columns [--shapes q_proj,down_proj] [--repeats 2]

One matrix per shape, batch 1, float32 (GPTQ_PRECISION), 4-bit symmetric groups of 128 (the paper's GPTQ), 25%
of the weights exactly zero (so Case B's mask is live), and a random SPD Hessian (low rank plus a diagonal:
building a full-rank X^T X of 14336 columns would cost more than the sweep). The sweep's parts are timed apart:
the Hessian factorization (llm-compressor's factorize_hessian), the lazy block updates (one bmm per block of
128 columns), and the rest, which is the per-column loop (fake_quantize, error, rank-1 update inside the block).
Beside it, llm-compressor 0.14's own quantize_weight on the same input (stock_sweep_s): on CPU, its eager sweep.
The per-column loop also runs with a profiler on a slice to count the operators one column launches: on a GPU
each is a kernel launch, so the loop's time there is launches x per-launch cost, whatever the FLOPs.
Writes bench/results/estimate_columns.{json,md}; bench/estimate.py reads it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from bench.common import table, write

# (rows, cols) as llm-compressor 0.14 sweeps them: the weight is [out, in], the Hessian [in, in].
# "rows64": a 64-row slice of q_proj, whose loop is almost all per-operator overhead (the Python and dispatcher
# cost of each column's operators): a floor for the loop on any device, where FLOPs are not what it waits on.
SHAPES = {"q_proj": (4096, 4096), "down_proj": (4096, 14336), "rows64": (64, 4096)}
GROUP = 128


def _inputs(rows: int, cols: int, seed: int = 0) -> dict[str, Any]:
    from compressed_tensors.quantization import QuantizationArgs

    g = torch.Generator().manual_seed(seed)
    W = torch.randn(1, rows, cols, generator=g) * 0.02
    W[torch.rand(1, rows, cols, generator=g) < 0.25] = 0.0  # pruned: Case B's mask is live
    A = torch.randn(cols, 256, generator=g)
    H = (A @ A.T / 256 + 0.1 * torch.eye(cols)).unsqueeze(0)  # SPD, well conditioned
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP)
    absmax = W.abs().reshape(1, rows, cols // GROUP, GROUP).amax(-1).clamp(min=1e-8)
    scale = absmax / 7.5
    zero = torch.zeros_like(scale, dtype=torch.int8)
    return {
        "weights": W,
        "hessians": H,
        "scale": scale,
        "zero_point": zero,
        "global_scale": None,
        "quant_args": args,
    }


def _lazy_updates(cols: int, rows: int, Hinv: torch.Tensor, keep: torch.Tensor, block: int = 128) -> None:
    """The sweep's between-block work alone: one bmm and one masked subtraction per block."""
    W = torch.zeros(1, rows, cols)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        err = torch.zeros(1, rows, i2 - i1)
        W[:, :, i2:] -= torch.bmm(err, Hinv[:, i1:i2, i2:]) * keep[:, :, i2:]


def ops_per_column(rows: int = 256, cols: int = 256) -> int:
    """Operators the profiler sees in the sweep over a small matrix, less those outside the column loop, per
    column (the loop's body does not depend on the shape)."""
    from torch.profiler import ProfilerActivity, profile

    from jcexp.compress.case_b import quantize_kept_only

    def count(c: int) -> int:
        x = _inputs(rows, c, seed=1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            quantize_kept_only(**x)
        return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)

    return round((count(2 * cols) - count(cols)) / cols)


def measure(name: str, repeats: int) -> dict[str, Any]:
    from llmcompressor.modifiers.gptq.helpers import factorize_hessian

    from jcexp.compress.case_b import kept_mask, quantize_kept_only

    rows, cols = SHAPES[name]
    x = _inputs(rows, cols)
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

    total, factor, lazy, stock = [], [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        quantize_kept_only(**x)
        total.append(time.perf_counter() - start)
        start = time.perf_counter()
        quantize_weight(**{**x, "weights": x["weights"].clone(), "hessians": x["hessians"].clone()})
        stock.append(time.perf_counter() - start)
        W, H = x["weights"].clone(), x["hessians"].clone()
        start = time.perf_counter()
        Hinv = factorize_hessian(W, H, 0.01, torch.zeros(1, dtype=torch.bool))
        factor.append(time.perf_counter() - start)
        keep = kept_mask(x["weights"])
        start = time.perf_counter()
        _lazy_updates(cols, rows, Hinv, keep)
        lazy.append(time.perf_counter() - start)
        del W, H, Hinv
    t, f, z = min(total), min(factor), min(lazy)
    loop = max(t - f - z, 0.0)
    return {
        "shape": name,
        "rows": rows,
        "cols": cols,
        "sweep_s": round(t, 2),
        "factorize_s": round(f, 2),
        "lazy_updates_s": round(z, 2),
        "column_loop_s": round(loop, 2),
        "loop_share": round(loop / t, 3),
        "us_per_column": round(1e6 * loop / cols, 1),
        "runs_s": [round(v, 2) for v in total],
        # llm-compressor 0.14's own sweep on the same input: on CPU its eager block loop, the same per-column
        # structure without the mask (on CUDA it would take the fused Triton block instead).
        "stock_sweep_s": round(min(stock), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="rows64,q_proj,down_proj")
    parser.add_argument("--repeats", type=int, default=2, help="each part's minimum over this many runs")
    parser.add_argument("--name", default="estimate_columns", help="bench/results/<name>.{json,md}")
    args = parser.parse_args(argv)
    rows = [measure(s, args.repeats) for s in args.shapes.split(",")]
    ops = ops_per_column()
    payload = {
        "settings": vars(args),
        "threads": torch.get_num_threads(),
        "rows": rows,
        "ops_per_column": ops,
    }
    md = (
        f"`python -m bench.case_b_columns --shapes {args.shapes} --repeats {args.repeats}` "
        f"({torch.get_num_threads()} threads; each part the minimum of {args.repeats} runs)\n\n"
    )
    md += table(rows, ["shape", "rows", "cols", "sweep_s", "factorize_s", "lazy_updates_s", "column_loop_s",
                       "loop_share", "us_per_column", "runs_s", "stock_sweep_s"])  # fmt: skip
    md += f"\n\nOperators per column of the loop (profiler, 256-row slice): {ops}."
    write(args.name, payload, md)
    print(md)


if __name__ == "__main__":
    main()
