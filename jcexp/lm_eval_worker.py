"""lm-eval's simple_evaluate driven by a JSON spec, runnable in any Python environment that has lm-eval.

vLLM pins its own torch, which clashes with llm-compressor's, so it lives in a separate environment with no
hydra, jcexp or llm-compressor. This file therefore imports only lm_eval and the standard library, and runs as
a script there::

    python jcexp/lm_eval_worker.py SPEC.json

jcexp.evaluate imports the same functions for its in-process evaluation, so both paths build their tasks, apply
per-task generation settings and report the effective settings with one piece of code.

The spec (written by jcexp.evaluate): backend, model_args, batch_size, device, tasks, include_paths, gen_kwargs
(every generative task), generation ({task or group: generation kwargs} for its leaf tasks; wins over
gen_kwargs), num_fewshot, limit, seed, bootstrap_iters, apply_chat_template, fewshot_as_multiturn, use_cache,
request_chunk, output, and optionally samples ({leaf task: document indices}: only those documents, only those
leaf tasks; jcexp/sequential.py).
The output JSON holds lm-eval's results, groups, versions, n-samples, configs, and the effective settings.

``python lm_eval_worker.py --check-imports JSON`` imports lm-eval and the given task modules as the worker's
run would, and prints the failures as JSON (jcexp.evaluate checks an evaluator's environment with it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")


def make_task_manager(include_paths: list[str], names: list[str]):
    """lm-eval's TaskManager for these task names. lm-eval indexes all of its ~14,700 task YAMLs whenever a
    TaskManager is built (16 s on a 2-core machine, in every run's process). When every name is a plain task in
    our include paths (the offline suites), an index of those paths alone answers the same; a group or tag may
    name lm-eval's own tasks, so it and any unknown name get the full index."""
    from lm_eval.tasks import TaskManager

    paths = list(include_paths) or None
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        kinds = {name: getattr(local.task_index.get(name), "kind", None) for name in names}
        if names and all(kind is not None and kind.name == "TASK" for kind in kinds.values()):
            return local
    return TaskManager(include_path=paths)


def load_tasks(names: list[str], task_manager) -> list[Any]:
    """One lm-eval Task or Group per name (a tag gives its tasks). simple_evaluate accepts these built objects
    and keeps each Group's aggregation (TaskManager.load collects a Group's leaves and subgroups)."""
    items: list[Any] = []
    for name in names:
        loaded = task_manager.load([name])
        if name in loaded["groups"]:
            items.append(loaded["groups"][name])
        elif name in loaded["tasks"]:
            items.append(loaded["tasks"][name])
        else:  # a tag: a flat list of tasks
            items.extend(loaded["tasks"].values())
    return items


def _is_group(item: Any) -> bool:
    from lm_eval.api.group import Group

    return isinstance(item, Group)


def leaf_tasks(items: list[Any]) -> dict[str, Any]:
    """Every leaf Task under the given Tasks and Groups, by name."""
    out: dict[str, Any] = {}
    for item in items:
        for task in item.get_all_tasks() if _is_group(item) else [item]:
            out[task.task_name] = task
    return out


def _under(items: list[Any], name: str) -> list[Any]:
    """The leaf tasks of the task or (sub)group called ``name``."""
    for item in items:
        if not _is_group(item):
            if item.task_name == name:
                return [item]
            continue
        for group in [item, *item.get_all_groups()]:
            if group.name == name:
                return group.get_all_tasks()
        found = [t for t in item.get_all_tasks() if t.task_name == name]
        if found:
            return found
    return []


def _generative(task: Any) -> bool:
    return task.get_config("output_type") == "generate_until"


def apply_generation(
    items: list[Any], gen_kwargs: dict[str, Any] | None, generation: dict[str, dict[str, Any]]
) -> None:
    """Set the generation kwargs of every generate_until leaf: ``gen_kwargs`` on all of them (what lm-eval's own
    gen_kwargs does), then ``generation[name]`` on the leaves of that task or group, so a per-task setting wins.
    simple_evaluate's gen_kwargs must then stay None: it would be applied last and override these."""
    leaves = leaf_tasks(items)
    for task in leaves.values():
        if gen_kwargs and _generative(task):
            task.set_config(key="generation_kwargs", value=dict(gen_kwargs), update=True)
    for name, kwargs in generation.items():
        targets = [t for t in _under(items, name) if _generative(t)]
        if not targets:
            raise KeyError(
                f"generation settings for {name!r}: no generate_until task of that name or under that group "
                f"among the benchmark's tasks {sorted(leaves)}"
            )
        for task in targets:
            task.set_config(key="generation_kwargs", value=dict(kwargs), update=True)


def restrict(items: list[Any], samples: dict[str, list[int]]) -> list[Any]:
    """The tasks and groups cut down to the leaf tasks that ``samples`` gives documents for. lm-eval evaluates a
    task missing from ``samples``, or given an empty list, on all its documents: such leaves must go."""
    keep = {name for name, docs in samples.items() if docs}

    def prune(group: Any) -> bool:  # True when something is left under the group
        for child in list(group):
            gone = not prune(child) if _is_group(child) else child.task_name not in keep
            if gone:
                group.pop(child.name if _is_group(child) else child.task_name)
        return len(group) > 0

    return [i for i in items if (prune(i) if _is_group(i) else i.task_name in keep)]


def task_settings(items: list[Any], lm: Any) -> dict[str, dict[str, Any]]:
    """Per leaf task: output type, shots, and for generative tasks the generation kwargs as the backend will use
    them (lm-eval's normalize_gen_kwargs, with the backend's default max_gen_toks where a task sets none)."""
    from lm_eval.models.utils import normalize_gen_kwargs

    out = {}
    for name, task in sorted(leaf_tasks(items).items()):
        entry = {"output_type": task.get_config("output_type"), "num_fewshot": task.get_config("num_fewshot")}
        if _generative(task):
            kwargs = task.get_config("generation_kwargs") or {}
            entry["generation_kwargs"] = dict(normalize_gen_kwargs(kwargs, lm.max_gen_toks))
        out[name] = entry
    return out


def one_bos(lm: Any) -> Any:
    """One BOS in rolling perplexity (loglikelihood_rolling), whatever the backend (HFLM, its jcexp subclasses,
    vLLM); returns ``lm``, changed in place.

    lm-eval 0.4.13 builds each document's rolling windows from ``tok_encode(text)``, which encodes with the
    tokenizer's defaults, and puts ``prefix_token_id`` (the BOS, else the EOS) before them. Where the tokenizer
    adds a BOS itself (Gemma 3's, Llama 3's, Mistral's) the first window reads <bos> <bos> text and scores the
    second <bos> as a prediction (lm-eval issue #3333). So, only inside loglikelihood_rolling, the text is
    encoded without special tokens: the window is then one BOS (the prefix) and the text, as the model saw text
    in training. Where the tokenizer adds none (SmolLM2) the encoding is the same as before, so are its scores.
    loglikelihood (its context encoded with the defaults: one BOS; an empty context: the prefix and the text
    without special tokens) and generate_until (the defaults: one BOS) already start once and are left alone.
    Not ``add_bos_token``: False would also drop the BOS from loglikelihood and generation, True keeps two in
    rolling. Instance attributes rather than a subclass: every backend class (and every subclass another part of
    jcexp makes, e.g. jcexp/hf_floor.py) gets the same fix through evaluate_lm, in process and in the child.
    tests/test_bos.py counts the BOS of every request type on tiny models with and without one."""
    if not (hasattr(lm, "tok_encode") and hasattr(lm, "loglikelihood_rolling")):
        return lm
    encode, rolling = lm.tok_encode, lm.loglikelihood_rolling
    inside = {"rolling": False}

    def tok_encode(string, add_special_tokens=None, **kwargs):
        if inside["rolling"] and add_special_tokens is None:
            add_special_tokens = False  # the prefix token is the one BOS
        return encode(string, add_special_tokens=add_special_tokens, **kwargs)

    def loglikelihood_rolling(requests, disable_tqdm: bool = False):
        inside["rolling"] = True
        try:
            return rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            inside["rolling"] = False

    lm.tok_encode, lm.loglikelihood_rolling = tok_encode, loglikelihood_rolling
    return lm


def chunk_requests(lm: Any, size: int | None) -> None:
    """Hand ``lm`` its requests ``size`` at a time, and commit each chunk's answers to lm-eval's response cache
    as soon as the chunk is answered.

    lm-eval calls a backend once per request type with every request; with batch_size=auto, vLLM answers them
    all in one call, and CachingLM (simple_evaluate's use_cache) writes its database when that call returns.
    A job killed before then (a SLURM timeout) kept nothing. Here CachingLM still picks the requests it has no
    answer for, and its one call reaches this wrapper, which asks the backend chunk by chunk and writes each
    chunk's answers under CachingLM's own keys, then commits. A requeued job re-asks only what no committed
    chunk answered. Sampled generations are not cached, as CachingLM does not cache them.
    ``size`` None: one call with everything, as lm-eval does."""
    if not size:
        return
    from lm_eval.api.model import hash_args

    def chunked(attr: str, method: Any):
        def call(requests: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
            answers: list[Any] = []
            for start in range(0, len(requests), size):
                part = requests[start : start + size]
                done = method(part, *args, **kwargs)
                answers.extend(done)
                db = getattr(getattr(lm, "cache_hook", None), "dbdict", None)  # set by CachingLM
                if db is not None:
                    db.update(
                        {
                            hash_args(attr, req.args): answer
                            for req, answer in zip(part, done, strict=True)
                            if not (attr == "generate_until" and req.args[1].get("do_sample", False))
                        }
                    )
                    db.commit()
                    print(
                        f"jcexp: {attr}: {start + len(part)} of {len(requests)} requests answered and cached",
                        file=sys.stderr,
                        flush=True,
                    )
            return answers

        return call

    for attr in REQUEST_TYPES:
        # An instance attribute: CachingLM's getattr(lm, attr) finds it before the backend's method.
        setattr(lm, attr, chunked(attr, getattr(lm, attr)))


def evaluate_lm(
    lm: Any, spec: dict[str, Any], task_manager, items: list[Any] | None = None
) -> dict[str, Any]:
    """simple_evaluate on the spec's tasks with per-task generation settings; returns a JSON-able dict.
    ``items``: the spec's tasks already built, generation settings applied (jcexp's in-process evaluation hands
    a fresh copy of those its plan built), used as they are; else built here (this script's run)."""
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    one_bos(lm)
    chunk_requests(lm, spec.get("request_chunk"))
    if items is None:
        items = load_tasks(list(spec["tasks"]), task_manager)
        apply_generation(items, spec.get("gen_kwargs"), spec.get("generation") or {})
    samples = spec.get("samples")
    if samples is not None:
        items = restrict(items, samples)
        # Sorted: lm-eval 0.4.13 walks the chosen documents in data set order and logs the i-th as samples[i],
        # so an unsorted list would mislabel the logged doc_id.
        samples = {name: sorted(int(i) for i in docs) for name, docs in samples.items() if docs}
    seed = spec["seed"]
    res = lm_eval.simple_evaluate(
        model=lm,
        tasks=items,
        num_fewshot=spec.get("num_fewshot"),
        limit=spec.get("limit"),
        samples=samples,
        task_manager=task_manager,
        gen_kwargs=None,  # applied above, under the per-task settings
        apply_chat_template=spec.get("apply_chat_template", False),
        fewshot_as_multiturn=spec.get("fewshot_as_multiturn", False),
        log_samples=bool(spec.get("log_samples", False)),
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
        bootstrap_iters=spec["bootstrap_iters"],
        use_cache=spec.get("use_cache"),
    )
    out = {
        key: res.get(key, {})
        for key in ("results", "groups", "versions", "n-samples", "configs", "group_subtasks")
    }
    if spec.get("log_samples"):
        out["items"] = compact_samples(res.get("samples") or {})
    out["settings"] = {
        "backend": spec["backend"],
        "model_args": spec.get("model_args"),
        "max_length": lm.max_length,
        "batch_size": spec.get("batch_size"),
        "batch_sizes": res.get("config", {}).get("batch_sizes", []),  # what batch_size=auto picked
        "num_fewshot": spec.get("num_fewshot"),
        "limit": spec.get("limit"),
        **({"samples": {name: len(docs) for name, docs in samples.items()}} if samples is not None else {}),
        "seed": seed,
        "bootstrap_iters": spec["bootstrap_iters"],
        "apply_chat_template": spec.get("apply_chat_template", False),
        "fewshot_as_multiturn": spec.get("fewshot_as_multiturn", False),
        "lm_eval": version("lm_eval"),
        "lm_class": type(lm).__name__,  # HFLM, or FloorHFLM (evaluator.floor)
        "tasks": task_settings(items, lm),  # after simple_evaluate: num_fewshot is resolved by then
    }
    # Through JSON in process too, so both paths hand the parser the same types.
    return json.loads(json.dumps(out, default=handle_non_serializable))


def compact_samples(samples: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, list]]]:
    """Per task and "metric,filter": item ids and each item's value (a number, or [value, weight] for weighted
    metrics such as word_perplexity). lm-eval's logged samples also hold documents, prompts and responses, far
    too much to keep per run; the paired intervals need only this."""
    out: dict[str, dict[str, dict[str, list]]] = {}
    for task, rows in samples.items():
        per_metric = out.setdefault(task, {})
        for row in rows:
            for metric in row.get("metrics", []):
                entry = per_metric.setdefault(f"{metric},{row['filter']}", {"ids": [], "values": []})
                value = row[metric]
                entry["ids"].append(row["doc_id"])
                entry["values"].append(list(value) if isinstance(value, list | tuple) else value)
    return out


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the spec's LM as simple_evaluate would from a model name, evaluate it, write spec['output']."""
    # lm-eval bootstraps stderr in a fork()ed Pool; jcexp evaluates in process for the same reason (evaluate.py).
    os.environ["DISABLE_MULTIPROC"] = "1"
    names = [*spec["tasks"], *(spec.get("generation") or {})]
    task_manager = make_task_manager(list(spec.get("include_paths") or []), names)
    lm = model_class(spec).create_from_arg_obj(
        dict(spec.get("model_args") or {}),
        {"batch_size": spec.get("batch_size"), "device": spec.get("device")},  # None values are dropped
    )
    out = evaluate_lm(lm, spec, task_manager)
    output = Path(spec["output"])
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, output)  # the parent never reads half a file
    return out


