"""Pruner and Quantizer stages around llm-compressor modifiers, and the one call that runs a stage."""

from __future__ import annotations

import logging
import random
from typing import Any

from jcexp import nm
from jcexp.config import ConfigError, group_size_errors, parse_mask, prunes, quantizes

log = logging.getLogger(__name__)


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
    """One sequential compression step (the paper prunes, then quantizes).

    ``kind`` says which step it is; what its modifier can do is declared by the modifier class itself
    (``data_free``, ``preserves_sparsity``, ``prunes``, ``replaces_gptq_sweep``: jcexp's own modifiers set them;
    llm-compressor's have none, so each defaults to False)."""

    kind = "stage"
    timing_name = "stage"  # its entry in result.json's "stages"

    def __init__(self, name: str, modifier: Any | None):
        self.name = name
        self.modifier = modifier

    @property
    def active(self) -> bool:
        return self.modifier is not None

    def declares(self, trait: str) -> bool:
        return bool(getattr(type(self.modifier), trait, False))

    @property
    def data_free(self) -> bool:
        """No calibration pass: the modifier rewrites the weights itself (NF4, int8)."""
        return self.declares("data_free")

    def recipe(self) -> list[Any]:
        return [self.modifier]

    def check(self, layer_widths: dict[str, int]) -> list[str]:
        """Errors this stage would hit on a model with these Linear input widths."""
        return []

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "modifier": _modifier_name(self.modifier), "active": self.active}


class Pruner(Stage):
    kind = "prune"
    timing_name = "prune"

    def __init__(
        self,
        name: str,
        sparsity: float = 0.0,
        mask: str | None = None,
        modifier: Any | None = None,
        fused: bool = False,
        nm_layout: str = "exact",
    ):
        super().__init__(name, modifier)
        self.fused = fused
        self.nm_layout = nm_layout
        self.sparsity = float(sparsity)
        self.mask = mask
        self.nm = parse_mask(mask)

    @property
    def active(self) -> bool:
        return prunes(self.modifier, self.sparsity, self.nm)

    @property
    def target_sparsity(self) -> float:
        """Percent of weights this stage removes (an N:M mask fixes it at 100·N/M). A fused pruner removes
        them inside the quantizer's sweep, so it runs no stage of its own but still sets the target."""
        if not (self.active or self.fused):
            return 0.0
        return 100.0 * self.nm[0] / self.nm[1] if self.nm else self.sparsity

    @property
    def nm_block(self) -> int | None:
        """Where N:M groups restart (SparseGPT's block, from the layout); None: along the whole row (Wanda)."""
        if self.nm is None:
            return None
        block = getattr(self.modifier, "block_size", None)
        if self.fused:  # one-pass: the quantizer's sweep picks the mask, with the same layout
            return nm.block_size(self.nm[1], self.nm_layout)
        return None if block is None else int(block)

    def check(self, layer_widths: dict[str, int]) -> list[str]:
        if self.nm is None or not (self.active or self.fused):
            return []
        (n, m), block = self.nm, self.nm_block
        bad = {w: nm.width_problems(w, n, m, block) for w in sorted(set(layer_widths.values()))}
        bad = {w: r for w, r in bad.items() if r}
        if not bad:
            return []
        where = ", ".join(f"width {w}: {r}" for w, r in bad.items())
        return [
            f"pruner.mask={self.mask} (nm_layout={self.nm_layout}): partial groups of fewer than N={n} "
            f"columns cannot hold {n} pruned weights ({where}); see jcexp/nm.py"
        ]

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "sparsity": self.target_sparsity,
            "mask": f"{self.nm[0]}:{self.nm[1]}" if self.nm else None,
            "fused": self.fused,
            "nm_layout": self.nm_layout if self.nm else None,
            "block_size": getattr(self.modifier, "block_size", None),
            "dampening_frac": getattr(self.modifier, "dampening_frac", None),
        }


