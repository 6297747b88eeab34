"""End to end on a tiny random-init Llama: the real llm-compressor (SparseGPT, GPTQ, Wanda, RTN) and the
real lm-eval, in seconds. Nothing of ours is mocked; the hub and a W&B server are absent (W&B runs offline)."""

import json
import os
from pathlib import Path

import pytest

from jcexp.results import RESULT_FILE
from jcexp.run import run

from .conftest import ROOT, TINY, launch


@pytest.fixture(scope="module")
def joint(tmp_path_factory, shared_cache):
    """One 25% SparseGPT + 4-bit GPTQ run, shared by the assertions below."""
    from hydra import compose, initialize_config_dir

    out = tmp_path_factory.mktemp("joint")
    os.environ["JCEXP_OUTPUTS"] = str(out)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"paths.cache_dir={shared_cache}", "logger=none", *TINY])
    return cfg, run(cfg)


def test_result_json_holds_what_the_issue_lists(joint):
    cfg, result = joint
    on_disk = json.loads((Path(result["run_dir"]) / RESULT_FILE).read_text())
    assert on_disk["status"] == "complete" and on_disk["config_hash"] == result["config_hash"]
    assert on_disk["config"]["pruner"]["sparsity"] == 25.0  # config sparsity stays in percent
    m = on_disk["metrics"]
    assert m["tcr"] == pytest.approx(0.8125)
    assert set(on_disk["tasks"]) == {"jc_lastword", "jc_nextsentence"}
    for row in on_disk["tasks"].values():
        assert {"value", "stderr", "chance", "baseline", "retention"} <= set(row)
    assert set(on_disk["perplexity"]) == {"jc_prose_ppl"}
    assert {"load", "quantize", "eval", "save"} <= set(on_disk["stages"])
    # SparseGPT ran here, or an earlier test with the same pruner and calibration left it in the shared cache.
    assert {"prune", "load_pruned"} & set(on_disk["stages"])
    assert all(s["seconds"] >= 0 and s["peak_rss_mb"] > 0 for s in on_disk["stages"].values())
    assert on_disk["saved_model"]["bytes"] > 0
    assert on_disk["seed"] == 0
    assert {"torch", "transformers", "llmcompressor", "lm_eval"} <= set(on_disk["versions"])
    assert on_disk["task_versions"]["jc_lastword"] == 1.0
    assert on_disk["compression"]["quant"] == {
        **on_disk["compression"]["quant"],
        "bits": 4,
        "group_size": 32,
        "case": "B",  # the default after pruning: llm-compressor <= 0.12's GPTQ, as the paper ran it
        "keeps_pruned_zeros": True,
    }
    s = on_disk["measured"]["sparsity"]
    assert s["pruned_still_zero"] == pytest.approx(s["pruned"])  # Case B revives no pruned weight


def test_sparsity_is_measured_after_each_stage(joint):
    _, result = joint
    s = result["measured"]["sparsity"]
    assert s["after_prune"] == pytest.approx(0.25, abs=0.01)  # fractions, measured from the weights
    assert s["after_quant"] is not None and s["after_quant"] >= 0.2
    q = result["measured"]["quant"]
    assert 0.9 <= q["pruned_still_zero"] <= 1.0  # Case A: GPTQ may revive a few pruned weights
    assert 0 <= q["kept_rounded_to_zero"] < 0.2


def test_physical_bits_per_weight_beside_tcr(joint):
    """4-bit values plus one fp32 scale per group of 32 (the tiny model is fp32): 4 + 32/32 = 5 bits per weight,
    read from the saved compressed-tensors checkpoint, next to TCr's ideal of 4 bits (75% at 0% sparsity)."""
    _, result = joint
    saved = result["saved_model"]
    assert saved["format"] == "compressed-tensors"
    assert saved["bits_per_weight"] == pytest.approx(5.0, abs=0.05)  # + 2 int64 (shape) per layer
    assert saved["physical_compression_rate"] == pytest.approx(1 - saved["bits_per_weight"] / 16)
    assert result["metrics"]["mask_overhead_bits_per_weight"] == 1.0  # unstructured: a full bitmap


def test_lm_head_and_tied_embeddings_stay_untouched(joint):
    _, result = joint
    assert result["measured"]["lm_head_unchanged"] is True


def test_rerun_with_same_config_resumes_without_compute(joint, monkeypatch):
    cfg, result = joint
    import jcexp.compress
    import jcexp.compress.stages as stages

    def fail(*a, **k):
        pytest.fail("recompressed a finished run")

    monkeypatch.setattr(stages, "apply_stage", fail)
    monkeypatch.setattr(jcexp.compress, "apply_stage", fail)
    again = run(cfg)
    assert again["config_hash"] == result["config_hash"] and again["stages"] == result["stages"]


