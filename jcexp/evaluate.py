"""lm-evaluation-harness in process: HFLM wraps the in-memory model (no checkpoint round-trip), tasks come
from lm-eval's registry plus jcexp's own task YAMLs (``jcexp/tasks``) and any user ``include_paths``."""

from __future__ import annotations

import difflib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from jcexp.config import ConfigError

BUILTIN_TASKS = Path(__file__).parent / "tasks"


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        return cls(
            scores={k: Score(**v) for k, v in d["scores"].items()},
            perplexity={k: Score(**v) for k, v in d["perplexity"].items()},
            task_versions=d.get("task_versions", {}),
            n_samples=d.get("n_samples", {}),
            seconds=d.get("seconds", 0.0),
        )


def include_paths(bench) -> list[str]:
    return [str(BUILTIN_TASKS), *[str(Path(p).expanduser()) for p in bench.include_paths]]


@lru_cache(maxsize=8)
def _task_manager(paths: tuple[str, ...]):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths))


def task_manager(bench):
    return _task_manager(tuple(include_paths(bench)))


def task_names(bench) -> list[str]:
    return [*bench.scores, *bench.perplexity]


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


def _leaf_tasks(tasks: dict[Any, Any]) -> dict[str, Any]:
    out = {}
    for key, value in tasks.items():
        if isinstance(value, dict):  # a group: its subtasks
            out.update(_leaf_tasks(value))
        else:
            out[str(key)] = value
    return out


def _loads(name: str, bench) -> bool:
    from lm_eval.tasks import get_task_dict

    try:
        get_task_dict([name], task_manager(bench))
    except Exception:  # noqa: BLE001
        return False
    return True


def check_documents(bench) -> dict[str, int]:
    """Build the tasks (their data sets load here, not mid-run) and refuse any with no documents to score.
    lm-eval itself fails on an empty data set with an exception that names neither the task nor the file.
    Returns the documents each task will score (after benchmark.limit)."""
    from lm_eval.tasks import get_task_dict

    names = task_names(bench)
    try:
        tasks = _leaf_tasks(get_task_dict(names, task_manager(bench)))
    except Exception as exc:  # noqa: BLE001 - datasets/lm-eval raise anything from StopIteration to HTTP errors
        culprits = [n for n in names if not _loads(n, bench)] or names
        raise ConfigError(
            f"benchmark={bench.name}: the data of task(s) {culprits} could not be loaded "
            f"({type(exc).__name__}: {str(exc) or 'no detail'}); is a data file empty, missing or on an "
            "unreachable hub?"
        ) from exc
    counts = {}
    for name, task in tasks.items():
        n = len(task.eval_docs)
        limit = bench.limit
        counts[name] = n if limit is None else min(n, math.ceil(n * limit) if limit < 1 else int(limit))
    empty = sorted(n for n, c in counts.items() if c == 0)
    if empty:
        raise ConfigError(f"benchmark={bench.name}: task(s) {empty} have no documents to evaluate")
    return counts


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


def evaluate(model, tokenizer, bench, seed: int) -> EvalResult:
    """Score the in-memory model on the benchmark's tasks with lm-eval's simple_evaluate."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    # lm-eval bootstraps stderr in a fork()ed multiprocessing Pool; forked from a process that holds torch's
    # threads, the children deadlocked inside submitit workers. 1000 draws in process take well under a second.
    os.environ["DISABLE_MULTIPROC"] = "1"
    start = time.perf_counter()
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=bench.batch_size,
        max_length=bench.max_length,
    )
    res = lm_eval.simple_evaluate(
        model=lm,
        tasks=task_names(bench),
        num_fewshot=bench.num_fewshot,
        limit=bench.limit,
        task_manager=task_manager(bench),
        gen_kwargs=dict(bench.gen_kwargs) or None,
        apply_chat_template=bench.apply_chat_template,
        fewshot_as_multiturn=bench.fewshot_as_multiturn,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        bootstrap_iters=1000,  # stderr of perplexity-type metrics is bootstrapped; lm-eval's 100k is minutes on CPU
    )
    out = EvalResult(task_versions=dict(res.get("versions", {})), n_samples=dict(res.get("n-samples", {})))
    for task, metric in bench.scores.items():
        value, stderr = _lookup(res, task, metric)
        out.scores[task] = Score(task, metric, value, stderr, _chance(res, bench, task), True)
    for task, metric in bench.perplexity.items():
        value, stderr = _lookup(res, task, metric)
        out.perplexity[task] = Score(task, metric, value, stderr, None, False)
    out.seconds = time.perf_counter() - start
    return out
