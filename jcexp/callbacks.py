"""Hydra callbacks: a failed job leaves its traceback in its own directory; every multirun ends with the
report, then exits 1 naming the points that did not finish."""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from jcexp.records import FAILURE_FILE

log = logging.getLogger("jcexp")


class FailureRecorder(Callback):
    """Runs in the worker. Hydra catches a job's exception into its JobReturn and logs it nowhere."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED:
            return
        from hydra.core.hydra_config import HydraConfig

        from jcexp.results import atomic_write_json

        exc = job_return._return_value
        path = Path(HydraConfig.get().runtime.output_dir) / FAILURE_FILE
        atomic_write_json(
            path,
            {
                "overrides": list(job_return.overrides or []),
                "cause": f"{type(exc).__name__}: {exc}",
                "traceback": "".join(traceback.format_exception(exc)),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        log.error("job failed; traceback in %s", path)


BUDGET_STATE = "budget.json"  # jcexp.budget.STATE_FILE (not imported here: the callback stays light)


class _Skip(Exception):
    pass


class ReportCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from jcexp.records import collect_failures
        from jcexp.report import write_report

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            if (sweep_dir / BUDGET_STATE).exists():  # a budget race wrote its own report (budget.md)
                raise _Skip
            report = write_report(sweep_dir)
            log.info("sweep report: %s", report.markdown)
            self._track(config, report)
        except _Skip:
            pass
        except Exception as exc:  # noqa: BLE001 - a report failure must not hide the sweep's own outcome
            log.error("writing the sweep report failed: %s: %s", type(exc).__name__, exc)
        failures = collect_failures(sweep_dir)
        if failures:
            lines = [f"  {f['point']}: {f['cause'].splitlines()[0]} ({f['record']})" for f in failures]
            print(
                f"jcexp: {len(failures)} point(s) of the sweep failed:\n" + "\n".join(lines), file=sys.stderr
            )
            # Hydra turns a callback's exception into a warning (exit 0); SystemExit is the one way out.
            raise SystemExit(1)

    @staticmethod
    def _track(config: DictConfig, report: Any) -> None:
        from hydra.utils import instantiate

        tracker = instantiate(config.logger)
        info = tracker.log_sweep(
            report, name=f"summary_{config.logger.group or 'sweep'}", tags=list(config.get("tags") or [])
        )
        log.info("sweep summary run: %s", info)
