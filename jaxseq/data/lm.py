"""Language-model data: corpus -> token ids -> windows -> batches.

A batch is ``{"inputs", "targets", "weights"}``, each ``(B, T)``: targets are
the inputs shifted by one token, and ``weights`` is 1.0 on real targets and 0.0
on padding, so losses are weighted sums divided by the weight total.

Two partitionings of the training stream, as in D2L section 9.3:

* ``random``: each epoch starts at a random offset in ``[0, T)``, the stream is
  cut into non-overlapping windows of ``T + 1`` tokens (inputs and the shifted
  targets), and the windows are dealt in a random order. Neighbouring batches
  are unrelated, so a recurrent state must be reset for each batch.
* ``sequential``: after the random offset the stream is split into ``B``
  contiguous streams; batch ``i`` holds the ``i``-th window of every stream, so
  row ``b`` of batch ``i + 1`` continues row ``b`` of batch ``i`` and a
  recurrent state can be carried across batches.

Both are pure functions of ``(seed, epoch, index)``, so the iterator's position
is two integers and resuming gives exactly the batches an uninterrupted run
would have seen (:mod:`jaxseq.data.epochs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable
import numpy as np

from jaxseq.config import Config, option, to_dict
from jaxseq.data import text as text_lib
from jaxseq.data import tokens as tokens_lib
from jaxseq.data.epochs import EpochBatches, fold_rng, shard_rows
from jaxseq.data.shards import TokenStream, is_prepared, take_windows
from jaxseq.data.vocab import (RESERVED_STRINGS, UNK, Vocab, count_reserved, require_real_tokens,
                               reserved_warning)
from jaxseq.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]
SAMPLING_CHOICES = ("random", "sequential")
EVAL_CONTEXTS = ("stream", "window")


def _saved_eval_context(saved: dict) -> str:
    """How a run saved before ``--eval-context`` existed was validated: carrying the state only
    with sequential sampling (so its best checkpoint and its curves keep one protocol)."""
    return "stream" if saved.get("sampling") == "sequential" else "window"


@dataclass(frozen=True)
class LMDataConfig(Config):
    """Where the text comes from and how it is cut into batches."""

    data: str = option("builtin", "a text file, 'builtin' (the Python reference shipped with CPython), "
                       "a registered dataset (see `jaxseq data list`) or a directory of token shards written by "
                       "`jaxseq prepare` (read by memory map; its tokenization settings are the run's)")
    tokens: str = option("char", "token level: characters, words, or subwords trained on the training split "
                         "(bpe, wordpiece; byte-level, exactly reversible)", choices=tokens_lib.TOKEN_CHOICES)
    vocab_size: int | None = option(None, tokens_lib.VOCAB_SIZE_HELP, minimum=1)
    preprocess: str = option("none", "text preprocessing", choices=text_lib.PREPROCESS_CHOICES)
    valid_fraction: float = option(0.1, "the last fraction of the token stream held out for validation (subwords: "
                                   "of the characters, cut before the tokenizer is trained)",
                                   above=0.0, below=1.0)
    min_freq: int = option(1, "tokens seen fewer times than this become <unk> (subwords: pairs seen fewer times "
                           "are not merged)", minimum=1)
    seq_len: int = option(35, "time steps per window", minimum=1)
    batch_size: int = option(32, "windows per batch (the global batch, over all devices and hosts)", minimum=1)
    sampling: str = option("random", "how windows are dealt: random (state reset per batch) or "
                           "sequential (contiguous, state carried)", choices=SAMPLING_CHOICES)
    eval_context: str = option("stream", "how a model with a recurrent state reads held-out text: stream (the "
                               "state carried through it, the usual protocol) or window (reset every "
                               "--seq-len tokens); Transformers always read windows", choices=EVAL_CONTEXTS,
                               legacy=_saved_eval_context)

    def check(self) -> None:
        tokens_lib.check_vocab_size(self.tokens, self.vocab_size)


@dataclass
class LMCorpus:
    """A tokenized corpus split into training and validation id streams.

    From prepared shards (``jaxseq prepare``) ``train`` is a memory-mapped
    :class:`~jaxseq.data.shards.TokenStream` and ``fingerprint`` the hash of
    the index's shard hashes; from a text file both are in memory.
    """

    train: np.ndarray | TokenStream      # (N_train,) int32, or the shards' stream
    valid: np.ndarray                    # (N_valid,) int32
    vocab: Vocab
    source: str
    fingerprint: str | None = None       # the data fingerprint when it is not a hash of the ids

    @property
    def sharded(self) -> bool:
        return isinstance(self.train, TokenStream)

    @property
    def train_tokens(self) -> int:
        return int(self.train.size)


def split_stream(ids: np.ndarray, valid_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The last ``valid_fraction`` of the stream is validation, the rest training."""
    n_valid = int(round(len(ids) * valid_fraction))
    return ids[: len(ids) - n_valid], ids[len(ids) - n_valid:]


def tokens_from_config(config: LMDataConfig, text: str) -> list[str]:
    return text_lib.tokenize(text_lib.preprocess(text, config.preprocess), config.tokens)


