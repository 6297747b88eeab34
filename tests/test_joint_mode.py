"""SparseGPT's joint mode (quant.case=joint) against Case A and the cases end to end. The joint-mode column sweep is checked against llm-compressor's own
GPTQ on an unpruned matrix (they must agree), and on a pruned one (no pruned weight may come back)."""

import pytest
import torch
from compressed_tensors.quantization import QuantizationArgs
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

from jcexp.compress.joint_mode import quantize_kept_weights
from jcexp.run import run

from .conftest import TINY

ROWS, COLS, GROUP = 24, 64, 16


def _problem(seed: int = 0, prune: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(1, ROWS, COLS, generator=g)
    if prune:
        W[torch.rand(W.shape, generator=g) < prune] = 0.0
    # Correlated inputs (rank-8 plus noise), as in real layers: GPTQ's compensation then reaches far.
    X = torch.randn(256, 8, generator=g) @ torch.randn(8, COLS, generator=g) + 0.1 * torch.randn(
        256, COLS, generator=g
    )
    H = (X.T @ X / 256).unsqueeze(0)
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP)
    scale = W.reshape(1, ROWS, COLS // GROUP, GROUP).abs().amax(-1) / 7 + 1e-8
    zero_point = torch.zeros_like(scale, dtype=torch.int8)
    return W, H, scale, zero_point, args


@pytest.mark.parametrize("actorder", [None, "static", "weight"])
def test_joint_mode_equals_stock_gptq_when_nothing_is_pruned(actorder):
    """Including static act-order, GPTQModifier's default: a string test of "weight" missed it."""
    W, H, scale, zp, args = _problem()
    args = args.model_copy(update={"actorder": actorder})
    ours, loss_ours, _ = quantize_kept_weights(W.clone(), H.clone(), scale, zp, None, args, blocksize=32)
    stock, loss_stock, _ = quantize_weight(W.clone(), H.clone(), scale, zp, None, args, blocksize=32)
    assert torch.allclose(ours, stock, atol=1e-5)
    assert torch.allclose(loss_ours, loss_stock, rtol=1e-4)


def test_joint_mode_keeps_every_pruned_zero_where_case_a_revives_some():
    W, H, scale, zp, args = _problem(prune=0.5)
    pruned = W == 0
    ours, _, _ = quantize_kept_weights(W.clone(), H.clone(), scale, zp, None, args, blocksize=32)
    stock, _, _ = quantize_weight(W.clone(), H.clone(), scale, zp, None, args, blocksize=32)
    assert torch.all(ours[pruned] == 0)
    assert (stock[pruned] != 0).float().mean() > 0.02  # Case A: compensation writes into pruned positions


def _masked_case_b(W, H, scale, zp, args, blocksize):
    """The earlier Case B sweep, kept here only as the baseline the joint mode must not lose to: it re-zeroed
    pruned positions after every update, discarding the compensation that had reached them."""
    from copy import copy

    from compressed_tensors.quantization import QuantizationStrategy
    from llmcompressor.modifiers.gptq.helpers import column_scale_window, factorize_hessian

    from jcexp.compress.joint_mode import qdq_column

    W, H = W.clone().double().float(), H.clone()
    batch, rows, cols = W.shape
    keep = (W != 0).float()
    g_idx = torch.arange(cols, dtype=torch.int) // args.group_size
    Hinv = factorize_hessian(W, H, 0.01, torch.zeros(batch, dtype=torch.bool))
    per_column = copy(args)
    per_column.strategy = QuantizationStrategy.CHANNEL
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, keep1, Hinv1 = W[:, :, i1:i2].clone(), keep[:, :, i1:i2], Hinv[:, i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        eff, z = column_scale_window(scale, zp, None, g_idx, args, num_rows=rows, i1=i1, i2=i2)
        for i in range(i2 - i1):
            w = W1[:, :, i]
            q = qdq_column(w, eff, z, i, per_column) * keep1[:, :, i]
            err = (w - q) / Hinv1[:, i, i][:, None]
            W1[:, :, i:] -= err.unsqueeze(-1) * Hinv1[:, i, i:].unsqueeze(1)
            W1[:, :, i:] *= keep1[:, :, i:]
            W1[:, :, i] = q
            Err1[:, :, i] = err
        W[:, :, i1:i2] = W1
        W[:, :, i2:] -= torch.bmm(Err1, Hinv[:, i1:i2, i2:])
        W[:, :, i2:] *= keep[:, :, i2:]
    return W


def _output_error(W, Q, H):
    """||(W - Q) X||^2 / n = tr((W - Q) H (W - Q)^T), the layer-output error GPTQ minimises."""
    D = (W - Q)[0]
    return float(torch.einsum("rc,cd,rd->", D, H[0], D))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prune", [0.25, 0.5])
def test_case_b_joint_mode_has_no_larger_output_error_than_masking(seed, prune):
    W, H, scale, zp, args = _problem(seed=seed, prune=prune)
    joint, _, _ = quantize_kept_weights(W.clone(), H.clone(), scale, zp, None, args, blocksize=32)
    masked = _masked_case_b(W, H, scale, zp, args, blocksize=32)
    assert torch.all(joint[W == 0] == 0) and torch.all(masked[W == 0] == 0)
    e_joint, e_masked = _output_error(W, joint, H), _output_error(W, masked, H)
    # Strictly: with the masking back in place the two are equal and this fails (measured 15-55% lower here).
    assert e_joint < e_masked, (e_joint, e_masked)


@pytest.mark.parametrize("case", ["A", "B", "joint"])
def test_case_switch_end_to_end_on_2_8(compose, case):
    result = run(compose(*TINY, "save_model=false", "pruner.mask=2:8", f"quant.case={case}"))
    quant = result["measured"]["quant"]
    assert result["compression"]["quant"]["case"] == case
    if case != "A":
        assert quant["pruned_still_zero"] == 1.0 and quant["pruned_revived"] == 0
        assert result["measured"]["nm_after_quant"]["groups_holding"] == 1.0
    else:
        assert quant["pruned_revived"] > 0 and result["measured"]["nm_after_quant"]["groups_holding"] < 1.0


# ------------------------------------------------------------------ the simpler quantizers (Table IV)
def test_nf4_uses_the_16_levels_per_block_of_64():
    from jcexp.compress.simple_quant import NF4_LEVELS, nf4_roundtrip

    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))
    w[0, :5] = 0.0
    q = nf4_roundtrip(w, 64)
    blocks, qb = w.reshape(-1, 64), q.reshape(-1, 64)
    absmax = blocks.abs().amax(1, keepdim=True)
    levels = torch.tensor(NF4_LEVELS)
    normalized = qb / absmax
    assert torch.all((normalized.unsqueeze(-1) - levels).abs().amin(-1) < 1e-6)  # every value is a level
    assert torch.allclose(qb.abs().amax(1), absmax.squeeze(1))  # each block's absmax is kept exactly
    assert torch.all(q[0, :5] == 0)  # zero is a level: pruned weights stay pruned
    assert len(torch.unique(normalized)) <= 16 * len(blocks)


