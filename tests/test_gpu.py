"""The GPU path, run where a GPU is visible (`make gpu-check` on any GPU node); skipped elsewhere, with the reason.

The CPU invariants behind these tests are in tests/test_placement.py. Here the same runs go through CUDA and are
compared with CPU runs of the same configs: the device contract on a real GPU (weights resident on cuda:0 at
every evaluation, llm-compressor compressing on cuda:0, no wrapper left), and scores that agree with CPU within
a stated tolerance. Compression on a GPU takes other floating-point paths (cuBLAS reductions, TF32 off), so a
few pruning or rounding decisions near ties may differ: that, not a bug, is what the tolerances allow for.
"""

import pytest
import torch

from jcexp.run import run

from .conftest import TINY

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible: GPU path not run here"),
]

# Agreement between a CPU and a GPU run of the same point, in items (bench.gpu_check.CPU_GPU_TOLERANCE): per
# task, at most 1 item or 2% of its items scored differently, for the compressed model and the dense baseline;
# perplexity within 2%. No bound on Sr: on the tiny suite (baselines 0.0 and 0.125) one item moves it by 0.5.


def _check_gpu_placement(result: dict) -> None:
    placed = result["placement"]
    assert placed["compress"] == "cuda:0"
    for key in ("dense_eval", "compressed_eval"):
        state = placed[key]
        assert state["devices"] == ["cuda:0"], state
        assert state["offload_wrapped"] == 0 and state["requantizing"] == 0, state


def _agree(cpu: dict, gpu: dict) -> None:
    from bench.gpu_check import CPU_GPU_TOLERANCE, comparison

    found = comparison(cpu, gpu, CPU_GPU_TOLERANCE, ("cpu", "gpu"))
    assert found["rows"] and found["disagreements"] == [], found["disagreements"]


@pytest.mark.parametrize("quant", ["gptq", "rtn", "nf4", "int8_weight", "llm_int8"])
def test_tiny_point_on_cuda_matches_cpu(compose, tmp_path, quant):
    extra = ("quant.group_size=32",) if quant == "nf4" else ()
    common = (*TINY, f"quant={quant}", *extra, "save_model=false")
    cpu = run(compose(*common, "device=cpu", f"paths.cache_dir={tmp_path / 'cpu'}"))
    gpu = run(compose(*common, "device=cuda", f"paths.cache_dir={tmp_path / 'gpu'}"))
    _check_gpu_placement(gpu)
    assert gpu["stages"]["eval"]["peak_cuda_mb"] > 0
    _agree(cpu, gpu)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["s25_w4", "s0_w3"])
def test_smollm2_point_on_cuda_matches_cpu(compose, tmp_path, shared_cache, point):
    common = (f"point={point}", "benchmark.limit=100", "save_model=false")
    cpu = run(compose(*common, "device=cpu", f"paths.cache_dir={tmp_path / 'cpu'}"))
    gpu = run(compose(*common, "device=cuda", f"paths.cache_dir={tmp_path / 'gpu'}"))
    _check_gpu_placement(gpu)
    _agree(cpu, gpu)


@pytest.mark.slow
def test_smollm2_point_scored_by_vllm_agrees_with_hf(compose, tmp_path):
    """One SmolLM2 point (25% SparseGPT + 4-bit GPTQ) compressed on the GPU, scored by evaluator=vllm (its own
    environment, the packed W4A16 checkpoint in bfloat16) and by evaluator=hf (the in-memory float32 model), both
    for the compressed model and the dense baseline. They must agree within bench.gpu_check's VLLM_TOLERANCE
    (per task at most 2 items or 3% of its items scored differently, 3% of perplexity): vLLM's bfloat16 int4
    kernels may flip items near a tie. bench.gpu_check runs the same comparison on the whole suite and records
    the figures. `make gpu-check` refuses to start without the vLLM environment unless SKIP_VLLM=1."""
    from bench.gpu_check import VLLM_TOLERANCE, vllm_comparison, vllm_python

    if vllm_python() is None:
        pytest.skip(
            "no vLLM environment: `make vllm-env` builds .venv-vllm (JCEXP_VLLM_PYTHON names another)"
        )
    common = ("point=s25_w4", "benchmark.limit=100", "save_model=false", "device=cuda")
    hf = run(compose(*common, f"paths.cache_dir={tmp_path / 'hf'}"))
    vllm = run(compose(*common, "evaluator=vllm", f"paths.cache_dir={tmp_path / 'vllm'}"))
    placed = vllm["placement"]["compressed_eval"]
    assert placed["evaluator"] == "vllm" and placed["checkpoint_format"] == "compressed-tensors", placed
    assert vllm["evaluator"]["evaluator"] == "vllm" and vllm["baseline"]["reused"] is False
    comparison = vllm_comparison(hf, vllm)
    assert comparison["tolerance"] == VLLM_TOLERANCE and comparison["rows"]
    assert comparison["disagreements"] == [], comparison["disagreements"]


@pytest.mark.parametrize("name", ["tiny_random", "tiny_gemma3"])
def test_floor_evaluator_scores_as_stock_on_cuda(compose, name):
    """What a forward does on the GPU: jcexp/hf_floor.py's shared-context, head-at-scored-positions path against
    lm-eval's stock HFLM on the same cuda:0 model (tests/test_eval_floor.py checks the same on CPU)."""
    from .test_eval_floor import TOL, _load, _pair, _token_requests

    _, model, tokenizer = _load(compose, name)
    # Greedy continuations are found on CPU, before the move.
    reqs = _token_requests(model, model.config.vocab_size)
    model.to("cuda:0")
    stock, floor = _pair(model, tokenizer, batch_size=3)
    want = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    got = floor._loglikelihood_tokens(reqs, disable_tqdm=True)
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    diff = max(abs(a[0] - b[0]) for a, b in zip(want, got, strict=True))
    assert diff <= TOL, f"{name} on cuda: max |loglik diff| {diff}"
    assert [a[1] for a in got] == [b[1] for b in want]
