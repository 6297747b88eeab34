"""The budget race's records: what each round's results hold for the race, and what the race writes.

jcexp/race.py decides; hydra_plugins/jcexp_budget runs the rounds through the configured launcher; this module
reads a round's result.json files (the candidate's items and the dense items on the same rounds, its measured
bits per weight and sparsity, its time) and writes the race's state (budget.json, after every round),
budget.md, budget.png (Sr against bits per weight, with the Pareto frontier) and the W&B summary.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from jcexp import items, race, verdicts
from jcexp.files import atomic_write_json

log = logging.getLogger("jcexp")

STATE_FILE, MARKDOWN_FILE, PLOT_FILE = "budget.json", "budget.md", "budget.png"


# ------------------------------------------------------------------------------------------------- reading
def scored_items(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(dense, candidate) per-item scores {task: {item: value}} of one round's result: the candidate's items
    so far, and the dense baseline's cached items (a superset; the race pairs them on the shared ids)."""
    own = items.read(result["run_dir"])
    dense = items.read(Path(result["baseline"]["path"]).parent)
    if own is None or dense is None:
        raise ValueError(f"no per-item results beside {result['run_dir']} or its baseline")
    return items.scores(dense), items.scores(own)


def document_kl(result: dict[str, Any]) -> dict[str, float]:
    """The run's per-document KL(dense || compressed) in nats per token, "task/doc" -> KL (the KL sum over the
    document's scored tokens divided by their number; jcexp/items.py's ``divergence``), what the race's screen
    reads; {} when the run recorded none (no perplexity task, or a result from before distribution-level
    retention)."""
    per_document = items.divergence(items.read(result["run_dir"]))
    return {doc: v[0] / v[1] for doc, v in per_document.items() if v[1] > 0}


def kl_items(result: dict[str, Any], kl: dict[str, float]) -> float:
    """The KL's cost in items, by issue 26's rule: the share of the held-out prose its documents cover, times
    the prose's documents (the perplexity tasks' items, ``n_samples`` "original"). The KL forward reads each
    document it covers whole (jcexp/divergence.py), so the share of documents is the share of the tokens."""
    own = items.read(result["run_dir"]) or {}
    prose = sum(
        ((result.get("n_samples") or {}).get(t) or {}).get("original", 0) for t in own.get("perplexity", {})
    )
    if not prose or not kl:
        return 0.0
    return min(1.0, len(kl) / prose) * prose


def measured(result: dict[str, Any], recipe: race.Recipe, group_size: int | None) -> dict[str, Any]:
    """What a candidate's result measured, for budget.md: bits per weight (the value bits of the kept weights,
    the scale and zero-point bits read from the saved checkpoint, the mask), sparsity, its compute time."""
    saved = result.get("saved_model") or {}
    stored = saved.get("bits_per_weight") if saved.get("format") == "compressed-tensors" else None
    overhead = None
    if stored is not None and recipe.quantized and isinstance(stored, int | float) and math.isfinite(stored):
        overhead = max(0.0, float(stored) - recipe.bits)  # packed values take `bits` each; the rest is scales
    sparsity = ((result.get("measured") or {}).get("sparsity") or {}).get("pruned_still_zero")
    stages = result.get("stages") or {}
    return {
        "bits_per_weight": race.bits_per_weight(recipe, group_size, overhead),
        "bits_source": "measured scales" if overhead is not None else "estimated",
        "stored_bits_per_weight": stored,
        "sparsity": sparsity,
        "compress_seconds": sum(
            v.get("seconds") or 0.0
            for k, v in stages.items()
            if k in ("prune", "quantize", "load_pruned") and not v.get("from_cache")
        ),
        # The KL forward ("kld") is evaluation too: every round's job runs it again on the same documents.
        "eval_seconds": sum(
            (v.get("seconds") or 0.0)
            for k, v in stages.items()
            if k in ("eval", "eval_dense", "kld", "kld_dense")
        )
        if not result.get("resumed_from")
        else 0.0,
        "items_evaluated": ((result.get("benchmark") or {}).get("sequential") or {}).get("items_evaluated"),
        "result": result.get("resumed_from") or result.get("run_dir"),
    }


# ------------------------------------------------------------------------------------------------- writing
def write_state(sweep_dir: Path, state: dict[str, Any]) -> Path:
    path = Path(sweep_dir) / STATE_FILE
    atomic_write_json(path, state)
    return path


