"""Translation data: sentence pairs -> tokens -> ids -> length-bucketed batches.

Input is a TSV file of ``source<TAB>target`` lines (the Tatoeba/Anki format of
D2L's fra-eng; a third column, the attribution, is ignored), a registered
dataset (``fra-eng``) or a generated task (``dates``, see
:mod:`jaxseq.data.dates`). The file is read strictly: missing, empty,
binary or non-UTF-8 files stop with a DataError naming the file (and the line,
for bad bytes); malformed lines (no tab, an empty side, a blank line before
the end) stop with file and line, or with ``on_bad_line="skip"`` are dropped
and listed in :attr:`TranslationData.skipped`. Blank lines at the end of the
file and a leading UTF-8 BOM are fine. The encoding is checked over the whole
file, even when ``max_pairs`` stops reading early.

Text and tokens
    ``preprocess="d2l"`` is D2L's rule for fra-eng (``MTFraEng._preprocess``):
    U+202F and U+00A0 become spaces, everything is lowercased, and a space is
    put before ``, . ! ?`` unless one is there already. ``none`` leaves the
    text alone. Either way tokens are the white-space separated words, so
    under ``none`` punctuation stays glued to its word (``go.``). D2L splits
    on U+0020 only; splitting on all white space differs from it on 78 of
    fra-eng's 162k pairs, where a U+2009 thin space would otherwise stay glued
    to a word (``recule\u2009``) and make it a different word.

Ids
    Separate source and target vocabularies, built from the *training* split
    only, reserve ``<pad> <bos> <eos> <unk>`` (``<pad>`` is 0). ``<eos>`` ends
    every sentence; for a target ``y1..yn``::

        tgt_in  = <bos> y1 ... yn          tgt_out = y1 ... yn <eos>

    ``max_len`` counts the ``<eos>``. A longer sentence is cut to its first
    ``max_len`` tokens, which drops its ``<eos>`` as D2L does (a model should
    not learn that sentences end where they were cut) with
    ``overflow="truncate"``; with ``overflow="drop"`` such pairs are removed
    before the split and counted in :attr:`TranslationData.dropped`.

Splits
    ``max_pairs`` takes the *first* pairs in file order. ``split="random"``
    deals them into train / validation / test by a seeded permutation (each
    split keeps file order); ``split="head"`` keeps file order: the first
    ``1 - valid_fraction - test_fraction`` are training, then validation, then
    test. D2L's fra-eng setting (the first 512 pairs train, the next 128
    validate) is ``max_pairs=640, split="head", valid_fraction=0.2,
    test_fraction=0``.

Batches
    ``{"src", "src_len", "tgt_in", "tgt_out", "weights", "tgt_len", "index"}``:
    ``src (B, S)``, ``tgt_in``/``tgt_out (B, T)`` int32, ``src_len``/
    ``tgt_len (B,)`` int32, ``weights (B, T)`` float32 (1.0 on real target
    positions, ``<eos>`` included, 0.0 on padding, so ``weights.sum(1) ==
    tgt_len``), and ``index (B,)`` int32, the pair's position in its split.
    Every pair is in exactly one batch per epoch; where ``B`` does not divide
    the number of pairs, one batch is filled up to ``B`` rows (so shapes and
    sharding stay fixed) with copies of a real row that carry ``weights`` 0,
    ``tgt_len`` 0 and ``index`` -1 (a real source, so encoders never see an
    empty sequence).

Bucketing
    Each epoch deals a seeded permutation of the pairs in chunks of
    ``chunk_batches * B``, sorts every chunk by length and cuts it into
    batches, then shuffles the batch order: neighbours in a batch have similar
    lengths, so padding stays small, while the chunks keep epochs random.
    ``S`` and ``T`` of a batch are padded up to the next of a few *widths*,
    because every distinct shape is one more ``jit`` compilation:
    ``buckets="pow2"`` uses 8, 16, 32, ... capped at ``max_len`` (about
    ``log2(max_len) - 2`` widths a side, padding below 2x); ``step8``
    multiples of 8 (less padding, ``max_len / 8`` widths a side, more
    compilations); ``none`` always ``max_len`` (one shape, D2L's layout, most
    padding). The widths of a batch are chosen from the whole global batch,
    so every host of a multi-host run builds the same shape.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

from jaxseq.config import option
from jaxseq.data import dates
from jaxseq.data.text import read_bytes
from jaxseq.data.vocab import BOS, DEFAULT_RESERVED, EOS, PAD, Vocab
from jaxseq.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]
PREPROCESS_CHOICES = ("none", "d2l")
SPLIT_CHOICES = ("random", "head")
BUCKET_CHOICES = ("pow2", "step8", "none")
ON_BAD_LINE_CHOICES = ("error", "skip")
OVERFLOW_CHOICES = ("truncate", "drop")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TranslationDataConfig:
    """Where the sentence pairs come from and how they become batches (the seed is the run's)."""

    data: str = option("dates", "a TSV file of source<TAB>target lines, a registered dataset (fra-eng) "
                       "or the generated task 'dates'")
    preprocess: str = option("d2l", "text normalisation: d2l (D2L's fra-eng rule: lowercase, no-break spaces "
                             "to spaces, a space before , . ! ?) or none", choices=PREPROCESS_CHOICES)
    min_freq: int = option(2, "words seen fewer times than this in the training split become <unk>")
    max_len: int = option(16, "longest sentence in tokens, <eos> included; longer ones are cut or dropped "
                          "(see --overflow)")
    max_pairs: int | None = option(None, "use only the first this many pairs of the file (none: all)")
    split: str = option("random", "random: a seeded shuffle deals the pairs into train/valid/test; head: "
                        "file order (train first, then valid, then test)", choices=SPLIT_CHOICES)
    valid_fraction: float = option(0.1, "fraction of the pairs held out for validation")
    test_fraction: float = option(0.1, "fraction of the pairs held out for testing")
    batch_size: int = option(64, "pairs per batch (the global batch, over all devices and hosts)")
    buckets: str = option("pow2", "padded widths of a batch: pow2 (8, 16, 32, ... up to --max-len), step8 "
                          "(multiples of 8) or none (always --max-len: one shape)", choices=BUCKET_CHOICES)
    on_bad_line: str = option("error", "a malformed line stops reading (error) or is dropped and counted (skip)",
                              choices=ON_BAD_LINE_CHOICES)
    overflow: str = option("truncate", "pairs longer than --max-len are cut (truncate) or removed (drop)",
                           choices=OVERFLOW_CHOICES)

    def validate(self) -> None:
        for name, choices in (("preprocess", PREPROCESS_CHOICES), ("split", SPLIT_CHOICES),
                              ("buckets", BUCKET_CHOICES), ("on_bad_line", ON_BAD_LINE_CHOICES),
                              ("overflow", OVERFLOW_CHOICES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, "
                                  f"got {getattr(self, name)!r}")
        for name in ("valid_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must lie in [0, 1), got {getattr(self, name)}")
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ConfigError(f"--valid-fraction {self.valid_fraction} plus --test-fraction {self.test_fraction} "
                              "leaves no training pairs; make them smaller")
        for name, low in (("min_freq", 1), ("batch_size", 1), ("max_len", 2)):
            if getattr(self, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ConfigError(f"--max-pairs must be at least 1 (or none for all), got {self.max_pairs}")


# -- text ---------------------------------------------------------------------

_D2L_PUNCT = re.compile(r"(?<=[^ ])(?=[,.!?])")   # where a space goes


def normalize(text: str, mode: str = "d2l") -> str:
    """D2L's fra-eng preprocessing (``d2l``) or nothing (``none``).

    >>> normalize("Va\u202f!  Il a dit\u00a0: «\u00a0Non.\u00a0»")
    'va !  il a dit : « non . »'
    """
    if mode == "none":
        return text
    if mode == "d2l":
        text = text.replace("\u202f", " ").replace("\u00a0", " ").lower()
        return _D2L_PUNCT.sub(" ", text)
    raise ConfigError(f"unknown preprocessing {mode!r}; choose one of {', '.join(PREPROCESS_CHOICES)}")


def tokenize(text: str) -> list[str]:
    """Words separated by white space (punctuation is split off only by ``d2l`` normalisation)."""
    return text.split()


# -- reading pairs ------------------------------------------------------------

_BOM = "\ufeff"


class Pair(NamedTuple):
    """One sentence pair as tokens (without ``<eos>``) and its 1-based line in the file."""

    src: list[str]
    tgt: list[str]
    line: int


def _lines(data: bytes, source: str, preprocess: str, on_bad_line: str,
           skipped: list[tuple[int, str]]) -> list[str | None]:
    """The decoded, normalised lines (``None`` for an undecodable line that is skipped).

    Normalising the whole text at once gives the same words as normalising
    each side (it never adds or removes a tab or newline) and is 5x faster.
    """
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{source}: looks binary (NUL byte at offset {nul}); give a UTF-8 text file "
                        "of source<TAB>target lines")
    try:
        return normalize(data.decode("utf-8").removeprefix(_BOM), preprocess).split("\n")
    except UnicodeDecodeError as err:
        if on_bad_line == "error":
            line = data.count(b"\n", 0, err.start) + 1
            raise DataError(f"{source}:{line}: not valid UTF-8 at byte offset {err.start} "
                            f"(byte 0x{data[err.start]:02x}); convert the file to UTF-8 "
                            "or pass --on-bad-line skip") from None
    out: list[str | None] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
            out.append(normalize(text.removeprefix(_BOM) if number == 1 else text, preprocess))
        except UnicodeDecodeError:
            skipped.append((number, "not valid UTF-8"))
            out.append(None)
    return out


def iter_pairs(data: bytes, source: str, *, preprocess: str = "d2l", on_bad_line: str = "error",
               skipped: list[tuple[int, str]] | None = None) -> Iterator[Pair]:
    """Parse TSV bytes into pairs, lazily, in file order.

    Bad lines raise a DataError naming ``source`` and the line, or with
    ``on_bad_line="skip"`` are appended to ``skipped`` as ``(line, reason)``.
    """
    if on_bad_line not in ON_BAD_LINE_CHOICES:
        raise ConfigError(f"--on-bad-line must be error or skip, got {on_bad_line!r}")
    skipped = [] if skipped is None else skipped
    if preprocess not in PREPROCESS_CHOICES:
        raise ConfigError(f"--preprocess must be one of {', '.join(PREPROCESS_CHOICES)}, got {preprocess!r}")
    lines = _lines(data, source, preprocess, on_bad_line, skipped)
    end = len(lines)
    while end and lines[end - 1] is not None and not lines[end - 1].strip():
        end -= 1
    if end == 0:
        raise DataError(f"{source}: is empty; give a file of source<TAB>target lines")
    for number in range(1, end + 1):
        line = lines[number - 1]
        if line is None:
            continue
        if line.endswith("\r"):
            line = line[:-1]
        reason = None
        if not line.strip():
            reason = "blank line"
        elif "\t" not in line:
            reason = "no tab"
        else:
            parts = line.split("\t", 2)
            src, tgt = tokenize(parts[0]), tokenize(parts[1])
            if not src:
                reason = "empty source"
            elif not tgt:
                reason = "empty target"
            else:
                yield Pair(src, tgt, number)
                continue
        if on_bad_line == "error":
            raise DataError(f"{source}:{number}: {_EXPLAIN[reason]}; fix the line or pass --on-bad-line skip")
        skipped.append((number, reason))


_EXPLAIN = {"blank line": "blank line inside the file (only trailing blank lines are allowed)",
            "no tab": "no tab between source and target; each line must be source<TAB>target",
            "empty source": "the source side (before the tab) is empty",
            "empty target": "the target side (after the tab) is empty"}


def summarize_skipped(skipped: Sequence[tuple[int, str]], *, examples: int = 3) -> str:
    """One line for the CLI, e.g. ``skipped 3 lines: 2 no tab (lines 4, 9), 1 empty target (line 12)``."""
    if not skipped:
        return "skipped no lines"
    by_reason: dict[str, list[int]] = collections.defaultdict(list)
    for number, reason in skipped:
        by_reason[reason].append(number)
    parts = []
    for reason, numbers in by_reason.items():
        shown = ", ".join(map(str, numbers[:examples])) + (", ..." if len(numbers) > examples else "")
        parts.append(f"{len(numbers)} {reason} (line{'s' if len(numbers) > 1 else ''} {shown})")
    return f"skipped {len(skipped)} line{'s' if len(skipped) > 1 else ''}: " + ", ".join(parts)


@dataclass(frozen=True)
class GeneratedTask:
    """A built-in pair task made on the fly: ``make_tsv(options)`` returns TSV text."""

    name: str
    description: str
    make_tsv: Callable[..., str]


GENERATED_TASKS: dict[str, GeneratedTask] = {t.name: t for t in [
    GeneratedTask("dates", dates.DESCRIPTION, dates.make_tsv),
]}


def pair_bytes(spec: str, options=None) -> tuple[bytes, str]:
    """``(tsv bytes, source name)`` for a generated task, a registered pair dataset or a file path.

    ``options`` configures a generated task (e.g. a :class:`~jaxseq.data.dates.DatesConfig`).
    """
    from jaxseq.data import corpora

    if spec in GENERATED_TASKS and not Path(spec).exists():
        return GENERATED_TASKS[spec].make_tsv(options).encode("utf-8"), spec
    if spec in corpora.REGISTRY and not Path(spec).exists() and corpora.REGISTRY[spec].kind != "pairs":
        raise ConfigError(f"{spec} is a language-model corpus, not sentence pairs; give a TSV file, "
                          f"'fra-eng' or one of {', '.join(GENERATED_TASKS)}")
    path = corpora.resolve_path(spec)
    return read_bytes(path), str(path)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small lists of strings.

    They hold no cycles, but each allocation counts towards a collection:
    reading fra-eng's 162k pairs takes 1.6 s with the collector and 1.0 s without.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_pairs(path: str | os.PathLike, *, preprocess: str = "d2l", on_bad_line: str = "error",
               max_pairs: int | None = None) -> tuple[list[Pair], list[tuple[int, str]]]:
    """``(pairs, skipped)`` from a TSV file; reading stops after ``max_pairs`` good pairs."""
    skipped: list[tuple[int, str]] = []
    pairs = []
    with _gc_paused():
        for pair in iter_pairs(read_bytes(path), str(path), preprocess=preprocess, on_bad_line=on_bad_line,
                               skipped=skipped):
            pairs.append(pair)
            if max_pairs is not None and len(pairs) >= max_pairs:
                break
    return pairs, sorted(skipped)


# -- splits and vocabularies ----------------------------------------------------

def split_sizes(n: int, valid_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """``(train, valid, test)`` counts: validation and test are rounded, training takes the rest."""
    n_valid, n_test = int(round(n * valid_fraction)), int(round(n * test_fraction))
    return n - n_valid - n_test, n_valid, n_test


def split_pairs(pairs: Sequence[Pair], *, split: str = "random", valid_fraction: float = 0.1,
                test_fraction: float = 0.1, seed: int = 0) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Deal ``pairs`` into disjoint ``(train, valid, test)``; each keeps file order.

    ``random``: a permutation seeded by ``seed`` picks validation, then test;
    ``head``: consecutive runs in file order (train, valid, test).
    """
    n = len(pairs)
    n_train, n_valid, n_test = split_sizes(n, valid_fraction, test_fraction)
    if n_train < 1:
        raise DataError(f"only {n} pairs: none left for training after --valid-fraction {valid_fraction} "
                        f"and --test-fraction {test_fraction}; give more pairs")
    if split == "head":
        order = np.arange(n)
        parts = [order[:n_train], order[n_train:n_train + n_valid], order[n_train + n_valid:]]
    elif split == "random":
        order = np.random.default_rng([seed, 1]).permutation(n)
        parts = [np.sort(order[n_valid + n_test:]), np.sort(order[:n_valid]),
                 np.sort(order[n_valid:n_valid + n_test])]
    else:
        raise ConfigError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    train, valid, test = ([pairs[i] for i in part.tolist()] for part in parts)
    return train, valid, test


def build_vocabs(train: Sequence[Pair], min_freq: int = 2) -> tuple[Vocab, Vocab]:
    """Source and target vocabularies of the training pairs (``<pad>`` is 0)."""
    src = Vocab.build((t for p in train for t in p.src), min_freq=min_freq, reserved_tokens=DEFAULT_RESERVED)
    tgt = Vocab.build((t for p in train for t in p.tgt), min_freq=min_freq, reserved_tokens=DEFAULT_RESERVED)
    return src, tgt


def check_vocab(vocab: Vocab, side: str) -> None:
    """A translation vocabulary must hold ``<pad> <bos> <eos>``."""
    missing = [t for t in (PAD, BOS, EOS) if vocab.index(t) is None]
    if missing:
        raise DataError(f"the {side} vocabulary lacks {' '.join(missing)}; was it saved by a language-model run?")


# -- ids and batches ------------------------------------------------------------

@dataclass(frozen=True)
class EncodedPairs:
    """A split as ragged id arrays: sentence ``i`` is ``ids[start[i]:start[i] + len[i]]``.

    Source rows are ``x1..xm <eos>`` and target rows ``y1..yn <eos>``
    (``tgt_out``), both cut to ``max_len``; ``tgt_in`` is built from
    ``tgt_out`` when a batch is made.
    """

    src_ids: np.ndarray     # (sum src_len,) int32
    src_start: np.ndarray   # (N,) int64
    src_len: np.ndarray     # (N,) int32, 1 <= src_len <= max_len
    tgt_ids: np.ndarray     # (sum tgt_len,) int32
    tgt_start: np.ndarray   # (N,) int64
    tgt_len: np.ndarray     # (N,) int32
    truncated: int          # pairs with a side longer than max_len (cut)
    max_len: int
    src_pad: int
    tgt_pad: int
    bos: int                # the target <bos>

    def __len__(self) -> int:
        return int(self.src_len.shape[0])

    def sort_key(self) -> np.ndarray:
        """``(N,)`` int64: by longer side, then source, then target length."""
        m = self.max_len + 1
        s, t = self.src_len.astype(np.int64), self.tgt_len.astype(np.int64)
        return (np.maximum(s, t) * m + s) * m + t

    def rows(self, index: np.ndarray, widths: Sequence[int]) -> Batch:
        """The batch of pairs ``index`` (``(B,)``, ``-1`` = filler), padded to the smallest fitting widths."""
        index = np.asarray(index, dtype=np.int64)
        real = index >= 0
        if not real.any():
            raise DataError("a batch needs at least one real pair")
        take = np.where(real, index, index[real][0])
        s_len, t_len = self.src_len[take], self.tgt_len[take]
        s_width, t_width = fit_width(int(s_len.max()), widths), fit_width(int(t_len.max()), widths)
        src = _gather(self.src_ids, self.src_start[take], s_len, s_width, self.src_pad)
        tgt_out = _gather(self.tgt_ids, self.tgt_start[take], t_len, t_width, self.tgt_pad)
        positions = np.arange(t_width)[None, :]
        shifted = np.concatenate([np.full((len(take), 1), self.bos, np.int32), tgt_out[:, :-1]], axis=1)
        tgt_in = np.where(positions < t_len[:, None], shifted, self.tgt_pad).astype(np.int32)
        t_len = np.where(real, t_len, 0).astype(np.int32)
        weights = (positions < t_len[:, None]).astype(np.float32)
        return {"src": src, "src_len": s_len.astype(np.int32), "tgt_in": tgt_in, "tgt_out": tgt_out,
                "weights": weights, "tgt_len": t_len, "index": np.where(real, index, -1).astype(np.int32)}


def _gather(flat: np.ndarray, start: np.ndarray, length: np.ndarray, width: int, pad: int) -> np.ndarray:
    """``(B, width)`` int32: row ``b`` is ``flat[start[b]:start[b] + length[b]]`` then ``pad``."""
    pos = np.arange(width)[None, :]
    valid = pos < length[:, None]
    idx = np.where(valid, start[:, None] + pos, 0)
    return np.where(valid, flat[idx] if flat.size else 0, pad).astype(np.int32)


def _encode_side(sentences: list[list[str]], vocab: Vocab, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ragged ``(ids, start, length)`` of ``x1..xm <eos>`` cut to ``max_len``, for every sentence."""
    get, unk = vocab.token_to_idx.get, vocab.unk
    full = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences)) + 1
    words = np.fromiter((get(t, unk) for s in sentences for t in s), dtype=np.int32, count=int(full.sum()) - len(full))
    ids = np.insert(words, np.cumsum(full - 1), vocab.eos)          # <eos> after each sentence
    first = np.cumsum(full) - full                                  # where each sentence starts in ids
    keep = np.arange(len(ids)) - np.repeat(first, full) < max_len   # position in its sentence < max_len
    lengths = np.minimum(full, max_len).astype(np.int32)
    start = np.cumsum(lengths, dtype=np.int64) - lengths
    return ids[keep], start, lengths


