"""Composition of the real configs, and clear errors on bad input before any compute."""

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import ConfigKeyError, ValidationError

from jcexp.config import ConfigError, check_values, parse_mask
from jcexp.models import ModelSourceError
from jcexp.plan import Plan

from .conftest import ROOT, TINY

GROUPS = ["model", "pruner", "quant", "calibration", "benchmark", "logger"]


def choices(group):
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def test_defaults_are_the_offline_smollm2_joint_run(compose):
    cfg = compose()
    assert cfg.model.name == "smollm2_135m"
    assert (cfg.pruner.name, cfg.pruner.sparsity, cfg.quant.name, cfg.quant.bits) == (
        "sparsegpt",
        25,
        "gptq",
        4,
    )
    assert cfg.quant.group_size == 64  # SmolLM2's hidden 576 is not a multiple of 128
    assert (cfg.calibration.name, cfg.benchmark.name) == ("local", "offline")
    assert cfg.pruner.modifier.dampening_frac == 0.01 and cfg.pruner.modifier.block_size == 128


@pytest.mark.parametrize("group", GROUPS)
def test_every_choice_composes_and_instantiates(compose, group):
    for choice in choices(group):
        cfg = compose(f"{group}={choice}")
        node = cfg[group]
        if group == "model":
            if choice == "local_dir":
                continue  # needs model.source.path (tested below)
            instantiate(node.source)
        elif "_target_" in node:
            instantiate(node)


def test_sweep_values_become_floats(compose):
    cfg = compose("pruner.sparsity=33")
    assert isinstance(cfg.pruner.sparsity, float)
    assert cfg.pruner.modifier.sparsity == pytest.approx(0.33)


def test_mask_sets_sparsity_and_an_exact_block_size(compose):
    cfg = compose("pruner.mask=2:6")
    assert cfg.pruner.sparsity == pytest.approx(33.333)
    assert cfg.pruner.modifier.mask_structure == "2:6"
    assert cfg.pruner.modifier.block_size == 126  # largest multiple of 6 <= 128: groups never straddle blocks
    assert compose("pruner.mask=2:8").pruner.modifier.block_size == 128


@pytest.mark.parametrize(
    "override,error",
    [
        ("pruner.sparsitty=25", ConfigCompositionException),  # typo in a key
        ("quant.bits=four", ConfigCompositionException),  # wrong type
        ("+model.source.unknown=1", None),  # unknown source arg: fails at instantiate (below)
        ("pruner=sparsgpt", ConfigCompositionException),  # unknown group choice
    ],
)
def test_typos_and_wrong_types_fail_at_composition(compose, override, error):
    if error is None:
        cfg = compose("model=tiny_random", override)
        with pytest.raises(Exception, match="unknown"):
            instantiate(cfg.model.source)
        return
    with pytest.raises((error, ConfigKeyError, ValidationError)):
        compose(override)


def test_parse_mask():
    assert parse_mask("2:8") == (2, 8) and parse_mask(None) is None and parse_mask("0:0") is None
    with pytest.raises(ConfigError):
        parse_mask("2:2:8")


@pytest.mark.parametrize("model", ["llama3_1_8b", "mistral_7b_v0_3"])
def test_hub_models_are_correct_up_to_the_download(compose, model):
    # The hub is unreachable here (HF_HUB_OFFLINE=1): the config composes, the source instantiates, and the
    # first network access fails with a clear message instead of deep inside a stage.
    cfg = compose(f"model={model}", "calibration=c4", "benchmark=paper")
    check_values(cfg)
    assert cfg.quant.group_size == 128 and cfg.calibration.num_samples == 512
    with pytest.raises(ModelSourceError, match="not reachable.*hub access"):
        Plan(cfg)


@pytest.mark.parametrize(
    "case, modifier", [("A", "GPTQModifier"), ("B", "CaseBGPTQModifier"), ("joint", "JointModeGPTQModifier")]
)
def test_quant_case_selects_its_gptq_when_pruned_and_stock_gptq_otherwise(compose, case, modifier):
    plan = Plan(compose(*TINY, f"quant.case={case}"))
    assert type(plan.quant.modifier).__name__ == modifier and plan.quant.case == case
    dense = Plan(compose(*TINY, f"quant.case={case}", "pruner=none"))
    # Without pruning every case is stock GPTQ: one modifier, and the case spelled None everywhere.
    assert type(dense.quant.modifier).__name__ == "GPTQModifier" and dense.quant.case is None
    assert dense.quant.describe()["case"] is None


