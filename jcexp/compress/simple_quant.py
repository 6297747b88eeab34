"""The simpler quantizers of the paper's Table IV / Fig. 4, weight-only: NF4, and absmax int8 (``quant=int8_weight``,
W8A16: LLM.int8()'s weight quantization without its activation side; the full W8A8 LLM.int8() is
``quant=llm_int8``, jcexp/compress/llm_int8.py).

llm-compressor has neither. compressed-tensors has no NF4 codebook, and bitsandbytes needs a GPU. So these run
on CPU in torch: each Linear weight is replaced by its quantize-dequantize image (simulated quantization,
as the paper compares accuracy, not kernels). With ``backend: bitsandbytes`` (or ``auto`` when a GPU and
bitsandbytes are present), NF4 goes through bitsandbytes' own quantize_4bit/dequantize_4bit instead. The
result records which backend ran. Both are data-free: no calibration pass.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

# QLoRA's NormalFloat-4 levels (Dettmers et al., 2023), as bitsandbytes ships them. 0 is exact, so a pruned
# weight stays zero.
NF4_LEVELS = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)


def _linears(model) -> dict[str, torch.nn.Linear]:
    from jcexp.measure import compressible_linears

    return compressible_linears(model)


def nf4_roundtrip(weight: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """Blockwise absmax over ``block_size`` consecutive weights (row-major, as bitsandbytes), nearest level."""
    flat = weight.detach().float().reshape(-1)
    pad = (-flat.numel()) % block_size
    blocks = torch.nn.functional.pad(flat, (0, pad)).reshape(-1, block_size)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    levels = torch.tensor(NF4_LEVELS, dtype=blocks.dtype)
    idx = (blocks / scale).unsqueeze(-1).sub(levels).abs().argmin(dim=-1)
    out = (levels[idx] * scale).reshape(-1)[: flat.numel()]
    return out.reshape(weight.shape).to(weight.dtype)


def int8_absmax_roundtrip(weight: torch.Tensor) -> torch.Tensor:
    """LLM.int8()'s vector-wise absmax: one scale per output row, round to [-127, 127]. Weight-only: the int8
    activations and the fp16 outlier path of LLM.int8() are in jcexp/compress/llm_int8.py."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.clamp(torch.round(w / scale), -127, 127) * scale).to(weight.dtype)


def _bnb_ready() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available()


class _WeightOnly:
    """Data-free stage: ``apply_to(model)`` rewrites every compressible Linear weight in place."""

    bits: int = 16
    data_free = True  # no calibration pass: apply_stage calls apply_to instead of llm-compressor's oneshot

    def __init__(self, backend: str = "auto"):
        if backend not in ("auto", "torch", "bitsandbytes"):
            raise ValueError(f"quant.modifier.backend={backend!r}: use auto, torch or bitsandbytes")
        self.requested = backend
        self.backend = (
            "bitsandbytes" if backend == "bitsandbytes" or (backend == "auto" and _bnb_ready()) else "torch"
        )

    def check(self, bits: int) -> list[str]:
        errors = []
        if bits != self.bits:
            errors.append(f"quant.bits={bits}: {type(self).__name__} is {self.bits}-bit only")
        if self.requested == "bitsandbytes" and not _bnb_ready():
            errors.append("quant.modifier.backend=bitsandbytes needs the bitsandbytes package and a CUDA GPU")
        return errors

    def roundtrip(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def apply_to(self, model) -> None:
        # Through the offload API: on a dispatched module, `weight` is a per-access copy and a write to it is
        # lost (or fails on a device mismatch); this writes the stored tensor either way.
        from compressed_tensors.offload import update_offload_parameter

        for module in _linears(model).values():
            update_offload_parameter(module, "weight", self.roundtrip(module.weight))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend}


class NF4Quantize(_WeightOnly):
    bits = 4

    def __init__(self, block_size: int = 64, backend: str = "auto"):
        super().__init__(backend)
        self.block_size = int(block_size)

    def roundtrip(self, weight: torch.Tensor) -> torch.Tensor:
        if self.backend == "bitsandbytes":
            import bitsandbytes.functional as bnbf

            packed, state = bnbf.quantize_4bit(weight.cuda(), blocksize=self.block_size, quant_type="nf4")
            return bnbf.dequantize_4bit(packed, state).to(weight.device, weight.dtype)
        return nf4_roundtrip(weight, self.block_size)


class Int8AbsmaxQuantize(_WeightOnly):
    """``quant=int8_weight``: W8A16, absmax int8 weights with one scale per output row; activations stay 16-bit."""

    bits = 8

    def __init__(self, backend: str = "torch"):
        if backend == "bitsandbytes":
            raise ValueError(
                "quant=int8_weight runs in torch only (bitsandbytes' int8 path quantizes at inference)"
            )
        super().__init__("torch")

    def roundtrip(self, weight: torch.Tensor) -> torch.Tensor:
        return int8_absmax_roundtrip(weight)
