"""Checkpoints written for readers outside this process: the user, vLLM, a subprocess lm-eval.

``packed``: llm-compressor's compressed-tensors format (int weights packed, with scales and zero points), what
vLLM's W4A16/W8A16 kernels load. ``dense``: plain weights and no ``quantization_config``, which any reader loads.
llm-compressor's own ``save_pretrained(save_compressed=False)`` is not plain enough for that: it still writes
the quantization scheme and the scale and zero-point tensors, and vLLM would then look for a kernel of that bit
width (none exists for 2 or 3 bits). The quantized values themselves are already baked into the weights
(jcexp/placement.py), so the dense checkpoint scores exactly as the in-memory model does.
"""

from __future__ import annotations

from pathlib import Path

from jcexp import placement

FORMATS = ("compressed-tensors", "dense")
# Per-module tensors that only describe quantization; the dense checkpoint leaves them out.
_QUANTIZATION_TENSORS = ("weight_scale", "weight_zero_point", "weight_g_idx", "weight_global_scale")


def save(model, tokenizer, path: str | Path, fmt: str) -> Path:
    """Write ``model`` in ``fmt`` (one of FORMATS) to ``path``. A packed save compresses the model in place:
    write any dense copy first."""
    if fmt not in FORMATS:
        raise ValueError(f"checkpoint format {fmt!r} is not one of {FORMATS}")
    path = Path(path)
    if fmt == "compressed-tensors":
        model.save_pretrained(path, save_compressed=True)
    else:
        placement.release(model)
        state = {
            k: v
            for k, v in model.state_dict().items()
            if not k.rpartition(".")[2].startswith(_QUANTIZATION_TENSORS)
        }
        # transformers' own save_pretrained, not llm-compressor's wrapper around it (see the module docstring).
        type(model).save_pretrained(model, path, state_dict=state)
        config = path / "config.json"
        if "quantization_config" in config.read_text():
            raise RuntimeError(f"dense checkpoint {path} still names a quantization_config")
    tokenizer.save_pretrained(path)
    return path
