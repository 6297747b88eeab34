"""The resource preflight (the memory model, jcexp/memory.py; the decision, jcexp/preflight.py): its terms
scale as the memory they model, a run that cannot fit is refused before any weight is read with the setting to
change, and the tiny run's measured peak RSS falls within 25% of the host-RAM estimate."""

from __future__ import annotations

import inspect
import json
from dataclasses import replace

import pytest
from omegaconf import OmegaConf

from jcexp import memory, preflight
from jcexp.config import ConfigError
from jcexp.memory import EvalLoad, MiB, ModelShapes, Workload, estimate
from tests.conftest import TINY, launch

# A small Llama-like model, by its numbers only (nothing built).
SHAPES = ModelShapes(
    params=10_000_000,
    dtype="float32",
    layers=4,
    hidden=256,
    intermediate=512,
    heads=4,
    kv_heads=2,
    head_dim=64,
    vocab=1000,
    max_positions=2048,
    layer_linears=((256, 256), (256, 128), (256, 128), (256, 256), (256, 512), (256, 512), (512, 256)),
    layer_params=700_000,
    compressible_params=2_800_000,
)


def work(**changes) -> Workload:
    ev = EvalLoad(batch=4, max_length=2048, rolling=(300,), rolling_count=20)
    base = Workload(
        eval_device="cpu",
        compress_device="cpu",
        prune=True,
        quant=True,
        quant_calibrated=True,
        calib_samples=8,
        calib_seq_len=128,
        eval=ev,
        save_model=True,
        save_packed=True,
        bits=4,
        group_size=64,
        cache_pruned=True,
    )
    return replace(base, **changes)


def part(est, phase: str, component: str, resource: str = "host") -> int:
    return getattr(next(p for p in est.phases if p.name == phase), resource).get(component, 0)


# ------------------------------------------------------------------------------------------ scaling
def test_kv_cache_scales_with_batch_and_length():
    def kv(batch, ctx, gen):
        ev = EvalLoad(
            batch=batch, max_length=8192, generate_context=(ctx,) * 64, generate_count=100, max_gen_toks=gen
        )
        return part(estimate(SHAPES, work(eval=ev)), "eval", "kv_cache")

    one = kv(1, 1000, 24)
    # batch x (context + generated) x 2 (K and V) x layers x kv_heads x head_dim x dtype bytes
    assert one == 1 * (1000 + 24) * 2 * 4 * 2 * 64 * 4
    assert kv(8, 1000, 24) == 8 * one
    assert kv(1, 2024, 24) == 2 * one
    assert kv(1, 1000, 1048) == 2 * one


def test_logits_scale_with_batch_and_length_and_vocab():
    def logits(batch, length, vocab=SHAPES.vocab):
        ev = EvalLoad(batch=batch, max_length=4096, rolling=(length,), rolling_count=100)
        return part(estimate(replace(SHAPES, vocab=vocab), work(eval=ev)), "eval", "logits")

    assert logits(1, 100) == 100 * SHAPES.vocab * 4
    assert logits(8, 100) == 8 * logits(1, 100)
    assert logits(1, 400) == 4 * logits(1, 100)
    assert logits(1, 100, vocab=4000) == 4 * logits(1, 100)


def test_loglikelihood_peak_holds_the_previous_batch():
    """Within one _loglikelihood_tokens call the previous batch's log-probs are alive while the next batch's
    logits and log-probs are built: 2 x batch 2 + batch 1 when batch 2 is more than half as long."""
    ev = EvalLoad(batch=2, max_length=4096, loglikelihood=(100, 100, 90, 90), loglikelihood_count=4)
    est = estimate(SHAPES, work(eval=ev))
    slots = part(est, "eval", "logits") + part(est, "eval", "log_softmax")
    assert slots == (2 * 100 + 2 * 2 * 90) * SHAPES.vocab * 4


