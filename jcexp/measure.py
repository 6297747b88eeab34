"""Measurements taken from the weights and the process, never assumed from the config: sparsity after each
stage, N:M structure, what quantization did to pruned and kept weights, bytes on disk, time and peak memory."""

from __future__ import annotations

import hashlib
import math
import os
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

LM_HEAD = "lm_head"


def compressible_linears(model) -> dict[str, torch.nn.Linear]:
    """The decoder's Linear layers: what jcexp compresses (lm_head is never touched)."""
    return {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and LM_HEAD not in name
    }


def _weight(mod: torch.nn.Module) -> torch.Tensor:
    return mod.weight.detach()


def zero_masks(model) -> dict[str, torch.Tensor]:
    """Exact-zero positions of every compressible weight, bit-packed (8x smaller than bool) for 8B models."""
    import numpy as np

    out = {}
    for name, mod in compressible_linears(model).items():
        flat = (_weight(mod) == 0).flatten().cpu().numpy()
        out[name] = torch.from_numpy(np.packbits(flat))
    return out


def _unpack(packed: torch.Tensor, numel: int) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.unpackbits(packed.numpy(), count=numel).astype(bool))


def sparsity(model) -> dict[str, Any]:
    """Fraction of exact zeros over all compressible weights, and its spread across layers."""
    zeros = total = 0
    per_layer = []
    for mod in compressible_linears(model).values():
        w = _weight(mod)
        z = int((w == 0).sum())
        zeros, total = zeros + z, total + w.numel()
        per_layer.append(z / w.numel())
    return {
        "overall": zeros / total if total else 0.0,
        "zeros": zeros,
        "weights": total,
        "layer_min": min(per_layer, default=0.0),
        "layer_max": max(per_layer, default=0.0),
    }


def zeros_after_quantization(model, pruned: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Split the zeros after quantization by their origin (quantization alone creates exact zeros too).

    pruned_still_zero: share of pruned positions still exactly zero (Case B keeps 1.0; Case A may not);
    kept_rounded_to_zero: share of kept (unpruned) weights that quantization rounded to zero.
    """
    pruned_n = pruned_zero = kept_n = kept_zero = 0
    for name, mod in compressible_linears(model).items():
        w = _weight(mod).flatten()
        is_zero = (w == 0).cpu()
        was_pruned = _unpack(pruned[name], w.numel())
        pruned_n += int(was_pruned.sum())
        pruned_zero += int((is_zero & was_pruned).sum())
        kept_n += int((~was_pruned).sum())
        kept_zero += int((is_zero & ~was_pruned).sum())
    return {
        "pruned_still_zero": pruned_zero / pruned_n if pruned_n else None,
        "pruned_revived": pruned_n - pruned_zero,
        "kept_rounded_to_zero": kept_zero / kept_n if kept_n else 0.0,
    }


def nm_structure(model, n: int, m: int, block: int | None = None) -> dict[str, Any]:
    """Share of full N:M groups with at least N zeros: the layout's own groups (restarting at every ``block``
    of columns, as SparseGPT's; jcexp/nm.py), and the row's groups of M from column 0 (what an N:M kernel
    reads). Partial groups are left out of both shares: they follow the partial-group rule instead."""
    from jcexp import nm as layout

    counts = {"layout": [0, 0], "row": [0, 0]}
    columns: dict[tuple[str, int], torch.Tensor] = {}
    for mod in compressible_linears(model).values():
        w = _weight(mod)
        width = w.shape[1]
        for kind, blk in (("layout", block), ("row", None)):
            key = (kind, width)
            if key not in columns:
                columns[key] = torch.tensor(layout.full_group_columns(width, m, blk), dtype=torch.long)
            cols = columns[key]
            if not len(cols):
                continue
            zeros = (w.index_select(1, cols.to(w.device)).reshape(w.shape[0], -1, m) == 0).sum(-1)
            counts[kind][0] += zeros.numel()
            counts[kind][1] += int((zeros >= n).sum())
    (groups, holding), (row_groups, row_holding) = counts["layout"], counts["row"]
    return {
        "pattern": f"{n}:{m}",
        "block": block,
        "groups": groups,
        "groups_holding": holding / groups if groups else None,
        "row_groups_holding": row_holding / row_groups if row_groups else None,
    }


def uncompressed_digests(model) -> dict[str, str]:
    """Hash of every parameter outside the compressible Linear layers (norms, embeddings, lm_head, biases of
    other modules), by name: none of them may change. A tied lm_head is one tensor with the embeddings and is
    hashed once, under the first name ``named_parameters`` gives it (see ``lm_head_key``)."""
    linears = compressible_linears(model)
    return {
        name: hashlib.sha256(param.detach().cpu().float().numpy().tobytes()).hexdigest()[:16]
        for name, param in model.named_parameters()
        if name.rpartition(".")[0] not in linears
    }


def lm_head_key(model) -> str:
    """lm_head's weight in ``uncompressed_digests`` (``model.embed_tokens.weight`` when tied, as in SmolLM2)."""
    head = model.get_output_embeddings().weight
    return next(name for name, param in model.named_parameters() if param is head)


def dir_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2}


