"""The memory model: the peak host RAM, GPU memory and disk of a planned run, from the model's shapes and the
plan, before any weight is read. Whether that fits the node, and what to change when it does not, is decided in
jcexp/preflight.py.

Two layers:

- :func:`estimate` is pure: :class:`ModelShapes` and :class:`Workload` (numbers) in, an :class:`Estimate`
  (bytes per component, per phase, per resource) out. Nothing is imported, read or allocated.
- :func:`estimate_for` gathers those numbers from a :class:`jcexp.plan.Plan` (the meta-device skeleton,
  the config, the requests of the tasks the plan built, measured in tokens) and returns the estimate as a dict
  for result.json, where :func:`compare` later puts it beside the measured peaks.

What each term is, and where it was checked (llm-compressor 0.14, lm-eval 0.4.13, transformers 5):

- weights: parameters x dtype bytes, resident on the evaluation device; on the host during compression.
- evaluation (lm-eval HFLM, ``_loglikelihood_tokens``): the logits of a batch, ``batch x padded length x
  vocab`` in the model's dtype, and their log_softmax (same size) live together; within one call the previous
  batch's log-probs are still referenced while the next batch runs (``multi_logits`` is rebound only after the
  new one is built). Requests are sorted longest first, so the first two batches set the peak. Rolling
  perplexity runs one call per batch of windows (``max_length`` tokens at most). Generation holds a KV cache of
  ``batch x (context + max_gen_toks) x 2 x layers x kv_heads x head_dim`` and only the last position's logits.
  With ``evaluator.floor`` (jcexp/hf_floor.py, the hf backend's default) loglikelihood requests take other
  shapes: up to ``batch`` distinct context prefixes run through the decoder with no head (their keys and values
  kept, then copied once, left-padded, for up to ``2 x batch`` continuation tails), and the logits and log-probs
  exist only at the tails' positions, ``2 x batch x longest continuation x vocab``, one chunk at a time.
- compression (llm-compressor's sequential pipeline): the whole model stays in host RAM and one decoder layer
  is onloaded to the compression device with its Hessians (``in_features^2`` float32 per Linear) and the
  solver's workspace; the calibration activations between layers are cached on ``sequential_offload_device``
  (cpu): per sample the hidden states, a ``1 x 1 x seq x seq`` causal mask in the model's dtype, the rotary
  cos/sin and the position ids.
- errors (jcexp/reconstruction.py): the probe keeps tokens x (in + out) float32 per Linear plus each stage's
  reference outputs; its capture runs ``errors.samples`` windows through the whole model at once.
  ``errors.case_ratio`` deep-copies the model once, in host RAM, during the quantization stage.
- quant=llm_int8 (jcexp/compress/llm_int8.py) keeps the original of every compressible weight in host RAM beside
  its int8 image, from the quantization stage on (``int8_fp_copy``); the device holds the int8 image only.
- vLLM (evaluator=vllm) in a child process: at its start vLLM requires ``gpu_memory_utilization`` x the card's
  total memory to be free (``Free memory on device ... is less than desired GPU memory utilization``), after its
  own CUDA context and beside what this process still holds, its CUDA context: before spawning it, this process
  moves its model to host RAM and empties PyTorch's cache (jcexp.placement.release_accelerator). Inside its
  share vLLM loads the checkpoint's weights, profiles one batch of ``max_num_batched_tokens`` (activations and
  the sampler's logits), captures CUDA graphs, and gives the rest to the KV cache, which must hold at least one
  sequence of ``max_model_len`` tokens (:func:`vllm_budget`, checked by jcexp.preflight.check).
- disk: the compressed checkpoint (packed: bits/8 per compressible weight plus scales), the pruned-model
  cache entry (dense), and a hub model's snapshot: the files jcexp fetches (jcexp.models.hub_files) that the
  local hub cache does not hold yet.

Constants that cannot be derived from shapes were measured on this project's 2-core CPU machine (see the
``MEASURED`` notes beside them); the CUDA ones could not be measured here and are marked as assumptions.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from jcexp import lm_eval_worker as worker

log = logging.getLogger("jcexp")

MiB = 2**20
GiB = 2**30
VERSION = 1

# MEASURED (2026-11-24, tiny_random run, launch.py): process RSS when the model starts loading: Python, torch,
# transformers, lm-eval (with its task index), llm-compressor, hydra and wandb imported (540 MB of it is the
# imports alone), the config composed and the tasks built.
RUNTIME_BYTES = 640 * MiB
# MEASURED: SmolLM2 (vocab 49152) started loading at 680 MB, the tiny model (vocab 512) at 643 MB: the
# tokenizer's tables and the meta skeleton, about 800 bytes per vocabulary entry.
TOKENIZER_BYTES_PER_ENTRY = 800
# MEASURED: after evaluations the heap and the kernels' scratch caches keep part of what the batches used
# (SmolLM2 default run: steady RSS 1.74 GB after the dense evaluation against 1.35 GB with benchmark.limit=16;
# malloc_trim gave back 150 MB of it). Counted as this share of the largest evaluation transient.
EVAL_SLACK = 0.25
# MEASURED: a child process that imports only torch, transformers and lm-eval (jcexp/lm_eval_worker.py, the
# subprocess evaluators) holds 485 MB after its imports.
CHILD_RUNTIME_BYTES = 500 * MiB
# ASSUMED (no GPU on the machine that calibrated this): host memory of the CUDA runtime and libraries once a
# context exists, and GPU memory torch and cuBLAS take beyond what mem_get_info reports free at preflight.
CUDA_HOST_BYTES = 1 * GiB
CUDA_RESERVE_BYTES = 512 * MiB
# ASSUMED (not measured: no GPU here): GPU memory one process's CUDA context holds once torch has run kernels
# (the primary context, cuBLAS handles and workspaces, lazily loaded kernels), about 0.5 GiB on recent NVIDIA
# GPUs. This process keeps its own while the vLLM child runs (everything else it gives back first), and the
# child's own exists before vLLM measures the free memory; neither is inside vLLM's gpu_memory_utilization.
PARENT_CUDA_BYTES = 512 * MiB
VLLM_CONTEXT_BYTES = 512 * MiB
# ASSUMED: vLLM's CUDA graphs (captured by default; vLLM logs "Graph capturing finished ... took ~0.5 GiB" for
# 7-8B models) and its other non-torch allocations, inside its share.
VLLM_GRAPH_BYTES = 1 * GiB
# vLLM's defaults for its LLM class (EngineArgs.get_batch_defaults): tokens per scheduler step (what its memory
# profile runs) and concurrent sequences; GPUs with >= 70 GiB other than the A100 get the larger pair.
VLLM_DEFAULT_BATCHED_TOKENS = {"small": 8192, "large": 16384}
VLLM_DEFAULT_MAX_SEQS = {"small": 256, "large": 1024}
VLLM_LARGE_GPU_BYTES = 70 * GiB
VLLM_DEFAULT_UTILIZATION = 0.9  # vLLM's own default, when model_args do not set it
# lm-eval: HFLM's max_batch_size (the start of batch_size=auto's search), max_gen_toks default, and the
# context length it falls back to when the model config names none.
LM_EVAL_MAX_BATCH = 64
LM_EVAL_MAX_GEN_TOKS = 256
LM_EVAL_DEFAULT_MAX_LENGTH = 2048
# result.json, logs and the W&B offline run (the disk check's margin, jcexp.preflight).
DISK_HEADROOM_BYTES = 64 * MiB
# How many of the longest requests are kept, in tokens, per request type (enough for 2 batches of 64).
TOP_REQUESTS = 2 * LM_EVAL_MAX_BATCH + 1

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ------------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class ModelShapes:
    """What the estimate needs from a model, all from its config (no weight)."""

    params: int
    dtype: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_positions: int | None
    # (in_features, out_features) of every compressible Linear of the largest decoder layer
    layer_linears: tuple[tuple[int, int], ...]
    layer_params: int
    compressible_params: int
    eager_attention: bool = False

    @property
    def bytes_per_param(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def weight_bytes(self) -> int:
        return self.params * self.bytes_per_param

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * self.bytes_per_param

    @classmethod
    def from_skeleton(cls, skeleton, config, dtype: str) -> ModelShapes:
        """From a meta-device model (``ModelSource._skeleton()``) and its HF config."""
        import torch

        text = getattr(config, "text_config", None) or config
        params = sum(p.numel() for p in skeleton.parameters())
        layers: dict[str, list[tuple[int, int]]] = {}
        compressible = 0
        for name, mod in skeleton.named_modules():
            if isinstance(mod, torch.nn.Linear) and "lm_head" not in name:
                match = re.match(r"(.*?\.\d+)\.", name)
                layers.setdefault(match.group(1) if match else "", []).append(
                    (mod.in_features, mod.out_features)
                )
                compressible += mod.in_features * mod.out_features
        widest = max(layers, key=lambda k: sum(i * o for i, o in layers[k])) if layers else ""
        layer_params = (
            sum(p.numel() for p in skeleton.get_submodule(widest).parameters())
            if widest
            else sum(i * o for i, o in layers.get(widest, []))
        )
        heads = int(getattr(text, "num_attention_heads", 1))
        hidden = int(text.hidden_size)
        return cls(
            params=params,
            dtype=dtype,
            layers=int(getattr(text, "num_hidden_layers", max(len(layers), 1))),
            hidden=hidden,
            intermediate=int(getattr(text, "intermediate_size", 4 * hidden)),
            heads=heads,
            kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(text, "head_dim", None) or hidden // heads),
            vocab=int(text.vocab_size),
            max_positions=getattr(text, "max_position_embeddings", None),
            layer_linears=tuple(layers.get(widest, [])),
            layer_params=int(layer_params),
            compressible_params=compressible,
            eager_attention=getattr(config, "_attn_implementation", None) == "eager",
        )

    @classmethod
    def from_config(cls, config, dtype: str) -> ModelShapes:
        """From an HF config alone: builds the meta-device model (no memory)."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        return cls.from_skeleton(skeleton, config, dtype)


