"""Datasets for the offline tasks, built from the held-out half of the local prose corpus.

lm-eval calls these through ``custom_dataset: !function prose_tasks.<name>`` in the task YAMLs beside this
file; every item is derived deterministically (fixed seed) from text that calibration never sees.

Self-contained: the standard library, ``datasets`` (an lm-eval dependency) and the held-out paragraphs in
``prose_eval.json`` beside this file (written by ``python -m jcexp.data``). Nothing from jcexp, so this directory
works with plain ``lm_eval --include_path`` in any environment that has lm-eval (e.g. ``.venv-vllm``).
"""

from __future__ import annotations

import json
import os
import random
import re

from datasets import Dataset, DatasetDict

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")


def prose_split(split: str) -> list[str]:
    """The held-out paragraphs (the only split these tasks read)."""
    if split != "eval":
        raise ValueError(f"the offline tasks read the 'eval' split only, not {split!r}")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prose_eval.json")
    with open(path, encoding="utf-8") as fh:
        return list(json.load(fh)["paragraphs"])


def sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(paragraph) if s.strip()]


def lastword(seed: int = 1234, **_: object) -> DatasetDict:
    """LAMBADA-style cloze: a paragraph without its final word; the target is that word."""
    rows = []
    for text in prose_split("eval"):
        body = text.rstrip('.:)"')
        if not text.endswith("."):
            continue
        head, _, word = body.rpartition(" ")
        if word.isalpha() and len(word) >= 3 and len(head.split()) >= 10:
            rows.append({"context": head, "target": word})
    random.Random(seed).shuffle(rows)
    return DatasetDict({"test": Dataset.from_list(rows)})


def nextsentence(seed: int = 1234, num_choices: int = 4, **_: object) -> DatasetDict:
    """Multiple choice: which sentence truly follows the context? 1 true + (num_choices-1) drawn from
    other held-out paragraphs. Chance is 1/num_choices."""
    rng = random.Random(seed)
    pairs = []
    for text in prose_split("eval"):
        sents = sentences(text)
        if len(sents) >= 2 and 6 <= len(sents[-1].split()) <= 40:
            pairs.append((" ".join(sents[-3:-1]), sents[-1]))
    endings = [true for _, true in pairs]
    rows = []
    for i, (context, true) in enumerate(pairs):
        others = [e for j, e in enumerate(endings) if j != i]
        choices = rng.sample(others, num_choices - 1) + [true]
        rng.shuffle(choices)
        rows.append({"context": context, "choices": choices, "label": choices.index(true)})
    rng.shuffle(rows)
    return DatasetDict({"test": Dataset.from_list(rows)})


def perplexity(max_words: int = 4000, doc_words: int = 250, **_: object) -> DatasetDict:
    """Held-out documents of about ``doc_words`` words, ``max_words`` in all, for rolling log-likelihood."""
    docs, current, total = [], [], 0
    for text in prose_split("eval"):
        current.append(text)
        n = len(text.split())
        total += n
        if sum(len(t.split()) for t in current) >= doc_words:
            docs.append({"text": "\n\n".join(current)})
            current = []
        if total >= max_words:
            break
    if current:
        docs.append({"text": "\n\n".join(current)})
    return DatasetDict({"test": Dataset.from_list(docs)})
