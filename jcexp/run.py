"""The run: config -> model -> stages (prune, quantize) -> scores -> result.json -> tracking.

``run`` is the whole flow on one screen: the plan (jcexp/plan.py: every check before a weight is read), the
stages with the observers around them (jcexp/observers.py), scoring (jcexp/scoring.py) and the record
(jcexp/record.py). This module also runs a stage (``run_stage``, the pruned-model cache) and saves the
compressed checkpoint (``save_model``, and the checkpoint a subprocess evaluator reads). What is computed once
and reused lives in jcexp/cache.py. A finished result is never recomputed: a rerun with the same effective config
(by hash) returns the stored result.json. Imports the plan, scoring and the record; nothing imports this module
but the entry points.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from jcexp import checkpoints, measure, memory, placement, preflight, record, scoring
from jcexp.cache import KeyedCache
from jcexp.compress import apply_stage, compression_device, seed_everything
from jcexp.config import ConfigError
from jcexp.data import windows_fingerprint
from jcexp.models import ModelSource, checkpoint_problem
from jcexp.observers import RunState, default_observers
from jcexp.plan import Plan, library_versions
from jcexp.results import (
    RESULT_FILE,
    atomic_write_json,
    complete_result,
    config_hash,
    indexed_result,
    read_json,
    reuse_result,
)

log = logging.getLogger("jcexp")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one configured compression + evaluation and return the result record (also in result.json)."""
    plan = Plan(cfg)  # every config, model, task and shape check: before any weights are read
    out = run_dir(cfg, plan.hash)
    _check_writable(out)
    _check_writable(Path(cfg.paths.cache_dir))
    done = complete_result(out / RESULT_FILE, plan.hash) or indexed_result(cfg.paths.cache_dir, plan.hash)
    if done and "retention" not in done:  # written before distribution-level retention: computed once more
        log.info("result for config %s has no KL/flips (retention): computing it again", plan.hash)
        done = None
    if done:
        log.info("result for config %s was computed in %s: reusing it", plan.hash, done["run_dir"])
        return done if done["run_dir"] == str(out) else reuse_result(done, out)
    resources = memory.estimate_for(plan)  # host RAM, GPU memory, disk: refused here if they cannot fit
    log.info(memory.summary(resources))
    preflight.check(resources, cfg, out)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    timings: dict[str, Any] = {}
    with measure.timed(timings, "load"):
        model, tokenizer = plan.source.load()
    calibration = None
    if plan.stages:  # built first: too little calibration text fails here, before the dense evaluation
        with measure.timed(timings, "calibration_data"):
            calibration = plan.calibration.dataset(tokenizer)
    dense, baseline, dense_placement = scoring.dense_baseline(plan, model, tokenizer, timings)
    # The dense model's token distributions on the held-out prose (cached per baseline key): the KL's dense side.
    reference, reference_record = scoring.dense_distributions(plan, model, tokenizer, timings)

    state = RunState(plan, model, tokenizer, calibration, timings)
    kept = compressed_cache(plan, calibration)
    if kept is None or not kept.restore(state):
        compress(state)
        if kept is not None:
            kept.store(state)

    placed = {"evaluate": plan.device, "compress": compression_device() if plan.stages else None}
    placed["dense_eval"] = dense_placement

    def save() -> dict[str, Any]:
        if kept is not None and kept.restored:  # a reloaded dense copy would not pack again: the first save
            return kept.first_saved()
        saved = save_model(plan, state.model, state.tokenizer, out, timings)
        if kept is not None:
            kept.record_saved(saved)
        return saved

    # The compressed side of the KL, on the model in memory: before it is saved (a packed save rewrites its
    # weights) or handed to a subprocess evaluator (which scores a checkpoint and moves it off the device).
    per_document = scoring.divergence(plan, state, reference, timings)
    compressed, saved = dense, None  # nothing compressed: the dense scores are this run's scores
    if plan.stages:
        compressed, placed["compressed_eval"], saved = evaluate_compressed(
            plan, state, out, timings, save, kept
        )
    saved = saved or save()
    kl = (per_document, reference_record)
    result = record.build_record(plan, state, out, dense, compressed, baseline, placed, saved, resources, kl)
    return record.publish(plan, result, out, compressed.items, per_document)


def compress(state: RunState) -> None:
    """The stages, with the observers around them (timings, sparsity, errors)."""
    observers = default_observers(state.plan)
    for observer in observers:
        observer.start(state)
    for stage in state.plan.stages:
        for observer in observers:
            observer.before(stage, state)
        run_stage(stage, state)
        for observer in reversed(observers):
            observer.after(stage, state)
    for observer in observers:
        observer.finish(state)


