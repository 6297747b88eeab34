"""Pruner and Quantizer stages around llm-compressor modifiers, and the one call that runs a stage."""

from __future__ import annotations

import random
from typing import Any

from jcexp.config import ConfigError, group_size_errors, parse_mask


def seed_everything(seed: int) -> None:
    """llm-compressor has no seed argument: its calibration shuffling draws from torch's global RNG."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _modifier_name(modifier: Any) -> str | None:
    return None if modifier is None else type(modifier).__name__


class Stage:
    """One sequential compression step (the paper prunes, then quantizes)."""

    kind = "stage"

    def __init__(self, name: str, modifier: Any | None):
        self.name = name
        self.modifier = modifier

    @property
    def active(self) -> bool:
        return self.modifier is not None

    def recipe(self) -> list[Any]:
        return [self.modifier]

    def check(self, layer_widths: dict[str, int]) -> list[str]:
        """Errors this stage would hit on a model with these Linear input widths."""
        return []

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "modifier": _modifier_name(self.modifier), "active": self.active}


class Pruner(Stage):
    kind = "prune"

    def __init__(
        self,
        name: str,
        sparsity: float = 0.0,
        mask: str | None = None,
        modifier: Any | None = None,
        fused: bool = False,
    ):
        super().__init__(name, modifier)
        self.fused = fused
        self.sparsity = float(sparsity)
        self.mask = mask
        self.nm = parse_mask(mask)

    @property
    def active(self) -> bool:
        return self.modifier is not None and (self.sparsity > 0 or self.nm is not None)

    @property
    def target_sparsity(self) -> float:
        """Percent of weights this stage removes (an N:M mask fixes it at 100·N/M). A fused pruner removes
        them inside the quantizer's sweep, so it runs no stage of its own but still sets the target."""
        if not (self.active or self.fused):
            return 0.0
        return 100.0 * self.nm[0] / self.nm[1] if self.nm else self.sparsity

    def check(self, layer_widths: dict[str, int]) -> list[str]:
        if self.nm is None or not (self.active or self.fused):
            return []
        m = self.nm[1]
        bad = sorted({w for w in layer_widths.values() if w % m})
        return [f"pruner.mask={self.mask}: M={m} does not divide layer input width(s) {bad}"] if bad else []

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "sparsity": self.target_sparsity,
            "mask": f"{self.nm[0]}:{self.nm[1]}" if self.nm else None,
            "fused": self.fused,
            "block_size": getattr(self.modifier, "block_size", None),
            "dampening_frac": getattr(self.modifier, "dampening_frac", None),
        }


# Modifiers that leave pruned weights exactly zero.
PRESERVING = ("SparsityPreservingGPTQModifier",)


class Quantizer(Stage):
    kind = "quant"

    def __init__(
        self,
        name: str,
        bits: int = 16,
        group_size: int | None = None,
        symmetric: bool = True,
        preserve_sparsity: bool = False,
        modifier: Any | None = None,
    ):
        super().__init__(name, modifier)
        self.bits = int(bits)
        self.group_size = group_size
        self.symmetric = symmetric
        self.preserve_sparsity = preserve_sparsity

    @property
    def active(self) -> bool:
        return self.modifier is not None and self.bits < 16

    def check(self, layer_widths: dict[str, int]) -> list[str]:
        if not self.active:
            return []
        errors = group_size_errors(self.group_size, layer_widths)
        if hasattr(self.modifier, "apply_to"):  # jcexp's data-free quantizers (NF4, int8)
            errors += self.modifier.check(self.bits)
        if self.preserve_sparsity and type(self.modifier).__name__ not in PRESERVING:
            errors.append(
                f"quant.preserve_sparsity=true (the paper's Case B) is not available with "
                f"{type(self.modifier).__name__}: only GPTQ has a Case B here (quant=gptq)"
            )
        return errors

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "bits": self.bits if self.active else 16,
            "group_size": self.group_size if self.active else None,
            "symmetric": self.symmetric,
            "preserve_sparsity": self.preserve_sparsity,
            "case": ("B" if self.preserve_sparsity else "A") if self.active else None,
            **(self.modifier.describe() if hasattr(self.modifier, "describe") else {}),
        }


def check_stages(stages: list[Stage], layer_widths: dict[str, int]) -> None:
    errors = [e for s in stages for e in s.check(layer_widths)]
    pruner = next((s for s in stages if isinstance(s, Pruner)), None)
    quant = next((s for s in stages if isinstance(s, Quantizer)), None)
    one_pass = (
        quant is not None
        and quant.active
        and hasattr(quant.modifier, "mask")
        and hasattr(quant.modifier, "sparsity")
    )
    if pruner is not None and pruner.fused != one_pass:
        errors.append(
            "one-pass joint compression needs both pruner=onepass and quant=gptq_onepass "
            f"(got pruner={pruner.name}, quant={quant.name if quant else None})"
        )
    if errors:
        raise ConfigError("invalid config for this model:\n  - " + "\n  - ".join(errors))


def apply_stage(stage: Stage, model, tokenizer, calibration, seed: int) -> None:
    """Run one stage in place with llm-compressor's oneshot on pre-tokenized calibration windows.

    The device contract (jcexp/placement.py) holds on both sides: the stage starts from a plain model stored
    in host RAM (llm-compressor onloads layer by layer) and leaves a plain model, with no offload wrappers and
    its quantization baked into the weights, whatever dispatch the stage used."""
    from jcexp import placement

    seed_everything(seed)
    placement.for_compression(model)
    try:
        if hasattr(stage.modifier, "apply_to"):  # data-free (NF4, int8): no calibration pass
            stage.modifier.apply_to(model)
            return
        from llmcompressor import oneshot

        oneshot(
            model=model,
            tokenizer=tokenizer,
            dataset=calibration,
            recipe=stage.recipe(),
            num_calibration_samples=len(calibration),
            max_seq_length=len(calibration[0]["input_ids"]),
            output_dir=None,
            log_dir=None,
        )
    finally:
        placement.release(model)


def compression_device() -> str:
    """Where llm-compressor onloads layers to compress them (it takes no device argument)."""
    from llmcompressor.utils.dev import get_main_device

    return str(get_main_device())