def stored_bits(path: str | Path, weights: dict[str, int], reference_bits: int = 16) -> dict[str, float]:
    """Bits per weight actually stored for the compressible Linear layers of a saved checkpoint: packed values,
    scales, zero points, shapes and any sparsity bitmaps, i.e. every tensor under those modules. Read from the
    safetensors headers, so no weight is loaded. ``weights`` maps module name -> number of weights."""
    from safetensors import safe_open

    stored = 0
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), "pt") as fh:
            for key in fh.keys():
                if key.rpartition(".")[0] not in weights:
                    continue
                tensor = fh.get_slice(key)
                stored += math.prod(tensor.get_shape()) * _DTYPE_BYTES.get(tensor.get_dtype(), 1)
    n = sum(weights.values())
    bpw = 8 * stored / n if n else float("nan")
    return {
        "linear_bytes": stored,
        "linear_weights": n,
        "bits_per_weight": bpw,
        # Beside the theoretical TCr, against the same 16-bit reference. fp32 storage of an unquantized layer
        # shows as negative compression: that is what is on disk.
        "physical_compression_rate": 1 - bpw / reference_bits,
    }


def _rss_bytes() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


class Meter:
    """Wall time and peak memory of one timed step: RSS sampled every 50 ms (ru_maxrss cannot be reset between
    stages), plus the CUDA allocator's peak when a GPU is used."""

    def __init__(self, name: str):
        self.name = name
        self.seconds = 0.0
        self.peak_rss = 0
        self.peak_cuda: int | None = None
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_rss = max(self.peak_rss, _rss_bytes())

    def __enter__(self) -> Meter:
        self.peak_rss = _rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, _rss_bytes())
        if torch.cuda.is_available():
            self.peak_cuda = int(torch.cuda.max_memory_allocated())

    def record(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
            "peak_cuda_mb": None if self.peak_cuda is None else round(self.peak_cuda / 2**20, 1),
        }


@contextmanager
def timed(records: dict[str, Any], name: str) -> Iterator[Meter]:
    """Time and measure the block; its record lands in ``records[name]`` (result.json's ``stages``). A stage
    that runs again in the same run (sequential evaluation scores chunk after chunk) adds up: the seconds
    are summed, the peaks are the maximum, ``calls`` counts the blocks."""
    meter = Meter(name)
    with meter:
        yield meter
    new, old = meter.record(), records.get(name)
    if old is not None:
        new["seconds"] = round(old["seconds"] + new["seconds"], 3)
        for peak in ("peak_rss_mb", "peak_cuda_mb"):
            if old.get(peak) is not None:
                new[peak] = max(old[peak], new[peak] or 0.0)
        new["calls"] = old.get("calls", 1) + 1
    records[name] = new


def process_peak_rss_mb() -> float:
    """This process's peak RSS since it started. Linux's VmHWM, which exec resets; ru_maxrss is the fallback
    elsewhere, but it survives exec, so a job forked from a large parent (pytest, a notebook) would report the
    parent's size at fork time as its own peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
