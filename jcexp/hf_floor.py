"""lm-eval's HFLM with loglikelihood requests scored at the compute floor: each distinct context runs once, and
the output head and log-softmax run only at the positions a request scores.

Stock ``HFLM._loglikelihood_tokens`` (lm-eval 0.4.13) runs every request's whole ``context + continuation``
through the model and then applies the head and a full-vocabulary log-softmax at every position of every row,
keeping only the continuation's. A k-way choice item therefore runs its context k times, and on Gemma 3 the
262k-token head over the context's positions is most of a scoring forward (bench/head_cost). Its own
``group_by="contexts"`` cache shares only requests whose ``context + continuation[:-1]`` are equal (one-token
continuations of one context).

:class:`FloorHFLM` overrides ``_loglikelihood_tokens`` alone, and only for what it saves on:

- A request ``(context, continuation)`` is cut, after stock's left truncation to ``max_length + 1`` tokens,
  into a *prefix* (every input position whose output is not scored: the truncated context less its last
  token) and a *tail* (the context's last token and the continuation less its last token: exactly the scored
  positions). Requests are grouped by prefix tokens, so a context shared by k continuations runs once.
- Prefix pass: distinct prefixes, as many as fit ``batch_size`` x the longest request in tokens, through the
  decoder (``model.get_decoder()``), right
  padded without a mask as stock pads (causal attention: padding never reaches a real position), no head at
  all, keys and values kept in a ``DynamicCache`` built without the model config, so sliding-window layers keep
  every position (a config-built cache drops what slid out of the window, which a padded shorter row would
  still need).
- Tail pass: distinct tails, longest first, as many as fit ``TAIL_ROWS x batch_size`` x the longest
  continuation in positions, each on its prefix's keys and values, laid out
  left-padded to the batch's longest prefix. Left padding keeps every row's distance between a query and a
  cached key equal to the true one, which the sliding-window mask reads from cache positions; the padding is
  masked out and RoPE positions are passed explicitly. The head and the log-softmax then run on the tail's
  real positions only (padding dropped first).

Why the decoder and the head separately, not transformers' ``logits_to_keep``: ``logits_to_keep`` keeps a
suffix (or one index set for every row). That fits the prefix pass (keep 1) and a single continuation, but the
tails of a batch end at different positions, and the suffix would include the padding; on a 262k vocabulary
that padding costs what it saves. The head is applied as the model's forward applies it (lm_head, then Gemma's
final-logit soft-capping): for model types whose forward does exactly that (``HEAD_ONLY``). Others (a logit
scale, Cohere; a logits divisor, Granite) take the model's own forward with ``logits_to_keep=0`` on the tails:
their contexts are still shared, only the tail padding's head is not saved.

Rolling perplexity (whose windows are scored at every position: nothing to save), ``batch_size=auto`` (its
search measures stock's shapes) and seq2seq models stay on lm-eval's own path. Answers are what stock returns,
``(sum of log-probs, is_greedy)`` per request in request order, the response cache filled per request under
stock's key. Tokenization (BOS, prefix token for an empty context) is the base class's: this class sees the
token lists stock's ``_loglikelihood_tokens`` sees.

Imports only torch, transformers and lm-eval: jcexp/lm_eval_worker.py loads it by path in a child process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

log = logging.getLogger(__name__)

# transformers model types whose causal-LM forward computes logits as lm_head(last hidden state), followed at
# most by config.final_logit_softcapping (read in transformers 5: LlamaForCausalLM, Gemma3ForCausalLM, ...).
HEAD_ONLY = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi3",
        "olmo",
        "olmo2",
        "smollm3",
    }
)


# The tail pass's positions per forward, in units of batch_size x the longest continuation: their logits are
# batch x continuation sized, far below a stock batch's batch x request, so the tail pass takes more rows and
# runs fewer forwards.
TAIL_ROWS = 2  # jcexp/memory.py: FLOOR_TAIL_ROWS


@dataclass
class _Group:
    """Requests that share a prefix: their distinct tails, and per request (index, tail row, targets)."""

    prefix: tuple[int, ...]
    tails: dict[tuple[int, ...], int] = field(default_factory=dict)  # tail tokens -> row within the group
    requests: list[tuple[int, int, list[int]]] = field(default_factory=list)

    def add(self, index: int, tail: tuple[int, ...], targets: list[int]) -> None:
        row = self.tails.setdefault(tail, len(self.tails))
        self.requests.append((index, row, targets))

    @property
    def length(self) -> int:
        return len(self.prefix) + max(len(t) for t in self.tails)

    @property
    def first_width(self) -> int:
        """Its row's width in the first pass: the prefix alone if its tails are shared, else the request."""
        return len(self.prefix) if len(self.tails) > 1 else self.length