def _ci(ci: list[float] | None) -> str:
    return "n/a" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown(state: dict[str, Any]) -> str:
    r = state["race"]
    target = state["target"]
    lines = [
        f"# Budget race: {target['what']} = {target['value']:g} ± {target['tolerance']:g}",
        "",
        f"Model `{state['model']}`, benchmark `{state['benchmark']}`, seed {state['seed']}; "
        f"{len(state['candidates'])} candidates in the band, {r['looks']} rounds planned of "
        f"`benchmark.ci_chunk={state['chunk']}` items per task.",
        "",
    ]
    if r["outcome"] == "winner" and r.get("screened_out"):
        lines.append(
            f"**Claim: {r['winner']} wins** among the candidates the KL screen kept (every other one was "
            f"dropped on Sr); screened out as farther from the dense model in KL (a claim about KL, not Sr): "
            f"{', '.join(r['screened_out'])}."
        )
    elif r["outcome"] == "winner":
        lines.append(f"**Claim: {r['winner']} wins** (every other candidate was separated from it).")
    elif r["outcome"] == "equivalent":
        lines.append(
            f"**Claim: {', '.join(r['unseparated'])} are equivalent** within "
            f"{verdicts.margin_text(r['margin'])} (each survivor's interval against {r['leader']} lies inside "
            "it): any of them keeps as much as the others, within the margin. No single winner is named."
        )
    elif r["outcome"] == "not separated":
        stop = (r["rounds"][-1].get("stop") or "") if r["rounds"] else ""
        why = "the items ran out" if stop == "items exhausted" else "the remaining items could not decide"
        lines.append(
            f"**No claim: {why} with {', '.join(r['unseparated'])} not separated** (stopped at round "
            f"{len(r['rounds'])} of {r['looks']}). The race has no choice among them; the table gives each "
            "one's interval against the highest point estimate."
        )
    else:
        lines.append(f"**No result: {r['outcome']}.**")
    lines += [
        "",
        "| candidate | TCr | bits/weight | KL (nats/token) | KL / KL leader's | Sr | Sr interval | vs leader | rounds "
        "| items | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(
        state["candidates"],
        key=lambda c: (
            not r["standings"][c["name"]]["alive"],
            -(r["standings"][c["name"]]["sr"] or -1),
        ),
    )
    for c in order:
        s = r["standings"][c["name"]]
        # What the race concluded about this candidate, and from which interval (jcexp/race.py: Race._conclude).
        verdict = s.get("verdict")
        status = (
            f"{verdict}: {s['reason']}"
            if verdict and s.get("reason") and verdict != "winner"
            else verdict or ("in the race" if s["alive"] else s["why"])
        )
        diff = "" if s["diff_ci"] is None else f"{100 * s['diff']:+.1f} {verdicts.points(s['diff_ci'])}"
        bits = "" if c.get("bits_per_weight") is None else f"{c['bits_per_weight']:.2f}"
        if c.get("bits_source") == "estimated":
            bits += " (est.)"
        sr = "n/a" if s["sr"] is None else f"{s['sr']:.3f}"
        kl = "" if s.get("kl") is None else f"{s['kl']:.3g}"
        ratio = "" if s.get("kl_ratio_ci") is None else f"{s['kl_ratio']:.2f} [{s['kl_ratio_ci'][0]:.2f}, "
        ratio += "" if s.get("kl_ratio_ci") is None else f"{s['kl_ratio_ci'][1]:.2f}]"
        lines.append(
            f"| {c['name']} | {c['tcr']:.4f} | {bits} | {kl} | {ratio} | {sr} | {_ci(s['sr_ci'])} | {diff} | "
            f"{s['rounds']} | {s['items']} | {status} |"
        )
    if state.get("excluded"):
        lines += ["", f"Not raced ({len(state['excluded'])}):"]
        lines += [f"- {e['name']}: {e['why']}" for e in state["excluded"]]
    front = state.get("frontier") or []
    lines += [
        "",
        "## Pareto frontier (Sr against bits per weight, every candidate evaluated)",
        "",
        ", ".join(front) if front else "(none)",
        "",
        "## How it was decided",
        "",
        f"Rounds evaluate every surviving candidate on the next `ci_chunk` items of one seeded order "
        f"(seed {state['seed']}); the dense model's items are scored once and shared. "
        + (
            "The first round screens on each candidate's per-document KL to the dense model on the held-out "
            "prose (KL column: geometric mean over documents): a candidate whose interval of KL / the KL "
            "leader's lies above 1 (Student t on the documents' log ratios, df = documents - 1, and the exact "
            f"sign-flip test, each at level {r['screen_level']:.6f}) is screened out, a claim about KL only; the "
            "claims about Sr are made among the candidates kept. "
            if r.get("screen_level") and r.get("screened")
            else "No KL screen (no candidate recorded per-document KL). "
        )
        + f"A candidate is dropped when "
        f"the interval of its Sr minus the leader's lies below 0 (and the two disagree on at least "
        f"{r['min_discordant']} items); survivors whose intervals against the leader all lie inside the margin "
        f"(with the same floor) are claimed equivalent. Intervals: {r['method']}; each difference at level "
        f"{r['difference_level']:.6f}, each Sr at {r['sr_level']:.6f}, so all of them hold together at "
        f"{r['level']:.0%} whatever round the race stopped at. The race also stops, not separated, once no "
        f"survivor's difference from the leader is at least half the half-width all the items could reach and none "
        f"could come within the margin (futility: a stop that claims nothing). Dropped candidates' Sr is read on "
        f"the items they "
        f"were scored on. Bits per weight: the kept weights' value bits, the scale (and zero-point) bits measured "
        f"from the saved checkpoint (est.: 16 per group), and the mask (1 bit per weight unstructured, "
        f"log2 C(M, N) / M for N:M).",
        "",
        f"Items scored: {state['items']['race']:g} by the race ({state['items']['grid']} for the whole grid, "
        f"{state['items']['share']:.0%}; the KL counted as the share of the held-out prose it covers times its "
        f"documents, once per candidate: {state['items'].get('kl', 0):g} of the race's). "
        f"Compression: {state['seconds']['compress']:.1f} s, evaluation "
        f"{state['seconds']['eval']:.1f} s (this invocation; reused rounds cost nothing).",
    ]
    return "\n".join(lines) + "\n"


