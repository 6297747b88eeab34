"""The resource preflight's decision: whether a planned run's estimated peaks (jcexp/memory.py) fit the node,
and if not, a refusal before any weight is read that names the numbers and the setting to change.

:func:`check` compares the estimate with what the node has (host RAM available, bounded by the job's cgroup;
GPU memory free; disk free per file system) and with vLLM's own start-up conditions, and raises
:class:`jcexp.config.ConfigError` (or logs, with ``resources.enforce=false``). The advice names the settings
behind the largest components of the peak (``SETTINGS``) and, where one exists, a value that fits, found by
estimating again with the setting changed.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from jcexp.config import ConfigError
from jcexp.memory import (
    DISK_HEADROOM_BYTES,
    PARENT_CUDA_BYTES,
    VLLM_CONTEXT_BYTES,
    GiB,
    MiB,
    estimate_from_dict,
    fmt_bytes,
)

log = logging.getLogger("jcexp")

# What to change when a component weighs on a peak (shown in the refusal); components not listed (the runtime,
# the tokenizer, CUDA's own memory) have no setting.
_EVAL = "lower benchmark.batch_size or benchmark.max_length"
SETTINGS = {
    "logits": _EVAL,
    "log_softmax": _EVAL,
    "activations": _EVAL,
    "eval_slack": _EVAL,
    "kv_cache": "lower benchmark.batch_size, benchmark.max_length or benchmark.gen_kwargs.max_gen_toks",
    "calibration_hidden": "lower calibration.num_samples or calibration.seq_len",
    "calibration_mask": "lower calibration.num_samples or calibration.seq_len",
    "calibration_rotary": "lower calibration.num_samples or calibration.seq_len",
    "layer_forward": "lower calibration.seq_len",
    "case_ratio_copy": "set errors.case_ratio=false",
    "error_probe": "lower errors.tokens (or set errors.enabled=false)",
    "capture_forward": "lower errors.samples (or set errors.enabled=false)",
    "weights": "load the model in 16 bits (model.source.dtype=bfloat16)",
    "hessians": "use a GPU with more memory (SparseGPT: pruner.modifier.offload_hessians=true)",
    "solver": "use a GPU with more memory",
    "layer_weights": "use a GPU with more memory",
    "save_copy": "set save_model=false",
    "int8_fp_copy": "use quant=int8_weight (weight-only int8 keeps no 16-bit copy)",
}


# ----------------------------------------------------------------------------------------------- the check
def _cgroup_room() -> int | None:
    """Memory the cgroup (SLURM --mem, a container limit) still allows, or None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return int(limit) - usage
    return None


def host_capacity() -> tuple[int, str]:
    """Host RAM this process can count on: what is available now plus what it already holds (the estimate
    counts the running process too), bounded by its cgroup's limit."""
    import psutil

    own = psutil.Process().memory_info().rss
    room = psutil.virtual_memory().available
    where = "available on this node"
    cgroup = _cgroup_room()
    if cgroup is not None and cgroup < room:
        room, where = cgroup, "left under this job's cgroup memory limit"
    return room + own, where