def test_dense_baseline_is_cached_and_keyed_by_settings(compose, joint):
    _, first = joint
    second = run(compose(*TINY, "quant.bits=8"))
    assert second["baseline"]["reused"] is True and second["baseline"]["path"] == first["baseline"]["path"]
    other = run(compose(*TINY, "quant.bits=8", "benchmark.limit=8"))
    assert other["baseline"]["reused"] is False and other["baseline"]["path"] != first["baseline"]["path"]


def test_semi_structured_2_8_holds_in_every_group_after_pruning(compose):
    result = run(compose(*TINY, "pruner.mask=2:8", "quant=none"))
    assert result["measured"]["sparsity"]["after_prune"] == pytest.approx(0.25, abs=1e-9)
    assert result["measured"]["nm_after_prune"]["groups_holding"] == 1.0
    assert result["metrics"]["tcr"] == pytest.approx(0.25)


def test_exact_2_6_with_the_derived_block_size(compose):
    result = run(
        compose(
            *TINY,
            "pruner.mask=2:6",
            "quant=none",
            "model.source.hidden_size=48",
            "model.source.intermediate_size=96",
            "model.group_size=16",
        )
    )
    assert result["measured"]["sparsity"]["after_prune"] == pytest.approx(1 / 3, abs=1e-9)
    assert result["measured"]["nm_after_prune"]["groups_holding"] == 1.0


@pytest.mark.parametrize("pruner,quant", [("wanda", "rtn"), ("none", "gptq"), ("sparsegpt", "none")])
def test_other_stage_choices_change_the_weights(compose, tmp_path, pruner, quant, monkeypatch):
    """Each stage must change the model it is given: measured from the weights at the compressed evaluation
    (RTN included: its quantized values are baked in), not from the config."""
    import torch

    import jcexp.evaluate

    real, seen = jcexp.evaluate.evaluate, []

    def spy(model, tokenizer, bench, seed, **kwargs):
        seen.append({n: p.detach().clone() for n, p in model.named_parameters() if p.dim() == 2})
        return real(model, tokenizer, bench, seed, **kwargs)

    monkeypatch.setattr(jcexp.evaluate, "evaluate", spy)
    cache = f"paths.cache_dir={tmp_path / 'cache'}"  # its own: the dense evaluation must run here
    result = run(compose(*TINY, f"pruner={pruner}", f"quant={quant}", "save_model=false", cache))
    dense, compressed = seen
    changed = [n for n in dense if not torch.equal(dense[n], compressed[n])]
    linears = [n for n in dense if "layers." in n and "proj" in n]
    assert sorted(changed) == sorted(linears)  # every decoder Linear changed; embeddings/lm_head did not
    if quant != "none":  # quantized to at most 2^bits levels per group of 32 weights
        w = compressed[linears[0]].reshape(-1, 32)
        assert max(len(torch.unique(g)) for g in w) <= 2**4 + 1  # + the exact zeros of pruning
    if pruner != "none":
        assert result["measured"]["sparsity"]["after_prune"] == pytest.approx(0.25, abs=0.01)


def test_dense_point_scores_are_the_baselines(compose, tmp_path):
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    compressed = run(compose(*TINY, "save_model=false", cache))  # evaluates and caches the dense baseline
    dense = run(compose(*TINY, "pruner.sparsity=0", "quant.bits=16", "save_model=false", cache))
    assert (
        "prune" not in dense["stages"] and "quantize" not in dense["stages"] and "eval" not in dense["stages"]
    )
    assert dense["baseline"] == {**compressed["baseline"], "reused": True}
    assert {t: r["value"] for t, r in dense["tasks"].items()} == {
        t: r["baseline"] for t, r in compressed["tasks"].items()
    }
    assert all(r["retention"] in (1.0, None) for r in dense["tasks"].values())
    assert all(r["value"] == r["baseline"] for r in dense["perplexity"].values())
    assert dense["metrics"]["tcr"] == 0.0 and dense["metrics"]["srcr"] == 0.0


def test_same_seed_same_numbers(compose, tmp_path):
    """Two runs with separate caches and output roots: both compute everything (nothing reused), and agree
    bit for bit."""
    runs = [
        run(
            compose(
                *TINY,
                "save_model=false",
                f"paths.root={tmp_path / r}",
                f"paths.cache_dir={tmp_path / r / 'c'}",
            )
        )
        for r in ("a", "b")
    ]
    for r in runs:
        assert not r.get("resumed_from") and r["baseline"]["reused"] is False
        assert r["prune_cache"]["reused"] is False and {"prune", "quantize", "eval_dense", "eval"} <= set(
            r["stages"]
        )
    a, b = runs
    assert a["run_dir"] != b["run_dir"] and a["prune_cache"]["path"] != b["prune_cache"]["path"]
    assert a["measured"]["sparsity"] == b["measured"]["sparsity"]
    assert a["tasks"] == b["tasks"] and a["perplexity"] == b["perplexity"]


