"""jcexp/hf_floor.py: loglikelihoods at the compute floor give stock HFLM's answers (fp32, <= 1e-4 absolute, the
same greedy flags, the same per-item correctness), each distinct context runs once, the head runs at scored
positions only, and the evaluators use it without changing the config hash."""

import pytest
import torch
from hydra.utils import instantiate
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from jcexp import hf_floor, memory
from jcexp import lm_eval_worker as worker
from jcexp.evaluate import evaluate
from jcexp.hf_floor import FloorHFLM, FloorMixin, split, with_floor
from jcexp.results import task_config_hash

from .conftest import TINY

MODELS = ("tiny_random", "tiny_gemma3")  # tiny_gemma3: sliding window 32, so contexts here slide
TOL = 1e-4
MAX_LENGTH = 48


def _load(compose, model: str):
    cfg = compose(*TINY, f"model={model}")
    model, tokenizer = instantiate(cfg.model.source).load()
    return cfg, model.eval(), tokenizer


def _pair(model, tokenizer, batch_size: int, max_length: int = MAX_LENGTH) -> tuple[HFLM, FloorHFLM]:
    kw = {"pretrained": model, "tokenizer": tokenizer, "batch_size": batch_size, "max_length": max_length}
    return HFLM(**kw), FloorHFLM(**kw)


def _greedy(model, context: list[int], n: int) -> list[int]:
    """The model's own argmax continuation of ``context``: requests whose is_greedy flag is True."""
    ids = list(context)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(context) :]


def _token_requests(model, vocab: int) -> list[tuple[tuple[str, str], list[int], list[int]]]:
    """Token-level requests as TemplateLM hands them to _loglikelihood_tokens: contexts shared by continuations
    of different lengths, multi-token and greedy continuations, one-token continuations of one context (stock's
    own cache), contexts longer than max_length (left truncation; one whose continuation fills max_length)."""
    g = torch.Generator().manual_seed(0)

    def toks(n: int) -> list[int]:
        return torch.randint(4, vocab, (n,), generator=g).tolist()

    reqs = []
    for n_ctx in (40, 12, 1):
        ctx = toks(n_ctx)
        conts = [toks(1), toks(1), toks(3), toks(7), _greedy(model, ctx, 1), _greedy(model, ctx, 4)]
        reqs += [((f"c{n_ctx}", str(i)), ctx, c) for i, c in enumerate(conts)]
    long = toks(3 * MAX_LENGTH)
    for i, c in enumerate([toks(2), toks(9), _greedy(model, long[-MAX_LENGTH:], 3), toks(MAX_LENGTH)]):
        reqs.append((("long", str(i)), long, c))
    return reqs


@pytest.mark.parametrize("name", MODELS)
def test_token_requests_score_as_stock(compose, name):
    _, model, tokenizer = _load(compose, name)
    reqs = _token_requests(model, model.config.vocab_size)
    for batch_size in (3, 64):  # 3: a context's tails split over forwards, groups over batches
        stock, floor = _pair(model, tokenizer, batch_size)
        want = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
        got = floor._loglikelihood_tokens(reqs, disable_tqdm=True)
        assert len(got) == len(want) == len(reqs)
        diff = max(abs(a[0] - b[0]) for a, b in zip(want, got, strict=True))
        assert diff <= TOL, f"{name} batch {batch_size}: max |loglik diff| {diff}"
        assert [a[1] for a in got] == [b[1] for b in want]
        assert sum(a[1] for a in want) >= 4, "too few greedy requests: the flags compare nothing"


