"""Translation data: sentence pairs -> splits and vocabularies -> batches.

The pieces live in three modules, read in this order:

* :mod:`jaxseq.data.pairs` reads a TSV file (or a registered dataset, or a
  generated task such as ``dates``) strictly into :class:`Pair` s of tokens;
* this module splits the pairs into train / validation / test, builds the
  vocabularies from the training split and ties everything together in
  :class:`TranslationData` (:func:`load_translation`);
* :mod:`jaxseq.data.pair_batches` turns a split into ids and length-bucketed,
  resumable batches (``{"src", "src_len", "tgt_in", "tgt_out", "weights",
  "tgt_len", "index"}``).

The names of the other two modules are re-exported here, so
``from jaxseq.data import translation as tr; tr.iter_pairs(...)`` keeps
working.

Splits
    ``max_pairs`` takes the *first* pairs in file order. ``split="random"``
    deals them into train / validation / test by a seeded permutation (each
    split keeps file order); ``split="head"`` keeps file order: the first
    ``1 - valid_fraction - test_fraction`` are training, then validation, then
    test. D2L's fra-eng setting (the first 512 pairs train, the next 128
    validate) is ``max_pairs=640, split="head", valid_fraction=0.2,
    test_fraction=0``. With ``overflow="drop"`` pairs longer than ``max_len``
    are removed before the split and counted in
    :attr:`TranslationData.dropped` (``truncate``, the default, cuts them when
    they are encoded; see :mod:`jaxseq.data.pair_batches`).

Vocabularies
    Separate source and target vocabularies (or one joint vocabulary with
    ``joint_vocab``), built from the *training* split only through
    :func:`jaxseq.data.tokens.build_vocab`, reserve ``<pad> <bos> <eos> <unk>``
    (``<pad>`` is 0); words seen fewer than ``min_freq`` times become
    ``<unk>``. With ``tokens`` ``bpe`` / ``wordpiece`` a sentence is its
    normalised words joined by single spaces, cut into byte-level subwords
    (never ``<unk>``); ``--max-len`` then counts subwords, and a decoded
    translation is exactly such a sentence, so BLEU compares like with like.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from jaxseq.config import Config, option
from jaxseq.data import tokens as tokens_lib
from jaxseq.data.epochs import fold_rng
from jaxseq.data.pair_batches import (BUCKET_CHOICES, Batch, EncodedPairs, SourceEncoding, TokenBatches,
                                      TranslationBatches, bucket_widths, check_vocab, decode_target, encode_pairs,
                                      encode_source, token_rows,
                                      eval_batches, fit_width, source_batch)
from jaxseq.data.pairs import (GENERATED_TASKS, ON_BAD_LINE_CHOICES, PREPROCESS_CHOICES, GeneratedTask, Pair,
                               first_two_warning, gc_paused, iter_pairs, normalize, pair_bytes, read_pairs,
                               summarize_skipped, tokenize)
from jaxseq.data.text import warn
from jaxseq.data.vocab import DEFAULT_RESERVED, Vocab, count_reserved, reserved_warning
from jaxseq.errors import ConfigError, DataError

__all__ = [
    # this module
    "TranslationDataConfig", "TranslationData", "load_translation", "split_pairs", "split_sizes", "build_vocabs",
    "count_reserved_in_pairs", "SPLIT_CHOICES", "OVERFLOW_CHOICES", "SPLITS",
    # re-exported from jaxseq.data.pairs
    "Pair", "iter_pairs", "read_pairs", "pair_bytes", "normalize", "tokenize", "summarize_skipped",
    "first_two_warning", "GeneratedTask", "GENERATED_TASKS", "PREPROCESS_CHOICES", "ON_BAD_LINE_CHOICES",
    # re-exported from jaxseq.data.pair_batches
    "Batch", "EncodedPairs", "TranslationBatches", "TokenBatches", "token_rows", "SourceEncoding", "encode_pairs",
    "eval_batches",
    "encode_source", "source_batch", "decode_target", "bucket_widths", "fit_width", "check_vocab",
    "BUCKET_CHOICES",
]

SPLIT_CHOICES = ("random", "head")
OVERFLOW_CHOICES = ("truncate", "drop")
SPLITS = ("train", "valid", "test")
SPLIT_STREAM = 1        # fold_rng(seed, SPLIT_STREAM) deals the pairs into splits
_RESERVED_BYTES = re.compile(rb"(?i)<(?:pad|bos|eos|unk)>")   # a cheap test before counting reserved words


@dataclass(frozen=True)
class TranslationDataConfig(Config):
    """Where the sentence pairs come from and how they become batches (the seed is the run's)."""

    data: str = option("dates", "a TSV file of source<TAB>target lines, a registered dataset (fra-eng) "
                       "or the generated task 'dates'")
    preprocess: str = option("d2l", "text normalisation: d2l (D2L's fra-eng rule: lowercase, no-break spaces "
                             "to spaces, a space before , . ! ?) or none", choices=PREPROCESS_CHOICES)
    tokens: str = option("word", "token level: words, or subwords trained on the training split (bpe, wordpiece; "
                         "byte-level, exactly reversible)", choices=("word",) + tokens_lib.SUBWORD)
    vocab_size: int | None = option(None, tokens_lib.VOCAB_SIZE_HELP + "; with --joint-vocab the shared one's size",
                                    minimum=1)
    joint_vocab: bool = option(False, "one vocabulary for both languages, built from the source and target "
                               "training sentences together (saved as both src_vocab.json and tgt_vocab.json); "
                               "default: one per language")
    min_freq: int = option(2, "words seen fewer times than this in the training split become <unk> (subwords: "
                           "pairs seen fewer times are not merged)", minimum=1)
    max_len: int = option(16, "longest sentence in tokens, <eos> included; longer ones are cut or dropped "
                          "(see --overflow)", minimum=2)
    max_pairs: int | None = option(None, "use only the first this many pairs of the file (none: all)", minimum=1)
    split: str = option("random", "random: a seeded shuffle deals the pairs into train/valid/test; head: "
                        "file order (train first, then valid, then test)", choices=SPLIT_CHOICES)
    valid_fraction: float = option(0.1, "fraction of the pairs held out for validation", minimum=0.0, below=1.0)
    test_fraction: float = option(0.1, "fraction of the pairs held out for testing", minimum=0.0, below=1.0)
    valid_max: int | None = option(None, "hold out at most this many validation pairs (caps --valid-fraction's "
                                   "share of a large file)", minimum=1)
    test_max: int | None = option(None, "hold out at most this many test pairs (caps --test-fraction's share)",
                                  minimum=1)
    batch_size: int = option(64, "pairs per batch (the global batch, over all devices and hosts); with "
                             "--batch-tokens only for validation and decoding", minimum=1)
    batch_tokens: int | None = option(None, "training batches of about this many tokens (source + target, "
                                      "padding included; the global budget, over all devices) instead of "
                                      "--batch-size pairs: pairs bucketed by length, one batch shape per "
                                      "--buckets width", minimum=1)
    buckets: str = option("pow2", "padded widths of a batch: pow2 (8, 16, 32, ... up to --max-len), step8 "
                          "(multiples of 8), step4 (8, 12, 16, ...: least padding, most shapes) or none (always "
                          "--max-len: one shape)", choices=BUCKET_CHOICES)
    on_bad_line: str = option("error", "a malformed line (no tab, more than two tab-separated fields, an empty "
                              "side) stops reading, naming file and line (error), or is dropped and counted (skip); "
                              "with first-two a line of more than two fields gives its first two (with a warning) "
                              "and other malformed lines stop", choices=ON_BAD_LINE_CHOICES)
    overflow: str = option("truncate", "pairs longer than --max-len are cut (truncate) or removed (drop; counted "
                           "in words, also with subwords, since pairs are dropped before the tokenizer is trained)",
                           choices=OVERFLOW_CHOICES)

    def check(self) -> None:
        tokens_lib.check_vocab_size(self.tokens, self.vocab_size)
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ConfigError(f"--valid-fraction {self.valid_fraction} plus --test-fraction {self.test_fraction} "
                              "leaves no training pairs; make them smaller")
        if self.batch_tokens is not None:
            token_rows(self.batch_tokens, bucket_widths(self.max_len, self.buckets))


# -- splits and vocabularies ----------------------------------------------------

# -- splits and vocabularies ----------------------------------------------------

def split_sizes(n: int, valid_fraction: float, test_fraction: float, valid_max: int | None = None,
                test_max: int | None = None) -> tuple[int, int, int]:
    """``(train, valid, test)`` counts: validation and test are rounded (and capped at ``valid_max`` /
    ``test_max``), training takes the rest."""
    n_valid, n_test = int(round(n * valid_fraction)), int(round(n * test_fraction))
    n_valid, n_test = min(n_valid, valid_max or n_valid), min(n_test, test_max or n_test)
    return n - n_valid - n_test, n_valid, n_test


def split_pairs(pairs: Sequence[Pair], *, split: str = "random", valid_fraction: float = 0.1,
                test_fraction: float = 0.1, seed: int = 0, valid_max: int | None = None,
                test_max: int | None = None) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Deal ``pairs`` into disjoint ``(train, valid, test)``; each keeps file order.

    ``random``: a permutation seeded by ``seed`` picks validation, then test (so capping a split's count
    with ``valid_max``/``test_max`` keeps the pairs a fraction giving the same count picks);
    ``head``: consecutive runs in file order (train, valid, test).
    """
    n = len(pairs)
    n_train, n_valid, n_test = split_sizes(n, valid_fraction, test_fraction, valid_max, test_max)
    if n_train < 1:
        raise DataError(f"only {n} pairs: none left for training after --valid-fraction {valid_fraction} "
                        f"and --test-fraction {test_fraction}; give more pairs")
    if split == "head":
        order = np.arange(n)
        parts = [order[:n_train], order[n_train:n_train + n_valid], order[n_train + n_valid:]]
    elif split == "random":
        order = fold_rng(seed, SPLIT_STREAM).permutation(n)
        parts = [np.sort(order[n_valid + n_test:]), np.sort(order[:n_valid]),
                 np.sort(order[n_valid:n_valid + n_test])]
    else:
        raise ConfigError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    train, valid, test = ([pairs[i] for i in part.tolist()] for part in parts)
    return train, valid, test


def build_vocabs(train: Sequence[Pair], min_freq: int = 2, *, source: str = "the data", tokens: str = "word",
                 vocab_size: int | None = None, joint: bool = False) -> tuple[Vocab, Vocab]:
    """Source and target vocabularies of the training pairs (``<pad>`` is 0), through
    :func:`jaxseq.data.tokens.build_vocab` (``tokens``: word, bpe or wordpiece).

    ``joint``: one vocabulary of both sides, returned twice. A side whose
    word vocabulary would hold no real word (``min_freq`` above every count)
    is refused with a DataError naming ``--min-freq``.
    """
    texts = {side: [" ".join(getattr(p, side)) for p in train] for side in ("src", "tgt")}
    of = f"the {len(train)} training pairs"
    if joint:
        vocab = tokens_lib.build_vocab(tokens, texts["src"] + texts["tgt"], min_freq=min_freq, vocab_size=vocab_size,
                                       reserved_tokens=DEFAULT_RESERVED, source=source, what="word", of=of)
        return vocab, vocab
    src, tgt = (tokens_lib.build_vocab(tokens, texts[side], min_freq=min_freq, vocab_size=vocab_size,
                                       reserved_tokens=DEFAULT_RESERVED, source=source, what=what, of=of)
                for side, what in (("src", "source word"), ("tgt", "target word")))
    return src, tgt


def count_reserved_in_pairs(pairs: Sequence[Pair]) -> collections.Counter:
    """How often each reserved token string (``<eos>``...) occurs as a word of ``pairs`` (either side)."""
    return count_reserved(t for p in pairs for side in (p.src, p.tgt) for t in side)


# -- everything together --------------------------------------------------------

@dataclass
class TranslationData:
    """The splits of a pair corpus and its vocabularies, ready to batch."""

    config: TranslationDataConfig
    source: str
    train: list[Pair]
    valid: list[Pair]
    test: list[Pair]
    src_vocab: Vocab
    tgt_vocab: Vocab
    skipped: list[tuple[int, str]] = field(default_factory=list)   # (line, reason) of dropped bad lines
    dropped: int = 0                                               # over-long pairs removed (overflow=drop)
    first_two: list[int] = field(default_factory=list)             # lines cut to two fields (on_bad_line=first-two)
    reserved: dict[str, int] = field(default_factory=dict)         # reserved token strings in the text -> count
    _encoded: dict[str, EncodedPairs] = field(default_factory=dict, repr=False)

    def split(self, name: str) -> list[Pair]:
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def encoded(self, name: str) -> EncodedPairs:
        if name not in self._encoded:
            with gc_paused():
                self._encoded[name] = encode_pairs(self.split(name), self.src_vocab, self.tgt_vocab,
                                                   self.config.max_len)
        return self._encoded[name]

    @property
    def widths(self) -> tuple[int, ...]:
        return bucket_widths(self.config.max_len, self.config.buckets)

    def train_batches(self, seed: int = 0, shard: tuple[int, int] = (0, 1),
                      devices: int = 1) -> TranslationBatches | TokenBatches:
        """``--batch-tokens`` batches (rows a multiple of ``devices``) if set, else ``--batch-size`` ones."""
        if self.config.batch_tokens is not None:
            return TokenBatches(self.encoded("train"), batch_tokens=self.config.batch_tokens, seed=seed,
                                widths=self.widths, devices=devices, shard=shard)
        return TranslationBatches(self.encoded("train"), batch_size=self.config.batch_size, seed=seed,
                                  widths=self.widths, shard=shard)

    def eval_batches(self, name: str = "valid", shard: tuple[int, int] = (0, 1)) -> list[Batch]:
        return eval_batches(self.encoded(name), batch_size=self.config.batch_size, widths=self.widths, shard=shard)

    def encode_source(self, text: str) -> SourceEncoding:
        return encode_source(text, self.src_vocab, preprocess=self.config.preprocess, max_len=self.config.max_len)

    def source_batch(self, texts: Sequence[str]) -> tuple[Batch, list[SourceEncoding]]:
        encodings = [self.encode_source(t) for t in texts]
        return source_batch(encodings, pad=self.src_vocab.pad, widths=self.widths), encodings

    def decode_target(self, ids: Sequence[int] | np.ndarray) -> str:
        return decode_target(ids, self.tgt_vocab)

    def truncated(self) -> int:
        """Pairs (over all splits) with a side cut at ``max_len``."""
        return sum(self.encoded(name).truncated for name in SPLITS)

    def summary(self) -> str:
        parts = [f"{self.source}: {len(self.train)} training, {len(self.valid)} validation, {len(self.test)} test "
                 f"pairs; vocabulary {len(self.src_vocab)} source / {len(self.tgt_vocab)} target "
                 + ("words" if self.config.tokens == "word" else f"{self.config.tokens} subwords"
                    + (" (joint)" if self.config.joint_vocab else ""))]
        if self.skipped:
            parts.append(summarize_skipped(self.skipped))
        if self.dropped:
            parts.append(f"dropped {self.dropped} pairs longer than --max-len {self.config.max_len}")
        cut = self.truncated()
        if cut:
            parts.append(f"cut {cut} pairs longer than --max-len {self.config.max_len}")
        return "; ".join(parts)


def load_translation(config: TranslationDataConfig, *, seed: int = 0, options=None,
                     src_vocab: Vocab | None = None, tgt_vocab: Vocab | None = None) -> TranslationData:
    """Read, normalise, split and build vocabularies (from the training split) for ``config``.

    ``seed`` (the run's seed) fixes the random split; ``options`` configures a
    generated task (a :class:`~jaxseq.data.dates.DatesConfig` for ``dates``);
    pass both vocabularies to reuse saved ones. Words spelled like a reserved
    token (``<eos>``...) are read as ``<unk>`` (see :mod:`jaxseq.data.vocab`);
    they and lines cut to two fields are warned about in one line each.
    """
    config.validate()
    if (src_vocab is None) != (tgt_vocab is None):
        raise ConfigError("give both the source and the target vocabulary, or neither")
    data, source = pair_bytes(config.data, options)
    skipped: list[tuple[int, str]] = []
    first_two: list[int] = []
    pairs, dropped = [], 0
    with gc_paused():
        for pair in iter_pairs(data, source, preprocess=config.preprocess, on_bad_line=config.on_bad_line,
                               skipped=skipped, first_two=first_two):
            if config.overflow == "drop" and max(len(pair.src), len(pair.tgt)) + 1 > config.max_len:
                dropped += 1
                continue
            pairs.append(pair)
            if config.max_pairs is not None and len(pairs) >= config.max_pairs:
                break
    skipped.sort()
    if first_two:
        warn(first_two_warning(first_two, source))
    # subwords spell a word like <eos> as ordinary subwords (never the special id): nothing to warn about
    reserved = (count_reserved_in_pairs(pairs) if _RESERVED_BYTES.search(data) and not tokens_lib.is_subword(
        config.tokens) else collections.Counter())
    if reserved:
        warn(reserved_warning(reserved, source))
    if not pairs:
        why = f" ({summarize_skipped(skipped)})" if skipped else ""
        why += f" ({dropped} longer than --max-len {config.max_len} dropped)" if dropped else ""
        raise DataError(f"{source}: no usable sentence pairs{why}; check the file format (source<TAB>target)")
    train, valid, test = split_pairs(pairs, split=config.split, valid_fraction=config.valid_fraction,
                                     test_fraction=config.test_fraction, seed=seed,
                                     valid_max=config.valid_max, test_max=config.test_max)
    if src_vocab is None:
        src_vocab, tgt_vocab = build_vocabs(train, config.min_freq, source=source, tokens=config.tokens,
                                            vocab_size=config.vocab_size, joint=config.joint_vocab)
    check_vocab(src_vocab, "source")
    check_vocab(tgt_vocab, "target")
    return TranslationData(config, source, train, valid, test, src_vocab, tgt_vocab, skipped, dropped,
                           first_two, dict(reserved))
