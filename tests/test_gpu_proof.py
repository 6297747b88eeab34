"""Ready for the first GPU, checked on CPU (no GPU exists here; what needs one is faked and says so):
`make gpu-check` refuses without the vLLM environment, its agreement is counted in items, the preflight refuses
a subprocess evaluator on a GPU in EXCLUSIVE_PROCESS mode, and `bench/gpu_proof.sh --dry-run` lists every check
it would make on a lent GPU and skips each by name."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bench.gpu_check import CPU_GPU_TOLERANCE, VLLM_TOLERANCE, allowed_flips, comparison
from jcexp import items, memory, preflight
from jcexp.config import ConfigError
from tests.test_preflight import SHAPES, node, work

ROOT = Path(__file__).resolve().parents[1]


def _make(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The real Makefile; the venv's stamp is taken as up to date (-o): nothing is installed here."""
    clean = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "SKIP_VLLM")
    }
    cmd = ["make", "-s", "-o", ".venv/.jcexp-installed", f"PY={sys.executable}", *args]
    return subprocess.run(cmd, cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------------------------ make gpu-check
def test_gpu_check_refuses_without_the_vllm_environment_unless_told_to_skip_it(tmp_path):
    missing = str(tmp_path / "no-vllm" / "python")
    done = _make("gpu-check", JCEXP_VLLM_PYTHON=missing)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "no vLLM environment" in out and "SKIP_VLLM=1" in out and "make vllm-env" in out
    assert "test_smollm2_point_scored_by_vllm_agrees_with_hf" in out  # names what it would skip
    assert "gpu-check-gate] Error" in done.stderr  # make stopped at the gate, before any GPU part ran
    # Asked to skip vLLM: the gate passes, says what it skips, and the GPU steps run without the vLLM run.
    skipped = _make("gpu-check-gate", "SKIP_VLLM=1", JCEXP_VLLM_PYTHON=missing)
    assert skipped.returncode == 0 and "skipping the evaluator=vllm checks" in skipped.stdout
    plan = _make("-n", "gpu-check", "SKIP_VLLM=1", JCEXP_VLLM_PYTHON=missing)
    assert "bench.gpu_check --vllm off" in plan.stdout and "WITHOUT the evaluator=vllm checks" in plan.stdout
    # With a vLLM environment (any executable stands in: the gate only resolves it), the gate lets it run.
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert _make("gpu-check-gate", JCEXP_VLLM_PYTHON=str(fake)).returncode == 0
    assert "--vllm on" in _make("-n", "gpu-check", JCEXP_VLLM_PYTHON=str(fake)).stdout


def _result(tmp_path: Path, name: str, compressed: list[int], dense: list[int], ppl: float) -> dict:
    """A result.json record of the tiny suite's shape with its items.json sidecars (no model run)."""
    run_dir, base_dir = tmp_path / name, tmp_path / f"{name}-dense"
    for where, scores in ((run_dir, compressed), (base_dir, dense)):
        where.mkdir(parents=True)
        entry = {"metric": "acc", "items": {str(i): float(v) for i, v in enumerate(scores)}}
        items.write(where, {"scores": {"arc": entry}, "perplexity": {}})
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "run_dir": str(run_dir),
        "baseline": {"path": str(base_dir / "baseline.json")},
        "tasks": {"arc": {"value": mean(compressed), "baseline": mean(dense)}},
        "n_samples": {"arc": {"effective": len(compressed)}},
        "perplexity": {"wiki": {"value": ppl, "baseline": 10.0}},
        "metrics": {"sr": mean(compressed) / mean(dense) if mean(dense) else None},
    }


