"""Submitit launchers for jcexp sweeps: hydra-submitit-launcher plus what a compression grid needs.

hydra-submitit-launcher falls short in four ways that matter here (stack-notes; hydra #2757):
- submitit_local starts every job at once and has no cap: 2 cores cannot hold 6 model jobs;
- every local job sees ``CUDA_VISIBLE_DEVICES=0``, so concurrent jobs pile onto one GPU;
- one failed job makes the sweeper re-raise and skip ``on_multirun_end`` (no report), and a hard-killed job
  (OOM) aborts the sweep;
- a grid point whose result already exists is computed again.

So: the local launcher runs at most ``max_parallel`` jobs, each pinned to its own GPU slot when GPUs exist;
both launchers skip points whose result is complete (looked up by config hash), wait for every job, write
``failure.json`` for a job that died, and hand failures back as values. ``jcexp.callbacks.ReportCallback``
writes the report and then fails the sweep, naming the failed points.
"""

import logging
import os
import time
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

# No `from __future__ import annotations` here: Hydra execs plugin modules without registering them in
# sys.modules, and dataclasses cannot resolve string annotations then. Hence Optional/List in the schemas.
log = logging.getLogger(__name__)

FAILURE_FILE = "failure.json"


@dataclass
class JcexpLocalConf(LocalQueueConf):
    _target_: str = "hydra_plugins.jcexp_launcher.launcher.JcexpLocalLauncher"
    # submitit kills a local job at its timeout (default 60 min): a 7B point on one GPU can take longer.
    timeout_min: int = 24 * 60
    # Jobs running at once. null: one per GPU slot when GPUs are visible, else 1 (a model job uses all cores).
    max_parallel: Optional[int] = None
    # GPU ids handed out one per job. null: every GPU the driver sees (CUDA_VISIBLE_DEVICES or nvidia-smi).
    gpus: Optional[List[int]] = None
    # Skip grid points whose result.json is already complete for the same config hash.
    skip_complete: bool = True
    poll_s: float = 1.0


@dataclass
class JcexpSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.jcexp_launcher.launcher.JcexpSlurmLauncher"
    skip_complete: bool = True


ConfigStore.instance().store(
    group="hydra/launcher", name="jcexp_local", node=JcexpLocalConf, provider="jcexp"
)
ConfigStore.instance().store(
    group="hydra/launcher", name="jcexp_slurm", node=JcexpSlurmConf, provider="jcexp"
)


@dataclass
class PointFailure:
    """A grid point that did not finish: handed back as a job's value so the sweep goes on."""

    overrides: list[str]
    cause: str
    record: str

    def __str__(self) -> str:
        return f"{','.join(self.overrides) or '(no overrides)'}: {self.cause} (see {self.record})"


@dataclass
class _Point:
    idx: int
    overrides: list[str]
    config: DictConfig
    job_dir: Path