@dataclass(frozen=True)
class EvalLoad:
    """The evaluation's batches, in tokens. Lengths are the longest requests of each type, descending, already
    capped as HFLM caps them; ``count`` is how many requests of that type there are."""

    batch: int | None  # None: batch_size=auto
    max_length: int
    loglikelihood: tuple[int, ...] = ()
    loglikelihood_count: int = 0
    rolling: tuple[int, ...] = ()
    rolling_count: int = 0
    generate_context: tuple[int, ...] = ()
    generate_count: int = 0
    # The longest continuations of the loglikelihood requests, in tokens (evaluator.floor's logits scale with
    # these, not with the whole request); empty when not measured (an older estimate): the whole request then.
    loglikelihood_continuation: tuple[int, ...] = ()
    max_gen_toks: int = LM_EVAL_MAX_GEN_TOKS
    source: str = "requests"


@dataclass(frozen=True)
class Workload:
    """What the plan asks of the model: stages, calibration, evaluation, error analysis, saving."""

    eval_device: str  # "cpu" or "cuda"
    compress_device: str  # where llm-compressor onloads layers ("cpu" or "cuda")
    prune: bool
    quant: bool
    quant_calibrated: bool  # False for data-free quantizers (NF4, int8): no calibration pass
    calib_samples: int
    calib_seq_len: int
    eval: EvalLoad
    errors: bool = False
    errors_samples: int = 4
    errors_tokens: int = 256
    case_ratio: bool = False
    save_model: bool = True
    save_packed: bool = False  # compressed-tensors packs the quantized weights
    bits: int = 16
    group_size: int | None = None
    cache_pruned: bool = False
    # evaluator=hf: lm-eval in this process on the in-memory model; "subprocess" (evaluator=hf_subprocess,
    # vllm): lm-eval in a child process on the saved checkpoint, while this process keeps its model in host RAM.
    eval_process: str = "in_process"
    eval_backend: str = "hf"
    vllm_gpu_fraction: float | None = None  # vLLM reserves this share of the GPU's memory
    gpu_total_bytes: int | None = None
    vllm_packed: bool = False  # vLLM reads the compressed model packed (W4A16/W8A16), else a dense copy
    vllm_batched_tokens: int | None = None  # model_args.max_num_batched_tokens; None: vLLM's default
    vllm_max_seqs: int | None = None  # model_args.max_num_seqs; None: vLLM's default
    # evaluator.floor on the hf backend: loglikelihood requests through jcexp/hf_floor.py (other shapes)
    eval_floor: bool = False
    # quant=llm_int8: the original of every compressible weight kept in host RAM (its outlier columns' values)
    quant_host_copy: bool = False
    # A hub model's snapshot files that the local hub cache lacks (jcexp.models.HubModel.hub_needed)
    hub_download_bytes: int = 0

    @property
    def calibrated_stages(self) -> list[str]:
        return [
            k for k, on in (("prune", self.prune), ("quantize", self.quant and self.quant_calibrated)) if on
        ]


