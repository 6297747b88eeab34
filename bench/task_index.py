"""What building lm-eval's TaskManager costs each run's process: lm-eval's full index (all of its task YAMLs plus
ours) against the index jcexp builds for the offline suites (our include paths only), alternating the two.

    python -m bench.task_index [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import table, write

OFFLINE = ["jc_lastword", "jc_nextsentence", "jc_prose_ppl"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)

    from lm_eval.tasks import TaskManager

    from jcexp.evaluate import BUILTIN_TASKS
    from jcexp.lm_eval_worker import make_task_manager

    paths = [str(BUILTIN_TASKS)]
    rows = []
    for rep in range(args.reps):
        t = time.perf_counter()
        full = TaskManager(include_path=paths)
        full_s = time.perf_counter() - t
        t = time.perf_counter()
        ours = make_task_manager(paths, OFFLINE)
        ours_s = time.perf_counter() - t
        rows.append(
            {
                "rep": rep,
                "full_index_s": round(full_s, 3),
                "full_index_tasks": len(full.all_tasks),
                "offline_index_s": round(ours_s, 4),
                "offline_index_tasks": len(ours.all_tasks),
            }
        )
    saved = statistics.median(r["full_index_s"] - r["offline_index_s"] for r in rows)
    markdown = "\n".join(
        [
            table(rows, list(rows[0])),
            "",
            f"median saving per TaskManager: **{saved:.1f} s** (one per run's process; sweep jobs, subprocess "
            "evaluators and SLURM tasks each build their own)",
            "",
            f"tasks: {', '.join(OFFLINE)} (benchmark=offline)",
        ]
    )
    write("task_index", {"rows": rows, "median_saving_s": saved}, markdown)


if __name__ == "__main__":
    main()