class Quantizer(Stage):
    kind = "quant"
    timing_name = "quantize"

    def __init__(
        self,
        name: str,
        bits: int = 16,
        group_size: int | None = None,
        symmetric: bool = True,
        case: str | None = None,
        modifier: Any | None = None,
        actorder: str | None = None,
    ):
        super().__init__(name, modifier)
        self.bits = int(bits)
        self.group_size = group_size
        self.symmetric = symmetric
        # quant.case as configured; the Plan narrows it to what acts (jcexp.config.effective_case).
        self.case = case
        # quant.actorder: GPTQ's column order, which its modifier carries (config.actorder_errors checks they agree).
        self.actorder = actorder

    @property
    def active(self) -> bool:
        return quantizes(self.modifier, self.bits)

    def check(self, layer_widths: dict[str, int]) -> list[str]:
        if not self.active:
            return []
        errors = group_size_errors(self.group_size, layer_widths)
        if self.data_free:
            errors += self.modifier.check(self.bits)
        if self.declares("replaces_gptq_sweep"):
            from jcexp.compress.seam import seam_problem

            errors += [p for p in [seam_problem()] if p]
        if self.case is not None and not _is_gptq(self.modifier):
            errors.append(
                f"quant.case={self.case} (GPTQ after pruning) is not available with "
                f"{type(self.modifier).__name__}: only GPTQ has cases (quant=gptq)"
            )
        elif self.case is not None and (runs := getattr(type(self.modifier), "gptq_case", "A")) != self.case:
            # A drop-in or overridden GPTQ modifier (quant.modifier._target_) decides the case, not the setting:
            # recording one and running another would mislabel every result.
            errors.append(
                f"quant.case={self.case}, but quant.modifier._target_ is {type(self.modifier).__name__}, which "
                f"runs case {runs}: set quant.case={runs}, or drop the _target_ override"
            )
        return errors

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "bits": self.bits if self.active else 16,
            "group_size": self.group_size if self.active else None,
            "symmetric": self.symmetric,
            "case": self.case if self.active else None,
            "actorder": self.actorder if self.active else None,
            "keeps_pruned_zeros": self.declares("preserves_sparsity"),
            **(self.modifier.describe() if self.data_free else {}),
        }


def _is_gptq(modifier: Any) -> bool:
    from llmcompressor.modifiers.quantization import GPTQModifier

    return isinstance(modifier, GPTQModifier)


def check_stages(stages: list[Stage], layer_widths: dict[str, int]) -> None:
    errors = [e for s in stages for e in s.check(layer_widths)]
    pruner = next((s for s in stages if isinstance(s, Pruner)), None)
    quant = next((s for s in stages if isinstance(s, Quantizer)), None)
    one_pass = quant is not None and quant.active and quant.declares("prunes")
    if pruner is not None and pruner.fused != one_pass:
        errors.append(
            "one-pass joint compression needs both pruner=onepass and quant=gptq_onepass, which "
            "variant=onepass selects together "
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
    from jcexp.compress import offset_norms

    seed_everything(seed)
    # oneshot rounds Gemma-style norms through 1 + w (jcexp/compress/offset_norms.py); data-free stages do not.
    norms = {} if stage.data_free else offset_norms.save(model)
    placement.for_compression(model)
    try:
        if stage.data_free:
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
    if norms:
        done = offset_norms.restore(model, norms)
        log.info(
            "offset norms: %d of %d put back after oneshot's 1 + w round trip (it moved them by up to %.3g)%s",
            done["restored"],
            done["offset_norms"],
            done["largest_round_trip_change"],
            f"; changed by the stage and kept: {done['changed_by_the_stage']}"
            if done["changed_by_the_stage"]
            else "",
        )


def compression_device() -> str:
    """Where llm-compressor onloads layers to compress them (it takes no device argument)."""
    from llmcompressor.utils.dev import get_main_device

    return str(get_main_device())
