"""LLM.int8() (Dettmers et al., 2022), simulated in torch on any device: the paper's Table IV W8A8 baseline.

Each compressible Linear (lm_head never) becomes an :class:`Int8MixedLinear`, the same module object with its
class swapped, so its parameters, name and place in the model are unchanged. Its weight is quantized once,
vector-wise (absmax per output row, [-127, 127]), and stored dequantized, which is also what a saved checkpoint
and the sparsity measurements see. At every forward the input's outlier feature columns (any |x| >=
``outlier_threshold``, 6.0 in the paper) go through a matmul with those original weight columns in the model's
own dtype (LLM.int8() keeps the fp16 weight for them). Which columns are outliers depends on each call's input,
so every original column may be needed; the original weight is therefore kept, once, in host RAM, transposed
(``in x out``, one row per input feature), and each call copies only its outlier rows to the device it runs
on (``|O| x out`` values). It is a plain attribute, not a buffer: ``model.to(device)`` leaves it on the host, so
the device holds one full-precision copy (the int8 image in ``weight``), never two (for an 8B model the second
would be about 15 GB of bf16 on the GPU). The other columns are quantized per token row (absmax) to int8,
multiplied with the int8 weight, and dequantized by the outer product of the two scales:

    Y = X[:, O] @ W[:, O]^T + (s_x s_w^T) * (round(X[:, ~O] / s_x) @ round(W / s_w)[:, ~O]^T)

The int8 product is simulated in float32, where it is exact (integers) for input widths up to 1040 and
within float32 rounding beyond. bitsandbytes' kernels need a GPU and change the numerics again; this is the
method, not the kernel, as the rest of the paper's comparison is.

The activation path exists only in this process's modules: a saved checkpoint holds the int8 weights (dense,
as ``quant=int8_weight`` saves them) and no activation quantization, so evaluators that score a saved
checkpoint are refused for this quantizer (``in_process_only``; jcexp.plan.Plan).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from jcexp.compress.simple_quant import int8_absmax_roundtrip

DEFAULT_THRESHOLD = 6.0
HOST = "cpu"  # where the full-precision copy of each weight lives (jcexp.placement.HOST)


def _row_scale(t: torch.Tensor) -> torch.Tensor:
    """absmax / 127 per row (float32); an all-zero row gets scale 1, so its codes are 0, not NaN."""
    scale = t.abs().amax(dim=-1, keepdim=True).float() / 127.0
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def int8_codes(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Round-to-nearest int8 codes in [-127, 127], as float32 (the matmul is simulated in float32)."""
    return torch.clamp(torch.round(t.float() / scale), -127, 127)


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Feature columns holding any |x| >= threshold over all token rows of this call (x: tokens x features).
    Per matmul call, as bitsandbytes decides it: every sequence of a batch (padding included) takes part."""
    return (x.abs() >= threshold).any(dim=0)


def mixed_int8_matmul(
    x: torch.Tensor,
    weight_int8: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_fp_t: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, int]:
    """LLM.int8()'s decomposed X @ W^T for x (tokens x in) and int8 codes of W (out x in, as float32) with their
    per-row scales (out x 1). ``weight_fp_t`` is the original weight transposed (in x out), on any device (host
    RAM): only its outlier rows, W[:, O]^T, are copied to x's device. Returns the product in x's dtype and the
    number of outlier columns."""
    outliers = outlier_columns(x, threshold)
    n_out = int(outliers.sum())
    # The int8 part: outlier columns zeroed before the per-token absmax, so they neither set a scale nor count.
    regular = x.float().masked_fill(outliers, 0.0)
    x_scale = _row_scale(regular)
    y = (int8_codes(regular, x_scale) @ weight_int8.T) * (x_scale * weight_scale.T)
    y = y.to(x.dtype)
    if n_out:
        # The 16-bit part: the outlier columns of x with the original (unquantized) weight columns.
        rows = outliers.nonzero().squeeze(1).to(weight_fp_t.device)
        y = y + x[:, outliers] @ weight_fp_t.index_select(0, rows).to(x.device, x.dtype)
    return y, n_out


class Int8MixedLinear(torch.nn.Linear):
    """A Linear whose forward is LLM.int8()'s mixed-precision decomposition (see the module docstring).

    Created by :meth:`LLMInt8Quantize.apply_to` by swapping a Linear's class in place: ``weight`` (the
    dequantized int8 weight) and ``bias`` stay its parameters; ``weight_row_scale`` is a non-persistent buffer
    (it moves with ``model.to()`` and is not saved). The original weight is ``weight_fp_t``, a plain attribute
    in host RAM (transposed, in x out): ``model.to()`` does not move it and a checkpoint does not hold it."""

    # Declared for jcexp.placement.state: this forward quantizes its input activations (on purpose).
    quantizes_activations = True

    outlier_threshold: float
    weight_fp_t: torch.Tensor  # host RAM, in x out
    weight_row_scale: torch.Tensor

    @property
    def weight_fp(self) -> torch.Tensor:
        """The original weight (out x in), a view of the host copy."""
        return self.weight_fp_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        codes = int8_codes(self.weight, self.weight_row_scale)  # exact: weight holds codes * scale
        y, n_out = mixed_int8_matmul(
            flat, codes, self.weight_row_scale, self.weight_fp_t, self.outlier_threshold
        )
        if self.bias is not None:
            y = y + self.bias
        self.outlier_cols += n_out
        self.cols_seen += flat.shape[-1]
        self.calls += 1
        self.calls_with_outliers += bool(n_out)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, W8A8 LLM.int8(), outlier_threshold={self.outlier_threshold}"

    def reset_counters(self) -> None:
        self.outlier_cols = self.cols_seen = self.calls = self.calls_with_outliers = 0


@torch.no_grad()
def to_int8_mixed(module: torch.nn.Linear, threshold: float) -> Int8MixedLinear:
    """Turn a plain Linear into an Int8MixedLinear in place (same object, same parameters)."""
    from compressed_tensors.offload import update_offload_parameter

    if type(module) is not torch.nn.Linear:  # the class swap below assumes a plain Linear's forward and state
        raise TypeError(
            f"LLM.int8() simulation replaces plain torch.nn.Linear only, not {type(module).__name__}"
        )
    # llm-compressor's oneshot (0.14) leaves `forward` on every Linear it visited as an instance attribute, a
    # bound Linear.forward: it would shadow the class swap below and silently run the plain Linear. Drop that
    # leftover; refuse anything else there (a live wrapper: the model is not plain).
    leftover = module.__dict__.get("forward")
    if leftover is not None:
        if (
            getattr(leftover, "__func__", None) is not torch.nn.Linear.forward
            or leftover.__self__ is not module
        ):
            raise TypeError(f"{module}: its forward is wrapped ({leftover!r}); release the model first")
        del module.__dict__["forward"]
    original = module.weight.detach()
    scale, image = _row_scale(original), int8_absmax_roundtrip(original)
    # The one full-precision copy besides the int8 image: in host RAM, transposed so that an outlier column of
    # W is a contiguous row. Made before the write below, which may reuse the weight's storage.
    module.weight_fp_t = original.to(HOST).t().contiguous()
    module.register_buffer("weight_row_scale", scale, persistent=False)
    # Through the offload API, as simple_quant does: the stored tensor is written even on a dispatched module.
    update_offload_parameter(module, "weight", image)
    module.__class__ = Int8MixedLinear
    module.outlier_threshold = float(threshold)
    module.reset_counters()
    return module  # type: ignore[return-value]


class LLMInt8Quantize:
    """Data-free quantizer stage modifier for ``quant=llm_int8``: W8A8 with LLM.int8()'s outlier decomposition."""

    bits = 8
    data_free = True  # no calibration pass: apply_stage calls apply_to instead of llm-compressor's oneshot
    # Its activation quantization lives in this process's modules; a saved checkpoint does not carry it.
    in_process_only = True
    # It keeps the original of every compressible weight in host RAM (the outlier columns' 16-bit values):
    # counted by the preflight (jcexp/preflight.py, ``int8_fp_copy``).
    host_weight_copy = True

    def __init__(self, outlier_threshold: float = DEFAULT_THRESHOLD):
        self.outlier_threshold = float(outlier_threshold)
        self._modules: list[weakref.ref] = []

    def check(self, bits: int) -> list[str]:
        errors = []
        if bits != self.bits:
            errors.append(f"quant.bits={bits}: LLMInt8Quantize is 8-bit only")
        if not self.outlier_threshold > 0:
            errors.append(f"quant.modifier.outlier_threshold={self.outlier_threshold} must be positive")
        return errors

    def roundtrip(self, weight: torch.Tensor) -> torch.Tensor:
        """What the stored weight becomes (vector-wise absmax int8), as for the other data-free quantizers."""
        return int8_absmax_roundtrip(weight)

    def apply_to(self, model) -> None:
        from jcexp.measure import compressible_linears

        # Weak references: the stats are read from the live modules, and a finished model may be freed.
        self._modules = [
            weakref.ref(to_int8_mixed(m, self.outlier_threshold))
            for m in compressible_linears(model).values()
        ]

    def outlier_stats(self) -> dict[str, Any]:
        """Outlier feature columns seen since apply_to (evaluation included), over all layers and calls."""
        mods = [m for m in (r() for r in self._modules) if m is not None]
        cols = sum(m.cols_seen for m in mods)
        calls = sum(m.calls for m in mods)
        return {
            "layers": len(mods),
            "forward_calls": calls,
            # Columns that went through the 16-bit path, as a share of all columns seen (every layer, every call).
            "outlier_column_share": sum(m.outlier_cols for m in mods) / cols if cols else None,
            "calls_with_outliers_share": sum(m.calls_with_outliers for m in mods) / calls if calls else None,
            "layers_with_outliers": sum(1 for m in mods if m.outlier_cols),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "torch",
            "scheme": "W8A8",
            "method": "LLM.int8(): vector-wise int8 weights, per-token int8 activations, 16-bit outlier columns",
            "outlier_threshold": self.outlier_threshold,
            "outliers": self.outlier_stats(),
            "checkpoint": "int8 weights saved dense; activations are not quantized in it (in-process only)",
        }
