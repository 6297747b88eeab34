"""Case B (jcexp/compress/case_b.py on llm-compressor 0.14) against llm-compressor 0.12's own GPTQ, the last one
that kept pruned zeros, on seeded synthetic layers.

    make lc012-env && python -m bench.case_b_vs_012 [--quick]

Each layer (rows 64-256, cols 256-512, correlated inputs with uneven channel magnitudes for the Hessian; half
with two dead input channels, the other half with 8 kept weights of +-5e-9, which 0.12's mask, ~isclose(W, 0),
counts as pruned) is pruned by magnitude (3%, below 0.12's 5% threshold; 25% and 50% unstructured; 2:4)
or left dense, then quantized to 4 or 3 bits (symmetric int, group 64 or 128), with static act-order or none.
One payload file carries the weights, Hessians and arguments to both sides:
- 0.12, in .venv-lc012 (a subprocess running this file with --worker-012): a torch.nn.Linear with the weight,
  initialized for quantization and observed as 0.12's GPTQModifier does at a layer's end, then 0.12's
  GPTQModifier.compress_module_list, which calls 0.12's real quantize_weight(module, quant_args, hessian, ...)
  with its own observer's scales; once more with the scales 0.14's observer computed, forced in.
- 0.14, here: the same Linear through jcexp's CaseBGPTQModifier.compress_module_list (Case B) and through stock
  GPTQModifier.compress_module_list (Case A), so the scales come from 0.14's observer exactly as in a real run
  (update_batch_qparams / prepare_batch around the sweep).
Per configuration: max |diff| of the quantized weights and the fraction of positions that differ, Case B vs 0.12
and Case A vs 0.12; the pruned zeros still zero on each side; whether the two observers' scales are equal, and
Case B vs 0.12 with 0.14's scales forced on 0.12; the GPTQ losses' relative difference; the layer-output error
tr((W-Q) H (W-Q)^T) / tr(W H W^T) of each. Both sides run one thread (bit-for-bit comparisons need the same
reduction order).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
LC012_PYTHON = Path(os.environ.get("LC012_VENV", ROOT / ".venv-lc012")) / "bin" / "python"
SHAPES = ((64, 256), (128, 384), (256, 512), (192, 512))
PRUNINGS = ("0", "3%", "25%", "50%", "2:4")
BLOCKSIZE, PERCDAMP = 128, 0.01


# ------------------------------------------------------------------ the layers (main side)
def configs(quick: bool = False) -> list[dict]:
    """The grid; --quick keeps a few, pruned, with and without act-order (tests/test_case_b.py runs those)."""
    grid = itertools.product(PRUNINGS, (4, 3), (64, 128), ("static", None))
    out = []
    for index, (prune, bits, group, actorder) in enumerate(grid):
        rows, cols = SHAPES[index % len(SHAPES)]
        if cols % group:
            rows, cols = SHAPES[(index + 2) % len(SHAPES)]  # 384 is not a multiple of 128: the next shape
        out.append(
            {
                "name": f"{prune} w{bits} g{group} {actorder or 'no'}-order {rows}x{cols}",
                "seed": 1000 + index,
                "rows": rows,
                "cols": cols,
                "prune": prune,
                "dead_cols": 2 if index % 2 else 0,
                "tiny": 0 if index % 2 else 8,
                "args": {
                    "num_bits": bits,
                    "type": "int",
                    "symmetric": True,
                    "strategy": "group",
                    "group_size": group,
                    "actorder": actorder,
                },
            }
        )
    if quick:
        keep = {
            "50% w4 g64 static-order",
            "2:4 w3 g128 no-order",
            "25% w4 g128 static-order",
            "3% w4 g64 no-order",
        }
        out = [c for c in out if c["name"].rsplit(" ", 1)[0] in keep]
    return out


def make_layer(cfg: dict) -> dict:
    """Seeded weight (magnitude-pruned as cfg says), Hessian sum 2 X^T X and sample count, as GPTQ accumulates."""
    g = torch.Generator().manual_seed(cfg["seed"])
    rows, cols = cfg["rows"], cfg["cols"]
    W = torch.randn(rows, cols, generator=g) * 0.02 * (0.5 + torch.rand(rows, 1, generator=g))
    n = 2 * cols
    # Correlated inputs (rank 32 plus noise) with uneven channel magnitudes, so act-order reorders columns.
    X = torch.randn(n, 32, generator=g) @ torch.randn(32, cols, generator=g) + 0.3 * torch.randn(
        n, cols, generator=g
    )
    X = X * torch.exp(0.5 * torch.randn(cols, generator=g))
    if cfg["dead_cols"]:
        X[:, torch.randperm(cols, generator=g)[: cfg["dead_cols"]]] = 0.0  # input channels that never fire
    inp = (2**0.5) * X
    H = inp.T @ inp
    prune = cfg["prune"]
    if prune == "2:4":  # two of every four consecutive weights, the smaller ones
        blocks = W.reshape(rows, cols // 4, 4)
        drop = blocks.abs().argsort(dim=-1)[..., :2]
        W = blocks.scatter(-1, drop, 0.0).reshape(rows, cols)
    elif prune != "0":
        k = round(float(prune.rstrip("%")) / 100 * cols)
        drop = W.abs().argsort(dim=1)[:, :k]
        W = W.scatter(1, drop, 0.0)
    if cfg["tiny"]:  # kept weights within isclose's atol (1e-8) of 0: 0.12's mask counts them as pruned
        kept = (W != 0).flatten().nonzero().squeeze(1)
        at = kept[torch.randperm(len(kept), generator=g)[: cfg["tiny"]]]
        W = W.flatten().index_put((at,), 5e-9 * torch.sign(W.flatten()[at])).reshape(rows, cols)
    return {"weight": W.contiguous(), "hessian": H, "num_samples": float(n)}


# ------------------------------------------------------------------ shared by both sides (torch and llm-compressor only)
def quantized_linear(weight: torch.Tensor, args_dict: dict):
    """A Linear initialized for quantization and observed as GPTQModifier leaves it at a layer's end
    (scheme, qparam slots, memoryless min-max weight observer, observe(weight)). Same calls in 0.12 and 0.14."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.initialize import initialize_module_for_quantization
    from llmcompressor.modifiers.quantization.calibration import initialize_observer, observe

    rows, cols = weight.shape
    linear = torch.nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        linear.weight.copy_(weight)
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**args_dict))
    linear.quantization_scheme = scheme
    initialize_module_for_quantization(linear, scheme)
    initialize_observer(linear, "weight")
    observe(linear, "weight")
    return linear


