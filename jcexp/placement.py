"""The device contract: where a model's weights live, and what wraps its modules, at every step of a run.

- Evaluation (dense baseline, error capture, every compressed evaluation): the model is a plain module whose
  weights are resident on ``device``. lm-eval's HFLM takes its device from the model it is given, so the
  placement *is* the evaluation device.
- Compression: the weights are stored in host RAM and llm-compressor's sequential pipeline onloads one layer
  at a time to its main device (``get_main_device()``: ``cuda:0`` when a GPU is visible). So a 24 GB GPU holds
  one layer, its Hessians and activations, not the whole 16 GB model.
- After every stage the model is plain again. llm-compressor (0.14) leaves two things behind that nothing
  removes: an ``OffloadCache`` on every module (each weight access copies it to the onload device, and
  ``model.to()`` or an in-place write then touches only that copy), and a fake-quantizing forward on every
  quantized Linear. :func:`release` removes the first and bakes the second into the stored weights.

Why our own code: compressed-tensors offers the pieces (``remove_dispatch``, ``forward_quantize``,
``disable_quantization``) but no single "make this model plain" step, and llm-compressor's own examples call
``dispatch_model`` before generating, which keeps the wrappers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

HOST = "cpu"


class PlacementError(RuntimeError):
    """The model is not in the state the device contract promises (a bug, never a user error)."""


def offload_wrapped(model: torch.nn.Module) -> list[str]:
    """Modules still carrying an offload wrapper: compressed-tensors' OffloadCache, or the accelerate hook
    that llm-compressor's save_pretrained converts a wrapped module into."""
    from compressed_tensors.offload.cache import OffloadCache

    return [
        name
        for name, mod in model.named_modules()
        if isinstance(mod._parameters, OffloadCache) or hasattr(mod, "_hf_hook")
    ]


def _quantizes_weights(module: torch.nn.Module) -> bool:
    """True when the module's forward fake-quantizes its stored weights (compressed-tensors' quantized forward)."""
    from compressed_tensors.quantization import QuantizationStatus

    scheme = getattr(module, "quantization_scheme", None)
    status = getattr(module, "quantization_status", None)
    return (
        scheme is not None
        and scheme.weights is not None
        and status is not None
        and status < QuantizationStatus.COMPRESSED
        and getattr(module, "quantization_enabled", True)
    )


def requantizing(model: torch.nn.Module) -> list[str]:
    """Modules whose every forward quantizes their weights again."""
    return [name for name, mod in model.named_modules() if _quantizes_weights(mod)]


def activation_quantizing(model: torch.nn.Module) -> list[str]:
    """Modules whose forward quantizes their input activations on purpose (W8A8: quant=llm_int8's
    Int8MixedLinear declares ``quantizes_activations``). Part of the model, not a leftover: recorded, not refused."""
    return [name for name, mod in model.named_modules() if getattr(mod, "quantizes_activations", False)]


@torch.no_grad()
def bake_quantization(model: torch.nn.Module) -> int:
    """Write each quantized Linear's quantize-dequantize image into its stored weight and turn its forward
    quantization off. GPTQ already stores grid values (baking is then the identity); round-to-nearest
    (``QuantizationModifier``) stores the original weights and only its forward quantizes them, so without
    this step disabling quantization would change the model. Activation quantization, where a scheme has it,
    stays on: it is part of what the model computes. Returns the number of modules baked."""
    from compressed_tensors.offload import update_offload_parameter
    from compressed_tensors.quantization import disable_quantization
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize

    baked = 0
    for module in model.modules():
        if not _quantizes_weights(module):
            continue
        scheme = module.quantization_scheme
        image = forward_quantize(module, module.weight.data, "weight", scheme.weights)
        update_offload_parameter(module, "weight", image)
        if scheme.input_activations is None and scheme.output_activations is None:
            disable_quantization(module)
        baked += 1
    return baked


