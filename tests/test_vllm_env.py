"""evaluator=vllm's own environment (`make vllm-env`: .venv-vllm/) against what jcexp renders and writes.

The checks run in that environment, in a child process started with its interpreter (what evaluator=vllm's
`python` resolves to), which has vLLM and lm-eval but not jcexp. Without a GPU, and without starting vLLM's
engine:

(a) Engine arguments. For each benchmark, the spec jcexp's evaluator=vllm renders (model_args, batch_size,
    device) goes through lm-eval's VLLM wrapper as the worker hands it over (`create_from_arg_obj`), then
    through vLLM's own `LLM` up to the point where it would start its engine (`LLMEngine.from_engine_args`, the
    one function replaced). Every rendered argument must be taken by the wrapper's signature or reach vLLM's
    `EngineArgs` with its value; none may be dropped on the way (lm-eval silently drops `swap_space`, for
    one). A made-up argument in the same place is rejected: the check is not vacuous.
(b) Checkpoints. The tiny model is compressed and saved in the main environment as a run does it
    (`apply_stage`, `checkpoints.save` in the format evaluator=vllm asks for): W4A16 (25% SparseGPT + 4-bit
    GPTQ, group 32), W8A16, W4A16 per channel (RTN), a dense copy of a 3-bit model, and the dense source model
    (what the baseline reads). In the vLLM environment, lm-eval's VLLM wrapper is built on each, to the end of
    its constructor (config, tokenizer, chat template), with a stand-in engine that holds vLLM's real
    `ModelConfig`. Then vLLM's loader path is followed as far as it goes without CUDA: `get_quant_config` (the
    compressed-tensors `CompressedTensorsConfig.from_config` on the checkpoint's `quantization_config`), the
    model class's packed-module mapping (q/k/v and gate/up fused), `get_quant_method` for every Linear (the
    scheme: `CompressedTensorsWNA16`, its bits, group size and weight type), lm_head and the embedding left
    unquantized, and `create_weights` for every Linear, whose parameter names and shapes must equal the
    checkpoint's tensors. Kernel choice there runs with the platform faked as a CUDA GPU of compute capability
    8.6 (A10) and 9.0 (H100); the dense checkpoints must carry no quantization config and load as plain
    weights. Every checkpoint must tokenize alike.
(c) Kernels for the paper's shapes. vLLM's kernel choice (`choose_mp_linear_kernel`, same faked GPUs plus 8.0)
    must find a kernel for W4A16 and W8A16 at each model's group size for every Linear of SmolLM2-135M,
    Llama-3.1-8B and Mistral-7B-v0.3 (shapes from their config.json), as vLLM fuses them at TP=1. The faked
    platform answers only the instance's capability: kernels that ask the device otherwise (Machete on 9.0,
    for one) are ruled out here, so a real GPU may get another kernel than the one named in the report
    (here Marlin on 8.0 and 8.6, Humming on 9.0); the kernels' own shape and weight-type checks are real.

Not checked here, because it needs CUDA (no GPU on this machine): starting the engine, loading the weights
(vLLM's weight loaders and process_weights_after_loading, which repacks for the kernel with CUDA ops), any
kernel actually running or agreeing numerically, CUDA graphs, KV-cache sizing from gpu_memory_utilization,
what vLLM's device config, worker and scheduler make of the arguments (`create_engine_config` needs a device),
and kernel choice on the real platform (here its capability is faked; the kernels' `can_implement` shape and
type checks are real). `make gpu-check` runs one SmolLM2 point with evaluator=vllm on a GPU (tests/test_gpu.py).

The environment is absent in CI: the tests skip, saying so. `make vllm-env` builds it (minutes, about 11 GB).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, TINY

# What runs in the vLLM environment. It imports no jcexp: argv[1] is the payload, argv[2] the report written.
CHILD = r'''
import contextlib, dataclasses, inspect, json, sys, types
from pathlib import Path

import torch
from safetensors import safe_open

import lm_eval.models.vllm_causallms as lm_vllm
import vllm.entrypoints.llm as vllm_llm
import vllm.model_executor.parameter as vllm_parameter
from lm_eval.api.registry import get_model
from vllm.engine.arg_utils import EngineArgs
from vllm.model_executor.kernels.linear import MPLinearLayerConfig, choose_mp_linear_kernel
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear, UnquantizedLinearMethod,
)
from vllm.model_executor.layers.quantization.compressed_tensors.schemes import CompressedTensorsWNA16
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from vllm.model_executor.model_loader.utils import configure_quant_config
from vllm.model_executor.model_loader.weight_utils import get_quant_config
from vllm.model_executor.models import ModelRegistry
from vllm.platforms import PlatformEnum, current_platform
from vllm.platforms.interface import DeviceCapability

payload = json.loads(Path(sys.argv[1]).read_text())


class EngineStart(Exception):
    """Raised where vLLM would start its engine (load weights, take the GPU); carries its EngineArgs."""


def _engine_start(engine_args, **_):
    raise EngineStart(engine_args)


vllm_llm.LLMEngine.from_engine_args = _engine_start
RealLLM = lm_vllm.LLM
COMPLETE = False


class NoEngineLLM:
    """vLLM's LLM up to its engine start; then (COMPLETE) a stand-in engine that holds vLLM's ModelConfig, so
    that lm-eval's VLLM constructor runs to its end."""

    def __init__(self, **kwargs):
        try:
            RealLLM(**kwargs)
        except EngineStart as start:
            self.engine_args = start.args[0]
        else:
            raise RuntimeError("vLLM's LLM started an engine")
        if not COMPLETE:
            raise EngineStart(self.engine_args)
        self.llm_engine = types.SimpleNamespace(model_config=self.engine_args.create_model_config())