# ----------------------------------------------------------------------------------------------- outputs
@dataclass
class Phase:
    name: str
    host: dict[str, int] = field(default_factory=dict)
    gpu: dict[str, int] = field(default_factory=dict)


@dataclass
class Estimate:
    shapes: ModelShapes
    work: Workload
    phases: list[Phase]
    disk: dict[str, int]
    notes: list[str] = field(default_factory=list)

    def peak(self, resource: str, vllm: bool = True) -> tuple[int, str | None, str | None]:
        """(bytes, phase, largest component of that phase) of the peak of ``host`` or ``gpu``; ``vllm=False``
        leaves out the GPU phases of a vLLM child (checked on their own: jcexp.preflight.check)."""
        best = (0, None, None)
        for phase in self.phases:
            parts = getattr(phase, resource)
            if not vllm and resource == "gpu" and "vllm_cuda_context" in parts:
                continue
            total = sum(parts.values())
            if parts and total > best[0]:
                best = (total, phase.name, max(parts, key=parts.get))
        return best

    def _resource(self, resource: str) -> dict[str, Any] | None:
        total, phase, top = self.peak(resource)
        if phase is None:
            return None
        return {
            "peak_mb": _mb(total),
            "phase": phase,
            "dominant": top,
            "phases": {
                p.name: {"total_mb": _mb(sum(getattr(p, resource).values())), **_mbs(getattr(p, resource))}
                for p in self.phases
                if getattr(p, resource)
            },
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "eval_device": self.work.eval_device,
            "compress_device": self.work.compress_device,
            "host_ram": self._resource("host"),
            "gpu_mem": self._resource("gpu"),
            "disk": {"total_mb": _mb(sum(self.disk.values())), **_mbs(self.disk)},
            "notes": list(self.notes),
            # JSON-native (tuples as lists), as it reads back from result.json
            "inputs": json.loads(json.dumps({"shapes": asdict(self.shapes), "workload": asdict(self.work)})),
        }


def _mb(n: float) -> float:
    return round(n / MiB, 1)


def _mbs(parts: dict[str, int]) -> dict[str, float]:
    return {k: _mb(v) for k, v in parts.items() if v}


# ------------------------------------------------------------------------------------------- the estimate
def _eval_batch(w: Workload) -> tuple[int, str | None]:
    """The batch the estimate assumes, and why when it is not the configured one."""
    if w.eval.batch is not None:
        return w.eval.batch, None
    if w.eval_device == "cuda":
        return 1, "batch_size=auto on a GPU: lm-eval searches the largest batch that fits; estimated at 1"
    return LM_EVAL_MAX_BATCH, (
        f"batch_size=auto on CPU: lm-eval's search starts at {LM_EVAL_MAX_BATCH} sequences of the longest "
        "request (max_length for rolling and generation requests); estimated there"
    )


def _loglik_tokens(lengths: tuple[int, ...], count: int, batch: int) -> tuple[int, int]:
    """Peak (logits-sized token slots, padded length) of one _loglikelihood_tokens call over requests sorted
    longest first: batch i holds its logits and log-probs, batch i-1's log-probs are still referenced."""
    best, best_len, prev = 0, 0, 0
    for start in range(0, min(len(lengths), count), batch):
        n = min(batch, count - start)
        length = lengths[start]
        slots = 2 * n * length + prev
        if slots > best:
            best, best_len = slots, length
        prev = n * length
    return best, best_len


