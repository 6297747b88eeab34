"""Put back the offset-norm weights that llm-compressor's oneshot moves without meaning to.

Gemma's norms compute ``x * (1 + w)``. llm-compressor 0.14's ``oneshot`` swaps each of them for ``x * w'`` with
``w' = 1 + w`` while it calibrates (``norm_calibration_context``, there for the modifiers that smooth norm
weights: AWQ, SmoothQuant), and back afterwards, ``w = w' - 1``, rounding to the weight's dtype each time. None
of jcexp's stages changes a norm, yet that round trip moves every norm weight by up to a rounding of ``1 + w``:
about 6e-8 in float32, but 2^-8 in bfloat16, far more than the weight's own precision when |w| is small. So the
weights are saved before the stage and every one that moved by no more than the round trip can is put back
exactly; one moved further (a smoothing modifier added by a YAML file) keeps the value its modifier gave it.
"""

from __future__ import annotations

from typing import Any

import torch


def offset_norm_names() -> set[str]:
    """The norm classes llm-compressor converts (its own registry: Gemma 1-3, Qwen3-Next, ...)."""
    from compressed_tensors.registry import standardize_lookup_name
    from llmcompressor.modeling.offset_norm import NormCalibrationModule

    names = [*NormCalibrationModule.registered_names(), *NormCalibrationModule.registered_aliases()]
    return {standardize_lookup_name(n) for n in names}


def save(model) -> dict[str, torch.Tensor]:
    """A copy of each offset norm's weight, by module name (empty for a model without offset norms)."""
    from compressed_tensors.registry import standardize_lookup_name

    kinds = offset_norm_names()
    return {
        name: module.weight.detach().clone()
        for name, module in model.named_modules()
        if standardize_lookup_name(type(module).__name__) in kinds
        and getattr(module, "weight", None) is not None
    }


def round_trip_bound(original: torch.Tensor) -> torch.Tensor:
    """The most ``w -> 1 + w -> (1 + w) - 1`` can move each weight, rounding in its dtype at both steps."""
    eps = torch.finfo(original.dtype).eps
    return 2 * eps * (1 + original.float().abs())


def restore(model, saved: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write back each saved weight that moved by no more than the round trip; what was done, by module."""
    modules = dict(model.named_modules())
    restored, moved_by_a_modifier = [], []
    largest = 0.0
    for name, original in saved.items():
        weight = modules[name].weight
        delta = (weight.detach().float() - original.float().to(weight.device)).abs()
        if bool((delta <= round_trip_bound(original).to(weight.device)).all()):
            largest = max(largest, float(delta.max()))
            with torch.no_grad():
                weight.copy_(original.to(weight.device, weight.dtype))
            restored.append(name)
        else:
            moved_by_a_modifier.append(name)
    return {
        "offset_norms": len(saved),
        "restored": len(restored),
        "largest_round_trip_change": largest,
        "changed_by_the_stage": moved_by_a_modifier,
    }