def model_class(spec: dict[str, Any]) -> Any:
    """lm-eval's class for the spec's backend; for hf with spec["floor"], that class with jcexp/hf_floor.py's
    loglikelihood path (the same answers), loaded by path from beside this file: the child's environment may
    have no jcexp installed (hf_floor.py imports only torch, transformers and lm-eval)."""
    from lm_eval.api.registry import get_model

    cls = get_model(spec["backend"])
    if spec["backend"] != "hf" or not spec.get("floor"):
        return cls
    path = Path(__file__).resolve().parent / "hf_floor.py"
    module_spec = importlib.util.spec_from_file_location("jcexp_hf_floor", path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    sys.modules[module_spec.name] = module  # type: ignore[union-attr]  (its dataclasses look themselves up)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.with_floor(cls)


def check_imports(modules: list[str]) -> dict[str, dict[str, Any]]:
    """Import lm-eval, then each task module as lm-eval loads it (by file; ``lm_eval:<path>`` is a module of
    this lm-eval's own tasks directory). Returns the failures: {module: {"error": text, "missing": the module
    an ImportError names, or None}}."""

    def failure(exc: BaseException) -> dict[str, Any]:
        missing = exc.name if isinstance(exc, ImportError) else None
        return {"error": f"{type(exc).__name__}: {exc}", "missing": missing}

    try:
        import lm_eval
    except Exception as exc:  # noqa: BLE001 - whatever stops the import stops the evaluation
        return {"lm_eval": failure(exc)}
    tasks = Path(lm_eval.__file__).resolve().parent / "tasks"
    failed = {}
    for i, ref in enumerate(modules):
        path = tasks / ref.removeprefix("lm_eval:") if ref.startswith("lm_eval:") else Path(ref)
        if not path.is_file():
            failed[ref] = {"error": f"no file {path} (lm-eval {version('lm_eval')})", "missing": None}
            continue
        try:
            spec = importlib.util.spec_from_file_location(f"jcexp_check_{i}_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001
            failed[ref] = failure(exc)
    return failed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 2 and args[0] == "--check-imports":
        print(json.dumps(check_imports(json.loads(args[1]))))
        return 0
    if len(args) != 1:
        print("usage: python lm_eval_worker.py SPEC.json | --check-imports JSON", file=sys.stderr)
        return 2
    run(json.loads(Path(args[0]).read_text()))
    return 0


if __name__ == "__main__":
    # Run as a script, Python puts this file's directory (jcexp/) first on sys.path, where jcexp's modules
    # (config, data, models, ...) would shadow same-named top-level packages of the backend's environment.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.exit(main())
