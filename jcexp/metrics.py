"""The paper's equations (arXiv 2505.07289, section III) as pure functions.

Standard library only, so each function can be read next to the equation it implements.
Conventions: sparsity ``s`` is a percentage in [0, 100); ``bits`` is the weight bit width, 16 meaning
"not quantized" (the paper's fp16 reference). Every rate returned is a fraction, not a percentage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

REFERENCE_BITS = 16


def _check(sparsity: float, bits: float) -> None:
    if not 0 <= sparsity < 100:
        raise ValueError(f"sparsity must be a percentage in [0, 100), got {sparsity}")
    if not 0 < bits <= REFERENCE_BITS:
        raise ValueError(f"bits must be in (0, {REFERENCE_BITS}], got {bits}")


def tcr(sparsity: float, bits: float) -> float:
    """Theoretical Compression Rate, eq. (1).

    pruning-only: s/100; quantization-only: 1 - q/16; joint: 1 - (q/16)(100 - s)/100.
    The joint form reduces to the other two at q = 16 or s = 0, so one expression covers all three.
    """
    _check(sparsity, bits)
    return 1.0 - (bits / REFERENCE_BITS) * (100.0 - sparsity) / 100.0


def retention(compressed: float, original: float) -> float:
    """Task retention R_t = P_Mc(t) / P_Mo(t), eq. (10)."""
    if original == 0:
        raise ValueError("retention is undefined when the original score is 0")
    return compressed / original


def perplexity_retention(ppl_compressed: float, ppl_original: float) -> float:
    """Retention of a lower-is-better score: ppl_original / ppl_compressed (1.0 means no loss).

    Not in the paper, which argues perplexity tracks capability poorly; jcexp reports it beside Sr, never in it.
    """
    if ppl_compressed <= 0:
        raise ValueError("perplexity must be positive")
    return ppl_original / ppl_compressed


def semantic_retention(
    compressed: Mapping[str, float], original: Mapping[str, float], kind: str = "sr2"
) -> float:
    """Semantic Retention Rate over a finite task set.

    ``kind="sr2"``: ratio of sums, eq. (12), the paper's Sr.
    ``kind="sr1"``: mean of per-task ratios, eq. (11).
    """
    if set(compressed) != set(original):
        raise ValueError(f"task sets differ: compressed {sorted(compressed)} vs original {sorted(original)}")
    if not original:
        raise ValueError("semantic retention needs at least one task")
    tasks = sorted(original)
    if kind == "sr2":
        total = sum(original[t] for t in tasks)
        if total == 0:
            raise ValueError("Sr2 is undefined when every original score is 0")
        return sum(compressed[t] for t in tasks) / total
    if kind == "sr1":
        return sum(retention(compressed[t], original[t]) for t in tasks) / len(tasks)
    raise ValueError(f"kind must be 'sr1' or 'sr2', got {kind!r}")


def pruning_factor(sparsity: float) -> float:
    """sqrt(p), the pruning weight of eq. (13)."""
    _check(sparsity, REFERENCE_BITS)
    return math.sqrt(sparsity / 100.0)


def quantization_factor(bits: float) -> float:
    """-log2(q/16)/4, the quantization weight of eq. (14); 4 = log2(16/1) normalizes to [0, 1]."""
    _check(0, bits)
    return -math.log2(bits / REFERENCE_BITS) / 4.0


def srcr(sr: float, sparsity: float, bits: float) -> float:
    """Semantic Retention Compression Rate, eqs. (13)-(15).

    Which equation applies follows from the active methods: SrCr_p = sqrt(p)·Sr (pruning only),
    SrCr_q = -log2(q/16)/4·Sr (quantization only), SrCr_j = [-log2(q/16)/4·sqrt(p)]·Sr (joint),
    and 0 for the dense model.
    """
    _check(sparsity, bits)
    pruned, quantized = sparsity > 0, bits < REFERENCE_BITS
    if pruned and quantized:
        return quantization_factor(bits) * pruning_factor(sparsity) * sr
    if pruned:
        return pruning_factor(sparsity) * sr
    if quantized:
        return quantization_factor(bits) * sr
    return 0.0


def srcr_estimate(sr_pruned: float, sr_quantized: float, sparsity: float, bits: float) -> float:
    """The estimate SrCr_p · SrCr_q that the paper's Fig. 6 sets against the measured SrCr_j."""
    return srcr(sr_pruned, sparsity, REFERENCE_BITS) * srcr(sr_quantized, 0, bits)


def mask_overhead_bits(n: int | None = None, m: int | None = None) -> float:
    """Mask storage in bits per weight, as the paper cites in IV-B.4.

    Unstructured: a full bitmap, 1 bit per weight. N:M: log2(C(M, N)) / M bits per weight.
    """
    if n is None and m is None:
        return 1.0
    if n is None or m is None or not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
    return math.log2(math.comb(m, n)) / m


def flips(
    dense: Mapping[str, Mapping[str, float]], compressed: Mapping[str, Mapping[str, float]]
) -> dict[str, dict]:
    """Items whose correctness changed, from per-item scores (task -> item id -> 0/1), on the items both
    evaluations answered: correct -> wrong, wrong -> correct, and the flip rate (both over the items).

    Not in the paper: an item-level view beside Sr (two compressed models can keep Sr at 1 while flipping many
    items both ways). A task whose values are not all 0 or 1 is left out and named in ``skipped``."""
    tasks: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    for task in sorted(set(dense) & set(compressed)):
        shared = sorted(set(dense[task]) & set(compressed[task]))
        pairs = [(dense[task][i], compressed[task][i]) for i in shared]
        if any(v not in (0, 1) for pair in pairs for v in pair):
            skipped[task] = "per-item values are not 0/1"
            continue
        lost = sum(1 for d, c in pairs if d == 1 and c == 0)
        gained = sum(1 for d, c in pairs if d == 0 and c == 1)
        tasks[task] = _flip_row(len(pairs), lost, gained)
    total = _flip_row(
        sum(t["items"] for t in tasks.values()),
        sum(t["correct_to_wrong"] for t in tasks.values()),
        sum(t["wrong_to_correct"] for t in tasks.values()),
    )
    return {"all": total, "tasks": tasks, "skipped": skipped}


def _flip_row(items: int, lost: int, gained: int) -> dict:
    return {
        "items": items,
        "correct_to_wrong": lost,
        "wrong_to_correct": gained,
        "flips": lost + gained,
        "rate": (lost + gained) / items if items else None,
    }
