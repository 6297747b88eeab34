"""Submitit launchers for jcexp sweeps: hydra-submitit-launcher plus what a compression grid needs.

hydra-submitit-launcher falls short in four ways that matter here (stack-notes; hydra #2757):
- submitit_local starts every job at once and has no cap: 2 cores cannot hold 6 model jobs;
- every local job sees ``CUDA_VISIBLE_DEVICES=0``, so concurrent jobs pile onto one GPU;
- one failed job makes the sweeper re-raise and skip ``on_multirun_end`` (no report), and a hard-killed job
  (OOM) aborts the sweep;
- a grid point whose result already exists is computed again.

So: the local launcher runs at most ``max_parallel`` jobs, each pinned to its own GPU slot when GPUs exist (an
index, a GPU- or a MIG- id) and given its share of the cores as torch threads (JCEXP_THREADS);
both launchers skip points whose result is complete (looked up by config hash), wait for every job, write
``failure.json`` for a job that died, and hand failures back as values. ``jcexp.callbacks.ReportCallback``
writes the report and then fails the sweep, naming the failed points.
"""

import logging
import os
import re
import shlex
import shutil
import subprocess
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

from jcexp.records import FAILURE_FILE

# No `from __future__ import annotations` here: Hydra execs plugin modules without registering them in
# sys.modules, and dataclasses cannot resolve string annotations then. Hence Optional/List in the schemas.
log = logging.getLogger(__name__)


@dataclass
class JcexpLocalConf(LocalQueueConf):
    _target_: str = "hydra_plugins.jcexp_launcher.launcher.JcexpLocalLauncher"
    # submitit kills a local job at its timeout (default 60 min): a 7B point on one GPU can take longer.
    timeout_min: int = 24 * 60
    # Jobs running at once. null: one per GPU slot when GPUs are visible, else 1 (a model job uses all cores).
    max_parallel: Optional[int] = None
    # GPU ids handed out one per job, as CUDA_VISIBLE_DEVICES takes them: indices, GPU-<uuid> or MIG-<uuid>.
    # null: every GPU the driver sees (CUDA_VISIBLE_DEVICES, else nvidia-smi -L, else /proc/driver/nvidia).
    gpus: Optional[List[str]] = None
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
class _SweepJob:
    idx: int
    overrides: list[str]
    config: DictConfig
    job_dir: Path


# Module attributes so that tests can point them at a temp dir.
PROC_GPUS = Path("/proc/driver/nvidia/gpus")
DEV_NVIDIA0 = Path("/dev/nvidia0")
# What the CUDA runtime accepts in CUDA_VISIBLE_DEVICES: an index, GPU-<uuid>, MIG-<uuid> or
# MIG-GPU-<uuid>/<gi>/<ci> (drivers before R470). It stops at the first token it cannot parse ("-1" hides all).
_CUDA_ID = re.compile(r"\d+|GPU-\S+|MIG-\S+")
_SMI_UUID = re.compile(r"\(UUID: ((?:GPU|MIG)-[^)\s]+)\)")


