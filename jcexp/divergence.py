"""The token distributions behind distribution-level retention: our own forward over the held-out prose.

Why our own forward: lm-eval returns one log-likelihood per request (the perplexity task's rolling windows
sum them), never the next-token distributions, so KL(dense || compressed) and the top-1 agreement need the
logits themselves. The forward reads the same documents as the benchmark's perplexity tasks (lm-eval's own
Task objects, benchmark.limit applied: ``held_out_documents``) and cuts them as lm-eval's rolling
log-likelihood does (``rolling_windows``: disjoint windows of benchmark.max_length tokens, each predicted
token scored once). Each document starts as the tokenizer starts a text (``document_ids``): one BOS where
the tokenizer adds one, none where it adds none (lm-eval 0.4.13 put a second BOS before Gemma's text; jcexp
fixes that in lm_eval_worker.one_bos, issue 27).

The dense model's side is computed once per baseline key and cached (jcexp/scoring.py), as its top-k
log-probabilities and the log of the remaining mass (``Distributions``): the KL is then the bucketed KL of
jcexp/kld.py, a lower bound of the full KL whose gap is stated there. The compressed side is computed on the
model in memory, on plan.device, before any checkpoint is written or the model leaves the device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jcexp import kld
from jcexp.data import text_start

# Log-probabilities kept per token. Measured on SmolLM2-135M's 15 held-out documents (5719 tokens) against a
# 4-bit RTN copy: the bucketed KL is 13.6% / 9.5% / 6.3% below the full KL at k = 64 / 128 / 256, the dense
# mass outside the top k 10.3% / 7.1% / 4.7%; k = 256 stores 11.8 MB per baseline (README: KL and flips).
TOP_K = 256
FILE = "distributions.npz"
SETTINGS_FILE = "distributions.json"


def document_ids(tokenizer, text: str) -> list[int]:
    """A document's token ids as the tokenizer starts a text (jcexp/data.py: text_start, which calibration
    windows use too): its BOS once where it adds one (never twice, even when the text spells the BOS itself),
    nothing where it adds none. lm-eval's rolling windows (with jcexp's one-BOS fix, lm_eval_worker.one_bos)
    put a prefix token before the text even where the tokenizer adds none (its BOS, else its EOS) and so also
    score the first token; here that token is only read, so a document has one scored token fewer there."""
    start = text_start(tokenizer)
    plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if start and plain[: len(start)] == start:
        plain = plain[len(start) :]
    return [*start, *plain]


def rolling_windows(n_tokens: int, max_length: int) -> list[tuple[int, int]]:
    """(start, end) of each window's predicted tokens in a sequence of ``n_tokens``: the window reads
    ids[start - 1 : end - 1] and predicts ids[start : end]. Every token after the first is predicted once, in
    windows of at most ``max_length`` inputs, as lm-eval's rolling log-likelihood does (context_len 1)."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    return [(s, min(s + max_length, n_tokens)) for s in range(1, n_tokens, max_length)]


@torch.inference_mode()
def window_log_probs(model, ids: list[int], max_length: int):
    """(targets, log-probabilities [tokens, vocab] in float32) for each rolling window of ``ids``, computed on
    the device the model's weights are on."""
    device = next(model.parameters()).device
    model.eval()  # as lm-eval's HFLM sets it
    for start, end in rolling_windows(len(ids), max_length):
        inputs = torch.tensor([ids[start - 1 : end - 1]], device=device)
        logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs), use_cache=False).logits[0]
        yield torch.tensor(ids[start:end], device=device), torch.log_softmax(logits.float(), dim=-1)


