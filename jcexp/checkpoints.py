"""Checkpoints written for readers outside this process: the user, vLLM, a subprocess lm-eval.

``packed``: llm-compressor's compressed-tensors format (int weights packed, with scales and zero points), what
vLLM's W4A16/W8A16 kernels load. ``dense``: plain weights and no ``quantization_config``, which any reader loads.
llm-compressor's own ``save_pretrained(save_compressed=False)`` is not plain enough for that: it still writes
the quantization scheme and the scale and zero-point tensors, and vLLM would then look for a kernel of that bit
width (none exists for 2 or 3 bits). The quantized values themselves are already baked into the weights
(jcexp/placement.py), so the dense checkpoint scores exactly as the in-memory model does.

The tokenizer: a checkpoint gets byte-for-byte copies of its source's own tokenizer files (the hub's, for a hub
model), not files transformers re-saved, so that the dense baseline (read from the source) and every compressed
model are tokenized from the same files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jcexp import placement

FORMATS = ("compressed-tensors", "dense")
# Per-module tensors that only describe quantization; the dense checkpoint leaves them out.
_QUANTIZATION_TENSORS = ("weight_scale", "weight_zero_point", "weight_g_idx", "weight_global_scale")


def save_tokenizer(tokenizer, path: str | Path, source: str | Path | None = None) -> list[str]:
    """The tokenizer's files in ``path``: copies of those in ``source`` (a ModelSource's tokenizer_dir) when it
    has any, else what ``tokenizer.save_pretrained`` writes. Returns the file names written."""
    from jcexp.models import tokenizer_files

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    files = tokenizer_files(source) if source is not None else []
    if not files:
        return sorted(Path(f).name for f in tokenizer.save_pretrained(path))
    for file in files:
        shutil.copyfile(file, path / file.name)  # follows the hub cache's symlinks: the bytes, not the link
    return [f.name for f in files]


def save(model, tokenizer, path: str | Path, fmt: str, tokenizer_dir: str | Path | None = None) -> Path:
    """Write ``model`` in ``fmt`` (one of FORMATS) to ``path``, with the tokenizer files of ``tokenizer_dir``
    (save_tokenizer). A packed save compresses the model in place: write any dense copy first."""
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
    save_tokenizer(tokenizer, path, tokenizer_dir)
    return path
