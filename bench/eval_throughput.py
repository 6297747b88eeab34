"""Evaluation throughput of lm-eval on the dense SmolLM2-135M: examples per second for a log-likelihood task
(jc_nextsentence, 4 choices each) and a generation task (jc_lastword_gen, greedy, up to 8 tokens), for each
batch size.

    python -m bench.eval_throughput [--batch-sizes 1,8,32] [--limit 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import table, write
from bench.overhead import checkpoint_dir

TASKS = {"loglikelihood": "jc_nextsentence", "generation": "jc_lastword_gen"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--limit", type=int, default=64)
    args = parser.parse_args(argv)
    os.environ["DISABLE_MULTIPROC"] = "1"

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from jcexp.evaluate import BUILTIN_TASKS
    from jcexp.models import ModelSource

    work = Path(tempfile.mkdtemp(prefix="jcexp-bench-eval-"))
    model, tokenizer = ModelSource._load_dir(checkpoint_dir(work / "warm"), "float32")
    manager = TaskManager(include_path=[str(BUILTIN_TASKS)])
    rows = []
    for kind, task in TASKS.items():
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=bs, max_length=2048)
            start = time.perf_counter()
            res = lm_eval.simple_evaluate(
                model=lm,
                tasks=[task],
                limit=args.limit,
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=100,
                random_seed=0,
                numpy_random_seed=0,
                torch_random_seed=0,
            )
            seconds = time.perf_counter() - start
            n = int(res["n-samples"][task]["effective"])
            rows.append(
                {
                    "kind": kind,
                    "task": task,
                    "batch_size": bs,
                    "examples": n,
                    "seconds": round(seconds, 2),
                    "examples_per_s": round(n / seconds, 2),
                }
            )
    md = table(rows, ["kind", "task", "batch_size", "examples", "seconds", "examples_per_s"])
    md += "\n\nsettings: SmolLM2-135M dense, float32, CPU; one example of jc_nextsentence is 4 log-likelihood requests"
    write("eval_throughput", {"settings": vars(args), "rows": rows}, md)


if __name__ == "__main__":
    main()
