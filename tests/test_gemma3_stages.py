"""Every stage on the second architecture: a tiny random Gemma 3 (conf/model/tiny_gemma3.yaml) with gemma3_270m's
Linear widths (640, 1024, 2048), q/k norms, four norms per block, a sliding-window and a full-attention layer and
embeddings tied to lm_head. The real llm-compressor and the real lm-eval run on it, through jcexp's run path; a spy
records the model at each evaluation and calls through (the device contract of tests/test_placement.py).

The real Gemma 3 270M runs the same stages in bench/gemma3_stages.py, with the figures in docs/reproduction.md;
tests/test_gemma3.py runs its tokenizer and one joint point end to end."""

import hashlib

import pytest
import torch

from jcexp import nm, placement
from jcexp.plan import Plan
from jcexp.run import run

GEMMA = (
    "model=tiny_gemma3",
    "benchmark=tiny",
    "calibration.num_samples=16",
    "calibration.seq_len=64",  # twice the sliding window (32): the sliding layers do slide
    "save_model=false",
)
LAYERS = 2 * 7  # q, k, v, o, gate, up, down per block; the norms are not Linear
# Output and input width of each compressible Linear in a block (4 query heads of 256, 1 KV head).
SHAPES = {
    "q_proj": (1024, 640),
    "k_proj": (256, 640),
    "v_proj": (256, 640),
    "o_proj": (640, 1024),
    "gate_proj": (2048, 640),
    "up_proj": (2048, 640),
    "down_proj": (640, 2048),
}

# Every stage jcexp has, at its defaults (25% sparsity, 4 bit; NF4 in blocks of 64, LLM.int8() at 8 bit).
STAGES = {
    # Saved as well: the checkpoint test below reloads this run's compressed-tensors checkpoint (one run, not two).
    "sparsegpt+gptq_case_b": ("quant=gptq", "quant.case=B", "save_model=true"),
    "sparsegpt+gptq_case_a": ("quant=gptq", "quant.case=A"),
    "sparsegpt+gptq_joint": ("quant=gptq", "quant.case=joint"),
    "wanda+rtn": ("pruner=wanda", "quant=rtn"),
    "magnitude+nf4": ("pruner=magnitude", "quant=nf4"),
    "sparsegpt+llm_int8": ("quant=llm_int8",),
    "onepass": ("variant=onepass",),
}


