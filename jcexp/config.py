"""What a config is and what it means: the schema, its meaning, its resolvers and its value checks.

- schema: the dataclasses (Hydra ConfigStore) type every group, so a misspelled key or a wrong type fails when
  Hydra composes the config.
- meaning: what a config computes, decided here and nowhere else: whether a stage acts (``prunes``,
  ``quantizes``, ``pruner_active``, ``quant_active``, ``effective_case``) and the one canonical form the config
  hash covers (``effective_config``: off spellings, inactive stages, sweep revisions, the N:M layout and
  sequential-evaluation rules). The stages (jcexp.compress), the resolvers below and the hash
  (jcexp.results.config_hash) all ask these functions.
- resolvers: the ``${jc.*:...}`` interpolations of conf/.
- validation: :func:`check_values` checks what needs more than a type (ranges, N:M syntax, agreement between
  fields); checks that need the model's layer shapes or lm-eval's task registry live with the stage that owns
  them and run in jcexp.plan.Plan, before any weight is read.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

SUPPORTED_BITS = (2, 3, 4, 8, 16)
_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class ConfigError(ValueError):
    """A bad config value, reported before any model is loaded or compressed."""


# ----------------------------------------------------------------------------------------------- schema
@dataclass
class ModelConfig:
    name: str = MISSING
    # Default GPTQ group size for this model: the largest power of two dividing every Linear input width.
    group_size: int = 128
    # Instantiated (``_target_``) into a jcexp.models source; its keys are that class's arguments.
    source: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrunerConfig:
    _target_: str = "jcexp.compress.Pruner"
    name: str = MISSING
    sparsity: float = 0.0  # percent, as in the paper's tables
    mask: str | None = None  # "N:M": N pruned of every M consecutive weights (the paper's convention)
    # Where N:M groups fall: "exact" (groups of M along the row) or "paper" (SparseGPT's block of 128, groups
    # restarting at each block, as the paper ran it). jcexp/nm.py has the rule for partial groups.
    nm_layout: str = "exact"
    # The llm-compressor modifier (``_target_`` + its own arguments); null for no pruning.
    modifier: dict[str, Any] | None = None
    # true: the quantizer prunes inside its own column sweep (pruner=onepass with quant=gptq_onepass).
    fused: bool = False


@dataclass
class QuantConfig:
    _target_: str = "jcexp.compress.Quantizer"
    name: str = MISSING
    bits: int = 16  # 16 means no quantization
    group_size: int | None = 128  # null: one scale per output channel
    symmetric: bool = True
    # GPTQ after pruning (quant.case, GPTQ_CASES): "A", "B" (the paper's tool, the default) or "joint". It
    # means nothing without pruning or for other quantizers: null there, everywhere (effective_case).
    case: str | None = None
    # GPTQ's activation ordering (quant.actorder, ACTORDERS): null (the paper's tool's default; conf/quant/gptq.yaml
    # cites llm-compressor 0.4.x/0.5.0), "static" / "weight" (one ordering, two names) or "group" (refused: removed
    # from this compressed-tensors). Means nothing for other quantizers: null there.
    actorder: str | None = None
    modifier: dict[str, Any] | None = None


@dataclass
class CalibrationConfig:
    _target_: str = MISSING
    name: str = MISSING
    num_samples: int = 32
    seq_len: int = 256
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkConfig:
    name: str = MISSING
    # task -> "metric,filter" key of lm-eval's results: the tasks that make up Sr (higher is better).
    scores: dict[str, str] = field(default_factory=dict)
    # task -> key of a lower-is-better score (perplexity): reported with its own retention, kept out of Sr.
    perplexity: dict[str, str] = field(default_factory=dict)
    # task -> score of a random guesser, recorded next to each score (null where not meaningful).
    chance: dict[str, float | None] = field(default_factory=dict)
    include_paths: list[str] = field(default_factory=list)
    limit: float | None = None
    num_fewshot: int | None = None
    batch_size: Any = 8  # int, or "auto" / "auto:N" (lm-eval picks the largest that fits on GPU)
    max_length: int | None = None
    gen_kwargs: dict[str, Any] = field(default_factory=dict)
    # task or group -> generation kwargs (max_gen_toks, until, ...) for each of its generate_until leaf tasks;
    # wins over gen_kwargs, which applies to all of them.
    generation: dict[str, dict[str, Any]] = field(default_factory=dict)
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False
    # Sequential evaluation (jcexp/sequential.py): score items in a seeded order, ci_chunk per leaf task per
    # round, until Sr's 95% interval has half-width <= ci_target or the items run out. null: score them all.
    ci_target: float | None = None
    ci_chunk: int = 64
    # Floors before a sequential run may stop (jcexp/anytime.py): items per task (or all a task has), and items
    # on which the dense and the compressed model disagree, over all tasks.
    ci_min_items: int = 64
    ci_min_discordant: int = 10
    # Exactly this many rounds, no stop rule: the budget race's jobs (jcexp/race.py), which the race's sweeper
    # stops instead. Rounds a candidate already scored are read back from its item store, never re-scored.
    ci_rounds: int | None = None


@dataclass
class EvaluatorConfig:
    _target_: str = MISSING  # jcexp.evaluate.InProcessEvaluator or SubprocessEvaluator
    name: str = MISSING
    backend: str = "hf"  # lm-eval's model type (`lm_eval --model`)
    python: str | None = None  # subprocess evaluators: the interpreter to run; null: this one
    # lm-eval's model_args for the backend; jcexp sets pretrained (the checkpoint).
    model_args: dict[str, Any] = field(default_factory=dict)
    batch_size: Any = None  # null: benchmark.batch_size
    # Quantizers and bit widths whose packed compressed-tensors checkpoint the backend loads; others: dense.
    packed_quantizers: list[str] = field(default_factory=list)
    packed_bits: list[int] = field(default_factory=list)
    # Requests handed to the backend per call; lm-eval's response cache is committed after each, so a killed
    # (requeued) evaluation re-asks only what no chunk answered. null: all at once. Not in the config hash.
    request_chunk: int | None = None
    # lm-eval's hf backend: loglikelihood requests through jcexp.hf_floor.FloorHFLM (each distinct context run
    # once, the head at scored positions only) or, false, stock HFLM. The same answers (tests/test_eval_floor.py):
    # not in the config hash. Other backends ignore it.
    floor: bool = True


@dataclass
class LoggerConfig:
    _target_: str = MISSING
    name: str = MISSING
    project: str = "jcexp"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    dir: str = "."


@dataclass
class PathsConfig:
    root: str = MISSING  # everything jcexp writes lives under this directory
    cache_dir: str = MISSING  # converted models, baselines, pruned-model cache


@dataclass
class ErrorAnalysisConfig:
    enabled: bool = False  # per-layer ||WX - W^X||^2 after each stage (jcexp/errors.py)
    samples: int = 4  # calibration windows run through the dense model to record each layer's inputs
    tokens: int = 256  # token rows kept per layer (memory: tokens x (in + out) float32 per Linear)
    case_ratio: bool = False  # also run the other GPTQ case on the same pruned model: E_A / E_B (eq. 7)


@dataclass
class ResourcesConfig:
    """The resource preflight: estimated peak host RAM, GPU memory and disk (jcexp/memory.py), checked
    against the node before any weight is read."""

    enforce: bool = True  # false: log what does not fit and run anyway
    host_ram_gb: float | None = None  # what the run may use; null: what the node (or cgroup) has available
    gpu_mem_gb: float | None = None  # null: what the GPU has free at preflight (device=cuda)
    headroom: float = 0.1  # the estimate must fit with this share to spare


@dataclass
class BudgetSpace:
    """The recipes a budget race may try: the cross product of these, kept where its TCr (or bits per weight)
    lies in the band and its config passes every check (jcexp/race.py, hydra_plugins/jcexp_budget)."""

    pruners: list[str] = field(default_factory=lambda: ["sparsegpt"])  # conf/pruner choices
    sparsity: list[float] = field(default_factory=lambda: [0.0, 12.5, 25.0, 33.333, 50.0, 62.5, 75.0])
    masks: list[str] = field(default_factory=lambda: ["2:4", "1:4", "2:8", "1:3", "2:6"])  # N:M
    nm_layouts: list[str] = field(default_factory=lambda: ["exact"])
    quantizers: list[str] = field(default_factory=lambda: ["gptq", "rtn", "nf4", "llm_int8"])  # conf/quant
    bits: list[int] = field(default_factory=lambda: [2, 3, 4, 8, 16])
    group_sizes: list[Any] = field(default_factory=lambda: [None])  # None: the model's model.group_size
    cases: list[str] = field(default_factory=lambda: ["B"])  # GPTQ after pruning (quant.case)
    onepass: bool = True  # also variant=onepass for every pruned + GPTQ recipe


@dataclass
class BudgetConfig:
    tcr: float | None = None  # target TCr (a fraction, eq. 1), or
    bits_per_weight: float | None = None  # target bits per weight (values, scales, zero points, mask)
    tolerance: float | None = None  # the band: ±this around the target; null: 0.02 TCr or 0.25 bits
    margin: float | None = None  # equivalence margin of the race's stop; null: equivalence_margin
    level: float = 0.95  # family-wise: over every candidate, pair and round
    space: BudgetSpace = field(default_factory=BudgetSpace)


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    pruner: PrunerConfig = MISSING
    quant: QuantConfig = MISSING
    calibration: CalibrationConfig = MISSING
    benchmark: BenchmarkConfig = MISSING
    evaluator: EvaluatorConfig = MISSING
    logger: LoggerConfig = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch intra-op threads; null keeps torch's default
    save_model: bool = True  # write the compressed checkpoint (bytes on disk are measured from it)
    cache_pruned: bool = (
        True  # keep each pruned model so every bit width reuses it (prune once, quantize many)
    )
    run_name: str = "default"
    tags: list[str] = field(default_factory=list)
    # Two runs are "equivalent" only when the 95% interval of their Sr difference lies inside ±this
    # (jcexp/verdicts.py); it changes what is concluded, not what is computed (not in the config hash).
    equivalence_margin: float = 0.05
    errors: ErrorAnalysisConfig = field(default_factory=ErrorAnalysisConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    # The budget race's settings (experiment=budget, hydra/sweeper=jcexp_budget); read by the sweeper only.
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig())


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="jcexp_schema", node=RunConfig)


# ---------------------------------------------------------------------- meaning: what a config computes
def parse_mask(mask: str | None) -> tuple[int, int] | None:
    """'2:8' -> (2, 8): N pruned of every M. None for unstructured. Raises ConfigError when malformed."""
    if mask is None or str(mask).strip().lower() in ("", "none", "null", "0:0"):
        return None
    match = _NM.match(str(mask))
    if not match:
        raise ConfigError(f"pruner.mask={mask!r} is not of the form 'N:M' with integers N and M")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ConfigError(f"pruner.mask={mask!r} needs 0 < N < M (N pruned of every M), got N={n}, M={m}")
    return n, m


def prunes(modifier: Any, sparsity: float, nm: tuple[int, int] | None) -> bool:
    """The one rule for a pruner that does something: a modifier, and a sparsity or an N:M mask. Shared by the
    stage (jcexp.compress.Pruner) and the config hash (pruner_active), which sees only the config."""
    return modifier is not None and (float(sparsity or 0) > 0 or nm is not None)


def quantizes(modifier: Any, bits: int) -> bool:
    """The one rule for a quantizer that does something: a modifier, below 16 bits."""
    return modifier is not None and int(bits) < 16


# The three ways GPTQ can treat the weights pruning removed (README, "GPTQ after pruning"):
#   A:     llm-compressor 0.14's GPTQ as it stands; its updates also land on pruned positions (the paper's Case A,
#          eqs. 4-5: what its text adopts, III-B.2).
#   B:     llm-compressor <= 0.12's GPTQ, which the paper's tool ran: errors from kept weights only, updates from
#          the full inverse Hessian masked to the kept weights, pruned weights stay exactly 0 (the paper's Case B,
#          eqs. 4 and 6, but with H^-1 masked in place of eq. 6's H_M^-1: jcexp/compress/case_b.py).
#   joint: SparseGPT's joint mode: pruned positions collect compensation, then pass (w - 0)/d on.
GPTQ_CASES = {
    "A": "llmcompressor.modifiers.quantization.GPTQModifier",
    "B": "jcexp.compress.case_b.CaseBGPTQModifier",
    "joint": "jcexp.compress.joint_mode.JointModeGPTQModifier",
}

# quant.actorder's values (GPTQ's column order). "static" and "weight" are one ordering in compressed-tensors
# (an alias). "group" (groups formed in the permuted order, a g_idx at inference) was llm-compressor 0.4's third
# choice; the compressed-tensors that llm-compressor 0.14 needs refuses it, so check_values names that.
ACTORDERS = (None, "static", "weight", "group")


def pruning_requested(sparsity: Any, mask: Any) -> bool:
    """What a pruner node asks for, read from its values alone (the stage adds: and has a modifier)."""
    try:
        nm = parse_mask(mask)
    except ConfigError:
        return True
    return float(sparsity or 0) > 0 or nm is not None


def effective_case(case: str | None, pruning: bool) -> str | None:
    """quant.case as it acts: the case when something is pruned, else None (every case is stock GPTQ then).
    The one spelling that the modifier choice, the stage, the config hash and result.json share."""
    return case if pruning and case is not None else None


def pruner_active(pruner: dict[str, Any]) -> bool:
    """A resolved pruner node that prunes: as jcexp.compress.Pruner (the same rule, ``prunes``), or fused into
    the quantizer's sweep."""
    if pruner.get("fused"):
        return True
    try:
        nm = parse_mask(pruner.get("mask"))
    except ConfigError:  # refused by check_values; hashed as written
        return pruner.get("modifier") is not None
    return prunes(pruner.get("modifier"), pruner.get("sparsity") or 0, nm)


