"""Experiment tracking. W&B failures are caught and reported: the local result.json is written first and
is never lost to a tracking error."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def flat_config(result: dict[str, Any]) -> dict[str, Any]:
    """The keys users filter runs by in the W&B UI, flat."""
    c = result["compression"]
    return {
        "model": result["model"]["name"],
        "pruner": c["pruner"].get("name"),
        "sparsity": c["pruner"].get("sparsity", 0.0),
        "mask": c["pruner"].get("mask"),
        "quant": c["quant"].get("name"),
        "bits": c["quant"].get("bits", 16),
        "group_size": c["quant"].get("group_size"),
        "case": c["quant"].get("case"),
        "actorder": c["quant"].get("actorder"),
        "calibration": result["calibration"]["name"],
        "benchmark": result["benchmark"]["name"],
        "seed": result["seed"],
        "config_hash": result["config_hash"],
    }


class NullTracker:
    def __init__(self, name: str = "none", **_: Any):
        self.name = name

    def log_run(self, result: dict[str, Any], run_name: str, config: dict[str, Any]) -> dict[str, Any]:
        return {"backend": self.name, "status": "disabled"}

    def log_sweep(self, report: Any, name: str, tags: list[str] | None = None) -> dict[str, Any]:
        return {"backend": self.name, "status": "disabled"}

    def log_budget(self, state: dict[str, Any], plot: Path, name: str, tags: list[str] | None = None):
        return {"backend": self.name, "status": "disabled"}


class WandbTracker:
    def __init__(
        self,
        name: str = "wandb",
        project: str = "jcexp",
        entity: str | None = None,
        mode: str = "offline",
        group: str | None = None,
        tags: list[str] | None = None,
        dir: str = ".",
    ):
        self.name, self.project, self.entity, self.mode = name, project, entity, mode
        self.group, self.tags, self.dir = group, list(tags or []), dir

    def log_run(self, result: dict[str, Any], run_name: str, config: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._log(result, run_name, config)
        except Exception as exc:  # noqa: BLE001 - any tracking failure must leave the run's result intact
            log.error("W&B logging failed (result.json is intact): %s: %s", type(exc).__name__, exc)
            return {"backend": self.name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}

    def log_sweep(self, report: Any, name: str, tags: list[str] | None = None) -> dict[str, Any]:
        """One summary run per sweep, in the sweep's group: the report's tables and plots. ``tags``: the sweep
        config's top-level tags, added to logger.tags as for each run."""
        try:
            return self._log_sweep(report, name, tags)
        except Exception as exc:  # noqa: BLE001 - the report files are written already; W&B is a copy
            log.error("W&B sweep summary failed (report.md is intact): %s: %s", type(exc).__name__, exc)
            return {"backend": self.name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}

    def log_budget(
        self, state: dict[str, Any], plot: Path, name: str, tags: list[str] | None = None
    ) -> dict[str, Any]:
        """One run per budget race (jcexp/budget.py): the winner (or the unseparated survivors), every
        candidate's Sr and interval, the Pareto frontier and the plot."""
        try:
            return self._log_budget(state, plot, name, tags)
        except Exception as exc:  # noqa: BLE001 - budget.md is written already; W&B is a copy
            log.error("W&B budget summary failed (budget.md is intact): %s: %s", type(exc).__name__, exc)
            return {"backend": self.name, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}

    def _log_budget(self, state: dict[str, Any], plot: Path, name: str, tags: list[str] | None):
        import wandb

        r = state["race"]
        run = self._init(
            tags=tags,
            name=name,
            job_type="budget-race",
            config={"target": state["target"], "space": state["space"], "margin": r["margin"]},
        )
        columns = [
            "candidate",
            "tcr",
            "bits_per_weight",
            "sr",
            "sr_lo",
            "sr_hi",
            "rounds",
            "items",
            "alive",
            "why",
            "verdict",  # jcexp/race.py: winner, screened out, dropped, equivalent, no claim
            "reason",
            "kl",  # geometric-mean per-document KL to dense, nats/token (the race's screen)
            "kl_ratio",  # its KL / the KL leader's, with the screen's interval
            "kl_ratio_lo",
            "kl_ratio_hi",
        ]
        rows = []
        for c in state["candidates"]:
            s = r["standings"][c["name"]]
            ci = s["sr_ci"] or [None, None]
            rows.append(
                [
                    c["name"],
                    c["tcr"],
                    c.get("bits_per_weight"),
                    s["sr"],
                    *ci,
                    s["rounds"],
                    s["items"],
                    s["alive"],
                    s["why"],
                    s.get("verdict"),
                    s.get("reason"),
                    s.get("kl"),
                    s.get("kl_ratio"),
                    *(s.get("kl_ratio_ci") or [None, None]),
                ]
            )
        payload: dict[str, Any] = {
            "candidates": wandb.Table(columns=columns, data=rows),
            "frontier": wandb.Table(columns=["candidate"], data=[[n] for n in state.get("frontier") or []]),
        }
        if Path(plot).is_file():
            payload["plots/budget"] = wandb.Image(str(plot))
        run.log(payload)
        run.summary.update(
            {
                "outcome": r["outcome"],
                "claim": r.get("claim"),
                "winner": r["winner"],
                "unseparated": ", ".join(r["unseparated"]),
                "screened_out": ", ".join(r.get("screened_out") or []),
                "frontier": ", ".join(state.get("frontier") or []),
                "items_share": state["items"]["share"],
            }
        )
        return self._finish(run)

    def run_tags(self, tags: list[str] | None) -> list[str]:
        """The W&B run's tags: the config's top-level ``tags`` (every experiment sets them), then logger.tags;
        each once, in that order."""
        return list(dict.fromkeys(str(t) for t in [*(tags or []), *self.tags]))

    def _init(self, tags: list[str] | None = None, **kwargs: Any) -> Any:
        import wandb

        Path(self.dir).mkdir(parents=True, exist_ok=True)
        # Even offline, wandb writes under ~/.cache and ~/.local/share: keep it all under our output root.
        for var, sub in (("WANDB_CACHE_DIR", ".wandb-cache"), ("WANDB_DATA_DIR", ".wandb-data")):
            os.environ.setdefault(var, str(Path(self.dir) / sub))
        return wandb.init(
            project=self.project,
            entity=self.entity,
            mode=self.mode,
            group=self.group,
            tags=self.run_tags(tags),
            dir=self.dir,
            reinit="finish_previous",
            **kwargs,
        )

    def _finish(self, run: Any) -> dict[str, Any]:
        info = {
            "backend": self.name,
            "status": "logged",
            "mode": self.mode,
            "run_id": run.id,
            "dir": run.dir,
            "group": self.group,
            "tags": list(run.tags or []),
        }
        run.finish()
        return info

    def _log_sweep(self, report: Any, name: str, tags: list[str] | None) -> dict[str, Any]:
        import wandb

        run = self._init(
            tags=tags, name=name, job_type="sweep-summary", config={"sweep_counts": report.counts}
        )
        columns = sorted(
            {k for row in report.rows for k in row}, key=lambda k: (k not in ("model", "config"), k)
        )
        payload: dict[str, Any] = {
            "scores": wandb.Table(
                columns=columns, data=[[row.get(c) for c in columns] for row in report.rows]
            ),
            "verdict": wandb.Table(columns=["verdict"], data=[[line] for line in report.verdict]),
            "failed_points": wandb.Table(
                columns=["point", "cause", "record"],
                data=[[f["point"], f["cause"], f["record"]] for f in report.failures],
            ),
        }
        payload.update({f"plots/{p.stem}": wandb.Image(str(p)) for p in report.plots})
        run.log(payload)
        run.summary.update({f"count/{k}": v for k, v in report.counts.items()})
        # The verdict's words, as report.md says them (jcexp/verdicts.py), and the margin they were read with.
        run.summary.update({f"verdict/{k}": w for k, w in getattr(report, "verdict_words", {}).items()})
        run.summary["equivalence_margin"] = getattr(report, "margin", None)
        return self._finish(run)

    def _log(self, result: dict[str, Any], run_name: str, config: dict[str, Any]) -> dict[str, Any]:
        import wandb

        run = self._init(
            tags=config.get("tags"), name=run_name, config={**flat_config(result), "full": config}
        )
        summary = {k: v for k, v in result["metrics"].items() if isinstance(v, int | float) or v is None}
        summary.update(
            {f"sparsity/{k}": v for k, v in result["measured"]["sparsity"].items() if v is not None}
        )
        # The paired 95% intervals (jcexp/paired.py) as lo/hi fields, which W&B can chart and filter.
        for name in ("sr_ci", "sr1_ci"):
            ci = result["metrics"].get(name)
            if ci:
                summary[f"{name}_lo"], summary[f"{name}_hi"] = ci
        # Distribution-level retention beside Sr (record.distribution_retention): KL, top-1 agreement, flips.
        ret = result.get("retention") or {}
        for name in ("kld", "top1_agreement", "flip_rate"):
            summary[f"retention/{name}"] = ret.get(name)
        for name in ("kld_ci", "top1_agreement_ci"):
            if ret.get(name):
                summary[f"retention/{name}_lo"], summary[f"retention/{name}_hi"] = ret[name]
        for task, row in ((ret.get("flips") or {}).get("tasks") or {}).items():
            summary[f"retention/flips/{task}_correct_to_wrong"] = row["correct_to_wrong"]
            summary[f"retention/flips/{task}_wrong_to_correct"] = row["wrong_to_correct"]
        flips_all = (ret.get("flips") or {}).get("all") or {}
        summary.update(
            {f"retention/flips/{k}": flips_all.get(k) for k in ("correct_to_wrong", "wrong_to_correct")}
        )
        for task, row in result["tasks"].items():
            if row.get("retention_ci"):
                summary[f"retention_ci/{task}_lo"], summary[f"retention_ci/{task}_hi"] = row["retention_ci"]
        errors = result["measured"].get("errors") or {}
        summary.update({f"errors/{k}_rel": v["rel"] for k, v in (errors.get("stages") or {}).items()})
        if errors.get("case_ratio"):
            summary["errors/case_ratio_pooled"] = errors["case_ratio"]["pooled"]
        run.summary.update(summary)
        rows = [
            [
                t,
                s["metric"],
                s["value"],
                s["stderr"],
                s.get("chance"),
                s["baseline"],
                s["retention"],
                *(s.get("retention_ci") or [None, None]),
            ]
            for t, s in result["tasks"].items()
        ]
        table = wandb.Table(
            columns=["task", "metric", "score", "stderr", "chance", "dense", "retention", "ci_lo", "ci_hi"],
            data=rows,
        )
        payload = {"tasks": table}
        layers = result.get("layer_errors") or {}
        if layers.get("total"):
            stages = [k for k in ("prune", "quant", "total", "case_a", "case_b") if k in layers]
            payload["layer_errors"] = wandb.Table(
                columns=["layer", *(f"{k}_rel" for k in stages), "case_ratio"],
                data=[
                    [name, *(layers[k][name]["rel"] for k in stages), layers.get("case_ratio", {}).get(name)]
                    for name in layers["total"]
                ],
            )
        run.log(payload)
        return self._finish(run)
