"""The SLURM launcher: the sbatch script rendered from conf/hydra/launcher/slurm.yaml, and a sweep on the tiny
model submitted as a real SLURM array to a single-node cluster this test starts on localhost (Debian's
slurmctld, slurmd and munge, as root). Where that cannot start, the real-cluster test skips and says why."""

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ROOT, TINY, launch


def _compose_slurm(*overrides: str):
    from hydra import compose, initialize_config_dir

    import jcexp.config  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)


def test_sbatch_script_renders_from_the_yaml(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    # submitit's SlurmExecutor wants an srun on PATH; rendering never runs it, so a stub does without SLURM.
    stub = tmp_path / "bin" / "srun"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")
    cfg = _compose_slurm("hydra.launcher.partition=a100", "hydra.launcher.array_parallelism=3")
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        _render_and_check(cfg, tmp_path)
    finally:
        HydraConfig.instance().cfg = previous  # never leak a job config into later in-process runs


def _render_and_check(cfg, tmp_path):
    from hydra.utils import instantiate

    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_.endswith("JcexpSlurmLauncher")
    params = {k: v for k, v in launcher_cfg.items() if k != "_target_"}
    params["submitit_folder"] = str(tmp_path / "%j")
    launcher = instantiate({"_target_": launcher_cfg._target_, **params})
    executor = launcher._executor()._executor  # submitit's SlurmExecutor (private: rendering only, no sbatch)
    executor.parameters["map_count"] = 6  # what map_array sets for a 6-point sweep
    script = executor._make_submission_file_text(executor._submitit_command_str, "uid")
    lines = script.splitlines()
    for line in (
        "#SBATCH --partition=a100",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --time=1440",
        "#SBATCH --array=0-5%3",
        # Requeue on timeout: submitit's handler catches USR2, 300 s before the limit, and runs scontrol requeue.
        "#SBATCH --signal=USR2@300",
        "#SBATCH --requeue",
        "export OMP_WAIT_POLICY=PASSIVE",
    ):
        assert line in lines, (line, script)
    assert "srun" in script and "submitit.core._submit" in script
    # max_num_timeout reaches submitit: it is not an sbatch flag but the requeue budget pickled with each job.
    # Also with 1: submitit's own default is 3, so the YAML's 3 alone would not show that it is passed.
    assert launcher_cfg.max_num_timeout == 3 == executor.max_num_timeout
    other = instantiate({"_target_": launcher_cfg._target_, **params, "max_num_timeout": 1})
    assert other._executor()._executor.max_num_timeout == 1
    # ... and the job can be requeued: hydra-submitit-launcher's checkpoint (resubmit with the same arguments).
    # (By name: Hydra execs plugin modules on its own, so the class object may be a second copy.)
    assert type(launcher).checkpoint.__qualname__ == "BaseSubmititLauncher.checkpoint"
    again = launcher.checkpoint(["pruner.sparsity=25"], "hydra.sweep.dir", 0, "id", {})
    assert again.function is launcher and again.args[0] == ["pruner.sparsity=25"]
    # JCEXP_THREADS comes from the allocation unless the submitting shell set it; run the rendered line.
    export = next(line for line in lines if line.startswith("export JCEXP_THREADS="))
    clean = {k: v for k, v in os.environ.items() if k not in ("JCEXP_THREADS", "SLURM_CPUS_PER_TASK")}
    for extra, threads in (
        ({"SLURM_CPUS_PER_TASK": "8", "SLURM_CPUS_ON_NODE": "16"}, "8"),
        ({"SLURM_CPUS_ON_NODE": "16"}, "16"),  # no --cpus-per-task: what the node gave the job
        ({"JCEXP_THREADS": "3", "SLURM_CPUS_PER_TASK": "8"}, "3"),
    ):
        env = {**clean, **extra}
        out = subprocess.run(["bash", "-c", f'{export}\necho "$JCEXP_THREADS"'], env=env, capture_output=True)
        assert out.stdout.decode().strip() == threads, (extra, out)


# ---------------------------------------------------------------- a real single-node cluster on localhost
def _why_no_slurm() -> str | None:
    if os.geteuid() != 0:
        return f"SLURM daemons need root here (running as {getpass.getuser()})"
    missing = [b for b in ("slurmctld", "slurmd", "munged", "sbatch") if shutil.which(b) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurmctld slurmd slurm-client munge)"
    return None


def _wait(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.5)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
        Path(d).mkdir(parents=True, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    conf = base / "slurm.conf"
    conf.write_text(
        f"""ClusterName=jcexp
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
NodeName={host} CPUs={os.cpu_count()} RealMemory=8000 State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
    )
    for d in ("state", "spool"):
        (base / d).mkdir()
    env = {**os.environ, "SLURM_CONF": str(conf)}
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        subprocess.run(
            ["su", "-s", "/bin/sh", "munge", "-c", "munged --force"], check=False, capture_output=True
        )
    subprocess.run(["slurmctld"], env=env, check=True)
    subprocess.run(["slurmd"], env=env, check=True)
    try:
        _wait(
            lambda: (
                "idle"
                in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
            ),
            60,
            f"SLURM node never became idle; see {base}/slurmctld.log and slurmd.log",
        )
        yield {"SLURM_CONF": str(conf)}  # only what differs: launch() adds it to the current environment
    finally:
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            pid = base / pid_file
            if pid.exists():
                subprocess.run(["kill", pid.read_text().strip()], check=False)


@pytest.mark.slurm
def test_sweep_runs_as_a_slurm_array(slurm, tmp_path):
    args = (
        "-m",
        *TINY,
        "save_model=false",
        "logger=none",
        "device=cpu",
        "hydra/launcher=slurm",
        "hydra.launcher.partition=cpu",
        "hydra.launcher.gpus_per_node=null",  # the test node has no GPU; one GPU per job is the YAML default
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=3",
        "hydra.launcher.timeout_min=20",
        "hydra.launcher.array_parallelism=2",
        "pruner.sparsity=0,25",
        "quant.bits=4",
        f"paths.cache_dir={tmp_path / 'cache'}",
    )
    proc = launch(*args, outputs=tmp_path, cwd=tmp_path, env=slurm)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "submitted SLURM array" in proc.stdout + proc.stderr
    sweep = next(p for p in tmp_path.glob("multirun/*/*") if p.is_dir())
    results = sorted(sweep.glob("*/result.json"))
    assert len(results) == 2
    md = (sweep / "report.md").read_text()
    assert "2 complete run(s), 0 failed, 0 missing." in md and "| tiny_random | 25% 4bit | 81.25% |" in md
    # The jobs really ran under SLURM: submitit's per-task logs sit under array job ids (<id>_<task>).
    assert any("_" in p.name for p in (sweep / ".submitit").iterdir())
