"""pruner=magnitude: one-shot, data-free magnitude pruning (jcexp/compress/magnitude.py), unstructured per layer
and N:M ("N pruned of every M"), through the real pipeline on the tiny random Llama."""

import torch

from jcexp import placement
from jcexp.compress import Pruner
from jcexp.compress.magnitude import MagnitudePruning, magnitude_mask, nm_magnitude_mask
from jcexp.models import ModelSource
from jcexp.plan import Plan
from jcexp.run import run

from .conftest import TINY


def _linears(model) -> dict[str, torch.Tensor]:
    from jcexp.measure import compressible_linears

    return {n: m.weight.detach().clone() for n, m in compressible_linears(model).items()}


def _dense_and_pruned(compose, *overrides: str):
    """The run's result, the dense tiny model's weights, and the pruned weights as the run cached them."""
    cfg = compose(*TINY, "save_model=false", "quant=none", "pruner=magnitude", *overrides)
    result = run(cfg)
    dense, _ = Plan(cfg).source.load()
    pruned, _ = ModelSource._load_dir(result["prune_cache"]["path"], "float32")
    return result, _linears(dense), _linears(pruned)


def test_unstructured_50_percent_keeps_exactly_the_largest_weights_of_each_layer(compose):
    result, dense, pruned = _dense_and_pruned(compose, "pruner.sparsity=50")
    assert result["compression"]["pruner"]["modifier"] == "MagnitudePruning"
    measured = result["measured"]
    assert measured["sparsity"]["pruned"] == 0.5
    assert measured["prune"]["layer_min"] == measured["prune"]["layer_max"] == 0.5  # per layer, not global
    assert "quantize" not in result["stages"]
    for name, w in dense.items():
        kept = pruned[name] != 0
        assert torch.equal(pruned[name][kept], w[kept]), f"{name}: kept weights changed"  # no weight update
        k = w.numel() // 2
        assert int((~kept).sum()) == k
        # The kept ones are the largest |w|: every pruned |w| is <= every kept |w|.
        assert w[~kept].abs().max() <= w[kept].abs().min(), name


def test_2_4_prunes_the_two_smallest_of_every_four_in_each_row(compose):
    result, dense, pruned = _dense_and_pruned(compose, "pruner.mask=2:4")
    assert result["compression"]["pruner"]["mask"] == "2:4"
    assert result["measured"]["sparsity"]["pruned"] == 0.5
    assert result["measured"]["nm_after_prune"]["row_groups_holding"] == 1.0
    for name, w in dense.items():
        groups, p = w.reshape(w.shape[0], -1, 4), pruned[name].reshape(w.shape[0], -1, 4)
        smallest_two = torch.zeros_like(groups, dtype=torch.bool).scatter_(
            -1, groups.abs().argsort(dim=-1, stable=True)[..., :2], True
        )
        assert torch.equal(p == 0, smallest_two), name
        assert torch.equal(p[~smallest_two], groups[~smallest_two])


def test_masks_on_a_small_matrix():
    w = torch.tensor([[0.1, -3.0, 2.0, -0.2, 5.0, 0.3, -0.05, 4.0, 1.0, -2.0]])
    # Unstructured: the 4 smallest |w| of 10 (40%).
    assert magnitude_mask(w, 0.4).tolist() == [
        [False, True, True, False, True, False, False, True, True, True]
    ]
    # 1:4 (one pruned of every four): groups [0:4], [4:8], and the partial group [8:10] loses its 1 too.
    keep = nm_magnitude_mask(w, 1, 4)
    assert keep.tolist() == [[False, True, True, True, True, True, False, True, False, True]]
    # 2:4 on width 10: the partial group of 2 loses both (N of its r, as jcexp/nm.py states).
    assert int((~nm_magnitude_mask(w, 2, 4)).sum()) == 2 + 2 + 2


def test_partial_groups_smaller_than_n_are_refused_before_compute():
    pruner = Pruner("magnitude", mask="2:4", modifier=MagnitudePruning(mask_structure="2:4"))
    assert pruner.data_free and pruner.nm_block is None  # groups run along the whole row
    assert pruner.check({"a": 64}) == []
    assert "partial groups" in pruner.check({"a": 9})[0]  # groups 4, 4, 1: one column cannot hold 2


def test_stage_leaves_a_plain_model(compose):
    from jcexp.compress import apply_stage

    plan = Plan(compose(*TINY, "pruner=magnitude", "pruner.sparsity=50", "quant=none"))
    model, tokenizer = plan.source.load()
    apply_stage(plan.pruner, model, tokenizer, None, seed=0)  # data-free: no calibration windows needed
    placement.check(model, "cpu")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not [n for n, _ in model.named_buffers() if n.endswith("mask")]


def test_llmcompressor_magnitude_modifier_still_prunes_nothing_in_oneshot(compose):
    """Why jcexp has its own: if this starts failing, llm-compressor's modifier may now work in oneshot."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import MagnitudePruningModifier

    from jcexp.measure import sparsity

    plan = Plan(compose(*TINY))
    model, tokenizer = plan.source.load()
    modifier = MagnitudePruningModifier(
        targets=r"re:model.layers.\d+.*proj$", init_sparsity=0.5, final_sparsity=0.5, start=0, end=1
    )
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=plan.calibration.dataset(tokenizer),
        recipe=[modifier],
        output_dir=None,
        log_dir=None,
    )
    assert sparsity(model)["overall"] == 0.0