def encode_pairs(pairs: Sequence[Pair], src_vocab: Vocab, tgt_vocab: Vocab, max_len: int) -> EncodedPairs:
    """Ids of every pair (``<eos>`` appended, unknown words -> ``<unk>``), cut to ``max_len``."""
    check_vocab(src_vocab, "source")
    check_vocab(tgt_vocab, "target")
    src_ids, src_start, src_len = _encode_side([p.src for p in pairs], src_vocab, max_len)
    tgt_ids, tgt_start, tgt_len = _encode_side([p.tgt for p in pairs], tgt_vocab, max_len)
    truncated = sum(1 for p in pairs if max(len(p.src), len(p.tgt)) + 1 > max_len)
    return EncodedPairs(src_ids, src_start, src_len, tgt_ids, tgt_start, tgt_len, truncated, max_len,
                        src_pad=src_vocab.pad, tgt_pad=tgt_vocab.pad, bos=tgt_vocab.bos)


def bucket_widths(max_len: int, buckets: str = "pow2") -> tuple[int, ...]:
    """The padded lengths a batch may have (see the module docstring), ending with ``max_len``."""
    if buckets == "none":
        return (max_len,)
    if buckets == "pow2":
        widths, w = [], 8
        while w < max_len:
            widths.append(w)
            w *= 2
    elif buckets == "step8":
        widths = list(range(8, max_len, 8))
    else:
        raise ConfigError(f"--buckets must be one of {', '.join(BUCKET_CHOICES)}, got {buckets!r}")
    return tuple(widths) + (max_len,)


