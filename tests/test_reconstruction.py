"""Error analysis: per-layer ||WX - W^X||^2 after each stage on the dense model's calibration
inputs, and E_A / E_B from both GPTQ cases on the same pruned model. Real llm-compressor on the tiny Llama."""

import pytest
import torch

from jcexp import reconstruction as errors
from jcexp.config import ConfigError
from jcexp.measure import compressible_linears
from jcexp.plan import Plan
from jcexp.run import run

from .conftest import TINY


def test_probe_error_is_the_squared_output_difference():
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    calib = Dataset.from_dict({"input_ids": torch.randint(0, 64, (3, 16)).tolist()})
    probe = errors.capture(model, calib, samples=2, tokens=20, seed=0)
    assert probe.tokens == 20
    layer = compressible_linears(model)["model.layers.0.mlp.down_proj"]
    x = probe.inputs["model.layers.0.mlp.down_proj"]
    dense = x @ layer.weight.detach().T
    assert all(v["sq"] == 0 for v in probe.errors(model).values())  # nothing changed yet
    with torch.no_grad():
        layer.weight[:, ::2] = 0
    got = probe.errors(model)["model.layers.0.mlp.down_proj"]
    expected = (dense - x @ layer.weight.detach().T).pow(2).sum()
    assert got["sq"] == pytest.approx(float(expected), rel=1e-5)
    assert got["rel"] == pytest.approx(float(expected / dense.pow(2).sum()), rel=1e-5)


def test_joint_runs_record_errors_per_stage_the_case_ratio_and_the_report_plots_them(compose, tmp_path):
    results = [
        run(
            compose(
                *TINY,
                "save_model=false",
                f"pruner.sparsity={s}",
                f"quant.bits={b}",
                "errors.enabled=true",
                "errors.case_ratio=true",
            )
        )
        # Two bit widths at one sparsity, as experiment=error_analysis runs them: the plot must not compare
        # their ratios' dicts (it raised TypeError on the 2026-12-07 study).
        for s, b in ((25, 4), (50, 4), (50, 3))
    ]
    result = results[-1]
    layers = result["layer_errors"]
    names = set(layers["total"])
    assert len(names) == result["model"]["linear_layers"]
    for stage in ("prune", "quant", "total", "case_a", "case_b", "case_ratio"):
        assert set(layers[stage]) == names, stage
    summary = result["measured"]["errors"]
    stages = summary["stages"]
    assert 0 < stages["prune"]["rel"] and 0 < stages["quant"]["rel"]
    # The joint error against the dense model exceeds pruning's alone (quantization adds to it).
    assert stages["total"]["sq"] > stages["prune"]["sq"]
    # This run is Case B (the default after pruning): its quant-stage error is case_b's, on the same outputs.
    assert stages["quant"]["sq"] == stages["case_b"]["sq"]
    ratio = summary["case_ratio"]
    assert ratio["pooled"] == pytest.approx(stages["case_a"]["sq"] / stages["case_b"]["sq"])
    assert "output-space" in ratio["quantity"] and "first_order" not in ratio  # no 1/(1-p) curve (issue 11)
    assert ratio["layer_min"] <= ratio["layer_median"] <= ratio["layer_max"]
    assert "quantize_case_A_for_ratio" in result["stages"] and "errors_capture" in result["stages"]

    from jcexp.report import write_report

    report = write_report(tmp_path / "outputs")
    assert "fig4_errors.png" in {p.name for p in report.plots}
    text = report.markdown.read_text()
    assert "## Layer reconstruction errors" in text
    assert f"| {ratio['pooled']:.3f} |" in text

    from jcexp.tracking import WandbTracker  # offline W&B: the run's layer table must log, not raise

    logged = WandbTracker(mode="offline", dir=str(tmp_path / "wandb")).log_run(result, "errors", {})
    assert logged["status"] == "logged", logged


def test_case_ratio_does_not_change_the_run_itself(compose):
    """The other case runs on a copy: the run's own weights, sparsity and scores are those of a plain run."""
    base = (*TINY, "save_model=false", "pruner.sparsity=25", "quant.bits=3", "errors.enabled=true")
    plain = run(compose(*base))
    with_ratio = run(compose(*base, "errors.case_ratio=true"))
    assert with_ratio["measured"]["sparsity"] == plain["measured"]["sparsity"]
    assert with_ratio["layer_errors"]["total"] == plain["layer_errors"]["total"]
    assert {t: r["value"] for t, r in with_ratio["tasks"].items()} == {
        t: r["value"] for t, r in plain["tasks"].items()
    }


def test_errors_off_keeps_the_config_hash(compose):
    """An analysis that is off must not change the hash under which results are stored and reused."""
    from omegaconf import OmegaConf

    from jcexp.results import config_hash

    cfg = OmegaConf.to_container(compose(*TINY), resolve=True)
    without = {k: v for k, v in cfg.items() if k != "errors"}
    assert config_hash(cfg) == config_hash(without)
    cfg["errors"]["enabled"] = True
    assert config_hash(cfg) != config_hash(without)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("errors.enabled=true", "errors.samples=0"), "errors.samples=0"),
        (("errors.enabled=true", "errors.tokens=0"), "errors.tokens=0"),
        (("errors.case_ratio=true",), "needs errors.enabled=true"),
        (("errors.enabled=true", "errors.case_ratio=true", "quant=nf4"), "quant=nf4 has no cases"),
        (
            ("errors.enabled=true", "errors.case_ratio=true", "quant.case=joint"),
            "quant.case=joint is neither",
        ),
        (("errors.enabled=true", "errors.case_ratio=true", "quant.bits=16"), "needs quantization"),
    ],
)
def test_bad_error_analysis_settings_fail_before_compute(compose, overrides, message):
    with pytest.raises(ConfigError, match=message):
        Plan(compose(*TINY, *overrides))