def quant_active(quant: dict[str, Any]) -> bool:
    """A resolved quantizer node that quantizes: as jcexp.compress.Quantizer (the same rule, ``quantizes``)."""
    return quantizes(quant.get("modifier"), quant.get("bits", 16))


def _masked(pruner: dict[str, Any]) -> bool:
    """The pruner node names an N:M mask (a malformed one counts: check_values refuses it)."""
    try:
        return parse_mask(pruner.get("mask")) is not None
    except ConfigError:
        return True


# Keys that name or place a run, or check it before it starts, but do not change what it computes.
NOT_IN_HASH = (
    "paths",
    "logger",
    "run_name",
    "tags",
    "threads",
    "hydra",
    "cache_pruned",
    "resources",
    "equivalence_margin",
    "budget",
)
# benchmark keys that say how many items a sequential run scores (jcexp/sequential.py), not what an item's
# score is.
SEQUENTIAL_KEYS = ("ci_target", "ci_chunk", "ci_min_items", "ci_min_discordant", "ci_rounds")


def sequential_on(bench: Any) -> bool:
    """Items are scored in seeded rounds (jcexp/sequential.py): with a stop target, or a fixed number of rounds."""
    return bench.get("ci_target") is not None or bench.get("ci_rounds") is not None


# What an inactive stage contributes to the hash: exactly what `pruner=none` / `quant=none` compose to, so that
# every way of saying "this stage does nothing" is one experiment with one hash, and results of the `none`
# choices keep the hash they had before this canonical form existed (tests/test_experiments.py checks both).
NO_PRUNER = {
    "_target_": "jcexp.compress.Pruner",
    "name": "none",
    "sparsity": 0.0,
    "mask": None,
    "modifier": None,
    "fused": False,
}
NO_QUANT = {
    "_target_": "jcexp.compress.Quantizer",
    "name": "none",
    "bits": 16,
    "group_size": None,
    "symmetric": True,
    "case": None,
    "actorder": None,
    "modifier": None,
}