def gpu_compute_mode() -> str | None:
    """The compute mode of the GPU that ``cuda`` means here, as nvidia-smi names it ("Default",
    "Exclusive_Process", "Prohibited"), or None without CUDA or where it cannot be read. torch has no API for
    it (its device properties carry no compute mode): NVML's, through pynvml where it is installed, else
    ``nvidia-smi --query-gpu=compute_mode``. The GPU is named by its UUID, so CUDA_VISIBLE_DEVICES'
    renumbering cannot point the query at another card. Neither query opens a CUDA context."""
    import subprocess

    import torch

    if not torch.cuda.is_available():
        return None
    uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            mode = pynvml.nvmlDeviceGetComputeMode(pynvml.nvmlDeviceGetHandleByUUID(uuid.encode()))
        finally:
            pynvml.nvmlShutdown()
        return {0: "Default", 2: "Prohibited", 3: "Exclusive_Process"}.get(mode, f"mode {mode}")
    except Exception as exc:  # noqa: BLE001 - no pynvml or no NVML: ask nvidia-smi
        log.debug("preflight: NVML did not give the compute mode (%s); asking nvidia-smi", exc)
    cmd = ["nvidia-smi", f"--id={uuid}", "--query-gpu=compute_mode", "--format=csv,noheader"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("preflight: could not read the GPU's compute mode (%s)", exc)
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def gpu_capacity() -> tuple[int, str]:
    import torch

    free, _total = torch.cuda.mem_get_info()
    return free + torch.cuda.memory_reserved(), f"free on {torch.cuda.get_device_name()}"


def _what_fits(d: dict[str, Any], resource: str, component: str, room: float, headroom: float) -> str:
    """A concrete value of the setting behind ``component`` that fits, where one exists."""

    def fits(**changes: Any) -> bool:
        return estimate_from_dict(d, **changes).peak(resource, vllm=False)[0] * (1 + headroom) <= room

    work = d["inputs"]["workload"]
    if SETTINGS.get(component) in (_EVAL, SETTINGS["kv_cache"]):
        batch = work["eval"]["batch"]
        if batch is None:
            return " (batch_size=auto: set an integer" + (", 1 fits)" if fits(batch=1) else ")")
        for b in range(batch - 1, 0, -1):
            if fits(batch=b):
                return f" (benchmark.batch_size={b} fits)"
        return " (not even benchmark.batch_size=1 fits: lower benchmark.max_length)"
    if component.startswith("calibration_"):
        lo, hi = 0, work["calib_samples"] - 1
        while lo < hi:  # the largest num_samples that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(calib_samples=mid) else (lo, mid - 1)
        return f" (calibration.num_samples={lo} fits)" if lo else ""
    return ""


def _advice(d: dict[str, Any], resource: str, components: list[str], room: float, headroom: float) -> str:
    """The settings behind the largest components of the peak, largest first (two at most)."""
    tips: list[str] = []
    families: set[str] = set()
    for comp in components:
        setting = SETTINGS.get(comp)
        family = "eval" if setting in (_EVAL, SETTINGS["kv_cache"]) else setting
        if setting is None or family in families:
            continue
        families.add(family)
        if comp == "weights" and d["inputs"]["shapes"]["dtype"] != "float32":
            continue  # already 16 bits
        tips.append(setting + _what_fits(d, resource, comp, room, headroom))
        if len(tips) == 2:
            break
    return "".join(f"{t}; or " for t in tips)


def check(estimate: dict[str, Any], cfg, out: str | Path | None = None) -> None:
    """Raise ConfigError when the estimated peak host RAM, GPU memory or disk does not fit the node.

    ``cfg.resources`` (when the schema has it): ``enforce`` (false: log instead of raising), ``host_ram_gb`` and
    ``gpu_mem_gb`` (what the run may use; null: what the node has free now), ``headroom`` (the estimate must fit
    with this share to spare). ``out`` is the run directory (the compressed checkpoint's disk); default
    ``paths.root``."""
    res = cfg.get("resources") or {}
    enforce = bool(res.get("enforce", True))
    headroom = float(res.get("headroom", 0.1))
    bad = [f"resources.headroom={headroom} must be >= 0"] if headroom < 0 else []
    bad += [
        f"resources.{k}={res.get(k)} must be positive (or null: what the node has)"
        for k in ("host_ram_gb", "gpu_mem_gb")
        if res.get(k) is not None and float(res.get(k)) <= 0
    ]
    if bad:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(bad))
    problems: list[str] = []

    for resource, key, setting in (("host_ram", "host", "host_ram_gb"), ("gpu_mem", "gpu", "gpu_mem_gb")):
        peak = estimate.get(resource)
        if not peak:
            continue
        if res.get(setting) is not None:
            room, where = float(res[setting]) * GiB, f"allowed by resources.{setting}"
        else:
            room, where = host_capacity() if key == "host" else gpu_capacity()
        if key == "gpu":
            problems += _vllm_problems(estimate, room, where)
        # A vLLM child's phases were checked just above, against what vLLM itself requires (no headroom: its
        # share is exact); the other phases with the headroom.
        phases = {n: p for n, p in peak["phases"].items() if not (key == "gpu" and "vllm_cuda_context" in p)}
        if not phases:
            continue
        phase = max(phases, key=lambda n: phases[n]["total_mb"])
        need = phases[phase]["total_mb"] * MiB
        if need * (1 + headroom) <= room:
            continue
        parts = {k: v for k, v in peak["phases"][phase].items() if k != "total_mb"}
        biggest = sorted(parts.items(), key=lambda kv: kv[1], reverse=True)
        detail = ", ".join(f"{k} {fmt_bytes(v * MiB)}" for k, v in biggest[:3])
        advice = _advice(estimate, key, [k for k, _ in biggest], room, headroom)
        name = "host RAM" if key == "host" else "GPU memory"
        problems.append(
            f"not enough {name}: the run needs about {fmt_bytes(need)} at its peak ({phase}: {detail}), "
            f"{fmt_bytes(room)} {where} (with {headroom:.0%} headroom); to fit: {advice}"
            f"run on a node with more {name} (resources.{setting} states what the run may use, "
            "resources.enforce=false runs anyway)"
        )

    problems += _compute_mode_problems(estimate)
    problems += _disk_problems(estimate, cfg, Path(out) if out else Path(cfg.paths.root))
    if not problems:
        return
    message = "resource preflight:\n  - " + "\n  - ".join(problems)
    if enforce:
        raise ConfigError(message)
    log.warning("%s\n(resources.enforce=false: running anyway)", message)