def test_floor_logits_follow_the_continuation_not_the_request(compose):
    """evaluator.floor (jcexp/hf_floor.py): logits and log-probs at the tails' positions only, batch x longest
    continuation x vocab, 2 x batch tails at a time; Gemma 3's vocabulary at batch 8 on 250-token requests with
    30-token continuations keeps a sixth of stock's logits. The hf evaluators set it, vLLM and floor=false do not."""
    gemma = replace(SHAPES, vocab=262_144, hidden=640)
    ev = EvalLoad(
        batch=8,
        max_length=2048,
        loglikelihood=(250,) * 16,
        loglikelihood_count=64,
        loglikelihood_continuation=(30,) * 16,
    )
    stock, floor = estimate(gemma, work(eval=ev)), estimate(gemma, work(eval=ev, eval_floor=True))

    def logits(est):
        return part(est, "eval", "logits") + part(est, "eval", "log_softmax")

    assert logits(stock) == 3 * 8 * 250 * gemma.vocab * 4  # batch i's logits and log-probs, batch i-1's
    assert logits(floor) == 2 * (2 * 8) * 30 * gemma.vocab * 4  # a tail pass takes 2 x batch tails
    assert part(floor, "eval", "kv_cache") == 2 * 8 * 250 * gemma.kv_bytes_per_token
    assert part(floor, "eval", "activations") == part(stock, "eval", "activations")
    assert memory.estimate_from_dict(floor.to_dict()).to_dict() == floor.to_dict()
    assert memory._evaluator_fields(compose(*TINY))["eval_floor"] is True
    assert memory._evaluator_fields(compose(*TINY, "evaluator=hf_subprocess"))["eval_floor"] is True
    assert memory._evaluator_fields(compose(*TINY, "evaluator.floor=false"))["eval_floor"] is False


def test_hessians_scale_with_width_squared():
    wide = replace(SHAPES, layer_linears=tuple((2 * i, o) for i, o in SHAPES.layer_linears))
    h1 = part(estimate(SHAPES, work()), "prune", "hessians")
    h2 = part(estimate(wide, work()), "prune", "hessians")
    assert h1 == sum(i * i * 4 for i, _ in SHAPES.layer_linears)  # float32, one per Linear of a layer
    assert h2 == 4 * h1


def test_calibration_cache_scales_with_samples_and_seq_len():
    def cache(n, t):
        est = estimate(SHAPES, work(calib_samples=n, calib_seq_len=t))
        return {k: part(est, "prune", k) for k in ("calibration_hidden", "calibration_mask")}

    a, b, c = cache(8, 128), cache(16, 128), cache(8, 256)
    assert b["calibration_hidden"] == 2 * a["calibration_hidden"]
    assert b["calibration_mask"] == 2 * a["calibration_mask"]
    assert c["calibration_hidden"] == 2 * a["calibration_hidden"]
    assert c["calibration_mask"] == 4 * a["calibration_mask"]  # a seq x seq mask per sample


def test_case_ratio_copy_adds_one_model_to_quantization():
    plain = estimate(SHAPES, work(errors=True))
    ratio = estimate(SHAPES, work(errors=True, case_ratio=True))
    grow = {
        p.name: sum(q.host.values()) - sum(p.host.values())
        for p, q in zip(plain.phases, ratio.phases, strict=True)
    }
    assert grow["quantize"] == SHAPES.params * 4
    assert all(v == 0 for k, v in grow.items() if k != "quantize")


def test_error_probe_scales_with_tokens_and_is_absent_when_off():
    off = estimate(SHAPES, work())
    assert all("error_probe" not in p.host for p in off.phases)
    p1 = part(estimate(SHAPES, work(errors=True, errors_tokens=128)), "prune", "error_probe")
    p2 = part(estimate(SHAPES, work(errors=True, errors_tokens=256)), "prune", "error_probe")
    assert p2 == 2 * p1 > 0


def test_dtype_halves_weights_and_disk():
    f32 = estimate(SHAPES, work(save_packed=False))
    bf16 = estimate(replace(SHAPES, dtype="bfloat16"), work(save_packed=False))
    assert part(f32, "load", "weights") == 2 * part(bf16, "load", "weights")
    assert f32.disk["save_model"] == 2 * bf16.disk["save_model"]
    assert f32.disk["cache_pruned"] == SHAPES.params * 4
    packed = estimate(SHAPES, work())
    # 4-bit compressible weights, one float32 scale per group of 64, the rest (embeddings, norms) dense
    rest = SHAPES.params - SHAPES.compressible_params
    assert (
        packed.disk["save_model"]
        == SHAPES.compressible_params // 2 + SHAPES.compressible_params // 64 * 4 + rest * 4
    )


