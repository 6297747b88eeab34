"""Case B (jcexp/compress/case_b.py): llm-compressor 0.12's zero-preserving GPTQ rule on 0.14's sweep. Checked
against 0.14's stock quantize_weight where nothing is pruned (bit-identical), on pruned layers (no pruned weight
comes back, where stock revives some), at 0.12's 5% threshold, and against 0.12 itself when its environment
(`make lc012-env`) exists. Synthetic layers only: no model, a few seconds."""

import pytest
import torch
from compressed_tensors.quantization import QuantizationArgs
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight

from jcexp.compress.case_b import SPARSITY_THRESHOLD, kept_mask, quantize_kept_only

ROWS, COLS, GROUP, BLOCK = 24, 64, 16, 32  # two blocks: the lazy update between them is exercised


def _problem(seed=0, prune=0.0, actorder=None, batch=1, zeros=None):
    """Weights [batch, ROWS, COLS] (``prune``: that fraction zeroed at random; ``zeros``: exactly that many),
    a correlated Hessian with uneven channel magnitudes (so act-order reorders), group-wise symmetric 4-bit."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(batch, ROWS, COLS, generator=g)
    if prune:
        W[torch.rand(W.shape, generator=g) < prune] = 0.0
    if zeros is not None:
        W.view(batch, -1)[:, torch.randperm(ROWS * COLS, generator=g)[:zeros]] = 0.0
    X = torch.randn(256, 8, generator=g) @ torch.randn(8, COLS, generator=g) + 0.1 * torch.randn(
        256, COLS, generator=g
    )
    X = X * torch.exp(0.5 * torch.randn(COLS, generator=g))
    H = (2 * X.T @ X / 256).expand(batch, -1, -1).contiguous()
    args = QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP, actorder=actorder
    )
    scale = W.reshape(batch, ROWS, COLS // GROUP, GROUP).abs().amax(-1) / 7.5 + 1e-8
    zero_point = torch.zeros_like(scale, dtype=torch.int8)
    return W, H, scale, zero_point, args


def _both(W, H, scale, zp, args):
    ours = quantize_kept_only(W.clone(), H.clone(), scale, zp, None, args, blocksize=BLOCK)
    stock = quantize_weight(W.clone(), H.clone(), scale, zp, None, args, blocksize=BLOCK)
    return ours, stock


# (a) nothing pruned: stock, bit for bit
@pytest.mark.parametrize("actorder", [None, "static"])
@pytest.mark.parametrize("batch", [1, 3])
def test_equals_stock_quantize_weight_when_nothing_is_pruned(actorder, batch):
    W, H, scale, zp, args = _problem(actorder=actorder, batch=batch)
    assert not (W == 0).any()
    (ours, loss, fb), (stock, loss_s, fb_s) = _both(W, H, scale, zp, args)
    assert torch.equal(ours, stock)
    assert torch.equal(loss, loss_s) and torch.equal(fb, fb_s)


# (b) pruned: every pruned zero stays exactly 0, kept weights are quantized and compensated
@pytest.mark.parametrize("actorder", [None, "static"])
@pytest.mark.parametrize("prune", [0.25, 0.5])
def test_pruned_zeros_stay_zero_where_stock_revives_some(actorder, prune):
    W, H, scale, zp, args = _problem(seed=1, prune=prune, actorder=actorder)
    pruned, kept = W == 0, W != 0
    (ours, _, _), (stock, _, _) = _both(W, H, scale, zp, args)
    assert torch.all(ours[pruned] == 0)
    assert (stock[pruned] != 0).float().mean() > 0.02  # Case A: compensation writes into pruned positions
    # Kept weights moved: quantized, and (unlike plain rounding, i.e. an identity Hessian) compensated.
    rtn, _, _ = quantize_kept_only(W.clone(), torch.eye(COLS).expand_as(H).clone(), scale, zp, None, args)
    assert (ours[kept] != W[kept]).float().mean() > 0.9
    assert (ours[kept] != rtn[kept]).float().mean() > 0.05  # 0.15-0.19 here


def test_threshold_is_per_matrix_in_a_batch():
    W, H, scale, zp, args = _problem(seed=2, actorder="static", batch=2)
    W[0][torch.rand(ROWS, COLS, generator=torch.Generator().manual_seed(3)) < 0.5] = (
        0.0  # only matrix 0 pruned
    )
    (ours, loss, _), (stock, loss_s, _) = _both(W, H, scale, zp, args)
    assert torch.all(ours[0][W[0] == 0] == 0) and (stock[0][W[0] == 0] != 0).any()
    assert torch.equal(ours[1], stock[1]) and loss[1] == loss_s[1]  # the dense one is stock


# (c) 0.12's threshold: below 5% exact zeros it is stock GPTQ; from 5% on the zeros are kept
def test_below_five_percent_it_is_stock_and_at_five_percent_zeros_are_kept():
    assert SPARSITY_THRESHOLD == 0.05
    just_below = int(0.05 * ROWS * COLS)  # 76 of 1536 = 4.95%
    W, H, scale, zp, args = _problem(seed=4, zeros=just_below, actorder="static")
    (ours, _, _), (stock, _, _) = _both(W, H, scale, zp, args)
    assert (W == 0).sum() == just_below and torch.equal(ours, stock)
    W, H, scale, zp, args = _problem(seed=4, zeros=just_below + 1, actorder="static")  # 77 = 5.01%
    (ours, _, _), (stock, _, _) = _both(W, H, scale, zp, args)
    assert torch.all(ours[W == 0] == 0) and not torch.equal(ours, stock)


def test_mask_is_0_12s_isclose_but_threshold_counts_exact_zeros():
    W = torch.ones(1, 10, 10)
    W[0, 0, :4] = 0.0  # 4% exact zeros: below the threshold
    W[0, 1, :2] = 5e-9  # within isclose's atol: not counted as sparsity ...
    assert kept_mask(W) is None
    W[0, 0, 4] = 0.0  # 5%: now preserved, and the tiny ones are masked like zeros (as in 0.12)
    keep = kept_mask(W)
    assert keep[0, 0, :5].sum() == 0 and keep[0, 1, :2].sum() == 0 and keep.sum() == 100 - 7


# (d) against llm-compressor 0.12 itself (bench/case_b_vs_012.py), when its environment exists
def test_matches_llmcompressor_0_12_bit_for_bit():
    from bench import case_b_vs_012 as bench

    if not bench.LC012_PYTHON.exists():
        pytest.skip(
            f"{bench.LC012_PYTHON} is missing: `make lc012-env` builds llm-compressor 0.12's environment"
        )
    result = bench.compare(quick=True)
    for row in result["rows"]:
        assert row["B_vs_012_frac"] == 0 and row["B_vs_012_max"] == 0, row
        assert row["B_vs_012_forced_frac"] == 0, row
        if row["sparsity"] >= SPARSITY_THRESHOLD:
            assert row["zeros_kept_012"] == row["zeros_kept_B"] == 1.0, row
            assert row["A_vs_012_frac"] > 0, row  # stock 0.14 is not 0.12 on a pruned layer
        else:
            assert row["A_vs_012_frac"] == 0, row  # below the threshold all three are the same GPTQ


# The modifier: the sweep is swapped in for compress_module_list only, on the real modifier path
def test_modifier_keeps_zeros_through_compress_module_list():
    from llmcompressor.modifiers.gptq import base
    from llmcompressor.modifiers.quantization import GPTQModifier

    from bench.case_b_vs_012 import gptq_through_modifier
    from jcexp.compress.case_b import CaseBGPTQModifier

    assert CaseBGPTQModifier.preserves_sparsity and CaseBGPTQModifier.replaces_gptq_sweep
    W, H, _, _, _ = _problem(seed=5, prune=0.5)
    layer = {"weight": W[0], "hessian": H[0] * 256, "num_samples": 256.0}
    args = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 16}
    stock_sweep = base.quantize_weight
    b = gptq_through_modifier(CaseBGPTQModifier, layer, {**args, "actorder": "static"})
    a = gptq_through_modifier(GPTQModifier, layer, {**args, "actorder": "static"})
    assert base.quantize_weight is stock_sweep  # restored after the modifier ran
    assert torch.all(b["weight"][W[0] == 0] == 0) and (a["weight"][W[0] == 0] != 0).any()
