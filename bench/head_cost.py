"""Where a scoring forward's time goes: the transformer blocks, the lm_head, and the log-softmax lm-eval takes
over the whole vocabulary, for SmolLM2-135M (49,152 tokens) and Gemma 3 270M (262,144 tokens), in one run.

    python -m bench.head_cost [--batch 8] [--seq-len 256] [--repeats 3]

Both models score the same held-out prose (the offline suite's evaluation paragraphs), batch x seq_len tokens,
float32 on the CPU, after one warm-up pass; each figure is the median of the repeats. The share of the head and
softmax in the forward is what the 262k-token vocabulary costs at evaluation; the ratio of the two models'
whole forwards is how much slower Gemma's evaluation is per token.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import table, write

MODELS = ("smollm2_135m", "gemma3_270m")


def _timed(fn, repeats: int) -> tuple[float, Any]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def measure(model_name: str, batch: int, seq_len: int, repeats: int, cache_dir: str) -> dict[str, Any]:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import jcexp.config  # noqa: F401  (schema + resolvers)
    from bench.common import ROOT
    from jcexp.data import prose_split

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "config", overrides=[f"model={model_name}", "logger=none", f"paths.cache_dir={cache_dir}"]
        )
    model, tok = instantiate(cfg.model.source).load()
    text = " ".join(prose_split("eval"))
    ids = tok(text, return_tensors="pt")["input_ids"][0]
    ids = ids[: batch * seq_len].reshape(batch, seq_len)
    with torch.inference_mode():
        body_s, hidden = _timed(lambda: model.model(ids).last_hidden_state, repeats)
        head_s, logits = _timed(lambda: model.lm_head(hidden), repeats)
        softmax_s, _ = _timed(lambda: torch.log_softmax(logits, dim=-1), repeats)
        full_s, _ = _timed(lambda: torch.log_softmax(model(ids).logits, dim=-1), repeats)
    tokens = batch * seq_len
    return {
        "model": model_name,
        "vocabulary": int(model.config.vocab_size),
        "parameters (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "blocks s": round(body_s, 3),
        "lm_head s": round(head_s, 3),
        "log-softmax s": round(softmax_s, 3),
        "whole forward + log-softmax s": round(full_s, 3),
        "head + softmax share": round((head_s + softmax_s) / (body_s + head_s + softmax_s), 3),
        "ms per token": round(1000 * full_s / tokens, 3),
        "logits MB": round(logits.numel() * logits.element_size() / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", default="outputs/cache", help="where the converted models are cached")
    args = parser.parse_args(argv)
    rows = [
        measure(m, args.batch, args.seq_len, args.repeats, str(Path(args.cache_dir).resolve()))
        for m in MODELS
    ]
    ratio = rows[1]["whole forward + log-softmax s"] / rows[0]["whole forward + log-softmax s"]
    md = (
        f"`python -m bench.head_cost --batch {args.batch} --seq-len {args.seq_len} --repeats {args.repeats}`"
        f" (median of {args.repeats} after a warm-up; float32, CPU)\n\n"
        + table(rows, list(rows[0]))
        + f"\n\nGemma 3 270M's scoring forward takes {ratio:.2f}x SmolLM2-135M's on the same tokens.\n"
    )
    write("head_cost", {"settings": vars(args), "rows": rows, "gemma_over_smollm2": round(ratio, 3)}, md)
    print(md)


if __name__ == "__main__":
    main()