@pytest.mark.parametrize("name", MODELS)
def test_strings_empty_context_and_response_cache_as_stock(compose, name):
    """Through loglikelihood(): the base class's tokenization (an empty context takes the prefix token), and
    the response cache gets stock's keys and answers."""
    _, model, tokenizer = _load(compose, name)
    texts = [
        ("The river ran under the old stone bridge and", " the boat"),
        ("The river ran under the old stone bridge and", " a heron waited by the water"),
        ("The river ran under the old stone bridge and ", "it"),  # trailing space moves to the continuation
        ("", "The river"),
        ("", " ran under the bridge"),
    ]
    reqs = [Instance("loglikelihood", {}, args, i) for i, args in enumerate(texts)]
    seen = []
    for lm in _pair(model, tokenizer, 2):
        hook = Recorder()
        lm.cache_hook = hook
        answers = lm.loglikelihood(reqs, disable_tqdm=True)
        seen.append((answers, hook.partials))
    (want, want_cache), (got, got_cache) = seen
    assert max(abs(a[0] - b[0]) for a, b in zip(want, got, strict=True)) <= TOL
    assert [a[1] for a in got] == [b[1] for b in want]
    assert sorted(got_cache) == sorted(want_cache) == sorted(("loglikelihood", t) for t in texts)
    assert all(abs(got_cache[k][0] - want_cache[k][0]) <= TOL for k in want_cache)


class Recorder:
    """lm-eval's CacheHook as HFLM calls it (add_partial per answered request)."""

    def __init__(self):
        self.partials = {}

    def add_partial(self, attr, req, res):
        self.partials[(attr, req)] = res


@pytest.mark.parametrize("name", MODELS)
def test_each_context_runs_once_and_the_head_only_at_scored_positions(compose, name):
    """3 contexts of 20 tokens, 4 continuations each (1 to 4 tokens): one forward of the 3 prefixes (19 tokens),
    the 12 tails longest first in forwards of like widths (4 and 3, then 2, then 1: a tail under 3/4 of the
    forward's width starts the next), and the head on the 3 x (1+2+3+4) scored positions alone."""
    _, model, tokenizer = _load(compose, name)
    g = torch.Generator().manual_seed(1)
    reqs = []
    for c in range(3):
        ctx = torch.randint(4, 512, (20,), generator=g).tolist()
        for n in range(1, 5):
            reqs.append(((str(c), str(n)), ctx, torch.randint(4, 512, (n,), generator=g).tolist()))
    _, floor = _pair(model, tokenizer, 16)
    calls, head = [], []
    hooks = [
        model.get_decoder().register_forward_pre_hook(
            lambda _m, _a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True
        ),
        model.get_output_embeddings().register_forward_hook(lambda _m, a, _o: head.append(a[0].shape[:-1])),
    ]
    try:
        floor._loglikelihood_tokens(reqs, disable_tqdm=True)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [(3, 19), (6, 4), (3, 2), (3, 1)]
    assert sum(torch.Size(s).numel() for s in head) == 3 * (1 + 2 + 3 + 4)
    # A context with one continuation has nothing to share: its whole request runs once, in the first pass.
    calls.clear(), head.clear()
    hooks = [
        model.get_decoder().register_forward_pre_hook(
            lambda _m, _a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True
        ),
        model.get_output_embeddings().register_forward_hook(lambda _m, a, _o: head.append(a[0].shape[:-1])),
    ]
    try:
        floor._loglikelihood_tokens(reqs[3::4], disable_tqdm=True)  # the 4-token continuation of each context
    finally:
        for h in hooks:
            h.remove()
    assert calls == [(3, 23)] and sum(torch.Size(s).numel() for s in head) == 3 * 4
    assert hf_floor.TAIL_ROWS == memory.FLOOR_TAIL_ROWS  # the preflight counts the tail pass's rows


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("tiny_random", ()),
        ("tiny_gemma3", ("benchmark.limit=8", "~benchmark.perplexity.jc_prose_ppl")),
    ],  # CI's time
)
def test_tiny_benchmark_items_unchanged(compose, name, overrides):
    """benchmark=tiny's tasks through jcexp's in-process evaluation, stock against the floor: every item's
    correctness equal; rolling perplexity stays on lm-eval's own path (equal bit for bit)."""
    cfg = compose(*TINY, f"model={name}", *overrides)
    model, tokenizer = instantiate(cfg.model.source).load()
    stock = evaluate(model, tokenizer, cfg.benchmark, cfg.seed, floor=False)
    floor = evaluate(model, tokenizer, cfg.benchmark, cfg.seed)
    assert (stock.settings["lm_class"], floor.settings["lm_class"]) == ("HFLM", "FloorHFLM")
    assert floor.items["scores"] == stock.items["scores"]
    assert all(v["items"] for v in stock.items["scores"].values())
    assert floor.items["perplexity"] == stock.items["perplexity"]
    for task, score in stock.scores.items():
        assert floor.scores[task].value == score.value


