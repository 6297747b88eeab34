"""Evaluation at the compute floor (issue 28): lm-eval's stock HFLM against jcexp's FloorHFLM (jcexp/hf_floor.py)
on the same in-memory model, per model and task: seconds, the largest loglikelihood difference, the items whose
value changed (must be 0), and the FLOPs per item each path computes beside the CPU's measured matmul rate.

    python -m bench.eval_floor                                   # SmolLM2 and Gemma 3 270M (HEAVY: flock)
    python -m bench.eval_floor --models tiny_random,tiny_gemma3  # seconds: checks the script runs
    python -m bench.eval_floor --synthetic-items 8 --options 10 --shots 5

Two workloads per model:
- the offline suite, whole (conf/benchmark/offline.yaml: jc_lastword, jc_nextsentence, jc_prose_ppl), each task
  evaluated by jcexp's own path (lm_eval_worker.evaluate_lm) once with each class, stock first;
- the paper suite's shape, synthetic: ``--synthetic-items`` k-way choice items (``--options``, MMLU-Pro's 10)
  whose contexts are ``--shots`` worked examples plus a question, built from the held-out prose; an item is
  correct when its first option has the highest loglikelihood.

FLOPs: 2 x (parameters of the decoder's Linears) per position run through the blocks, plus attention's 4 x
layers x heads x head_dim x (positions attended), plus 2 x hidden x vocab per position the head runs on, counted
from the token-level requests each path sees: stock runs every request's whole input (its one-token-continuation
cache shares those with equal context and continuation[:-1]), the floor each distinct prefix once and each
distinct tail once, the head on the tails only. Padding is not counted: the floor figure is the work no scoring
method can skip. ``floor_s``: the new path's FLOPs at the measured matmul rate.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, table, write

MODELS = ("smollm2_135m", "gemma3_270m")


def matmul_rate(n: int = 1024, repeats: int = 5) -> float:
    """float32 FLOP/s of a square matmul on this CPU (median of ``repeats`` after a warm-up)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


class PeakRss:
    """The peak RSS of this process above its level at the start (sampled every 20 ms), freed heap given back
    to the system first (glibc's malloc_trim), so that an earlier evaluation's freed blocks do not hide this
    one's growth."""

    def __enter__(self):
        import ctypes
        import gc
        import threading

        import psutil

        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.done = threading.Event()

        def sample() -> None:
            while not self.done.wait(0.02):
                self.peak = max(self.peak, self.proc.memory_info().rss)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mb = round((self.peak - self.base) / 2**20, 1)


TRANSIENT = ("logits", "log_softmax", "activations", "kv_cache")


def estimated_transient(model, tokenizer, bench, seed: int, floor: bool) -> float:
    """The preflight's evaluation transient for this benchmark (jcexp/memory.py: logits, log-probs, one layer's
    activations, the floor's keys and values), in MiB: what the sampled peak is compared with."""
    from jcexp import memory
    from jcexp.evaluate import build_tasks

    shapes = memory.ModelShapes.from_skeleton(model, model.config, str(model.dtype).removeprefix("torch."))
    ev = memory.eval_load(bench, build_tasks(bench), tokenizer, int(bench.max_length), seed)
    work = memory.Workload(
        eval_device="cpu",
        compress_device="cpu",
        prune=False,
        quant=False,
        quant_calibrated=False,
        calib_samples=1,
        calib_seq_len=1,
        eval=ev,
        save_model=False,
        eval_floor=floor,
    )
    phase = next(p for p in memory.estimate(shapes, work).phases if p.name == "eval_dense")
    return round(sum(phase.host.get(k, 0) for k in TRANSIENT) / 2**20, 1)


class Shapes:
    """What the FLOP count needs from the model."""

    def __init__(self, model):
        import torch

        text = model.config.get_text_config()
        self.linear = sum(
            m.in_features * m.out_features
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and "lm_head" not in name
        )
        self.layers = int(text.num_hidden_layers)
        self.attn = int(text.num_attention_heads) * int(getattr(text, "head_dim", None) or 0 or 1)
        if not getattr(text, "head_dim", None):
            self.attn = int(text.hidden_size)
        self.window = getattr(text, "sliding_window", None)
        self.head = int(text.hidden_size) * int(text.vocab_size)

    def body(self, start: int, n: int) -> float:
        """Positions start..start+n-1 through the blocks, each attending to every earlier position."""
        attended = n * start + n * (n + 1) / 2
        return 2 * self.linear * n + 4 * self.layers * self.attn * attended


