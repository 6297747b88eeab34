"""quant=llm_int8: LLM.int8()'s W8A8 with the 16-bit outlier decomposition, checked against a hand computation
on a synthetic Linear, then end to end on the tiny random Llama, and refused with evaluators that would drop it."""

import pytest
import torch

from jcexp import placement
from jcexp.compress.llm_int8 import Int8MixedLinear, LLMInt8Quantize, to_int8_mixed
from jcexp.config import ConfigError
from jcexp.plan import Plan
from jcexp.run import run

from .conftest import TINY

IN, OUT, TOKENS = 32, 16, 8
OUTLIER = 5  # the feature column that carries the outlier


def _absmax_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and per-row scales, written out independently of jcexp's helpers."""
    scale = t.abs().amax(dim=1, keepdim=True) / 127.0
    scale[scale == 0] = 1.0
    return torch.clamp(torch.round(t / scale), -127, 127), scale


def _layer(seed: int = 0) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(IN, OUT, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(OUT, IN, generator=g) * 0.1)
        lin.bias.copy_(torch.randn(OUT, generator=g) * 0.01)
    x = torch.randn(TOKENS, IN, generator=g)
    x.clamp_(-3, 3)  # no accidental outliers: only the planted ones
    return lin, x, lin.weight.detach().clone()


def _simulated(lin: torch.nn.Linear, threshold: float = 6.0) -> Int8MixedLinear:
    return to_int8_mixed(lin, threshold)


def test_outlier_column_goes_through_the_16_bit_path_and_the_rest_through_int8():
    lin, x, w = _layer()
    x[3, OUTLIER] = 40.0  # one outlier feature: its whole column takes the 16-bit path
    exact = x @ w.T + lin.bias.detach()
    bias = lin.bias.detach().clone()
    mixed = _simulated(lin)
    with torch.no_grad():
        got = mixed(x)

    # By hand: X[:, O] @ W[:, O]^T with the original weight, plus dequant(int8(X[:, ~O]) @ int8(W)[:, ~O]^T).
    regular = x.clone()
    regular[:, OUTLIER] = 0.0
    xq, sx = _absmax_int8(regular)
    wq, sw = _absmax_int8(w)
    by_hand = x[:, [OUTLIER]] @ w[:, [OUTLIER]].T + (xq @ wq.T) * (sx * sw.T) + bias
    assert torch.allclose(got, by_hand, rtol=1e-5, atol=1e-6)
    assert mixed.outlier_cols == 1 and mixed.cols_seen == IN and mixed.calls_with_outliers == 1

    # Without the decomposition (int8 weights x per-token int8 activations, the outlier included), the outlier
    # sets its token's scale and crushes that row's other features: much further from the fp32 output.
    xq_all, sx_all = _absmax_int8(x)
    naive = (xq_all @ wq.T) * (sx_all * sw.T) + bias
    err_mixed, err_naive = (got - exact).norm(), (naive - exact).norm()
    assert err_mixed < err_naive / 2, (err_mixed, err_naive)


