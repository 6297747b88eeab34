"""A Hydra sweeper that races compression recipes at a target size (jcexp/race.py) instead of running a grid.

Hydra's basic sweeper launches a fixed list of jobs; the race decides the next round's jobs from the last
round's scores, which only a sweeper can do. Each round is one ``launcher.launch`` call, so a round runs through
whatever launcher is configured (jcexp_local's slots, or a SLURM array with jcexp_slurm), with its resume,
failure isolation and up-front value checks. A round's job is an ordinary jcexp run with
``benchmark.ci_rounds=k``: it reuses the candidate's compressed model (cache/compressed) and the items it scored
in earlier rounds (cache/rounds), so it compresses nothing twice and scores only the new chunk; the dense items
are cached once (cache/baselines). A rerun of the same command after a crash replays the race: every finished
job is reused by its config hash (nothing is recomputed) and the decisions, which are a function of the items,
come out the same.
"""

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

# No `from __future__ import annotations` (see hydra_plugins/jcexp_launcher/launcher.py): Optional, List.
log = logging.getLogger(__name__)


@dataclass
class JcexpBudgetSweeperConf:
    _target_: str = "hydra_plugins.jcexp_budget.sweeper.BudgetSweeper"
    # Stop after this many rounds; 0 lists the candidates (budget.json) and runs nothing. null: to the end.
    max_rounds: Optional[int] = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="jcexp_budget", node=JcexpBudgetSweeperConf, provider="jcexp"
)


@dataclass
class _Candidate:
    recipe: Any  # jcexp.race.Recipe
    name: str
    overrides: List[str]
    config_hash: str
    group_size: Optional[int]


