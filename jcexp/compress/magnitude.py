"""One-shot magnitude pruning (``pruner=magnitude``): zero the smallest |w| of each compressible Linear.

Why not llm-compressor's ``MagnitudePruningModifier`` (0.14.0.1): it is a training-time modifier. In ``oneshot``
it runs in the DataFreePipeline, computes its mask at start, but applies it to the weights only on optimizer
step events, which oneshot never sends; ``on_finalize`` then deletes the masks. Measured on the tiny Llama with
init_sparsity = final_sparsity = 0.5 (start=end=0, and start=end=-1): 0.0% sparsity afterwards. It also has
no N:M mask structure ("2:4" raises "Invalid mask_structure"). So this small data-free modifier does it.

- unstructured: per layer (the whole weight matrix), the round(sparsity * numel) smallest |w| are zeroed,
  exactly that many (ties broken by position, stably).
- N:M (jcexp's convention, N pruned of every M): in each row, groups of M consecutive weights along the input
  dimension from column 0; each group loses its N smallest |w|. A partial group of r < M columns at a row's end
  loses N of its r (jcexp/nm.py's rule; r < N is refused by the Pruner's check before any compute).

No calibration data and no weight update: the kept weights are exactly the dense ones.
"""

from __future__ import annotations

from typing import Any

import torch

from jcexp.config import parse_mask


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask: False at the round(sparsity * numel) smallest |w| of the whole matrix."""
    scores = weight.detach().abs().float().flatten()
    k = int(round(sparsity * scores.numel()))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        keep[torch.argsort(scores, stable=True)[:k]] = False
    return keep.reshape(weight.shape)


def nm_magnitude_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Boolean keep-mask: in each row's groups of M consecutive columns, False at the N smallest |w|."""
    rows, cols = weight.shape
    pad = (-cols) % m
    # Padding scores +inf: a partial last group then loses its N smallest real weights, never a padded one.
    scores = torch.nn.functional.pad(weight.detach().abs().float(), (0, pad), value=float("inf"))
    groups = scores.reshape(rows, -1, m)
    pruned = torch.argsort(groups, dim=-1, stable=True)[..., :n]
    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, pruned, False)
    return keep.reshape(rows, -1)[:, :cols]


class MagnitudePruning:
    """Data-free pruner stage modifier: ``apply_to(model)`` zeroes weights in place (see the module docstring)."""

    data_free = True  # no calibration pass: apply_stage calls apply_to instead of llm-compressor's oneshot

    def __init__(self, sparsity: float = 0.0, mask_structure: str = "0:0"):
        self.sparsity = float(sparsity)  # a fraction, as llm-compressor's pruners take it
        self.mask_structure = mask_structure
        self.nm = parse_mask(mask_structure)  # "0:0" -> None (unstructured)

    def mask(self, weight: torch.Tensor) -> torch.Tensor:
        if self.nm is not None:
            return nm_magnitude_mask(weight, *self.nm)
        return magnitude_mask(weight, self.sparsity)

    @torch.no_grad()
    def apply_to(self, model) -> None:
        from compressed_tensors.offload import update_offload_parameter

        from jcexp.measure import compressible_linears

        for module in compressible_linears(model).values():
            weight = module.weight
            # Through the offload API, as the data-free quantizers write: the stored tensor is written either way.
            update_offload_parameter(module, "weight", weight * self.mask(weight).to(weight.dtype))

    def describe(self) -> dict[str, Any]:
        return {"criterion": "|w|", "scope": "per row, groups of M" if self.nm else "per layer"}
