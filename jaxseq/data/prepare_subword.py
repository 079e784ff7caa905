"""`jaxseq prepare --tokens bpe|wordpiece`: subword shards, as `train lm` tokenizes a file in memory.

The passes of :func:`subword_passes` run in the process pool of
:func:`jaxseq.data.prepare.prepare` (the worker functions here read the
settings and the saved vocabulary its initializer and ``_use_vocab`` set), in
chunk order, so the shards are the same bytes whatever ``--workers``. Tests:
``tests/test_shards.py`` (the ids equal ``load_corpus``'s for ``bpe`` and
``wordpiece``, with and without ``--preprocess d2l``).
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxseq.data import prepare as prep
from jaxseq.data import shards
from jaxseq.data import text as text_lib
from jaxseq.data import tokens as tokens_lib
from jaxseq.data.lm import LMDataConfig
from jaxseq.data.prepare import Chunk
from jaxseq.data.vocab import UNK, Vocab
from jaxseq.errors import DataError


@dataclass(frozen=True)
class Piece:
    """A chunk as the subword path reads it. ``give``: its text's last space moves to the next piece;
    ``take``: it starts with the space the previous piece gave (:func:`piece_text`). ``cut``: the character
    of its text where the validation part begins (``None``: not placed yet)."""

    chunk: Chunk
    give: bool = False
    take: bool = False
    cut: int | None = None


def piece_text(piece: Piece, preprocess: str, raw: str | None = None) -> str:
    """The preprocessed text of a chunk, cut where the byte-level pre-tokenizer cuts the whole text.

    Without preprocessing a chunk ends after a newline and the tokenizer encodes
    line by line, so the chunks' ids are the ids of the whole text. With ``d2l``
    no newline is left (every run of non-letters is one space) and a chunk ends
    in the space before the next chunk's first letter; the pre-tokenizer (GPT-2's
    rule: a word takes the one space before it, `` ?[letters]+``, and a space run
    keeps its last space for the next word) spells ``"a b"`` as ``a``, `` b``,
    while a text ending in that space would make it a word of its own. So the
    space moves to the next piece (``give``/``take``, planned from every piece's
    ends by :func:`subword_passes`): each cut falls between a word and the
    space-led next word, a boundary of the whole text's pre-tokens.
    """
    text = text_lib.preprocess(prep.read_chunk(piece.chunk) if raw is None else raw, preprocess)
    if piece.give:
        text = text[:-1]
    return " " + text if piece.take else text


def _subword_count(piece: Piece) -> tuple[int, bool, bool, bool]:
    """``(characters, has non-space text, starts with a space, ends with a space)`` of a piece's own text."""
    raw = prep.read_chunk(piece.chunk)
    text = piece_text(piece, prep._CONFIG.preprocess, raw)
    return len(text), bool(raw.strip()), text[:1] == " ", text[-1:] == " "


def _subword_words(piece: Piece) -> set[str]:
    """The distinct words of a piece's training part (for the default ``--vocab-size``)."""
    return set(piece_text(piece, prep._CONFIG.preprocess)[: piece.cut].split())


def _subword_train_text(piece: Piece) -> str:
    return piece_text(piece, prep._CONFIG.preprocess)[: piece.cut]


def _subword_encode(job: tuple[Piece, str, bool]) -> tuple[np.ndarray, np.ndarray] | tuple[int, int]:
    """``(train ids, valid ids)`` of a piece, encoded with the tokenizer saved beside ``vocab_path``, each
    part on its own as in memory; with ``count_only`` just their lengths."""
    piece, vocab_path, count_only = job
    prep._use_vocab(vocab_path)
    text = piece_text(piece, prep._CONFIG.preprocess)
    parts = (tokens_lib.encode(prep._VOCAB, text[: piece.cut], prep._CONFIG.tokens),
             tokens_lib.encode(prep._VOCAB, text[piece.cut:], prep._CONFIG.tokens))
    return (len(parts[0]), len(parts[1])) if count_only else parts