def _digest(model, keep) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if keep(name):
            h.update(name.encode())
            h.update(tensor.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def _is_norm(name: str) -> bool:
    return "norm" in name


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for the module: the model is built once, the dense baseline scored once."""
    return tmp_path_factory.mktemp("gemma3-cache")


@pytest.fixture
def seen(monkeypatch):
    """The model's placement, its norms and its embedding table at every lm-eval call, then the real call."""
    import jcexp.evaluate

    real = jcexp.evaluate.evaluate
    calls: list[dict] = []

    def spy(model, tokenizer, bench, seed, **kwargs):
        calls.append(
            {
                **placement.state(model).to_dict(),
                "norms": _digest(model, _is_norm),
                "embed": _digest(model, lambda n: "embed_tokens" in n),
            }
        )
        return real(model, tokenizer, bench, seed, **kwargs)

    monkeypatch.setattr(jcexp.evaluate, "evaluate", spy)
    return calls


def _run(compose, cache, *overrides):
    cfg = compose(*GEMMA, *overrides, f"paths.cache_dir={cache}")
    return cfg, run(cfg)


def test_tiny_gemma3_is_the_architecture_it_stands_for(compose, cache):
    """What the stage tests rely on: Gemma 3's modules, not a Llama's."""
    plan = Plan(compose(*GEMMA, f"paths.cache_dir={cache}"))
    model, _ = plan.source.load()
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    block = model.model.layers[0]
    norms = [n for n, _ in block.named_modules() if _is_norm(n)]
    assert sorted(norms) == sorted(
        [
            "self_attn.q_norm",
            "self_attn.k_norm",
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ]
    )
    widths = {name.rsplit(".", 1)[-1]: w for name, w in plan.layer_widths.items()}
    assert len(plan.layer_widths) == LAYERS
    assert widths == {k: v[1] for k, v in SHAPES.items()}


@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_runs_on_gemma3_and_leaves_norms_embeddings_and_lm_head_alone(compose, cache, seen, name):
    cfg, result = _run(compose, cache, *STAGES[name])
    m, s = result["metrics"], result["measured"]["sparsity"]
    assert result["status"] == "complete" and result["model"]["linear_layers"] == LAYERS
    # Every stage here prunes 25% (one-pass in its GPTQ sweep, so "pruned" and not "after_prune").
    assert s["pruned"] == pytest.approx(0.25, abs=0.005)
    assert m["tcr"] == pytest.approx(1 - 0.75 * result["compression"]["quant"]["bits"] / 16)
    # Scored by lm-eval (a random-init model's Sr has no interval: its dense scores are near chance).
    assert set(result["tasks"]) == {"jc_lastword", "jc_nextsentence"} and m["mean_score"] is not None
    assert 0 < result["perplexity"]["jc_prose_ppl"]["value"] < float("inf")
    # The tied lm_head (and so the embedding table), the q/k norms and the four block norms are not compressed.
    assert result["measured"]["lm_head_unchanged"] is True
    assert result["measured"]["uncompressed_changed"] == []  # oneshot's 1 + w norm round trip is undone
    assert seen, "no evaluation ran: the result was reused from the cache, so nothing here was tested"
    compressed = seen[-1]  # the dense baseline is scored once for the module, in its first run
    dense = _dense_view(compose, cache)
    assert dense["norms_random"], "the norms are still the init's constants: comparing them tests nothing"
    assert compressed["norms"] == dense["norms"] and compressed["embed"] == dense["embed"]
    # The device contract: a plain model on the planned device at every evaluation.
    device = Plan(cfg).device
    for state in seen:
        assert state["offload_wrapped"] == 0 and state["requantizing"] == 0, state
        assert state["devices"] == [device]
    w8a8 = LAYERS if name.endswith("llm_int8") else 0
    assert result["placement"]["compressed_eval"]["activation_quantizing"] == w8a8
    if name in ("sparsegpt+gptq_case_b", "sparsegpt+gptq_joint"):
        assert s["pruned_still_zero"] == pytest.approx(s["pruned"])  # these keep every pruned zero
    if name == "onepass":  # no pruned model to compare with: the zeros counted in the weights at the end
        assert s["after_quant"] >= s["pruned"] - 1e-6


def _dense_view(compose, cache) -> dict:
    """The dense model's norms and embedding table, as loaded (not from the run under test)."""
    model, _ = Plan(compose(*GEMMA, f"paths.cache_dir={cache}")).source.load()
    norms = [p for n, p in model.named_parameters() if _is_norm(n)]
    return {
        "norms": _digest(model, _is_norm),
        "embed": _digest(model, lambda n: "embed_tokens" in n),
        "norms_random": all(float(p.std()) > 0.01 for p in norms),
    }


def _expected(n: int, m: int, block: int) -> float:
    total = sum(r * c for r, c in SHAPES.values())
    return sum(r * nm.pruned_per_row(c, n, m, block) for r, c in SHAPES.values()) / total


# One layout each (both layouts are checked on the tiny Llama in tests/test_nm.py): 2:6 as the paper ran it,
# restarting at every block of 128, and 1:3 along the whole row.
@pytest.mark.parametrize("mask,layout", [("2:6", "paper"), ("1:3", "exact")])
def test_2_6_and_1_3_on_widths_640_1024_and_2048(compose, cache, mask, layout):
    """None of 640, 1024, 2048 is a multiple of 6 or 3: the measured sparsity is the layout's rule on these
    widths, every full group holds N zeros, and the TCr uses what was measured."""
    n, m = map(int, mask.split(":"))
    _, result = _run(compose, cache, f"pruner.mask={mask}", f"pruner.nm_layout={layout}", "quant=none")
    s = result["measured"]["sparsity"]
    assert s["pruned"] == pytest.approx(_expected(n, m, nm.block_size(m, layout)), abs=1e-9)
    assert abs(s["pruned"] - 1 / 3) < 0.02
    structure = result["measured"]["nm_after_prune"]
    assert structure["groups_holding"] == 1.0
    if layout == "exact":
        assert structure["row_groups_holding"] == 1.0
    assert result["metrics"]["tcr_measured_sparsity"] == pytest.approx(s["pruned"])


def test_the_compressed_tensors_checkpoint_reloads_as_gemma3(compose, cache):
    """save_model=true writes llm-compressor's compressed-tensors checkpoint; transformers reloads it as the same
    architecture with the pruned zeros and the tied head intact. (The Case B stage test above ran this config and
    wrote the checkpoint; run alone, this test computes it.)"""
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    _, result = _run(compose, cache, "save_model=true")
    saved = result["saved_model"]
    assert saved["format"] == "compressed-tensors" and saved["bytes"] > 0
    unpacked = CompressedTensorsConfig(run_compressed=False)  # plain Linears with the dequantized weights
    model = AutoModelForCausalLM.from_pretrained(
        saved["path"], dtype=torch.float32, quantization_config=unpacked
    )
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    weights = [mod.weight for n, mod in model.named_modules() if n.endswith(tuple(SHAPES))]
    assert len(weights) == LAYERS
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(result["measured"]["sparsity"]["after_quant"], abs=1e-6)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


# ---------------------------------------------------------------------- llm-compressor's offset-norm round trip
def _bf16_gemma3():
    from transformers import AutoModelForCausalLM

    from jcexp.models import TinyRandomGemma3

    source = TinyRandomGemma3("unused", hidden_size=64, intermediate_size=128, head_dim=16, vocab_size=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(source.hf_config()).to(torch.bfloat16)
    source._randomize(model)
    return model


def test_oneshots_norm_round_trip_moves_bf16_norms_and_is_undone():
    """llm-compressor's own context (what oneshot enters) moves small bfloat16 norm weights by up to 2^-8;
    offset_norms puts back exactly the originals."""
    from llmcompressor.modeling.offset_norm import norm_calibration_context

    from jcexp.compress import offset_norms

    model = _bf16_gemma3()
    saved = offset_norms.save(model)
    assert len(saved) == 2 * 6 + 1  # q/k norms and four per block, and the final norm
    with norm_calibration_context(model):
        pass
    moved = max(float((m.weight.float() - saved[n].float()).abs().max()) for n, m in _norms(model))
    assert 1e-3 < moved <= 2**-7  # the library's round trip alone, with no modifier
    done = offset_norms.restore(model, saved)
    assert done["restored"] == len(saved) and done["changed_by_the_stage"] == []
    assert all(torch.equal(m.weight, saved[n]) for n, m in _norms(model))


def test_a_norm_a_modifier_changes_is_kept():
    """A smoothing modifier (AWQ, SmoothQuant, added by YAML) changes norm weights on purpose: not reverted."""
    from llmcompressor.modeling.offset_norm import norm_calibration_context

    from jcexp.compress import offset_norms

    model = _bf16_gemma3()
    saved = offset_norms.save(model)
    smoothed = "model.layers.0.input_layernorm"
    with norm_calibration_context(model):
        with torch.no_grad():
            dict(model.named_modules())[smoothed].weight.mul_(0.5)  # what smoothing does to w' = 1 + w
    done = offset_norms.restore(model, saved)
    assert done["changed_by_the_stage"] == [smoothed] and done["restored"] == len(saved) - 1
    assert not torch.equal(dict(model.named_modules())[smoothed].weight, saved[smoothed])


def _norms(model):
    return [(n, m) for n, m in model.named_modules() if n and _is_norm(n) and hasattr(m, "weight")]