def visible_gpus() -> list[int]:
    """GPU ids this process may use, without importing torch (the driver stays light)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return list(range(sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))))


@contextmanager
def _as_current(config: DictConfig) -> Iterator[None]:
    """Resolve ``${hydra:...}`` against one job's config (Hydra keeps the driver's in a singleton)."""
    holder = HydraConfig.instance()
    previous = holder.cfg
    holder.set_config(config)
    try:
        yield
    finally:
        holder.cfg = previous


def write_failure(job_dir: Path, overrides: Sequence[str], cause: str, **details: Any) -> Path:
    from jcexp.results import atomic_write_json

    path = job_dir / FAILURE_FILE
    atomic_write_json(
        path,
        {"overrides": list(overrides), "cause": cause, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **details},
    )
    return path


def _tail(text: str | None, lines: int = 60) -> str:
    return "\n".join((text or "").splitlines()[-lines:])


class _JcexpLaunch:
    """Shared by the local and SLURM launchers: resume, wait for all, isolate failures."""

    _EXTRA_KEYS: tuple[str, ...] = ("skip_complete",)
    _EXECUTOR: str
    config: DictConfig | None
    hydra_context: Any
    params: dict[str, Any]

    def __init__(self, **params: Any) -> None:
        self.extra = {k: params.pop(k) for k in self._EXTRA_KEYS if k in params}
        super().__init__(**params)  # type: ignore[call-arg]

    # -- building the executor the way hydra-submitit-launcher does, minus our own keys --
    def _executor(self) -> Any:
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        init_keys = {"submitit_folder", "max_num_timeout"}
        init = {"folder": self.params["submitit_folder"]}
        if "max_num_timeout" in self.params:
            init[f"{self._EXECUTOR}_max_num_timeout"] = self.params["max_num_timeout"]
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        generic = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{
                k if k in generic else f"{self._EXECUTOR}_{k}": v
                for k, v in self.params.items()
                if k not in init_keys
            }
        )
        return executor

    def _points(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[_Point]:
        assert self.config is not None
        points = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config.hydra.job):
                config.hydra.job.num = idx
            with _as_current(config):
                job_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
            points.append(_Point(idx, list(overrides), config, job_dir))
        self._check(points)
        return points

    @staticmethod
    def _check(points: list[_Point]) -> None:
        """Value checks for every point before any job is submitted: one bad point fails the sweep up front."""
        from jcexp.config import ConfigError, check_values

        errors = []
        for point in points:
            with _as_current(point.config):
                try:
                    check_values(point.config)
                except ConfigError as exc:
                    errors.append(f"#{point.idx} {' '.join(filter_overrides(point.overrides))}: {exc}")
        if errors:
            raise CompactHydraException("jcexp: sweep not started, bad point(s):\n" + "\n".join(errors))

    def _reused(self, point: _Point) -> JobReturn | None:
        from jcexp.results import reuse_result, stored_result

        with _as_current(point.config):
            try:
                stored = stored_result(point.config)
            except Exception as exc:  # noqa: BLE001 - an unresolvable config is the job's error to report
                log.debug("no resume lookup for #%d: %s", point.idx, exc)
                return None
        if stored is None:
            return None
        result = reuse_result(stored, point.job_dir)
        return self._job_return(point, JobStatus.COMPLETED, result)

    def _job_return(self, point: _Point, status: JobStatus, value: Any) -> JobReturn:
        ret = JobReturn(overrides=point.overrides, working_dir=str(point.job_dir), status=status)
        ret.task_name = str(point.config.hydra.job.name)
        ret._return_value = value
        return ret

    def _job_args(self, point: _Point) -> tuple[Any, ...]:
        return (
            point.overrides,
            "hydra.sweep.dir",
            point.idx,
            f"job_id_for_{point.idx}",
            Singleton.get_state(),
        )

    def _submit(self, executor: Any, points: list[_Point]) -> Iterator[tuple[_Point, Any]]:
        raise NotImplementedError

    def _outcome(self, point: _Point, job: Any) -> JobReturn:
        """The job's JobReturn; a failure becomes a recorded PointFailure instead of an exception."""
        try:
            ret = job.results()[0]
        except Exception as exc:  # noqa: BLE001 - died hard (OOM kill, node loss) or could not unpickle
            cause = (
                f"job {job.job_id} died: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
            try:
                stderr = job.stderr()
            except Exception:  # noqa: BLE001
                stderr = None
            record = write_failure(
                point.job_dir,
                point.overrides,
                cause,
                job_id=str(job.job_id),
                state=str(getattr(job, "state", "unknown")),
                exit_code=_exit_code(job),
                stderr_tail=_tail(stderr),
                submitit_log=str(job.paths.stderr),
            )
            return self._failed(point, cause, record)
        if ret.status == JobStatus.FAILED:
            exc = ret._return_value
            cause = f"{type(exc).__name__}: {exc}"
            record = point.job_dir / FAILURE_FILE  # not ret.working_dir: that is the launch dir
            if not record.exists():  # the worker's FailureRecorder callback normally wrote it
                tb = "".join(traceback.format_exception(exc)) if isinstance(exc, BaseException) else cause
                record = write_failure(point.job_dir, point.overrides, cause, traceback=tb)
            return self._failed(point, cause, record)
        return ret

    def _failed(self, point: _Point, cause: str, record: Path) -> JobReturn:
        failure = PointFailure(list(filter_overrides(point.overrides)), cause, str(record))
        log.error("#%d failed: %s", point.idx, failure)
        # COMPLETED with the failure as its value: Hydra's sweeper re-raises a FAILED return at once and skips
        # on_multirun_end; ReportCallback turns recorded failures into the sweep's non-zero exit instead.
        return self._job_return(point, JobStatus.COMPLETED, failure)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("jcexp %s launcher, sweep dir: %s", self._EXECUTOR, sweep_dir)
        points = self._points(job_overrides, initial_job_idx)
        returns: dict[int, JobReturn] = {}
        todo = []
        for point in points:
            reused = self._reused(point) if self.extra.get("skip_complete", True) else None
            shown = " ".join(filter_overrides(point.overrides))
            if reused is not None:
                returns[point.idx] = reused
                log.info("\t#%d : %s (complete for this config hash: reused)", point.idx, shown)
            else:
                todo.append(point)
                log.info("\t#%d : %s", point.idx, shown)
        if todo:
            for point, job in self._submit(self._executor(), todo):
                returns[point.idx] = self._outcome(point, job)
        return [returns[p.idx] for p in points]


def _exit_code(job: Any) -> int | None:
    process = getattr(job, "_process", None)  # local jobs only; SLURM reports through sacct
    return None if process is None else process.poll()


class JcexpLocalLauncher(_JcexpLaunch, LocalLauncher):
    _EXTRA_KEYS = ("skip_complete", "max_parallel", "gpus", "poll_s")

    def _slots(self) -> list[int | None]:
        gpus = self.extra.get("gpus")
        gpus = visible_gpus() if gpus is None else list(gpus)
        cap = self.extra.get("max_parallel")
        if not gpus:
            return [None] * max(1, cap or 1)
        if cap is not None and cap > len(gpus):
            raise ValueError(
                f"hydra.launcher.max_parallel={cap} but only {len(gpus)} GPU(s) {gpus}: "
                "concurrent jobs would share a GPU. Lower max_parallel or list more hydra.launcher.gpus."
            )
        return list(gpus[: cap or len(gpus)])

    def _submit(self, executor: Any, points: list[_Point]) -> Iterator[tuple[_Point, Any]]:
        slots = self._slots()
        log.info("running at most %d job(s) at once; GPU slots: %s", len(slots), slots)
        queue = deque(points)
        free = deque(range(len(slots)))
        running: dict[int, tuple[_Point, Any]] = {}
        poll = float(self.extra.get("poll_s") or 1.0)
        while queue or running:
            while queue and free:
                slot = free.popleft()
                point = queue.popleft()
                gpu = slots[slot]
                if gpu is not None:
                    # LocalExecutor takes visible_gpus; AutoExecutor does not pass it through, so set it underneath.
                    executor._executor.update_parameters(gpus_per_node=1, visible_gpus=[gpu])
                running[slot] = (point, executor.submit(self, *self._job_args(point)))
            time.sleep(poll)
            for slot, (point, job) in list(running.items()):
                if job.done():
                    del running[slot]
                    free.append(slot)
                    yield point, job


class JcexpSlurmLauncher(_JcexpLaunch, SlurmLauncher):
    def _submit(self, executor: Any, points: list[_Point]) -> Iterator[tuple[_Point, Any]]:
        # One array; SLURM's %N throttle (array_parallelism) caps it, one GPU per task via gpus_per_node.
        jobs = executor.map_array(self, *zip(*(self._job_args(p) for p in points), strict=True))
        log.info("submitted SLURM array %s (%d tasks)", jobs[0].job_id.split("_")[0], len(jobs))
        yield from zip(points, jobs, strict=True)
