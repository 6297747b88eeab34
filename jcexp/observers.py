"""What a run measures and guards around its compression stages, one concern per observer.

In the spirit of llm-compressor's modifier lifecycle, each observer is called at ``start`` (the dense model,
before any stage), ``before(stage)``, ``after(stage)`` and ``finish`` (the compressed model, before its
evaluation). ``before`` runs in list order and ``after`` in reverse, so the first observer wraps the others and
the timer, last, measures the stage alone. Adding a measurement is adding an observer here and one line to
:func:`default_observers`; the run loop (jcexp/run.py) does not change.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jcexp import measure, placement, reconstruction

if TYPE_CHECKING:
    from jcexp.compress import Stage
    from jcexp.plan import Plan


@dataclass
class RunState:
    """The model as it flows through the stages, and what the observers record about it."""

    plan: Plan
    model: Any
    tokenizer: Any
    calibration: Any
    timings: dict[str, Any] = field(default_factory=dict)  # result.json "stages"
    measured: dict[str, Any] = field(default_factory=dict)  # result.json "measured"
    layer_errors: dict[str, Any] = field(default_factory=dict)  # result.json "layer_errors"
    prune_cache: dict[str, Any] | None = None  # set by the prune stage: where its model came from


class Observer:
    def start(self, run: RunState) -> None:
        """The dense model, before any stage."""

    def before(self, stage: Stage, run: RunState) -> None:
        """Just before ``stage`` runs."""

    def after(self, stage: Stage, run: RunState) -> None:
        """Just after ``stage`` ran (or its result was loaded from the cache)."""

    def finish(self, run: RunState) -> None:
        """The final compressed model, before it is evaluated."""


class StageTimer(Observer):
    """Wall time and peak memory of each stage; a pruning loaded from the cache is timed as ``load_pruned``."""

    def before(self, stage: Stage, run: RunState) -> None:
        self._meter = measure.Meter(stage.kind).__enter__()

    def after(self, stage: Stage, run: RunState) -> None:
        self._meter.__exit__(None, None, None)
        reused = stage.kind == "prune" and (run.prune_cache or {}).get("reused")
        run.timings["load_pruned" if reused else stage.timing_name] = self._meter.record()


class SparsityMeter(Observer):
    """Sparsity measured from the weights after each stage, never assumed from the config; the N:M pattern's
    share of holding groups; and after quantization, which zeros are pruned positions and which are rounding."""

    def __init__(self, nm: tuple[int, int] | None, nm_block: int | None = None):
        self.nm = nm
        self.nm_block = nm_block
        self._pruned_masks = None

    def before(self, stage: Stage, run: RunState) -> None:
        if stage.kind == "quant" and "prune" in run.measured:
            self._pruned_masks = measure.zero_masks(run.model)

    def after(self, stage: Stage, run: RunState) -> None:
        found = measure.sparsity(run.model)
        if stage.kind == "quant" and self._pruned_masks is not None:
            found.update(measure.zeros_after_quantization(run.model, self._pruned_masks))
            self._pruned_masks = None
        run.measured[stage.kind] = found
        if stage.kind == "quant" and stage.declares("prunes"):
            run.measured["onepass_pruned"] = stage.modifier.pruned_fraction()
        if self.nm:
            run.measured[f"nm_after_{stage.kind}"] = measure.nm_structure(run.model, *self.nm, self.nm_block)

    def finish(self, run: RunState) -> None:
        prune, quant = run.measured.get("prune"), run.measured.get("quant")
        # The last stage's measurement is the model's final state; only an uncompressed model needs its own pass.
        last = quant or prune or measure.sparsity(run.model)
        final = last["overall"]
        # What pruning removed, never counting the zeros quantization rounded to (a 3-bit model without
        # pruning has ~30% exact zeros); the TCr from measured sparsity uses this.
        pruned = prune["overall"] if prune else run.measured.get("onepass_pruned", 0.0)
        # Of those, the ones still exactly zero at the end: Case A's GPTQ revives some, and a revived weight
        # must be stored, so the TCr from measured sparsity counts only these.
        still_zero = pruned
        if quant is None:
            rounding = 0.0
        elif prune:
            rounding = quant["kept_rounded_to_zero"] * (1.0 - pruned)
            still_zero = pruned * (
                quant["pruned_still_zero"] if quant["pruned_still_zero"] is not None else 1.0
            )
        else:
            rounding = max(0.0, final - pruned)  # one-pass: its pruned positions all stay exactly 0
        run.measured["sparsity"] = {
            "after_prune": prune and prune["overall"],
            "after_quant": quant and quant["overall"],
            "final": final,
            "pruned": pruned,
            "pruned_still_zero": still_zero,
            "rounding_zeros": rounding,
        }


class LmHeadGuard(Observer):
    """lm_head (tied to the input embeddings in SmolLM2) is never compressed: its digest must not change; nor
    may any other parameter outside the compressible Linears (norms, embeddings): those that did are named."""

    def start(self, run: RunState) -> None:
        self._head = measure.lm_head_key(run.model)
        self._digests = measure.uncompressed_digests(run.model)

    def finish(self, run: RunState) -> None:
        now = measure.uncompressed_digests(run.model)
        run.measured["lm_head_unchanged"] = now.get(self._head) == self._digests[self._head]
        run.measured["uncompressed_changed"] = sorted(n for n, d in self._digests.items() if now.get(n) != d)


class PlacementGuard(Observer):
    """The device contract at every stage boundary, checked rather than assumed: a stage (computed, or loaded
    from the cache) hands back a plain model in host RAM, with no offload wrapper and no re-quantizing forward,
    whatever dispatch llm-compressor used inside it (apply_stage releases it; jcexp/placement.py)."""

    def after(self, stage: Stage, run: RunState) -> None:
        placement.check(run.model, placement.HOST)


class ReconstructionErrors(Observer):
    """Per-layer ||WX - W^X||^2 of each stage against its input, and of the whole run against the dense model,
    on the dense model's calibration inputs (jcexp/reconstruction.py). With ``case_ratio``, the GPTQ case the
    run does not use also runs, on a copy of the same pruned model, for E_A / E_B (the paper's eq. 7)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self._reference: reconstruction.Outputs | None = None

    def start(self, run: RunState) -> None:
        cfg = self.plan.cfg
        with measure.timed(run.timings, "errors_capture"):
            placement.for_evaluation(run.model, self.plan.device)
            self.probe = reconstruction.capture(
                run.model, run.calibration, cfg.errors.samples, cfg.errors.tokens, cfg.seed
            )

    def before(self, stage: Stage, run: RunState) -> None:
        self._reference = self.probe.outputs(run.model)
        if stage.kind == "quant" and self.plan.cfg.errors.case_ratio:
            self._other = self._other_case(run)

    def after(self, stage: Stage, run: RunState) -> None:
        run.layer_errors[stage.kind] = self.probe.errors(run.model, self._reference)
        if stage.kind == "quant" and self.plan.cfg.errors.case_ratio:
            mine, other = run.layer_errors["quant"], self._other
            a, b = (other, mine) if stage.case == "B" else (mine, other)
            run.layer_errors["case_a"], run.layer_errors["case_b"] = a, b
        self._reference = None

    def finish(self, run: RunState) -> None:
        errors = run.layer_errors
        errors["total"] = self.probe.errors(run.model)
        ratio = reconstruction.case_ratio(errors["case_a"], errors["case_b"]) if "case_a" in errors else None
        summary: dict[str, Any] = {
            "tokens": self.probe.tokens,
            "samples": self.plan.cfg.errors.samples,
            "stages": {k: reconstruction.summarize(v) for k, v in errors.items()},
        }
        if ratio is not None:
            summary["case_ratio"] = {
                **{k: v for k, v in ratio.items() if k != "per_layer"},
                # Not the paper's per-column weight-space E_j of eq. 7: see reconstruction.case_ratio.
                "quantity": reconstruction.CASE_RATIO_QUANTITY,
            }
            errors["case_ratio"] = ratio["per_layer"]
        run.measured["errors"] = summary
        del self.probe  # its stored activations are not needed for evaluation

    def _other_case(self, run: RunState) -> dict[str, Any]:
        """The other GPTQ case on a copy of the same pruned model: E_A / E_B then compares the two cases on
        identical weights and inputs. Costs one more GPTQ pass and one model copy."""
        from hydra.utils import instantiate

        from jcexp.compress import apply_stage

        alt_cfg = copy.deepcopy(self.plan.cfg)  # whole: the quant node interpolates model and quant keys
        other = "A" if self.plan.quant.case == "B" else "B"
        alt_cfg.quant.case = other
        alt = instantiate(alt_cfg.quant)
        twin = copy.deepcopy(run.model)
        with measure.timed(run.timings, f"quantize_case_{other}_for_ratio"):
            apply_stage(alt, twin, run.tokenizer, run.calibration, self.plan.cfg.seed)
        out = self.probe.errors(twin, self._reference)
        del twin
        return out


def default_observers(plan: Plan) -> list[Observer]:
    """The observers of a run, outermost first (the timer last, so it times the stage alone)."""
    observers: list[Observer] = [
        PlacementGuard(),
        SparsityMeter(plan.pruner.nm, plan.pruner.nm_block),
        LmHeadGuard(),
    ]
    if plan.cfg.errors.enabled and plan.stages:
        observers.append(ReconstructionErrors(plan))
    observers.append(StageTimer())
    return observers
