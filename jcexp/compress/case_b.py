"""Case B as the paper's tool ran it: GPTQ quantizes the weights pruning kept; pruned weights stay exactly zero.

What each case is (the paper's III-B.2, eqs. 4-9; quant.case):
- A, stock GPTQ over every weight of the pruned matrix (llm-compressor 0.14's GPTQModifier): errors from every
  column (eq. 4, E_A) and updates from the full inverse Hessian to every weight (eq. 5, delta_A), so pruned
  positions take updates and come back. It is what the paper's text adopts as a practical approximation
  (III-B.2); eqs. 8-9 (its error against NF4's / LLM.int8()'s) are about it, and eq. 7 is its error over B's.
- B, this module: llm-compressor <= 0.12's masked rule, which the paper's tool ran (jcexp's default after
  pruning). Errors come from kept weights only (a pruned weight is 0, quantizes to 0 and passes on nothing: the
  M ⊙ (w - q) of eq. 4's E_B), but the update is computed from the *full* inverse Hessian, as in A, and then
  multiplied by the mask so only kept weights absorb it. The paper's eq. 6 writes delta_B with H_M^-1, a Hessian
  that respects the sparsity pattern, i.e. compensation solved over the kept weights alone; 0.12 never computed
  that (it would take, for an unstructured mask, one restricted inverse per row). So B is eq. 4's E_B with eq.
  5's H^-1 masked in place of eq. 6's H_M^-1: the paper's Case B approximately, the tool's rule exactly.
- joint (joint_mode.py): SparseGPT's joint mode with the mask fixed: pruned positions take compensation and, when
  their column comes up, are set to 0 and pass (w - 0)/d on. None of eqs. 4-9 describes it.

Why this is ours: every llm-compressor up to 0.12 did exactly this inside GPTQ (``gptq_quantize.quantize_weight``:
when a weight was at least ``SPARSITY_THRESHOLD`` = 5% exact zeros, ``preserve_zeros`` multiplied every error
update, within a block and the lazy update after it, by the weight's nonzero mask). The paper ran an llm-compressor
of early 2025, so its joint results most likely came from that rule. 0.13 (PR #2860) removed it, and 0.14's
batched sweep has no hook for a mask. So this module supplies 0.14's sweep with 0.12's rule put back,
``quantize_kept_only``, and swaps it in for the duration of ``compress_module_list`` (``seam.py``). Everything else
is the stock GPTQModifier: calibration, Hessian accumulation, observers and their qparams, batching, write-back.
The rule is 0.12's, reproduced detail by detail where it changes the output (see ``quantize_kept_only``), and
bench/case_b_vs_012.py runs the two side by side (figures in docs/performance.md).

How it differs from ``joint_mode.py`` (SparseGPT's joint mode, ``quant.case=joint``): there, compensation from
earlier columns also lands on pruned positions; when a pruned weight's column comes up it is set back to 0 and
its accumulated value w propagates as an error (w - 0)/d to later columns. Here, as in 0.12, a pruned position
never receives anything (its update is masked out), so it holds exactly 0 throughout and contributes no error;
the kept weights' updates are the full-Hessian ones (H^-1), masked, not a solve over the kept weights alone.
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

# llm-compressor <= 0.12: llmcompressor/modifiers/utils/constants.py, SPARSITY_THRESHOLD = 0.05. A weight with at
# least this fraction of exact zeros is taken as pruned and its zeros are preserved; below it, stock GPTQ (a few
# zeros in a dense weight are not a mask worth keeping).
SPARSITY_THRESHOLD = 0.05


def kept_mask(W: torch.Tensor) -> torch.Tensor | None:
    """The 0/1 mask of weights that take GPTQ's updates, per matrix of ``W`` ([batch, rows, cols]), or None when
    no matrix is sparse enough to preserve (then the sweep is stock GPTQ).

    0.12's two tests, kept as they were: the sparsity is the fraction of *exact* zeros (``tensor_sparsity``,
    float32 count / numel, compared in float32 with 0.05), but the mask is ``~isclose(W, 0)``, so a kept weight
    with |w| <= 1e-8 (isclose's default atol) is treated as pruned too: it takes no updates, although it still
    quantizes and passes on its own (tiny) error. A matrix below the threshold gets a mask of ones, which
    changes nothing bit for bit (x * 1.0 == x).
    """
    batch, rows, cols = W.shape
    sparsity = (W == 0).sum(dim=(1, 2)).float() / float(rows * cols)
    preserve = sparsity >= SPARSITY_THRESHOLD
    if not bool(preserve.any()):
        return None
    nonzero = (~torch.isclose(W, torch.zeros((), device=W.device, dtype=W.dtype))).to(W.dtype)
    return torch.where(preserve[:, None, None], nonzero, torch.ones_like(nonzero))


def quantize_kept_only(
    weights: torch.Tensor,
    hessians: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    global_scale: torch.Tensor | None,
    quant_args,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop-in for llm-compressor 0.14's ``quantize_weight`` (same arguments and returns: weights [batch, rows,
    cols] -> quantized weights, per-matrix losses, RTN-fallback flags) with 0.12's ``preserve_zeros`` rule.

    The structure is 0.14's eager sweep line for line (activation ordering, g_idx, ``factorize_hessian``,
    ``column_scale_window``, one fake_quantize per column over the batch), so a matrix below the threshold,
    or a batch with nothing pruned, comes out bit-identical to stock. The differences, each as in 0.12:
    - the mask is read after the act-order permutation (so it lines up with the permuted columns) and before the
      Hessian factorization zeroes dead columns (0.12 also took it before ``W[:, dead] = 0``);
    - the within-block update and the lazy update of the columns after the block are both multiplied by the
      mask, so a pruned weight never changes: it stays exactly 0, quantizes to 0 and passes on no error.
    Dead columns, dampening (percdamp x mean diagonal, after dead diagonals are set to 1) and the Cholesky
    factorization are 0.14's helpers, which compute what 0.12 did. The loss is 0.14's sum of ((w - q)/d)^2 / 2;
    0.12 summed (w - q)^2 / d^2 / 2, the same quantity up to float rounding. The loss is only logged.
    Always the eager path: on CUDA, stock may run a fused Triton block instead (numerically close, not bit-equal).
    """
    if weights.ndim != 3 or hessians.ndim != 3:
        raise ValueError("weights and hessians must have shape [batch, ...]")
    if weights.shape[0] != hessians.shape[0]:
        raise ValueError("weights and hessians must have matching batch sizes")

    batch, rows, cols = weights.shape
    strategy, actorder = quant_args.strategy, quant_args.actorder
    final_dtype, device = weights.dtype, weights.device
    W = weights.to(device=device, dtype=GPTQ_PRECISION)
    H = hessians.to(device=device, dtype=GPTQ_PRECISION)
    scale, zero_point = scale.to(device=device), zero_point.to(device=device)
    global_scale = None if global_scale is None else global_scale.to(device=device)

    W, H, perm = apply_activation_ordering(W, H, actorder)
    keep = kept_mask(W)  # after the permutation; before factorize_hessian zeroes dead columns

    g_idx = None
    if strategy in (
        QuantizationStrategy.GROUP,
        QuantizationStrategy.TENSOR_GROUP,
        QuantizationStrategy.BLOCK,
    ):
        divisor = (
            quant_args.group_size if strategy != QuantizationStrategy.BLOCK else quant_args.block_structure[1]
        )
        g_idx = torch.arange(cols, device=device, dtype=torch.int) // divisor
        if actorder == ActivationOrdering.WEIGHT:
            g_idx = torch.gather(g_idx.unsqueeze(0).expand(batch, -1), 1, perm)

    losses = torch.zeros(batch, rows, device=device)
    used_rtn_fallback = torch.zeros(batch, dtype=torch.bool, device=device)
    Hinv = factorize_hessian(W, H, percdamp, used_rtn_fallback)
    per_column = copy(quant_args)
    per_column.strategy = QuantizationStrategy.CHANNEL  # column_scale_window expands qparams to per column

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, :, i1:i2].clone()
        Q1, Err1, losses1 = torch.zeros_like(W1), torch.zeros_like(W1), torch.zeros_like(W1)
        Hinv1 = Hinv[:, i1:i2, i1:i2]
        keep1 = None if keep is None else keep[:, :, i1:i2]
        eff, zp = column_scale_window(
            scale, zero_point, global_scale, g_idx, quant_args, num_rows=rows, i1=i1, i2=i2
        )
        for i in range(i2 - i1):
            w = W1[:, :, i]
            # The batch goes into compressed-tensors' column dimension: one call, each row and matrix its qparams.
            q = fake_quantize(
                w.transpose(0, 1),
                eff[:, :, i].transpose(0, 1),
                None if zp is None else zp[:, :, i].transpose(0, 1),
                per_column,
            ).transpose(0, 1)
            error = (w - q) / Hinv1[:, i, i][:, None]
            Q1[:, :, i] = q
            Err1[:, :, i] = error
            losses1[:, :, i] = error.square()
            update = error.unsqueeze(-1) * Hinv1[:, i, i:].unsqueeze(1)
            if keep1 is not None:
                # Only kept weights absorb it: H^-1's update masked, not eq. 6's H_M^-1.
                update = update * keep1[:, :, i:]
            W1[:, :, i:] -= update

        W[:, :, i1:i2] = Q1
        losses += torch.sum(losses1, 2) / 2
        w_err = torch.bmm(Err1, Hinv[:, i1:i2, i2:])
        if keep is not None:
            w_err = w_err * keep[:, :, i2:]  # the lazy block update, masked the same way
        W[:, :, i2:] -= w_err

    if perm is not None:
        invperm = torch.argsort(perm, dim=-1)
        W = torch.gather(W, -1, invperm.unsqueeze(-2).expand(-1, rows, -1))
    return W.to(final_dtype), losses.sum(dim=1), used_rtn_fallback


class CaseBGPTQModifier(SweepGPTQModifier):
    """GPTQModifier with 0.12's zero-preserving sweep: ``quant.case=B`` selects it (conf/quant/gptq.yaml)."""

    preserves_sparsity: ClassVar[bool] = True
    gptq_case: ClassVar[str] = "B"
    sweep: ClassVar = staticmethod(quantize_kept_only)
