"""Plan: every check a run makes before a weight is read, and the parts of the run it instantiates.

The first step of the flow plan -> run -> scoring -> record (jcexp/run.py drives it): the config's values, the
model's shapes, the task names and their data (lm-eval's tasks are built here, once per process, and
handed to the preflight and the in-process evaluator), group sizes and N:M, the GPTQ seam guard, the evaluator's
environment and the device. What a config means (which stages act, what the hash covers) is decided beside the
schema, in jcexp/config.py; this module applies it. Nothing here imports the later steps.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from jcexp.compress import check_stages
from jcexp.config import ConfigError, check_values, effective_case
from jcexp.evaluate import build_tasks, check_tasks
from jcexp.results import config_hash

VERSIONED = (
    "torch",
    "transformers",
    "llmcompressor",
    "compressed-tensors",
    "lm_eval",
    "datasets",
    "hydra-core",
    "wandb",
)


def library_versions() -> dict[str, str | None]:
    """The versions a run depends on: recorded in result.json and part of the cache keys of its baselines and
    pruned models."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible")
    return name


class Plan:
    """The instantiated parts of a run, checked before any weight is read."""

    def __init__(self, cfg: DictConfig):
        check_values(cfg)
        self.cfg = cfg
        self.resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        self.hash = config_hash(self.resolved)
        self.source = instantiate(cfg.model.source)
        self.pruner = instantiate(cfg.pruner)
        self.quant = instantiate(cfg.quant)
        self.quant.case = effective_case(self.quant.case, self.pruner.active)
        self.calibration = instantiate(cfg.calibration)
        self.tracker = instantiate(cfg.logger)
        self.evaluator = instantiate(cfg.evaluator)
        if self.evaluator.needs_checkpoint and self.quant.active and self.quant.declares("in_process_only"):
            # A subprocess evaluator loads the saved weights: a forward-time part (W8A8) would silently drop.
            raise ConfigError(
                f"quant={self.quant.name} quantizes activations inside this process's model only; "
                f"evaluator={self.evaluator.name} scores a saved checkpoint, which holds its int8 weights but "
                "not its activation quantization: use evaluator=hf"
            )
        self.source.check()
        self.calibration.check()
        check_tasks(cfg.benchmark)
        # A subprocess evaluator's environment must import lm-eval and what these tasks load (not jcexp).
        self.evaluator.check(cfg.benchmark)
        # lm-eval's tasks, built once per process: the preflight and the in-process evaluator use copies.
        self.tasks = build_tasks(cfg.benchmark)
        self.layer_widths = self.source.layer_widths()
        check_stages([self.pruner, self.quant], self.layer_widths)
        self.device = _pick_device(cfg.device)
        if self.stages and self.device.startswith("cuda:") and self.device != "cuda:0":
            # llm-compressor takes no device argument: it onloads to cuda:0 (get_main_device).
            raise ConfigError(
                f"device={self.device}: llm-compressor compresses on cuda:0, so evaluation and compression "
                f"would use different GPUs; pick the GPU with CUDA_VISIBLE_DEVICES={self.device[5:]} "
                "and device=cuda"
            )

    @property
    def stages(self):
        return [s for s in (self.pruner, self.quant) if s.active]