def test_split_is_stock_truncation():
    assert split([1, 2, 3], [4, 5], 10) == ([1, 2], [3, 4])
    assert split([1], [4, 5], 10) == ([], [1, 4])
    # (1..6 + 7,8)[-5:] = 4..8; its input 4..7, last two positions scored
    assert split([1, 2, 3, 4, 5, 6], [7, 8], 4) == ([4, 5], [6, 7])
    assert split([1, 2, 3], [4, 5, 6, 7], 4) == ([], [3, 4, 5, 6])
    with pytest.raises(ValueError, match="exceeds max_length"):
        split([1], [2] * 5, 4)
    with pytest.raises(ValueError, match="empty"):
        split([], [2], 4)


def test_evaluators_use_it_and_the_hash_does_not_change(compose):
    cfg = compose(*TINY)
    assert instantiate(cfg.evaluator).floor is True
    assert task_config_hash(compose(*TINY, "evaluator.floor=false")) == task_config_hash(cfg)
    sub = compose(*TINY, "evaluator=hf_subprocess")
    evaluator = instantiate(sub.evaluator)
    spec = evaluator.spec(sub.benchmark, sub.seed, checkpoint=".")
    assert spec["floor"] is True
    cls = worker.model_class(spec)  # loaded by path, as in a child without jcexp
    assert cls.__name__ == "FloorHFLM" and issubclass(cls, HFLM)
    assert worker.model_class({**spec, "floor": False}) is HFLM
    assert issubclass(with_floor(type("Custom", (HFLM,), {})), FloorMixin)
    with pytest.raises(TypeError):
        with_floor(object)


@pytest.mark.parametrize("name", MODELS)
def test_forwards_stay_within_the_token_budgets_the_preflight_counts(compose, name):
    """Every first-pass forward holds at most batch_size x the longest request tokens, every tail forward at
    most TAIL_ROWS x batch_size x the longest continuation positions (jcexp/memory.py _floor_parts' shapes),
    and the empty request list answers nothing."""
    _, model, tokenizer = _load(compose, name)
    size = 3
    _, floor = _pair(model, tokenizer, size)
    assert floor._loglikelihood_tokens([], disable_tqdm=True) == []
    g = torch.Generator().manual_seed(2)
    # 30 three-token continuations of one two-token context: the tail pass's position budget binds (18)
    many = [(("m", str(i)), [5, 6], torch.randint(4, 512, (3,), generator=g).tolist()) for i in range(30)]
    for reqs in (_token_requests(model, model.config.vocab_size), many):
        longest = max(min(len(c) + len(k), MAX_LENGTH + 1) - 1 for _, c, k in reqs)
        longest_cont = max(len(k) for _, _, k in reqs)
        first, tails = [], []

        def record(_m, _a, kw, first=first, tails=tails):
            rows, width = kw["input_ids"].shape
            (tails if "position_ids" in kw else first).append(rows * width)

        hook = model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
        try:
            floor._loglikelihood_tokens(reqs, disable_tqdm=True)
        finally:
            hook.remove()
        assert first and tails
        assert max(first) <= size * longest
        assert max(tails) <= hf_floor.TAIL_ROWS * size * longest_cont
