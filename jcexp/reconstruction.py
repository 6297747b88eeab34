"""Layer reconstruction errors ||WX - W^X||^2 (the GPTQ/SparseGPT objective, the paper's eq. 2) on calibration
inputs, after each stage, and the Case A / Case B error ratio of eq. 7 measured on the same pruned model.

Why our own code: llm-compressor logs a per-module GPTQ "loss", but it is the solver's running objective on the
inputs of its own sequential pass, so it cannot compare stages, cases or pruners. Here every stage is scored on
one fixed set of inputs: what each Linear saw in the dense model on ``tokens`` calibration tokens. The errors are
therefore comparable across stages, cases and runs of one model.
"""

from __future__ import annotations

from typing import Any

import torch

from jcexp.measure import compressible_linears

Outputs = dict[str, torch.Tensor]


class LayerProbe:
    """The dense model's inputs X and outputs WX (bias left out) of every compressible Linear, on a fixed
    token sample. Memory: tokens x (in + out) float32 per Linear, e.g. ~2.7 GB for an 8B Llama at 256 tokens."""

    def __init__(self, inputs: dict[str, torch.Tensor], dense: Outputs):
        self.inputs = inputs
        self.dense = dense

    @property
    def tokens(self) -> int:
        return next(iter(self.inputs.values())).shape[0] if self.inputs else 0

    @torch.no_grad()
    def outputs(self, model) -> Outputs:
        """W^X for the model's current weights, on the stored inputs."""
        layers = compressible_linears(model)
        return {name: _linear(x, layers[name]) for name, x in self.inputs.items()}

    @torch.no_grad()
    def errors(self, model, reference: Outputs | None = None) -> dict[str, dict[str, float]]:
        """Per layer: ``sq`` = ||Y_ref - W^X||_F^2 and ``rel`` = sq / ||Y_ref||_F^2. Y_ref defaults to the dense WX."""
        reference = self.dense if reference is None else reference
        layers = compressible_linears(model)
        out = {}
        for name, x in self.inputs.items():
            ref = reference[name]
            sq = float((ref - _linear(x, layers[name])).pow(2).sum())
            norm = float(ref.pow(2).sum())
            out[name] = {"sq": sq, "rel": sq / norm if norm else 0.0, "ref_sq": norm}
        return out


def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return torch.nn.functional.linear(x, layer.weight.detach().float().cpu())


@torch.no_grad()
def capture(model, calibration, samples: int, tokens: int, seed: int) -> LayerProbe:
    """Run ``samples`` calibration windows through the (dense) model and keep ``tokens`` of each Linear's input
    rows, the same token positions for every layer, drawn with ``seed``."""
    layers = compressible_linears(model)
    ids = torch.tensor(calibration[:samples]["input_ids"])
    total = ids.numel()
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(total, generator=gen)[: min(tokens, total)].sort().values
    inputs: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_mod, args, _out):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            inputs[name] = x[keep.to(x.device)].float().cpu()

        return fn

    handles = [mod.register_forward_hook(hook(name)) for name, mod in layers.items()]
    device = next(model.parameters()).device
    try:
        model(input_ids=ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    dense = {name: _linear(x, layers[name]) for name, x in inputs.items()}
    return LayerProbe(inputs, dense)


def summarize(per_layer: dict[str, dict[str, float]]) -> dict[str, float]:
    """Pooled relative error (sum of errors over sum of reference norms) and the spread of per-layer values."""
    rel = sorted(v["rel"] for v in per_layer.values())
    sq = sum(v["sq"] for v in per_layer.values())
    ref = sum(v["ref_sq"] for v in per_layer.values())
    return {
        "sq": sq,
        "rel": sq / ref if ref else 0.0,
        "layer_rel_median": rel[len(rel) // 2] if rel else 0.0,
        "layer_rel_max": rel[-1] if rel else 0.0,
    }


CASE_RATIO_QUANTITY = "output-space sum_layers ||(W_p - W_A)X||^2 / sum_layers ||(W_p - W_B)X||^2"


def case_ratio(case_a: dict[str, dict[str, float]], case_b: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The measured counterpart of eq. 7's E_A / E_B: quantization's output error ||(W_p - Ŵ)X||² in Case A over
    Case B, both from the same pruned weights W_p on the same inputs, per layer and pooled (summed over layers,
    then divided). It is not the paper's E_j, a per-column error in weight space; what carries over is the
    limit the paper relies on: both cases quantize the same weights as p -> 0, so the ratio tends to 1."""
    per_layer = {n: case_a[n]["sq"] / case_b[n]["sq"] for n in case_a if case_b[n]["sq"] > 0}
    ratios = sorted(per_layer.values())
    total_b = sum(v["sq"] for v in case_b.values())
    return {
        "pooled": sum(v["sq"] for v in case_a.values()) / total_b if total_b else None,
        "layer_median": ratios[len(ratios) // 2] if ratios else None,
        "layer_min": ratios[0] if ratios else None,
        "layer_max": ratios[-1] if ratios else None,
        "per_layer": per_layer,
    }
