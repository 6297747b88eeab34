"""One BOS wherever the model's tokenizer adds one (issue 27): rolling perplexity, loglikelihood and generation
through lm-eval's HFLM with jcexp's fix (lm_eval_worker.one_bos, which evaluate_lm applies in process and in the
subprocess evaluator's child), and the calibration windows (jcexp/data.py). On tiny models whose tokenizers start
every text with <s> (tiny_gemma3, as Gemma 3; the tiny Llama given one) and one whose tokenizer adds none (the
tiny Llama as it is, as SmolLM2): stock lm-eval 0.4.13 scores <s> <s> text in rolling perplexity."""

from __future__ import annotations

import pytest

from jcexp import lm_eval_worker as worker
from jcexp.models import TinyRandomGemma3, TinyRandomLlama

TEXT = "The quick brown fox jumps over the lazy dog near the river bank."


@pytest.fixture(scope="module", params=["gemma3", "llama_bos", "llama_plain"])
def tiny(request, shared_cache):
    cache = str(shared_cache / "models")
    source = {
        "gemma3": lambda: TinyRandomGemma3(cache),
        "llama_bos": lambda: TinyRandomLlama(cache, add_bos=True),
        "llama_plain": lambda: TinyRandomLlama(cache),
    }[request.param]()
    model, tokenizer = source.load()
    return request.param, model, tokenizer


def _hflm(model, tokenizer, fixed: bool = True):
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, max_length=64)
    return worker.one_bos(lm) if fixed else lm


def _spy(lm, attr: str) -> list:
    """Record the arguments of lm.<attr> (an instance attribute, as chunk_requests wraps them)."""
    seen: list = []
    original = getattr(lm, attr)

    def spy(*args, **kwargs):
        seen.append((args, kwargs))
        return original(*args, **kwargs)

    setattr(lm, attr, spy)
    return seen


def _request(kind: str, arguments: tuple):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=arguments, idx=0)


def _starts(tokens: list[int], tokenizer) -> int:
    """How many BOS tokens the sequence starts with."""
    n = 0
    while n < len(tokens) and tokens[n] == tokenizer.bos_token_id:
        n += 1
    return n


def _adds_bos(tokenizer) -> bool:
    return tokenizer(TEXT)["input_ids"][0] == tokenizer.bos_token_id


def test_rolling_perplexity_reads_one_bos_then_the_text(tiny):
    name, model, tokenizer = tiny
    assert _adds_bos(tokenizer) == (name != "llama_plain")
    lm = _hflm(model, tokenizer)
    seen = _spy(lm, "_loglikelihood_tokens")
    lm.loglikelihood_rolling([_request("loglikelihood_rolling", (TEXT,))], disable_tqdm=True)
    (_, context, continuation) = seen[0][1]["requests"][0]
    window = list(context) + list(continuation)
    text = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    # The window's context is the one prefix token (the BOS: both tokenizers have one), then the text's tokens,
    # every one scored; no BOS among the predictions.
    assert list(context) == [tokenizer.bos_token_id] and _starts(window, tokenizer) == 1
    assert list(continuation) == text[: len(continuation)] and len(continuation) == min(len(text), 64)


def test_stock_lm_eval_doubles_the_bos_where_the_tokenizer_adds_one(tiny):
    """What one_bos fixes (lm-eval issue #3333); a tokenizer that adds none is unchanged by it."""
    name, model, tokenizer = tiny
    lm = _hflm(model, tokenizer, fixed=False)
    seen = _spy(lm, "_loglikelihood_tokens")
    lm.loglikelihood_rolling([_request("loglikelihood_rolling", (TEXT,))], disable_tqdm=True)
    (_, context, continuation) = seen[0][1]["requests"][0]
    assert _starts(list(context) + list(continuation), tokenizer) == (1 if name == "llama_plain" else 2)


def test_loglikelihood_and_generation_start_with_one_bos(tiny):
    name, model, tokenizer = tiny
    expected = 0 if name == "llama_plain" else 1
    lm = _hflm(model, tokenizer)
    seen = _spy(lm, "_loglikelihood_tokens")
    lm.loglikelihood([_request("loglikelihood", ("The quick brown", " fox"))], disable_tqdm=True)
    lm.loglikelihood([_request("loglikelihood", ("", "The quick brown fox"))], disable_tqdm=True)
    (_, context, _), (_, empty_context, continuation) = (seen[0][0][0][0], seen[1][0][0][0])
    assert _starts(list(context), tokenizer) == expected
    # An empty context: the prefix token (the BOS) is the context, the text follows without another.
    assert list(empty_context) == [tokenizer.bos_token_id] and _starts(list(continuation), tokenizer) == 0

    generated = _spy(lm, "_model_generate")
    lm.generate_until(
        [_request("generate_until", ("The quick brown", {"max_gen_toks": 1, "until": ["\n"]}))],
        disable_tqdm=True,
    )
    ids = generated[0][1]["context"][0].tolist()
    assert _starts(ids, tokenizer) == expected


def test_evaluate_lm_applies_it_in_process_and_in_the_child(tiny, monkeypatch):
    """evaluate_lm is the one path of both evaluators (jcexp.evaluate.evaluate and lm_eval_worker.run)."""
    _, model, tokenizer = tiny
    lm = _hflm(model, tokenizer, fixed=False)

    class Reached(Exception):
        pass

    def stop(lm_, size):
        assert lm_.tok_encode.__name__ == "tok_encode" and "one_bos" in lm_.tok_encode.__qualname__
        raise Reached

    monkeypatch.setattr(worker, "chunk_requests", stop)
    with pytest.raises(Reached):
        worker.evaluate_lm(lm, {"seed": 0}, task_manager=None, items=[])


def test_calibration_windows_start_as_the_tokenizer_starts_a_text(tiny):
    from jcexp.data import LocalProseCalibration, text_start

    name, _, tokenizer = tiny
    windows = LocalProseCalibration("local", num_samples=4, seq_len=32, seed=0, options={}).dataset(tokenizer)
    expected = 0 if name == "llama_plain" else 1
    assert text_start(tokenizer) == ([tokenizer.bos_token_id] if expected else [])
    for ids in windows["input_ids"]:
        assert len(ids) == 32 and _starts(ids, tokenizer) == expected