def release(model: torch.nn.Module) -> torch.nn.Module:
    """After a compression stage: remove llm-compressor's offload wrappers (the stored tensors, in host RAM,
    stay; the per-access copies go) and bake weight quantization. The model is plain afterwards."""
    from accelerate.hooks import remove_hook_from_module
    from compressed_tensors.offload import remove_dispatch

    remove_dispatch(model)
    remove_hook_from_module(model, recurse=True)
    # llm-compressor's save_pretrained leaves an accelerate device map ("cpu" for every module) on the model;
    # once the wrappers are gone it describes nothing, and transformers would treat the model as offloaded.
    if hasattr(model, "hf_device_map"):
        del model.hf_device_map
    bake_quantization(model)
    return model


def for_compression(model: torch.nn.Module) -> torch.nn.Module:
    """Weights stored in host RAM and plain modules: llm-compressor's pipeline then onloads layer by layer."""
    release(model)
    return model.to(HOST)


def release_accelerator(model: torch.nn.Module) -> PlacementState:
    """Before a child process takes the GPU (a subprocess evaluator: vLLM, hf_subprocess): this process's model
    plain in host RAM, nothing of it on an accelerator, and PyTorch's cached GPU blocks given back to the driver
    (garbage collected first, so that freed tensors' blocks are in the cache), as llm-compressor's own vLLM tests
    do. vLLM requires ``gpu_memory_utilization`` of the card free when it starts; what this process still holds
    is its CUDA context (jcexp.memory.PARENT_CUDA_BYTES). ``torch.cuda.empty_cache`` does nothing where CUDA
    was never initialized. Raises PlacementError if a tensor of the model is still on an accelerator."""
    import gc

    for_compression(model)
    gc.collect()
    torch.cuda.empty_cache()
    now = state(model)
    stray = [d for d in now.devices if torch.device(d).type != HOST]
    if stray:
        raise PlacementError(
            f"before starting the evaluator's process: tensors still on {stray}, not on {HOST}"
        )
    return now


def for_evaluation(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """Plain modules with every weight resident on ``device``; checked, not assumed."""
    release(model)
    model.to(device)
    check(model, device)
    return model


@dataclass
class PlacementState:
    """What an evaluation actually ran on: recorded in result.json beside the scores."""

    devices: list[str]
    dtypes: list[str]
    offload_wrapped: int
    requantizing: int
    activation_quantizing: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def state(model: torch.nn.Module) -> PlacementState:
    tensors = [*model.parameters(), *model.buffers()]
    return PlacementState(
        devices=sorted({str(t.device) for t in tensors}),
        dtypes=sorted({str(t.dtype).removeprefix("torch.") for t in model.parameters()}),
        offload_wrapped=len(offload_wrapped(model)),
        requantizing=len(requantizing(model)),
        activation_quantizing=len(activation_quantizing(model)),
    )


def same_device(actual: torch.device | str, wanted: str) -> bool:
    """``cuda`` means the current CUDA device; ``cuda:0`` and a tensor on ``cuda:0`` are the same place."""
    actual, wanted_dev = torch.device(actual), torch.device(wanted)
    if actual.type != wanted_dev.type:
        return False
    if wanted_dev.index is None:
        return actual.index is None or actual.index == torch.cuda.current_device()
    return actual.index == wanted_dev.index


def check(model: torch.nn.Module, device: str) -> PlacementState:
    """Raise PlacementError unless the model is plain and every parameter and buffer is on ``device``."""
    now = state(model)
    problems = []
    if now.offload_wrapped:
        problems.append(f"{now.offload_wrapped} module(s) still wrapped in an offload cache")
    if now.requantizing:
        problems.append(f"{now.requantizing} module(s) still fake-quantize their weights on every forward")
    stray = [d for d in now.devices if not same_device(d, device)]
    if stray:
        problems.append(f"tensors on {stray}, not on {device}")
    if problems:
        raise PlacementError("device contract broken before evaluation: " + "; ".join(problems))
    return now
