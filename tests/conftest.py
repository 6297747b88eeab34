"""Shared test setup: no hub, W&B offline, every output in a temp dir, configs composed from conf/."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The hub cannot be reached here: make any accidental download fail fast instead of hanging.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# The longest files (measured serially on 2 cores, 2026-12-04), started first so that neither xdist worker is
# left with one of them at the end.
LONGEST_FIRST = (
    "test_smollm2.py",
    "test_gemma3.py",
    "test_budget.py",
    "test_gemma3_stages.py",
    "test_sweep.py",
    "test_evaluator.py",
    "test_bench.py",
    "test_e2e_tiny.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make test` runs two pytest-xdist workers with `--dist loadfile`: each file runs in one worker, so a
    module-scoped fixture (a sweep, a SLURM cluster) is set up once. (`--dist loadgroup` would group across
    files, but xdist 3.8 tags the group through a node attribute that pytest 9 no longer reads.)"""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One cache (converted models, baselines) for the whole session, as in real use."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def compose(tmp_path, shared_cache, monkeypatch):
    """Compose the real conf/ with overrides; outputs go to a fresh temp dir per test."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import jcexp.config  # noqa: F401  (schema + resolvers)

    monkeypatch.setenv("JCEXP_OUTPUTS", str(tmp_path / "outputs"))

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return hydra_compose(
                "config", overrides=[f"paths.cache_dir={shared_cache}", "logger=none", *overrides]
            )

    return _compose


TINY = ("model=tiny_random", "benchmark=tiny", "calibration.num_samples=16", "calibration.seq_len=64")


def launch(
    *args: str, outputs: Path, timeout: int = 900, cwd: Path = ROOT, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python launch.py ...` as the user runs it, in a real process, writing under ``outputs``."""
    full_env = {**os.environ, "JCEXP_OUTPUTS": str(outputs), "WANDB_MODE": "offline", **(env or {})}
    full_env.pop("JCEXP_UID", None)  # each launch draws its own sweep id, as from a fresh shell
    return subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