def split(context: list[int], continuation: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """(prefix, tail) of one request after stock's left truncation: the model's input is
    ``(context + continuation)[-(max_length + 1):][:-1]``, its last ``len(continuation)`` positions are scored.
    The tail is those positions (context's last token, continuation less its last), the prefix what precedes."""
    if not context or not continuation:
        raise ValueError("loglikelihood request with an empty context or continuation (lm-eval fills both)")
    if len(continuation) > max_length:
        raise ValueError(f"continuation of {len(continuation)} tokens exceeds max_length={max_length}")
    whole = (context + continuation)[-(max_length + 1) :]
    cut = len(whole) - len(continuation) - 1
    return whole[:cut], whole[cut:-1]


class FloorMixin:
    """HFLM's loglikelihood requests with each distinct context run once and the head applied at scored
    positions only (see the module docstring). Subclassed rather than configured: HFLM has no hook between the
    model and its full-sequence log-softmax, and its context grouping covers one-token continuations only.
    A mixin, so that it goes on any HFLM subclass (:func:`with_floor`) and keeps that class's tokenization."""

    def _loglikelihood_tokens(
        self,
        requests: list[tuple[tuple[str, str], list[int], list[int]]],
        disable_tqdm: bool = False,
        override_bs: int | None = None,
    ) -> list[tuple[float, bool]]:
        stock = (
            self.backend != "causal"
            or override_bs is not None  # loglikelihood_rolling's windows
            or self.batch_size == "auto"
            or any(req[0] is None for req in requests)
            or not hasattr(self.model, "get_decoder")
        )
        if stock:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        if not requests:
            return []
        groups: dict[tuple[int, ...], _Group] = {}
        longer = sum(len(ctx) + len(cont) > self.max_length + 1 for _, ctx, cont in requests)
        if longer:
            log.warning(
                "%d of %d loglikelihood requests exceed max_length=%d tokens: truncated from the left, as "
                "lm-eval does",
                longer,
                len(requests),
                self.max_length,
            )
        for i, (_, context, continuation) in enumerate(requests):
            prefix, tail = split(context, continuation, self.max_length)
            key = tuple(prefix)
            groups.setdefault(key, _Group(key)).add(i, tuple(tail), continuation)
        # Widest first pass first (stock sorts longest first): batches of like widths, the widest at once.
        ordered = sorted(groups.values(), key=lambda g: (-g.first_width, g.prefix))
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        pbar = tqdm(
            total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests"
        )
        # Batches and chunks are sized by tokens, within the shapes the preflight counts (jcexp/memory.py,
        # _floor_parts): a first pass of batch_size rows of the longest request, a tail pass of TAIL_ROWS x
        # batch_size rows of the longest continuation. Counting rows instead let short requests that follow a
        # long one run a few at a time, and tails of unequal length padded to the longest of a mixed chunk:
        # on the offline next-sentence task half of the tail pass was padding (bench/eval_floor.py).
        size = int(self.batch_size)
        budget = _Budget(
            tokens=size * max(g.length for g in ordered),
            positions=TAIL_ROWS * size * max(len(t) for g in ordered for t in g.tails),
        )
        for batch in self._batches(ordered, budget.tokens):
            for index, answer in self._score(batch, budget):
                answers[index] = answer
                self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
                pbar.update(1)
        pbar.close()
        assert all(a is not None for a in answers)
        return answers  # type: ignore[return-value]

    @staticmethod
    def _batches(groups: list[_Group], tokens: int) -> list[list[_Group]]:
        """Consecutive groups whose prefixes (or whole requests) run in one forward: as many as fit ``tokens``
        at the batch's longest request (prefix and tail: their keys and values are kept)."""
        batches: list[list[_Group]] = []
        longest = 0  # the current batch's longest request
        for g in groups:
            if batches and (len(batches[-1]) + 1) * max(longest, g.length) <= tokens:
                batches[-1].append(g)
                longest = max(longest, g.length)
            else:
                batches.append([g])
                longest = g.length
        return batches

    def _autocast(self):
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.mixed_precision_dtype,
            enabled=self.mixed_precision_dtype is not None,
        )

    @torch.no_grad()
    def _score(self, batch: list[_Group], budget: _Budget):
        """Yield (request index, (loglikelihood, is_greedy)) for every request of ``batch``.

        First pass, one forward, right padded without a mask as stock's batches: the prefix of every group
        with several tails (keys and values kept), and the whole request of every group with one tail (nothing
        to share: its tail's hidden states are taken from this pass, saving the second forward). Then the tails
        of the shared groups, longest first, as many per forward as ``budget`` allows (fewer, longer forwards:
        on a CPU each forward's per-operation cost is paid per layer; the logits stay batch x continuation
        sized; sorted, a forward's tails are of about one length and little of it is padding)."""
        from transformers import DynamicCache

        decoder = self.model.get_decoder()
        device = self.device
        head_only = self._head_only()
        asked: dict[tuple[int, int], list[tuple[int, list[int]]]] = {}
        for g in batch:
            for index, row, targets in g.requests:
                asked.setdefault((id(g), row), []).append((index, targets))

        def answer(rows, logp, greedy):
            for (g, row), lp, gr in zip(rows, logp, greedy, strict=True):
                for index, targets in asked[(id(g), row)]:
                    cont = torch.tensor(targets, dtype=torch.long, device=lp.device)
                    # As stock: per-position argmax equal to the continuation, log-probs gathered in the
                    # log-softmax's dtype and summed there.
                    is_greedy = bool((gr == cont).all())
                    value = torch.gather(lp, 1, cont.unsqueeze(-1)).squeeze(-1).unsqueeze(0)
                    yield index, (float(value.sum()), is_greedy)

        whole = {id(g) for g in batch if head_only and len(g.tails) == 1}
        first = [(g, g.prefix + next(iter(g.tails)) if id(g) in whole else g.prefix) for g in batch]
        first = [(g, seq) for g, seq in first if seq]
        cache, slot = None, {}
        if first:
            width = max(len(seq) for _, seq in first)
            ids = torch.zeros(len(first), width, dtype=torch.long, device=device)
            for i, (_, seq) in enumerate(first):
                ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long, device=device)
            shared = any(id(g) not in whole for g, _ in first)
            cache = DynamicCache() if shared else None  # no config: full layers, every position kept
            with self._autocast():
                hidden = decoder(input_ids=ids, past_key_values=cache, use_cache=shared).last_hidden_state
            slot = {id(g): i for i, (g, _) in enumerate(first) if id(g) not in whole}
            direct = [(i, g, len(next(iter(g.tails)))) for i, (g, _) in enumerate(first) if id(g) in whole]
            # The head on the scored positions, at most budget.positions at a time (the preflight's logits).
            for part in _chunks(direct, lambda rows: sum(n for *_, n in rows) <= budget.positions):
                lens = [n for *_, n in part]
                picked = torch.cat([hidden[i, len(g.prefix) : len(g.prefix) + n] for i, g, n in part])
                logp, greedy = self._logp(self._head(picked), lens)
                yield from answer([(g, 0) for _, g, _ in part], logp, greedy)
                del logp, greedy, picked
            del hidden
        # Each tail's requests, answered as soon as its chunk is scored: one chunk's log-probs live at a time.
        rows = [(g, row, tail) for g in batch if id(g) not in whole for tail, row in g.tails.items()]
        rows.sort(key=lambda r: (-len(r[2]), slot.get(id(r[0]), -1)))

        def fits(chunk) -> bool:
            # rows x width positions (logits, activations, the tails' own keys and values); rows x longest
            # prefix (the left-padded cache copy, within the first pass's token budget); a tail shorter than 3/4
            # of the chunk's width starts the next forward (less padding than one forward more costs, on the
            # offline suite's tails)
            n, width = len(chunk), len(chunk[0][2])
            return (
                n * width <= budget.positions
                and n * max(len(g.prefix) for g, *_ in chunk) <= budget.tokens
                and 4 * len(chunk[-1][2]) >= 3 * width
            )

        for chunk in _chunks(rows, fits):
            logp, greedy = self._tails([(g, tail) for g, _, tail in chunk], cache, slot, decoder)
            yield from answer([(g, row) for g, row, _ in chunk], logp, greedy)
            del logp, greedy

    def _logp(self, logits: torch.Tensor, lens: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        greedy = logp.argmax(dim=-1)
        return list(logp.split(lens)), list(greedy.split(lens))

    def _tails(self, chunk, cache, slot, decoder) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One forward of a chunk of tails on their prefixes' keys and values; per row the log-softmax
        at its real positions ([tail length, vocab]) and its argmax."""
        from transformers import DynamicCache

        device = self.device
        n = len(chunk)
        lens = [len(tail) for _, tail in chunk]
        plen = [len(g.prefix) for g, _ in chunk]
        width, past = max(lens), max(plen)
        ids = torch.zeros(n, width, dtype=torch.long, device=device)
        for r, (_, tail) in enumerate(chunk):
            ids[r, : lens[r]] = torch.tensor(tail, dtype=torch.long, device=device)
        positions = torch.tensor(plen, device=device).unsqueeze(1) + torch.arange(width, device=device)
        kwargs: dict[str, Any] = {"position_ids": positions}
        if past:
            # Left-padded to the longest prefix: a query's distance to each cached key stays the true one.
            mask = torch.zeros(n, past + width, dtype=torch.long, device=device)
            source = torch.tensor([slot.get(id(g), 0) for g, _ in chunk], device=device)
            # Row r's cached position j - (past - p_r) lands at j; the positions left of it are masked (they
            # take position 0's values). One gather per tensor and layer: on a CPU, per-row copies cost more
            # per operation than they move.
            shift = (
                torch.arange(past, device=device).unsqueeze(0)
                - (past - torch.tensor(plen, device=device))[:, None]
            )
            index = shift.clamp(min=0)[:, None, :, None]
            rows_cache = DynamicCache()
            for layer, entry in enumerate(cache.layers):
                k, v = entry.keys.index_select(0, source), entry.values.index_select(0, source)
                keys = k.gather(2, index.expand(n, k.shape[1], past, k.shape[-1]))
                values = v.gather(2, index.expand(n, v.shape[1], past, v.shape[-1]))
                rows_cache.update(keys, values, layer)
            for r, p in enumerate(plen):
                mask[r, past - p : past + lens[r]] = 1
            kwargs.update(past_key_values=rows_cache, use_cache=True, attention_mask=mask)
        real = torch.tensor(lens, device=device).unsqueeze(1)
        valid = torch.arange(width, device=device).unsqueeze(0) < real
        with self._autocast():
            if self._head_only():
                hidden = decoder(input_ids=ids, **kwargs).last_hidden_state
                logits = self._head(hidden[valid])  # [real positions, vocab]
            else:
                logits = self.model(input_ids=ids, logits_to_keep=0, **kwargs).logits[valid]
        return self._logp(logits, lens)

    def _text_config(self):
        config = self.model.config
        return config.get_text_config() if hasattr(config, "get_text_config") else config

    def _head_only(self) -> bool:
        # The model's own type (a multimodal wrapper's text config would name its text model's type).
        return getattr(self.model.config, "model_type", None) in HEAD_ONLY and (
            self.model.get_output_embeddings() is not None
        )

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The causal LM's logits from its last hidden states, as its forward computes them (HEAD_ONLY)."""
        logits = self.model.get_output_embeddings()(hidden)
        cap = getattr(self._text_config(), "final_logit_softcapping", None)
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits


@dataclass(frozen=True)
class _Budget:
    """A forward's size limits: ``tokens`` (rows x width of a first pass, and of a tail pass's cache copy) and
    ``positions`` (rows x width of a tail pass, and scored positions per head application)."""

    tokens: int
    positions: int


def _chunks(items: list, fits) -> list[list]:
    """Consecutive runs of ``items``, each as long as ``fits`` allows (and at least one item)."""
    out: list[list] = []
    for item in items:
        if out and fits([*out[-1], item]):
            out[-1].append(item)
        else:
            out.append([item])
    return out


class FloorHFLM(FloorMixin, HFLM):
    """lm-eval's HFLM with :class:`FloorMixin`'s loglikelihood requests."""


def with_floor(cls: type) -> type:
    """``cls`` (HFLM or a subclass of it) with :class:`FloorMixin`'s loglikelihood requests."""
    if not issubclass(cls, HFLM):
        raise TypeError(f"{cls.__name__} is not lm-eval's HFLM or a subclass of it")
    if issubclass(cls, FloorMixin):
        return cls
    if cls is HFLM:
        return FloorHFLM
    return type(f"Floor{cls.__name__}", (FloorMixin, cls), {"__module__": cls.__module__})