class BudgetSweeper(Sweeper):
    def __init__(self, max_rounds: Optional[int] = None) -> None:
        self.max_rounds = max_rounds
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    # ------------------------------------------------------------------------------------------ candidates
    def _base(self, arguments: List[str]) -> List[str]:
        """The command line's overrides for every job, less the race's own settings (not part of any run)."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        base = []
        for override in parser.parse_overrides(arguments):
            if override.is_sweep_override():
                raise CompactHydraException(
                    f"experiment=budget: {override.input_line} is a sweep; the race picks the recipes "
                    "(narrow them with budget.space.*)"
                )
            if not override.key_or_group.startswith("budget"):
                base.append(override.input_line)
        return base

    def _candidates(self, base: List[str]) -> tuple:
        from hydra_plugins.jcexp_launcher.launcher import _as_current
        from jcexp import race
        from jcexp.compress import check_stages
        from jcexp.config import ConfigError, check_values, effective_case
        from jcexp.results import task_config_hash

        assert self.config is not None and self.hydra_context is not None
        b = self.config.budget
        target_tcr, target_bits = b.tcr, b.bits_per_weight
        if (target_tcr is None) == (target_bits is None):
            raise CompactHydraException(
                "experiment=budget needs exactly one target: budget.tcr=0.8125 or budget.bits_per_weight=3.0"
            )
        if target_tcr is not None and not 0 < target_tcr < 1:
            raise CompactHydraException(f"budget.tcr={target_tcr} must be in (0, 1) (a fraction, eq. 1)")
        tolerance = race.tolerance_for(target_tcr, b.tolerance)
        space = OmegaConf.to_container(b.space, resolve=True)
        recipes = race.space_recipes(space)  # type: ignore[arg-type]
        if target_tcr is not None:  # TCr needs no config: filter before composing
            recipes = [r for r in recipes if race.near(r.tcr, target_tcr, tolerance)]
        shapes: dict = {}

        def widths(cfg: DictConfig) -> dict:
            key = str(OmegaConf.to_yaml(cfg.model))
            if key not in shapes:
                shapes[key] = instantiate(cfg.model.source).layer_widths()
            return shapes[key]

        kept: List[_Candidate] = []
        excluded: List[dict] = []
        seen: dict = {}
        for recipe in recipes:
            overrides = [*base, *recipe.overrides()]
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(
                    self.config, [*overrides, "benchmark.ci_rounds=1"]
                )
                with _as_current(cfg):
                    check_values(cfg)
                    chash = task_config_hash(cfg)
                    group = cfg.quant.get("group_size")
                    # Bit widths, group sizes and masks against the model's layers, as the run's plan checks
                    # them: a recipe the model cannot take is left out here, not failed as a job.
                    pruner, quant = instantiate(cfg.pruner), instantiate(cfg.quant)
                    quant.case = effective_case(quant.case, pruner.active)
                    check_stages([pruner, quant], widths(cfg))
            except (ConfigError, Exception) as exc:  # noqa: BLE001 - any recipe the configs refuse
                why = " ".join(line.strip(" -") for line in str(exc).splitlines()) or type(exc).__name__
                excluded.append({"name": recipe.name, "why": f"not expressible: {why}"})
                continue
            if target_bits is not None and not race.near(
                race.bits_per_weight(recipe, group), target_bits, tolerance
            ):
                continue
            if chash in seen:
                excluded.append({"name": recipe.name, "why": f"the same run as {seen[chash]}"})
                continue
            seen[chash] = recipe.name
            kept.append(_Candidate(recipe, recipe.name, overrides, chash, group))
        target = {
            "what": "TCr" if target_tcr is not None else "bits per weight",
            "value": float(target_tcr if target_tcr is not None else target_bits),
            "tolerance": tolerance,
        }
        return kept, excluded, target

    # ------------------------------------------------------------------------------------------------ race
    def sweep(self, arguments: List[str]) -> Any:
        from jcexp import budget, race
        from jcexp.race import Race
        from jcexp.results import RESULT_FILE, read_json

        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        base = self._base(arguments)
        candidates, excluded, target = self._candidates(base)
        log.info(
            "budget race: %d candidates within %s %g ± %g (%d not raced)",
            len(candidates),
            target["what"],
            target["value"],
            target["tolerance"],
            len(excluded),
        )
        for c in candidates:
            log.info("\t%s  (TCr %.4f)", c.name, c.recipe.tcr)
        if not candidates:
            raise CompactHydraException(
                f"budget race: no recipe of budget.space lies within {target['what']} {target['value']:g} ± "
                f"{target['tolerance']:g}; widen budget.tolerance or the space"
            )
        b = self.config.budget
        margin = float(b.margin if b.margin is not None else self.config.equivalence_margin)
        state: dict = {
            "target": target,
            "model": str(self.config.model.name),
            "benchmark": str(self.config.benchmark.name),
            "seed": int(self.config.seed),
            "chunk": int(self.config.benchmark.ci_chunk),
            "space": OmegaConf.to_container(b.space, resolve=True),
            "candidates": [
                {
                    "name": c.name,
                    "tcr": c.recipe.tcr,
                    "overrides": c.recipe.overrides(),
                    "recipe": asdict(c.recipe),
                }
                for c in candidates
            ],
            "excluded": excluded,
            "rounds_run": [],
        }
        if self.max_rounds == 0:
            from jcexp import budget as records

            records.write_state(sweep_dir, state)
            log.info(
                "budget race: candidates listed in %s; nothing run (max_rounds=0)", sweep_dir / "budget.json"
            )
            return state
        by_name = {c.name: c for c in candidates}
        rce: Optional[Race] = None
        job_idx, k = 0, 0
        seconds = {"compress": 0.0, "eval": 0.0}
        items_used: dict = {}
        kl_used: dict = {}  # the KL's items per candidate (counted once: the screen reads it once)
        last: dict = {}
        measured: dict = {}  # each candidate's last result, as budget.measured reads it
        while rce is None or not rce.done:
            k += 1
            alive = [c.name for c in candidates] if rce is None else rce.alive
            jobs = [[*by_name[n].overrides, f"benchmark.ci_rounds={k}"] for n in alive]
            log.info("budget race: round %d, %d candidate(s)", k, len(jobs))
            returns = self.launcher.launch(jobs, initial_job_idx=job_idx)
            job_idx += len(jobs)
            models, dense, failed, kl = {}, None, {}, {}
            for name, ret in zip(alive, returns, strict=True):
                # The job returns Sr; its record is result.json in its directory (a reused job's too).
                value = read_json(_job_dir(ret) / RESULT_FILE)
                if value is None or value.get("status") != "complete":  # a PointFailure from the launcher
                    failed[name] = str(ret._return_value)
                    continue
                d, own = budget.scored_items(value)
                dense, models[name], last[name] = d, own, value
                got = measured[name] = budget.measured(value, by_name[name].recipe, by_name[name].group_size)
                seconds["compress"] += got.pop("compress_seconds")
                seconds["eval"] += got.pop("eval_seconds")
                items_used[name] = sum(v["effective"] for v in (value.get("n_samples") or {}).values())
                # Per-document KL to dense: the race's screen reads it once (the first round), so it is counted
                # once per candidate, as the share of the held-out prose it covers (jcexp/budget.kl_items).
                kl[name] = budget.document_kl(value)
                if name not in kl_used:
                    kl_used[name] = budget.kl_items(value, kl[name])
            if rce is None:
                looks = max((v["benchmark"]["sequential"]["looks_planned"] for v in last.values()), default=1)
                rce = Race(
                    [c.name for c in candidates],
                    looks,
                    level=float(b.level),
                    margin=margin,
                    min_discordant=int(self.config.benchmark.ci_min_discordant),
                    # One error budget: a share for the KL screen only when the first round recorded KL (known
                    # before any interval is read; without it all of alpha goes to Sr).
                    screen_share=race.SCREEN_SHARE if any(kl.values()) else 0.0,
                )
            for name, cause in failed.items():
                rce.fail(name, k, cause)
            if dense is None:
                rce.outcome = "none left"
            else:
                tasks = sorted(dense)
                record = rce.look(k, dense, models, tasks, kl={n: v for n, v in kl.items() if v} or None)
                log.info(
                    "budget race: round %d leader %s, dropped %s%s",
                    k,
                    record["leader"],
                    list(record["dropped"]) or "none",
                    f"; stop: {record['stop']}" if "stop" in record else "",
                )
            state["rounds_run"].append(k)
            self._snapshot(state, rce, candidates, last, measured, items_used, kl_used, seconds, sweep_dir)
            if self.max_rounds is not None and k >= self.max_rounds and not rce.done:
                log.info("budget race: stopped after round %d (hydra.sweeper.max_rounds)", k)
                break
        assert rce is not None
        state = budget.write_outputs(
            sweep_dir,
            self._snapshot(state, rce, candidates, last, measured, items_used, kl_used, seconds, sweep_dir),
        )
        self._track(state, sweep_dir)
        winner = state["race"]["winner"]
        log.info(
            "budget race: %s -> %s",
            state["race"]["outcome"],
            winner or ", ".join(state["race"]["unseparated"]) or "no candidate",
        )
        log.info("budget race report: %s", sweep_dir / budget.MARKDOWN_FILE)
        return state

    def _snapshot(
        self, state, rce, candidates, last, measured, items_used, kl_used, seconds, sweep_dir
    ) -> dict:
        """The race so far, written after every round (budget.json). Items: what each candidate scored (its
        last round's items, over every task), plus its KL's share of the held-out prose times the prose's
        documents, once; the grid: every candidate on every item, without a KL."""
        from jcexp import budget

        for entry, c in zip(state["candidates"], candidates, strict=True):
            entry.update(measured.get(c.name) or {})
        # Every item, as a grid would score each candidate on them all.
        grid = max(
            (sum(v["original"] for v in (last[n].get("n_samples") or {}).values()) for n in last), default=0
        )
        kl_items = sum(kl_used.values())
        race_items = sum(items_used.values()) + kl_items
        state["race"] = rce.to_dict()
        state["items"] = {
            "race": race_items,
            "kl": kl_items,
            "grid": grid * len(candidates),
            "share": race_items / (grid * len(candidates)) if grid else float("nan"),
        }
        state["seconds"] = dict(seconds)
        budget.write_state(sweep_dir, state)
        return state

    def _track(self, state: dict, sweep_dir: Path) -> None:
        from hydra.utils import instantiate

        from jcexp import budget

        assert self.config is not None
        tracker = instantiate(self.config.logger)
        log_budget = getattr(tracker, "log_budget", None)
        if log_budget is None:
            return
        state["tracking"] = log_budget(
            state,
            sweep_dir / budget.PLOT_FILE,
            name=f"budget_{self.config.logger.group or 'race'}",
            tags=list(self.config.get("tags") or []),
        )
        budget.write_state(sweep_dir, state)


def _job_dir(ret: Any) -> Path:
    """Where a job wrote result.json: its Hydra output dir (a job that ran), or the launcher's job dir (a job
    reused by config hash, whose JobReturn has no Hydra config); ``working_dir`` of a job that ran is the
    launch dir."""
    hydra_cfg = getattr(ret, "hydra_cfg", None)
    if hydra_cfg is not None:
        return Path(str(hydra_cfg.hydra.runtime.output_dir))
    return Path(str(ret.working_dir))
