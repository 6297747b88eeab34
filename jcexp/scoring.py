"""Scoring: the dense baseline and the compressed model's scores, with the configured evaluator.

The step after the stages in plan -> run -> scoring -> record. The dense baseline is evaluated once per (model,
benchmark settings, seed, data, versions) and cached (cache/baselines/), and so are the dense model's token
distributions on the held-out prose (cache/distributions/, the same key: ``dense_distributions``), which
the compressed model's KL reads (``divergence``); with benchmark.ci_target the single
evaluation becomes sequential rounds (jcexp/sequential.py) over a dense store that grows in place. Every
evaluation keeps lm-eval's response cache until it completes, so a run cut off mid-evaluation resumes. Imports
the plan; the record and the run import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jcexp import divergence as dv
from jcexp import items, measure, placement, sequential
from jcexp.cache import KeyedCache
from jcexp.config import SEQUENTIAL_KEYS, TEXT_REVISION, sequential_on
from jcexp.data import fingerprint, prose_split
from jcexp.evaluate import EvalResult
from jcexp.files import key_hash
from jcexp.observers import RunState
from jcexp.plan import Plan, library_versions
from jcexp.results import atomic_write_json, config_hash, read_json

BASELINE_FILE = sequential.BASELINE_FILE


def _baseline_key(plan: Plan) -> dict[str, Any]:
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
        # 2: one BOS in rolling perplexity where the tokenizer adds one (jcexp/lm_eval_worker.py: one_bos).
        "text_revision": TEXT_REVISION,
    }
    if sequential_on(plan.cfg.benchmark):  # a partial sidecar: never the entry of a full evaluation
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
                tasks=plan.tasks,
                **chosen,
            )
    for done in responses.parent.glob(f"{responses.name}_rank*.db"):  # complete: its scores are cached now
        done.unlink()
    return scores, placed


def dense_baseline(plan: Plan, model, tokenizer, timings: dict[str, Any]):
    """The dense model's scores, evaluated once per (model, benchmark settings, seed, data, versions) and
    cached with the placement they were evaluated in. Returns (scores, record for result.json, placement)."""
    if sequential_on(plan.cfg.benchmark):
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


def score_compressed(plan: Plan, state: RunState, timings: dict[str, Any], checkpoint=None):
    """The compressed model's scores: all items, or with benchmark.ci_target chunk by chunk until Sr's interval
    is narrow enough, the dense model scored alongside on the items its cached baseline lacks."""
    if not sequential_on(plan.cfg.benchmark):
        return evaluate_model(plan, state.model, state.tokenizer, timings, "eval", plan.hash, checkpoint)
    seq, store, dense_key = sequential_store(plan)
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

    if seq.fixed is not None:
        result = seq.run_rounds(own_store(plan, seq), compressed, store, dense_eval)
    else:
        result = seq.run(compressed, store, dense_eval)
    dense.clear()
    # Each round re-times the "eval" stage; the stage's seconds are those of all rounds together.
    timings["eval"]["seconds"] = round(result.seconds, 3)
    return result, placed


def sequential_store(plan: Plan):
    """(Sequential, the dense baseline's ItemStore, its response-cache key), for benchmark.ci_target."""
    key = _baseline_key(plan)
    cache = KeyedCache(Path(plan.cfg.paths.cache_dir) / "baselines")
    # An empty entry at first: the rounds fill its items.json (and baseline.json's "eval") under its lock.
    entry, reused = cache.get_or_build(
        key,
        lambda tmp: atomic_write_json(tmp / BASELINE_FILE, {"sequential": True}),
        check=lambda e: None if read_json(e / BASELINE_FILE) else f"{BASELINE_FILE} unreadable",
    )
    seq = sequential.Sequential.for_plan(plan)
    return seq, sequential.ItemStore(entry, seq.layout), f"dense-{key_hash(key)}"


def rounds_key(plan: Plan) -> dict[str, Any]:
    """What a model scored round by round is (benchmark.ci_rounds): this config at any number of rounds, on the
    same evaluation setup as its dense baseline."""
    resolved = dict(plan.resolved)
    resolved["benchmark"] = {k: v for k, v in resolved["benchmark"].items() if k != "ci_rounds"}
    key = {k: v for k, v in _baseline_key(plan).items() if k not in ("benchmark", "items")}
    return {**key, "config": config_hash(resolved), "llmcompressor": library_versions()["llmcompressor"]}


def own_store(plan: Plan, seq: sequential.Sequential) -> sequential.ItemStore:
    """The compressed model's items across its runs at 1, 2, ... rounds (cache/rounds/): a later round scores
    only the items no earlier one did."""
    cache = KeyedCache(Path(plan.cfg.paths.cache_dir) / "rounds")
    entry, _ = cache.get_or_build(
        rounds_key(plan),
        lambda tmp: atomic_write_json(tmp / BASELINE_FILE, {"sequential": True}),
        check=lambda e: None if read_json(e / BASELINE_FILE) else f"{BASELINE_FILE} unreadable",
    )
    return sequential.ItemStore(entry, seq.layout)


def _sequential_baseline(plan: Plan, model, tokenizer, timings: dict[str, Any]):
    """dense_baseline with benchmark.ci_target: the cached dense items, extended to cover the first round (the
    later rounds extend them further, score_compressed). The scores are the first round's, which is what a run
    that compresses nothing reports (its Sr is 1, its interval a point)."""
    seq, store, dense_key = sequential_store(plan)
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


def sequential_dense(plan: Plan, compressed):
    """The dense scores and items of a sequential run, on the items the compressed model used."""
    seq, store, _ = sequential_store(plan)
    vals = sequential.from_sidecar(compressed.items, seq.layout)
    return store.result({leaf: sequential.have(vals, seq.layout, leaf) for leaf in seq.layout.sizes})


# -------------------------------------------------------------------------- distribution-level retention
# 1: top-k log-probabilities and the rest's log-mass per predicted token (jcexp/divergence.py). A change of what
# the entry holds or how it is computed bumps it, so an older entry is rebuilt (one dense forward), never read.
DISTRIBUTIONS_REVISION = 1


def _max_length(plan: Plan, model) -> int:
    """The window length lm-eval's rolling perplexity uses: benchmark.max_length, else the model's own."""
    length = plan.cfg.benchmark.get("max_length")
    return int(length or getattr(model.config, "max_position_embeddings", 2048))


def _distributions_key(plan: Plan, model) -> dict[str, Any]:
    """The dense baseline's key (one entry per baseline key), plus what the forward itself depends on."""
    settings = {
        "top_k": dv.TOP_K,
        "max_length": _max_length(plan, model),
        "revision": DISTRIBUTIONS_REVISION,
        "torch": library_versions()["torch"],
    }
    return {**_baseline_key(plan), "distributions": settings}


def dense_distributions(plan: Plan, model, tokenizer, timings: dict[str, Any]):
    """The dense model's token distributions on the held-out prose of the benchmark's perplexity tasks,
    computed once per baseline key and cached, so that a compressed run runs no dense forward. Called on the
    dense model before any stage. Returns (Distributions or None when the benchmark has no perplexity task,
    record for result.json)."""
    documents = dv.held_out_documents(plan.tasks, plan.cfg.benchmark)
    if not documents:
        return None, {"undefined_because": f"benchmark={plan.cfg.benchmark.name} has no perplexity task"}
    key = _distributions_key(plan, model)

    def build(tmp: Path) -> None:
        with measure.timed(timings, "kld_dense"):
            placement.for_evaluation(model, plan.device)  # the evaluation row of the device contract
            dv.dense_distributions(model, tokenizer, documents, key["distributions"]["max_length"]).save(tmp)

    def damaged(entry: Path) -> str | None:
        return None if dv.Distributions.load(entry) is not None else f"{dv.FILE} unreadable"

    cache = KeyedCache(Path(plan.cfg.paths.cache_dir) / "distributions")
    entry, reused = cache.get_or_build(key, build, check=damaged)
    dense = dv.Distributions.load(entry)
    assert dense is not None
    return dense, {"path": str(entry), "reused": reused, **dense.settings}


def divergence(plan: Plan, state: RunState, dense, timings: dict[str, Any]) -> dict[str, Any] | None:
    """Per held-out document: [sum of per-token KL(dense || compressed), tokens, argmax agreements], from one
    forward of the compressed model in memory, weights on plan.device and plain modules (the evaluation row of
    the device contract, jcexp/placement.py). Called before the compressed model is saved or handed to a
    subprocess evaluator. Nothing compressed: the dense distributions against themselves, no forward."""
    if dense is None:
        return None
    if not plan.stages:
        return dv.identical(dense)
    documents = dv.held_out_documents(plan.tasks, plan.cfg.benchmark)
    with measure.timed(timings, "kld"):
        placement.for_evaluation(state.model, plan.device)
        return dv.compare(state.model, state.tokenizer, documents, dense)
