"""One run: config -> model -> stages (prune, quantize) -> evaluate -> metrics -> result.json -> tracking.

``run`` is the whole flow on one screen. Every check that can fail on bad input runs in ``Plan``, before any
weight is read. What is measured around the stages lives in jcexp/observers.py; what is computed once and
reused (converted models, pruned models, dense baselines, finished results) lives in jcexp/cache.py. A finished
result is never recomputed: a rerun with the same effective config (by hash) returns the stored result.json.
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

from jcexp import items, measure, metrics, paired, placement, preflight
from jcexp.cache import KeyedCache
from jcexp.compress import compression_device
from jcexp.config import SEQUENTIAL_KEYS, ConfigError, check_values, effective_case
from jcexp.files import key_hash
from jcexp.observers import RunState, default_observers
from jcexp.results import (
    RESULT_FILE,
    SCHEMA_VERSION,
    atomic_write_json,
    complete_result,
    config_hash,
    index_result,
    indexed_result,
    read_json,
    reuse_result,
)

log = logging.getLogger("jcexp")

BASELINE_FILE = "baseline.json"

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
    # How many items a sequential run scores is not part of what the baseline is: its entry grows instead.
    bench = {k: v for k, v in plan.resolved["benchmark"].items() if k not in SEQUENTIAL_KEYS}
    key = {
        "model": plan.source.identity(),
        "benchmark": bench,
        "seed": plan.cfg.seed,
        "device_type": plan.device.split(":")[0],
        "lm_eval": versions["lm_eval"],
        "transformers": versions["transformers"],
        "offline_data": fingerprint(prose_split("eval")),
        "evaluator": plan.evaluator.identity(),
    }
    if plan.cfg.benchmark.ci_target is not None:  # a partial sidecar: never the entry of a full evaluation
        key["items"] = "sequential"
    return key


def _responses(plan: Plan, key: str) -> Path:
    """lm-eval's response cache for one evaluation (the model it scores is fixed by ``key``): kept until that
    evaluation completes, so a run cut off mid-evaluation resumes at the last answered request."""
    return Path(plan.cfg.paths.cache_dir) / "responses" / key


def evaluate_model(
    plan: Plan, model, tokenizer, timings: dict[str, Any], name: str, key: str, checkpoint=None, samples=None
):
    """Score the model with the configured evaluator; returns the scores and where they were computed.

    In process (evaluator=hf), the device contract's evaluation side holds: a plain model resident on
    plan.device. A subprocess evaluator (vllm, hf_subprocess) scores ``checkpoint`` instead; the in-memory
    model goes back to host RAM first and PyTorch's GPU cache is emptied (placement.release_accelerator), so
    that the evaluator's process finds the GPU free. ``samples``: only these documents (sequential evaluation,
    jcexp/sequential.py)."""
    ev, bench, seed = plan.evaluator, plan.cfg.benchmark, plan.cfg.seed
    chosen = {} if samples is None else {"samples": samples}
    responses = _responses(plan, key)
    responses.parent.mkdir(parents=True, exist_ok=True)
    if ev.needs_checkpoint:
        placement.release_accelerator(model)
        with measure.timed(timings, name):
            scores = ev.evaluate(
                bench, seed, checkpoint=str(checkpoint), device=plan.device, resume=str(responses), **chosen
            )
        placed = {"evaluator": ev.name, "checkpoint": str(checkpoint)}
    else:
        placed = placement.state(placement.for_evaluation(model, plan.device)).to_dict()
        with measure.timed(timings, name):
            scores = ev.evaluate(
                bench,
                seed,
                model=model,
                tokenizer=tokenizer,
                device=plan.device,
                resume=str(responses),
                **chosen,
            )
    for done in responses.parent.glob(f"{responses.name}_rank*.db"):  # complete: its scores are cached now
        done.unlink()
    return scores, placed


def evaluate_compressed(plan: Plan, state: RunState, out: Path, timings: dict[str, Any]):
    """The compressed model's scores, its placement record and its saved checkpoint. A subprocess evaluator
    reads a checkpoint in the format its backend loads (vLLM: packed int4/int8, else dense): the saved model
    when that is the format, else a temporary dense copy written first (a packed save compresses the model
    in place), removed after the evaluation."""
    from jcexp import checkpoints

    ev = plan.evaluator
    if not ev.needs_checkpoint:
        scores, placed = _score(plan, state, timings)
        return scores, placed, save_model(plan, state.model, state.tokenizer, out, timings)
    fmt = ev.checkpoint_format(plan.quant.name, plan.quant.bits if plan.quant.active else 16)
    temporary = None
    if not (plan.cfg.save_model and fmt == _saved_format(plan)):
        with measure.timed(timings, "save_for_eval"):
            temporary = checkpoints.save(
                state.model, state.tokenizer, out / "eval_checkpoint", fmt, plan.source.tokenizer_dir()
            )
    saved = save_model(plan, state.model, state.tokenizer, out, timings)
    checkpoint = temporary or saved["path"]
    if checkpoint is None:  # the save failed; its error is in `saved`
        raise RuntimeError(f"no checkpoint for evaluator={ev.name}: {saved.get('error')}")
    scores, placed = _score(plan, state, timings, checkpoint)
    placed["checkpoint_format"] = fmt
    if fmt == "dense" and plan.quant.active:
        placed["note"] = (
            f"evaluated from dense weights: {ev.name} loads no packed {plan.quant.bits}-bit {plan.quant.name}"
        )
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
    return scores, placed, saved


def _score(plan: Plan, state: RunState, timings: dict[str, Any], checkpoint=None):
    """The compressed model's scores: all items, or with benchmark.ci_target chunk by chunk until Sr's interval
    is narrow enough, the dense model scored alongside on the items its cached baseline lacks."""
    if plan.cfg.benchmark.ci_target is None:
        return evaluate_model(plan, state.model, state.tokenizer, timings, "eval", plan.hash, checkpoint)
    seq, store, dense_key = _sequential_store(plan)
    placed: dict[str, Any] = {}
    dense: list[Any] = []  # the dense model, loaded again only if a round needs items the cache lacks

    def compressed(samples):
        scores, where = evaluate_model(
            plan, state.model, state.tokenizer, timings, "eval", plan.hash, checkpoint, samples
        )
        placed.update(where)
        return scores

    def dense_eval(samples):
        if plan.evaluator.needs_checkpoint:  # the source checkpoint; the in-memory model only leaves the GPU
            ckpt = plan.source.checkpoint_dir()
            return evaluate_model(
                plan, state.model, state.tokenizer, timings, "eval_dense", dense_key, ckpt, samples
            )[0]
        if not dense:
            with measure.timed(timings, "load_dense"):
                dense.extend(plan.source.load())
        placement.for_compression(state.model)  # off the device while the dense model is on it
        scores, _ = evaluate_model(plan, dense[0], dense[1], timings, "eval_dense", dense_key, None, samples)
        placement.for_compression(dense[0])
        return scores

    result = seq.run(compressed, store, dense_eval)
    dense.clear()
    # Each round re-times the "eval" stage; the stage's seconds are those of all rounds together.
    timings["eval"]["seconds"] = round(result.seconds, 3)
    return result, placed


def _sequential_store(plan: Plan):
    """(Sequential, the dense baseline's DenseStore, its response-cache key), for benchmark.ci_target."""
    from jcexp import sequential

    key = _baseline_key(plan)
    cache = KeyedCache(Path(plan.cfg.paths.cache_dir) / "baselines")
    # An empty entry at first: the rounds fill its items.json (and baseline.json's "eval") under its lock.
    entry, reused = cache.get_or_build(
        key,
        lambda tmp: atomic_write_json(tmp / BASELINE_FILE, {"sequential": True}),
        check=lambda e: None if read_json(e / BASELINE_FILE) else f"{BASELINE_FILE} unreadable",
    )
    seq = sequential.Sequential.for_plan(plan)
    return seq, sequential.DenseStore(entry, seq.layout), f"dense-{key_hash(key)}"


def _saved_format(plan: Plan) -> str:
    """What save_model writes: packed where llm-compressor quantized, plain otherwise (NF4/int8 are simulated)."""
    return "compressed-tensors" if plan.quant.active and not plan.quant.data_free else "dense"


def dense_baseline(plan: Plan, model, tokenizer, timings: dict[str, Any]):
    """The dense model's scores, evaluated once per (model, benchmark settings, seed, data, versions) and
    cached with the placement they were evaluated in. Returns (scores, record for result.json, placement)."""
    from jcexp.evaluate import EvalResult

    if plan.cfg.benchmark.ci_target is not None:
        return _sequential_baseline(plan, model, tokenizer, timings)

    def build(tmp: Path) -> None:
        checkpoint = plan.source.checkpoint_dir() if plan.evaluator.needs_checkpoint else None
        scores, placed = evaluate_model(
            plan, model, tokenizer, timings, "eval_dense", f"dense-{key_hash(key)}", checkpoint
        )
        if scores.items:
            items.write(tmp, scores.items)
        atomic_write_json(tmp / BASELINE_FILE, {"eval": scores.to_dict(), "placement": placed})

    def damaged(entry: Path) -> str | None:
        if not read_json(entry / BASELINE_FILE):
            return f"{BASELINE_FILE} unreadable"
        # A baseline cached before per-item sidecars existed is evaluated once more, to get them.
        return None if items.complete(items.read(entry)) else f"{items.ITEMS_FILE} missing or incomplete"

    key = _baseline_key(plan)
    cache = KeyedCache(Path(plan.cfg.paths.cache_dir) / "baselines")
    entry, reused = cache.get_or_build(key, build, check=damaged)
    stored = read_json(entry / BASELINE_FILE) or {}
    path = str(entry / BASELINE_FILE)
    dense = EvalResult.from_dict(stored["eval"])
    dense.items = items.read(entry)
    return dense, {"path": path, "key": entry.name, "reused": reused}, stored.get("placement")


def _sequential_baseline(plan: Plan, model, tokenizer, timings: dict[str, Any]):
    """dense_baseline with benchmark.ci_target: the cached dense items, extended to cover the first round (the
    later rounds extend them further, _score). The scores are the first round's, which is what a run that
    compresses nothing reports (its Sr is 1, its interval a point)."""
    from jcexp import sequential

    seq, store, dense_key = _sequential_store(plan)
    checkpoint = plan.source.checkpoint_dir() if plan.evaluator.needs_checkpoint else None
    placed: dict[str, Any] = {}

    def evaluate(samples):
        scores, where = evaluate_model(
            plan, model, tokenizer, timings, "eval_dense", dense_key, checkpoint, samples
        )
        placed.update(where)
        return scores

    new = store.ensure(seq.chunk(0), evaluate)
    dense = store.result(seq.prefix(1))
    used = sequential.count(sequential.from_sidecar(dense.items, seq.layout), seq.layout)
    dense.settings["sequential"] = seq.record(1, "nothing compressed", used, 0)
    record = {"path": str(store.entry / BASELINE_FILE), "reused": new == 0, "items_evaluated": new}
    return dense, record, placed or None  # None: every item came from the cache


def _prune_key(plan: Plan, calibration) -> dict[str, Any]:
    from jcexp.data import windows_fingerprint

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
    from jcexp import checkpoints
    from jcexp.compress import apply_stage
    from jcexp.models import ModelSource, checkpoint_problem

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


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one configured compression + evaluation and return the result record (also in result.json)."""
    import torch

    from jcexp.compress import seed_everything

    plan = Plan(cfg)  # every config, model, task and shape check: before any weights are read
    out = run_dir(cfg, plan.hash)
    _check_writable(out)
    _check_writable(Path(cfg.paths.cache_dir))
    done = complete_result(out / RESULT_FILE, plan.hash) or indexed_result(cfg.paths.cache_dir, plan.hash)
    if done:
        log.info("result for config %s was computed in %s: reusing it", plan.hash, done["run_dir"])
        return done if done["run_dir"] == str(out) else reuse_result(done, out)
    resources = preflight.estimate_for(plan)  # host RAM, GPU memory, disk: refused here if they cannot fit
    log.info(preflight.summary(resources))
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
    dense, baseline, dense_placement = dense_baseline(plan, model, tokenizer, timings)

    state = RunState(plan, model, tokenizer, calibration, timings)
    observers = default_observers(plan)
    for observer in observers:
        observer.start(state)
    for stage in plan.stages:
        for observer in observers:
            observer.before(stage, state)
        run_stage(stage, state)
        for observer in reversed(observers):
            observer.after(stage, state)
    for observer in observers:
        observer.finish(state)

    placed = {"evaluate": plan.device, "compress": compression_device() if plan.stages else None}
    placed["dense_eval"] = dense_placement
    compressed, saved = dense, None  # nothing compressed: the dense scores are this run's scores
    if plan.stages:
        compressed, placed["compressed_eval"], saved = evaluate_compressed(plan, state, out, timings)
    saved = saved or save_model(plan, state.model, state.tokenizer, out, timings)
    result = build_record(plan, state, out, dense, compressed, baseline, placed, saved, resources)
    return publish(plan, result, out, compressed.items)


def save_model(plan: Plan, model, tokenizer, out: Path, timings: dict[str, Any]) -> dict[str, Any]:
    """The compressed checkpoint, packed by compressed-tensors where llm-compressor quantized it (NF4/int8 are
    simulated here: saved dense). Bytes on disk and stored bits per weight are measured from it. A failed
    save is recorded and never loses the scores already computed."""
    if not plan.cfg.save_model:
        return {"path": None, "bytes": None}
    from jcexp import checkpoints

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


def _task_rows(compressed, dense, intervals: dict[str, Any] | None) -> dict[str, Any]:
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
            "retention_ci": intervals["tasks"].get(task) if intervals else None,
        }
    return rows


def _perplexity_rows(compressed, dense, seed: int) -> dict[str, Any]:
    paired_docs = items.complete(dense.items) and items.complete(compressed.items)
    return {
        task: {
            "metric": s.metric,
            "value": s.value,
            "baseline": dense.perplexity[task].value,
            "retention": metrics.perplexity_retention(s.value, dense.perplexity[task].value),
            "retention_ci": paired.perplexity_retention_interval(
                items.documents(dense.items, task), items.documents(compressed.items, task), seed=seed
            )
            if paired_docs
            else None,
        }
        for task, s in compressed.perplexity.items()
    }


def retention_intervals(compressed, dense, seed: int) -> dict[str, Any] | None:
    """Paired bootstrap intervals of R_t, Sr and Sr1 over the items both models answered (jcexp/paired.py);
    None when either evaluation has no per-item results."""
    if not (items.complete(dense.items) and items.complete(compressed.items)):
        return None
    base, comp = items.scores(dense.items), items.scores(compressed.items)
    if not base:
        return None
    return paired.retention_intervals(base, comp, seed=seed)


def compute_metrics(
    plan: Plan, compressed, dense, pruned_sparsity: float, intervals: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The paper's metrics; ``pruned_sparsity`` is the measured share of weights pruning removed that are still
    zero at the end; ``intervals`` the paired intervals (retention_intervals, or sequential evaluation's)."""
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
        "tcr_measured_sparsity": metrics.tcr(min(99.999, 100 * (pruned_sparsity or 0.0)), bits),
        # What the paper cites for storing the sparsity pattern (IV-B.4); compare saved_model.bits_per_weight.
        "mask_overhead_bits_per_weight": (
            metrics.mask_overhead_bits(*plan.pruner.nm)
            if plan.pruner.nm
            else metrics.mask_overhead_bits()
            if plan.pruner.active
            else 0.0
        ),
        "sr": sr,
        "sr_ci": intervals["sr"] if intervals else None,
        "sr1": sr1,
        "sr1_ci": intervals["sr1"] if intervals else None,
        # How the intervals were computed: method, resamples, seed, level.
        "ci": {k: intervals[k] for k in ("method", "resamples", "seed", "level")} if intervals else None,
        "srcr": metrics.srcr(sr, sparsity, bits) if sr is not None else None,
        # For one configuration SrCr is a constant (>= 0) times Sr: its interval is Sr's, scaled.
        "srcr_ci": (
            [metrics.srcr(x, sparsity, bits) for x in intervals["sr"]]
            if intervals and intervals["sr"]
            else None
        ),
        "mean_score": sum(comp.values()) / len(comp) if comp else None,
        "mean_score_dense": sum(base.values()) / len(base) if base else None,
    }