def flops(
    requests: list[tuple[Any, list[int], list[int]]], shapes: Shapes, max_length: int
) -> tuple[float, float]:
    """(stock, floor) FLOPs of these token-level loglikelihood requests (module docstring)."""
    from jcexp.hf_floor import split

    stock_inputs = {}
    prefixes, tails = set(), set()
    for _, ctx, cont in requests:
        whole = (ctx + cont)[-(max_length + 1) :][:-1]
        stock_inputs[tuple(whole[: len(whole) - len(cont) + 1]) + tuple(cont[:-1])] = len(whole)
        prefix, tail = split(ctx, cont, max_length)
        prefixes.add(tuple(prefix))
        tails.add((tuple(prefix), tuple(tail)))
    stock = sum(shapes.body(0, n) + shapes.head * n for n in stock_inputs.values())
    floor = sum(shapes.body(0, len(p)) for p in prefixes)
    floor += sum(shapes.body(len(p), len(t)) + shapes.head * len(t) for p, t in tails)
    return stock, floor


def _recording(lm):
    """Record the token-level loglikelihood requests and the (loglikelihood, is_greedy) answers of ``lm``."""
    seen: dict[str, list] = {"tokens": [], "answers": []}
    tokens, loglikelihood = lm._loglikelihood_tokens, lm.loglikelihood

    def _loglikelihood_tokens(requests, *args, **kwargs):
        if requests and requests[0][0] is not None:  # not rolling windows
            seen["tokens"].extend(requests)
        return tokens(requests, *args, **kwargs)

    def recorded(requests, disable_tqdm=False):
        out = loglikelihood(requests, disable_tqdm=disable_tqdm)
        seen["answers"].extend(zip([r.args for r in requests], out, strict=True))
        return out

    lm._loglikelihood_tokens, lm.loglikelihood = _loglikelihood_tokens, recorded
    return seen


def _lm(floor: bool, model, tokenizer, bench):
    from lm_eval.models.huggingface import HFLM

    from jcexp.hf_floor import FloorHFLM

    cls = FloorHFLM if floor else HFLM
    return cls(
        pretrained=model, tokenizer=tokenizer, batch_size=bench.batch_size, max_length=bench.max_length
    )


def suite_task(model, tokenizer, cfg, task: str, shapes: Shapes, repeats: int = 1) -> dict[str, Any]:
    """One task of the offline suite through lm_eval_worker.evaluate_lm, stock then floor."""
    from jcexp import lm_eval_worker as worker
    from jcexp.evaluate import make_spec, task_manager

    bench = cfg.benchmark
    scores = {k: v for k, v in bench.scores.items() if k == task}
    ppl = {k: v for k, v in bench.perplexity.items() if k == task}
    bench = copy.deepcopy(bench)
    bench.scores, bench.perplexity = scores, ppl  # assignment replaces (a merge would keep the other tasks)
    runs, peaks = {}, {}
    for rep, floor in [(r, f) for r in range(repeats) for f in (False, True)]:  # alternating
        lm = _lm(floor, model, tokenizer, bench)
        seen = _recording(lm)
        spec = make_spec(bench, int(cfg.seed), backend="hf", model_args=None, batch_size=bench.batch_size)
        with PeakRss() as rss:
            start = time.perf_counter()
            out = worker.evaluate_lm(lm, spec, task_manager(bench))
            seconds = time.perf_counter() - start
        # the fastest repeat: the least disturbed by whatever else shares the cores
        runs[floor] = (min(seconds, runs.get(floor, (seconds,))[0]), out, seen)
        if rep == 0:
            peaks[floor] = (rss.mb, estimated_transient(model, tokenizer, bench, int(cfg.seed), floor))
        del lm
    (stock_s, stock, stock_seen), (new_s, new, new_seen) = runs[False], runs[True]
    # The benchmark's metric of the task, per item: correctness for the scored tasks, the rolling perplexity's
    # per-document value for jc_prose_ppl (its other metrics are loglikelihoods, compared below).
    metric = {**scores, **ppl}[task]
    entry, other = stock["items"][task][metric], new["items"][task][metric]
    assert other["ids"] == entry["ids"], metric
    n_items = len(entry["ids"])
    changed = sum(a != b for a, b in zip(entry["values"], other["values"], strict=True))
    diffs = [abs(a[1][0] - b[1][0]) for a, b in zip(stock_seen["answers"], new_seen["answers"], strict=True)]
    greedy = sum(a[1][1] != b[1][1] for a, b in zip(stock_seen["answers"], new_seen["answers"], strict=True))
    stock_f, new_f = flops(stock_seen["tokens"], shapes, int(bench.max_length)) if diffs else (0.0, 0.0)
    return {
        "task": task,
        "items": n_items,
        "loglikelihood_requests": len(diffs),
        "stock_s": round(stock_s, 2),
        "new_s": round(new_s, 2),
        "speedup": round(stock_s / new_s, 2),
        "max_abs_loglik_diff": max(diffs, default=0.0),
        "greedy_changed": int(greedy),
        "items_changed": int(changed),
        "stock_gflop_per_item": round(stock_f / n_items / 1e9, 3),
        "new_gflop_per_item": round(new_f / n_items / 1e9, 3),
        "_new_flops": new_f,
        "stock_peak_mb": peaks[False][0],
        "stock_estimated_mb": peaks[False][1],
        "new_peak_mb": peaks[True][0],
        "new_estimated_mb": peaks[True][1],
    }


