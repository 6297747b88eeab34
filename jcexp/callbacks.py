"""Hydra callbacks: the report is written at the end of every multirun, whatever the launcher."""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("jcexp")


class ReportCallback(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from jcexp.report import write_report

        try:
            path = write_report(config.hydra.sweep.dir)
            log.info("sweep report: %s", path)
        except Exception as exc:  # noqa: BLE001 - a report failure must not turn a finished sweep into an error
            log.error("writing the sweep report failed: %s: %s", type(exc).__name__, exc)