def test_without_outliers_it_is_per_token_int8_activations_times_per_row_int8_weights():
    lin, x, w = _layer(seed=1)
    bias = lin.bias.detach().clone()
    mixed = _simulated(lin)
    with torch.no_grad():
        got = mixed(x.reshape(2, TOKENS // 2, IN))  # batch x seq x features, as in a model
    xq, sx = _absmax_int8(x)
    wq, sw = _absmax_int8(w)
    expected = (xq @ wq.T) * (sx * sw.T) + bias
    assert got.shape == (2, TOKENS // 2, OUT)
    assert torch.allclose(got.reshape(TOKENS, OUT), expected, rtol=1e-5, atol=1e-6)
    assert mixed.outlier_cols == 0
    # The stored weight is the int8 image (what is saved and measured); the original stays beside it.
    assert torch.allclose(mixed.weight, wq * sw) and torch.equal(mixed.weight_fp, w)


@pytest.mark.parametrize("value,outlier", [(5.9, False), (6.0, True), (-6.5, True)])
def test_threshold_is_respected(value, outlier):
    lin, x, w = _layer(seed=2)
    x[0, OUTLIER] = value
    mixed = _simulated(lin, threshold=6.0)
    with torch.no_grad():
        got = mixed(x)
    assert mixed.outlier_cols == int(outlier)
    xq, sx = _absmax_int8(x)
    wq, sw = _absmax_int8(w)
    all_int8 = (xq @ wq.T) * (sx * sw.T) + lin.bias.detach()
    assert torch.allclose(got, all_int8, rtol=1e-5, atol=1e-6) is not outlier
    # A lower threshold makes the same column an outlier.
    low = _simulated(_layer(seed=2)[0], threshold=5.0)
    with torch.no_grad():
        low(x)
    assert low.outlier_cols == 1


def test_placement_does_not_flag_it_but_records_it():
    model = torch.nn.Sequential(torch.nn.Linear(IN, OUT), torch.nn.Linear(OUT, 4))
    to_int8_mixed(model[0], 6.0)
    assert placement.offload_wrapped(model) == [] and placement.requantizing(model) == []
    assert placement.activation_quantizing(model) == ["0"]
    placement.release(model)  # nothing to undo: the module is part of the model
    assert isinstance(model[0], Int8MixedLinear)
    assert placement.check(model, "cpu").activation_quantizing == 1
    # The saved state holds the int8 weights only: the original copy is a non-persistent buffer.
    assert set(model.state_dict()) == {"0.weight", "0.bias", "1.weight", "1.bias"}


def test_one_full_precision_copy_on_the_models_device_the_original_stays_in_host_ram():
    """After the stage, the model's device holds the int8 image (``weight``) and nothing else of full size: the
    original weight is a host-RAM attribute that model.to() does not move, and state_dict does not list. Moving
    the model to ``meta`` stands in for the GPU (on CPU, host RAM and the device are the same memory)."""
    model = torch.nn.Sequential(torch.nn.Linear(IN, OUT), torch.nn.Linear(OUT, 4))
    w = model[0].weight.detach().clone()
    LLMInt8Quantize().apply_to(model)  # both Linears are compressible (no lm_head here)
    mixed = model[0]
    assert isinstance(mixed, Int8MixedLinear)
    model.to("meta")
    on_device = [t for t in (*model.parameters(), *model.buffers()) if t.device.type == "meta"]
    full_size = [t for t in on_device if t.numel() == w.numel()]
    assert len(full_size) == 1 and full_size[0] is mixed.weight  # the int8 image only
    assert mixed.weight_row_scale.numel() == OUT  # one scale per row, not a copy
    assert mixed.weight_fp_t.device.type == "cpu" and mixed.weight_fp_t.shape == (IN, OUT)
    assert torch.equal(mixed.weight_fp, w)
    assert "weight_fp_t" not in dict(model.named_buffers()) and "0.weight_fp_t" not in model.state_dict()


def test_bits_and_threshold_are_checked():
    assert LLMInt8Quantize().check(8) == []
    assert "8-bit only" in LLMInt8Quantize().check(4)[0]
    assert "must be positive" in LLMInt8Quantize(outlier_threshold=0).check(8)[0]


def test_end_to_end_on_the_tiny_model_is_w8a8(compose):
    result = run(compose(*TINY, "save_model=false", "quant=llm_int8"))
    q = result["compression"]["quant"]
    assert q["modifier"] == "LLMInt8Quantize" and q["scheme"] == "W8A8" and q["bits"] == 8
    assert q["outlier_threshold"] == 6.0
    stats = q["outliers"]
    assert stats["layers"] == result["model"]["linear_layers"] and stats["forward_calls"] > 0
    assert 0.0 <= stats["outlier_column_share"] <= 1.0
    assert result["placement"]["compressed_eval"]["activation_quantizing"] == stats["layers"]
    assert result["measured"]["quant"]["pruned_still_zero"] == 1.0  # int8 rounding keeps pruned zeros


@pytest.mark.parametrize("evaluator", ["hf_subprocess", "vllm"])
def test_subprocess_evaluators_are_refused_before_any_compute(compose, evaluator):
    # Refused before the evaluator's own check (vLLM's environment need not exist to get this message).
    with pytest.raises(ConfigError, match=f"quant=llm_int8 quantizes activations.*evaluator={evaluator}"):
        Plan(compose(*TINY, "quant=llm_int8", f"evaluator={evaluator}"))
    Plan(compose(*TINY, "quant=int8_weight", "evaluator=hf_subprocess"))  # weight-only: its checkpoint is all