class CompressedCache:
    """A compressed model kept for this config's later runs at more rounds (benchmark.ci_rounds, the budget
    race): its weights as a dense checkpoint (the quantized values are baked in, so it scores as the in-memory
    model does; jcexp/checkpoints.py), what the observers measured, and what its first run saved. A race
    therefore compresses each candidate once, however many rounds it survives."""

    STATE_FILE, SAVED_FILE = "state.json", "saved_model.json"

    def __init__(self, plan: Plan, key: dict[str, Any]):
        self.plan, self.key = plan, key
        self.cache = KeyedCache(Path(plan.cfg.paths.cache_dir) / "compressed")
        self.entry: Path | None = None
        self.restored = False

    def restore(self, state: RunState) -> bool:
        entry = self.cache.lookup(self.key, check=lambda e: checkpoint_problem(e / "model"))
        if entry is None:
            return False
        stored = read_json(entry / self.STATE_FILE) or {}
        with measure.timed(state.timings, "load_compressed"):
            state.model, state.tokenizer = ModelSource._load_dir(entry / "model", self.plan.source.dtype)
        state.measured, state.layer_errors = stored["measured"], stored.get("layer_errors") or {}
        state.prune_cache = stored.get("prune_cache")
        # The stages' own timings, as measured when they ran: a later round's result reports what the
        # compression cost, beside its own load_compressed.
        state.timings.update(
            {k: {**v, "from_cache": True} for k, v in stored["timings"].items() if k not in state.timings}
        )
        self.entry, self.restored = entry, True
        log.info("compressed model: reusing %s (compressed once, in an earlier round)", entry)
        return True

    def store(self, state: RunState) -> None:
        def build(tmp: Path) -> None:
            checkpoints.save(
                state.model, state.tokenizer, tmp / "model", "dense", self.plan.source.tokenizer_dir()
            )
            atomic_write_json(
                tmp / self.STATE_FILE,
                {
                    "measured": state.measured,
                    "layer_errors": state.layer_errors,
                    "prune_cache": state.prune_cache,
                    "timings": state.timings,
                },
            )

        self.entry = self.cache.put(self.key, build)

    def record_saved(self, saved: dict[str, Any]) -> None:
        assert self.entry is not None
        atomic_write_json(self.entry / self.SAVED_FILE, saved)

    def first_saved(self) -> dict[str, Any]:
        """What the run that compressed the model saved (its path, bytes and measured bits per weight)."""
        assert self.entry is not None
        first = read_json(self.entry / self.SAVED_FILE) or {"path": None, "bytes": None}
        return {**first, "reused_from": str(self.entry)}


def compressed_cache(plan: Plan, calibration) -> CompressedCache | None:
    """The compressed-model cache of a run scored in fixed rounds (benchmark.ci_rounds); None otherwise, and
    for a quantizer whose forward exists only in this process (LLM.int8(): its data-free stage is applied again
    on the cached pruned model, which is what such a run costs anyway)."""
    if plan.cfg.benchmark.get("ci_rounds") is None or not plan.stages:
        return None
    if plan.quant.active and plan.quant.declares("in_process_only"):
        return None
    resolved = {k: v for k, v in plan.resolved.items() if k not in ("benchmark", "evaluator")}
    key = {
        "model": plan.source.identity(),
        "compression": config_hash(resolved),
        "calibration_windows": windows_fingerprint(calibration) if calibration is not None else None,
        "device_type": compression_device().split(":")[0],
        "llmcompressor": library_versions()["llmcompressor"],
    }
    return CompressedCache(plan, key)