def _vllm_problems(estimate: dict[str, Any], room: float, where: str) -> list[str]:
    """vLLM's own start-up conditions, from the GPU memory this run may use (``room``: measured free now, or
    resources.gpu_mem_gb): ``gpu_memory_utilization`` x total must be free when the child starts, beside this
    process's CUDA context and the child's (PARENT_CUDA_BYTES, VLLM_CONTEXT_BYTES: assumed), and the KV cache
    left inside that share must hold one sequence of ``max_model_len``. Records what it used in
    ``estimate["vllm"]`` (result.json) and returns the problems, each with the value that fits."""
    work = estimate["inputs"]["workload"]
    frac, total = work.get("vllm_gpu_fraction"), work.get("gpu_total_bytes")
    if work.get("eval_backend") != "vllm" or not frac or not total:
        return []
    est = estimate_from_dict(estimate)
    share = frac * total
    free = room - PARENT_CUDA_BYTES - VLLM_CONTEXT_BYTES  # what vLLM will find free at its start
    fits = math.floor(100 * free / total) / 100  # the largest gpu_memory_utilization that starts
    max_len = int(work["eval"]["max_length"])
    one_sequence = max_len * est.shapes.kv_bytes_per_token
    record: dict[str, Any] = {
        "gpu_memory_utilization": frac,
        "total_gb": round(total / GiB, 2),
        "room_gb": round(room / GiB, 2),
        "room": where,
        "parent_cuda_context_gb": round(PARENT_CUDA_BYTES / GiB, 2),
        "vllm_cuda_context_gb": round(VLLM_CONTEXT_BYTES / GiB, 2),
        "free_at_start_gb": round(free / GiB, 2),
        "largest_utilization_that_starts": fits,
        "max_model_len": max_len,
        "kv_cache_gb": {},
    }
    estimate["vllm"] = record
    problems = []
    if share > free:
        problems.append(
            f"vLLM would not start: it requires evaluator.model_args.gpu_memory_utilization={frac} x "
            f"{fmt_bytes(total)} = {fmt_bytes(share)} free when it starts; about {fmt_bytes(free)} will be "
            f"({fmt_bytes(room)} {where}, "
            f"less this process's CUDA context, {fmt_bytes(PARENT_CUDA_BYTES)}, and vLLM's own, "
            f"{fmt_bytes(VLLM_CONTEXT_BYTES)}: both assumed); to fit: set "
            f"evaluator.model_args.gpu_memory_utilization={fits}, or free the GPU"
        )
    for phase in est.phases:
        if "vllm_cuda_context" not in phase.gpu:
            continue
        kv = phase.gpu["vllm_kv_cache"]
        record["kv_cache_gb"][phase.name] = round(kv / GiB, 2)
        if kv >= one_sequence:
            continue
        inside = sum(phase.gpu[k] for k in ("vllm_weights", "vllm_activations", "vllm_cuda_graphs"))
        want = math.ceil(100 * (inside + one_sequence) / total) / 100
        fix = (
            f"set evaluator.model_args.gpu_memory_utilization={want}"
            if want <= fits
            else f"lower benchmark.max_length (at most gpu_memory_utilization={fits} starts here)"
        )
        problems.append(
            f"vLLM's KV cache ({phase.name}) would get about {fmt_bytes(kv)}: its share, {frac} x "
            f"{fmt_bytes(total)}, less the weights {fmt_bytes(phase.gpu['vllm_weights'])}, the profile's "
            f"activations {fmt_bytes(phase.gpu['vllm_activations'])} and CUDA graphs "
            f"{fmt_bytes(phase.gpu['vllm_cuda_graphs'])}; one sequence of max_model_len={max_len} tokens needs "
            f"{fmt_bytes(one_sequence)}, and vLLM refuses to start without it; to fit: {fix}"
        )
    return problems