lm_vllm.LLM = NoEngineLLM


def build(model_args, extra, complete):
    """lm-eval's VLLM from the spec as the worker builds it: (wrapper or None, EngineArgs or None, error)."""
    global COMPLETE
    COMPLETE = complete
    try:
        lm = get_model("vllm").create_from_arg_obj(dict(model_args), dict(extra))
    except EngineStart as start:
        return None, start.args[0], None
    except Exception as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    return lm, lm.model.engine_args, None


# (a) ------------------------------------------------------------------------------------- engine arguments
WRAPPER = set(inspect.signature(lm_vllm.VLLM.__init__).parameters) - {"self", "kwargs"}
RENAMED = {"pretrained": "model", "max_length": "max_model_len", "max_batch_size": "max_num_seqs"}
FIELDS = {f.name for f in dataclasses.fields(EngineArgs)}


def engine_arguments(case):
    _, args, error = build(case["model_args"], case["extra"], complete=False)
    row = {"error": error, "engine": {}, "wrapper_only": [], "dropped": [], "mismatched": {}}
    if args is None:
        return row
    for key, value in {**case["model_args"], **case["extra"]}.items():
        if value is None and key in case["extra"]:
            continue  # lm-eval's create_from_arg_obj drops None values of the additional config
        field = RENAMED.get(key, key)
        if field in FIELDS:
            row["engine"][field] = repr(getattr(args, field))
            if getattr(args, field) != value:
                row["mismatched"][key] = [repr(value), repr(getattr(args, field))]
        elif key in WRAPPER:
            row["wrapper_only"].append(key)
        else:
            row["dropped"].append(key)  # neither a wrapper parameter nor an engine argument: silently lost
    return row


# (b) ------------------------------------------------------------------------------------------ checkpoints
vllm_parameter.get_tensor_model_parallel_rank = lambda: 0  # one GPU: tensor_parallel_size 1, as rendered
vllm_parameter.get_tensor_model_parallel_world_size = lambda: 1