def test_agreement_is_counted_in_items_not_in_sr(tmp_path):
    """8 items, baseline one right (0.125): one flipped item moves Sr from 0 to 1 but passes (1 item allowed);
    two items swapped keep the same score, Sr unchanged, yet fail (2 flips, counted from items.json)."""
    assert allowed_flips(8, CPU_GPU_TOLERANCE) == 1 and allowed_flips(1000, CPU_GPU_TOLERANCE) == 20
    assert allowed_flips(8, VLLM_TOLERANCE) == 2 and allowed_flips(1000, VLLM_TOLERANCE) == 30
    cpu = _result(tmp_path, "cpu", [0] * 8, [1] + [0] * 7, 20.0)
    one = _result(tmp_path, "one", [1] + [0] * 7, [1] + [0] * 7, 20.2)
    found = comparison(cpu, one, CPU_GPU_TOLERANCE, ("cpu", "gpu"))
    assert found["disagreements"] == [] and found["sr"] == {"cpu": 0.0, "gpu": 1.0}
    assert [r["diff"] for r in found["rows"] if r["unit"].startswith("items")] == [1, 0]
    swapped = _result(tmp_path, "swap", [0] * 8, [0, 1] + [0] * 6, 20.0)
    found = comparison(cpu, swapped, CPU_GPU_TOLERANCE, ("cpu", "gpu"))
    assert len(found["disagreements"]) == 1 and "arc dense" in found["disagreements"][0]
    # Perplexity keeps its relative bound.
    far = _result(tmp_path, "far", [0] * 8, [1] + [0] * 7, 21.0)
    assert "wiki compressed" in comparison(cpu, far, CPU_GPU_TOLERANCE, ("cpu", "gpu"))["disagreements"][0]


# ------------------------------------------------------------------------------------ EXCLUSIVE_PROCESS
def _subprocess_estimate(backend: str, eval_device: str = "cuda") -> dict:
    fields = {"eval_backend": backend, "eval_process": "subprocess", "eval_device": eval_device}
    if backend == "vllm":
        fields |= {"vllm_gpu_fraction": 0.5, "gpu_total_bytes": 80 * memory.GiB}
    return memory.estimate(SHAPES, work(compress_device="cuda", **fields)).to_dict()


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_exclusive_process_gpu_refuses_a_subprocess_evaluator_naming_the_fix(tmp_path, monkeypatch, backend):
    """No GPU here: the compute-mode reader is replaced by one that answers as an EXCLUSIVE_PROCESS GPU would."""
    modes = iter(["Exclusive_Process", "Default"])
    monkeypatch.setattr(preflight, "gpu_compute_mode", lambda: next(modes))
    roomy = node(tmp_path, gpu_mem_gb=80, host_ram_gb=256)
    est = _subprocess_estimate(backend)
    with pytest.raises(ConfigError) as err:
        preflight.check(est, roomy)
    msg = str(err.value)
    assert f"child process ({backend}) could not start" in msg and "Exclusive_Process" in msg
    assert "evaluator=hf" in msg and "-c DEFAULT" in msg
    assert est["gpu_compute_mode"] == "Exclusive_Process"  # recorded in the estimate (result.json)
    preflight.check(_subprocess_estimate(backend), roomy)  # DEFAULT mode: the same plan passes


def test_compute_mode_is_not_asked_where_no_child_takes_the_gpu(tmp_path, monkeypatch):
    def refuse():
        raise AssertionError("compute mode read for a run whose evaluation needs no second GPU context")

    monkeypatch.setattr(preflight, "gpu_compute_mode", refuse)
    roomy = node(tmp_path, gpu_mem_gb=80, host_ram_gb=256)
    preflight.check(
        memory.estimate(SHAPES, work(eval_device="cuda", compress_device="cuda")).to_dict(), roomy
    )
    preflight.check(_subprocess_estimate("hf", eval_device="cpu"), roomy)


def test_compute_mode_reader_asks_nvml_else_nvidia_smi_by_the_gpus_uuid(tmp_path, monkeypatch):
    """No GPU, NVML or nvidia-smi here: torch.cuda answers as one visible GPU, pynvml is a stand-in module, and
    nvidia-smi a script on PATH that records its arguments."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert preflight.gpu_compute_mode() is None  # no CUDA: nothing asked
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="8f3c-01"))
    asked = []
    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda u: asked.append(u) or "handle",
        nvmlDeviceGetComputeMode=lambda h: 3,
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert preflight.gpu_compute_mode() == "Exclusive_Process" and asked == [b"GPU-8f3c-01"]
    # No pynvml: nvidia-smi, asked about the same GPU by UUID.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    log = tmp_path / "args"
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(f'#!/bin/sh\necho "$@" > {log}\necho Exclusive_Process\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    assert preflight.gpu_compute_mode() == "Exclusive_Process"
    assert "--id=GPU-8f3c-01" in log.read_text() and "--query-gpu=compute_mode" in log.read_text()
    smi.write_text("#!/bin/sh\nexit 9\n")  # a failing nvidia-smi: unknown, not a refusal
    assert preflight.gpu_compute_mode() is None


# ------------------------------------------------------------------------------------ gpu-kit and the proof
def test_kit_is_jcexps_closure_without_torch_or_what_the_machine_has():
    """Read from this venv's installed metadata (no download): what `make gpu-kit` fetches."""
    from bench.gpu_proof import EXCLUDED, MACHINE_HAS, kit_plan

    plan = {e["name"]: e for e in kit_plan()}
    assert {
        "jcexp",
        "llmcompressor",
        "compressed-tensors",
        "lm-eval",
        "hydra-core",
        "omegaconf",
    } <= plan.keys()
    assert {
        "antlr4-python3-runtime",
        "submitit",
        "hydra-submitit-launcher",
        "pydantic-core",
        "gguf",
    } <= plan.keys()
    assert "torch" not in plan and "wandb" not in plan and "numpy" not in plan
    assert not (plan.keys() & (MACHINE_HAS | EXCLUDED.keys()))
    assert plan["llmcompressor"]["version"] == "0.14.0.1" and plan["lm-eval"]["version"] == "0.4.13"
    assert "antlr4_9_3" in plan["latex2sympy2-extended"]["extras"]  # jcexp's pinned extra is followed


