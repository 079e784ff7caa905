"""The one tokenization path every task goes through: build a vocabulary, text -> ids, ids -> text.

``--tokens`` chooses the kind:

``char``       characters (:func:`jaxseq.data.text.tokenize`)
``word``       white-space separated words
``bpe``        byte-level BPE, trained with Hugging Face ``tokenizers``
``wordpiece``  byte-level WordPiece (see :mod:`jaxseq.data.subword`)

A task calls :func:`build_vocab` on its *training* texts only (with the
reserved tokens it needs: the language model ``<unk>``, translation ``<pad>
<bos> <eos> <unk>``, a masked LM adds ``<cls> <sep> <mask>``), then
:func:`encode` and :func:`decode` with the vocabulary it built or loaded. Text
given here is already preprocessed (``--preprocess``); nothing else is
normalised, so a subword vocabulary gives ``decode(encode(text)) == text``.

``--vocab-size`` (subwords only) defaults to :func:`default_vocab_size`, which
grows with the number of distinct words of the training text: 256 bytes plus
a quarter of the distinct words (at least 64), rounded up to a multiple of 64
and at most 32000 (about 4k for the 162k English-French pairs' English side).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from jaxseq.data import text as text_lib
from jaxseq.data.subword import SUBWORD_KINDS, SubwordVocab, train_subword
from jaxseq.data.vocab import DEFAULT_RESERVED, Vocab, require_real_tokens
from jaxseq.errors import ConfigError

TOKEN_CHOICES = text_lib.TOKEN_CHOICES + SUBWORD_KINDS
SUBWORD = SUBWORD_KINDS
VOCAB_SIZE_HELP = ("subword vocabulary size, reserved tokens and the 256 bytes included (--tokens bpe/wordpiece "
                   "only; default: 256 + max(64, distinct training words / 4), rounded up to a multiple of 64, "
                   "at most 32000)")


def is_subword(kind: str) -> bool:
    return kind in SUBWORD_KINDS


def check_vocab_size(kind: str, vocab_size: int | None) -> None:
    """The config rule: ``--vocab-size`` belongs to a subword vocabulary (char/word use ``--min-freq``)."""
    if vocab_size is not None and not is_subword(kind):
        raise ConfigError(f"--vocab-size applies to --tokens {' or '.join(SUBWORD_KINDS)}, not --tokens {kind} "
                          "(whose vocabulary is every token seen --min-freq times); drop it or choose a subword kind")


def default_vocab_size(texts: Iterable[str], kind: str = "bpe") -> int:
    """``256 + max(64, distinct words / 4)`` rounded up to a multiple of 64, at most 32000 (WordPiece adds
    its 256 continuation bytes): about 4k for the 162k English-French pairs, 1k for a short book."""
    words: set[str] = set()
    for t in texts:
        words.update(t.split())
    return vocab_size_for_words(len(words), kind)


def vocab_size_for_words(distinct_words: int, kind: str = "bpe") -> int:
    """:func:`default_vocab_size` from the number of distinct white-space separated words (for callers
    that count the words themselves, e.g. `jaxseq prepare`, chunk by chunk)."""
    size = 256 + max(64, distinct_words // 4)
    size = min(32000, -(-size // 64) * 64)
    return size + (256 if kind == "wordpiece" else 0)


def build_vocab(kind: str, texts: Sequence[str], *, min_freq: int = 1, vocab_size: int | None = None,
                reserved_tokens: Sequence[str] = DEFAULT_RESERVED, source: str = "the data",
                what: str = "token", of: str = "the training text") -> Vocab:
    """The vocabulary of the training ``texts`` (already preprocessed) for ``--tokens kind``.

    ``char``/``word``: every token seen ``min_freq`` times, after
    ``reserved_tokens`` (a vocabulary of nothing but reserved tokens is
    refused naming ``--min-freq``). ``bpe``/``wordpiece``: a tokenizer of
    ``vocab_size`` entries (default :func:`default_vocab_size`) whose merges
    are seen at least ``min_freq`` times; ``reserved_tokens`` keep ids
    ``0..k-1`` in the order given. Deterministic: the same texts give the
    same vocabulary.
    """
    if kind in SUBWORD_KINDS:
        size = default_vocab_size(texts, kind) if vocab_size is None else vocab_size
        return train_subword(texts, kind, size, min_freq=min_freq, reserved_tokens=reserved_tokens)
    check_vocab_size(kind, vocab_size)
    tokens = [t for text in texts for t in text_lib.tokenize(text, kind)]
    vocab = Vocab.build(tokens, min_freq=min_freq, reserved_tokens=reserved_tokens)
    require_real_tokens(vocab, tokens, min_freq=min_freq, source=source, what=what, of=of)
    return vocab


def encode(vocab: Vocab, text: str, kind: str) -> np.ndarray:
    """``int32`` ids of ``text``: through the subword tokenizer, or char/word tokens looked up
    (unknown ones, and words spelled like a reserved token, become ``<unk>``)."""
    if isinstance(vocab, SubwordVocab):
        return vocab.encode_text(text)
    if kind in SUBWORD_KINDS:
        raise ConfigError(f"--tokens {kind} needs a subword vocabulary, and this one is plain; the run's files "
                          "do not match its config")
    return vocab.encode(text_lib.tokenize(text, kind))


def unknown(vocab: Vocab, text: str, kind: str) -> list[str]:
    """The token types of ``text`` that :func:`encode` makes ``<unk>`` (never any for subwords)."""
    if isinstance(vocab, SubwordVocab):
        return []
    return vocab.unknown(text_lib.tokenize(text, kind))


def decode(vocab: Vocab, ids: Iterable[int], kind: str) -> str:
    """The text of ``ids``: exact for subwords; characters joined, or words joined by single spaces."""
    if isinstance(vocab, SubwordVocab):
        return vocab.decode_text(ids)
    return text_lib.detokenize(vocab.decode(ids), "char" if kind == "char" else "word")