@contextlib.contextmanager
def cuda(capability):
    """The platform faked as a CUDA GPU of this compute capability (no GPU here: vLLM's is Unspecified)."""
    names = ("_enum", "is_cuda", "get_device_capability")
    saved = {n: current_platform.__dict__[n] for n in names if n in current_platform.__dict__}
    current_platform._enum = PlatformEnum.CUDA
    current_platform.is_cuda = lambda: True
    current_platform.get_device_capability = lambda device_id=0: DeviceCapability(capability // 10, capability % 10)
    try:
        yield
    finally:
        for n in names:
            current_platform.__dict__.pop(n, None)
        current_platform.__dict__.update(saved)


def shell(cls):
    """A module of one of vLLM's layer classes without its constructor (which needs the TP groups): quant
    methods match on the class and the layer's name only."""
    module = cls.__new__(cls)
    torch.nn.Module.__init__(module)
    return module


def tensors(path):
    shapes, values = {}, {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                shapes[key] = list(f.get_slice(key).get_shape())
                if key.endswith(".weight_shape"):
                    values[key] = f.get_tensor(key).tolist()
    return shapes, values


def scheme_row(scheme):
    if scheme is None:
        return None
    row = {"class": type(scheme).__name__}
    for attr in ("num_bits", "group_size", "strategy", "symmetric", "quant_type"):
        if hasattr(scheme, attr):
            row[attr] = str(getattr(scheme, attr)) if attr == "quant_type" else getattr(scheme, attr)
    return row


def checkpoint(ck):
    lm, args, error = build(ck["model_args"], ck["extra"], complete=True)
    if error:
        return {"error": error}
    mc = lm.model.llm_engine.model_config
    row = {
        "quantization": mc.quantization,
        "dtype": str(mc.dtype).removeprefix("torch."),
        "max_model_len": mc.max_model_len,
        "max_length": lm.max_length,
        "tokenizer": type(lm.tokenizer).__name__,
        "encoded": lm.tok_encode(payload["text"]),
        "linears": {},
    }
    model_cls, _ = ModelRegistry.resolve_model_cls(mc.architectures, model_config=mc)
    fused = {part: whole for whole, parts in model_cls.packed_modules_mapping.items() for part in parts}
    quant = None
    if mc.quantization is not None:
        quant = get_quant_config(mc, args.create_load_config())
        configure_quant_config(quant, model_cls)
        row["quant_config"] = type(quant).__name__
        row["act_dtype_supported"] = mc.dtype in quant.get_supported_act_dtypes()
        row["lm_head"] = repr(quant.get_quant_method(shell(ParallelLMHead), prefix="lm_head"))
        row["embed_tokens"] = repr(quant.get_quant_method(shell(VocabParallelEmbedding), prefix="model.embed_tokens"))
    shapes, values = tensors(ck["path"])
    packed = sorted(k[: -len(".weight_packed")] for k in shapes if k.endswith(".weight_packed"))
    plain = sorted(k[: -len(".weight")] for k, s in shapes.items() if k.endswith(".weight") and len(s) == 2 and ".layers." in k)
    prefixes = packed + [p for p in plain if p not in packed]
    claimed = set()
    for prefix in prefixes:
        parent, _, name = prefix.rpartition(".")
        whole = fused.get(name, name)
        cls = RowParallelLinear if whole == name else QKVParallelLinear if "qkv" in whole else MergedColumnParallelLinear
        layer = shell(cls)
        method = quant.get_quant_method(layer, prefix=f"{parent}.{whole}") if quant else UnquantizedLinearMethod()
        entry = {"vllm_layer": f"{parent}.{whole}", "method": type(method).__name__, "scheme": scheme_row(getattr(layer, "scheme", None))}
        out_f, in_f = values[prefix + ".weight_shape"] if prefix in packed else shapes[prefix + ".weight"]
        have = {k[len(prefix) + 1 :]: s for k, s in shapes.items() if k.startswith(prefix + ".")}
        claimed |= {f"{prefix}.{k}" for k in have}
        sizes = dict(input_size_per_partition=in_f, output_partition_sizes=[out_f], input_size=in_f, output_size=out_f, params_dtype=mc.dtype, weight_loader=lambda *a, **k: None)
        try:
            for capability in payload["capabilities"]:
                target = shell(RowParallelLinear)  # the checkpoint's own (unfused) Linear
                if quant is None:
                    UnquantizedLinearMethod().create_weights(target, **sizes)
                else:
                    with cuda(capability):
                        quant.get_quant_method(target, prefix=prefix)
                        target.scheme.create_weights(target, **sizes)
                    entry.setdefault("kernels", {})[str(capability)] = type(target.scheme.kernel).__name__
            entry["weights_match"] = {n: list(p.shape) for n, p in target.named_parameters()} == have
            if not entry["weights_match"]:
                entry["expected"] = {n: list(p.shape) for n, p in target.named_parameters()}
                entry["found"] = have
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        row["linears"][prefix] = entry
    # Tensors of no Linear: embeddings and norms, plain weights only.
    row["unclaimed"] = sorted(k for k in shapes if k not in claimed and not k.endswith(".weight"))
    return row


# (c) ------------------------------------------------------------------------------------ the paper's shapes
def kernels(model):
    out = {}
    for bits in payload["bits"]:
        g = model["group_size"]
        scheme = CompressedTensorsWNA16(strategy="group" if g else "channel", num_bits=bits, group_size=g)
        for capability in payload["capabilities_all"]:
            for name, (in_f, out_f) in model["linears"].items():
                config = MPLinearLayerConfig(
                    full_weight_shape=(in_f, out_f), partition_weight_shape=(in_f, out_f),
                    weight_type=scheme.quant_type, act_type=torch.bfloat16, group_size=scheme.group_size,
                    zero_points=False,
                )
                key = f"w{bits} sm{capability} {name} {in_f}x{out_f}"
                try:
                    with cuda(capability):
                        out[key] = choose_mp_linear_kernel(config).__name__
                except ValueError as exc:
                    out[key] = f"none: {exc}"
    return out


from importlib.metadata import version

report = {
    "versions": {p: version(p) for p in ("vllm", "lm_eval", "torch", "transformers", "compressed-tensors")},
    "engine_arguments": {c["label"]: engine_arguments(c) for c in payload["engine_arguments"]},
    "checkpoints": {c["label"]: checkpoint(c) for c in payload["checkpoints"]},
    "kernels": {m["model"]: kernels(m) for m in payload["models"]},
}
Path(sys.argv[2]).write_text(json.dumps(report, indent=1, default=str))
'''

BENCHMARKS = [  # (model, benchmark): every benchmark group, the paper's with both paper models
    ("tiny_random", "tiny"),
    ("smollm2_135m", "offline"),
    ("smollm2_135m", "mmlu"),
    ("llama3_1_8b", "paper"),
    ("mistral_7b_v0_3", "paper"),
]
# name: (overrides, expected scheme: bits, group size, vLLM weight type) or None for a dense checkpoint.
CHECKPOINTS = {
    "W4A16 (25% SparseGPT + 4-bit GPTQ)": (("quant.bits=4",), (4, 32, "uint4b8")),
    "W8A16 (25% SparseGPT + 8-bit GPTQ)": (("quant.bits=8",), (8, 32, "uint8b128")),
    "W4A16 per channel (4-bit RTN)": (("quant=rtn", "quant.group_size=null"), (4, -1, "uint4b8")),
    "dense copy (25% SparseGPT + 3-bit GPTQ)": (("quant.bits=3",), None),
}
SOURCE = "dense source (the baseline's checkpoint)"
# Decoder Linears as vLLM fuses them at tensor_parallel_size 1: (in_features, out_features), from each model's
# config.json (hidden, intermediate, heads x head_dim, KV heads x head_dim).
MODELS = {
    "smollm2_135m": {"hidden": 576, "intermediate": 1536, "q": 576, "kv": 192},
    "llama3_1_8b": {"hidden": 4096, "intermediate": 14336, "q": 4096, "kv": 1024},
    "mistral_7b_v0_3": {"hidden": 4096, "intermediate": 14336, "q": 4096, "kv": 1024},
}
CAPABILITIES = [86, 90]  # A10, H100
TEXT = "The model reads the same text the same way, whatever checkpoint it comes from."


def _compose(cache: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    import jcexp.config  # noqa: F401  (schema + resolvers)

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"paths.cache_dir={cache}", "logger=none", *overrides])


def _vllm_python(cache: Path) -> str:
    """evaluator=vllm's interpreter as a run resolves it (JCEXP_VLLM_PYTHON, else .venv-vllm/bin/python)."""
    from jcexp.evaluate import resolve_python

    python = _compose(cache, *TINY, "evaluator=vllm").evaluator.python
    try:
        return resolve_python(python)
    except FileNotFoundError:
        pytest.skip(f"no vLLM environment ({python} is absent): `make vllm-env` builds one; CI has none")


def _render(cache: Path, checkpoint: Path, model: str, benchmark: str) -> dict:
    """What the worker hands lm-eval for evaluator=vllm: the spec's model_args, and batch_size and device."""
    from hydra.utils import instantiate

    cfg = _compose(cache, f"model={model}", f"benchmark={benchmark}", "evaluator=vllm")
    spec = instantiate(cfg.evaluator).spec(cfg.benchmark, cfg.seed, str(checkpoint), device="cuda")
    assert spec["backend"] == "vllm"
    return {
        "model_args": spec["model_args"],
        "extra": {"batch_size": spec["batch_size"], "device": spec["device"]},
    }


def _write_checkpoints(cache: Path, out: Path) -> dict[str, Path]:
    """The tiny model compressed and saved as a run with evaluator=vllm saves it for evaluation."""
    from hydra.utils import instantiate

    from jcexp import checkpoints
    from jcexp.compress.stages import apply_stage
    from jcexp.plan import Plan

    written = {}
    for name, (overrides, scheme) in CHECKPOINTS.items():
        cfg = _compose(cache, *TINY, *overrides)
        plan = Plan(cfg)
        model, tokenizer = plan.source.load()
        calibration = plan.calibration.dataset(tokenizer)
        for stage in plan.stages:
            apply_stage(stage, model, tokenizer, calibration, cfg.seed)
        evaluator = instantiate(_compose(cache, *TINY, *overrides, "evaluator=vllm").evaluator)
        fmt = evaluator.checkpoint_format(plan.quant.name, plan.quant.bits)
        assert fmt == ("dense" if scheme is None else "compressed-tensors"), name
        path = out / f"checkpoint{len(written)}"
        checkpoints.save(model, tokenizer, path, fmt, plan.source.tokenizer_dir())
        written[name] = path
    written[SOURCE] = Path(Plan(_compose(cache, *TINY)).source.checkpoint_dir())
    return written


@pytest.fixture(scope="module")
def report(tmp_path_factory, shared_cache):
    """One child process in the vLLM environment answers every check (importing vLLM takes ~15 s)."""
    python = _vllm_python(shared_cache)
    tmp = tmp_path_factory.mktemp("vllm_env")
    written = _write_checkpoints(shared_cache, tmp)
    source = written[SOURCE]
    cases = [{"label": f"{m} {b}", **_render(shared_cache, source, m, b)} for m, b in BENCHMARKS]
    control = {**cases[0], "label": "control"}
    control["model_args"] = {**control["model_args"], "not_an_engine_argument": 1}
    tiny = _render(shared_cache, source, "tiny_random", "tiny")
    ckpts = [
        {
            "label": name,
            "path": str(path),
            **tiny,
            "model_args": {**tiny["model_args"], "pretrained": str(path)},
        }
        for name, path in written.items()
    ]
    models = []
    for model, d in MODELS.items():
        group = _compose(shared_cache, f"model={model}").quant.group_size
        linears = {
            "qkv_proj": (d["hidden"], d["q"] + 2 * d["kv"]),
            "o_proj": (d["q"], d["hidden"]),
            "gate_up_proj": (d["hidden"], 2 * d["intermediate"]),
            "down_proj": (d["intermediate"], d["hidden"]),
        }
        models.append({"model": model, "group_size": group, "linears": linears})
    payload = {
        "engine_arguments": [*cases, control],
        "checkpoints": ckpts,
        "models": models,
        "bits": [4, 8],
        "capabilities": CAPABILITIES,
        "capabilities_all": [80, *CAPABILITIES],
        "text": TEXT,
    }
    (tmp / "payload.json").write_text(json.dumps(payload, indent=1))
    done = subprocess.run(
        [python, "-c", CHILD, str(tmp / "payload.json"), str(tmp / "report.json")],
        cwd=tmp,  # nothing of jcexp on the child's path
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"the vLLM environment's checks failed to run:\n{done.stderr[-6000:]}"
    out = json.loads((tmp / "report.json").read_text())
    out["payload"] = payload
    return out


def test_every_engine_argument_jcexp_renders_is_accepted_by_lm_eval_and_vllm(report):
    rows = report["engine_arguments"]
    control = rows.pop("control")
    assert len(rows) == len(BENCHMARKS)
    for label, row in rows.items():
        assert row["error"] is None, f"{label}: {row['error']}"
        assert row["dropped"] == [], f"{label}: lm-eval's VLLM dropped {row['dropped']} before vLLM saw them"
        assert row["mismatched"] == {}, f"{label}: vLLM's EngineArgs got other values: {row['mismatched']}"
        for key in ("model", "dtype", "gpu_memory_utilization", "tensor_parallel_size", "seed"):
            assert key in row["engine"], (label, key)  # what evaluator=vllm's config renders today
    assert control["error"] and "not_an_engine_argument" in control["error"], control  # the check can fail
    rendered = {c["label"]: c["model_args"] for c in report["payload"]["engine_arguments"]}
    assert (
        rows["llama3_1_8b paper"]["engine"]["max_model_len"]
        == "8192"
        == str(rendered["llama3_1_8b paper"]["max_model_len"])
    )


def test_the_checkpoints_jcexp_writes_are_read_by_vllms_compressed_tensors_support(report):
    rows = report["checkpoints"]
    assert set(rows) == {*CHECKPOINTS, SOURCE}
    for label, row in rows.items():
        assert "error" not in row, f"{label}: {row.get('error')}"
        assert (row["dtype"], row["max_model_len"], row["max_length"]) == ("bfloat16", 512, 512), label
        assert row["unclaimed"] == [], f"{label}: tensors of no Linear: {row['unclaimed']}"
        assert row["linears"], label
        expected = CHECKPOINTS.get(label, (None, None))[1]
        for prefix, linear in row["linears"].items():
            assert "error" not in linear, f"{label} {prefix}: {linear.get('error')}"
            assert linear["weights_match"], (
                f"{label} {prefix}: vLLM allocates {linear['expected']}, found {linear['found']}"
            )
            if expected is None:
                assert linear["method"] == "UnquantizedLinearMethod" and linear["scheme"] is None, (
                    label,
                    prefix,
                )
                continue
            bits, group, weight_type = expected
            assert linear["method"] == "CompressedTensorsLinearMethod", (label, prefix)
            scheme = linear["scheme"]
            assert scheme["class"] == "CompressedTensorsWNA16", (label, prefix, scheme)
            assert (scheme["num_bits"], scheme["group_size"], scheme["quant_type"]) == (
                bits,
                group,
                weight_type,
            )
            assert scheme["symmetric"] is True
            assert set(linear["kernels"]) == {str(c) for c in CAPABILITIES}, (label, prefix)
        if expected is None:
            assert row["quantization"] is None and "quant_config" not in row, label
        else:
            assert row["quantization"] == "compressed-tensors", label
            assert row["quant_config"] == "CompressedTensorsConfig" and row["act_dtype_supported"], label
            assert row["lm_head"] == "None" and row["embed_tokens"] == "None", label  # left unquantized
    tokenized = {label: (row["tokenizer"], row["encoded"]) for label, row in rows.items()}
    assert len(set(map(json.dumps, tokenized.values()))) == 1, tokenized


def test_vllm_has_a_kernel_for_every_linear_of_the_paper_models(report):
    for model, choices in report["kernels"].items():
        missing = {k: v for k, v in choices.items() if v.startswith("none")}
        assert not missing, f"{model}: {missing}"
        assert len(choices) == 2 * 3 * 4, model  # bits x GPUs x Linears
