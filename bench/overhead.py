"""Framework overhead: one jcexp run vs the same llm-compressor and lm-eval calls written directly
(bench/direct.py), on SmolLM2-135M offline, alternating the two in one invocation.

    python -m bench.overhead [--reps 1] [--limit 50] [--samples 16]

jcexp runs with a fresh output and cache directory each time (no stored result, baseline or pruned model to
reuse; the converted model is shared by both sides), W&B offline, and save_model=false since the direct
script saves nothing. Target: jcexp at most 5% slower.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import launch, results_under, table, timed, warm_models, write


def checkpoint_dir(cache: Path, model: str = "smollm2_135m") -> Path:
    """The model's HF checkpoint as jcexp loads it (SmolLM2 converted here once if needed)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import jcexp.config  # noqa: F401
    from bench.common import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.cache_dir={cache}", "logger=none", f"model={model}"])
    return instantiate(cfg.model.source).hf_dir()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument(
        "--model", default="smollm2_135m", help="tiny_random: a smoke run (tests/test_bench.py)"
    )
    parser.add_argument(
        "--limit", type=int, default=50, help="documents per task (the offline suite has 237/197/15)"
    )
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="jcexp-bench-overhead-"))
    model_dir = checkpoint_dir(work / "warm", args.model)  # converted once; set-up, not measured
    models = work / "warm" / "models"
    runs = []
    for rep in range(args.reps):
        direct = timed(
            [
                sys.executable,
                "-m",
                "bench.direct",
                f"--model-dir={model_dir}",
                f"--samples={args.samples}",
                f"--seq-len={args.seq_len}",
                f"--limit={args.limit}",
            ]
        )
        cache = work / f"cache{rep}"
        warm_models(cache, models)
        root = work / f"jcexp{rep}"
        ours = launch(
            f"model={args.model}",
            f"paths.root={root}",
            f"paths.cache_dir={cache}",
            f"calibration.num_samples={args.samples}",
            f"calibration.seq_len={args.seq_len}",
            f"benchmark.limit={args.limit}",
            "save_model=false",
            "logger=wandb",
            "logger.mode=offline",
        )
        (result,) = results_under(root)
        direct_scores = json.loads(direct["output"].strip().splitlines()[-1])
        same = all(
            abs((direct_scores["compressed"][t] or 0) - result["tasks"][t]["value"]) < 1e-9
            for t in ("jc_lastword",)
        )
        runs.append(
            {
                "rep": rep,
                "direct_s": direct["seconds"],
                "jcexp_s": ours["seconds"],
                "ratio": ours["seconds"] / direct["seconds"],
                "direct_peak_mb": direct["peak_rss_mb"],
                "jcexp_peak_mb": ours["peak_rss_mb"],
                "same_scores": same,
                "jcexp_stages_s": {k: v["seconds"] for k, v in result["stages"].items()},
            }
        )
    ratio = statistics.median(r["ratio"] for r in runs)
    md = table(
        runs, ["rep", "direct_s", "jcexp_s", "ratio", "direct_peak_mb", "jcexp_peak_mb", "same_scores"]
    )
    md += f"\n\nmedian jcexp / direct: **{ratio:.3f}** ({100 * (ratio - 1):+.1f}%), target <= 1.05"
    md += f"\n\nsettings: SmolLM2-135M, 25% SparseGPT + 4-bit GPTQ (group 64), calibration {args.samples}x{args.seq_len}, "
    md += f"{args.limit} documents per task, batch 8, CPU"
    write("overhead", {"settings": vars(args), "runs": runs, "median_ratio": ratio}, md)


if __name__ == "__main__":
    main()
