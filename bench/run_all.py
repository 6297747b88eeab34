"""Every benchmark, one after another (never in parallel: they would measure each other):

    python -m bench.run_all            # or: make bench

Each writes bench/results/<name>.json and .md; docs/performance.md quotes them.
"""

from __future__ import annotations

import sys

from bench import estimate, eval_throughput, grid, overhead, render, stages, task_builds, task_index


def main() -> None:
    for bench in (task_index, task_builds, overhead, stages, eval_throughput, grid, estimate):
        print(f"\n== bench.{bench.__name__.rpartition('.')[2]}", flush=True)
        bench.main([])
    render.main()
    print("\nresults in bench/results/", file=sys.stderr)


if __name__ == "__main__":
    main()