def visible_gpus() -> list[str]:
    """GPU ids this process may use, as CUDA_VISIBLE_DEVICES strings, without importing torch (the driver stays
    light): CUDA_VISIBLE_DEVICES if set, else ``nvidia-smi -L``, else the driver's /proc entries."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return parse_cuda_visible_devices(env)
    listed = _nvidia_smi_list()
    if listed is not None:
        return parse_nvidia_smi(listed)
    # No nvidia-smi (minimal containers): the kernel driver still lists one directory per GPU, in PCI order.
    count = len(list(PROC_GPUS.iterdir())) if PROC_GPUS.is_dir() else 0
    return [str(i) for i in range(count)]


def parse_cuda_visible_devices(value: str) -> list[str]:
    ids = []
    for token in (t.strip() for t in value.split(",")):
        if not _CUDA_ID.fullmatch(token):
            break  # as the CUDA runtime does: nothing after an invalid id is visible
        ids.append(token)
    return ids


def parse_nvidia_smi(listing: str) -> list[str]:
    """Slots from ``nvidia-smi -L``: each GPU by UUID, or its MIG instances when it has any (a GPU in MIG mode
    runs CUDA only inside its instances). UUIDs, not indices: CUDA numbers GPUs fastest-first unless
    CUDA_DEVICE_ORDER=PCI_BUS_ID, so nvidia-smi's index N need not be CUDA's device N."""
    gpus: list[tuple[str, list[str]]] = []
    for line in listing.splitlines():
        match = _SMI_UUID.search(line)
        if match is None:
            continue
        if line.startswith("GPU "):
            gpus.append((match.group(1), []))
        elif line.lstrip().startswith("MIG ") and gpus:
            gpus[-1][1].append(match.group(1))
    return [slot for gpu, migs in gpus for slot in (migs or [gpu])]


def _nvidia_smi_list() -> str | None:
    """``nvidia-smi -L``'s output; None when it is missing or fails (then the driver cannot be asked)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def usable_cpus() -> int:
    """CPUs this process may run on: the affinity mask (taskset, a SLURM allocation, a cgroup cpuset), not the
    machine's count, which over-subscribes a shared node."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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

    def _points(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[_SweepJob]:
        assert self.config is not None
        points = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config.hydra.job):
                config.hydra.job.num = idx
            with _as_current(config):
                job_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
            points.append(_SweepJob(idx, list(overrides), config, job_dir))
        self._check(points)
        return points

    @staticmethod
    def _check(points: list[_SweepJob]) -> None:
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

    def _reused(self, point: _SweepJob) -> JobReturn | None:
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

    def _job_return(self, point: _SweepJob, status: JobStatus, value: Any) -> JobReturn:
        ret = JobReturn(overrides=point.overrides, working_dir=str(point.job_dir), status=status)
        ret.task_name = str(point.config.hydra.job.name)
        ret._return_value = value
        return ret

    def _job_args(self, point: _SweepJob) -> tuple[Any, ...]:
        return (
            point.overrides,
            "hydra.sweep.dir",
            point.idx,
            f"job_id_for_{point.idx}",
            Singleton.get_state(),
        )

    def _preflight(self, points: list[_SweepJob]) -> None:
        """Checks on the points about to be submitted that need the launcher's settings; raise to submit none."""

    def _submit(self, executor: Any, points: list[_SweepJob]) -> Iterator[tuple[_SweepJob, Any]]:
        raise NotImplementedError

    def _outcome(self, point: _SweepJob, job: Any) -> JobReturn:
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

    def _failed(self, point: _SweepJob, cause: str, record: Path) -> JobReturn:
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
            self._preflight(todo)
            for point, job in self._submit(self._executor(), todo):
                returns[point.idx] = self._outcome(point, job)
        return [returns[p.idx] for p in points]


def _exit_code(job: Any) -> int | None:
    process = getattr(job, "_process", None)  # local jobs only; SLURM reports through sacct
    return None if process is None else process.poll()


