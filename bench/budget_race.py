"""The budget race against the exhaustive grid of the same candidates, on SmolLM2, at TCr 81.25% and 87.5%.

    python -m bench.budget_race [--model smollm2_135m] [--tcr 0.8125 0.875] [--space tcr0.8125=...]

For each target: (1) the race, `launch.py -m experiment=budget budget.tcr=T` with the space below, timed as a
whole; (2) the rest of the grid: every candidate scored on every item (`benchmark.ci_rounds` = all rounds),
reusing the race's compressed models and items, so (1) + (2) is what the grid computes. Reported: the items each
way, the evaluation seconds each way (the stages' own timings: the comparable measure), the wall times, the race's
winner (or unseparated survivors) against the grid's best Sr on all items, and whether the race's choice is the
grid's best or within the equivalence margin of it.

The grid's wall time is (1) + (2): what the grid computes, but it would start one job per candidate rather than
one per candidate and round, so this overstates it by those extra starts; the evaluation seconds do not.
`--model tiny_random` checks that the script runs; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import launch, machine, table, warm_models, write

# Narrowed as a user would (budget.space.*): GPTQ and RTN, the paper's Case B, one N:M mask per target.
SPACES = {
    0.8125: [
        "budget.space.quantizers=[gptq,rtn]",
        "budget.space.sparsity=[25]",
        "budget.space.masks=['2:8']",
        "budget.space.bits=[3,4]",
        "budget.space.onepass=false",
    ],
    0.875: [
        "budget.space.quantizers=[gptq,rtn]",
        "budget.space.sparsity=[33.333,50]",
        "budget.space.masks=[]",
        "budget.space.bits=[2,3,4]",
        "budget.space.onepass=false",
    ],
}


def _items(result: dict[str, Any]) -> int:
    return sum(v.get("effective", 0) for v in (result.get("n_samples") or {}).values())


def _eval_seconds(result: dict[str, Any]) -> float:
    if result.get("resumed_from"):
        return 0.0
    stages = result.get("stages") or {}
    return sum(stages[k]["seconds"] for k in ("eval", "eval_dense", "load_dense") if k in stages)


def race_and_grid(tcr: float, model: str, root: Path, common: list[str]) -> dict[str, Any]:
    sweep = root / f"race_{tcr}"
    race_run = launch(
        "-m",
        "experiment=budget",
        f"budget.tcr={tcr}",
        *SPACES[tcr],
        *common,
        f"hydra.sweep.dir={sweep}",
    )
    state = json.loads((sweep / "budget.json").read_text())
    looks = state["race"]["looks"]
    race_results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]
    race_eval = sum(_eval_seconds(r) for r in race_results)
    compress = sum(
        v["seconds"]
        for r in race_results
        if not r.get("resumed_from")
        for k, v in (r.get("stages") or {}).items()
        if k in ("prune", "quantize", "load_pruned") and not v.get("from_cache")
    )
    race_items = state["items"]["race"]

    start, grid_eval, full = time.perf_counter(), race_eval, {}
    for c in state["candidates"]:
        out = root / "grid" / str(tcr) / c["name"].replace(" ", "_").replace("/", "-")
        run = launch(*c["overrides"], f"benchmark.ci_rounds={looks}", *common, f"hydra.run.dir={out}")
        result = json.loads((out / "result.json").read_text())
        grid_eval += _eval_seconds(result)
        full[c["name"]] = {
            "sr": result["metrics"]["sr"],
            "sr_ci": result["metrics"]["sr_ci"],
            "items": _items(result),
            "seconds": run["seconds"],
        }
    extension_wall = time.perf_counter() - start
    grid_items = sum(v["items"] for v in full.values())
    best = max(full, key=lambda n: full[n]["sr"] if full[n]["sr"] is not None else -1)
    r = state["race"]
    chosen = r["winner"] or r["leader"]
    gap = full[best]["sr"] - full[chosen]["sr"] if chosen in full else None
    return {
        "tcr": tcr,
        "candidates": len(state["candidates"]),
        "looks": looks,
        "outcome": r["outcome"],
        "winner": r["winner"],
        "unseparated": r["unseparated"],
        "race_choice": chosen,
        "grid_best": best,
        "grid_best_sr": full[best]["sr"],
        "race_choice_full_sr": full.get(chosen, {}).get("sr"),
        "gap_points": None if gap is None else 100 * gap,
        "within_margin": None if gap is None else gap <= r["margin"] + 1e-12,
        "margin": r["margin"],
        "race_items": race_items,
        "grid_items": grid_items,
        "items_share": race_items / grid_items if grid_items else None,
        "race_wall_s": race_run["seconds"],
        "extension_wall_s": round(extension_wall, 1),
        "grid_wall_s": round(race_run["seconds"] + extension_wall, 1),
        "compress_s": round(compress, 1),
        "race_eval_s": round(race_eval, 1),
        "grid_eval_s": round(grid_eval, 1),
        "race_state": str(sweep / "budget.json"),
        "standings": {
            n: {**s, "full_sr": full[n]["sr"], "full_sr_ci": full[n]["sr_ci"]}
            for n, s in r["standings"].items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--tcr", type=float, nargs="+", default=[0.8125, 0.875])
    parser.add_argument("--root", type=Path, default=None, help="outputs (default: a temp dir)")
    parser.add_argument("--shared-models", type=Path, default=None, help="converted models to reuse")
    parser.add_argument("--num-samples", type=int, default=16, help="calibration windows (the study's 16)")
    args = parser.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="jcexp-budget-"))
    if args.shared_models:  # the GGUF conversion is set-up, not part of either side
        warm_models(root / "cache", args.shared_models)
    common = [
        f"model={args.model}",
        "benchmark=offline",
        f"calibration.num_samples={args.num_samples}",
        "logger=none",
        f"paths.root={root}",
        f"paths.cache_dir={root / 'cache'}",
    ]
    if args.model == "tiny_random":
        common += ["benchmark=tiny", "benchmark.limit=null", "calibration.seq_len=64"]
    rows = [race_and_grid(t, args.model, root, common) for t in args.tcr]
    payload = {"machine": machine(), "model": args.model, "root": str(root), "rows": rows}
    columns = [
        "tcr",
        "candidates",
        "outcome",
        "race_choice",
        "grid_best",
        "gap_points",
        "within_margin",
        "race_items",
        "grid_items",
        "items_share",
        "race_eval_s",
        "grid_eval_s",
        "race_wall_s",
        "grid_wall_s",
        "compress_s",
    ]
    md = [
        f"# Budget race vs exhaustive grid ({args.model})",
        "",
        f"{payload['machine']['cpu']}, {payload['machine']['cores']} cores, {payload['machine']['date']}; "
        f"`python -m bench.budget_race --model {args.model}`",
        "",
        table(rows, columns),
    ]
    for row in rows:
        md += [
            "",
            f"## TCr {row['tcr']}",
            "",
            "| candidate | race Sr (items) | why | full Sr [95% CI] |",
            "|---|---|---|---|",
        ]
        for name, s in sorted(row["standings"].items(), key=lambda kv: -(kv[1]["full_sr"] or -1)):
            ci = s["full_sr_ci"]
            md.append(
                f"| {name} | {s['sr']:.3f} ({s['items']}) | {s['why'] or ('alive' if s['alive'] else '')} | "
                f"{s['full_sr']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] |"
                if s["sr"] is not None and s["full_sr"] is not None and ci
                else f"| {name} | n/a | {s['why']} | n/a |"
            )
    write(f"budget_race_{args.model}", payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