# jcexp's own GPTQ sweeps (jcexp/compress/): bumped when the algorithm changes, so that results of the earlier
# one are recomputed rather than reused. 2: Case B propagates the error of pruned weights (SparseGPT's joint
# mode) and one-pass picks each N:M group's mask when its sweep reaches it (issue 11).
# 1 for Case B as llm-compressor <= 0.12 ran it (quant.case=B, issue 18); 3 for the joint mode, whose groups
# now follow static act-order as stock GPTQ's do (issue 18).
# Issue 27: 2 / 4 / 3: quant.actorder defaults to null (results of the static-ordering default are not reused) and
# calibration windows start as the tokenizer starts a text (one BOS where it adds one).
SWEEP_REVISIONS = {
    "jcexp.compress.case_b.CaseBGPTQModifier": 2,
    "jcexp.compress.joint_mode.JointModeGPTQModifier": 4,
    "jcexp.compress.one_pass.OnePassSparseGPTQModifier": 3,
}
# How text meets the model (issue 27): 2 since rolling perplexity scores one BOS where the tokenizer adds one (lm-eval
# 0.4.13 scored two, jcexp/lm_eval_worker.py: OneBos) and calibration windows start with it (jcexp/data.py). The
# config does not say which tokenizer adds a BOS (Gemma 3's, Llama 3's and Mistral's do, SmolLM2's does not), so
# every result is recomputed once rather than one scored with a doubled BOS reused.
TEXT_REVISION = 2


