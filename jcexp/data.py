"""Text sources: the offline prose corpus (calibration and held-out evaluation halves) and hub calibration.

Why CPython's pydoc_data.topics: it ships with every Python, so the offline path needs no download and no
root, its ~50k words of English prose are enough for calibration at 32x256 and a held-out evaluation set,
and it is deterministic for a given Python version (its fingerprint is recorded with every result).

The held-out half is frozen into ``jcexp/tasks/offline/prose_eval.json`` (``python -m jcexp.data`` rewrites it),
beside the task YAMLs that read it: the offline suite then scores the same items in any environment that has
lm-eval, with or without jcexp, whatever its CPython (a subprocess evaluator's own, e.g. ``.venv-vllm``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

EVAL_SHARE = 35  # percent of paragraphs held out for evaluation, chosen by a stable hash
EVAL_FILE = Path(__file__).resolve().parent / "tasks" / "offline" / "prose_eval.json"


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
    """'calibration': this Python's paragraphs that hash to calibration. 'eval': the frozen held-out paragraphs
    the offline tasks score (EVAL_FILE). Each of those hashed to 'eval' when it was written, so no calibration
    paragraph of any Python version is one of them."""
    if split not in ("eval", "calibration"):
        raise ValueError(f"split must be 'eval' or 'calibration', got {split!r}")
    if split == "eval":
        return list(eval_file()["paragraphs"])
    return [p for p in prose_paragraphs() if split_of(p) == split]


@lru_cache(maxsize=1)
def eval_file() -> dict[str, Any]:
    return json.loads(EVAL_FILE.read_text(encoding="utf-8"))


def write_eval_file(path: Path = EVAL_FILE) -> None:
    """Freeze this Python's held-out paragraphs into ``path`` (what the offline tasks read)."""
    paragraphs = [p for p in prose_paragraphs() if split_of(p) == "eval"]
    content = {
        "about": "Held-out prose paragraphs of the offline suite (jcexp/data.py): CPython's pydoc_data.topics, "
        f"code blocks and headings removed, the {EVAL_SHARE}% whose sha1 sends them to 'eval'.",
        "python": platform.python_version(),
        "fingerprint": fingerprint(paragraphs),
        "paragraphs": paragraphs,
    }
    path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


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
        # Each window starts as the tokenizer starts a text (Gemma: <bos>; SmolLM2: nothing, so its windows are
        # unchanged), then seq_len minus that many tokens of the stream.
        start = text_start(tokenizer)
        body = self.seq_len - len(start)
        ids = [start + stream[w * self.seq_len : w * self.seq_len + body] for w in picks]
        return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * self.seq_len for _ in ids]})


def text_start(tokenizer) -> list[int]:
    """The token ids the tokenizer puts before any text with its default special tokens: [<bos>] for Gemma 3,
    Llama 3 and Mistral, [] for SmolLM2."""
    probe = "The"
    full = tokenizer(probe)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i])
    return []


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


if __name__ == "__main__":
    write_eval_file()
    print(f"wrote {len(eval_file.__wrapped__()['paragraphs'])} paragraphs to {EVAL_FILE}")