def test_gpu_run_puts_weights_and_kv_on_the_gpu_and_calibration_cache_on_the_host():
    est = estimate(SHAPES, work(eval_device="cuda", compress_device="cuda"))
    assert part(est, "eval", "weights", "gpu") == SHAPES.params * 4
    assert part(est, "eval", "weights") == 0
    assert part(est, "prune", "hessians", "gpu") > 0 and part(est, "prune", "hessians") == 0
    assert part(est, "prune", "calibration_hidden") > 0  # sequential_offload_device: cpu
    assert part(est, "prune", "weights") == SHAPES.params * 4  # stored in host RAM while compressing


def test_subprocess_evaluator_counts_a_second_process_with_its_own_model():
    inproc = estimate(SHAPES, work())
    child = estimate(SHAPES, work(eval_process="subprocess"))
    grow = sum(child.phases[1].host.values()) - sum(inproc.phases[1].host.values())
    assert child.phases[1].name == "eval_dense"
    assert grow == SHAPES.params * 4 + memory.CHILD_RUNTIME_BYTES
    assert child.disk["eval_checkpoint"] == SHAPES.params * 4 and not inproc.disk.get("eval_checkpoint")


# ------------------------------------------------------------------------------------------ refusal
def llama_8b_config():
    """Llama-3.1-8B's shapes, as its hub config gives them (the hub cannot be reached here)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
    )


def llama_8b() -> ModelShapes:
    return ModelShapes.from_config(llama_8b_config(), "bfloat16")


@pytest.fixture(autouse=True)
def ample_disk(monkeypatch):
    """Every check here sees 1 TiB free, so a test of RAM or GPU memory does not depend on the disk of the machine
    that runs it (CI's had 34 GiB free, less than the 8B plans' pruned-model cache). The disk tests set their own."""
    real = preflight.shutil.disk_usage
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: real(p)._replace(free=2**40))


def node(tmp_path, **resources):
    return OmegaConf.create(
        {
            "resources": {
                "enforce": True,
                "host_ram_gb": None,
                "gpu_mem_gb": None,
                "headroom": 0.1,
                **resources,
            },
            "paths": {"root": str(tmp_path), "cache_dir": str(tmp_path / "cache")},
        }
    )


def gen_work(batch):
    ev = EvalLoad(batch=batch, max_length=8192, generate_context=(2048,) * 129, generate_count=1000)
    return work(eval_device="cuda", compress_device="cuda", calib_samples=512, calib_seq_len=2048, eval=ev)


def test_8b_shapes_from_the_config():
    s = llama_8b()
    assert 8.0e9 < s.params < 8.1e9
    assert s.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # 128 KiB per token in bf16
    assert max(i for i, _ in s.layer_linears) == 14336


def test_8b_batch_64_on_a_24gb_gpu_is_refused_naming_the_batch_size(tmp_path):
    s = llama_8b()
    est = estimate(s, gen_work(64)).to_dict()
    assert est["gpu_mem"]["phase"] == "eval_dense"
    with pytest.raises(ConfigError) as err:
        preflight.check(est, node(tmp_path, gpu_mem_gb=24, host_ram_gb=256))
    msg = str(err.value)
    assert "not enough GPU memory" in msg and "24.00 GiB allowed by resources.gpu_mem_gb" in msg
    fits = int(msg.split("benchmark.batch_size=")[1].split()[0])
    assert 1 <= fits < 64
    # the batch it names does fit, one more does not
    preflight.check(estimate(s, gen_work(fits)).to_dict(), node(tmp_path, gpu_mem_gb=24, host_ram_gb=256))
    with pytest.raises(ConfigError):
        preflight.check(
            estimate(s, gen_work(fits + 1)).to_dict(), node(tmp_path, gpu_mem_gb=24, host_ram_gb=256)
        )


def test_8b_compression_host_ram_is_refused_naming_the_calibration(tmp_path):
    """512 x 2048 C4 windows: the bf16 model plus llm-compressor's cached hidden states and causal masks."""
    est = estimate(llama_8b(), gen_work(1)).to_dict()
    assert est["host_ram"]["phase"] in ("prune", "quantize")
    assert est["host_ram"]["peak_mb"] > 28 * 1024
    with pytest.raises(ConfigError, match=r"calibration\.num_samples=\d+ fits"):
        preflight.check(est, node(tmp_path, gpu_mem_gb=24, host_ram_gb=24))


