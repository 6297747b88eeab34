"""Text sources: the offline prose corpus (calibration and held-out evaluation halves) and hub calibration.

Why CPython's pydoc_data.topics: it ships with every Python, so the offline path needs no download and no
root, its ~50k words of English prose are enough for calibration at 32x256 and a held-out evaluation set,
and it is deterministic for a given Python version (its fingerprint is recorded with every result).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

EVAL_SHARE = 35  # percent of paragraphs held out for evaluation, chosen by a stable hash
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")


def _is_prose(text: str) -> bool:
    if ">>>" in text or "::=" in text or "{" in text or "\\" in text:
        return False
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return False
    letters = sum(c.isalpha() for c in chars)
    return letters / len(chars) >= 0.82 and text.rstrip().endswith((".", ":", ")", '"'))


@lru_cache(maxsize=1)
def prose_paragraphs() -> tuple[str, ...]:
    """Prose paragraphs of CPython's topic help, code blocks and headings removed, in a stable order."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = [ln.strip() for ln in block.split("\n")]
            text = " ".join(ln for ln in lines if ln)
            text = re.sub(r"^[*\-]\s+", "", text)  # bullet markers
            text = re.sub(r"\s+", " ", text).strip()
            if len(text.split()) >= 12 and _is_prose(text):
                paragraphs.append(text)
    return tuple(dict.fromkeys(paragraphs))  # drop repeats, keep order


def split_of(paragraph: str) -> str:
    """'eval' or 'calibration', by a hash of the text, so the halves never overlap."""
    digest = int(hashlib.sha1(paragraph.encode()).hexdigest(), 16)
    return "eval" if digest % 100 < EVAL_SHARE else "calibration"


def prose_split(split: str) -> list[str]:
    if split not in ("eval", "calibration"):
        raise ValueError(f"split must be 'eval' or 'calibration', got {split!r}")
    return [p for p in prose_paragraphs() if split_of(p) == split]


def fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


# --------------------------------------------------------------------------------------- calibration
class CalibrationSource:
    """Turns a text source into ``num_samples`` windows of exactly ``seq_len`` tokens, seeded."""

    def __init__(self, name: str, num_samples: int, seq_len: int, seed: int, options: dict[str, Any]):
        self.name = name
        self.num_samples = int(num_samples)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.options = dict(options or {})

    def texts(self) -> list[str]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise ConfigError when the source cannot give text; cheap (runs before any weight is read)."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_samples": self.num_samples,
            "seq_len": self.seq_len,
            "seed": self.seed,
            **self.options,
        }

    def dataset(self, tokenizer):
        """A ``datasets.Dataset`` of pre-tokenized windows, which llm-compressor's oneshot takes as is."""
        from datasets import Dataset

        texts = self.texts()
        if not texts:
            raise ValueError(f"calibration={self.name}: the text source is empty")
        rng = random.Random(self.seed)
        order = list(range(len(texts)))
        rng.shuffle(order)
        sep = tokenizer.eos_token_id
        stream: list[int] = []
        need = self.num_samples * self.seq_len
        for i in order:
            stream.extend(tokenizer(texts[i], add_special_tokens=False)["input_ids"])
            if sep is not None:
                stream.append(sep)
            if len(stream) >= 4 * need:  # enough to draw windows from; no need to tokenize all of C4
                break
        windows = len(stream) // self.seq_len
        if windows < self.num_samples:
            raise ValueError(
                f"calibration={self.name} has {len(stream)} tokens, fewer than num_samples x seq_len = "
                f"{self.num_samples} x {self.seq_len} = {need}; lower them, or use calibration=c4 or "
                f"calibration.options.files=[...] for more text"
            )
        picks = sorted(rng.sample(range(windows), self.num_samples))
        ids = [stream[w * self.seq_len : (w + 1) * self.seq_len] for w in picks]
        return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * self.seq_len for _ in ids]})


def windows_fingerprint(dataset) -> str:
    """The calibration windows' token ids, hashed: what a pruned model depends on, whatever text, files,
    tokenizer or sampling produced them."""
    import hashlib

    import numpy as np

    return hashlib.sha256(np.asarray(dataset["input_ids"], dtype=np.int64).tobytes()).hexdigest()[:16]


class LocalProseCalibration(CalibrationSource):
    """The calibration half of the offline prose corpus (unless ``options.prose: false``), plus any local text
    files in ``options.files`` (paragraphs separated by blank lines)."""

    def texts(self) -> list[str]:
        texts = list(prose_split("calibration")) if self.options.get("prose", True) else []
        for path in self.options.get("files", []) or []:
            with open(path, encoding="utf-8") as fh:
                texts.extend(p.strip() for p in re.split(r"\n\s*\n", fh.read()) if p.strip())
        return texts

    def check(self) -> None:
        from jcexp.config import ConfigError

        for path in self.options.get("files", []) or []:
            try:
                with open(path, encoding="utf-8") as fh:
                    fh.read(1)
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"calibration.options.files: cannot read {path!r}: {exc}") from exc
        if not self.texts():
            raise ConfigError(
                f"calibration={self.name}: no calibration text (options.prose is false and "
                f"options.files {self.options.get('files')} hold no paragraph)"
            )


class HubTextCalibration(CalibrationSource):
    """A text data set from the hub (the paper uses C4), loaded with ``datasets.load_dataset``."""

    def texts(self) -> list[str]:
        from datasets import load_dataset

        opts = dict(self.options)
        field = opts.pop("text_field", "text")
        ds = load_dataset(**opts)
        return [row[field] for row in ds]

    def check(self) -> None:
        if "path" not in self.options:
            raise ValueError(f"calibration={self.name} needs options.path (a hub data set id)")