def test_gpu_proof_dry_run_lists_every_check_and_skips_each_gpu_check_by_name():
    from bench.gpu_proof import CHECKS

    done = subprocess.run(
        ["bash", "bench/gpu_proof.sh", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "SKIP kit-install: --dry-run: the kit is not installed" in lines
    for name, gpu in CHECKS:
        line = next(x for x in lines if x.split(" ", 1)[1].startswith(f"{name}:"))
        assert line.startswith("SKIP") if gpu else line.split()[0] in ("PASS", "SKIP"), line
    assert lines[-1].startswith("gpu-proof: passed")


def test_gpu_proof_without_a_gpu_fails_instead_of_passing(tmp_path):
    """Not a dry run, and no CUDA here: the cuda check fails, the GPU checks skip naming it, exit non-zero."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_proof", "proof", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL cuda: RuntimeError: no CUDA device visible" in done.stdout
    assert "SKIP device-contract: no CUDA device" in done.stdout and "FAILED cuda" in done.stdout
    assert (tmp_path / "proof.json").is_file()


def test_compression_rates_probe_runs_at_small_shapes_on_cpu(tmp_path):
    """The GPU check's code path (llm-compressor's accumulate_hessian and quantize_weight, Case B's sweep) at a
    64 x 256 weight on CPU, so that an API change fails here rather than on a lent GPU."""
    import json

    from bench.gpu_proof import Proof

    line = Proof(tmp_path, dry_run=False).compression_rates(device="cpu", rows=64, cols=256, tokens=32)
    record = json.loads((tmp_path / "compression_rates.json").read_text())
    assert record["shape"] == [64, 256] and set(record["sweep_s"]) == {"case_b", "stock"}
    assert "Case B" in line and record["hessian_fp32_tflops"] > 0


def test_estimate_prices_each_compression_term_and_case_bs_column_loop():
    """bench/estimate.py's terms (pure arithmetic): Case B pays its eager column loop, stock GPTQ (the fused
    Triton block on CUDA) does not; the fp32 Hessians scale with the calibration tokens; the chunk tails with the
    number of request chunks; a checkpoint not written costs no write."""
    from bench.estimate import GPUS, SUITE, compression_terms, eval_overheads, paper_eval_settings

    one = compression_terms("h100", GPUS["h100"], 2**20, us_per_column=100.0)
    b, stock = one["GPTQ, Case B (pruned points)"], one["GPTQ, stock (quantization only)"]
    assert b["columns"] == 32 * (4 * 4096 + 14336) == 983_040 and one["SparseGPT"]["columns"] == 1_245_184
    assert stock["column_loop"] == 0 and abs(b["total"] - stock["total"] - 98.304) < 1e-6
    two = compression_terms("h100", GPUS["h100"], 2**21, us_per_column=100.0)
    assert abs(two["SparseGPT"]["hessians_fp32"] / one["SparseGPT"]["hessians_fp32"] - 2) < 1e-9
    settings = paper_eval_settings()
    small = eval_overheads(
        settings, GPUS["h100"], 16e9, written=True, chunk=max(q for q, _, _ in SUITE.values())
    )
    many = eval_overheads(settings, GPUS["h100"], 16e9, written=False, chunk=1000)
    assert (
        many["chunk_tails"] > 4 * small["chunk_tails"]
        and many["checkpoint_write"] == 0 < small["checkpoint_write"]
    )
