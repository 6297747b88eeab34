"""GPU slots and per-job threads of the jcexp_local launcher, without a GPU and without a model: GPU ids from
CUDA_VISIBLE_DEVICES, a fake `nvidia-smi -L` on PATH (with and without MIG) or /proc/driver/nvidia; the
environment each job gets; the up-front refusal of device=cuda with no GPU; the threads default."""

import logging
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.jcexp_launcher import launcher as jl

from .conftest import ROOT, TINY, launch

GPU0 = "GPU-6a8f6c6e-0b5e-7f2c-1d3a-9e0c4b5a7d21"
GPU1 = "GPU-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901"
MIG0 = "MIG-0b6f2a1c-3d4e-5f60-8192-a3b4c5d6e7f8"
MIG1 = "MIG-9c8d7e6f-5a4b-3c2d-1e0f-a9b8c7d6e5f4"

# `nvidia-smi -L` as drivers print it (R470+ MIG UUIDs; older drivers print MIG-GPU-<uuid>/<gi>/<ci>).
SMI_PLAIN = f"""GPU 0: NVIDIA A100-SXM4-80GB (UUID: {GPU0})
GPU 1: NVIDIA A100-SXM4-80GB (UUID: {GPU1})
"""
SMI_MIG = f"""GPU 0: NVIDIA A100-SXM4-40GB (UUID: {GPU0})
  MIG 3g.20gb     Device  0: (UUID: {MIG0})
  MIG 3g.20gb     Device  1: (UUID: {MIG1})
GPU 1: NVIDIA A100-SXM4-40GB (UUID: {GPU1})
"""
SMI_OLD_MIG = f"""GPU 0: A100-SXM4-40GB (UUID: {GPU0})
  MIG 7g.40gb Device 0: (UUID: MIG-{GPU0}/0/0)
"""


@pytest.fixture
def no_gpu_env(monkeypatch, tmp_path):
    """No CUDA_VISIBLE_DEVICES, no nvidia-smi, no /proc/driver/nvidia, no /dev/nvidia0: a GPU-less machine."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("JCEXP_THREADS", raising=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(jl, "PROC_GPUS", tmp_path / "no-proc")
    monkeypatch.setattr(jl, "DEV_NVIDIA0", tmp_path / "no-dev")
    return monkeypatch


def fake_nvidia_smi(monkeypatch, tmp_path: Path, listing: str, rc: int = 0) -> None:
    """An `nvidia-smi` script first on PATH that prints ``listing`` for -L."""
    bin_dir = tmp_path / "smi-bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 2\ncat <<'EOF'\n{listing}EOF\nexit {rc}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")


def point(cfg, idx: int = 0):
    return jl._SweepJob(idx, [], cfg, Path("unused"))


def job_config(**values):
    """The two keys the launcher reads from a job's config, as conf/config.yaml writes them."""
    return OmegaConf.create({"device": "auto", "threads": "${oc.env:JCEXP_THREADS,null}", **values})


# ---------------------------------------------------------------- GPU id discovery
@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ("0,1", ["0", "1"]),
        (f" {GPU0} , {MIG0}", [GPU0, MIG0]),
        (f"MIG-{GPU0}/1/0,3", [f"MIG-{GPU0}/1/0", "3"]),
        ("", []),
        ("-1", []),  # the usual way to hide every GPU
        ("0,-1,2", ["0"]),  # CUDA ignores everything after an invalid id
    ],
)
def test_cuda_visible_devices_ids_are_kept_as_strings(no_gpu_env, value, ids):
    no_gpu_env.setenv("CUDA_VISIBLE_DEVICES", value)
    assert jl.visible_gpus() == ids


def test_nvidia_smi_gpus_by_uuid(no_gpu_env, tmp_path):
    fake_nvidia_smi(no_gpu_env, tmp_path, SMI_PLAIN)
    assert jl.visible_gpus() == [GPU0, GPU1]


def test_nvidia_smi_mig_instances_are_the_slots(no_gpu_env, tmp_path):
    fake_nvidia_smi(no_gpu_env, tmp_path, SMI_MIG)
    assert jl.visible_gpus() == [MIG0, MIG1, GPU1]  # GPU 0 is split in two; GPU 1 is whole
    assert jl.parse_nvidia_smi(SMI_OLD_MIG) == [f"MIG-{GPU0}/0/0"]