@contextmanager
def recording_losses(module, attr: str, sink: list):
    """Wrap ``module.attr`` (a GPTQ sweep) to keep the loss it returns: the modifiers only log it."""
    original = getattr(module, attr)  # on a class, a staticmethod's plain function

    def wrapper(*args, **kwargs):
        out = original(*args, **kwargs)
        if isinstance(out[0], float):  # 0.12: (loss, q_param_dict)
            sink.append(out[0])
        else:  # 0.14: (weights, per-matrix losses, fallback)
            sink.append(float(out[1].sum()))
        return out

    setattr(module, attr, wrapper)
    try:
        yield
    finally:
        setattr(module, attr, original)


def gptq_through_modifier(cls, layer: dict, args_dict: dict, forced: dict | None = None) -> dict:
    """One layer through ``cls.compress_module_list`` as the modifier runs it after calibration: the Hessian
    sum and sample count in its dicts, the observer's qparams (or ``forced``) read inside."""
    from llmcompressor.modifiers.gptq import base

    linear = quantized_linear(layer["weight"], args_dict)
    if forced is not None:
        qparams = {"scale": forced["scale"], "zero_point": forced["zero_point"], "global_scale": None}
        linear.weight_observer.get_qparams = lambda: dict(qparams)
    modifier = cls(targets=["Linear"], scheme="W4A16", block_size=BLOCKSIZE, dampening_frac=PERCDAMP)
    modifier._hessians[linear] = layer["hessian"].clone()
    modifier._num_samples[linear] = torch.tensor(layer["num_samples"])
    modifier._module_names[linear] = "layer"
    losses: list[float] = []
    # Case B's modifier hands seam.py its class's sweep; stock calls base.quantize_weight.
    if "sweep" in vars(cls):
        target, attr = cls, "sweep"
    else:
        target, attr = base, "quantize_weight"
    with recording_losses(target, attr, losses):
        modifier.compress_module_list([linear])
    return {
        "weight": linear.weight.detach().clone(),
        "scale": linear.weight_scale.detach().clone(),
        "zero_point": linear.weight_zero_point.detach().clone(),
        "loss": losses[0] if losses else None,
    }


