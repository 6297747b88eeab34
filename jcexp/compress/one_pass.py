"""One-pass joint compression: prune and quantize in the same GPTQ column sweep, as SparseGPT's joint mode.

The paper's open question 1 (Section VI): does truly joint optimization beat SparseGPT -> GPTQ? The mask is
picked as SparseGPT picks it, with the saliency w² / [H⁻¹]²_jj: unstructured, once per block of columns (the
block's smallest fraction); N:M, one group of M columns at a time, when the sweep reaches the group, on the
weights the earlier columns' compensation has already updated (picking a whole block's groups up front, on
stale weights, raised the layer error by 4-9% in simulation and biased one-pass against sequential). The
sweep walks the columns: a pruned weight becomes 0, a kept one is quantized, and the combined error is
compensated into every column not yet visited. Partial groups follow the pruner's layout (jcexp.nm). llm-compressor 0.14 has neither mode: its SparseGPT only prunes, and its GPTQ only quantizes. So,
as with Case B, only the column sweep is ours. It runs inside the stock GPTQModifier (case_b.py explains
the seam). Quantization scales come from the observer on the dense weights, before the sweep.
"""

from __future__ import annotations

import functools
from copy import copy
from typing import ClassVar

import torch
from compressed_tensors.quantization import QuantizationStrategy
from llmcompressor.modifiers.gptq.helpers import GPTQ_PRECISION, column_scale_window, factorize_hessian
from llmcompressor.modifiers.quantization import GPTQModifier
from pydantic import PrivateAttr

from jcexp.compress.joint_mode import qdq_column
from jcexp.compress.seam import sweep_replaced_by


def _saliency(W1: torch.Tensor, hinv_diag: torch.Tensor) -> torch.Tensor:
    return W1.square() / hinv_diag.square().unsqueeze(1)


def _group_mask(W1: torch.Tensor, hinv_diag: torch.Tensor, i: int, j: int, n: int) -> torch.Tensor:
    """True at the N least salient of the block's columns i..j-1, from the weights as they are now."""
    idx = _saliency(W1[:, :, i:j], hinv_diag[:, i:j]).topk(n, dim=-1, largest=False).indices
    return torch.zeros_like(W1[:, :, i:j], dtype=torch.bool).scatter_(-1, idx, True)


def _block_mask(W1: torch.Tensor, hinv_diag: torch.Tensor, sparsity: float):
    """Unstructured: True where SparseGPT would prune in this block, the lowest w²/[H⁻¹]²_jj per batch item."""
    saliency = _saliency(W1, hinv_diag)
    flat = saliency.reshape(saliency.shape[0], -1)
    k = int(flat.shape[1] * sparsity)
    if k == 0:
        return torch.zeros_like(W1, dtype=torch.bool)
    thresh = flat.kthvalue(k, dim=1).values
    return saliency <= thresh[:, None, None]


def prune_and_quantize(
    weights: torch.Tensor,
    hessians: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    global_scale: torch.Tensor | None,
    quant_args,
    blocksize: int = 128,
    percdamp: float = 0.01,
    *,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    counts: dict[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same signature and returns as llm-compressor's ``quantize_weight``, plus the pruning target."""
    if quant_args.actorder:
        raise ValueError("one-pass joint compression does not support activation ordering")
    batch, rows, cols = weights.shape
    out_dtype, device = weights.dtype, weights.device
    W = weights.to(device=device, dtype=GPTQ_PRECISION)
    H = hessians.to(device=device, dtype=GPTQ_PRECISION)
    scale, zero_point = scale.to(device), zero_point.to(device)
    global_scale = None if global_scale is None else global_scale.to(device)
    g_idx = None
    if quant_args.strategy in (QuantizationStrategy.GROUP, QuantizationStrategy.TENSOR_GROUP):
        g_idx = torch.arange(cols, device=device, dtype=torch.int) // quant_args.group_size
    losses = torch.zeros(batch, rows, device=device)
    fallback = torch.zeros(batch, dtype=torch.bool, device=device)
    Hinv = factorize_hessian(W, H, percdamp, fallback)
    per_column = copy(quant_args)
    per_column.strategy = QuantizationStrategy.CHANNEL

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, :, i1:i2].clone(), Hinv[:, i1:i2, i1:i2]
        hinv_diag = torch.diagonal(Hinv1, dim1=1, dim2=2)
        if nm is None:
            pruned = _block_mask(W1, hinv_diag, sparsity)
        else:
            pruned = torch.zeros_like(W1, dtype=torch.bool)
        Err1 = torch.zeros_like(W1)
        eff, zp = column_scale_window(
            scale, zero_point, global_scale, g_idx, quant_args, num_rows=rows, i1=i1, i2=i2
        )
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                # As SparseGPT: groups of M restart at each block; the group's mask is chosen now, on the
                # weights as the sweep has updated them. A partial group of r columns prunes N of them.
                j = min(i + nm[1], i2 - i1)
                pruned[:, :, i:j] = _group_mask(W1, hinv_diag, i, j, nm[0])
            w = W1[:, :, i]
            q = qdq_column(w, eff, zp, i, per_column)
            q = torch.where(pruned[:, :, i], torch.zeros_like(q), q)
            err = (w - q) / Hinv1[:, i, i][:, None]
            W1[:, :, i:] -= err.unsqueeze(-1) * Hinv1[:, i, i:].unsqueeze(1)
            W1[:, :, i] = q
            Err1[:, :, i] = err
            losses += err.square() / 2
        W[:, :, i1:i2] = W1
        W[:, :, i2:] -= torch.bmm(Err1, Hinv[:, i1:i2, i2:])
        if counts is not None:
            counts["pruned"] += int(pruned.sum())
            counts["weights"] += pruned.numel()
    return W.to(out_dtype), losses.sum(dim=1), fallback


class OnePassSparseGPTQModifier(GPTQModifier):
    """GPTQModifier whose column sweep also prunes (quant=gptq_onepass with pruner=onepass)."""

    sparsity: float = 0.0  # fraction pruned
    mask: str | None = None  # "N:M", N pruned of every M (jcexp's convention, as pruner.mask)

    prunes: ClassVar[bool] = True  # the quantizer prunes too: pair with pruner=onepass
    replaces_gptq_sweep: ClassVar[bool] = True

    # Positions the sweep pruned: the measured sparsity of the pruning alone, apart from GPTQ's rounding zeros.
    _counts: dict[str, int] = PrivateAttr(default_factory=lambda: {"pruned": 0, "weights": 0})

    def pruned_fraction(self) -> float | None:
        return self._counts["pruned"] / self._counts["weights"] if self._counts["weights"] else None

    def compress_module_list(self, module_list):
        from jcexp.config import parse_mask

        nm = parse_mask(self.mask)
        sweep = functools.partial(prune_and_quantize, sparsity=self.sparsity, nm=nm, counts=self._counts)
        with sweep_replaced_by(sweep):
            return super().compress_module_list(module_list)