def test_cuda_visible_devices_wins_over_nvidia_smi(no_gpu_env, tmp_path):
    fake_nvidia_smi(no_gpu_env, tmp_path, SMI_PLAIN)
    no_gpu_env.setenv("CUDA_VISIBLE_DEVICES", GPU1)
    assert jl.visible_gpus() == [GPU1]


def test_without_nvidia_smi_the_proc_entries_are_counted(no_gpu_env, tmp_path):
    assert jl.visible_gpus() == []
    proc = tmp_path / "proc-gpus"
    for bus in ("0000:3b:00.0", "0000:d8:00.0"):
        (proc / bus).mkdir(parents=True)
    no_gpu_env.setattr(jl, "PROC_GPUS", proc)
    assert jl.visible_gpus() == ["0", "1"]
    fake_nvidia_smi(
        no_gpu_env, tmp_path, "NVIDIA-SMI has failed because it couldn't communicate with the driver\n", 9
    )
    assert jl.visible_gpus() == ["0", "1"]  # a failing nvidia-smi counts as missing


def test_hydra_launcher_gpus_takes_ids_and_ints():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import jcexp.config  # noqa: F401  (schema + resolvers)

    for override, ids in (("[0,1]", ["0", "1"]), (f"[{GPU0},MIG-{GPU1}/1/0]", [GPU0, f"MIG-{GPU1}/1/0"])):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = hydra_compose(
                "config", overrides=[f"hydra.launcher.gpus={override}"], return_hydra_config=True
            )
        assert list(cfg.hydra.launcher.gpus) == ids


# ---------------------------------------------------------------- slots and each job's environment
def test_jobs_get_the_mig_and_uuid_ids_as_slots(no_gpu_env, tmp_path):
    fake_nvidia_smi(no_gpu_env, tmp_path, SMI_MIG)
    no_gpu_env.setattr(jl, "usable_cpus", lambda: 12)
    launcher = jl.JcexpLocalLauncher(submitit_folder="x")
    points = [point(job_config(), i) for i in range(5)]
    launcher._preflight(points)
    assert launcher._slot_ids == [MIG0, MIG1, GPU1]
    # 12 cores, 3 jobs at once (3 slots, 5 points): 4 threads each.
    assert [launcher._job_env(points[0], slot) for slot in launcher._slot_ids] == [
        {"CUDA_VISIBLE_DEVICES": slot, "JCEXP_THREADS": "4"} for slot in (MIG0, MIG1, GPU1)
    ]
    # Ints from the command line are ids too; max_parallel takes the first ones.
    launcher = jl.JcexpLocalLauncher(submitit_folder="x", gpus=[0, 1, 2], max_parallel=2)
    assert launcher._slots() == ["0", "1"]


class _EnvReporter(jl.JcexpLocalLauncher):
    """Runs as the submitit job instead of a Hydra job: reports what the job's process sees."""

    def __call__(self, *args):
        return os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("JCEXP_THREADS")


def test_submitted_jobs_see_their_string_slot(no_gpu_env, tmp_path):
    """Real submitit local jobs (no model): submitit's own CUDA_VISIBLE_DEVICES must not win over the slot."""
    no_gpu_env.setattr(jl, "usable_cpus", lambda: 6)
    no_gpu_env.setenv("PATH", os.defpath)
    launcher = _EnvReporter(submitit_folder=str(tmp_path / "%j"), gpus=[MIG0, GPU1], poll_s=0.1)
    points = [point(job_config(), i) for i in range(3)]
    launcher._preflight(points)
    seen = [job.result() for _, job in launcher._submit(launcher._executor(), points)]
    assert len(seen) == 3 and set(seen) == {(MIG0, "3"), (GPU1, "3")}  # 6 cores // 2 slots
    # CPU slots: submitit's "" hides any GPU; the cores are shared all the same.
    launcher = _EnvReporter(submitit_folder=str(tmp_path / "%j"), gpus=[], max_parallel=2, poll_s=0.1)
    launcher._preflight(points[:2])
    assert [job.result() for _, job in launcher._submit(launcher._executor(), points[:2])] == [("", "3")] * 2


