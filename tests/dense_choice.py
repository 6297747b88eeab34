"""A test benchmark on which the tiny random model is right by construction: its own choices are the answers.

A random-init model answers the offline tasks at chance, so every compressed copy of it retains "all" of nothing
and no race between them can separate anything. Here each item is a 4-way choice of the next word (a cloze on
the held-out prose) whose *label is the dense model's own choice*, kept only where the dense model prefers it
by a clear log-likelihood margin. The dense model scores 1.0; a compressed model scores the share of items on
which it still chooses as the dense one did, so Sr measures how far compression moved the model, as on a real
benchmark. The items are read and scored by the real lm-eval; only their labels come from here.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TASK = "jc_dense_choice"

YAML = """task: jc_dense_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _rows(tokenizer, seed: int = 7, per_paragraph: int = 3) -> list[dict]:
    """Cloze items on the held-out prose: a paragraph's first words, then 4 candidate next words, each one token
    (with its leading space) for this tokenizer, so that no choice wins by its length."""
    from jcexp.data import prose_split

    words = sorted({w.strip('.,;:!?"()') for p in prose_split("eval") for w in p.split()})
    single = [
        w
        for w in words
        if w.isalpha() and len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1
    ]
    rng = random.Random(seed)
    rows = []
    for paragraph in prose_split("eval"):
        ws = paragraph.split()
        for _ in range(per_paragraph):
            k = rng.randint(5, min(40, len(ws) - 1))
            rows.append({"context": " ".join(ws[:k]), "choices": rng.sample(single, 4)})
    return rows


def build(task_dir: Path, model_dir: Path, limit: int = 320) -> int:
    """Write the task (YAML + JSON items) into ``task_dir`` for the model saved in ``model_dir``: the items whose
    dense choice wins by at least the median margin (so the dense model is right on them by a clear margin, and
    rounding that barely moves the model leaves its choices alone), at most ``limit``. Returns their number."""
    import statistics

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    scored = []
    for row in _rows(tokenizer):
        # lm-eval's multiple_choice: loglikelihood of " " + choice after the context; each choice is one token,
        # so that is the next-token log-probability at the context's last position.
        ids = tokenizer(row["context"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)
        ll = [
            float(logp[tokenizer(" " + w, add_special_tokens=False)["input_ids"][0]]) for w in row["choices"]
        ]
        ranked = sorted(range(4), key=lambda i: -ll[i])
        scored.append((ll[ranked[0]] - ll[ranked[1]], {**row, "label": ranked[0]}))
    cut = statistics.median(m for m, _ in scored)
    kept = [row for m, row in scored if m >= cut][:limit]
    task_dir.mkdir(parents=True, exist_ok=True)
    data = task_dir / "dense_choice.json"
    data.write_text("\n".join(json.dumps(r) for r in kept) + "\n")
    (task_dir / f"{TASK}.yaml").write_text(YAML.format(data=data))
    return len(kept)


BENCHMARK = """# The tiny model's own choices as answers (tests/dense_choice.py): one YAML in a benchmark group.
name: dense_choice
scores:
  jc_dense_choice: acc,none
chance:
  jc_dense_choice: 0.25
include_paths: [{tasks}]
limit: null
batch_size: 8
max_length: 512
"""


def overrides(task_dir: Path) -> list[str]:
    """Select this benchmark: a config dir beside the task holding benchmark/dense_choice.yaml, added to
    Hydra's search path (how a user adds a benchmark without touching conf/)."""
    conf = task_dir / "conf" / "benchmark"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "dense_choice.yaml").write_text(BENCHMARK.format(tasks=task_dir))
    return [f"hydra.searchpath=[file://{task_dir / 'conf'}]", "benchmark=dense_choice"]
