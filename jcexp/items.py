"""Per-item results: what each model scored on each item, kept in a compact sidecar beside result.json.

lm-eval's ``log_samples`` gives every item's metric values; the worker keeps only the item id and the values
(jcexp/lm_eval_worker.py: ``compact_samples``). Here they become, per scored task, item id -> score (a group's
items are its leaf tasks' items, ids prefixed by the leaf task, so the mean over them is the size-weighted group
score), and per perplexity task, document id -> (log-likelihood, weight). The paired intervals
(jcexp/paired.py) read them. The dense baseline's sidecar is cached with the baseline.

A compressed run's sidecar also keeps, per perplexity task, document id -> [sum of per-token KL(dense ||
compressed) in nats, tokens scored, tokens whose argmax agrees] (``divergence``; jcexp/divergence.py): the
per-document KL a screen can resample or race on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jcexp.files import atomic_write_json, read_json

ITEMS_FILE = "items.json"
FORMAT = 1


def _leaves(task: str, group_subtasks: dict[str, list[str]]) -> list[str]:
    children = group_subtasks.get(task)
    if not children:
        return [task]
    return [leaf for child in children for leaf in _leaves(child, group_subtasks)]


def select(out: dict[str, Any], scores: dict[str, str], perplexity: dict[str, str]) -> dict[str, Any]:
    """The benchmark's tasks and metrics out of the worker's compacted samples (``out["items"]``)."""
    samples = out.get("items") or {}
    groups = out.get("group_subtasks") or {}

    def collect(task: str, metric: str) -> dict[str, Any]:
        leaves = _leaves(task, groups)
        found: dict[str, Any] = {}
        for leaf in leaves:
            entry = (samples.get(leaf) or {}).get(metric)
            if entry is None:
                return {}
            prefix = f"{leaf}/" if len(leaves) > 1 else ""
            found.update({f"{prefix}{i}": v for i, v in zip(entry["ids"], entry["values"], strict=True)})
        return found

    return {
        "scores": {t: {"metric": m, "items": collect(t, m)} for t, m in scores.items()},
        "perplexity": {t: {"metric": m, "items": collect(t, m)} for t, m in perplexity.items()},
    }


def complete(items: dict[str, Any] | None) -> bool:
    """Every task has its items (an evaluation without log_samples, or an old sidecar, has none)."""
    if not items:
        return False
    entries = [*items.get("scores", {}).values(), *items.get("perplexity", {}).values()]
    return bool(entries) and all(e["items"] for e in entries)


def scores(items: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {t: {i: float(v) for i, v in e["items"].items()} for t, e in items["scores"].items()}


def documents(items: dict[str, Any], task: str) -> dict[str, list[float]]:
    return {i: [float(x) for x in v] for i, v in items["perplexity"][task]["items"].items()}


DIVERGENCE_VALUES = "[kl_sum_nats, tokens, top1_agreements]"


def with_divergence(items: dict[str, Any] | None, per_document: dict[str, list[float]] | None):
    """``items`` plus the per-document divergence values ("task/doc_id" -> values), grouped by task."""
    if not per_document:
        return items
    grouped: dict[str, dict[str, Any]] = {}
    for key, values in per_document.items():
        task, _, doc = key.rpartition("/")
        entry = grouped.setdefault(task, {"metric": "kld", "values": DIVERGENCE_VALUES, "items": {}})
        entry["items"][doc] = values
    return {**(items or {"scores": {}, "perplexity": {}}), "divergence": grouped}


def divergence(items: dict[str, Any] | None) -> dict[str, list[float]]:
    """The per-document divergence values of a sidecar, "task/doc_id" -> values ({} when it has none)."""
    found = (items or {}).get("divergence") or {}
    return {f"{t}/{d}": [float(x) for x in v] for t, e in found.items() for d, v in e["items"].items()}


def write(directory: str | Path, items: dict[str, Any]) -> Path:
    path = Path(directory) / ITEMS_FILE
    atomic_write_json(path, {"format": FORMAT, **items}, indent=None)
    return path


def read(directory: str | Path) -> dict[str, Any] | None:
    data = read_json(Path(directory) / ITEMS_FILE)
    if not data or data.get("format") != FORMAT:
        return None
    out = {"scores": data.get("scores", {}), "perplexity": data.get("perplexity", {})}
    if data.get("divergence"):
        out["divergence"] = data["divergence"]
    return out
