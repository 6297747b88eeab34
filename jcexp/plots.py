"""The paper's figures from a sweep's results (PNG, matplotlib Agg: no display, no torch, no W&B).

- Figs. 1/7: R_t per task and Sr, pruning only (unstructured and N:M side by side);
- Fig. 2: the same for quantization only;
- Figs. 5/8: joint compression next to quantization only at equal TCr;
- Figs. 3/6: SrCr against TCr, with each joint point's SrCr_j beside its estimate SrCr_p·SrCr_q;
- Fig. 4 (errors): layer reconstruction error against sparsity, and the measured Case A / Case B output-error
  ratio beside eq. 7's limit of 1 as p -> 0, for runs with ``errors.enabled``.
- Not in the paper, beside Sr: KL(dense || compressed) per token on the held-out prose against TCr, with its
  document-level interval, and the flip rate (``kld``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jcexp import metrics  # noqa: E402
from jcexp.records import (  # noqa: E402
    Result,
    by_model,
    is_joint,
    is_pruning_only,
    is_quant_only,
    label,
    point,
    quant_method,
    sr_of,
    srcr_of,
    tcr_key,
    tcr_of,
    with_errors,
)


def _ci(r: Result, name: str) -> list[float] | None:
    if name == "Sr":
        return r["metrics"].get("sr_ci")
    return (r["tasks"].get(name) or {}).get("retention_ci")


def _retention_bars(runs: list[Result], title: str, path: Path) -> Path | None:
    if not runs:
        return None
    tasks = sorted({t for r in runs for t in r["tasks"]})
    series = [*tasks, "Sr"]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(runs) + 2), 3.6))
    for k, name in enumerate(series):
        values = [
            (sr_of(r) if name == "Sr" else (r["tasks"].get(name) or {}).get("retention")) or 0.0 for r in runs
        ]
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(runs))]
        cis = [_ci(r, name) for r in runs]
        # The paired 95% interval (jcexp/paired.py) where the run has one; no bar where it has none.
        yerr = [
            [max(0.0, v - ci[0]) if ci else 0.0 for v, ci in zip(values, cis, strict=True)],
            [max(0.0, ci[1] - v) if ci else 0.0 for v, ci in zip(values, cis, strict=True)],
        ]
        ax.bar(
            xs,
            values,
            width,
            label=name,
            hatch="//" if name == "Sr" else None,
            yerr=yerr if any(cis) else None,
            capsize=2,
            error_kw={"lw": 0.8},
        )
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(runs)), [f"{label(r)}\nTCr {100 * tcr_of(r):.4g}%" for r in runs])
    ax.set_ylabel("retention")
    ax.set_title(title)
    ax.legend(fontsize=7, ncols=min(4, len(series)))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _srcr_plot(runs: list[Result], title: str, path: Path) -> Path | None:
    kinds: list[tuple[str, Callable[[Result], bool], str]] = [
        ("pruning only (SrCr_p)", is_pruning_only, "o"),
        ("quantization only (SrCr_q)", is_quant_only, "s"),
        ("joint (SrCr_j)", is_joint, "^"),
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for name, keep, marker in kinds:
        pts = sorted((tcr_of(r), srcr_of(r)) for r in runs if keep(r) and srcr_of(r))
        if pts:
            ax.plot([100 * t for t, _ in pts], [v for _, v in pts], marker=marker, label=name)
            drawn = True
    est = []
    for j in filter(is_joint, runs):
        s, mask, b = point(j)
        p = next((r for r in runs if is_pruning_only(r) and point(r)[:2] == (s, mask)), None)
        q = next((r for r in runs if is_quant_only(r) and point(r)[2] == b), None)
        if p and q and sr_of(p) is not None and sr_of(q) is not None:
            est.append((tcr_of(j), metrics.srcr_estimate(sr_of(p), sr_of(q), s, b)))
    if est:
        ax.scatter(
            [100 * t for t, _ in est], [v for _, v in est], marker="x", color="k", label="SrCr_p·SrCr_q"
        )
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("TCr (%)")
    ax.set_ylabel("SrCr")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _error_plot(runs: list[Result], title: str, path: Path) -> Path | None:
    runs = with_errors(runs)
    if not runs:
        return None
    ratios = [r for r in runs if r["measured"]["errors"].get("case_ratio")]
    fig, axes = plt.subplots(1, 2 if ratios else 1, figsize=(10 if ratios else 5.5, 3.8), squeeze=False)
    ax = axes[0][0]
    series: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        s, _, b = point(r)
        st = r["measured"]["errors"]["stages"]
        if "prune" in st:
            series.setdefault("after pruning", []).append((s, st["prune"]["rel"]))
        if "total" in st and b < 16:
            series.setdefault(f"after pruning + {b} bit ({quant_method(r)})", []).append(
                (s, st["total"]["rel"])
            )
    for name, pts in sorted(series.items()):
        pts = sorted(set(pts))
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=name)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("||WX - W^X||² / ||WX||² (all layers)")
    ax.set_yscale("log")
    ax.set_title("reconstruction error vs dense")
    ax.legend(fontsize=7)
    if ratios:
        ax = axes[0][1]
        # One series per bit width: the error-analysis grid has two at every sparsity (and dicts do not sort).
        by_bits: dict[float, list[tuple[float, dict[str, float]]]] = {}
        for r in ratios:
            s, _, b = point(r)
            by_bits.setdefault(b, []).append((s, r["measured"]["errors"]["case_ratio"]))
        for i, (b, pts) in enumerate(sorted(by_bits.items())):
            pts.sort(key=lambda t: t[0])
            xs = [x + 0.8 * (i - (len(by_bits) - 1) / 2) for x, _ in pts]  # side by side, not on top
            bar = ax.errorbar(
                xs,
                [c["layer_median"] for _, c in pts],
                yerr=[
                    [c["layer_median"] - c["layer_min"] for _, c in pts],
                    [c["layer_max"] - c["layer_median"] for _, c in pts],
                ],
                fmt="s",
                capsize=3,
                label=f"{b:g} bit: layer median (min-max)",
            )
            ax.plot(
                xs,
                [c["pooled"] for _, c in pts],
                "o",
                color=bar[0].get_color(),
                mfc="none",
                label=f"{b:g} bit: pooled",
            )
        ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="eq. 7's limit as p -> 0")
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel("Case A / Case B, ||(W_p - W^)X||^2")
        ax.set_title("Case A vs B quantization output error (not eq. 7's per-column E_j)")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _kld_plot(runs: list[Result], title: str, path: Path) -> Path | None:
    """KL(dense || compressed) per token against TCr (log scale), and the flip rate, per kind of compression."""
    kinds: list[tuple[str, Callable[[Result], bool], str]] = [
        ("pruning only", is_pruning_only, "o"),
        ("quantization only", is_quant_only, "s"),
        ("joint", is_joint, "^"),
    ]
    have = [r for r in runs if (r.get("retention") or {}).get("kld")]
    if not have:
        return None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, keep, marker in kinds:
        pts = sorted(((tcr_of(r), r["retention"]) for r in have if keep(r)), key=lambda p: p[0])
        if not pts:
            continue
        xs = [100 * t for t, _ in pts]
        ys = [ret["kld"] for _, ret in pts]
        cis = [ret.get("kld_ci") or [k, k] for k, (_, ret) in zip(ys, pts, strict=True)]
        err = [
            [max(0.0, y - c[0]) for y, c in zip(ys, cis, strict=True)],
            [max(0.0, c[1] - y) for y, c in zip(ys, cis, strict=True)],
        ]
        ax.errorbar(xs, ys, yerr=err, marker=marker, capsize=2, label=name)
        rates = [(x, ret.get("flip_rate")) for x, (_, ret) in zip(xs, pts, strict=True)]
        rates = [(x, v) for x, v in rates if v is not None]
        if rates:
            bx.plot([x for x, _ in rates], [100 * v for _, v in rates], marker=marker, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("TCr (%)")
    ax.set_ylabel("KL(dense || compressed), nats/token")
    ax.set_title("held-out prose (95% document-level CI)")
    ax.legend(fontsize=7)
    bx.set_xlabel("TCr (%)")
    bx.set_ylabel("items whose correctness flipped (%)")
    bx.set_title("flip rate")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_plots(results: list[Result], out_dir: str | Path) -> list[Path]:
    """One set of figures per model; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = by_model(results)
    written: list[Path] = []
    for model, runs in models.items():
        by_tcr = sorted(runs, key=lambda r: (tcr_of(r), label(r)))
        suffix = f"_{model}" if len(models) > 1 else ""
        joint_tcrs = {tcr_key(r) for r in runs if is_joint(r)}
        compare = [r for r in by_tcr if is_joint(r) or (is_quant_only(r) and tcr_key(r) in joint_tcrs)]
        figures = [
            (
                _retention_bars,
                [r for r in by_tcr if is_pruning_only(r)],
                "pruning only (Figs. 1, 7)",
                "fig1_pruning_only",
            ),
            (
                _retention_bars,
                [r for r in by_tcr if is_quant_only(r)],
                "quantization only (Fig. 2)",
                "fig2_quant_only",
            ),
            (
                _retention_bars,
                compare,
                "joint vs quantization only at equal TCr (Figs. 5, 8)",
                "fig5_joint_vs_quant",
            ),
            (_srcr_plot, runs, "SrCr vs compression (Figs. 3, 6)", "fig3_srcr"),
            (_error_plot, runs, "layer errors (eqs. 2-9)", "fig4_errors"),
            (_kld_plot, runs, "distribution-level retention beside Sr (not in the paper)", "kld"),
        ]
        for draw, subset, title, name in figures:
            path = draw(subset, f"{model}: {title}", out_dir / f"{name}{suffix}.png")
            if path is not None:
                written.append(path)
    return written