def test_pruned_gptq_defaults_to_case_b_the_papers_tool(compose):
    assert compose().quant.case == "B"
    assert type(Plan(compose(*TINY)).quant.modifier).__name__ == "CaseBGPTQModifier"


def test_quant_case_means_nothing_without_pruning_in_the_hash(compose):
    from jcexp.results import task_config_hash

    def h(*o):
        return task_config_hash(compose(*TINY, *o))

    assert len({h("pruner=none", f"quant.case={c}") for c in ("A", "B", "joint")}) == 1
    assert len({h(f"quant.case={c}") for c in ("A", "B", "joint")}) == 3


def test_quant_case_is_refused_when_unknown_or_not_gptq(compose):
    with pytest.raises(ConfigError, match="quant.case='C' is not one of"):
        Plan(compose(*TINY, "quant.case=C"))
    with pytest.raises(ConfigError, match="only GPTQ has cases"):
        Plan(compose(*TINY, "quant=rtn", "quant.case=B"))
    # An overridden modifier decides the case: B recorded while stock GPTQ runs would mislabel the result.
    stock = "llmcompressor.modifiers.quantization.GPTQModifier"
    with pytest.raises(ConfigError, match="which runs case A: set quant.case=A"):
        Plan(compose(*TINY, "quant.case=B", f"quant.modifier._target_={stock}"))
    assert Plan(compose(*TINY, "quant.case=A", f"quant.modifier._target_={stock}")).quant.case == "A"


def _scheme_actorder(plan: Plan):
    """The activation ordering llm-compressor resolves into the scheme its GPTQ sweep reads (quant_args)."""
    config = plan.quant.modifier.resolve_quantization_config()
    return config.config_groups["group_0"].weights.actorder


@pytest.mark.parametrize("case", ["A", "B", "joint"])
def test_actorder_defaults_to_none_as_the_papers_tool_and_reaches_the_sweep(compose, case):
    """The paper's llm-compressor (0.4.x, 0.5.0) ran no activation ordering (conf/quant/gptq.yaml cites the lines);
    0.14 would put static in when the recipe names none, so the default must reach the scheme as None."""
    assert compose().quant.actorder is None
    plan = Plan(compose(*TINY, f"quant.case={case}"))
    assert plan.quant.actorder is None and plan.quant.describe()["actorder"] is None
    assert _scheme_actorder(plan) is None
    static = Plan(compose(*TINY, f"quant.case={case}", "quant.actorder=static"))
    assert _scheme_actorder(static) == "static"
    assert static.quant.describe()["actorder"] == "static"


def test_actorder_is_in_the_hash(compose):
    from jcexp.results import task_config_hash

    def h(*o):
        return task_config_hash(compose(*TINY, *o))

    assert h() != h("quant.actorder=static") != h("quant.actorder=weight")
    assert h("pruner=none") != h("pruner=none", "quant.actorder=static")  # stock GPTQ has it too


@pytest.mark.parametrize(
    "overrides, error",
    [
        (("quant.actorder=group",), "was removed from compressed-tensors"),
        (("quant.actorder=dynamic",), "is not one of"),
        (("quant=rtn", "quant.actorder=static"), "applies to GPTQ only"),
        (("variant=onepass", "quant.actorder=static"), "one-pass joint compression sweeps the columns"),
        (("quant.modifier.actorder=static",), "disagrees with quant.actorder=None"),
    ],
)
def test_actorder_is_refused_before_compute(compose, overrides, error):
    with pytest.raises(ConfigError, match=error):
        check_values(compose(*TINY, *overrides))


@pytest.mark.parametrize("experiment", choices("experiment"))
def test_named_experiments_compose(compose, experiment):
    cfg = compose(f"experiment={experiment}")
    check_values(cfg)


@pytest.mark.parametrize(
    "point,sparsity,bits",
    [("s50_w8", 50, 8), ("s0_w4", 0, 4), ("s25_w4", 25, 4), ("s33_w3", 33.333, 3), ("nm26", 33.333, 4)],
)
def test_points_set_explicit_pairs(compose, point, sparsity, bits):
    cfg = compose(f"point={point}")
    check_values(cfg)
    assert (cfg.pruner.sparsity, cfg.quant.bits) == (pytest.approx(sparsity), bits)


