"""The one place jcexp reaches inside llm-compressor: GPTQ's column sweep.

llm-compressor 0.14 offers no hook inside GPTQ's per-column loop, and Case B (quantize only the kept weights)
and one-pass joint compression (prune inside the sweep) differ from stock GPTQ only there. So, for the duration
of ``compress_module_list``, they swap the module global ``quantize_weight`` that ``gptq/base.py`` binds at
import. That is a private seam: a different llm-compressor may move or reshape it silently. The guard below
fails before any compute, naming what changed, unless the installed version and the sweep's signature are the
ones this code was written against.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import ClassVar
from unittest import mock

from llmcompressor.modifiers.quantization import GPTQModifier

PINNED_LLMCOMPRESSOR = "0.14.0.1"
SWEEP_PARAMETERS = (
    "weights",
    "hessians",
    "scale",
    "zero_point",
    "global_scale",
    "quant_args",
    "blocksize",
    "percdamp",
)


def seam_problem() -> str | None:
    """Why the patched sweep cannot be trusted with the installed llm-compressor, or None."""
    installed = version("llmcompressor")
    if installed != PINNED_LLMCOMPRESSOR:
        return (
            f"llm-compressor {installed} is installed, but jcexp's Case B / one-pass GPTQ sweep replaces a "
            f"private function of llm-compressor {PINNED_LLMCOMPRESSOR} (gptq.base.quantize_weight); "
            f"install llmcompressor=={PINNED_LLMCOMPRESSOR} or port jcexp/compress/seam.py"
        )
    from llmcompressor.modifiers.gptq import base

    target = getattr(base, "quantize_weight", None)
    if target is None:
        return "llmcompressor.modifiers.gptq.base has no quantize_weight to replace"
    params = tuple(inspect.signature(target).parameters)
    if params != SWEEP_PARAMETERS:
        return f"llmcompressor's quantize_weight takes {params}, jcexp's sweep expects {SWEEP_PARAMETERS}"
    return None


class SweepGPTQModifier(GPTQModifier):
    """Stock GPTQModifier whose column sweep is ``sweep`` (a drop-in for 0.14's ``quantize_weight``) for the
    duration of ``compress_module_list``: Case B's and the joint mode's modifiers are this with their sweep."""

    # What jcexp's stages read instead of guessing from class names or attributes.
    replaces_gptq_sweep: ClassVar[bool] = True
    sweep: ClassVar[Callable]

    def compress_module_list(self, module_list):
        with sweep_replaced_by(type(self).sweep):
            return super().compress_module_list(module_list)


@contextmanager
def sweep_replaced_by(sweep: Callable) -> Iterator[None]:
    """GPTQ's column sweep is ``sweep`` inside the block, stock again after it."""
    problem = seam_problem()
    if problem:
        raise RuntimeError(problem)
    from llmcompressor.modifiers.gptq import base

    with mock.patch.object(base, "quantize_weight", sweep):
        yield