def plot(state: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = state["race"]
    pts = [
        (c, r["standings"][c["name"]])
        for c in state["candidates"]
        if r["standings"][c["name"]]["sr"] is not None and c.get("bits_per_weight") is not None
    ]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c, s in pts:
        lo, hi = s["sr_ci"] or (s["sr"], s["sr"])
        color = "tab:green" if s["alive"] else "tab:gray"
        ax.errorbar(
            c["bits_per_weight"],
            s["sr"],
            yerr=[[s["sr"] - lo], [hi - s["sr"]]],
            fmt="o",
            color=color,
            capsize=3,
        )
        ax.annotate(
            c["name"], (c["bits_per_weight"], s["sr"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    front = list(state["frontier"])
    by_name = {c["name"]: c for c, _ in pts}
    xs = [by_name[n]["bits_per_weight"] for n in front if n in by_name]
    ys = [r["standings"][n]["sr"] for n in front if n in by_name]
    ax.plot(xs, ys, "--", color="tab:blue", label="Pareto frontier")
    if r["winner"] in by_name:
        w = by_name[r["winner"]]
        ax.plot(
            w["bits_per_weight"],
            r["standings"][r["winner"]]["sr"],
            "*",
            ms=16,
            color="tab:red",
            label="winner",
        )
    ax.set_xlabel("bits per weight (values, scales, mask)")
    ax.set_ylabel(f"Sr ({r['sr_level']:.4f} simultaneous intervals)")
    ax.set_title(f"Budget race: {state['target']['what']} {state['target']['value']:g} (green: survived)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_outputs(sweep_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
    sweep_dir = Path(sweep_dir)
    points = {
        c["name"]: (c["bits_per_weight"], state["race"]["standings"][c["name"]]["sr"])
        for c in state["candidates"]
        if c.get("bits_per_weight") is not None and state["race"]["standings"][c["name"]]["sr"] is not None
    }
    state["frontier"] = race.pareto(points)
    (sweep_dir / MARKDOWN_FILE).write_text(markdown(state))
    drawn = plot(state, sweep_dir / PLOT_FILE)
    state["outputs"] = {"markdown": str(sweep_dir / MARKDOWN_FILE), "plot": str(drawn) if drawn else None}
    write_state(sweep_dir, state)
    return state
