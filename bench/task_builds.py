"""What building lm-eval's tasks costs a run's process at start-up: every consumer building its own (before
issue 20: the plan's document check, the preflight's request sizing and each in-process evaluation's set-up)
against the plan building them once and the others taking a fresh copy (jcexp.evaluate.BuiltTasks), alternating
the two in one process.

    python -m bench.task_builds [--reps 5] [--benchmarks offline,mmlu] [--evaluations 2]

Both sides run the same functions: the plan's build (jcexp.evaluate.build_tasks), the preflight's request sizing
(jcexp.memory.eval_load, no tokenizer) and the evaluator's task set-up (what jcexp.lm_eval_worker.evaluate_lm
does before simple_evaluate), handed either tasks that build themselves again or the plan's, which copy. A run
evaluates twice in process (the dense baseline, the compressed model); the TaskManager index is built once
before timing (bench/task_index.py measures it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.common import ROOT, table, write


class Rebuilt:
    """Tasks that build themselves again whenever a consumer asks (each consumer its own build, as before)."""

    def __init__(self, bench):
        self.bench = bench

    def fresh(self) -> list[Any]:
        from jcexp import lm_eval_worker as worker
        from jcexp.evaluate import make_spec, task_manager

        spec = make_spec(self.bench, 0)  # as lm_eval_worker.evaluate_lm builds them from its spec
        items = worker.load_tasks(list(spec["tasks"]), task_manager(self.bench))
        worker.apply_generation(items, spec["gen_kwargs"], spec["generation"])
        return items


def startup(bench, once: bool, evaluations: int) -> dict[str, float]:
    """Seconds of each start-up step that touches the tasks, and how many times the tasks were built."""
    from jcexp import lm_eval_worker as worker
    from jcexp.evaluate import build_tasks
    from jcexp.memory import eval_load

    builds = 0
    real = worker.load_tasks

    def counted(names, manager):
        nonlocal builds
        builds += 1
        return real(names, manager)

    worker.load_tasks = counted
    try:
        t = time.perf_counter()
        built = build_tasks(bench)  # the plan: data loaded, generation applied, documents counted
        plan_s = time.perf_counter() - t
        builds = 0
        tasks = built if once else Rebuilt(bench)
        t = time.perf_counter()
        eval_load(bench, tasks, None, int(bench.max_length or 2048), 0)  # the preflight's request sizing
        preflight_s = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(evaluations):  # each in-process evaluation's tasks, before simple_evaluate
            tasks.fresh()
        evaluator_s = time.perf_counter() - t
    finally:
        worker.load_tasks = real
    return {
        "plan_s": plan_s,
        "preflight_s": preflight_s,
        "evaluator_s": evaluator_s,
        "total_s": plan_s + preflight_s + evaluator_s,
        # The plan's build (one load_tasks call per benchmark task), then each build by another consumer.
        "builds": 1 + builds,
    }


def compose(benchmark: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import jcexp.config  # noqa: F401  (schema + resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=[f"benchmark={benchmark}", "logger=none"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--benchmarks", default="offline,mmlu")
    parser.add_argument("--evaluations", type=int, default=2, help="in-process evaluations per run")
    args = parser.parse_args(argv)

    from jcexp.evaluate import build_tasks, task_manager

    rows, summary = [], []
    for name in args.benchmarks.split(","):
        bench = compose(name).benchmark
        task_manager(bench)  # the index, built once per process either way
        build_tasks(bench)  # warm: the first build reads the data files cold, in both variants the plan's
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        for rep in range(args.reps):
            order = ("before", "after") if rep % 2 == 0 else ("after", "before")
            for variant in order:
                runs[variant].append(startup(bench, variant == "after", args.evaluations))
        medians = {}
        for variant, got in runs.items():
            med = {k: statistics.median(r[k] for r in got) for k in got[0]}
            medians[variant] = med
            rows.append(
                {
                    "benchmark": name,
                    "variant": "each builds its own" if variant == "before" else "plan builds, others copy",
                    "builds": int(med["builds"]),
                    "plan_ms": round(1000 * med["plan_s"], 1),
                    "preflight_ms": round(1000 * med["preflight_s"], 1),
                    "evaluator_ms": round(1000 * med["evaluator_s"], 1),
                    "total_ms": round(1000 * med["total_s"], 1),
                }
            )
        saved = medians["before"]["total_s"] - medians["after"]["total_s"]
        summary.append(
            {
                "benchmark": name,
                "documents": sum(build_tasks(bench).documents.values()),
                "saved_ms": round(1000 * saved, 1),
                "share_saved": round(saved / medians["before"]["total_s"], 3),
                "runs": runs,
            }
        )
    lines = [
        table(rows, list(rows[0])),
        "",
        *(
            f"{s['benchmark']} ({s['documents']} documents): **{s['saved_ms']:.0f} ms** saved per run's process "
            f"({100 * s['share_saved']:.0f}% of these steps), medians of {args.reps} repetitions"
            for s in summary
        ),
        "",
        f"builds: the suite built by the plan, the preflight and {args.evaluations} in-process evaluations "
        "(dense, compressed); a subprocess evaluator's child builds its own either way",
    ]
    write(
        "task_builds", {"rows": rows, "summary": summary, "evaluations": args.evaluations}, "\n".join(lines)
    )


if __name__ == "__main__":
    main()