def test_enforce_false_warns_and_runs(tmp_path, caplog):
    est = estimate(llama_8b(), gen_work(64)).to_dict()
    preflight.check(est, node(tmp_path, gpu_mem_gb=24, host_ram_gb=24, enforce=False))
    assert "resources.enforce=false" in caplog.text and "not enough GPU memory" in caplog.text


def test_bad_resources_values_are_refused(tmp_path):
    est = estimate(SHAPES, work()).to_dict()
    with pytest.raises(ConfigError, match="resources.headroom"):
        preflight.check(est, node(tmp_path, headroom=-0.5))
    with pytest.raises(ConfigError, match="resources.host_ram_gb"):
        preflight.check(est, node(tmp_path, host_ram_gb=0))


def test_disk_short_is_refused_with_the_save_settings(tmp_path, monkeypatch):
    est = estimate(SHAPES, work()).to_dict()
    preflight.check(est, node(tmp_path, host_ram_gb=64))
    usage = preflight.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda _p: usage._replace(free=10 * MiB))
    with pytest.raises(ConfigError, match=r"free space for the compressed checkpoint.*save_model=false"):
        preflight.check(est, node(tmp_path, host_ram_gb=64))


# --------------------------------------------------------------------------- LLM.int8() and the vLLM child
def test_llm_int8_counts_its_16_bit_originals_in_host_ram_and_none_on_the_gpu():
    """quant=llm_int8 keeps the original of every compressible weight in host RAM from its stage on."""
    plain = estimate(SHAPES, work(eval_device="cuda", compress_device="cuda", quant_calibrated=False))
    int8 = estimate(
        SHAPES,
        work(eval_device="cuda", compress_device="cuda", quant_calibrated=False, quant_host_copy=True),
    )
    copy = SHAPES.compressible_params * 4
    for phase in ("quantize", "eval", "save"):
        assert part(int8, phase, "int8_fp_copy") == copy, phase
        assert sum(next(p for p in int8.phases if p.name == phase).gpu.values()) == sum(
            next(p for p in plain.phases if p.name == phase).gpu.values()
        ), phase  # nothing more on the device
    for phase in ("load", "eval_dense", "prune"):
        assert part(int8, phase, "int8_fp_copy") == 0, phase


A10_TOTAL = 23028 * MiB  # what an A10 (24 GB) reports as its total memory: an assumption, no GPU here


def vllm_work(fraction=0.85, total=A10_TOTAL, max_length=8192, **changes):
    ev = EvalLoad(batch=None, max_length=max_length, generate_context=(2048,), generate_count=1000)
    return work(
        eval_device="cuda",
        compress_device="cuda",
        eval=ev,
        eval_process="subprocess",
        eval_backend="vllm",
        vllm_gpu_fraction=fraction,
        gpu_total_bytes=total,
        **changes,
    )


def test_vllm_phase_counts_the_parents_context_and_splits_its_share():
    """Outside vLLM's share: this process's CUDA context and the child's; inside it: the checkpoint's weights
    (packed for the compressed W4A16 model), the profile's activations, CUDA graphs and the KV cache."""
    s = llama_8b()
    est = estimate(s, vllm_work(vllm_packed=True))
    dense, packed = (next(p for p in est.phases if p.name == n).gpu for n in ("eval_dense", "eval"))
    for gpu in (dense, packed):
        assert gpu["parent_cuda_context"] == memory.PARENT_CUDA_BYTES
        assert gpu["vllm_cuda_context"] == memory.VLLM_CONTEXT_BYTES
        inside = sum(v for k, v in gpu.items() if not k.endswith("cuda_context"))
        assert inside == int(0.85 * A10_TOTAL)  # the share, exactly
    assert dense["vllm_weights"] == s.weight_bytes
    assert packed["vllm_weights"] < s.weight_bytes / 2  # 4-bit packed linears, 16-bit embeddings
    assert packed["vllm_kv_cache"] - dense["vllm_kv_cache"] == dense["vllm_weights"] - packed["vllm_weights"]
    # vLLM's default batch on an 80 GB GPU is larger (16384 tokens, 1024 sequences): more activations.
    h100 = estimate(s, vllm_work(total=81559 * MiB)).phases[1].gpu
    assert h100["vllm_activations"] > dense["vllm_activations"]