def effective_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """What the config hash covers (jcexp.results.config_hash): the resolved config, less what does not change
    the computation.

    Equal experiments hash equal: `quant=none` and `quant.bits=16` (no quantization either way), `pruner=none`
    and `pruner.sparsity=0` (no mask) are the same run, and so is any calibration setting of a run that
    compresses nothing. This canonical form changed the hash of stored results whose pruner or quantizer was
    inactive without being `none` (e.g. `quant.bits=16` points), of runs that compress nothing, and of NF4 runs
    (their backend is now resolved, conf/quant/nf4.yaml): those are recomputed once, not reused."""
    out = {k: v for k, v in cfg.items() if k not in NOT_IN_HASH}
    # evaluator.request_chunk says what a killed evaluation keeps (its response cache), not what is computed.
    if isinstance(out.get("evaluator"), dict):
        # evaluator.floor: how the hf backend computes the same loglikelihoods (jcexp/hf_floor.py).
        out["evaluator"] = {k: v for k, v in out["evaluator"].items() if k not in ("request_chunk", "floor")}
    # The opt-in error analysis adds measurements, not a different model: while it is off, results keep the
    # hash they had before it existed, so stored results stay reusable.
    if not (out.get("errors") or {}).get("enabled"):
        out.pop("errors", None)
    # Sequential evaluation off (benchmark.ci_target unset) is the full suite every earlier result ran: those
    # keep their hash (jcexp/sequential.py).
    bench = out.get("benchmark")
    if isinstance(bench, dict) and not sequential_on(bench):
        out["benchmark"] = {k: v for k, v in bench.items() if k not in SEQUENTIAL_KEYS}
    pruning = "pruner" in out and pruner_active(out["pruner"])
    quantizing = "quant" in out and quant_active(out["quant"])
    if "pruner" in out and (
        not pruning or out["pruner"].get("nm_layout") == "exact" or not _masked(out["pruner"])
    ):
        # The layout changes nothing without a mask, and "exact" is what every earlier mask ran with: those
        # results keep their hash (pruner.nm_layout, jcexp/nm.py).
        out["pruner"] = {k: v for k, v in out["pruner"].items() if k != "nm_layout"}
    if "quant" in out:
        # quant.case means nothing without pruning (stock GPTQ runs): one spelling, None (effective_case).
        out["quant"] = {**out["quant"], "case": effective_case(out["quant"].get("case"), pruning)}
    if "quant" in out and quant_active(out["quant"]):
        target = (out["quant"].get("modifier") or {}).get("_target_")
        if target in SWEEP_REVISIONS:
            out["quant"] = {**out["quant"], "sweep_revision": SWEEP_REVISIONS[target]}
    if "pruner" in out and not pruning:
        out["pruner"] = dict(NO_PRUNER)
    if "quant" in out and not quantizing:
        out["quant"] = dict(NO_QUANT)
    # No stage runs: calibration data is never built (the scores are the dense model's). Error analysis reads
    # calibration windows, so with it on they stay.
    if "pruner" in out and "quant" in out and not (pruning or quantizing or "errors" in out):
        out.pop("calibration", None)
    out["text_revision"] = TEXT_REVISION
    return out


