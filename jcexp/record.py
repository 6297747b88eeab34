"""The record: what a finished run writes, and where it is published.

The last step of plan -> run -> scoring -> record: the paper's metrics (``compute_metrics``, the equations in
jcexp/metrics.py), the per-task and perplexity rows with their paired intervals (``retention_intervals``),
result.json (``build_record``), and its publication (``publish``): the per-item sidecar, result.json (never lost
to a tracking error), W&B, the result index, and the summary printed at the end. Imports the plan and scoring;
the run imports this module.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from jcexp import items, kld, measure, memory, metrics, paired, scoring
from jcexp.observers import RunState
from jcexp.plan import Plan, library_versions
from jcexp.results import RESULT_FILE, SCHEMA_VERSION, atomic_write_json, index_result

log = logging.getLogger("jcexp")


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


def distribution_retention(
    compressed, dense, per_document: dict[str, list[float]] | None, reference: dict[str, Any], seed: int
) -> dict[str, Any]:
    """Beside Sr, never in it: how far the compressed model's predictions moved from the dense model's on the
    same inputs. ``kld``: mean per-token KL(dense || compressed) in nats on the held-out prose (bucketed: a
    lower bound of the full KL, jcexp/kld.py), with its document-level bootstrap interval; ``top1_agreement``:
    share of those tokens whose argmax agrees; ``flips``: items whose correctness changed, per task and in all
    (jcexp/metrics.py), on the items both evaluations answered."""
    out: dict[str, Any] = {"kld": None, "kld_ci": None, "top1_agreement": None, "top1_agreement_ci": None}
    if per_document:
        out.update(kld.document_interval(per_document, seed=seed))
    else:
        out["kld_undefined_because"] = reference.get("undefined_because") or "no held-out documents"
    out["distributions"] = reference
    have = items.complete(dense.items) and items.complete(compressed.items)
    if have:
        out["flips"] = metrics.flips(items.scores(dense.items), items.scores(compressed.items))
        out["flip_rate"] = out["flips"]["all"]["rate"]
    else:
        out["flips"], out["flip_rate"] = None, None
        out["flips_undefined_because"] = "per-item results missing"
    return out


def build_record(
    plan: Plan,
    state: RunState,
    out: Path,
    dense,
    compressed,
    baseline,
    placed,
    saved,
    resources,
    divergence: tuple[dict[str, list[float]] | None, dict[str, Any]] | None = None,
):
    """result.json: what ran, on what, what was measured, the scores and the paper's metrics. ``divergence``:
    (per-document KL values, the dense distributions' record), for ``retention`` beside the paper's metrics."""
    cfg = plan.cfg
    sequential = compressed.settings.get("sequential")
    if sequential is not None:  # the dense scores and items on the items the compressed model used
        dense, sequential = scoring.sequential_dense(plan, compressed), dict(sequential)
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
        # Distribution-level retention beside Sr: KL to the dense model, top-1 agreement, flips.
        "retention": distribution_retention(compressed, dense, *divergence, cfg.seed)
        if divergence is not None
        else None,
        "baseline": baseline,
        "prune_cache": state.prune_cache,
        "stages": state.timings,
        "peak_rss_mb": peak_rss,
        # The preflight's estimate beside the measured peaks.
        "resources": {"estimate": resources, "measured": memory.compare(resources, peak_rss, peak_cuda)},
        "saved_model": saved,
        "versions": library_versions(),
        "task_versions": compressed.task_versions,
        "n_samples": compressed.n_samples,
    }


def publish(
    plan: Plan,
    result: dict[str, Any],
    out: Path,
    item_values: dict[str, Any] | None,
    per_document: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """The per-item sidecar (with the per-document KL values), then result.json (never lost to a tracking
    error), then W&B, then the index."""
    item_values = items.with_divergence(item_values, per_document)
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
    ret = result.get("retention") or {}
    if ret:
        flips = (ret.get("flips") or {}).get("all") or {}
        ci = ret.get("kld_ci")
        lines.append(
            f"  KL(dense||compressed) {_g(ret.get('kld'))} nats/token"
            + (f" [{_g(ci[0])}, {_g(ci[1])}]" if ci else "")
            + f"  top-1 agreement {_fmt(ret.get('top1_agreement'))}"
            f"  flips {flips.get('correct_to_wrong', 'n/a')} lost / {flips.get('wrong_to_correct', 'n/a')} gained"
            f" of {flips.get('items', 'n/a')} items"
        )
    lines.append(
        "  stages: "
        + ", ".join(f"{k} {v['seconds']:.1f}s/{v['peak_rss_mb']:.0f}MB" for k, v in result["stages"].items())
    )
    print("\n".join(lines), flush=True)


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
