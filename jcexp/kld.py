"""Distribution-level retention, as pure numbers: the bucketed KL(dense || compressed) per token, and its
document-level paired bootstrap. numpy only (no torch, no I/O): the forward that produces the log-probabilities
is jcexp/divergence.py.

The bucket. Storing the dense model's whole next-token distribution is |V| floats per token (49k for SmolLM2,
262k for Gemma 3): too big to cache. The dense side keeps its top-k log-probabilities and the log of the mass
left outside them; the KL is then computed on the partition {each top-k token, the rest as one bucket}:

    KL_k = sum_{i in top-k} p_i log(p_i / q_i) + p_R log(p_R / q_R),   p_R = 1 - sum_top p_i, q_R likewise.

Error bound: merging outcomes never increases a KL divergence (the log-sum inequality; the data-processing
inequality for the map token -> bucket), so KL_k <= KL. The chain rule gives the gap exactly:
KL - KL_k = p_R * KL(P(.|R) || Q(.|R)), the dense model's mass outside its top k times the divergence of the
two models' distributions renormalized inside the rest. It vanishes as p_R -> 0 and is 0 when the compressed
model is the dense one. tests/test_divergence.py checks both on the tiny model against the full-vocabulary KL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def bucket_kl(p_top: np.ndarray, p_rest: np.ndarray, q_top: np.ndarray, q_rest: np.ndarray) -> np.ndarray:
    """Per-token KL(P || Q) on the partition {top-k tokens of P, the rest}, in nats.

    ``p_top``, ``q_top``: [T, k] log-probabilities of P's top-k tokens under P and under Q; ``p_rest``,
    ``q_rest``: [T] log of the mass outside those tokens (-inf where there is none). A lower bound of the full
    KL (module docstring); exactly 0 when Q's numbers equal P's."""
    p_top, q_top = np.asarray(p_top, np.float64), np.asarray(q_top, np.float64)
    p_rest, q_rest = np.asarray(p_rest, np.float64), np.asarray(q_rest, np.float64)
    if p_top.shape != q_top.shape or p_rest.shape != q_rest.shape or p_top.shape[:1] != p_rest.shape:
        raise ValueError(f"shapes differ: P {p_top.shape} {p_rest.shape}, Q {q_top.shape} {q_rest.shape}")
    with np.errstate(invalid="ignore"):  # -inf - -inf where a bucket is empty on both sides: its term is 0
        top = np.where(np.isneginf(p_top), 0.0, np.exp(p_top) * (p_top - q_top)).sum(axis=-1)
        rest = np.where(np.isneginf(p_rest), 0.0, np.exp(p_rest) * (p_rest - q_rest))
    return top + rest


def document_interval(
    values: Mapping[str, Sequence[float]], seed: int, resamples: int = RESAMPLES, level: float = LEVEL
) -> dict[str, Any]:
    """The token-weighted means over documents and their percentile intervals from one document-level bootstrap.

    ``values``: document id -> [sum of per-token KL, tokens scored, tokens whose argmax agrees]. Documents are
    resampled with replacement, B times with ``seed``; each draw is one set of documents for both models (a
    document's KL already pairs them), and the KL and the top-1 agreement are read from the same draw. A mean
    over tokens of the drawn documents (ratio of sums), as llama.cpp's perplexity tool reports its mean KL.
    Fewer than 2 documents: no interval."""
    ids = sorted(values)
    arr = np.asarray([values[i] for i in ids], dtype=np.float64).reshape(len(ids), -1)
    if arr.shape[1] != 3:
        raise ValueError("each document needs [KL sum, tokens, top-1 agreements]")
    kl, tokens, agree = arr[:, 0], arr[:, 1], arr[:, 2]
    total = tokens.sum()
    out: dict[str, Any] = {
        "kld": float(kl.sum() / total) if total else None,
        "top1_agreement": float(agree.sum() / total) if total else None,
        "kld_ci": None,
        "top1_agreement_ci": None,
        "documents": len(ids),
        "tokens": int(total),
        "ci": {
            "method": "document-level bootstrap, percentile (documents resampled; each draw's KL and top-1 "
            "agreement are token-weighted means over its documents)",
            "resamples": resamples,
            "seed": seed,
            "level": level,
        },
    }
    if len(ids) < 2 or not total:
        return out
    draws = np.random.default_rng(seed).integers(0, len(ids), size=(resamples, len(ids)))
    n = tokens[draws].sum(axis=1)
    alpha = 100 * (1 - level) / 2
    for name, x in (("kld", kl), ("top1_agreement", agree)):
        stat = x[draws].sum(axis=1) / n
        lo, hi = np.percentile(stat, [alpha, 100 - alpha])
        out[f"{name}_ci"] = [float(lo), float(hi)]
    return out