def build_record(
    plan: Plan, state: RunState, out: Path, dense, compressed, baseline, placed, saved, resources
):
    """result.json: what ran, on what, what was measured, the scores and the paper's metrics."""
    import torch

    cfg = plan.cfg
    sequential = compressed.settings.get("sequential")
    if sequential is not None:  # the dense scores and items on the items the compressed model used
        dense, sequential = _sequential_dense(plan, compressed), dict(sequential)
        sequential["dense_items_evaluated"] += baseline.get("items_evaluated", 0)
    intervals = retention_intervals(compressed, dense, cfg.seed)
    stop = (sequential or {}).get("sr_interval")
    if intervals is not None and stop is not None:
        # Sr's interval is the stop rule's: valid at whichever look the run ended (a percentile interval read
        # after a data-dependent stop is not). The per-task and Sr1 intervals stay percentile ones, unadjusted.
        intervals = {
            **intervals,
            "sr": stop["ci"],
            "method": f"Sr: {stop['method']}; per task and Sr1: {intervals['method']} (not adjusted for the stop)",
        }
    peak_rss = measure.process_peak_rss_mb()
    peak_cuda = max((t.get("peak_cuda_mb") or 0 for t in state.timings.values()), default=0) or None
    return {
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
            # benchmark.ci_target: rounds, items used per leaf task, why it stopped, dense items scored anew.
            "sequential": sequential,
            # What lm-eval actually ran with: max_length, batch size, per-task generation limits.
            "settings": compressed.settings,
        },
        "evaluator": plan.evaluator.describe(),
        "compression": {"pruner": plan.pruner.describe(), "quant": plan.quant.describe()},
        "measured": state.measured,
        "layer_errors": state.layer_errors or None,
        "tasks": _task_rows(compressed, dense, intervals),
        "perplexity": _perplexity_rows(compressed, dense, cfg.seed),
        "metrics": compute_metrics(
            plan, compressed, dense, state.measured["sparsity"]["pruned_still_zero"], intervals
        ),
        "baseline": baseline,
        "prune_cache": state.prune_cache,
        "stages": state.timings,
        "peak_rss_mb": peak_rss,
        # The preflight's estimate beside the measured peaks.
        "resources": {"estimate": resources, "measured": preflight.compare(resources, peak_rss, peak_cuda)},
        "saved_model": saved,
        "versions": library_versions(),
        "task_versions": compressed.task_versions,
        "n_samples": compressed.n_samples,
    }


