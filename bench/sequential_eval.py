"""Sequential evaluation vs the full suite on the grid `pruner.sparsity=0,25,33.3 quant.bits=3,4`: evaluation
seconds (dense and compressed, every point) and items scored with `benchmark.ci_target` against all items, and
whether every verdict (joint vs quantization-only at equal TCr, jcexp.report.verdict) stays the same.

    python -m bench.sequential_eval [--model smollm2_135m] [--ci-target 0.03] [--chunk 64] [--benchmark offline]

Each side runs in process from its own empty cache (the converted model is converted again on each side).
`--model tiny_random` checks that the script runs; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import itertools
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, table, write

SPARSITIES, BITS = ("0", "25", "33.3"), ("3", "4")
EVAL_STAGES = ("eval", "eval_dense", "load_dense")


def _side(root: Path, model: str, benchmark: str, extra: list[str]) -> list[dict[str, Any]]:
    from hydra import compose, initialize_config_dir

    import jcexp.config  # noqa: F401  (schema + resolvers)
    from jcexp.run import run

    out = []
    for s, b in itertools.product(SPARSITIES, BITS):
        overrides = [
            f"model={model}",
            f"benchmark={benchmark}",
            "benchmark.limit=null",
            f"pruner.sparsity={s}",
            f"quant.bits={b}",
            "logger=none",
            "save_model=false",
            f"paths.root={root}",
            f"paths.cache_dir={root / 'cache'}",
            *extra,
        ]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            out.append(run(compose("config", overrides=overrides)))
    return out


def _eval_seconds(r: dict[str, Any]) -> float:
    return sum(r["stages"][k]["seconds"] for k in EVAL_STAGES if k in r["stages"])


def _items(r: dict[str, Any]) -> int:
    return sum(v.get("effective", 0) for v in r["n_samples"].values() if isinstance(v, dict))


def _half(ci: list[float] | None) -> float | None:
    return None if not ci else round((ci[1] - ci[0]) / 2, 3)


def _verdicts(results: list[dict[str, Any]]) -> list[str]:
    from jcexp.report import verdict

    # The verdict's words, not its numbers: "retains more than" / "ties with" / "retains less than".
    return [re.sub(r"\(Sr [^)]*\)|[-+]?\d+\.\d+", "", line) for line in verdict(results)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--benchmark", default="offline")
    parser.add_argument("--ci-target", type=float, default=0.03)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--set", action="append", default=[], help="more Hydra overrides, on both sides")
    parser.add_argument(
        "--work",
        type=Path,
        help="work directory of an earlier run: its full side is found again by config hash (its stored stage "
        "timings are the ones compared), and only the sequential side with these settings is computed",
    )
    args = parser.parse_args(argv)
    from jcexp.report import verdict

    work = args.work or Path(tempfile.mkdtemp(prefix="jcexp-bench-seq-"))
    sides: dict[str, list[dict[str, Any]]] = {}
    wall: dict[str, float] = {}
    seq = [f"benchmark.ci_target={args.ci_target}", f"benchmark.ci_chunk={args.chunk}"]
    for name, extra in (("full", []), ("sequential", seq)):
        # Each target gets its own root, so a second target reuses the full side but none of the first's items.
        root = work / (name if name == "full" else f"sequential-{args.ci_target:g}-{args.chunk}")
        start = time.perf_counter()
        sides[name] = _side(root, args.model, args.benchmark, [*extra, *args.set])
        wall[name] = time.perf_counter() - start

    rows = []
    for full, fast in zip(sides["full"], sides["sequential"], strict=True):
        s = fast["benchmark"]["sequential"]
        rows.append(
            {
                "sparsity": full["compression"]["pruner"].get("sparsity"),
                "bits": full["compression"]["quant"].get("bits"),
                "eval_s_full": _eval_seconds(full),
                "eval_s_seq": _eval_seconds(fast),
                "items_full": _items(full),
                "items_seq": _items(fast),
                "rounds": s["rounds"],
                "stopped": s["stopped_because"],
                "dense_new": s["dense_items_evaluated"],
                "sr_full": full["metrics"]["sr"],
                "sr_seq": fast["metrics"]["sr"],
                "sr_ci_seq": [round(x, 3) for x in fast["metrics"]["sr_ci"] or []] or None,
                "halfwidth_full": _half(full["metrics"]["sr_ci"]),
                "halfwidth_seq": _half(fast["metrics"]["sr_ci"]),
            }
        )
    same = _verdicts(sides["full"]) == _verdicts(sides["sequential"])
    columns = list(rows[0])
    total = {k: sum(r[k] for r in rows) for k in ("eval_s_full", "eval_s_seq", "items_full", "items_seq")}
    markdown = "\n".join(
        [
            f"model={args.model}, benchmark={args.benchmark}, ci_target={args.ci_target}, chunk={args.chunk}",
            "",
            table(rows, columns),
            "",
            f"Evaluation seconds: {total['eval_s_full']:.1f} full, {total['eval_s_seq']:.1f} sequential; "
            f"items (compressed): {total['items_full']} full, {total['items_seq']} sequential; "
            f"wall: {wall['full']:.0f} s full"
            # Only a full side that was found again (not computed) carries an earlier run's seconds.
            + (
                " (found again in --work: its evaluation seconds are the earlier run's)"
                if all(r.get("resumed_from") for r in sides["full"])
                else ""
            )
            + f", {wall['sequential']:.0f} s sequential.",
            f"Every verdict the same: {'yes' if same else 'NO'}",
            "",
            "Full suite:",
            *verdict(sides["full"]),
            "",
            "Sequential:",
            *verdict(sides["sequential"]),
        ]
    )
    # A word name: bench/render.py's markers take \w+ only.
    suffix = (
        ""
        if (args.ci_target, args.chunk) == (0.03, 64)
        else f"_ci{args.ci_target:g}_chunk{args.chunk}".replace(".", "p")
    )
    write(
        f"sequential_eval_{args.model}{suffix}",
        {"rows": rows, "totals": total, "wall_s": wall, "verdicts_same": same, "args": vars(args)},
        markdown,
    )


if __name__ == "__main__":
    main()