# -------------------------------------------------------------------------------------------- resolvers
def _mask_sparsity(mask: str | None, default: float) -> float:
    # Resolvers must not raise (the error would surface as an opaque interpolation failure):
    # a malformed mask falls back here and check_values names it.
    try:
        nm = parse_mask(mask)
    except ConfigError:
        return float(default)
    return float(default) if nm is None else round(100.0 * nm[0] / nm[1], 3)


def _mask_structure(mask: str | None) -> str:
    try:
        nm = parse_mask(mask)
    except ConfigError:
        return str(mask)
    return "0:0" if nm is None else f"{nm[0]}:{nm[1]}"


def _nm_block_size(mask: str | None, block: int, layout: str = "exact") -> int:
    """SparseGPT restarts N:M groups at every block boundary: the block that gives the layout (jcexp/nm.py)."""
    from jcexp import nm as nm_layout

    try:
        nm = parse_mask(mask)
    except ConfigError:
        return int(block)
    return nm_layout.block_size(nm and nm[1], str(layout), int(block))


def _percent_to_fraction(value: float) -> float:
    return float(value) / 100.0


def _weight_strategy(group_size: int | None) -> str:
    return "channel" if group_size is None else "group"


def _run_uid() -> str:
    # One id per launch, inherited by submitit/SLURM workers through the environment, so that two launches
    # in the same second never share a run or sweep directory (hydra #1607).
    return os.environ.setdefault("JCEXP_UID", secrets.token_hex(3))


