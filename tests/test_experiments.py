"""Every named experiment, expanded as `python launch.py -m experiment=<name>` expands it and checked as the
launcher checks it before submitting; equal experiments hash equal and reuse each other's result; the
experiment's tags reach W&B."""

import struct
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException, ConfigCompositionException, MissingConfigException
from hydra.types import RunMode
from omegaconf import OmegaConf, open_dict

from hydra_plugins.jcexp_launcher.launcher import JcexpLocalLauncher, _as_current, _SweepJob
from jcexp import run as run_module
from jcexp import scoring
from jcexp.config import effective_config
from jcexp.results import task_config_hash

from .conftest import ROOT, TINY


def sweep(*args: str, search_path: Path | None = None) -> list[_SweepJob]:
    """The points of `python launch.py -m <args>`, built the way Hydra and the jcexp launcher build them:
    the experiment's hydra.sweeper.params plus the command line, parsed by Hydra's override parser and crossed
    by BasicSweeper.split_arguments; each point composed by the config loader's load_sweep_config; then the
    launcher's own pre-submit check (check_values on every point; one bad point raises for the sweep)."""
    import jcexp.config  # noqa: F401  (schema + resolvers)

    args = ("logger=none", *args)
    if search_path is not None:
        args = (*args, f"hydra.searchpath=[file://{search_path}]")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=list(args), run_mode=RunMode.MULTIRUN)
        params = [f"{k}={v}" for k, v in (master.hydra.sweeper.params or {}).items()]
        # The sweeper gets the task overrides; hydra.* ones reach each point through load_sweep_config.
        task = [a for a in args if not a.startswith("hydra.")]
        parsed = OverridesParser.create(config_loader=loader).parse_overrides([*params, *task])
        (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
        points = []
        for idx, overrides in enumerate(batch):
            config = loader.load_sweep_config(master, list(overrides))
            with open_dict(config.hydra.job):
                config.hydra.job.num = idx  # as the launcher's _points does
            points.append(_SweepJob(idx, list(overrides), config, Path("unused")))
    JcexpLocalLauncher._check(points)
    return points


def what_runs(point: _SweepJob) -> tuple[float, str | None, int, str]:
    """(sparsity %, mask, bits, quantizer) as the hash sees them: an inactive stage counts as none."""
    with _as_current(point.config):
        task = OmegaConf.masked_copy(point.config, [k for k in point.config if k != "hydra"])
        c = effective_config(OmegaConf.to_container(task, resolve=True))
    return (round(c["pruner"]["sparsity"], 3), c["pruner"]["mask"], c["quant"]["bits"], c["quant"]["name"])


def hashes(points: list[_SweepJob]) -> list[str]:
    out = []
    for point in points:
        with _as_current(point.config):
            out.append(task_config_hash(point.config))
    return out


S33 = 33.333
# experiment -> the (sparsity, mask, bits, quantizer) of each point it sweeps (in any order).
EXPECTED = {
    # x quant.case A, B, joint
    "case_ab": [(s, None, b, "gptq") for s, b in ((25, 4), (S33, 3), (50, 8)) for _ in "ABj"],
    "error_analysis": [(s, None, b, "gptq") for s in (0, 10, 25, S33, 50) for b in (4, 3)],
    # Table VII's pairs at equal TCr: 75% (50%+8 vs 4), 81.25% (25%+4 vs 3), 87.5% (33.3%+3 vs 2).
    "joint_tcr": [
        (50, None, 8, "gptq"),
        (0, None, 4, "gptq"),
        (25, None, 4, "gptq"),
        (0, None, 3, "gptq"),
        (S33, None, 3, "gptq"),
        (0, None, 2, "gptq"),
    ],
    "onepass_vs_sequential": [
        (s, None, b, q) for s, b in ((25, 4), (S33, 3)) for q in ("gptq", "gptq_onepass")
    ],
    "pruning_only": [(s, None, 16, "none") for s in (25, S33, 50, 75)],
    "quantization_only": [(0, None, b, "gptq") for b in (8, 4, 3, 2)],
    "semi_structured": [
        (s, m, b, "none" if b == 16 else "gptq")
        for s, m in ((25, "2:8"), (25, "1:4"), (S33, "2:6"), (S33, "1:3"))
        for b in (16, 4, 3)
    ],
    # Table IV: 4 bit GPTQ vs NF4 at 0/25%, 8 bit GPTQ vs LLM.int8() at 0/50%.
    "simple_quantizers": [(s, None, 4, q) for s in (0, 25) for q in ("gptq", "nf4")]
    + [(s, None, 8, q) for s in (0, 50) for q in ("gptq", "llm_int8")],
}


def test_every_experiment_has_its_expectation():
    # experiment=budget has no fixed points: its sweeper races them (tests/test_budget.py).
    named = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml") if p.stem != "budget")
    assert sorted(EXPECTED) == named


@pytest.mark.parametrize("experiment", sorted(EXPECTED))
def test_experiment_sweep_expands_and_passes_the_launchers_checks(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("JCEXP_OUTPUTS", str(tmp_path))
    points = sweep(f"experiment={experiment}")
    assert sorted(map(what_runs, points), key=str) == sorted(
        ((round(float(s), 3), m, b, q) for s, m, b, q in EXPECTED[experiment]), key=str
    )
    assert len(set(hashes(points))) == len(points), "two points of one sweep are the same experiment"
    for point in points:  # the experiment's own values reach every point
        assert list(point.config.tags) == [experiment]


def test_onepass_points_are_one_pass_and_sequential_points_are_not(tmp_path, monkeypatch):
    monkeypatch.setenv("JCEXP_OUTPUTS", str(tmp_path))
    for point in sweep("experiment=onepass_vs_sequential"):
        fused = "variant=onepass" in point.overrides
        assert point.config.pruner.fused is fused
        assert point.config.pruner.name == ("onepass" if fused else "sparsegpt")


def _experiment(tmp_path: Path, text: str) -> Path:
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "bogus.yaml").write_text("# @package _global_\n" + text)
    return tmp_path


def test_an_experiment_naming_a_missing_point_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("JCEXP_OUTPUTS", str(tmp_path))
    conf = _experiment(tmp_path, "hydra:\n  sweeper:\n    params:\n      point: s25_w4,s12_w5\n")
    with pytest.raises((MissingConfigException, ConfigCompositionException), match="s12_w5"):
        sweep("experiment=bogus", search_path=conf)


def test_an_experiment_with_a_bad_value_fails_the_pre_submit_check(tmp_path, monkeypatch):
    monkeypatch.setenv("JCEXP_OUTPUTS", str(tmp_path))
    conf = _experiment(tmp_path, "hydra:\n  sweeper:\n    params:\n      pruner.sparsity: 25,150\n")
    with pytest.raises(CompactHydraException, match=r"sweep not started.*\n.*pruner.sparsity=150"):
        sweep("experiment=bogus", search_path=conf)


# ------------------------------------------------------------------------------ equal experiments, equal hash
def chash(compose, *overrides: str) -> str:
    return task_config_hash(compose(*overrides))


@pytest.mark.parametrize(
    "a, b",
    [
        (("quant=none",), ("quant.bits=16",)),  # no quantization, said two ways
        (("quant=none",), ("quant=rtn", "quant.bits=16", "quant.group_size=null")),
        (("pruner=none",), ("pruner.sparsity=0",)),  # no pruning, said two ways
        (("pruner=none", "quant.bits=3"), ("pruner=wanda", "pruner.sparsity=0", "quant.bits=3")),
        # Nothing compressed: the calibration settings of the run are never used.
        (("pruner=none", "quant=none"), ("pruner.sparsity=0", "quant.bits=16", "calibration.num_samples=8")),
    ],
)
def test_equal_experiments_hash_equal(compose, a, b):
    assert chash(compose, *a) == chash(compose, *b)


@pytest.mark.parametrize(
    "a, b",
    [
        (("quant=none",), ("quant.bits=8",)),
        (("pruner=none",), ("pruner.sparsity=25",)),
        (
            ("pruner=none", "quant=none"),
            ("pruner.sparsity=0", "pruner.mask=2:8", "quant=none"),
        ),  # a mask prunes
        (
            ("quant.bits=4",),
            ("quant.bits=4", "calibration.num_samples=8"),
        ),  # calibration matters when a stage runs
        (
            ("pruner=none",),
            ("pruner=none", "calibration.seq_len=128"),
        ),  # quantizing alone uses calibration too
        # Error analysis reads calibration windows, so with it on they count even when nothing is compressed.
        (
            ("pruner=none", "quant=none", "errors.enabled=true"),
            ("pruner=none", "quant=none", "errors.enabled=true", "calibration.num_samples=8"),
        ),
        (("quant=nf4", "quant.modifier.backend=torch"), ("quant=nf4", "quant.modifier.backend=bitsandbytes")),
    ],
)
def test_different_experiments_hash_differently(compose, a, b):
    assert chash(compose, *a) != chash(compose, *b)


@pytest.mark.parametrize("group", ["pruner", "quant"])
def test_the_none_choices_keep_their_hash(compose, group):
    """The canonical inactive stage is exactly what `<group>=none` composes to: results stored for those runs
    before canonicalization keep their hash."""
    resolved = OmegaConf.to_container(compose(f"{group}=none"), resolve=True)
    resolved[group].pop("nm_layout", None)  # added later, and left out of the hash while it is "exact"
    assert effective_config(resolved)[group] == resolved[group]


def test_nm_layout_and_sweep_revisions_in_the_hash(compose):
    """`exact` (what earlier masks ran) keeps earlier hashes; `paper` is another experiment; Case B and one-pass
    results of the earlier sweeps are not reused (config.SWEEP_REVISIONS)."""
    assert chash(compose, "pruner.mask=2:6") == chash(compose, "pruner.mask=2:6", "pruner.nm_layout=exact")
    assert chash(compose, "pruner.mask=2:6") != chash(compose, "pruner.mask=2:6", "pruner.nm_layout=paper")
    assert chash(compose, "pruner.sparsity=25") == chash(
        compose, "pruner.sparsity=25", "pruner.nm_layout=paper"
    )
    resolved = OmegaConf.to_container(compose("quant.case=joint"), resolve=True)
    assert effective_config(resolved)["quant"]["sweep_revision"] == 4
    resolved = OmegaConf.to_container(compose("quant.case=B"), resolve=True)
    assert effective_config(resolved)["quant"]["sweep_revision"] == 2


@pytest.mark.parametrize(
    "first, second",
    [
        # Nothing compressed, said two ways (and with other calibration settings): only the dense evaluation.
        (("pruner=none", "quant=none"), ("pruner.sparsity=0", "quant.bits=16", "calibration.num_samples=8")),
        # 25% SparseGPT alone, said two ways: the second must not prune again.
        (("quant=none",), ("quant=rtn", "quant.bits=16")),
    ],
)
def test_an_equal_experiment_reuses_the_stored_result(compose, monkeypatch, first, second):
    done = run_module.run(compose(*TINY, "save_model=false", *first))

    def recompute(*_, **__):
        raise AssertionError("an equal experiment was computed again")

    monkeypatch.setattr(scoring, "dense_baseline", recompute)
    monkeypatch.setattr(run_module, "run_stage", recompute)
    again = run_module.run(compose(*TINY, "save_model=false", *second))
    assert again["config_hash"] == done["config_hash"]
    assert again["tasks"] == done["tasks"] and again["measured"] == done["measured"]


# ------------------------------------------------------------------------------------------------ tags to W&B
def offline_run_tags(run_dir: str) -> list[str]:
    """The tags stored in an offline W&B run's `run-<id>.wandb` log (LevelDB log format: 32 KiB blocks of
    records with a 7-byte header, after a 7-byte file header; each record a wandb_internal Record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = Path(run_dir).parent.glob("run-*.wandb")
    data, block, pos, chunk = log.read_bytes(), 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        chunk = (
            payload if kind in (1, 2) else chunk + payload
        )  # FULL/FIRST start a record, MIDDLE/LAST extend
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunk)
            if record.WhichOneof("record_type") == "run":
                return list(record.run.tags)
    raise AssertionError(f"no run record in {log}")


def test_experiment_tags_reach_the_wandb_run(compose, tmp_path):
    cfg = compose(
        *TINY,
        "experiment=pruning_only",
        "pruner.sparsity=0",  # nothing to compress: the dense evaluation only
        "save_model=false",
        f"paths.cache_dir={tmp_path / 'cache'}",  # a fresh index, so the run is logged rather than reused
        "logger=wandb",
        "logger.tags=[mine]",
    )
    result = run_module.run(cfg)
    tracking = result["tracking"]
    assert tracking["status"] == "logged", tracking
    assert tracking["tags"] == ["pruning_only", "mine"]  # the experiment's, then logger.tags
    assert offline_run_tags(tracking["dir"]) == ["pruning_only", "mine"]


def test_run_tags_are_the_configs_then_the_loggers_each_once():
    from jcexp.tracking import WandbTracker

    assert WandbTracker(tags=["mine", "x"]).run_tags(["x", "y"]) == ["x", "y", "mine"]
    assert WandbTracker(tags=["mine"]).run_tags(None) == ["mine"]