def test_int8_absmax_per_row():
    from jcexp.compress.simple_quant import int8_absmax_roundtrip

    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    q = int8_absmax_roundtrip(w)
    scale = w.abs().amax(1, keepdim=True) / 127
    steps = q / scale
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 127 + 1e-4
    assert (q - w).abs().max() <= scale.max() / 2 + 1e-6


@pytest.mark.parametrize("quant", ["nf4", "int8_weight", "llm_int8"])
def test_simple_quantizers_end_to_end(compose, quant):
    result = run(compose(*TINY, "save_model=false", f"quant={quant}"))
    q = result["compression"]["quant"]
    assert (
        q["modifier"] in ("NF4Quantize", "Int8AbsmaxQuantize", "LLMInt8Quantize") and q["backend"] == "torch"
    )
    assert result["measured"]["quant"]["pruned_still_zero"] == 1.0  # no error compensation: zeros stay
    assert "quantize" in result["stages"]


def test_nf4_is_4_bit_only(compose):
    from jcexp.config import ConfigError
    from jcexp.plan import Plan

    with pytest.raises(ConfigError, match="4-bit only"):
        Plan(compose(*TINY, "quant=nf4", "quant.bits=3"))


# ------------------------------------------------------------------ one-pass joint compression (open question 1)
@pytest.mark.parametrize("mask", [None, "2:8"])
def test_one_pass_prunes_and_quantizes_in_one_sweep(compose, mask):
    extra = [f"pruner.mask={mask}"] if mask else ["pruner.sparsity=25"]
    result = run(compose(*TINY, "save_model=false", "variant=onepass", *extra))
    assert "prune" not in result["stages"] and "quantize" in result["stages"]
    assert result["compression"]["pruner"]["fused"] is True
    assert result["metrics"]["tcr"] == pytest.approx(0.8125)  # 25% + 4 bit
    # Pruned weights are set to zero as the sweep passes them; GPTQ rounding may add a few more zeros.
    assert 0.25 <= result["measured"]["sparsity"]["final"] < 0.3
    if mask:
        assert result["measured"]["nm_after_quant"]["groups_holding"] == 1.0


def test_one_pass_needs_both_halves(compose):
    from jcexp.config import ConfigError
    from jcexp.plan import Plan

    with pytest.raises(ConfigError, match="one-pass"):
        Plan(compose(*TINY, "pruner=onepass"))