def _rest(logp: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """log of the mass outside the ``top`` indices, per row (masked logsumexp: exact where the mass is tiny)."""
    return torch.logsumexp(logp.scatter(-1, top, float("-inf")), dim=-1)


@dataclass
class Distributions:
    """The dense model's next-token distributions on the held-out documents, as top-k and the rest's mass.
    Rows are the predicted tokens of every document in order; ``offsets`` cut them into documents."""

    documents: list[str]  # "task/doc_id"
    offsets: np.ndarray  # int64 [documents + 1]
    targets: np.ndarray  # int32 [tokens]: the token each row predicts (the compressed side checks alignment)
    top_ids: np.ndarray  # int32 [tokens, k], by decreasing probability (column 0: the dense argmax)
    top_logp: np.ndarray  # float32 [tokens, k]
    rest_logp: np.ndarray  # float32 [tokens]
    settings: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        np.savez(
            directory / FILE,
            offsets=self.offsets,
            targets=self.targets,
            top_ids=self.top_ids,
            top_logp=self.top_logp,
            rest_logp=self.rest_logp,
        )
        (directory / SETTINGS_FILE).write_text(json.dumps({"documents": self.documents, **self.settings}))

    @classmethod
    def load(cls, directory: Path) -> Distributions | None:
        try:
            meta = json.loads((directory / SETTINGS_FILE).read_text())
            with np.load(directory / FILE) as z:
                arrays = {k: z[k] for k in ("offsets", "targets", "top_ids", "top_logp", "rest_logp")}
        except (OSError, ValueError, KeyError):
            return None
        return cls(documents=meta.pop("documents"), settings=meta, **arrays)

    def rows(self, doc: int) -> slice:
        return slice(int(self.offsets[doc]), int(self.offsets[doc + 1]))


def held_out_documents(tasks, bench) -> dict[str, str]:
    """ "task/doc_id" -> text of every document the benchmark's perplexity tasks score (benchmark.limit
    applied, as lm-eval takes the first ones), read from the lm-eval tasks the plan built (jcexp/evaluate.py)
    with the text lm-eval's rolling request reads (doc_to_target)."""
    from jcexp import lm_eval_worker as worker

    out: dict[str, str] = {}
    for name in bench.perplexity:
        for leaf_name, leaf in worker.leaf_tasks(tasks.by_name[name]).items():
            docs = list(leaf.eval_docs)[: tasks.documents[leaf_name]]
            out.update({f"{leaf_name}/{i}": str(leaf.doc_to_target(doc)) for i, doc in enumerate(docs)})
    return out


def dense_distributions(
    model, tokenizer, documents: dict[str, str], max_length: int, top_k: int = TOP_K
) -> Distributions:
    """The dense side: each document's rolling windows, top-k log-probabilities and the rest's log-mass."""
    offsets, targets, top_ids, top_logp, rest = [0], [], [], [], []
    for text in documents.values():
        for tgt, logp in window_log_probs(model, document_ids(tokenizer, text), max_length):
            top = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
            targets.append(tgt.cpu().numpy().astype(np.int32))
            top_ids.append(top.indices.cpu().numpy().astype(np.int32))
            top_logp.append(top.values.cpu().numpy())
            rest.append(_rest(logp, top.indices).cpu().numpy())
        offsets.append(sum(len(t) for t in targets))
    k = top_ids[0].shape[1] if top_ids else top_k
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape)  # noqa: E731
    return Distributions(
        documents=list(documents),
        offsets=np.asarray(offsets, np.int64),
        targets=cat(targets, (0,)).astype(np.int32),
        top_ids=cat(top_ids, (0, k)).astype(np.int32),
        top_logp=cat(top_logp, (0, k)).astype(np.float32),
        rest_logp=cat(rest, (0,)).astype(np.float32),
        # The dense mass outside the top k, per token on average: the bucketed KL's gap to the full KL is this
        # mass times the divergence inside it (jcexp/kld.py); on the tiny model the relative gap ~ this share.
        settings={
            "top_k": k,
            "max_length": max_length,
            "rest_mass": float(np.exp(np.concatenate(rest)).mean()) if rest else None,
        },
    )


def compare(model, tokenizer, documents: dict[str, str], dense: Distributions) -> dict[str, list[float]]:
    """The compressed side: per document [sum of per-token bucketed KL(dense || compressed), tokens, tokens
    whose argmax is the dense argmax], in one forward over the same windows."""
    if list(documents) != dense.documents:
        raise ValueError("the held-out documents differ from those the dense distributions were computed on")
    out: dict[str, list[float]] = {}
    for d, (doc, text) in enumerate(documents.items()):
        rows = dense.rows(d)
        kl, agree, at = 0.0, 0, rows.start
        for tgt, logp in window_log_probs(model, document_ids(tokenizer, text), dense.settings["max_length"]):
            n = len(tgt)
            ids = torch.from_numpy(dense.top_ids[at : at + n]).to(device=logp.device, dtype=torch.long)
            if not np.array_equal(tgt.cpu().numpy(), dense.targets[at : at + n]):
                raise ValueError(
                    f"document {doc}: its tokens differ from the dense side's (tokenizer changed?)"
                )
            q_top = logp.gather(-1, ids).cpu().numpy()
            q_rest = _rest(logp, ids).cpu().numpy()
            kl += float(
                kld.bucket_kl(dense.top_logp[at : at + n], dense.rest_logp[at : at + n], q_top, q_rest).sum()
            )
            agree += int((logp.argmax(-1) == ids[:, 0]).sum())
            at += n
        out[doc] = [kl, float(rows.stop - rows.start), float(agree)]
    return out


def identical(dense: Distributions) -> dict[str, list[float]]:
    """compare() for a run that compressed nothing: the dense distributions against themselves (KL exactly 0,
    every argmax agrees), without a forward."""
    out = {}
    for d, doc in enumerate(dense.documents):
        r = dense.rows(d)
        p, rest = dense.top_logp[r], dense.rest_logp[r]
        out[doc] = [
            float(kld.bucket_kl(p, rest, p, rest).sum()),
            float(r.stop - r.start),
            float(r.stop - r.start),
        ]
    return out
