"""Compression stages. Each wraps an llm-compressor modifier that Hydra built from the group's YAML
(``modifier._target_``) and adds what the paper needs around it: sparsity in percent, N:M masks read as
"N pruned of every M", bit widths, and the checks that must pass before any compute.
"""

from .stages import (
    Pruner,
    Quantizer,
    Stage,
    apply_stage,
    check_stages,
    compression_device,
    seed_everything,
)

__all__ = [
    "Pruner",
    "Quantizer",
    "Stage",
    "apply_stage",
    "check_stages",
    "compression_device",
    "seed_everything",
]