class JcexpLocalLauncher(_JcexpLaunch, LocalLauncher):
    _EXTRA_KEYS = ("skip_complete", "max_parallel", "gpus", "poll_s")

    def _slots(self) -> list[str | None]:
        gpus = self.extra.get("gpus")
        gpus = visible_gpus() if gpus is None else [str(g) for g in gpus]
        cap = self.extra.get("max_parallel")
        if not gpus:
            return [None] * max(1, cap or 1)
        if cap is not None and cap > len(gpus):
            raise ValueError(
                f"hydra.launcher.max_parallel={cap} but only {len(gpus)} GPU(s) {gpus}: "
                "concurrent jobs would share a GPU. Lower max_parallel or list more hydra.launcher.gpus."
            )
        return list(gpus[: cap or len(gpus)])

    def _preflight(self, points: list[_SweepJob]) -> None:
        self._slot_ids = self._slots()
        self._parallel = min(len(self._slot_ids), len(points))
        pinned = self._slot_ids[0] is not None
        errors = []
        for point in points:
            device = str(point.config.device)
            if device.startswith("cuda") and not pinned:
                errors.append(f"#{point.idx}: device={device} but no GPU was found")
            elif pinned and device.startswith("cuda:") and device != "cuda:0":
                errors.append(f"#{point.idx}: device={device}, but each job sees only its own GPU, as cuda:0")
        if errors:
            source = (
                f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}"
                if "CUDA_VISIBLE_DEVICES" in os.environ
                else "nvidia-smi -L and /proc/driver/nvidia/gpus"
            )
            raise CompactHydraException(
                "jcexp: sweep not started, these points would run on CPU or on a GPU they cannot see:\n"
                + "\n".join(errors)
                + f"\nGPU slots: {self._slot_ids} (from hydra.launcher.gpus, else {source}). "
                "Use device=cuda with hydra.launcher.gpus=[<id>,...], or device=auto/cpu."
            )
        if not pinned and DEV_NVIDIA0.exists() and any(str(p.config.device) == "auto" for p in points):
            log.warning(
                "%s exists but no GPU id was found (CUDA_VISIBLE_DEVICES=%r): device=auto jobs will run on "
                "CPU. Set hydra.launcher.gpus=[...] to pin them to GPUs.",
                DEV_NVIDIA0,
                os.environ.get("CUDA_VISIBLE_DEVICES"),
            )

    def _job_env(self, point: _SweepJob, gpu: str | None) -> dict[str, str]:
        """Environment variables one job gets on top of the driver's."""
        env = {}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        # threads: ${oc.env:JCEXP_THREADS,null}: share the cores among the jobs running at once, unless the user
        # chose (JCEXP_THREADS in the driver's environment, or threads= anywhere in the config).
        if "JCEXP_THREADS" not in os.environ and OmegaConf.is_interpolation(point.config, "threads"):
            env["JCEXP_THREADS"] = str(max(1, usable_cpus() // self._parallel))
        return env

    def _submit(self, executor: Any, points: list[_SweepJob]) -> Iterator[tuple[_SweepJob, Any]]:
        slots = self._slot_ids
        log.info("running at most %d job(s) at once; GPU slots: %s", len(slots), slots)
        queue = deque(points)
        free = deque(range(len(slots)))
        running: dict[int, tuple[_SweepJob, Any]] = {}
        poll = float(self.extra.get("poll_s") or 1.0)
        while queue or running:
            while queue and free:
                slot = free.popleft()
                point = queue.popleft()
                env = self._job_env(point, slots[slot])
                # LocalExecutor takes only int visible_gpus and writes CUDA_VISIBLE_DEVICES over the environment it
                # copies from ours, so a GPU-/MIG- id cannot go through it. Its `setup` lines run in the job's shell
                # after that: export the slot there. gpus_per_node=0 makes its own value "" (no GPU) underneath.
                executor._executor.update_parameters(
                    gpus_per_node=0, setup=[f"export {k}={shlex.quote(v)}" for k, v in env.items()]
                )
                running[slot] = (point, executor.submit(self, *self._job_args(point)))
            time.sleep(poll)
            for slot, (point, job) in list(running.items()):
                if job.done():
                    del running[slot]
                    free.append(slot)
                    yield point, job


class JcexpSlurmLauncher(_JcexpLaunch, SlurmLauncher):
    def _submit(self, executor: Any, points: list[_SweepJob]) -> Iterator[tuple[_SweepJob, Any]]:
        # One array; SLURM's %N throttle (array_parallelism) caps it, one GPU per task via gpus_per_node.
        jobs = executor.map_array(self, *zip(*(self._job_args(p) for p in points), strict=True))
        log.info("submitted SLURM array %s (%d tasks)", jobs[0].job_id.split("_")[0], len(jobs))
        yield from zip(points, jobs, strict=True)