def load_corpus(config: LMDataConfig, vocab: Vocab | None = None) -> LMCorpus:
    """Read, preprocess, tokenize and split; build the vocabulary on the training part.

    The language-model vocabulary reserves only ``<unk>`` (there is no padding
    inside a window); pass ``vocab`` to reuse a saved one. A vocabulary built
    here must hold at least one real token (else a DataError names
    ``--min-freq``). Word tokens spelled like a reserved token (``<eos>``...)
    become ``<unk>``, with a one-line warning (see :mod:`jaxseq.data.vocab`).
    """
    from jaxseq.data import corpora

    config.validate()
    if is_prepared(config.data):
        return load_shards(config, vocab)
    text, source = corpora.load_text(config.data)
    if tokens_lib.is_subword(config.tokens):
        return _load_subword_corpus(config, text, source, vocab)
    tokens = tokens_from_config(config, text)
    if len(tokens) < 4:
        raise DataError(f"{source}: only {len(tokens)} tokens after preprocessing; give more text")
    if any(r in text for r in RESERVED_STRINGS):         # cheap test first: most texts hold none
        message = reserved_warning(count_reserved(tokens), source)
        if message:
            text_lib.warn(message)
    n_valid = int(round(len(tokens) * config.valid_fraction))
    train_tokens = tokens[: len(tokens) - n_valid]
    if vocab is None:
        vocab = Vocab.build(train_tokens, min_freq=config.min_freq, reserved_tokens=(UNK,))
        require_real_tokens(vocab, train_tokens, min_freq=config.min_freq, source=source, what="token",
                            of="the training text")
    ids = vocab.encode(tokens)
    train, valid = split_stream(ids, config.valid_fraction)
    return LMCorpus(train=train, valid=valid, vocab=vocab, source=source)


def load_shards(config: LMDataConfig, vocab: Vocab | None = None) -> LMCorpus:
    """A corpus from the shard directory ``config.data`` (see :mod:`jaxseq.data.shards`): the training
    stream memory-mapped, validation read whole, the vocabulary the index's (``vocab``: the run's saved
    one, refused if it is another)."""
    from jaxseq.data import shards

    saved = shards.tokenization(config.data)
    for name, value in to_dict(config).items():
        if name in saved and saved[name] != value:
            flag = "--" + name.replace("_", "-")
            raise DataError(f"{config.data}: prepared with {flag} {saved[name]}, the run has {flag} {value}; "
                            "train on shards prepared with the run's settings, or start a new --workdir")
    opened = shards.open_prepared(config.data, vocab)
    return LMCorpus(train=opened.train, valid=opened.valid, vocab=opened.vocab, source=str(config.data),
                    fingerprint=opened.fingerprint)
def _load_subword_corpus(config: LMDataConfig, text: str, source: str, vocab: Vocab | None) -> LMCorpus:
    """The subword path: the last ``valid_fraction`` of the *characters* is validation, the tokenizer is
    trained on the rest only, and each split is encoded on its own."""
    text = text_lib.preprocess(text, config.preprocess)
    n_valid = int(round(len(text) * config.valid_fraction))
    train_text, valid_text = text[: len(text) - n_valid], text[len(text) - n_valid:]
    if vocab is None:
        vocab = tokens_lib.build_vocab(config.tokens, [train_text], min_freq=config.min_freq,
                                       vocab_size=config.vocab_size, reserved_tokens=(UNK,), source=source)
    train = tokens_lib.encode(vocab, train_text, config.tokens)
    valid = tokens_lib.encode(vocab, valid_text, config.tokens)
    if len(train) + len(valid) < 4:
        raise DataError(f"{source}: only {len(train) + len(valid)} tokens after preprocessing; give more text")
    return LMCorpus(train=train, valid=valid, vocab=vocab, source=source)