def synthetic(
    model,
    tokenizer,
    cfg,
    items: int,
    options: int,
    shots: int,
    shapes: Shapes,
    repeats: int = 1,
    batch: int = 2,
) -> dict[str, Any]:
    """The paper suite's shape (k-way choice, few-shot contexts) on synthetic requests from held-out prose."""
    import random

    from lm_eval.api.instance import Instance

    from jcexp.data import prose_split

    rng = random.Random(0)
    sentences = [s.strip() + "." for p in prose_split("eval") for s in p.split(". ") if len(s.split()) > 4]

    def question() -> tuple[str, list[str]]:
        # MMLU-Pro-like: a question and short options (ten words at most each)
        picked = rng.sample(sentences, options + 1)
        picked = [" ".join(s.split()[: 20 if i == 0 else 10]) for i, s in enumerate(picked)]
        letters = "ABCDEFGHIJKLMNOP"[:options]
        body = f"Which sentence follows?\n{picked[0]}\n" + "".join(
            f"{letters[i]}. {s}\n" for i, s in enumerate(picked[1:])
        )
        return body + "Answer:", [" " + s for s in picked[1:]]

    reqs = []
    for item in range(items):
        shots_text = "".join(f"{q} {conts[0].strip()}\n\n" for q, conts in (question() for _ in range(shots)))
        q, conts = question()
        reqs += [
            Instance("loglikelihood", {}, (shots_text + q, c), item * options + i)
            for i, c in enumerate(conts)
        ]
    runs = {}
    bench = copy.deepcopy(cfg.benchmark)
    bench.batch_size = batch  # stock's logits at batch 8 on Gemma 3 (8 x ~1000 x 262k x 3) outgrow 24 GiB
    for floor in [f for _ in range(repeats) for f in (False, True)]:  # alternating
        lm = _lm(floor, model, tokenizer, bench)
        seen = _recording(lm)
        start = time.perf_counter()
        out = lm.loglikelihood(reqs, disable_tqdm=True)
        seconds = time.perf_counter() - start
        runs[floor] = (min(seconds, runs.get(floor, (seconds,))[0]), out, seen)
    (stock_s, stock, seen), (new_s, new, _) = runs[False], runs[True]

    def picks(answers):
        return [max(range(options), key=lambda i: answers[k * options + i][0]) for k in range(items)]

    stock_f, new_f = flops(seen["tokens"], shapes, int(cfg.benchmark.max_length))
    return {
        "task": f"synthetic {options}-way, {shots}-shot, batch {batch}",
        "items": items,
        "loglikelihood_requests": len(reqs),
        "stock_s": round(stock_s, 2),
        "new_s": round(new_s, 2),
        "speedup": round(stock_s / new_s, 2),
        "max_abs_loglik_diff": max(abs(a[0] - b[0]) for a, b in zip(stock, new, strict=True)),
        "greedy_changed": sum(a[1] != b[1] for a, b in zip(stock, new, strict=True)),
        "items_changed": sum(a != b for a, b in zip(picks(stock), picks(new), strict=True)),
        "stock_gflop_per_item": round(stock_f / items / 1e9, 3),
        "new_gflop_per_item": round(new_f / items / 1e9, 3),
        "_new_flops": new_f,
        "context_tokens": round(statistics.mean(len(c) for _, c, _ in seen["tokens"])),
    }


