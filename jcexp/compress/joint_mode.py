"""quant.case=joint: SparseGPT's joint mode on an already pruned matrix; every pruned weight ends exactly zero.

Not one of the paper's cases (III-B.2): Case A is stock GPTQ over every weight (eqs. 4-5), Case B quantizes the
kept weights only (eqs. 4 and 6; jcexp's B is llm-compressor <= 0.12's masked rule, case_b.py). llm-compressor
0.14's GPTQ is Case A: its column updates write into pruned positions, so pruned zeros come back. This module
supplies the one piece that must differ, the sweep, built from llm-compressor's own helpers (activation ordering,
Hessian factorization, per-column qparams, fake_quantize), and swaps it in for the duration of
``compress_module_list``. Everything else stays the stock GPTQModifier: calibration, Hessian accumulation,
observers, batching, and how qparams are written back.

The mask is read from the incoming weights (exact zeros = pruned). The sweep is SparseGPT's joint mode with
that mask fixed: earlier columns' compensation lands on every weight not yet visited, pruned positions
included; when a pruned weight's column comes up, its accumulated value w is set back to exactly 0 and its
error (w - 0)/d is propagated like a quantization error. So no pruned weight survives, and the compensation
that reached it is not thrown away but passed on to the columns after it (an earlier version re-zeroed pruned
positions after every update, discarding that share: tests/test_case_b.py measures that the joint mode's
output error is no larger).
"""

from __future__ import annotations

from copy import copy
from typing import ClassVar

import torch
from compressed_tensors.quantization import ActivationOrdering, QuantizationStrategy, fake_quantize
from llmcompressor.modifiers.gptq.helpers import (
    GPTQ_PRECISION,
    apply_activation_ordering,
    column_scale_window,
    factorize_hessian,
)

from jcexp.compress.seam import SweepGPTQModifier


def qdq_column(
    w: torch.Tensor, eff: torch.Tensor, zp: torch.Tensor | None, i: int, per_column
) -> torch.Tensor:
    """Quantize-dequantize column ``i`` of a block ([batch, rows]) with its per-column qparams, in one call."""
    return fake_quantize(
        w.transpose(0, 1),
        eff[:, :, i].transpose(0, 1),
        None if zp is None else zp[:, :, i].transpose(0, 1),
        per_column,
    ).transpose(0, 1)


def quantize_kept_weights(
    weights: torch.Tensor,
    hessians: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    global_scale: torch.Tensor | None,
    quant_args,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop-in for llm-compressor's ``quantize_weight`` (same arguments and returns, [batch, rows, cols])."""
    batch, rows, cols = weights.shape
    out_dtype, device = weights.dtype, weights.device
    W = weights.to(device=device, dtype=GPTQ_PRECISION)
    H = hessians.to(device=device, dtype=GPTQ_PRECISION)
    scale, zero_point = scale.to(device), zero_point.to(device)
    global_scale = None if global_scale is None else global_scale.to(device)
    W, H, perm = apply_activation_ordering(W, H, quant_args.actorder)
    keep = (W != 0).to(W.dtype)  # after any column permutation, so it lines up with W

    g_idx = None
    if quant_args.strategy in (QuantizationStrategy.GROUP, QuantizationStrategy.TENSOR_GROUP):
        g_idx = torch.arange(cols, device=device, dtype=torch.int) // quant_args.group_size
        # As stock GPTQ compares it: compressed-tensors' WEIGHT equals "static" too (GPTQModifier's default), so a
        # plain string test missed static act-order and formed groups in permuted order (max |diff| 2.79 vs stock).
        if perm is not None and quant_args.actorder == ActivationOrdering.WEIGHT:
            g_idx = torch.gather(g_idx.unsqueeze(0).expand(batch, -1), 1, perm)
    elif quant_args.strategy == QuantizationStrategy.BLOCK:
        raise NotImplementedError("the joint mode supports tensor, channel and group strategies")

    losses = torch.zeros(batch, rows, device=device)
    fallback = torch.zeros(batch, dtype=torch.bool, device=device)
    Hinv = factorize_hessian(W, H, percdamp, fallback)
    per_column = copy(quant_args)
    per_column.strategy = QuantizationStrategy.CHANNEL  # column_scale_window expands qparams per column

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, keep1, Hinv1 = W[:, :, i1:i2].clone(), keep[:, :, i1:i2], Hinv[:, i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        eff, zp = column_scale_window(
            scale, zero_point, global_scale, g_idx, quant_args, num_rows=rows, i1=i1, i2=i2
        )
        for i in range(i2 - i1):
            w = W1[:, :, i]
            q = qdq_column(w, eff, zp, i, per_column)
            q = q * keep1[:, :, i]  # a pruned weight ends exactly zero
            err = (w - q) / Hinv1[:, i, i][
                :, None
            ]  # at a pruned row: (w - 0)/d, the compensation it received
            W1[:, :, i:] -= err.unsqueeze(-1) * Hinv1[:, i, i:].unsqueeze(1)
            W1[:, :, i] = q
            Err1[:, :, i] = err
            losses += err.square() / 2
        W[:, :, i1:i2] = W1
        W[:, :, i2:] -= torch.bmm(Err1, Hinv[:, i1:i2, i2:])

    if perm is not None:
        W = torch.gather(W, -1, torch.argsort(perm, dim=-1).unsqueeze(-2).expand(-1, rows, -1))
    return W.to(out_dtype), losses.sum(dim=1), fallback


class JointModeGPTQModifier(SweepGPTQModifier):
    """GPTQModifier in SparseGPT's joint mode: ``quant.case=joint`` selects it (conf/quant/gptq.yaml)."""

    preserves_sparsity: ClassVar[bool] = True
    gptq_case: ClassVar[str] = "joint"
    sweep: ClassVar = staticmethod(quantize_kept_weights)