def observer_qparams(weight: torch.Tensor, args_dict: dict) -> dict:
    qp = quantized_linear(weight, args_dict).weight_observer.get_qparams()
    return {"scale": qp["scale"].detach().clone(), "zero_point": qp["zero_point"].detach().clone()}


# ------------------------------------------------------------------ 0.12 side (run in .venv-lc012)
def worker_012(payload_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    from importlib.metadata import version

    from llmcompressor.modifiers.quantization import GPTQModifier

    payload = torch.load(payload_path)
    results = []
    for item in payload["layers"]:
        own = gptq_through_modifier(GPTQModifier, item["layer"], item["cfg"]["args"])
        forced = gptq_through_modifier(
            GPTQModifier, item["layer"], item["cfg"]["args"], forced=item["qparams_014"]
        )
        results.append({"own": own, "forced": forced})
    versions = {p: version(p) for p in ("llmcompressor", "compressed-tensors", "torch", "transformers")}
    torch.save({"results": results, "versions": versions}, out_path)


def run_012(items: list[dict], work: Path) -> dict:
    if not LC012_PYTHON.exists():
        raise SystemExit(
            f"{LC012_PYTHON} is missing: `make lc012-env` builds llm-compressor 0.12's environment"
        )
    payload, out = work / "payload.pt", work / "out012.pt"
    torch.save({"layers": items}, payload)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": ""}
    proc = subprocess.run(
        [str(LC012_PYTHON), str(Path(__file__).resolve()), "--worker-012", str(payload), str(out)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(f"llm-compressor 0.12 worker exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return torch.load(out)


# ------------------------------------------------------------------ comparison (main side)
def _diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a - b).abs()
    return {"max_abs_diff": float(d.max()), "frac_differ": float((a != b).float().mean())}


def _zeros_kept(Q: torch.Tensor, pruned: torch.Tensor) -> float | None:
    return float((Q[pruned] == 0).float().mean()) if pruned.any() else None


def _output_error(W: torch.Tensor, Q: torch.Tensor, H: torch.Tensor) -> float:
    D = (W - Q).double()
    H = H.double()
    return float(torch.einsum("rc,cd,rd->", D, H, D) / torch.einsum("rc,cd,rd->", W.double(), H, W.double()))


def compare(quick: bool = False) -> dict:
    from llmcompressor.modifiers.quantization import GPTQModifier

    from jcexp.compress.case_b import SPARSITY_THRESHOLD, CaseBGPTQModifier

    torch.set_num_threads(1)
    items = []
    for cfg in configs(quick):
        layer = make_layer(cfg)
        items.append(
            {"cfg": cfg, "layer": layer, "qparams_014": observer_qparams(layer["weight"], cfg["args"])}
        )
    with tempfile.TemporaryDirectory(prefix="jcexp-case-b-012-") as tmp:
        start = time.perf_counter()
        side012 = run_012(items, Path(tmp))
        seconds_012 = time.perf_counter() - start

    rows = []
    start = time.perf_counter()
    for item, r012 in zip(items, side012["results"], strict=True):
        cfg, layer = item["cfg"], item["layer"]
        W, H = layer["weight"], layer["hessian"] / layer["num_samples"]
        pruned = W == 0
        case_b = gptq_through_modifier(CaseBGPTQModifier, layer, cfg["args"])
        case_a = gptq_through_modifier(GPTQModifier, layer, cfg["args"])
        own, forced = r012["own"], r012["forced"]
        scales_equal = torch.equal(own["scale"], case_b["scale"]) and torch.equal(
            own["zero_point"].to(case_b["zero_point"].dtype), case_b["zero_point"]
        )
        b_vs = _diff(case_b["weight"], own["weight"])
        a_vs = _diff(case_a["weight"], own["weight"])
        bf_vs = _diff(case_b["weight"], forced["weight"])
        rows.append(
            {
                "config": cfg["name"],
                "sparsity": round(float(pruned.float().mean()), 4),
                "dead_cols": cfg["dead_cols"],
                "tiny": cfg["tiny"],
                "zeros_kept_012": _zeros_kept(own["weight"], pruned),
                "zeros_kept_B": _zeros_kept(case_b["weight"], pruned),
                "zeros_kept_A": _zeros_kept(case_a["weight"], pruned),
                "B_vs_012_max": b_vs["max_abs_diff"],
                "B_vs_012_frac": b_vs["frac_differ"],
                "A_vs_012_max": a_vs["max_abs_diff"],
                "A_vs_012_frac": a_vs["frac_differ"],
                "scales_equal": scales_equal,
                "max_scale_diff": float((own["scale"] - case_b["scale"]).abs().max()),
                "B_vs_012_forced_max": bf_vs["max_abs_diff"],
                "B_vs_012_forced_frac": bf_vs["frac_differ"],
                "loss_rel_diff_B_012": abs(case_b["loss"] - own["loss"]) / max(abs(own["loss"]), 1e-30),
                "out_err_012": _output_error(W, own["weight"], H),
                "out_err_B": _output_error(W, case_b["weight"], H),
                "out_err_A": _output_error(W, case_a["weight"], H),
            }
        )
    seconds_014 = time.perf_counter() - start
    return {
        "threshold": SPARSITY_THRESHOLD,
        "blocksize": BLOCKSIZE,
        "percdamp": PERCDAMP,
        "versions_012": side012["versions"],
        "seconds_012_side": round(seconds_012, 1),
        "seconds_014_side": round(seconds_014, 1),
        "rows": rows,
    }


def summary(result: dict) -> dict:
    rows = result["rows"]
    over = [r for r in rows if r["sparsity"] >= result["threshold"]]
    return {
        "configs": len(rows),
        "B_bit_identical_to_012": sum(r["B_vs_012_frac"] == 0 for r in rows),
        "B_max_abs_diff": max(r["B_vs_012_max"] for r in rows),
        "A_bit_identical_to_012_when_pruned": sum(r["A_vs_012_frac"] == 0 for r in over),
        "pruned_configs": len(over),
        "scales_equal": sum(r["scales_equal"] for r in rows),
        "zeros_kept_B_min": min(r["zeros_kept_B"] for r in over) if over else None,
        "zeros_kept_012_min": min(r["zeros_kept_012"] for r in over) if over else None,
        "zeros_kept_A_range": [min(r["zeros_kept_A"] for r in over), max(r["zeros_kept_A"] for r in over)]
        if over
        else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="four configurations instead of forty")
    parser.add_argument("--worker-012", nargs=2, metavar=("PAYLOAD", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_012:
        worker_012(*args.worker_012)
        return

    from bench.common import table, write

    result = compare(args.quick)
    result["summary"] = s = summary(result)
    columns = [
        "config",
        "sparsity",
        "dead_cols",
        "tiny",
        "zeros_kept_012",
        "zeros_kept_B",
        "zeros_kept_A",
        "B_vs_012_max",
        "B_vs_012_frac",
        "A_vs_012_max",
        "A_vs_012_frac",
        "scales_equal",
        "B_vs_012_forced_frac",
        "loss_rel_diff_B_012",
        "out_err_012",
        "out_err_B",
        "out_err_A",
    ]
    v = result["versions_012"]
    md = (
        f"llm-compressor {v['llmcompressor']} (compressed-tensors {v['compressed-tensors']}, torch {v['torch']}) "
        f"vs jcexp Case B and stock GPTQ on llm-compressor 0.14; block {BLOCKSIZE}, dampening {PERCDAMP}, "
        "one thread each side\n\n"
        + table(result["rows"], columns)
        + f"\n\nCase B bit-identical to 0.12 in **{s['B_bit_identical_to_012']} of {s['configs']}** configurations "
        f"(max |diff| {s['B_max_abs_diff']:.3g}); stock 0.14 GPTQ (Case A) bit-identical to 0.12 in "
        f"{s['A_bit_identical_to_012_when_pruned']} of the {s['pruned_configs']} configurations at or above "
        f"{result['threshold']:.0%} sparsity. Pruned zeros kept at or above the threshold: 0.12 min "
        f"{s['zeros_kept_012_min']}, Case B min {s['zeros_kept_B_min']}, Case A {s['zeros_kept_A_range']}. "
        f"Observer scales equal in {s['scales_equal']} of {s['configs']}.\n"
    )
    write("case_b_vs_012", result, md)


if __name__ == "__main__":
    main()