def _eval_parts(s: ModelShapes, w: Workload, batch: int, on_host: bool) -> dict[str, int]:
    """Transient memory of the largest evaluation batch (whichever request type needs most)."""
    b = s.bytes_per_param
    per_token_act = (3 * s.intermediate + 4 * s.hidden) * b  # one layer's live activations
    options: list[dict[str, int]] = []
    e = w.eval
    if e.loglikelihood_count and w.eval_floor:
        options.append(_floor_parts(s, e, batch, per_token_act))
    elif e.loglikelihood_count:
        slots, length = _loglik_tokens(e.loglikelihood, e.loglikelihood_count, batch)
        n = min(batch, e.loglikelihood_count)
        options.append(
            {
                "logits": slots // 2 * s.vocab * b,
                "log_softmax": (slots - slots // 2) * s.vocab * b,
                "activations": n * length * per_token_act + _attention(s, n, length),
            }
        )
    if e.rolling_count:
        n, length = min(batch, e.rolling_count), e.rolling[0]
        options.append(
            {
                "logits": n * length * s.vocab * b,
                "log_softmax": n * length * s.vocab * b,
                "activations": n * length * per_token_act + _attention(s, n, length),
            }
        )
    if e.generate_count:
        n, ctx = min(batch, e.generate_count), e.generate_context[0]
        options.append(
            {
                "kv_cache": n * (ctx + e.max_gen_toks) * s.kv_bytes_per_token,
                # prefill: one layer's activations, the padding mask (bool), last-position logits (float32)
                "activations": n * ctx * per_token_act
                + n * ctx * ctx
                + _attention(s, n, ctx)
                + n * s.vocab * 4,
            }
        )
    if not options:
        return {}
    parts = max(options, key=lambda p: sum(p.values()))
    if on_host:
        parts["eval_slack"] = int(EVAL_SLACK * sum(parts.values()))
    return parts


# jcexp/hf_floor.py's TAIL_ROWS (not imported: this module stays free of torch): a tail pass holds at most this
# many batches' worth of the longest continuation's positions (hf_floor sizes its forwards by these tokens).
FLOOR_TAIL_ROWS = 2


def _floor_parts(s: ModelShapes, e: EvalLoad, batch: int, per_token_act: int) -> dict[str, int]:
    """evaluator.floor's loglikelihood batch (jcexp/hf_floor.py): the prefix pass (``n`` prefixes of the longest
    request's length, no head), their keys and values and the tails' left-padded copy of them, then the tail
    pass's activations and its logits and log-probs at the tails' positions only (one chunk at a time)."""
    n = min(batch, e.loglikelihood_count)
    rows = min(FLOOR_TAIL_ROWS * batch, e.loglikelihood_count)  # a tail pass's rows (hf_floor.TAIL_ROWS)
    length = e.loglikelihood[0]
    tail = min(length, max(e.loglikelihood_continuation, default=length))
    return {
        "logits": rows * tail * s.vocab * s.bytes_per_param,
        "log_softmax": rows * tail * s.vocab * s.bytes_per_param,
        "activations": n * length * per_token_act + _attention(s, n, length),
        "kv_cache": 2 * n * length * s.kv_bytes_per_token,
    }


def _attention(s: ModelShapes, n: int, length: int) -> int:
    """Eager attention materializes batch x heads x L x L scores; SDPA (the default) does not."""
    return n * s.heads * length * length * s.bytes_per_param if s.eager_attention else 0


def _calibration_cache(s: ModelShapes, w: Workload) -> dict[str, int]:
    """llm-compressor's IntermediatesCache between two subgraphs, on sequential_offload_device (cpu): per sample
    the hidden states, the 4D causal mask (model dtype), rotary cos/sin and int64 position ids."""
    n, t, b = w.calib_samples, w.calib_seq_len, s.bytes_per_param
    return {
        "calibration_hidden": n * t * s.hidden * b + n * t * 8,
        "calibration_mask": n * t * t * b,
        "calibration_rotary": n * t * s.head_dim * 2 * b,
    }


def _layer_compression(s: ModelShapes, w: Workload) -> dict[str, int]:
    """One decoder layer onloaded: its weights, the Hessian of every Linear (float32), the GPTQ/SparseGPT
    solver's workspace for the largest Linear (a factorized copy of H, W in float32 and its update blocks),
    and one calibration sample through the layer (and through lm_head, in the last subgraph)."""
    b, t = s.bytes_per_param, w.calib_seq_len
    linears = s.layer_linears or ((s.hidden, s.hidden),)
    return {
        "layer_weights": s.layer_params * b,
        "hessians": sum(i * i * 4 for i, _ in linears),
        "solver": max(2 * i * i * 4 + 3 * i * o * 4 for i, o in linears),
        "layer_forward": t * (3 * s.intermediate + 4 * s.hidden) * b + t * t * b + t * s.vocab * b,
    }


def _probe(s: ModelShapes, w: Workload) -> int:
    """reconstruction.LayerProbe: inputs and dense outputs of every compressible Linear, float32, plus one
    stage's reference outputs."""
    per_token = s.layers * sum(i + 2 * o for i, o in (s.layer_linears or ((s.hidden, s.hidden),)))
    return w.errors_tokens * per_token * 4


def _checkpoint_bytes(s: ModelShapes, w: Workload) -> int:
    if not w.save_packed:
        return s.weight_bytes
    groups = s.compressible_params // w.group_size if w.group_size else s.compressible_params // s.hidden
    packed = s.compressible_params * w.bits // 8 + groups * s.bytes_per_param
    return packed + (s.params - s.compressible_params) * s.bytes_per_param


def estimate(s: ModelShapes, w: Workload) -> Estimate:
    """Bytes per component and phase of host RAM and GPU memory, and bytes on disk. Pure."""
    notes: list[str] = []
    batch, why = _eval_batch(w)
    if why:
        notes.append(why)
    if w.eval.source != "requests":
        notes.append(f"evaluation lengths: {w.eval.source}")
    host_eval = w.eval_device == "cpu"
    host_compress = w.compress_device == "cpu"
    base = {"runtime": RUNTIME_BYTES, "tokenizer": s.vocab * TOKENIZER_BYTES_PER_ENTRY}
    if not (host_eval and host_compress):
        base["cuda_runtime"] = CUDA_HOST_BYTES
    gpu_base = {} if host_eval and host_compress else {"cuda_reserve": CUDA_RESERVE_BYTES}
    weights = {"weights": s.weight_bytes}
    probe = {"error_probe": _probe(s, w)} if w.errors else {}
    eval_parts = _eval_parts(s, w, batch, host_eval)
    slack = {"eval_slack": eval_parts.get("eval_slack", 0)} if host_eval else {}
    # quant=llm_int8's 16-bit originals, in host RAM from its stage on (never on the device)
    int8_copy = (
        {"int8_fp_copy": s.compressible_params * s.bytes_per_param} if w.quant and w.quant_host_copy else {}
    )

    phases = [Phase("load", host={**base, **weights})]

    def evaluation(name: str, with_probe: bool) -> Phase:
        if w.eval_process == "subprocess":
            return child_evaluation(name, with_probe)
        extra = {**(probe if with_probe else {}), **(int8_copy if name == "eval" else {})}
        if host_eval:
            return Phase(name, host={**base, **weights, **extra, **eval_parts})
        return Phase(name, host={**base, **extra}, gpu={**gpu_base, **weights, **eval_parts})

    def child_evaluation(name: str, with_probe: bool) -> Phase:
        host = {**base, **weights, **slack, **(probe if with_probe else {})}
        host["eval_child_runtime"] = CHILD_RUNTIME_BYTES
        vllm = w.eval_backend == "vllm"
        if host_eval:
            return Phase(name, host={**host, "eval_child_weights": s.weight_bytes, **eval_parts})
        if vllm:
            budget = vllm_budget(s, w, packed=name == "eval" and w.vllm_packed)
            return Phase(name, host=host, gpu=budget or {})
        return Phase(name, host=host, gpu={**gpu_base, "eval_child_weights": s.weight_bytes, **eval_parts})

    if w.eval_process == "subprocess":
        notes.append(
            "evaluation in a child process (evaluator): its memory is counted with this process's, which keeps "
            "its model in host RAM meanwhile; result.json's peak_rss_mb measures this process only"
        )
        if w.eval_backend == "vllm":
            notes.append(
                "vLLM takes evaluator.model_args.gpu_memory_utilization of the GPU's total memory, which must be "
                "free when it starts, beside this process's CUDA context "
                f"({fmt_bytes(PARENT_CUDA_BYTES)}, assumed) and its own ({fmt_bytes(VLLM_CONTEXT_BYTES)}, "
                "assumed); its host memory beyond lm-eval's imports is not estimated"
            )
    phases.append(evaluation("eval_dense", False))
    if w.errors and (w.prune or w.quant):
        t, b = w.calib_seq_len, s.bytes_per_param
        n = w.errors_samples
        capture = {
            "capture_forward": n * t * s.vocab * b + n * t * (3 * s.intermediate + 4 * s.hidden) * b,
        }
        if host_eval:
            phases.append(Phase("errors_capture", host={**base, **weights, **slack, **probe, **capture}))
        else:
            phases.append(
                Phase("errors_capture", host={**base, **probe}, gpu={**gpu_base, **weights, **capture})
            )
    for kind in ("prune", "quantize"):
        active = w.prune if kind == "prune" else w.quant
        if not active:
            continue
        host = {**base, **weights, **slack, **probe}
        gpu: dict[str, int] = {}
        if kind == "quantize":
            host["pruned_masks"] = s.compressible_params // 8 if w.prune else 0
            if w.case_ratio:
                host["case_ratio_copy"] = s.weight_bytes
            host.update(int8_copy)
        if kind in w.calibrated_stages:
            host.update(_calibration_cache(s, w))
            layer = _layer_compression(s, w)
            if host_compress:
                layer.pop("layer_weights")  # the stored weights themselves: already counted
                host.update(layer)
            else:
                gpu = {**gpu_base, **layer}
        phases.append(Phase(kind, host={k: v for k, v in host.items() if v}, gpu=gpu))
    if w.prune or w.quant:
        phases.append(evaluation("eval", w.errors))
    if w.save_model:
        save = Phase("save", host={**base, **slack, **int8_copy})
        if host_eval:
            save.host.update(weights)
        else:
            # safetensors copies a GPU shard (up to 50 GB: the whole model) to host memory to write it.
            save.host["save_copy"] = _checkpoint_bytes(s, w)
            save.gpu = {**gpu_base, **weights}
        phases.append(save)

    disk = {
        "save_model": _checkpoint_bytes(s, w) if w.save_model else 0,
        "cache_pruned": s.weight_bytes if (w.prune and w.cache_pruned) else 0,
        # a subprocess evaluator scores saved checkpoints: the dense model's at least (in its dtype)
        "eval_checkpoint": s.weight_bytes if w.eval_process == "subprocess" else 0,
        # a hub model: the snapshot's files (config, tokenizer, safetensors weights) the hub cache lacks
        "hub_download": w.hub_download_bytes,
        "headroom": DISK_HEADROOM_BYTES,
    }
    return Estimate(s, w, phases, disk, notes)


def vllm_defaults(total_bytes: int) -> tuple[int, int]:
    """vLLM's default (max_num_batched_tokens, max_num_seqs) for its LLM class on a GPU of this size (an A100
    gets the small pair whatever its size; the name is not known here, so an 80 GB A100 is estimated high)."""
    size = "large" if total_bytes >= VLLM_LARGE_GPU_BYTES else "small"
    return VLLM_DEFAULT_BATCHED_TOKENS[size], VLLM_DEFAULT_MAX_SEQS[size]


def vllm_activation_bytes(s: ModelShapes, batched_tokens: int, max_seqs: int) -> int:
    """vLLM's profile run: one step of ``batched_tokens`` through a layer (gate/up/down and the residual stream,
    attention without L x L scores) and the sampler's float32 logits of ``max_seqs`` sequences, with two
    temporaries of the same size (softmax, sorting). An estimate: not measured here."""
    return (
        batched_tokens * (3 * s.intermediate + 4 * s.hidden) * s.bytes_per_param + 3 * max_seqs * s.vocab * 4
    )


def vllm_budget(s: ModelShapes, w: Workload, packed: bool = False) -> dict[str, int] | None:
    """GPU memory while the vLLM child runs, by component: this process's CUDA context and the child's (both
    outside vLLM's share), then inside ``gpu_memory_utilization`` x total: the checkpoint's weights (packed for
    a W4A16/W8A16 compressed model), the profile's activations, CUDA graphs, and the KV cache (the rest). The
    components sum to what the card must hold. None when the GPU's total memory is unknown."""
    if not (w.vllm_gpu_fraction and w.gpu_total_bytes):
        return None
    tokens, seqs = vllm_defaults(w.gpu_total_bytes)
    tokens, seqs = w.vllm_batched_tokens or tokens, w.vllm_max_seqs or seqs
    share = int(w.vllm_gpu_fraction * w.gpu_total_bytes)
    inside = {
        "vllm_weights": _checkpoint_bytes(s, w) if packed else s.weight_bytes,
        "vllm_activations": vllm_activation_bytes(s, tokens, seqs),
        "vllm_cuda_graphs": VLLM_GRAPH_BYTES,
    }
    return {
        "parent_cuda_context": PARENT_CUDA_BYTES,
        "vllm_cuda_context": VLLM_CONTEXT_BYTES,
        **inside,
        "vllm_kv_cache": max(0, share - sum(inside.values())),
    }


def estimate_from_dict(d: dict[str, Any], **changes: Any) -> Estimate:
    """Rebuild an estimate from its recorded inputs, optionally with workload or evaluation fields changed
    (``batch=2``, ``calib_samples=64``...): what-if answers for the refusal message."""
    shapes_d = dict(d["inputs"]["shapes"])
    shapes_d["layer_linears"] = tuple(tuple(x) for x in shapes_d["layer_linears"])
    work_d = dict(d["inputs"]["workload"])
    eval_d = dict(work_d.pop("eval"))
    for key in ("loglikelihood", "rolling", "generate_context", "loglikelihood_continuation"):
        eval_d[key] = tuple(eval_d.get(key, ()))
    eval_fields = set(EvalLoad.__dataclass_fields__)
    ev = EvalLoad(**eval_d)
    ev = replace(ev, **{k: v for k, v in changes.items() if k in eval_fields})
    work = replace(Workload(**work_d, eval=ev), **{k: v for k, v in changes.items() if k not in eval_fields})
    return estimate(ModelShapes(**shapes_d), work)


# ------------------------------------------------------------------------------- evaluation requests
def _cap(n: int, max_length: int) -> int:
    return max(1, min(n, max_length))


def eval_load(bench, tasks, tokenizer, max_length: int, seed: int = 0, batch_size: Any = None) -> EvalLoad:
    """The benchmark's requests, built by lm-eval as the evaluation builds them (on a copy of ``tasks``, the
    plan's jcexp.evaluate.BuiltTasks), measured in tokens: the longest requests of each type (the first
    batches, as lm-eval sorts longest first). Only the longest by characters are tokenized; without a
    tokenizer, 3 characters count as a token (English BPE averages about 4). Falls back to ``max_length`` for
    every request when the requests cannot be built."""
    batch_size = bench.batch_size if batch_size is None else batch_size
    batch = None if str(batch_size).startswith("auto") else int(batch_size)
    try:
        texts = _request_texts(bench, tasks, seed)
    except Exception as exc:  # noqa: BLE001 - any failure here falls back to the conservative bound
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return EvalLoad(
            batch=batch,
            max_length=max_length,
            loglikelihood=(max_length,),
            loglikelihood_count=LM_EVAL_MAX_BATCH,
            source=f"max_length={max_length} for every request (requests not built: {why})",
        )

    def longest(items: list[tuple[str, int]], extra: int = 0) -> list[int]:
        top = sorted(items, key=lambda x: len(x[0]), reverse=True)[: TOP_REQUESTS + 32]
        if not top:
            return []
        if tokenizer is None:
            counts = [-(-len(t) // 3) for t, _ in top]
        else:
            counts = [len(i) for i in tokenizer([t for t, _ in top], add_special_tokens=False)["input_ids"]]
        return sorted((n + extra for n in counts), reverse=True)[:TOP_REQUESTS]

    ll = longest(texts["loglikelihood"])
    continuation = longest(texts["loglikelihood_continuation"])
    rolling = longest(texts["loglikelihood_rolling"], extra=1)  # the prefix token opens the first window
    gen_toks = max((g for _, g in texts["generate_until"]), default=LM_EVAL_MAX_GEN_TOKS)
    ctx_cap = max(1, max_length - gen_toks)
    gen = longest(texts["generate_until"])
    return EvalLoad(
        batch=batch,
        max_length=max_length,
        loglikelihood=tuple(_cap(n - 1, max_length) for n in ll),
        loglikelihood_count=len(texts["loglikelihood"]),
        loglikelihood_continuation=tuple(_cap(n, max_length) for n in continuation),
        rolling=tuple(_cap(n - 1, max_length) for n in rolling),
        # windows, not documents: a document longer than max_length is scored in several
        rolling_count=len(texts["loglikelihood_rolling"]) + sum(-(-n // max_length) - 1 for n in rolling),
        generate_context=tuple(_cap(n, ctx_cap) for n in gen),
        generate_count=len(texts["generate_until"]),
        max_gen_toks=gen_toks,
        source="requests" if tokenizer is not None else "requests, 3 characters per token (no tokenizer)",
    )


def _request_texts(bench, tasks, seed: int) -> dict[str, list[tuple[str, int]]]:
    """Every request's text (and max_gen_toks for generation), by lm-eval request type, from a fresh copy of
    the built tasks (building requests changes them)."""
    from lm_eval.evaluator_utils import get_sample_size

    out: dict[str, list[tuple[str, int]]] = {
        "loglikelihood": [],
        "loglikelihood_continuation": [],
        "loglikelihood_rolling": [],
        "generate_until": [],
    }
    for task in worker.leaf_tasks(tasks.fresh()).values():
        # Shots as simple_evaluate sets them (lm_eval/evaluator.py).
        if bench.num_fewshot is not None:
            if task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=bench.num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)
        task.build_all_requests(
            limit=get_sample_size(task, bench.limit),
            rank=0,
            world_size=1,
            apply_chat_template=False,
            fewshot_as_multiturn=False,
        )
        for inst in task.instances:
            kind, args = inst.request_type, inst.args
            if kind == "loglikelihood":
                out[kind].append((args[0] + args[1], 0))
                out["loglikelihood_continuation"].append((args[1], 0))
            elif kind == "loglikelihood_rolling":
                out[kind].append((args[0], 0))
            elif kind == "generate_until":
                gk = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
                gen = gk.get("max_gen_toks") or gk.get("max_new_tokens") or LM_EVAL_MAX_GEN_TOKS
                out[kind].append((args[0], int(gen)))
    return out


def effective_max_length(bench, hf_config, tokenizer=None) -> int:
    """HFLM's max_length: benchmark.max_length, else the model config's context length (lm-eval's
    resolve_max_length), else lm-eval's default."""
    if bench.max_length:
        return int(bench.max_length)
    try:
        from lm_eval.models.utils import resolve_max_length

        return int(resolve_max_length(hf_config, tokenizer, default=LM_EVAL_DEFAULT_MAX_LENGTH))
    except Exception:  # noqa: BLE001
        return LM_EVAL_DEFAULT_MAX_LENGTH


def _tokenizer(source):
    """The model's tokenizer, without its weights."""
    from transformers import AutoTokenizer

    if hasattr(source, "hf_dir"):
        return AutoTokenizer.from_pretrained(source.hf_dir())
    if getattr(source, "path", None):
        return AutoTokenizer.from_pretrained(source.path)
    return AutoTokenizer.from_pretrained(source.repo_id, revision=getattr(source, "revision", "main"))


# ------------------------------------------------------------------------------------------- from a plan
def workload_for(plan, ev: EvalLoad, hub_download: int = 0) -> Workload:
    import torch

    cfg = plan.cfg
    quant = plan.quant
    return Workload(
        eval_device="cuda" if str(plan.device).startswith("cuda") else "cpu",
        # llm-compressor onloads to cuda:0 whenever a GPU is visible (get_main_device), whatever cfg.device says.
        compress_device="cuda" if torch.cuda.is_available() else "cpu",
        prune=plan.pruner.active,
        quant=quant.active,
        quant_calibrated=quant.active and not quant.data_free,
        calib_samples=int(cfg.calibration.num_samples),
        calib_seq_len=int(cfg.calibration.seq_len),
        eval=ev,
        errors=bool(cfg.errors.enabled) and bool(plan.stages),
        errors_samples=int(cfg.errors.samples),
        errors_tokens=int(cfg.errors.tokens),
        case_ratio=bool(cfg.errors.enabled and cfg.errors.case_ratio),
        save_model=bool(cfg.save_model),
        save_packed=quant.active and not quant.data_free,
        bits=int(quant.bits) if quant.active else 16,
        group_size=quant.group_size if quant.active else None,
        cache_pruned=bool(cfg.cache_pruned),
        quant_host_copy=quant.active and quant.declares("host_weight_copy"),
        hub_download_bytes=hub_download,
        **_evaluator_fields(cfg),
    )


def _evaluator_fields(cfg) -> dict[str, Any]:
    evaluator = cfg.get("evaluator") or {}
    floor = {"eval_floor": str(evaluator.get("backend", "hf")) == "hf" and bool(evaluator.get("floor", True))}
    if "Subprocess" not in str(evaluator.get("_target_", "")):
        return floor
    backend = str(evaluator.get("backend", "hf"))
    fields: dict[str, Any] = {"eval_process": "subprocess", "eval_backend": backend, **floor}
    if backend == "vllm":
        args = evaluator.get("model_args") or {}
        fields["vllm_gpu_fraction"] = float(args.get("gpu_memory_utilization", VLLM_DEFAULT_UTILIZATION))
        for key, name in (
            ("max_num_batched_tokens", "vllm_batched_tokens"),
            ("max_num_seqs", "vllm_max_seqs"),
        ):
            if args.get(key) is not None:
                fields[name] = int(args[key])
        quant = cfg.get("quant") or {}
        bits = quant.get("bits") if quant.get("modifier") is not None else 16
        fields["vllm_packed"] = str(quant.get("name")) in list(evaluator.get("packed_quantizers") or []) and (
            bits in list(evaluator.get("packed_bits") or [])
        )
        res = cfg.get("resources") or {}
        if res.get("gpu_mem_gb") is not None:
            fields["gpu_total_bytes"] = int(float(res["gpu_mem_gb"]) * GiB)
        else:
            import torch

            if torch.cuda.is_available():
                fields["gpu_total_bytes"] = int(torch.cuda.mem_get_info()[1])
    return fields


def estimate_for(plan, tokenizer=None) -> dict[str, Any]:
    """The estimate of a planned run (jcexp.plan.Plan), as a dict for result.json. Reads the config, the
    meta-device skeleton, the tokenizer and the requests of the tasks the plan built; never a weight."""
    source = plan.source
    hf_config = source.hf_config()
    shapes = ModelShapes.from_skeleton(source._skeleton(), hf_config, source.dtype)
    cfg = plan.cfg
    bench = cfg.benchmark
    if tokenizer is None:
        try:
            tokenizer = _tokenizer(source)
        except Exception as exc:  # noqa: BLE001
            log.warning("preflight: no tokenizer (%s); 3 characters count as a token", exc)
    evaluator = cfg.get("evaluator") or {}
    batch = evaluator.get("batch_size") if evaluator.get("batch_size") is not None else bench.batch_size
    max_length = effective_max_length(bench, hf_config, tokenizer)
    ev = eval_load(bench, plan.tasks, tokenizer, max_length, int(cfg.seed), batch)
    hub_bytes, hub = _hub_snapshot(source, shapes)
    est = estimate(shapes, workload_for(plan, ev, hub_bytes)).to_dict()
    if hub is not None:  # the files the snapshot fetches (bytes), those already cached, those skipped
        est["hub_snapshot"] = hub
    return est


def _hub_snapshot(source, shapes: ModelShapes) -> tuple[int, dict[str, Any] | None]:
    """(bytes a hub model's snapshot still has to fetch into the local hub cache, its listing), (0, None) for
    other sources. When the hub cannot be listed, the weights' size stands in for it."""
    if not hasattr(source, "hub_needed"):
        return 0, None
    try:
        needed = source.hub_needed()
    except Exception as exc:  # noqa: BLE001 - offline, gated, or an older hub client
        log.warning("preflight: the hub listing of the model failed (%s); counting its weights instead", exc)
        return shapes.weight_bytes, {
            "error": f"{type(exc).__name__}: {exc}",
            "download_bytes": shapes.weight_bytes,
        }
    return int(needed["download_bytes"]), needed


def fmt_bytes(n: float) -> str:
    """Bytes as GiB, or MiB below one GiB."""
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


# ------------------------------------------------------------------------------------ beside the measures
def compare(estimate: dict[str, Any], peak_rss_mb: float | None, peak_cuda_mb: float | None = None) -> dict:
    """The estimate beside what the run measured, for result.json."""
    out: dict[str, Any] = {}
    for key, measured in (("host_ram", peak_rss_mb), ("gpu_mem", peak_cuda_mb)):
        est = estimate.get(key)
        if est is None:
            continue
        out[key] = {
            "estimated_mb": est["peak_mb"],
            "estimated_phase": est["phase"],
            "dominant": est["dominant"],
            "measured_mb": measured,
            "measured_over_estimated": (
                round(measured / est["peak_mb"], 3) if measured and est["peak_mb"] else None
            ),
        }
    return out


def summary(estimate: dict[str, Any]) -> str:
    """One line per resource, for the log."""
    lines = []
    for key, name in (("host_ram", "host RAM"), ("gpu_mem", "GPU memory"), ("disk", "disk")):
        est = estimate.get(key)
        if not est:
            continue
        if key == "disk":
            lines.append(f"{name} {fmt_bytes(est['total_mb'] * MiB)}")
        else:
            lines.append(
                f"{name} {fmt_bytes(est['peak_mb'] * MiB)} (peak in {est['phase']}: {est['dominant']})"
            )
    return "preflight estimate: " + "; ".join(lines) + "".join(f"\n  note: {n}" for n in estimate["notes"])
