"""Encoded sentence pairs and their batches: ids, length buckets, resumable epochs.

Ids
    Separate source and target vocabularies (built by
    :mod:`jaxseq.data.translation` from the training split) reserve
    ``<pad> <bos> <eos> <unk>`` (``<pad>`` is 0). ``<eos>`` ends every
    sentence; for a target ``y1..yn``::

        tgt_in  = <bos> y1 ... yn          tgt_out = y1 ... yn <eos>

    ``max_len`` counts the ``<eos>``. A longer sentence is cut to its first
    ``max_len`` tokens, which drops its ``<eos>`` as D2L does (a model should
    not learn that sentences end where they were cut).

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

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from jaxseq.data.epochs import EpochBatches, fold_rng, shard_rows
from jaxseq.data.pairs import Pair, normalize, tokenize
from jaxseq.data.subword import SubwordVocab
from jaxseq.data.vocab import BOS, EOS, PAD, Vocab
from jaxseq.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]
BUCKET_CHOICES = ("pow2", "step8", "none")
BATCH_STREAM = 2        # fold_rng(seed, BATCH_STREAM, epoch) orders an epoch's batches


def check_vocab(vocab: Vocab, side: str) -> None:
    """A translation vocabulary must hold ``<pad> <bos> <eos>``."""
    missing = [t for t in (PAD, BOS, EOS) if vocab.index(t) is None]
    if missing:
        raise DataError(f"the {side} vocabulary lacks {' '.join(missing)}; was it saved by a language-model run?")


# -- ids --------------------------------------------------------------------------

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
        """The batch of pairs ``index`` (``(B,)``, ``-1`` = filler), padded to the smallest fitting widths.

        Teacher forcing: the decoder reads the labels shifted right by one::

            tgt_out = y1 ... yn <eos>      tgt_in = <bos> y1 ... yn      weights = 1 ... 1 (n + 1), then 0
        """
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


def _encode_side(sentences: list[list[str]], vocab: Vocab,
                 max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ragged ``(ids, start, length)`` of ``x1..xm <eos>`` cut to ``max_len``, for every sentence, and each
    sentence's uncut length ``m + 1`` (``x`` are words, or the subwords of the words joined by spaces)."""
    if isinstance(vocab, SubwordVocab):
        words, lengths = vocab.encode_sentences(sentences)
        full = lengths + 1
    else:
        get, unk = vocab.text_to_idx.get, vocab.unk                # words spelled like <eos> become <unk>
        full = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences)) + 1
        words = np.fromiter((get(t, unk) for s in sentences for t in s), dtype=np.int32,
                            count=int(full.sum()) - len(full))
    ids = np.insert(words, np.cumsum(full - 1), vocab.eos)          # <eos> after each sentence
    first = np.cumsum(full) - full                                  # where each sentence starts in ids
    keep = np.arange(len(ids)) - np.repeat(first, full) < max_len   # position in its sentence < max_len
    lengths = np.minimum(full, max_len).astype(np.int32)
    start = np.cumsum(lengths, dtype=np.int64) - lengths
    return ids[keep], start, lengths, full


def encode_pairs(pairs: Sequence[Pair], src_vocab: Vocab, tgt_vocab: Vocab, max_len: int) -> EncodedPairs:
    """Ids of every pair (``<eos>`` appended, unknown words -> ``<unk>``), cut to ``max_len``.

    A word spelled like a reserved token (``<eos>``...) is ``<unk>`` too: the
    special ids come only from the vocabulary's ``pad``/``bos``/``eos``.
    """
    check_vocab(src_vocab, "source")
    check_vocab(tgt_vocab, "target")
    src_ids, src_start, src_len, src_full = _encode_side([p.src for p in pairs], src_vocab, max_len)
    tgt_ids, tgt_start, tgt_len, tgt_full = _encode_side([p.tgt for p in pairs], tgt_vocab, max_len)
    truncated = int(np.count_nonzero(np.maximum(src_full, tgt_full) > max_len))
    return EncodedPairs(src_ids, src_start, src_len, tgt_ids, tgt_start, tgt_len, truncated, max_len,
                        src_pad=src_vocab.pad, tgt_pad=tgt_vocab.pad, bos=tgt_vocab.bos)


# -- batches ----------------------------------------------------------------------

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


def _host_rows(batch: Batch, rows: slice) -> Batch:
    return {k: v[rows] for k, v in batch.items()}


class TranslationBatches(EpochBatches):
    """Length-bucketed training batches over epochs, resumable from ``(epoch, index)``.

    Epoch ``e`` is a pure function of ``(seed, e)`` (see the module docstring
    and :mod:`jaxseq.data.epochs`), so a resumed run sees exactly the batches
    an uninterrupted one would. ``shard=(i, n)`` gives host ``i`` of ``n`` its
    rows ``[i B/n, (i+1) B/n)`` of every global batch.
    """

    def __init__(self, pairs: EncodedPairs, *, batch_size: int, seed: int = 0,
                 widths: Sequence[int] | None = None, shard: tuple[int, int] = (0, 1), chunk_batches: int = 100):
        super().__init__()
        if len(pairs) == 0:
            raise DataError("no training pairs to make batches of")
        if batch_size < 1 or chunk_batches < 1:
            raise ConfigError(f"batch_size ({batch_size}) and chunk_batches ({chunk_batches}) must be at least 1")
        self.pairs, self.batch_size, self.seed = pairs, batch_size, seed
        self.widths = tuple(widths) if widths is not None else bucket_widths(pairs.max_len)
        self.chunk = chunk_batches * batch_size
        self.rows = shard_rows(batch_size, shard)
        self._key = pairs.sort_key()

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.pairs) // self.batch_size)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Every ``(S, T)`` a batch may have (each is one compilation)."""
        return [(s, t) for s in self.widths for t in self.widths]

    def layout(self, epoch: int) -> np.ndarray:
        """``(batches_per_epoch, B)`` int64 pair indices of an epoch's global batches (-1 = filler)."""
        rng = fold_rng(self.seed, BATCH_STREAM, epoch)
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


def eval_batches(pairs: EncodedPairs, *, batch_size: int, widths: Sequence[int] | None = None,
                 shard: tuple[int, int] = (0, 1)) -> list[Batch]:
    """Every pair exactly once, sorted by length (``index`` maps rows back; fillers are -1)."""
    if len(pairs) == 0:
        return []
    widths = tuple(widths) if widths is not None else bucket_widths(pairs.max_len)
    rows = shard_rows(batch_size, shard)
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
    """Words of target ids up to the first ``<eos>``, without ``<pad>``/``<bos>``, joined by spaces
    (a subword vocabulary's text of those ids: exactly the sentence it encodes)."""
    eos, drop = vocab.eos, {vocab.pad, vocab.bos}
    words = []
    for i in np.asarray(ids).reshape(-1).tolist():
        if i == eos:
            break
        if i not in drop:
            words.append(i)
    if isinstance(vocab, SubwordVocab):
        return vocab.decode_text(words)
    table = vocab.idx_to_token
    return " ".join(table[i] for i in words)