def _abspath(path: str) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def _override_name(default: str = "default") -> str:
    """The job's command-line overrides as a name (Hydra's override_dirname); ``default`` outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().job.override_dirname or default
    except ValueError:  # composed without Hydra's runtime (tests, the compose API)
        return default


def _sweep_group() -> str | None:
    """The W&B group of a sweep: its directory, date and time and uid (unique per launch). None for one run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    sweep_dir = Path(str(hc.sweep.dir))
    return f"{sweep_dir.parent.name}_{sweep_dir.name}"


def _gptq_modifier(case: str | None, sparsity: Any = 0, mask: Any = None) -> str:
    """The GPTQ modifier class for quant.case; stock GPTQ when nothing is pruned. A resolver must not raise:
    an unknown case falls back to stock here and check_values names it."""
    chosen = effective_case(case, pruning_requested(sparsity, mask))
    return GPTQ_CASES.get(chosen or "A", GPTQ_CASES["A"])


def _nf4_backend(requested: str = "auto") -> str:
    """The NF4 backend that will run, so that the config, its hash and result.json name it: ``auto`` becomes
    bitsandbytes when the package is installed and a CUDA GPU is visible, else torch (the same test as
    jcexp.compress.simple_quant, which still accepts auto itself). torch is imported only if bitsandbytes is."""
    if str(requested) != "auto":
        return str(requested)
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return "torch"
    import torch

    return "bitsandbytes" if torch.cuda.is_available() else "torch"