# ---------------------------------------------------------------- device=cuda without a GPU
def test_device_cuda_without_a_gpu_is_refused(no_gpu_env):
    from hydra.errors import CompactHydraException

    launcher = jl.JcexpLocalLauncher(submitit_folder="x")
    with pytest.raises(CompactHydraException, match=r"#1: device=cuda but no GPU was found"):
        launcher._preflight([point(job_config(device="cpu"), 0), point(job_config(device="cuda"), 1)])
    # A pinned job sees only its own GPU, as cuda:0.
    launcher = jl.JcexpLocalLauncher(submitit_folder="x", gpus=["0", "1"])
    launcher._preflight([point(job_config(device="cuda:0"))])
    with pytest.raises(CompactHydraException, match="device=cuda:1, but each job sees only its own GPU"):
        launcher._preflight([point(job_config(device="cuda:1"))])


def test_device_auto_warns_when_a_gpu_device_node_exists(no_gpu_env, tmp_path, caplog):
    launcher = jl.JcexpLocalLauncher(submitit_folder="x")
    with caplog.at_level(logging.WARNING):
        launcher._preflight([point(job_config())])
    assert not caplog.records
    (tmp_path / "nvidia0").touch()
    no_gpu_env.setattr(jl, "DEV_NVIDIA0", tmp_path / "nvidia0")
    with caplog.at_level(logging.WARNING):
        launcher._preflight([point(job_config())])
    assert "device=auto jobs will run on CPU" in caplog.text


def test_a_cuda_sweep_with_no_gpu_submits_nothing(tmp_path):
    proc = launch(
        "-m",
        *TINY,
        "logger=none",
        "device=cuda",
        "pruner.sparsity=0,25",
        f"paths.cache_dir={tmp_path / 'cache'}",
        outputs=tmp_path,
        env={"CUDA_VISIBLE_DEVICES": ""},  # no GPU even where the tests run on a GPU machine
        timeout=120,
    )
    assert proc.returncode == 1
    assert "sweep not started" in proc.stderr and "device=cuda but no GPU was found" in proc.stderr
    assert not list(tmp_path.glob("multirun/*/*/.submitit/*"))


# ---------------------------------------------------------------- threads: cores // jobs at once
def test_threads_default_is_cores_over_jobs_at_once(no_gpu_env):
    no_gpu_env.setattr(jl, "usable_cpus", lambda: 7)

    def threads(launcher, points):
        launcher._preflight(points)
        return launcher._job_env(points[0], None).get("JCEXP_THREADS")

    three = [point(job_config(), i) for i in range(3)]
    assert threads(jl.JcexpLocalLauncher(submitit_folder="x", max_parallel=2), three) == "3"  # 7 // 2
    assert (
        threads(jl.JcexpLocalLauncher(submitit_folder="x", max_parallel=2), three[:1]) == "7"
    )  # one job runs
    assert threads(jl.JcexpLocalLauncher(submitit_folder="x", max_parallel=8), three) == "2"  # 7 // 3
    no_gpu_env.setattr(jl, "usable_cpus", lambda: 1)
    assert threads(jl.JcexpLocalLauncher(submitit_folder="x", max_parallel=2), three) == "1"  # never 0
    # The user's choice stands: threads= in the config, or JCEXP_THREADS in the driver's environment.
    assert threads(jl.JcexpLocalLauncher(submitit_folder="x"), [point(job_config(threads=4))]) is None
    no_gpu_env.setenv("JCEXP_THREADS", "5")
    assert threads(jl.JcexpLocalLauncher(submitit_folder="x"), three) is None


def test_threads_comes_from_jcexp_threads(compose, monkeypatch):
    monkeypatch.delenv("JCEXP_THREADS", raising=False)
    assert compose().threads is None
    monkeypatch.setenv("JCEXP_THREADS", "4")
    assert compose().threads == 4 and isinstance(compose().threads, int)
    assert compose("threads=2").threads == 2
