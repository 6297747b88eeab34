"""The device contract (jcexp/placement.py), checked on CPU where a GPU would show the bug.

On CPU, llm-compressor's offload wrappers copy nothing and a write into a per-access copy lands in the same
storage, so the GPU failures (weights streamed from host RAM at every forward, lost NF4/int8 writes, re-quantizing
forwards) are invisible in the scores. These tests look at what would differ instead: what wraps each module,
what each forward does, where the weights live, and whether a write reaches storage when the onload device is not
the storage device (dispatching onto ``meta`` stands in for a GPU). Everything here is the real llm-compressor and
the real lm-eval on a tiny random Llama; a spy records the model's state at each evaluation and calls through.
"""

import hashlib
import json

import pytest
import torch

from jcexp import placement
from jcexp.plan import Plan
from jcexp.run import run

from .conftest import TINY

# Every way a quantized model reaches evaluation: llm-compressor's GPTQ (Case A) and RTN, jcexp's Case B and
# one-pass column sweeps, and the data-free NF4, weight-only int8 and LLM.int8() (W8A8, whose activation
# quantization is part of its forward: recorded in the placement state, not flagged).
QUANTIZERS = {
    "gptq": ("quant=gptq", "quant.case=A"),
    "rtn": ("quant=rtn",),
    "case_b": ("quant=gptq", "quant.case=B"),
    "joint": ("quant=gptq", "quant.case=joint"),
    "onepass": ("variant=onepass",),
    "nf4": ("quant=nf4", "quant.group_size=32"),
    "int8_weight": ("quant=int8_weight",),
    "llm_int8": ("quant=llm_int8",),
}


def _digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.fixture
def spy_evaluations(monkeypatch):
    """Record the model's placement at every lm-eval call (dense and compressed), then evaluate for real."""
    import jcexp.evaluate

    real = jcexp.evaluate.evaluate
    seen: list[dict] = []

    def spy(model, tokenizer, bench, seed, **kwargs):
        seen.append({**placement.state(model).to_dict(), "digest": _digest(model)})
        return real(model, tokenizer, bench, seed, **kwargs)

    monkeypatch.setattr(jcexp.evaluate, "evaluate", spy)
    return seen


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_every_evaluation_sees_a_plain_model_on_the_planned_device(compose, tmp_path, spy_evaluations, name):
    """Dense and compressed evaluation: no offload wrapper, no forward that re-quantizes, every tensor on
    plan.device. Before the contract, 33 modules were still wrapped and 14 Linears re-quantized here."""
    cfg = compose(*TINY, *QUANTIZERS[name], "save_model=false", f"paths.cache_dir={tmp_path / 'cache'}")
    result = run(cfg)
    device = Plan(cfg).device
    assert len(spy_evaluations) == 2  # a fresh cache: the dense baseline and the compressed model
    for state in spy_evaluations:
        assert state["offload_wrapped"] == 0 and state["requantizing"] == 0, state
        assert state["devices"] == [device]
    # result.json carries the same record, so a GPU run can be checked after the fact.
    placed = result["placement"]
    assert placed["evaluate"] == device and placed["compress"] == "cpu"
    for key in ("dense_eval", "compressed_eval"):
        assert placed[key]["offload_wrapped"] == 0 and placed[key]["requantizing"] == 0
        assert placed[key]["devices"] == [device]
    # LLM.int8()'s activation quantization is live at evaluation, in every compressible Linear, and only there.
    w8a8 = len(Plan(cfg).layer_widths) if name == "llm_int8" else 0
    assert placed["dense_eval"]["activation_quantizing"] == 0
    assert placed["compressed_eval"]["activation_quantizing"] == w8a8


def _tiny_model(compose):
    plan = Plan(compose(*TINY))
    model, tokenizer = plan.source.load()
    return plan, model, tokenizer, plan.calibration.dataset(tokenizer)


def _stage(compose, *overrides):
    from hydra.utils import instantiate

    cfg = compose(*TINY, *overrides)
    return instantiate(cfg.quant), cfg


def _raw_oneshot(stage, model, tokenizer, calibration):
    """llm-compressor as it leaves the model: wrapped, with its own fake-quantizing forward."""
    from llmcompressor import oneshot

    torch.manual_seed(0)
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=calibration,
        recipe=stage.recipe(),
        num_calibration_samples=len(calibration),
        max_seq_length=len(calibration[0]["input_ids"]),
        output_dir=None,
        log_dir=None,
    )


@pytest.mark.parametrize("name", ["gptq", "rtn", "case_b", "onepass"])
def test_baked_weights_with_quantization_off_score_like_the_library_forward(compose, name):
    """Evaluating with quantization disabled is only allowed because the quantized values are in the weights.
    GPTQ stores them already (baking is the identity); RTN does not (its forward quantizes), so baking must
    change RTN's stored weights. Logits and lm-eval scores, perplexity included, must not change."""
    from jcexp.evaluate import evaluate

    plan, model, tokenizer, calibration = _tiny_model(compose)
    stage, cfg = _stage(compose, *QUANTIZERS[name])
    if name == "onepass":
        stage.modifier.sparsity = 0.25  # pruner=onepass hands its target to the GPTQ sweep
    ids = torch.tensor(calibration[:2]["input_ids"])
    _raw_oneshot(stage, model, tokenizer, calibration)
    assert placement.requantizing(model), "llm-compressor left no fake-quantizing forward: nothing tested"
    with torch.no_grad():
        library_logits = model(ids).logits
    library_scores = evaluate(model, tokenizer, cfg.benchmark, 0)
    stored_before = {
        n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight_scale")
    }

    placement.release(model)

    assert placement.requantizing(model) == [] and placement.offload_wrapped(model) == []
    changed = [
        n
        for n, m in model.named_modules()
        if n in stored_before and not torch.equal(m.weight, stored_before[n])
    ]
    assert bool(changed) == (name == "rtn"), changed
    with torch.no_grad():
        assert torch.equal(model(ids).logits, library_logits)
    baked_scores = evaluate(model, tokenizer, cfg.benchmark, 0)
    assert {t: s.value for t, s in baked_scores.scores.items()} == {
        t: s.value for t, s in library_scores.scores.items()
    }
    assert {t: s.value for t, s in baked_scores.perplexity.items()} == {
        t: s.value for t, s in library_scores.perplexity.items()
    }


