"""The resource preflight's host-RAM estimate against the measured peak RSS of real runs, and its estimate for
the paper's setup (Llama-3.1-8B, bf16, C4 512 x 2048, benchmark=paper) on a 24 GB GPU.

    python -m bench.preflight_accuracy                      # tiny, tiny + errors/case_ratio, SmolLM2 default
    python -m bench.preflight_accuracy --runs smollm2_limit16   # SmolLM2 with benchmark.limit=16 (4 min)
    python -m bench.preflight_accuracy --runs tiny,tiny_errors
    python -m bench.preflight_accuracy --result smollm2=/path/to/result.json   # reuse a finished run
    python -m bench.preflight_accuracy --paper-8b           # the 8B estimate only (no run)

Each run is `launch.py` in its own process (result.json's ``peak_rss_mb`` is that process's ru_maxrss); the
estimate is jcexp.memory.estimate_for on the same composed config, computed before the run. The SmolLM2
default run takes about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.common import ROOT, launch, table, write

TINY = ["model=tiny_random", "benchmark=tiny", "calibration.num_samples=16", "calibration.seq_len=64"]
RUNS = {
    "tiny": TINY,
    "tiny_errors": [*TINY, "errors.enabled=true", "errors.case_ratio=true"],
    "smollm2": [],
    # the same peak phase (rolling perplexity on all 15 documents), 80 instead of 1025 scored requests
    "smollm2_limit16": ["benchmark.limit=16"],
}
LIMIT = 0.25  # the bound on |measured / estimated - 1|


def compose(overrides: list[str], cache: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import jcexp.config  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=[f"paths.cache_dir={cache}", "logger=none", *overrides])


def estimate(overrides: list[str], cache: Path) -> dict[str, Any]:
    from jcexp.memory import estimate_for
    from jcexp.plan import Plan

    return estimate_for(Plan(compose(overrides, cache)))


def measure(name: str, overrides: list[str], outputs: Path, result: Path | None) -> dict[str, Any]:
    if result is None:
        launch(*overrides, "logger=none", env={"JCEXP_OUTPUTS": str(outputs)})
        result = max(outputs.rglob("result.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(Path(result).read_text())


def paper_8b(gpu_gb: float = 24.0, batch: int | None = 4, prompt: int = 4096) -> dict[str, Any]:
    """Llama-3.1-8B shapes (no hub: the config is built here), bf16, SparseGPT + GPTQ on C4 512 x 2048, the
    paper's generative suite as conf/benchmark/paper.yaml sets it (batch 4, max_length 8192). Its requests need
    the hub, so the longest prompt (few-shot included) is an assumption; max_gen_toks is MMLU-Pro's 2048, and
    lm-eval truncates prompts to max_length - max_gen_toks = 6144 tokens."""
    from transformers import LlamaConfig

    from jcexp.memory import EvalLoad, ModelShapes, Workload, estimate

    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        tie_word_embeddings=False,
    )
    shapes = ModelShapes.from_config(config, "bfloat16")
    max_length, gen = 8192, 2048
    ev = EvalLoad(
        batch=batch,
        max_length=max_length,
        generate_context=(min(prompt, max_length - gen),) * 129,
        generate_count=12032 + 6511 + 5000,
        max_gen_toks=gen,
        source=f"assumed: longest prompt {prompt} tokens, max_gen_toks {gen} (the paper's tasks need the hub)",
    )
    work = Workload(
        eval_device="cuda",
        compress_device="cuda",
        prune=True,
        quant=True,
        quant_calibrated=True,
        calib_samples=512,
        calib_seq_len=2048,
        eval=ev,
        save_model=True,
        save_packed=True,
        bits=4,
        group_size=128,
        cache_pruned=True,
    )
    est = estimate(shapes, work).to_dict()
    est["gpu_gb_assumed"] = gpu_gb
    return est


def fits(est: dict[str, Any], gpu_gb: float, host_gb: float) -> str:
    """check() against a node with this much GPU memory and host RAM: 'fits' or the refusal."""
    from omegaconf import OmegaConf

    from jcexp.config import ConfigError
    from jcexp.preflight import check

    cfg = OmegaConf.create(
        {
            "resources": {"enforce": True, "host_ram_gb": host_gb, "gpu_mem_gb": gpu_gb, "headroom": 0.1},
            "paths": {"root": tempfile.gettempdir(), "cache_dir": tempfile.gettempdir()},
        }
    )
    try:
        check(est, cfg)
    except ConfigError as exc:
        return str(exc).split("\n  - ", 1)[1].replace("\n  - ", " | ")
    return "fits"


def _describe(est: dict[str, Any], key: str) -> str:
    r = est[key]
    top = sorted(((v, k) for k, v in r["phases"][r["phase"]].items() if k != "total_mb"), reverse=True)[:4]
    return (
        f"{r['peak_mb'] / 1024:.2f} GiB in {r['phase']} ("
        + ", ".join(f"{k} {v / 1024:.2f}" for v, k in top)
        + ")"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="tiny,tiny_errors,smollm2")
    ap.add_argument("--result", action="append", default=[], help="NAME=result.json: reuse a finished run")
    ap.add_argument("--paper-8b", action="store_true", help="only the Llama-3.1-8B / 24 GB estimate")
    args = ap.parse_args()
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")

    big = paper_8b()
    worst = paper_8b(prompt=6144)
    big64 = paper_8b(batch=64)
    lines = [
        "Llama-3.1-8B, bf16, C4 512 x 2048, benchmark=paper (batch 4, max_length 8192), device=cuda, 24 GB GPU:",
        f"- GPU memory, longest prompt 4096: {_describe(big, 'gpu_mem')}",
        f"- GPU memory, prompts at the 6144-token cap: {_describe(worst, 'gpu_mem')}",
        f"- GPU memory, benchmark.batch_size=64: {_describe(big64, 'gpu_mem')}",
        f"- host RAM: {_describe(big, 'host_ram')}",
        f"- disk: {big['disk']['total_mb'] / 1024:.2f} GiB (compressed checkpoint "
        f"{big['disk']['save_model'] / 1024:.2f}, pruned cache {big['disk']['cache_pruned'] / 1024:.2f})",
        f"- check, 24 GB GPU + 64 GB host: {fits(big, 24, 64)}",
        f"- check, 24 GB GPU + 64 GB host, batch 64: {fits(big64, 24, 64)}",
        f"- check, 24 GB GPU + 24 GB host: {fits(big, 24, 24)}",
        f"- check, an A10 (24 GB = 22 GiB free) + 64 GB host: {fits(big, 22, 64)}",
        f"- check, an A10 + 64 GB host, batch 3: {fits(paper_8b(batch=3), 22, 64)}",
    ]
    if args.paper_8b:
        print("\n".join(lines))
        return

    given = dict(item.split("=", 1) for item in args.result)
    rows = []
    with tempfile.TemporaryDirectory(prefix="jcexp-preflight-") as tmp:
        for name in args.runs.split(","):
            overrides = RUNS[name]
            outputs = Path(tmp) / name
            cache = outputs / "cache"
            if name in given:  # the cache it ran with holds its converted model and tokenizer
                cache = Path(json.loads(Path(given[name]).read_text())["config"]["paths"]["cache_dir"])
            est = estimate(overrides, cache)
            result = measure(name, overrides, outputs, Path(given[name]) if name in given else None)
            measured = result["peak_rss_mb"]
            host = est["host_ram"]
            rows.append(
                {
                    "run": name,
                    "command": "launch.py " + " ".join([*overrides, "logger=none"]),
                    "measured MB": measured,
                    "estimated MB": host["peak_mb"],
                    "measured/estimated": round(measured / host["peak_mb"], 3),
                    "estimated peak": f"{host['phase']}: {host['dominant']}",
                    "within 25%": abs(measured / host["peak_mb"] - 1) <= LIMIT,
                    "stages": {k: v.get("peak_rss_mb") for k, v in result["stages"].items()},
                    "estimate": est,
                }
            )
    cols = [
        "run",
        "command",
        "measured MB",
        "estimated MB",
        "measured/estimated",
        "estimated peak",
        "within 25%",
    ]
    markdown = table(rows, cols) + "\n\n" + "\n".join(lines)
    write(
        "preflight_accuracy",
        {"runs": rows, "paper_8b": big, "paper_8b_cap": worst, "paper_8b_batch64": big64},
        markdown,
    )


if __name__ == "__main__":
    main()