def fit_width(length: int, widths: Sequence[int]) -> int:
    """The smallest width that holds ``length`` (the last width if none does)."""
    for w in widths:
        if length <= w:
            return w
    return widths[-1]


def _shard_rows(batch_size: int, shard: tuple[int, int]) -> slice:
    index, count = shard
    if not 0 <= index < count:
        raise ConfigError(f"process index {index} is outside 0..{count - 1}")
    if batch_size % count:
        raise ConfigError(f"--batch-size {batch_size} is not divisible by the {count} processes")
    return slice(index * batch_size // count, (index + 1) * batch_size // count)


def _host_rows(batch: Batch, rows: slice) -> Batch:
    return {k: v[rows] for k, v in batch.items()}


class TranslationBatches:
    """Length-bucketed training batches over epochs, resumable from ``(epoch, index)``.

    Epoch ``e`` is a pure function of ``(seed, e)`` (see the module docstring),
    so the iterator's position is two integers and a resumed run sees exactly
    the batches an uninterrupted one would. ``shard=(i, n)`` gives host ``i``
    of ``n`` its rows ``[i B/n, (i+1) B/n)`` of every global batch. A numpy
    permutation keyed by ``(seed, epoch)`` is used rather than Grain's
    random-access shuffle, which costs ~10 us a pair in Python (1.3 s an epoch
    on fra-eng) against 4 ms.
    """

    def __init__(self, pairs: EncodedPairs, *, batch_size: int, seed: int = 0,
                 widths: Sequence[int] | None = None, shard: tuple[int, int] = (0, 1), chunk_batches: int = 100):
        if len(pairs) == 0:
            raise DataError("no training pairs to make batches of")
        if batch_size < 1 or chunk_batches < 1:
            raise ConfigError(f"batch_size ({batch_size}) and chunk_batches ({chunk_batches}) must be at least 1")
        self.pairs, self.batch_size, self.seed = pairs, batch_size, seed
        self.widths = tuple(widths) if widths is not None else bucket_widths(pairs.max_len)
        self.chunk = chunk_batches * batch_size
        self.rows = _shard_rows(batch_size, shard)
        self._key = pairs.sort_key()
        self.epoch, self.index = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.pairs) // self.batch_size)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Every ``(S, T)`` a batch may have (each is one compilation)."""
        return [(s, t) for s in self.widths for t in self.widths]

    def layout(self, epoch: int) -> np.ndarray:
        """``(batches_per_epoch, B)`` int64 pair indices of an epoch's global batches (-1 = filler)."""
        rng = np.random.default_rng([self.seed, 2, epoch])
        order = rng.permutation(len(self.pairs))
        for c in range(0, len(order), self.chunk):
            part = order[c:c + self.chunk]
            order[c:c + self.chunk] = part[np.argsort(self._key[part], kind="stable")]
        nb, b = self.batches_per_epoch, self.batch_size
        order = np.concatenate([order, np.full(nb * b - len(order), -1, np.int64)]).reshape(nb, b)
        return order[rng.permutation(nb)]

    def batch(self, epoch: int, index: int, layout: np.ndarray | None = None) -> Batch:
        """Batch ``index`` of ``epoch`` (this host's rows; the shape is the global batch's)."""
        if layout is None:
            layout = self.layout(epoch)
        return _host_rows(self.pairs.rows(layout[index], self.widths), self.rows)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if getattr(self, "_cached_epoch", None) != self.epoch:
            self._layout, self._cached_epoch = self.layout(self.epoch), self.epoch
        out = self.batch(self.epoch, self.index, self._layout)
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return out

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict[str, int]) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        if not 0 <= index < self.batches_per_epoch or epoch < 0:
            raise DataError(f"data iterator state {state} does not fit this data "
                            f"({self.batches_per_epoch} batches per epoch)")
        self.epoch, self.index = epoch, index