def register_resolvers() -> None:
    resolvers = {
        "jc.uid": _run_uid,
        "jc.abspath": _abspath,
        "jc.override_name": _override_name,
        "jc.sweep_group": _sweep_group,
        "jc.gptq_modifier": _gptq_modifier,
        "jc.mask_sparsity": _mask_sparsity,
        "jc.mask_structure": _mask_structure,
        "jc.nm_block_size": _nm_block_size,
        "jc.frac": _percent_to_fraction,
        "jc.weight_strategy": _weight_strategy,
        "jc.nf4_backend": _nf4_backend,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_configs()
register_resolvers()


# ------------------------------------------------------------------------------------------ validation
def check_values(cfg: DictConfig) -> None:
    """Range and consistency checks on a composed config. Raises ConfigError with the key to fix."""
    errors: list[str] = []
    p, q = cfg.pruner, cfg.quant

    if not 0 <= p.sparsity < 100:
        errors.append(f"pruner.sparsity={p.sparsity} is outside [0, 100) (it is a percentage)")
    nm = None
    try:
        nm = parse_mask(p.mask)
    except ConfigError as exc:
        errors.append(str(exc))
    if nm is not None:
        implied = 100.0 * nm[0] / nm[1]
        # Explicit sparsity that disagrees with the mask: the mask wins in llm-compressor, so say so up front.
        if p.sparsity not in (0,) and not math.isclose(p.sparsity, implied, abs_tol=0.05):
            errors.append(
                f"pruner.sparsity={p.sparsity} disagrees with pruner.mask={p.mask} "
                f"({nm[0]} pruned of every {nm[1]} = {implied:.3f}%); drop one of them"
            )
        if p.modifier is None and not p.get("fused", False):
            errors.append(f"pruner.mask={p.mask} needs a pruner (pruner={p.name} prunes nothing)")
    layout = p.get("nm_layout", "exact")
    if layout not in ("exact", "paper"):
        errors.append(f"pruner.nm_layout={layout!r} is not one of 'exact', 'paper' (see jcexp/nm.py)")

    if q.bits not in SUPPORTED_BITS:
        errors.append(f"quant.bits={q.bits} is not supported; choose one of {list(SUPPORTED_BITS)}")
    case = q.get("case")
    gptq = q.modifier is not None and q.modifier.get("_target_") in GPTQ_CASES.values()
    if case is not None and case not in GPTQ_CASES:
        errors.append(
            f"quant.case={case!r} is not one of {list(GPTQ_CASES)} (see README, GPTQ after pruning)"
        )

    if q.group_size is not None and q.group_size <= 0:
        errors.append(f"quant.group_size={q.group_size} must be positive (or null for per-channel)")
    errors += actorder_errors(q)

    c = cfg.calibration
    if c.num_samples <= 0:
        errors.append(f"calibration.num_samples={c.num_samples} must be positive")
    if c.seq_len <= 0:
        errors.append(f"calibration.seq_len={c.seq_len} must be positive")

    b = cfg.benchmark
    if not b.scores and not b.perplexity:
        errors.append(
            f"benchmark={b.name} lists no task (benchmark.scores and benchmark.perplexity are empty)"
        )
    if b.limit is not None and b.limit <= 0:
        errors.append(f"benchmark.limit={b.limit} must be positive (a count, or a fraction < 1)")
    if not re.fullmatch(r"[1-9]\d*|auto(:\d+)?", str(b.batch_size)):
        errors.append(f"benchmark.batch_size={b.batch_size} must be a positive integer, 'auto' or 'auto:N'")
    target = b.get("ci_target")
    rounds = b.get("ci_rounds")
    if rounds is not None and rounds < 1:
        errors.append(f"benchmark.ci_rounds={rounds} must be at least 1 (rounds of ci_chunk items per task)")
    if sequential_on(b):
        if target is not None and not 0 < target < 1:
            errors.append(
                f"benchmark.ci_target={target} must be in (0, 1): a half-width of Sr's 95% interval"
            )
        if b.get("ci_chunk", 64) <= 0:
            errors.append(f"benchmark.ci_chunk={b.ci_chunk} must be positive (items per task per round)")
        for floor in ("ci_min_items", "ci_min_discordant"):
            if b.get(floor, 0) < 0:
                errors.append(f"benchmark.{floor}={b[floor]} must be at least 0")
        if b.limit is not None:
            errors.append(
                f"sequential evaluation (benchmark.ci_target={target}, ci_rounds={rounds}) with "
                f"benchmark.limit={b.limit}: it picks its "
                "own items (a seeded order over all of them) and lm-eval takes a limit or chosen items, not "
                "both; set benchmark.limit=null"
            )
        if not b.scores:
            errors.append(
                f"sequential evaluation (benchmark.ci_target={target}, ci_rounds={rounds}) needs scored tasks "
                "(benchmark.scores): it bounds Sr"
            )

    if not 0 < cfg.get("equivalence_margin", 0.05) < 1:
        errors.append(
            f"equivalence_margin={cfg.equivalence_margin} must be in (0, 1): a difference in Sr, 0.05 = 5 points"
        )
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(cfg.device)):
        errors.append(f"device={cfg.device!r} must be auto, cpu, cuda or cuda:N")
    if cfg.threads is not None and cfg.threads <= 0:
        errors.append(f"threads={cfg.threads} must be positive")

    e = cfg.errors
    if e.enabled:
        if not 1 <= e.samples <= c.num_samples:
            errors.append(
                f"errors.samples={e.samples} must be in [1, calibration.num_samples={c.num_samples}]"
            )
        if e.tokens <= 0:
            errors.append(f"errors.tokens={e.tokens} must be positive")
    if e.case_ratio and not e.enabled:
        errors.append("errors.case_ratio=true needs errors.enabled=true")
    if e.case_ratio and not gptq:
        errors.append(
            f"errors.case_ratio=true compares GPTQ's Case A and Case B; quant={q.name} has no cases"
        )
    elif e.case_ratio and case not in ("A", "B"):
        errors.append(f"errors.case_ratio=true compares Case A and Case B; quant.case={case} is neither")

    if e.case_ratio and q.bits >= 16:
        errors.append("errors.case_ratio=true needs quantization (quant.bits < 16)")

    errors += unknown_key_errors(cfg)
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))