def test_vllm_that_cannot_start_is_refused_naming_a_utilization_that_fits(tmp_path):
    s = llama_8b()
    est = estimate(s, vllm_work(0.85)).to_dict()
    # 0.85 x 22.49 GiB = 19.1 GiB must be free when vLLM starts, beside two contexts: 20 GiB free is too little.
    with pytest.raises(ConfigError) as err:
        preflight.check(est, node(tmp_path, gpu_mem_gb=20, host_ram_gb=256))
    msg = str(err.value)
    assert "vLLM would not start" in msg and "this process's CUDA context" in msg
    fits = float(msg.split("evaluator.model_args.gpu_memory_utilization=")[-1].split(",")[0])
    assert fits < 0.85 and est["vllm"]["largest_utilization_that_starts"] == fits
    assert est["vllm"]["free_at_start_gb"] == 19.0  # 20 less 0.5 + 0.5 GiB of contexts
    # The value it names starts (and is recorded); 0.01 more does not.
    preflight.check(estimate(s, vllm_work(fits)).to_dict(), node(tmp_path, gpu_mem_gb=20, host_ram_gb=256))
    with pytest.raises(ConfigError, match="vLLM would not start"):
        preflight.check(
            estimate(s, vllm_work(round(fits + 0.01, 2))).to_dict(),
            node(tmp_path, gpu_mem_gb=20, host_ram_gb=256),
        )
    # The whole card free: 0.85 starts, and the general GPU check does not add its headroom to vLLM's share.
    full = estimate(s, vllm_work(0.85)).to_dict()
    preflight.check(full, node(tmp_path, gpu_mem_gb=A10_TOTAL / 2**30, host_ram_gb=256))
    assert full["vllm"]["kv_cache_gb"]["eval_dense"] > 1


def test_vllm_without_room_for_one_sequence_is_refused(tmp_path):
    """The bf16 8B model in 0.7 of an A10: weights, activations and graphs leave no KV cache for 8192 tokens."""
    s = llama_8b()
    est = estimate(s, vllm_work(0.7)).to_dict()
    with pytest.raises(ConfigError) as err:
        preflight.check(est, node(tmp_path, gpu_mem_gb=A10_TOTAL / 2**30, host_ram_gb=256))
    msg = str(err.value)
    assert "vLLM's KV cache (eval_dense)" in msg and "max_model_len=8192" in msg
    want = float(msg.split("set evaluator.model_args.gpu_memory_utilization=")[1].split()[0])
    assert 0.7 < want <= est["vllm"]["largest_utilization_that_starts"]
    preflight.check(
        estimate(s, vllm_work(want)).to_dict(), node(tmp_path, gpu_mem_gb=A10_TOTAL / 2**30, host_ram_gb=256)
    )
    # A length whose one sequence cannot fit at any utilization that starts: lower benchmark.max_length.
    long = estimate(s, vllm_work(0.85, max_length=131072)).to_dict()
    with pytest.raises(ConfigError, match="lower benchmark.max_length"):
        preflight.check(long, node(tmp_path, gpu_mem_gb=A10_TOTAL / 2**30, host_ram_gb=256))