class LMBatches(EpochBatches):
    """Training batches over epochs, resumable from ``(epoch, index)`` (see :mod:`jaxseq.data.epochs`).

    ``shard=(i, n)`` gives host ``i`` of ``n`` its rows ``[i B/n, (i+1) B/n)``
    of every global batch, so the hosts together see exactly the global batch.
    ``ids`` is an array or the memory-mapped :class:`TokenStream` of prepared
    shards: the same windows either way, and only this host's rows are read.
    """

    def __init__(self, ids: np.ndarray | TokenStream, *, seq_len: int, batch_size: int, sampling: str = "random",
                 seed: int = 0, shard: tuple[int, int] = (0, 1)):
        super().__init__()
        if sampling not in SAMPLING_CHOICES:
            raise ConfigError(f"--sampling must be one of {', '.join(SAMPLING_CHOICES)}, got {sampling!r}")
        self.ids = ids if isinstance(ids, TokenStream) else np.asarray(ids, dtype=np.int32)
        self.seq_len, self.batch_size, self.sampling, self.seed = seq_len, batch_size, sampling, seed
        self.rows = shard_rows(batch_size, shard)
        if self.batches_per_epoch < 1:
            raise DataError(f"the training text has {len(self.ids)} tokens, too few for one batch of "
                            f"{batch_size} x {seq_len + 1}; lower --batch-size or --seq-len, or give more text")

    def _offset(self, epoch: int) -> int:
        return int(fold_rng(self.seed, epoch).integers(self.seq_len))

    def _num_windows(self, offset: int) -> int:
        return (len(self.ids) - offset - 1) // self.seq_len

    @property
    def batches_per_epoch(self) -> int:
        """The same for every epoch: computed for the largest possible offset."""
        worst = self.seq_len - 1
        if self.sampling == "random":
            return self._num_windows(worst) // self.batch_size
        return (len(self.ids) - worst - 1) // self.batch_size // self.seq_len

    def layout(self, epoch: int) -> tuple[int, np.ndarray | int]:
        """What fixes ``epoch``'s windows, compactly: ``(offset, order)`` for random sampling (``order``:
        the window permutation as int32 where it fits, 4 bytes per window), ``(offset, stream_len)`` for
        sequential (nothing per window), so a corpus larger than memory costs little here."""
        offset = self._offset(epoch)
        if self.sampling == "random":
            n = self._num_windows(offset)
            order = np.arange(n, dtype=np.int32 if n < 2 ** 31 else np.int64)
            fold_rng(self.seed, epoch).shuffle(order)        # the same order as permutation(n), in place
            return offset, order[: self.batches_per_epoch * self.batch_size]
        return offset, (len(self.ids) - offset - 1) // self.batch_size

    def starts(self, epoch: int, index: int, layout: tuple | None = None) -> np.ndarray:
        """``(B,)`` start positions of the windows of batch ``index`` of ``epoch`` (every row)."""
        offset, order = self.layout(epoch) if layout is None else layout
        b, t = self.batch_size, self.seq_len
        if self.sampling == "random":
            return offset + t * order[index * b: (index + 1) * b].astype(np.int64)
        return offset + order * np.arange(b, dtype=np.int64) + t * index

    def window_starts(self, epoch: int) -> np.ndarray:
        """``(batches_per_epoch, B)`` start positions of every window of an epoch (all batches at once)."""
        layout = self.layout(epoch)
        return np.stack([self.starts(epoch, i, layout) for i in range(self.batches_per_epoch)])

    def batch(self, epoch: int, index: int, layout: tuple | None = None) -> Batch:
        """Batch ``index`` of ``epoch`` (this host's rows)."""
        window = take_windows(self.ids, self.starts(epoch, index, layout)[self.rows], self.seq_len + 1)
        return {"inputs": window[:, :-1], "targets": window[:, 1:],
                "weights": np.ones(window[:, 1:].shape, np.float32)}


class EvalBatches(Sequence):
    """:func:`eval_batches`, one batch at a time: batch ``i`` is gathered from ``ids`` (an array or the
    memory-mapped held-out shard) when it is read, so scoring a held-out text larger than memory holds one
    ``(B, T)`` batch. ``each`` (e.g. :func:`jaxseq.parallel.local_rows`) is applied to every batch.

    Row ``r``, column ``c`` of the layout is pair ``p = r * per_row + c``: input ``ids[p]``, target
    ``ids[p + 1]``, weight 1 for ``p < n = len(ids) - 1``, else padding (0, 0, weight 0).
    """

    def __init__(self, ids: np.ndarray, *, seq_len: int, batch_size: int,
                 each: Callable[[Batch], Batch] | None = None):
        self.ids, self.seq_len, self.batch_size, self.each = ids, seq_len, batch_size, each
        self.n = len(ids) - 1
        if self.n < 1:
            raise DataError("the validation text has fewer than 2 tokens; lower --valid-fraction or give more text")
        per_row = -(-self.n // batch_size)
        self.per_row = -(-per_row // seq_len) * seq_len

    def __len__(self) -> int:
        return self.per_row // self.seq_len

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        s = (i % len(self)) * self.seq_len
        pos = (np.arange(self.batch_size) * self.per_row)[:, None] + s + np.arange(self.seq_len)[None, :]
        real = pos < self.n
        at = np.minimum(pos, self.n - 1)
        ids = self.ids
        batch = {"inputs": np.where(real, ids[at], 0).astype(np.int32),
                 "targets": np.where(real, ids[at + 1], 0).astype(np.int32),
                 "weights": real.astype(np.float32)}
        return batch if self.each is None else self.each(batch)


def eval_batches(ids: np.ndarray, *, seq_len: int, batch_size: int) -> list[Batch]:
    """Every target of ``ids`` exactly once, as ``B`` contiguous streams.

    The ``n = len(ids) - 1`` (input, target) pairs are laid out as ``B``
    streams of equal length (padded at the end with weight 0) and cut into
    windows; window ``i + 1`` of a row continues window ``i``, so a recurrent
    state may be carried. All batches have shape ``(B, T)``, so evaluation
    compiles once, and the weight total is exactly ``n``. (:class:`EvalBatches`
    gives the same batches one at a time.)
    """
    return list(EvalBatches(np.asarray(ids, dtype=np.int32), seq_len=seq_len, batch_size=batch_size))