def subword_passes(corpus: str, out: Path, config: LMDataConfig, options: "prep.PrepareConfig", chunks: list[Chunk],
                    files: list[Path], pool, workers: int) -> tuple[Vocab, np.dtype, int, int, list[dict]]:
    """The passes of ``--tokens bpe|wordpiece``, as `train lm` does it in memory (``_load_subword_corpus``):
    the last ``--valid-fraction`` of the *characters* is validation and the tokenizer is trained on the rest.

    1. count the characters of every piece (:func:`piece_text`) and place the cut;
    2. (no ``--vocab-size``) the distinct words of the training part, for :func:`tokens.vocab_size_for_words`;
    3. train the tokenizer (:func:`subword.train_subword`, Hugging Face's ``train_from_iterator``) on an
       iterator over the training pieces, read by the workers ``2 x workers`` at a time;
    4. encode every piece in the workers (the tokenizer read from ``DIR/tokenizer.json``) and count the ids,
       so the shard lengths are known; 5. encode again and write.

    The ids are those of the files' texts concatenated when every file ends with a newline (else a file's
    last line and the next file's first are encoded apart).
    """
    from jaxseq.data.subword import train_subword

    pieces = [Piece(c) for c in chunks]
    # pass 1: characters, and the spaces that move (piece_text)
    sizes, ends, has_text = [], [], collections.defaultdict(bool)
    for piece, (n, text, starts_space, ends_space) in zip(pieces, prep._mapped(_subword_count, pieces, pool, workers)):
        sizes.append(n)
        ends.append((n > 0 and not starts_space, ends_space))
        has_text[piece.chunk.path] |= text
    for path in map(str, files):
        if not has_text[path]:
            raise DataError(f"{path}: is empty; give a file with some text in it (or remove it from the corpus)")
    if config.preprocess == "d2l":
        give = [ends[i][1] and i + 1 < len(ends) and ends[i + 1][0] for i in range(len(ends))]
        pieces = [Piece(c, g, i > 0 and give[i - 1]) for i, (c, g) in enumerate(zip(chunks, give))]
        sizes = [n - g + t for n, p in zip(sizes, pieces) for g, t in [(p.give, p.take)]]
    n_chars = sum(sizes)
    n_train_chars = n_chars - int(round(n_chars * config.valid_fraction))
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    pieces = [dataclasses.replace(p, cut=int(min(max(n_train_chars - s, 0), n))) for p, s, n in
              zip(pieces, starts[:-1].tolist(), sizes)]
    training = [p for p in pieces if p.cut > 0]
    # pass 2: the default vocabulary size
    size = config.vocab_size
    if size is None:
        words: set[str] = set()
        for w in prep._mapped(_subword_words, training, pool, workers):
            words |= w
        size = tokens_lib.vocab_size_for_words(len(words), config.tokens)
    # pass 3: the tokenizer, trained on the training pieces as they are read
    vocab = train_subword(prep._mapped(_subword_train_text, training, pool, workers), config.tokens, size,
                          min_freq=config.min_freq, reserved_tokens=(UNK,))
    dtype = shards.compact_dtype(len(vocab))
    vocab.save(out / shards.VOCAB)                      # and tokenizer.json beside it: the workers read both
    vocab_path = str((out / shards.VOCAB).resolve())
    # pass 4: the number of ids of each part
    n_train = n_valid = 0
    for a, b in prep._mapped(_subword_encode, [(p, vocab_path, True) for p in pieces], pool, workers):
        n_train, n_valid = n_train + a, n_valid + b
    if n_train + n_valid < 4:
        raise DataError(f"{corpus}: only {n_train + n_valid} tokens after preprocessing; give more text")
    if n_valid < 2:
        raise DataError(f"{corpus}: the validation split would hold {n_valid} token(s) of {n_train + n_valid}; "
                        "raise --valid-fraction or give more text")
    # pass 5: encode and write
    sink = prep._Sink(out, dtype, n_train, n_valid, options.shard_tokens, vocab.fingerprint())
    for train_ids, valid_ids in prep._mapped(_subword_encode, [(p, vocab_path, False) for p in pieces], pool, workers):
        sink.write(train_ids)
        sink.write(valid_ids)
    return vocab, dtype, n_train, n_valid, sink.close()
