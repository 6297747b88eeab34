"""A SentencePiece-with-scores tokenizer (Gemma's), rebuilt from a GGUF file's own vocabulary.

Why: transformers 5's GGUF conversion mishandles this vocabulary. On Gemma 3 270M it splits
"The quick brown fox" into ``The ▁qu ick ▁b ro wn ▁f ox`` and the model's perplexity on plain English goes to
about 1,200. The GGUF carries everything needed to do it right: ``tokenizer.ggml.tokens``, their
``scores`` and ``token_type``. SentencePiece's BPE encoder repeatedly joins the adjacent pair whose
concatenation is a piece with the highest score; a ``tokenizers`` BPE does the same when its merge list holds
every split (a, b) of each piece, ranked by the piece's score (higher score = earlier merge).

The rest follows SentencePiece: spaces become ``▁`` (no prefix space: the GGUF says add_space_prefix=False),
characters outside the vocabulary fall back to the ``<0xXX>`` byte tokens, control tokens are special, the
user-defined pieces (newline and space runs, HTML tags) are matched whole in the raw text, and the decoder
undoes all of it. Reads the GGUF with the ``gguf`` package; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# llama.cpp's token types (gguf.TokenType), as stored in tokenizer.ggml.token_type.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "▁"  # U+2581, SentencePiece's visible space
# In the converted checkpoint's cache key (jcexp.models.PackagedGGUF): bump it when the rebuild changes.
VERSION = 1


@dataclass(frozen=True)
class GGUFVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool


def read_vocab(path: str | Path) -> GGUFVocab:
    """The tokenizer metadata of a GGUF file (SentencePiece models only: tokenizer.ggml.model == 'llama')."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path), "r").fields

    def array(key: str) -> list:
        field = fields[key]
        return [field.parts[i] for i in field.data]

    def scalar(key: str, default=None):
        field = fields.get(key)
        return default if field is None else field.parts[field.data[0]][0].item()

    model = bytes(array("tokenizer.ggml.model")[0]).decode() if "tokenizer.ggml.model" in fields else None
    if model != "llama":
        raise ValueError(
            f"{path}: tokenizer.ggml.model is {model!r}; only SentencePiece ('llama') is rebuilt"
        )
    if "tokenizer.ggml.scores" not in fields:
        raise ValueError(f"{path}: no tokenizer.ggml.scores, so no merge order to rebuild")
    return GGUFVocab(
        tokens=[bytes(p).decode("utf-8") for p in array("tokenizer.ggml.tokens")],
        scores=[float(p[0]) for p in array("tokenizer.ggml.scores")],
        types=[int(p[0]) for p in array("tokenizer.ggml.token_type")],
        bos_id=scalar("tokenizer.ggml.bos_token_id"),
        eos_id=scalar("tokenizer.ggml.eos_token_id"),
        unk_id=scalar("tokenizer.ggml.unknown_token_id"),
        pad_id=scalar("tokenizer.ggml.padding_token_id"),
        add_bos=bool(scalar("tokenizer.ggml.add_bos_token", True)),
        add_eos=bool(scalar("tokenizer.ggml.add_eos_token", False)),
        add_space_prefix=bool(scalar("tokenizer.ggml.add_space_prefix", False)),
    )


def merges_by_score(vocab: GGUFVocab) -> list[tuple[str, str]]:
    """Every split (a, b) of a normal piece into two normal pieces, highest-scoring result first. Ties (the
    splits of one piece) go shorter left part first, so the order is fixed."""
    normal = {t: i for i, (t, k) in enumerate(zip(vocab.tokens, vocab.types, strict=True)) if k == NORMAL}
    ranked = []
    for piece, i in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-vocab.scores[i], i, cut, left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_tokenizer(vocab: GGUFVocab):
    """A ``tokenizers.Tokenizer`` equivalent to the GGUF's SentencePiece BPE."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    unk = vocab.tokens[vocab.unk_id] if vocab.unk_id is not None else None
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(vocab.tokens)},
        merges=merges_by_score(vocab),
        unk_token=unk,
        byte_fallback=True,
        fuse_unk=True,
    )
    tok = Tokenizer(bpe)
    steps = [normalizers.Replace(" ", SPACE)]
    if vocab.add_space_prefix:
        steps.insert(0, normalizers.Prepend(SPACE))
    tok.normalizer = normalizers.Sequence(steps)
    decode = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if vocab.add_space_prefix:
        decode.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(decode)
    # Control tokens are special (skipped when decoding with skip_special_tokens); user-defined pieces are
    # ordinary text matched whole before normalization (they hold raw spaces, which the normalizer would turn
    # into ▁). Byte tokens stay in the BPE vocabulary only, for byte fallback.
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, k in zip(vocab.tokens, vocab.types, strict=True)
            if k == USER_DEFINED
        ]
    )
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(vocab.tokens, vocab.types, strict=True)
            if k == CONTROL
        ]
    )
    bos = vocab.tokens[vocab.bos_id] if vocab.bos_id is not None else None
    eos = vocab.tokens[vocab.eos_id] if vocab.eos_id is not None else None
    single, pair, specials = "$A", "$A $B:1", []
    if vocab.add_bos and bos:
        single, pair = f"{bos} {single}", f"{bos} $A {bos}:1 $B:1"
        specials.append((bos, vocab.bos_id))
    if vocab.add_eos and eos:
        single, pair = f"{single} {eos}", f"{pair} {eos}:1"
        specials.append((eos, vocab.eos_id))
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    return tok


def hf_tokenizer(path: str | Path):
    """The rebuilt tokenizer as a transformers fast tokenizer, with bos/eos/pad/unk from the GGUF."""
    from transformers import PreTrainedTokenizerFast

    vocab = read_vocab(path)

    def name(i):
        return vocab.tokens[i] if i is not None else None

    return PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(vocab),
        bos_token=name(vocab.bos_id),
        eos_token=name(vocab.eos_id),
        unk_token=name(vocab.unk_id),
        pad_token=name(vocab.pad_id),
        add_bos_token=vocab.add_bos,
        add_eos_token=vocab.add_eos,
    )