@pytest.mark.parametrize("name", ["nf4", "int8_weight", "llm_int8", "rtn"])
def test_stage_writes_reach_storage_when_onload_device_is_not_storage(compose, name):
    """A model left dispatched with an onload device other than its storage (``meta`` here; ``cuda`` on a GPU
    node, where each weight access returns a temporary GPU copy): the stage's writes must land in storage."""
    from compressed_tensors.offload import set_onload_device

    from jcexp.compress import apply_stage

    plan, model, tokenizer, calibration = _tiny_model(compose)
    stage, _ = _stage(compose, *QUANTIZERS[name])
    linears = {
        n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n
    }
    before = {n: m.weight.detach().clone() for n, m in linears.items()}
    set_onload_device(model, "meta")
    assert placement.offload_wrapped(model)

    apply_stage(stage, model, tokenizer, calibration, seed=0)

    assert placement.offload_wrapped(model) == [] and placement.requantizing(model) == []
    for n, m in linears.items():
        assert m.weight.device.type == "cpu"
        assert not torch.equal(m.weight, before[n]), f"{n}: the stage's write was lost"
    if name in ("nf4", "int8_weight", "llm_int8"):
        roundtrip = stage.modifier.roundtrip
        for n, m in linears.items():
            assert torch.equal(m.weight, roundtrip(before[n]))
            if name == "llm_int8":  # the original weight stays beside it, for the outlier columns
                assert torch.equal(m.weight_fp, before[n])


def test_pruned_model_from_cache_reaches_evaluation_like_a_fresh_one(compose, tmp_path, spy_evaluations):
    """Prune fresh (and cache), then the same pruning loaded from the cache: NF4 after either must give the
    same weights, dtypes and placement at evaluation, and the same scores."""
    cache = f"paths.cache_dir={tmp_path / 'cache'}"
    fresh = run(compose(*TINY, *QUANTIZERS["nf4"], cache))
    cached = run(compose(*TINY, *QUANTIZERS["nf4"], cache, "save_model=false"))  # another hash: recomputed
    assert fresh["prune_cache"]["reused"] is False and cached["prune_cache"]["reused"] is True
    compressed = [s for s in spy_evaluations if s["digest"] != spy_evaluations[0]["digest"]]
    assert len(compressed) == 2, "expected one compressed evaluation per run"
    assert compressed[0] == compressed[1]
    assert fresh["tasks"] == cached["tasks"] and fresh["perplexity"] == cached["perplexity"]


def test_check_names_what_breaks_the_contract(compose):
    from compressed_tensors.offload import set_onload_device

    _, model, _, _ = _tiny_model(compose)
    assert placement.check(model, "cpu").offload_wrapped == 0
    set_onload_device(model, "cpu")
    with pytest.raises(placement.PlacementError, match="offload cache"):
        placement.check(model, "cpu")
    placement.release(model)
    model.to("meta")
    with pytest.raises(placement.PlacementError, match=r"tensors on \['meta'\], not on cpu"):
        placement.check(model, "cpu")


def test_compression_on_another_gpu_than_evaluation_is_refused(compose, monkeypatch):
    """llm-compressor onloads to cuda:0 whatever jcexp asks; device=cuda:1 would split the run over two GPUs."""
    from jcexp.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=1"):
        Plan(compose(*TINY, "device=cuda:1"))
    Plan(compose(*TINY, "device=cuda:1", "pruner=none", "quant=none"))  # nothing to compress: allowed


@pytest.mark.parametrize(
    "saved,requested,expected",
    [
        ("bfloat16", "auto", "bfloat16"),
        ("float16", "auto", "float16"),
        (None, "auto", "bfloat16"),
        ("bfloat16", "float32", "float32"),
    ],
)
def test_local_dir_loads_in_the_checkpoints_own_dtype(compose, tmp_path, saved, requested, expected):
    from jcexp.models import LocalModel

    plan = Plan(compose(*TINY))
    model, tokenizer = plan.source.load()
    model.to(getattr(torch, saved or "float32")).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    if saved is None:
        config = json.loads((tmp_path / "config.json").read_text())
        config.pop("dtype", None), config.pop("torch_dtype", None)
        (tmp_path / "config.json").write_text(json.dumps(config))
    source = LocalModel(str(tmp_path), dtype=requested)
    assert source.dtype == expected and source.identity()["dtype"] == expected
    loaded, _ = source.load()
    assert {p.dtype for p in loaded.parameters()} == {getattr(torch, expected)}