def eval_batches(pairs: EncodedPairs, *, batch_size: int, widths: Sequence[int] | None = None,
                 shard: tuple[int, int] = (0, 1)) -> list[Batch]:
    """Every pair exactly once, sorted by length (``index`` maps rows back; fillers are -1)."""
    if len(pairs) == 0:
        return []
    widths = tuple(widths) if widths is not None else bucket_widths(pairs.max_len)
    rows = _shard_rows(batch_size, shard)
    order = np.argsort(pairs.sort_key(), kind="stable")
    nb = -(-len(order) // batch_size)
    order = np.concatenate([order, np.full(nb * batch_size - len(order), -1, np.int64)]).reshape(nb, batch_size)
    return [_host_rows(pairs.rows(order[i], widths), rows) for i in range(nb)]


# -- inference helpers ----------------------------------------------------------

class SourceEncoding(NamedTuple):
    """A raw sentence made ready for the encoder."""

    ids: np.ndarray        # (L,) int32, ending with <eos> unless cut at max_len
    tokens: list[str]      # the normalised words
    unknown: list[str]     # words the vocabulary lacks (they became <unk>)
    truncated: bool        # longer than max_len, cut


def encode_source(text: str, vocab: Vocab, *, preprocess: str = "d2l", max_len: int | None = None) -> SourceEncoding:
    """Normalise, tokenise and encode one source sentence as training did."""
    tokens = tokenize(normalize(text, preprocess))
    ids = np.concatenate([vocab.encode(tokens), np.array([vocab.eos], np.int32)])
    cut = max_len is not None and len(ids) > max_len
    return SourceEncoding(ids[:max_len] if cut else ids, tokens, vocab.unknown(tokens), bool(cut))


def source_batch(encodings: Sequence[SourceEncoding], *, pad: int = 0,
                 widths: Sequence[int] | None = None) -> Batch:
    """``{"src" (B, S), "src_len" (B,)}`` int32 of encoded sources; ``S`` is the smallest fitting width."""
    lengths = np.array([len(e.ids) for e in encodings], np.int32)
    longest = int(lengths.max())
    width = fit_width(longest, widths) if widths else longest
    width = max(width, longest)
    src = np.full((len(encodings), width), pad, np.int32)
    for row, e in enumerate(encodings):
        src[row, :len(e.ids)] = e.ids
    return {"src": src, "src_len": lengths}


def decode_target(ids: Sequence[int] | np.ndarray, vocab: Vocab) -> str:
    """Words of target ids up to the first ``<eos>``, without ``<pad>``/``<bos>``, joined by spaces."""
    eos, drop = vocab.eos, {vocab.pad, vocab.bos}
    words = []
    for i in np.asarray(ids).reshape(-1).tolist():
        if i == eos:
            break
        if i not in drop:
            words.append(vocab.idx_to_token[i])
    return " ".join(words)


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
    _encoded: dict[str, EncodedPairs] = field(default_factory=dict, repr=False)

    def split(self, name: str) -> list[Pair]:
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def encoded(self, name: str) -> EncodedPairs:
        if name not in self._encoded:
            with _gc_paused():
                self._encoded[name] = encode_pairs(self.split(name), self.src_vocab, self.tgt_vocab,
                                                   self.config.max_len)
        return self._encoded[name]

    @property
    def widths(self) -> tuple[int, ...]:
        return bucket_widths(self.config.max_len, self.config.buckets)

    def train_batches(self, seed: int = 0, shard: tuple[int, int] = (0, 1)) -> TranslationBatches:
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
                 f"pairs; vocabulary {len(self.src_vocab)} source / {len(self.tgt_vocab)} target words"]
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
    pass both vocabularies to reuse saved ones.
    """
    config.validate()
    if (src_vocab is None) != (tgt_vocab is None):
        raise ConfigError("give both the source and the target vocabulary, or neither")
    data, source = pair_bytes(config.data, options)
    skipped: list[tuple[int, str]] = []
    pairs, dropped = [], 0
    with _gc_paused():
        for pair in iter_pairs(data, source, preprocess=config.preprocess, on_bad_line=config.on_bad_line,
                               skipped=skipped):
            if config.overflow == "drop" and max(len(pair.src), len(pair.tgt)) + 1 > config.max_len:
                dropped += 1
                continue
            pairs.append(pair)
            if config.max_pairs is not None and len(pairs) >= config.max_pairs:
                break
    skipped.sort()
    if not pairs:
        why = f" ({summarize_skipped(skipped)})" if skipped else ""
        why += f" ({dropped} longer than --max-len {config.max_len} dropped)" if dropped else ""
        raise DataError(f"{source}: no usable sentence pairs{why}; check the file format (source<TAB>target)")
    train, valid, test = split_pairs(pairs, split=config.split, valid_fraction=config.valid_fraction,
                                     test_fraction=config.test_fraction, seed=seed)
    if src_vocab is None:
        src_vocab, tgt_vocab = build_vocabs(train, config.min_freq)
    check_vocab(src_vocab, "source")
    check_vocab(tgt_vocab, "target")
    return TranslationData(config, source, train, valid, test, src_vocab, tgt_vocab, skipped, dropped)