# ------------------------------------------------------------------------------------ from a real plan
@pytest.fixture
def no_weights(monkeypatch):
    """Any attempt to read a checkpoint's weights fails the test."""
    from transformers import AutoModelForCausalLM

    from jcexp.models import ModelSource

    def refuse(*_a, **_k):
        raise AssertionError("the preflight read weights")

    monkeypatch.setattr(ModelSource, "_load_dir", staticmethod(refuse))
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def test_tiny_plan_measures_its_requests_and_is_refused_on_a_small_node(compose, tmp_path, no_weights):
    from jcexp.plan import Plan

    cfg = compose(*TINY, "resources.host_ram_gb=0.1")
    est = memory.estimate_for(Plan(cfg))
    ev = est["inputs"]["workload"]["eval"]
    assert ev["source"] == "requests" and ev["max_length"] == 512
    assert ev["loglikelihood_count"] == 16 + 16 * 4  # benchmark.limit=16: cloze + 4-way choice
    assert 0 < max(ev["loglikelihood_continuation"]) < max(ev["loglikelihood"])  # evaluator.floor's logits
    assert est["inputs"]["workload"]["eval_floor"] is True
    assert max(ev["rolling"]) == 512  # documents longer than max_length: windows of max_length
    assert est["host_ram"]["peak_mb"] > 600 and est["gpu_mem"] is None
    json.dumps(est)  # goes into result.json as is
    with pytest.raises(ConfigError) as err:
        preflight.check(est, cfg, out=tmp_path)
    msg = str(err.value)
    assert "not enough host RAM" in msg and "102.4 MiB allowed by resources.host_ram_gb" in msg
    assert "benchmark.batch_size" in msg


def test_without_tokenizer_or_requests_the_lengths_fall_back(compose, monkeypatch):
    from jcexp.plan import Plan

    plan = Plan(compose(*TINY))
    measured = memory.estimate_for(plan)["inputs"]["workload"]["eval"]
    monkeypatch.setattr(memory, "_tokenizer", lambda _s: (_ for _ in ()).throw(OSError("offline")))
    chars = memory.estimate_for(plan)["inputs"]["workload"]["eval"]
    assert "3 characters per token" in chars["source"]
    assert chars["loglikelihood_count"] == measured["loglikelihood_count"]
    assert chars["loglikelihood"][0] != measured["loglikelihood"][0]  # counted, not tokenized
    monkeypatch.setattr(memory, "_request_texts", lambda *_a: (_ for _ in ()).throw(RuntimeError("no data")))
    est = memory.estimate_for(plan)
    ev = est["inputs"]["workload"]["eval"]
    assert ev["loglikelihood"] == [512] and "max_length=512 for every request" in ev["source"]
    assert any("no data" in n for n in est["notes"])


def _pipeline_calls_preflight() -> bool:
    import jcexp.run

    return "preflight" in inspect.getsource(jcexp.run)


@pytest.mark.skipif(not _pipeline_calls_preflight(), reason="jcexp.run.run does not call the preflight yet")
def test_run_refuses_before_reading_weights(compose, no_weights, tmp_path):
    from jcexp.run import run

    with pytest.raises(ConfigError, match="not enough host RAM"):
        # Its own cache: a result stored by another test would be returned before any preflight (no work to do).
        run(compose(*TINY, "resources.host_ram_gb=0.1", f"paths.cache_dir={tmp_path}"))


def test_tiny_estimate_is_within_25_percent_of_the_measured_peak(compose, tmp_path):
    """One real tiny run in its own process: result.json's peak_rss_mb (ru_maxrss) against the estimate."""
    from jcexp.plan import Plan

    # Its own cache: a result reused from another test would carry that process's peak, not this run's.
    cfg = compose(*TINY, f"paths.cache_dir={tmp_path / 'cache'}")
    est = memory.estimate_for(Plan(cfg))
    proc = launch(*TINY, "logger=none", f"paths.cache_dir={cfg.paths.cache_dir}", outputs=tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next((tmp_path / "run").rglob("result.json")).read_text())
    cmp = memory.compare(est, result["peak_rss_mb"])["host_ram"]
    assert 0.75 <= cmp["measured_over_estimated"] <= 1.25, cmp


def test_a_jobs_peak_rss_is_its_own_not_its_parents():
    """ru_maxrss survives fork and exec: a job started by a large parent (pytest late in the suite, a notebook,
    a driver) reported the parent's RSS at fork time (1.5 GB here) as its own peak. VmHWM is reset by exec."""
    import subprocess
    import sys

    import psutil

    blob = bytearray(1024 * 2**20)
    blob[::4096] = b"\x01" * len(blob[::4096])  # touch every page: resident, not just reserved
    parent = psutil.Process().memory_info().rss / 2**20
    code = "import resource; from jcexp.measure import process_peak_rss_mb; print(process_peak_rss_mb())"
    child = float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )
    del blob
    assert child < parent - 512, (child, parent)