def _sequential_dense(plan: Plan, compressed):
    from jcexp import sequential

    seq, store, _ = _sequential_store(plan)
    vals = sequential.from_sidecar(compressed.items, seq.layout)
    return store.result({leaf: sequential.have(vals, seq.layout, leaf) for leaf in seq.layout.sizes})


def publish(
    plan: Plan, result: dict[str, Any], out: Path, item_values: dict[str, Any] | None
) -> dict[str, Any]:
    """The per-item sidecar, then result.json (never lost to a tracking error), then W&B, then the index."""
    if item_values:
        items.write(out, item_values)
    atomic_write_json(out / RESULT_FILE, result)
    log.info("wrote %s", out / RESULT_FILE)
    result["tracking"] = plan.tracker.log_run(result, plan.cfg.run_name, plan.resolved)
    atomic_write_json(out / RESULT_FILE, result)
    index_result(plan.cfg.paths.cache_dir, result)
    _summary(result)
    return result


def _summary(result: dict[str, Any]) -> None:
    m, s = result["metrics"], result["measured"]["sparsity"]
    lines = [
        f"run {result['run_name']} ({result['config_hash']}) -> {result['run_dir']}",
        f"  TCr {m['tcr']:.4f}  Sr {_fmt(m['sr'])} {_ci(m.get('sr_ci'))}  Sr1 {_fmt(m['sr1'])}  SrCr {_fmt(m['srcr'])}",
        f"  sparsity pruned {_fmt(s['pruned'])}  zeros after prune {_fmt(s['after_prune'])}"
        f"  after quant {_fmt(s['after_quant'])}  (rounding {_fmt(s['rounding_zeros'])})",
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


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
