"""One run: config -> model -> prune -> quantize -> evaluate -> metrics -> result.json -> tracking.

Every check that can fail on bad input runs before the model's weights are read. A finished result is
never recomputed: a rerun with the same effective config (by hash) returns the stored result.json.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from jcexp import errors, metrics, placement
from jcexp.config import ConfigError, check_values
from jcexp.results import (
    RESULT_FILE,
    SCHEMA_VERSION,
    atomic_write_json,
    complete_result,
    config_hash,
    file_lock,
    index_path,
    read_json,
    reuse_result,
)

log = logging.getLogger("jcexp")

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
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in VERSIONED:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def run_dir(cfg: DictConfig, chash: str) -> Path:
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except (
        ValueError,
        MissingMandatoryValue,
    ):  # composed outside @hydra.main (tests, notebooks): one directory per config
        return Path(cfg.paths.root) / "runs" / chash


def _check_writable(path: Path) -> None:
    import tempfile

    try:
        path.mkdir(parents=True, exist_ok=True)
        # A unique probe: concurrent jobs share the cache dir, and one fixed name raced (one unlinked the other's).
        with tempfile.NamedTemporaryFile(dir=path, prefix=".jcexp-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"output directory {path} is not writable: {exc}") from exc


HEADROOM_BYTES = 64 * 2**20  # result.json, logs, the W&B offline run


def _check_free_space(plan: Plan, out: Path) -> None:
    """Refuse a run whose checkpoints cannot fit, before any compute: a full disk would otherwise surface
    as a failed save (or a half-built cache entry) after the whole compression and evaluation."""
    model_bytes = plan.source.checkpoint_bytes()
    needs: dict[str, int] = {}
    for path, need, what in (
        (out, model_bytes if plan.cfg.save_model else 0, "the compressed checkpoint (save_model)"),
        (
            Path(plan.cfg.paths.cache_dir),
            model_bytes if plan.pruner.active and plan.cfg.cache_pruned else 0,
            "the pruned-model cache (cache_pruned)",
        ),
    ):
        device = os.stat(path).st_dev
        needs[device] = needs.get(device, HEADROOM_BYTES) + need
        free = shutil.disk_usage(path).free
        if free < needs[device]:
            raise ConfigError(
                f"not enough free space for {what} under {path}: about {_size(needs[device])} needed, "
                f"{_size(free)} free; free some, move paths.root/paths.cache_dir, "
                "or set save_model=false / cache_pruned=false"
            )


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible")
    return name


class Plan:
    """The instantiated parts of a run, checked before any weight is read."""

    def __init__(self, cfg: DictConfig):
        from jcexp.compress import check_stages
        from jcexp.evaluate import check_documents, check_tasks

        check_values(cfg)
        self.cfg = cfg
        self.resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        self.hash = config_hash(self.resolved)
        self.source = instantiate(cfg.model.source)
        self.pruner = instantiate(cfg.pruner)
        self.quant = instantiate(cfg.quant)
        self.calibration = instantiate(cfg.calibration)
        self.tracker = instantiate(cfg.logger)
        self.source.check()
        if hasattr(self.calibration, "check"):
            self.calibration.check()
        check_tasks(cfg.benchmark)
        self.documents = check_documents(cfg.benchmark)
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


def _baseline_key(plan: Plan) -> dict[str, Any]:
    from jcexp.data import fingerprint, prose_split

    versions = library_versions()
    return {
        "model": plan.source.identity(),
        "benchmark": plan.resolved["benchmark"],
        "seed": plan.cfg.seed,
        "device_type": plan.device.split(":")[0],
        "lm_eval": versions["lm_eval"],
        "transformers": versions["transformers"],
        "offline_data": fingerprint(prose_split("eval")),
    }


def dense_baseline(plan: Plan, model, tokenizer, records: dict[str, Any]):
    """Evaluate the dense model once per (model, benchmark settings, seed, data, versions) and cache it, with
    the placement it was evaluated in (the device contract's record).
    The full key is stored beside the scores and compared on load, so a change of settings never reuses an
    old baseline."""

    key = _baseline_key(plan)
    path = Path(plan.cfg.paths.cache_dir) / "baselines" / f"{config_hash(key)}.json"
    with file_lock(path.with_suffix(".lock")):
        return _dense_baseline(plan, key, path, model, tokenizer, records)


def _dense_baseline(plan: Plan, key, path: Path, model, tokenizer, records: dict[str, Any]):
    from jcexp import measure
    from jcexp.evaluate import EvalResult, evaluate

    cached = read_json(path)
    if cached and cached.get("key") == key:
        log.info("dense baseline: reusing %s", path)
        return EvalResult.from_dict(cached["eval"]), str(path), True, cached.get("placement")
    placed = placement.state(placement.for_evaluation(model, plan.device)).to_dict()
    with measure.stage(records, "eval_dense"):
        result = evaluate(model, tokenizer, plan.cfg.benchmark, plan.cfg.seed)
    atomic_write_json(path, {"key": key, "eval": result.to_dict(), "placement": placed})
    return result, str(path), False, placed


def _prune_key(plan: Plan) -> dict[str, Any]:
    return {
        "model": plan.source.identity(),
        "pruner": plan.resolved["pruner"],
        "calibration": plan.resolved["calibration"],
        "seed": plan.cfg.seed,
        "llmcompressor": library_versions()["llmcompressor"],
    }


def pruned_model(plan: Plan, model, tokenizer, calibration, records: dict[str, Any]):
    """Prune once per (model, pruner settings, calibration, seed, llm-compressor version) and keep the pruned
    checkpoint, so a grid of S sparsities x Q bit widths runs SparseGPT S times, not S x Q. The entry is
    published by an atomic rename with its key inside; a partial or foreign entry is rebuilt, never used."""

    key = _prune_key(plan)
    final = Path(plan.cfg.paths.cache_dir) / "pruned" / config_hash(key)
    with file_lock(final.with_suffix(".lock")):
        return _pruned_model(plan, key, final, model, tokenizer, calibration, records)


def _pruned_model(plan: Plan, key, final: Path, model, tokenizer, calibration, records: dict[str, Any]):
    import tempfile

    from jcexp import measure
    from jcexp.compress import apply_stage
    from jcexp.models import ModelSource, _publish_dir, checkpoint_problem

    marker = read_json(final / "jcexp_prune_key.json")
    problem = checkpoint_problem(final) if marker == key else None
    if problem:
        log.warning("pruned model cache %s is damaged (%s): pruning again", final, problem)
    if plan.cfg.cache_pruned and marker == key and not problem:
        log.info("pruned model: reusing %s", final)
        with measure.stage(records, "load_pruned"):
            model, tokenizer = ModelSource._load_dir(final, plan.source.dtype)
        return model, tokenizer, {"path": str(final), "reused": True}
    with measure.stage(records, "prune"):
        apply_stage(plan.pruner, model, tokenizer, calibration, plan.cfg.seed)
    if not plan.cfg.cache_pruned:
        return model, tokenizer, {"path": None, "reused": False}
    if final.exists():  # partial or stale: rebuilt, never used
        shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    model.save_pretrained(tmp, save_compressed=False)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / "jcexp_prune_key.json", key)
    _publish_dir(tmp, final)
    return model, tokenizer, {"path": str(final), "reused": False}


def _other_case(plan: Plan, model, tokenizer, calibration, probe, stage_input, records):
    """Per-layer errors of the GPTQ case this run does not use, on a copy of the same pruned model, so that
    E_A / E_B compares the two cases on identical weights and inputs. Costs one more GPTQ pass and model copy."""
    import copy

    from jcexp import measure
    from jcexp.compress import apply_stage

    alt_cfg = copy.deepcopy(plan.cfg)
    alt_cfg.quant.preserve_sparsity = not plan.cfg.quant.preserve_sparsity
    alt = instantiate(alt_cfg.quant)
    twin = copy.deepcopy(model)
    with measure.stage(records, f"quantize_case_{'B' if alt.preserve_sparsity else 'A'}_for_ratio"):
        apply_stage(alt, twin, tokenizer, calibration, plan.cfg.seed)
    out = probe.errors(twin, stage_input)
    del twin
    return out


def _error_summary(
    plan: Plan, tokens: int, layer_errors: dict[str, Any], ratio: dict[str, Any] | None
) -> dict[str, Any]:
    """Pooled errors per stage (prune and quant against their input, total against the dense model), and
    E_A / E_B (pooled and its spread over layers) beside eq. 7's first-order prediction for this sparsity."""
    out: dict[str, Any] = {
        "tokens": tokens,
        "samples": plan.cfg.errors.samples,
        "stages": {k: errors.summarize(v) for k, v in layer_errors.items()},
    }
    if ratio is not None:
        out["case_ratio"] = {
            **{k: v for k, v in ratio.items() if k != "per_layer"},
            "first_order": metrics.case_error_ratio_first_order(plan.pruner.target_sparsity),
        }
    return out


def _task_rows(compressed, dense) -> dict[str, Any]:
    rows = {}
    for task, s in compressed.scores.items():
        base = dense.scores[task].value
        rows[task] = {
            "metric": s.metric,
            "value": s.value,
            "stderr": s.stderr,
            "chance": s.chance,
            "baseline": base,
            "baseline_stderr": dense.scores[task].stderr,
            "retention": metrics.retention(s.value, base) if base else None,
        }
    return rows


def _perplexity_rows(compressed, dense) -> dict[str, Any]:
    return {
        task: {
            "metric": s.metric,
            "value": s.value,
            "baseline": dense.perplexity[task].value,
            "retention": metrics.perplexity_retention(s.value, dense.perplexity[task].value),
        }
        for task, s in compressed.perplexity.items()
    }


def compute_metrics(plan: Plan, compressed, dense, measured_sparsity: float) -> dict[str, Any]:
    sparsity = plan.pruner.target_sparsity
    bits = plan.quant.bits if plan.quant.active else 16
    comp = {t: s.value for t, s in compressed.scores.items()}
    base = {t: s.value for t, s in dense.scores.items()}
    note = None
    try:
        sr = metrics.semantic_retention(comp, base, kind="sr2")
    except ValueError as exc:  # no scored task, or a dense model at 0 everywhere (e.g. random init)
        sr, note = None, str(exc)
    sr1 = metrics.semantic_retention(comp, base, kind="sr1") if comp and all(base.values()) else None
    return {
        "sr_undefined_because": note,
        "tcr": metrics.tcr(sparsity, bits),
        "tcr_measured_sparsity": metrics.tcr(min(99.999, 100 * measured_sparsity), bits),
        # What the paper cites for storing the sparsity pattern (IV-B.4); compare saved_model.bits_per_weight.
        "mask_overhead_bits_per_weight": (
            metrics.mask_overhead_bits(*plan.pruner.nm)
            if plan.pruner.nm
            else metrics.mask_overhead_bits()
            if plan.pruner.active
            else 0.0
        ),
        "sr": sr,
        "sr1": sr1,
        "srcr": metrics.srcr(sr, sparsity, bits) if sr is not None else None,
        "mean_score": sum(comp.values()) / len(comp) if comp else None,
        "mean_score_dense": sum(base.values()) / len(base) if base else None,
    }


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one configured compression + evaluation and return the result record (also in result.json)."""
    import torch

    from jcexp import measure
    from jcexp.compress import apply_stage, compression_device, seed_everything
    from jcexp.evaluate import evaluate

    plan = Plan(cfg)  # every config, model, task and shape check: before any weights are read
    out = run_dir(cfg, plan.hash)
    _check_writable(out)
    _check_writable(Path(cfg.paths.cache_dir))
    done = complete_result(out / RESULT_FILE, plan.hash)
    if done:
        log.info("result for config %s already complete in %s: nothing to do", plan.hash, out)
        return done
    stored = complete_result(index_path(cfg.paths.cache_dir, plan.hash), plan.hash)
    if stored:
        log.info("result for config %s was computed in %s: reusing it", plan.hash, stored["run_dir"])
        return reuse_result(stored, out)
    _check_free_space(plan, out)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    records: dict[str, Any] = {}
    with measure.stage(records, "load"):
        model, tokenizer = plan.source.load()
    lm_head_before = measure.lm_head_digest(model)
    calibration = None
    if plan.stages:  # built first: too little calibration text fails here, before the dense evaluation
        with measure.stage(records, "calibration_data"):
            calibration = plan.calibration.dataset(tokenizer)
    dense, baseline_path, baseline_reused, dense_placement = dense_baseline(plan, model, tokenizer, records)

    measured: dict[str, Any] = {"sparsity": {"after_prune": None, "after_quant": None}}

    probe = None
    if cfg.errors.enabled and plan.stages:
        with measure.stage(records, "errors_capture"):
            placement.for_evaluation(model, plan.device)
            probe = errors.capture(model, calibration, cfg.errors.samples, cfg.errors.tokens, cfg.seed)
    layer_errors: dict[str, Any] = {}  # per stage, per layer; summarized into measured["errors"] at the end

    prune_cache = None
    if plan.pruner.active:
        model, tokenizer, prune_cache = pruned_model(plan, model, tokenizer, calibration, records)
        measured["prune"] = measure.sparsity(model)
        measured["sparsity"]["after_prune"] = measured["prune"]["overall"]
        if plan.pruner.nm:
            measured["nm_after_prune"] = measure.nm_structure(model, *plan.pruner.nm)
        if probe is not None:
            layer_errors["prune"] = probe.errors(model)
    pruned_masks = measure.zero_masks(model) if plan.pruner.active and plan.quant.active else None
    if plan.quant.active:
        stage_input = probe.outputs(model) if probe is not None else None
        other = None
        if cfg.errors.case_ratio:  # the other GPTQ case, on a copy of the same pruned model
            other = _other_case(plan, model, tokenizer, calibration, probe, stage_input, records)
        with measure.stage(records, "quantize"):
            apply_stage(plan.quant, model, tokenizer, calibration, cfg.seed)
        if probe is not None:
            layer_errors["quant"] = probe.errors(model, stage_input)
            if other is not None:
                mine = layer_errors["quant"]
                a, b = (other, mine) if plan.quant.preserve_sparsity else (mine, other)
                layer_errors["case_a"], layer_errors["case_b"] = a, b
        measured["quant"] = measure.sparsity(model)
        measured["sparsity"]["after_quant"] = measured["quant"]["overall"]
        if pruned_masks is not None:
            measured["quant"].update(measure.zeros_after_quantization(model, pruned_masks))
        if plan.pruner.nm:
            measured["nm_after_quant"] = measure.nm_structure(model, *plan.pruner.nm)
    # The last stage's measurement is the model's final state; only an uncompressed model needs its own pass.
    last = measured.get("quant") or measured.get("prune") or measure.sparsity(model)
    final_sparsity = last["overall"]
    measured["sparsity"]["final"] = final_sparsity
    measured["lm_head_unchanged"] = measure.lm_head_digest(model) == lm_head_before
    if probe is not None:
        layer_errors["total"] = probe.errors(model)
        ratio = (
            errors.case_ratio(layer_errors["case_a"], layer_errors["case_b"])
            if "case_a" in layer_errors
            else None
        )
        measured["errors"] = _error_summary(plan, probe.tokens, layer_errors, ratio)
        if ratio is not None:
            layer_errors["case_ratio"] = ratio["per_layer"]
        del probe  # its stored activations are not needed for evaluation

    placed = {"evaluate": plan.device, "compress": compression_device() if plan.stages else None}
    if plan.stages:
        placement.for_evaluation(model, plan.device)
        placed["compressed_eval"] = placement.state(model).to_dict()
        with measure.stage(records, "eval"):
            compressed = evaluate(model, tokenizer, cfg.benchmark, cfg.seed)
    else:
        compressed = dense  # nothing was compressed: the dense scores are this run's scores
    placed["dense_eval"] = dense_placement

    saved: dict[str, Any] = {"path": None, "bytes": None}
    # llm-compressor's quantizers pack into compressed-tensors; NF4/int8 here are simulated, saved dense.
    packed = plan.quant.active and not hasattr(plan.quant.modifier, "apply_to")
    # Counted before saving: save_pretrained(save_compressed=True) swaps each Linear's weight for packed tensors.
    weight_counts = {n: m.weight.numel() for n, m in measure.compressible_linears(model).items()}
    if cfg.save_model:
        path = out / "model"
        try:
            with measure.stage(records, "save"):
                # compressed-tensors packs quantized weights; bytes on disk are measured from this directory.
                model.save_pretrained(path, save_compressed=packed)
                tokenizer.save_pretrained(path)
            saved = {
                "path": str(path),
                "bytes": measure.dir_bytes(path),
                "format": "compressed-tensors" if packed else "dense",
                **measure.stored_bits(path, weight_counts),
            }
        except Exception as exc:  # noqa: BLE001 - a failed save must not lose the scores already computed
            log.error("saving the compressed model failed: %s", exc)
            shutil.rmtree(path, ignore_errors=True)
            saved = {"path": None, "bytes": None, "error": f"{type(exc).__name__}: {exc}"}

    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "status": "complete",
        "config_hash": plan.hash,
        "run_name": cfg.run_name,
        "run_dir": str(out),
        "config": plan.resolved,
        "seed": cfg.seed,
        "device": plan.device,
        # Where the weights were at each evaluation and which device llm-compressor compressed on.
        "placement": placed,
        "threads": torch.get_num_threads(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "model": {"name": cfg.model.name, **plan.source.identity(), "linear_layers": len(plan.layer_widths)},
        "calibration": plan.calibration.describe(),
        "benchmark": {
            "name": cfg.benchmark.name,
            "limit": cfg.benchmark.limit,
            "num_fewshot": cfg.benchmark.num_fewshot,
        },
        "compression": {"pruner": plan.pruner.describe(), "quant": plan.quant.describe()},
        "measured": measured,
        "layer_errors": layer_errors or None,
        "tasks": _task_rows(compressed, dense),
        "perplexity": _perplexity_rows(compressed, dense),
        "metrics": compute_metrics(plan, compressed, dense, final_sparsity),
        "baseline": {"path": baseline_path, "reused": baseline_reused},
        "prune_cache": prune_cache,
        "stages": records,
        "peak_rss_mb": measure.process_peak_rss_mb(),
        "saved_model": saved,
        "versions": library_versions(),
        "task_versions": compressed.task_versions,
        "n_samples": compressed.n_samples,
    }
    atomic_write_json(out / RESULT_FILE, result)
    log.info("wrote %s", out / RESULT_FILE)
    result["tracking"] = plan.tracker.log_run(result, cfg.run_name, plan.resolved)
    atomic_write_json(out / RESULT_FILE, result)
    atomic_write_json(index_path(cfg.paths.cache_dir, plan.hash), result)
    _summary(result)
    return result


def _summary(result: dict[str, Any]) -> None:
    m, s = result["metrics"], result["measured"]["sparsity"]
    lines = [
        f"run {result['run_name']} ({result['config_hash']}) -> {result['run_dir']}",
        f"  TCr {m['tcr']:.4f}  Sr {_fmt(m['sr'])}  Sr1 {_fmt(m['sr1'])}  SrCr {_fmt(m['srcr'])}",
        f"  sparsity after prune {s['after_prune']}  after quant {s['after_quant']}",
    ]
    for task, row in result["tasks"].items():
        lines.append(
            f"  {task}: {row['value']:.4f} +- {row['stderr'] or 0:.4f} (dense {row['baseline']:.4f}, chance {row['chance']}, R_t {_fmt(row['retention'])})"
        )
    for task, row in result["perplexity"].items():
        lines.append(
            f"  {task}: {row['value']:.2f} (dense {row['baseline']:.2f}, retention {_fmt(row['retention'])})"
        )
    lines.append(
        "  stages: "
        + ", ".join(f"{k} {v['seconds']:.1f}s/{v['peak_rss_mb']:.0f}MB" for k, v in result["stages"].items())
    )
    print("\n".join(lines), flush=True)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