def test_point_and_variant_are_in_the_defaults_list_so_plus_is_refused(compose):
    """`point`, `variant` and `debug` sit in conf/config.yaml's defaults: the old `+point=` spelling fails at
    composition with Hydra's own message rather than silently doing something else."""
    for group, choice in (("point", "s25_w4"), ("variant", "onepass"), ("debug", "smoke")):
        with pytest.raises(ConfigCompositionException, match=f"Multiple values for {group}"):
            compose(f"+{group}={choice}")


def test_point_values_win_over_the_groups_and_the_command_line_wins_over_points(compose):
    cfg = compose("point=s33_w3", "quant=rtn")
    assert (cfg.pruner.sparsity, cfg.quant.name, cfg.quant.bits) == (pytest.approx(33.333), "rtn", 3)
    assert compose("point=s33_w3", "quant.bits=4").quant.bits == 4


def test_onepass_has_one_spelling_and_it_hashes_as_the_pair_it_selects(compose):
    from jcexp.results import task_config_hash

    cfg = compose("variant=onepass", "point=s33_w3")
    assert (cfg.pruner.name, cfg.pruner.fused, cfg.quant.name) == ("onepass", True, "gptq_onepass")
    assert (cfg.pruner.sparsity, cfg.quant.bits) == (pytest.approx(33.333), 3)
    assert cfg.quant.modifier.sparsity == pytest.approx(0.33333)
    # The same config as the hand-made pair it replaces: one-pass results keep their hash.
    pair = compose("pruner=onepass", "quant=gptq_onepass", "pruner.sparsity=33.333", "quant.bits=3")
    assert task_config_hash(cfg) == task_config_hash(pair)
    assert task_config_hash(compose("variant=sequential")) == task_config_hash(compose())
    # A half overridden by hand is still refused before any weight is read.
    with pytest.raises(ConfigError, match="one-pass joint compression needs both"):
        Plan(compose(*TINY, "variant=onepass", "pruner=sparsegpt"))


def test_debug_smoke_is_the_tests_tiny_setup_without_wandb_or_checkpoint(compose):
    """`python launch.py debug=smoke` is TINY (tests/conftest.py) with logger=none and save_model=false; the tests
    keep their explicit TINY because several need W&B, the checkpoint, or `model=tiny_random` in the run name."""
    from omegaconf import OmegaConf

    smoke = OmegaConf.to_container(compose("debug=smoke"), resolve=True)
    tiny = OmegaConf.to_container(compose(*TINY, "logger=none", "save_model=false"), resolve=True)
    assert smoke == tiny
    assert (smoke["model"]["name"], smoke["benchmark"]["name"], smoke["logger"]["name"]) == (
        "tiny_random",
        "tiny",
        "none",
    )
    assert (smoke["calibration"]["num_samples"], smoke["calibration"]["seq_len"]) == (16, 64)
    assert compose("debug=smoke", "logger=wandb").logger.name == "wandb"  # the command line still wins


def test_nf4_backend_is_resolved_at_composition(compose):
    """The config (and so the hash and result.json) names the NF4 backend that runs, never `auto`."""
    from jcexp.compress.simple_quant import NF4Quantize

    backend = compose("quant=nf4").quant.modifier.backend
    assert backend in ("torch", "bitsandbytes")
    assert backend == NF4Quantize(backend="auto").backend  # the same choice as the quantizer's own `auto`
    assert compose("quant=nf4", "quant.modifier.backend=torch").quant.modifier.backend == "torch"
    assert NF4Quantize(backend="auto").requested == "auto"  # simple_quant still takes auto itself


def test_quantization_only_experiment_disables_pruning(compose):
    cfg = compose("experiment=quantization_only")
    assert cfg.pruner.name == "none" and cfg.quant.name == "gptq"
    cfg = compose("experiment=pruning_only")
    assert cfg.quant.name == "none" and cfg.pruner.name == "sparsegpt"


def test_experiment_files_override_the_primary_config(compose):
    """`_self_` comes before the groups: an experiment's values win over conf/config.yaml's own."""
    cfg = compose("experiment=error_analysis")
    assert cfg.errors.enabled and cfg.errors.case_ratio and list(cfg.tags) == ["error_analysis"]
    assert not compose().errors.enabled