def run_dir(cfg: DictConfig, chash: str) -> Path:
    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except (
        ValueError,
        MissingMandatoryValue,
    ):  # composed outside @hydra.main (tests, notebooks): one directory per config
        return Path(cfg.paths.root) / "runs" / chash


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        # A unique probe: concurrent jobs share the cache dir, and one fixed name raced (one unlinked the other's).
        with tempfile.NamedTemporaryFile(dir=path, prefix=".jcexp-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"output directory {path} is not writable: {exc}") from exc


# ------------------------------------------------------------------------------------------------ stages
def _prune_key(plan: Plan, calibration) -> dict[str, Any]:
    return {
        "model": plan.source.identity(),
        "pruner": plan.resolved["pruner"],
        "calibration": plan.resolved["calibration"],
        "calibration_windows": windows_fingerprint(calibration),
        "seed": plan.cfg.seed,
        "llmcompressor": library_versions()["llmcompressor"],
    }


def run_stage(stage, run: RunState) -> None:
    """Apply one stage to run.model. Pruning is computed once per (model, pruner, calibration windows, seed,
    llm-compressor) and kept, so a grid of S sparsities x Q bit widths runs SparseGPT S times, not S x Q."""
    plan = run.plan
    if stage.kind != "prune" or not plan.cfg.cache_pruned:
        apply_stage(stage, run.model, run.tokenizer, run.calibration, plan.cfg.seed)
        return

    def build(tmp: Path) -> None:
        apply_stage(stage, run.model, run.tokenizer, run.calibration, plan.cfg.seed)
        run.model.save_pretrained(tmp, save_compressed=False)
        checkpoints.save_tokenizer(run.tokenizer, tmp, plan.source.tokenizer_dir())
        # llm-compressor's save_pretrained converts to accelerate offloading and back: the model comes out
        # wrapped in offload caches again.
        placement.release(run.model)

    cache = KeyedCache(Path(plan.cfg.paths.cache_dir) / "pruned")
    entry, reused = cache.get_or_build(_prune_key(plan, run.calibration), build, check=checkpoint_problem)
    if reused:
        log.info("pruned model: reusing %s", entry)
        run.model, run.tokenizer = ModelSource._load_dir(entry, plan.source.dtype)
    run.prune_cache = {"path": str(entry), "reused": reused}


# ------------------------------------------------------------------------------------ checkpoints, scores
def evaluate_compressed(
    plan: Plan,
    state: RunState,
    out: Path,
    timings: dict[str, Any],
    save: Callable[[], dict[str, Any]],
    kept: CompressedCache | None = None,
):
    """The compressed model's scores, its placement record and its saved checkpoint (``save``). A subprocess
    evaluator reads a checkpoint in the format its backend loads (vLLM: packed int4/int8, else dense): the saved
    model when that is the format, else a temporary dense copy written first (a packed save compresses the
    model in place), removed after the evaluation. A model restored from the compressed cache is read from
    there (dense) or from its first run's saved checkpoint."""
    ev = plan.evaluator
    if not ev.needs_checkpoint:
        scores, placed = scoring.score_compressed(plan, state, timings)
        return scores, placed, save()
    fmt = ev.checkpoint_format(plan.quant.name, plan.quant.bits if plan.quant.active else 16)
    if kept is not None and kept.restored:
        saved = save()
        checkpoint = kept.entry / "model" if fmt == "dense" else saved["path"]
        if checkpoint is None:
            raise RuntimeError(f"no {fmt} checkpoint of the cached compressed model for evaluator={ev.name}")
        scores, placed = scoring.score_compressed(plan, state, timings, checkpoint)
        return scores, {**placed, "checkpoint_format": fmt}, saved
    temporary = None
    if not (plan.cfg.save_model and fmt == _saved_format(plan)):
        with measure.timed(timings, "save_for_eval"):
            temporary = checkpoints.save(
                state.model, state.tokenizer, out / "eval_checkpoint", fmt, plan.source.tokenizer_dir()
            )
    saved = save()
    checkpoint = temporary or saved["path"]
    if checkpoint is None:  # the save failed; its error is in `saved`
        raise RuntimeError(f"no checkpoint for evaluator={ev.name}: {saved.get('error')}")
    scores, placed = scoring.score_compressed(plan, state, timings, checkpoint)
    placed["checkpoint_format"] = fmt
    if fmt == "dense" and plan.quant.active:
        placed["note"] = (
            f"evaluated from dense weights: {ev.name} loads no packed {plan.quant.bits}-bit {plan.quant.name}"
        )
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
    return scores, placed, saved


def _saved_format(plan: Plan) -> str:
    """What save_model writes: packed where llm-compressor quantized, plain otherwise (NF4/int8 are simulated)."""
    return "compressed-tensors" if plan.quant.active and not plan.quant.data_free else "dense"


def save_model(plan: Plan, model, tokenizer, out: Path, timings: dict[str, Any]) -> dict[str, Any]:
    """The compressed checkpoint, packed by compressed-tensors where llm-compressor quantized it (NF4/int8 are
    simulated here: saved dense). Bytes on disk and stored bits per weight are measured from it. A failed
    save is recorded and never loses the scores already computed."""
    if not plan.cfg.save_model:
        return {"path": None, "bytes": None}
    fmt = _saved_format(plan)
    # Counted before saving: save_pretrained(save_compressed=True) swaps each Linear's weight for packed tensors.
    weight_counts = {n: m.weight.numel() for n, m in measure.compressible_linears(model).items()}
    path = out / "model"
    try:
        with measure.timed(timings, "save"):
            checkpoints.save(model, tokenizer, path, fmt, plan.source.tokenizer_dir())
    except Exception as exc:  # noqa: BLE001 - a failed save must not lose the scores already computed
        log.error("saving the compressed model failed: %s", exc)
        shutil.rmtree(path, ignore_errors=True)
        return {"path": None, "bytes": None, "error": f"{type(exc).__name__}: {exc}"}
    return {
        "path": str(path),
        "bytes": measure.dir_bytes(path),
        "format": fmt,
        **measure.stored_bits(path, weight_counts),
    }