def test_changed_calibration_text_is_pruned_again(compose, tmp_path):
    """The prune key holds the calibration windows' fingerprint: the same config over edited text prunes anew."""
    text = tmp_path / "calib.txt"
    text.write_text(
        "\n\n".join(f"Paragraph {i} of some local calibration prose, long enough." * 3 for i in range(300))
    )
    common = (
        *TINY,
        "save_model=false",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "+calibration.options.prose=false",
    )
    files = f"+calibration.options.files=[{text}]"
    first = run(compose(*common, files, "quant.bits=4"))
    text.write_text(text.read_text().replace("Paragraph", "Section"))
    second = run(compose(*common, files, "quant.bits=8"))
    assert first["prune_cache"]["reused"] is False and second["prune_cache"]["reused"] is False
    assert first["prune_cache"]["path"] != second["prune_cache"]["path"]


def test_launch_py_writes_result_and_offline_wandb_run(tmp_path, shared_cache):
    """The user's command, as a real process, with the W&B logger on (offline: no server here)."""
    proc = launch(*TINY, f"paths.cache_dir={shared_cache}", "quant.bits=3", outputs=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = list(tmp_path.glob("runs/*/*/result.json"))
    assert len(results) == 1
    result = json.loads(results[0].read_text())
    assert (
        "quant.bits=3" in result["run_name"] and "model=tiny_random" in result["run_name"]
    )  # named after overrides
    assert result["tracking"]["status"] == "logged" and result["tracking"]["mode"] == "offline"
    assert list(tmp_path.glob("wandb/offline-run-*"))


def test_launch_py_bad_input_exits_2_with_the_message(tmp_path):
    proc = launch(*TINY, "quant.bits=5", outputs=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert "quant.bits=5 is not supported" in proc.stderr


def test_prune_once_quantize_many(compose, tmp_path):
    """Every bit width after the same pruning reuses the cached pruned model; results match a fresh prune."""
    cache = tmp_path / "cache"
    first = run(compose(*TINY, "save_model=false", "quant.bits=4", f"paths.cache_dir={cache}"))
    second = run(compose(*TINY, "save_model=false", "quant.bits=8", f"paths.cache_dir={cache}"))
    assert first["prune_cache"]["reused"] is False and "prune" in first["stages"]
    assert second["prune_cache"] == {**first["prune_cache"], "reused": True}
    assert "prune" not in second["stages"] and "load_pruned" in second["stages"]
    fresh = run(
        compose(
            *TINY,
            "save_model=false",
            "quant.bits=8",
            "cache_pruned=false",
            f"paths.cache_dir={tmp_path / 'c2'}",
        )
    )
    assert fresh["measured"]["sparsity"] == second["measured"]["sparsity"]
    assert {t: r["value"] for t, r in fresh["tasks"].items()} == {
        t: r["value"] for t, r in second["tasks"].items()
    }


def test_corrupt_prune_cache_entry_is_rebuilt(compose, tmp_path):
    cache = tmp_path / "cache"
    first = run(compose(*TINY, "save_model=false", "quant.bits=4", f"paths.cache_dir={cache}"))
    entry = Path(first["prune_cache"]["path"])
    (entry / "jcexp_key.json").write_text("{truncated")
    again = run(compose(*TINY, "save_model=false", "quant.bits=3", f"paths.cache_dir={cache}"))
    assert again["prune_cache"]["reused"] is False and "prune" in again["stages"]
    assert json.loads((entry / "jcexp_key.json").read_text())["seed"] == 0


def test_tcr_from_measured_sparsity_counts_pruned_positions_only(compose):
    """3-bit GPTQ alone rounds many weights to exactly zero: those are reported as rounding zeros, and the TCr
    from measured sparsity stays the 3-bit one (issue 11: it showed ~30% "sparsity" before)."""
    result = run(compose(*TINY, "save_model=false", "pruner=none", "quant.bits=3"))
    s, m = result["measured"]["sparsity"], result["metrics"]
    assert s["pruned"] == 0.0 and s["rounding_zeros"] == s["final"] > 0.05
    assert m["tcr_measured_sparsity"] == pytest.approx(m["tcr"]) == pytest.approx(1 - 3 / 16)