def measure(name: str, args, rate: float) -> list[dict[str, Any]]:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import jcexp.config  # noqa: F401  (schema + resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        overrides = [f"model={name}", "benchmark=offline", "logger=none", f"paths.cache_dir={args.cache_dir}"]
        cfg = compose("config", overrides=overrides + list(args.override))
    model, tokenizer = instantiate(cfg.model.source).load()
    model.eval()
    shapes = Shapes(model)
    rows = []
    tasks = [*cfg.benchmark.scores, *cfg.benchmark.perplexity]
    for task in tasks:
        rows.append(suite_task(model, tokenizer, cfg, task, shapes, args.repeats))
        print(rows[-1], flush=True)
    if args.synthetic_items:
        rows.append(
            synthetic(
                model,
                tokenizer,
                cfg,
                args.synthetic_items,
                args.options,
                args.shots,
                shapes,
                args.repeats,
                args.synthetic_batch,
            )
        )
        print(rows[-1], flush=True)
    suite = [r for r in rows if r["task"] in tasks]
    rows.append(
        {
            "task": "offline suite (sum)",
            "items": sum(r["items"] for r in suite),
            "stock_s": round(sum(r["stock_s"] for r in suite), 2),
            "new_s": round(sum(r["new_s"] for r in suite), 2),
            "speedup": round(sum(r["stock_s"] for r in suite) / sum(r["new_s"] for r in suite), 2),
            "max_abs_loglik_diff": max(r["max_abs_loglik_diff"] for r in suite),
            "items_changed": sum(r["items_changed"] for r in suite),
            "_new_flops": sum(r["_new_flops"] for r in suite),
        }
    )
    for row in rows:
        row["model"] = name
        new_flops = row.pop("_new_flops")
        row["floor_s"] = round(new_flops / rate, 2)
        row["new_over_floor"] = round(row["new_s"] / row["floor_s"], 1) if row["floor_s"] else None
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--synthetic-items", type=int, default=8)
    parser.add_argument("--options", type=int, default=10)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--synthetic-batch", type=int, default=2, help="batch size of the synthetic requests")
    parser.add_argument("--repeats", type=int, default=1, help="stock and floor alternated; the fastest kept")
    parser.add_argument("--cache-dir", default="outputs/cache", help="where the converted models are cached")
    parser.add_argument("--override", action="append", default=[], help="a Hydra override for every model")
    parser.add_argument("--name", default=None, help="result name (default eval_floor, or with the models)")
    args = parser.parse_args(argv)
    args.cache_dir = str(Path(args.cache_dir).resolve())
    os.environ["DISABLE_MULTIPROC"] = "1"
    import torch

    torch.manual_seed(0)
    rate = matmul_rate()
    rows = []
    name = args.name or (
        "eval_floor" if args.models == ",".join(MODELS) else "eval_floor_" + args.models.replace(",", "_")
    )

    def report() -> None:
        """The rows so far: written after each model, so that a later one that fails keeps the earlier."""
        columns = [
            "model",
            "task",
            "items",
            "stock_s",
            "new_s",
            "speedup",
            "max_abs_loglik_diff",
            "items_changed",
            "stock_gflop_per_item",
            "new_gflop_per_item",
            "floor_s",
            "new_over_floor",
        ]
        memory_columns = [
            "model",
            "task",
            "stock_peak_mb",
            "stock_estimated_mb",
            "new_peak_mb",
            "new_estimated_mb",
        ]
        cmd = " ".join(["python -m bench.eval_floor", *(sys.argv[1:] if argv is None else argv)])
        md = (
            f"`{cmd}`: stock lm-eval HFLM then jcexp's FloorHFLM on the same in-memory model (float32, CPU, "
            f"benchmark=offline's batch size and max_length), {args.repeats} alternating run(s) each, the fastest "
            f"kept; floor_s = the new path's FLOPs at the "
            f"measured float32 matmul rate, {rate / 1e9:.1f} GFLOP/s (1024^3, median of 5)\n\n"
            + table(rows, columns)
            + "\n\nEvaluation memory: the peak RSS above the level before each task's evaluation (sampled every 20 "
            "ms, freed heap trimmed first) beside the preflight's transient (jcexp/memory.py: logits, log-probs, one "
            "layer's activations, the floor's keys and values) for that task alone\n\n"
            + table([r for r in rows if "stock_peak_mb" in r], memory_columns)
        )
        write(name, {"settings": vars(args), "matmul_gflops": round(rate / 1e9, 2), "rows": rows}, md)

    for model_name in args.models.split(","):
        rows += measure(model_name, args, rate)
        report()


if __name__ == "__main__":
    main()
