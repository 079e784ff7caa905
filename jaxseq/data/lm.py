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

from dataclasses import dataclass
import numpy as np

from jaxseq.config import Config, option
from jaxseq.data import text as text_lib
from jaxseq.data import tokens as tokens_lib
from jaxseq.data.epochs import EpochBatches, fold_rng, shard_rows
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

    data: str = option("builtin", "a text file, 'builtin' (the Python reference shipped with CPython) "
                       "or a registered dataset (see `jaxseq data list`)")
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
    """A tokenized corpus split into training and validation id streams."""

    train: np.ndarray      # (N_train,) int32
    valid: np.ndarray      # (N_valid,) int32
    vocab: Vocab
    source: str

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
    """

    def __init__(self, ids: np.ndarray, *, seq_len: int, batch_size: int, sampling: str = "random",
                 seed: int = 0, shard: tuple[int, int] = (0, 1)):
        super().__init__()
        if sampling not in SAMPLING_CHOICES:
            raise ConfigError(f"--sampling must be one of {', '.join(SAMPLING_CHOICES)}, got {sampling!r}")
        self.ids = np.asarray(ids, dtype=np.int32)
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

    def window_starts(self, epoch: int) -> np.ndarray:
        """``(batches_per_epoch, B)`` start positions of every window of an epoch (the epoch's layout)."""
        offset, nb, b, t = self._offset(epoch), self.batches_per_epoch, self.batch_size, self.seq_len
        if self.sampling == "random":
            order = fold_rng(self.seed, epoch).permutation(self._num_windows(offset))
            return offset + t * order[: nb * b].reshape(nb, b)
        stream_len = (len(self.ids) - offset - 1) // b
        return offset + stream_len * np.arange(b)[None, :] + t * np.arange(nb)[:, None]

    layout = window_starts

    def batch(self, epoch: int, index: int, starts: np.ndarray | None = None) -> Batch:
        """Batch ``index`` of ``epoch`` (this host's rows)."""
        if starts is None:
            starts = self.window_starts(epoch)
        rows = starts[index, self.rows]
        pos = rows[:, None] + np.arange(self.seq_len + 1)[None, :]
        window = self.ids[pos]
        return {"inputs": window[:, :-1], "targets": window[:, 1:],
                "weights": np.ones(window[:, 1:].shape, np.float32)}


def eval_batches(ids: np.ndarray, *, seq_len: int, batch_size: int) -> list[Batch]:
    """Every target of ``ids`` exactly once, as ``B`` contiguous streams.

    The ``n = len(ids) - 1`` (input, target) pairs are laid out as ``B``
    streams of equal length (padded at the end with weight 0) and cut into
    windows; window ``i + 1`` of a row continues window ``i``, so a recurrent
    state may be carried. All batches have shape ``(B, T)``, so evaluation
    compiles once, and the weight total is exactly ``n``.
    """
    ids = np.asarray(ids, dtype=np.int32)
    n = len(ids) - 1
    if n < 1:
        raise DataError("the validation text has fewer than 2 tokens; lower --valid-fraction or give more text")
    per_row = -(-n // batch_size)
    per_row = -(-per_row // seq_len) * seq_len
    total = per_row * batch_size
    pad = total - n
    inputs = np.concatenate([ids[:-1], np.zeros(pad, np.int32)]).reshape(batch_size, per_row)
    targets = np.concatenate([ids[1:], np.zeros(pad, np.int32)]).reshape(batch_size, per_row)
    weights = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)]).reshape(batch_size, per_row)
    return [{"inputs": inputs[:, s:s + seq_len], "targets": targets[:, s:s + seq_len],
             "weights": weights[:, s:s + seq_len]} for s in range(0, per_row, seq_len)]