def unknown_key_errors(cfg: DictConfig) -> list[str]:
    """Keys the schema does not know. Hydra's struct mode refuses `key=v` typos, but `+key=v` force-adds them
    (its documented meaning), so `+sead=1` would otherwise be silently ignored."""
    import dataclasses
    import difflib
    import typing

    def walk(schema: type, node: Any, prefix: str) -> list[str]:
        hints = typing.get_type_hints(schema)
        bad = []
        for key in node:
            if key == "hydra" and not prefix:
                continue
            if key not in hints:
                near = difflib.get_close_matches(str(key), list(hints), n=1)
                hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
                bad.append(f"unknown key(s) ['{prefix}{key}']{hint}")
            elif dataclasses.is_dataclass(hints[key]) and isinstance(node[key], DictConfig):
                bad += walk(hints[key], node[key], f"{prefix}{key}.")
        return bad

    return walk(RunConfig, cfg, "")


def actorder_errors(q: Any) -> list[str]:
    """quant.actorder's checks, before any compute: a known value, one this stack runs, a quantizer that takes it
    (GPTQ's modifier carries it as modifier.actorder), and no override of the modifier that says otherwise."""
    actorder = q.get("actorder")
    modifier = q.get("modifier")
    if actorder not in ACTORDERS:
        return [f"quant.actorder={actorder!r} is not one of {list(ACTORDERS)} (null: no activation ordering)"]
    if actorder == "group":
        return [
            "quant.actorder=group (llm-compressor 0.4's GROUP ordering) was removed from compressed-tensors, which "
            "llm-compressor 0.14 needs (QuantizationArgs refuses it); use quant.actorder=static or null"
        ]
    takes = modifier is not None and "actorder" in modifier
    target = str((modifier or {}).get("_target_", ""))
    if actorder is not None and target.endswith("OnePassSparseGPTQModifier"):
        return [
            f"quant.actorder={actorder}: one-pass joint compression sweeps the columns in their own order "
            "(activation ordering would scatter N:M groups); set quant.actorder=null"
        ]
    if actorder is not None and not takes:
        return [f"quant.actorder={actorder} applies to GPTQ only (quant={q.get('name')} has no column order)"]
    if takes and modifier["actorder"] != actorder:
        return [
            f"quant.modifier.actorder={modifier['actorder']!r} disagrees with quant.actorder={actorder!r}: "
            "set quant.actorder (what the record and the hash name), not the modifier's"
        ]
    return []


def group_size_errors(group_size: int | None, in_features: dict[str, int]) -> list[str]:
    """Layers whose input width the quantization group size does not divide (GPTQ refuses them mid-run)."""
    if group_size is None or not in_features:
        return []
    bad = sorted({w for w in in_features.values() if w % group_size})
    if not bad:
        return []
    example = next(n for n, w in in_features.items() if w == bad[0])
    common = math.gcd(*in_features.values())
    fits = common & -common  # largest power of two dividing every width
    return [
        f"quant.group_size={group_size} does not divide the input width {bad} of layers such as {example}; "
        f"a group size dividing every layer is {fits} (set quant.group_size or model.group_size)"
    ]
