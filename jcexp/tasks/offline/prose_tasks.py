"""Datasets for the offline tasks, built from the held-out half of the local prose corpus.

lm-eval calls these through ``custom_dataset: !function prose_tasks.<name>`` in the task YAMLs beside this
file; every item is derived deterministically (fixed seed) from text that calibration never sees.
"""

from __future__ import annotations

import random

from datasets import Dataset, DatasetDict

from jcexp.data import prose_split, sentences


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