def _compute_mode_problems(estimate: dict[str, Any]) -> list[str]:
    """A subprocess evaluator (hf_subprocess, vllm) scoring on the GPU starts a second process on it while
    this one keeps its CUDA context (compression on cuda:0, the preflight's own memory query: torch never
    gives a context back). A GPU in EXCLUSIVE_PROCESS mode allows one context at a time, so the child could
    not create its own. Refused here, naming the fix, rather than after the compression."""
    work = estimate["inputs"]["workload"]
    if work.get("eval_process") != "subprocess" or work.get("eval_device") != "cuda":
        return []
    mode = gpu_compute_mode()
    estimate["gpu_compute_mode"] = mode
    if mode != "Exclusive_Process":
        return []
    return [
        f"the evaluator's child process ({work.get('eval_backend', 'hf')}) could not start on the GPU: "
        "its compute mode is Exclusive_Process (one CUDA context at a time) and this process keeps its own "
        "context while the child runs; to fix: score in this process (evaluator=hf), or have the GPU set to "
        "DEFAULT mode (`nvidia-smi -i <gpu> -c DEFAULT`, as root), or evaluate on the CPU (device=cpu)"
    ]


def _disk_problems(estimate: dict[str, Any], cfg, out: Path) -> list[str]:
    """Free space for both checkpoints, the pruned-model cache and the hub snapshot, summed per file system."""
    disk = estimate.get("disk") or {}
    needs: dict[int, int] = {}
    problems = []
    ours = "free some, move paths.root/paths.cache_dir, or set save_model=false / cache_pruned=false"
    for path, key, what, fix in (
        (out, "save_model", "the compressed checkpoint (save_model)", ours),
        (out, "eval_checkpoint", "the checkpoint the evaluator scores (evaluator)", ours),
        (Path(cfg.paths.cache_dir), "cache_pruned", "the pruned-model cache (cache_pruned)", ours),
        (
            _hub_cache(),
            "hub_download",
            "the model's hub snapshot (config, tokenizer, safetensors weights)",
            "free some, or point HF_HUB_CACHE (or HF_HOME) at a larger disk",
        ),
    ):
        if not disk.get(key) and key in ("eval_checkpoint", "hub_download"):
            continue
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        device = os.stat(probe).st_dev
        needs[device] = needs.get(device, DISK_HEADROOM_BYTES) + int(disk.get(key, 0) * MiB)
        free = shutil.disk_usage(probe).free
        if free < needs[device]:
            problems.append(
                f"not enough free space for {what} under {path}: about {fmt_bytes(needs[device])} needed, "
                f"{fmt_bytes(free)} free; {fix}"
            )
    return problems


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)
