"""BERT pretraining data: text -> paragraphs -> sentences -> sentence pairs -> masked batches.

Sentences
    The text is cut into paragraphs at blank lines; ``--sentences punct``
    splits a paragraph into sentences after ``.``, ``!`` or ``?`` followed by
    white space (line breaks inside a paragraph are spaces), ``line`` takes
    each non-empty line of a paragraph as a sentence. Each sentence is
    tokenized on its own through the language model's tokenization
    (:func:`jaxseq.data.lm.tokens_from_config`: ``--tokens``, ``--preprocess``).

Pairs (next-sentence prediction, Devlin et al. 2019; D2L 15.9)
    Every two consecutive sentences ``(A, B)`` of a paragraph are a pair.
    Each time a pair is drawn, ``B`` is kept with probability 1/2 (label 1,
    "is next") or replaced by a sentence drawn uniformly from the split's
    sentences (label 0). The input is::

        <cls> A <sep> B <sep> <pad> ...       tokens    (T,)
          0   0   0   1   1    0   ...        segments  (T,)

    cut to ``T = --seq-len`` by dropping tokens from the end of the longer of
    A and B (BERT's ``truncate_seq_pair``).

Masking (the masked language model)
    Of the ``n`` non-special positions of an input, ``m = max(1, round(p n))``
    (``p = --mask-prob``), at most ``P = ceil(p T)``, are chosen uniformly
    without replacement; each chosen token becomes ``<mask>`` with probability
    0.8, a token drawn uniformly from the non-special vocabulary with
    probability 0.1, and stays itself with probability 0.1. The model predicts
    the original token at each chosen position: ``mlm_positions``,
    ``mlm_targets`` and ``mlm_weights`` are ``(P,)`` per row (weight 0 on
    unused slots), so the output layer runs on ``P`` positions, not ``T``.
    ``<cls> <sep> <pad>`` are never chosen.

Where the randomness comes from
    Masking is done on the host, in NumPy. Training batch ``i`` of epoch
    ``e`` draws its pairs' ``B`` sentences and its masks from
    ``fold_rng(seed, e, i)``, and the epoch's order of pairs from
    ``fold_rng(seed, e)`` (:mod:`jaxseq.data.epochs`): a batch is a pure
    function of ``(seed, epoch, index)``, so the iterator position saved in a
    checkpoint resumes the exact stream of masks. The held-out pairs and
    masks are drawn once from ``--valid-seed`` (not ``--seed``), so runs with
    different seeds are validated on the same masked inputs.

A batch (``B`` rows, ``T`` positions, ``P`` prediction slots)::

    tokens (B, T) int32     segments (B, T) int32     valid_len (B,) int32
    mlm_positions, mlm_targets (B, P) int32           mlm_weights (B, P) float32
    nsp_labels (B,) int32 (1: B follows A)            nsp_weights (B,) float32 (0: padding row)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from jaxseq.config import Config, option
from jaxseq.data import text as text_lib
from jaxseq.data import tokens as tokens_lib
from jaxseq.data.epochs import EpochBatches, fold_rng, shard_rows
from jaxseq.data.vocab import PAD, UNK, Vocab, require_real_tokens
from jaxseq.data.subword import SubwordVocab
from jaxseq.errors import ConfigError, DataError

CLS, SEP, MASK = "<cls>", "<sep>", "<mask>"
MLM_RESERVED = (PAD, UNK, CLS, SEP, MASK)          # the vocabulary's first ids, in this order
SENTENCE_RULES = ("punct", "line")
Batch = dict[str, np.ndarray]

_PARAGRAPHS = re.compile(r"\n[ \t]*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class MLMDataConfig(Config):
    """Where the text comes from, how it is cut into sentence pairs and masked, and the batch shape."""

    data: str = option("builtin", "a text file, 'builtin' (the Python reference shipped with CPython) "
                       "or a registered dataset (see `jaxseq data list`)")
    tokens: str = option("word", "token level: characters, words, or subwords trained on the training paragraphs "
                         "(bpe, wordpiece; byte-level)", choices=tokens_lib.TOKEN_CHOICES)
    vocab_size: int | None = option(None, tokens_lib.VOCAB_SIZE_HELP, minimum=1)
    preprocess: str = option("d2l", "text preprocessing of each sentence (d2l: letters only, lowercased)",
                             choices=text_lib.PREPROCESS_CHOICES)
    sentences: str = option("punct", "how paragraphs (split at blank lines) become sentences: punct (after . ! ? "
                            "and white space) or line (each line)", choices=SENTENCE_RULES)
    valid_fraction: float = option(0.1, "the last fraction of the paragraphs held out for validation",
                                   above=0.0, below=1.0)
    min_freq: int = option(5, "tokens seen fewer times than this become <unk> (subwords: pairs seen fewer times "
                           "are not merged)", minimum=1)
    seq_len: int = option(64, "positions per input <cls> A <sep> B <sep> (longer pairs are cut)", minimum=5)
    batch_size: int = option(32, "sentence pairs per batch (the global batch, over all devices and hosts)",
                             minimum=1)
    mask_prob: float = option(0.15, "fraction of the tokens the masked LM predicts (of them 8 in 10 become <mask>, "
                              "1 in 10 a random token, 1 in 10 stay)", above=0.0, below=1.0)
    nsp: bool = option(True, "next-sentence prediction: B follows A half the time and the model says which "
                       "(--no-nsp: B always follows A, masked LM only)")
    valid_seed: int = option(0, "seed of the held-out pairs and masks (fixed, so runs compare)")

    def check(self) -> None:
        tokens_lib.check_vocab_size(self.tokens, self.vocab_size)

    @property
    def predictions(self) -> int:
        """``P = ceil(mask_prob T)``: prediction slots per row."""
        return max(1, math.ceil(self.mask_prob * self.seq_len))


# -- text -> sentences ----------------------------------------------------------------------

def split_sentences(text: str, rule: str = "punct") -> list[list[str]]:
    """Paragraphs (blank-line separated) as lists of sentences (module docstring); empty ones dropped."""
    out = []
    for block in _PARAGRAPHS.split(text):
        if rule == "line":
            sentences = [line.strip() for line in block.splitlines()]
        else:
            sentences = [s.strip() for s in _SENTENCE_END.split(" ".join(block.split()))]
        sentences = [s for s in sentences if s]
        if sentences:
            out.append(sentences)
    return out


@dataclass
class SentenceSplit:
    """One split's sentences as token ids and its candidate pairs.

    ``sentences[k]`` is an ``int32`` array; ``pairs`` ``(N, 2)`` holds the
    indices of every two consecutive sentences of a paragraph.
    """

    sentences: list[np.ndarray]
    pairs: np.ndarray

    @property
    def tokens(self) -> int:
        return int(sum(len(s) for s in self.sentences))


@dataclass
class MLMCorpus:
    train: SentenceSplit
    valid: SentenceSplit
    vocab: Vocab
    source: str


def encode_text_tokens(vocab: Vocab, tokens: Sequence[str]) -> np.ndarray:
    """Ids of text tokens; a text token spelled like a special (``<mask>``...) is ``<unk>``, never the special."""
    specials = set(MLM_RESERVED)
    return vocab.encode(UNK if t in specials else t for t in tokens)


def sentence_tokens(config, text: str) -> list[str]:
    """The tokens of one sentence (``--preprocess`` applied): characters or words; for subwords its
    words, which :func:`encode_sentences` joins by single spaces and cuts with the tokenizer."""
    kind = "word" if tokens_lib.is_subword(config.tokens) else config.tokens
    return text_lib.tokenize(text_lib.preprocess(text, config.preprocess), kind)


def check_tokenizer(vocab: Vocab, kind: str, where: str) -> None:
    """A saved or pretrained vocabulary must be of the run's ``--tokens`` kind (subword or not, and which)."""
    have = vocab.kind if isinstance(vocab, SubwordVocab) else None
    if (have is None) != (not tokens_lib.is_subword(kind)) or (have is not None and have != kind):
        raise ConfigError(f"{where}: the vocabulary is {have or 'a char/word one'}, the run asks for --tokens "
                          f"{kind}; give --tokens {have or 'word'} (or leave --tokens out) to use it")


def encode_sentences(vocab: Vocab, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Each sentence's ids: its tokens looked up (:func:`encode_text_tokens`), or, with a subword
    vocabulary, its words joined by single spaces through the tokenizer (never ``<unk>``)."""
    if isinstance(vocab, SubwordVocab):
        ids, lengths = vocab.encode_sentences(sentences)
        return [a.astype(np.int32) for a in np.split(ids, np.cumsum(lengths)[:-1])] if len(sentences) else []
    return [encode_text_tokens(vocab, s) for s in sentences]


def _split(paragraphs: list[list[list[str]]], vocab: Vocab) -> SentenceSplit:
    flat, pairs = [], []
    for para in paragraphs:
        para = [s for s in para if s]
        start = len(flat)
        flat.extend(para)
        pairs.extend((start + i, start + i + 1) for i in range(len(para) - 1))
    return SentenceSplit(encode_sentences(vocab, flat), np.asarray(pairs, np.int64).reshape(-1, 2))


def load_mlm_corpus(config: MLMDataConfig, vocab: Vocab | None = None) -> MLMCorpus:
    """Read, split into paragraphs and sentences, tokenize; the last ``--valid-fraction`` of the
    paragraphs is held out. The vocabulary (``<pad> <unk> <cls> <sep> <mask>`` first) is built on
    the training paragraphs unless ``vocab`` is given. A split without two consecutive sentences
    (no pair) is a one-line DataError."""
    from jaxseq.data import corpora

    config.validate()
    text, source = corpora.load_text(config.data)
    paragraphs = [[sentence_tokens(config, s) for s in para]
                  for para in split_sentences(text, config.sentences)]
    count = sum(len(p) for p in paragraphs)
    if count < 2 or not any(len([s for s in p if s]) >= 2 for p in paragraphs):
        raise DataError(f"{source}: {count} sentence(s) and no paragraph with two consecutive sentences, so no "
                        f"sentence pairs; give text with several sentences per paragraph (paragraphs are split at "
                        f"blank lines; try --sentences {'line' if config.sentences == 'punct' else 'punct'})")
    n_valid = int(round(len(paragraphs) * config.valid_fraction))
    train_par, valid_par = paragraphs[:len(paragraphs) - n_valid], paragraphs[len(paragraphs) - n_valid:]
    if vocab is None:
        vocab = build_vocab(config, [s for p in train_par for s in p], source)
    else:
        check_tokenizer(vocab, config.tokens, source)
    train, valid = _split(train_par, vocab), _split(valid_par, vocab)
    for name, split, par in (("training", train, train_par), ("validation", valid, valid_par)):
        if len(split.pairs) == 0:
            raise DataError(f"{source}: the {name} split ({len(par)} paragraph(s)) has no two consecutive "
                            "sentences, so no sentence pairs; give more text or change --valid-fraction")
    return MLMCorpus(train, valid, vocab, source)


def build_vocab(config, sentences: Sequence[Sequence[str]], source: str) -> Vocab:
    """The vocabulary of the training ``sentences`` (token lists from :func:`sentence_tokens`), reserving
    ``<pad> <unk> <cls> <sep> <mask>`` as ids 0-4: every token seen ``--min-freq`` times, or a
    ``--tokens bpe|wordpiece`` tokenizer of ``--vocab-size`` trained on the sentences (words joined by
    single spaces, one sentence a line)."""
    if tokens_lib.is_subword(config.tokens):
        return tokens_lib.build_vocab(config.tokens, [" ".join(s) for s in sentences if s],
                                      min_freq=config.min_freq, vocab_size=config.vocab_size,
                                      reserved_tokens=MLM_RESERVED, source=source)
    flat = [t for s in sentences for t in s]
    vocab = Vocab.build(flat, min_freq=config.min_freq, reserved_tokens=MLM_RESERVED)
    require_real_tokens(vocab, flat, min_freq=config.min_freq, source=source, what="token", of="the training text")
    return vocab


# -- pairs and masks ---------------------------------------------------------------------------

class Specials:
    """The special ids of an MLM vocabulary and the ids random replacements are drawn from."""

    def __init__(self, vocab: Vocab):
        missing = [t for t in MLM_RESERVED if t not in vocab]
        if missing:
            raise DataError(f"the vocabulary lacks {' '.join(missing)}; it is not a masked-LM vocabulary")
        self.pad, self.cls, self.sep, self.mask = (vocab.index(t) for t in (PAD, CLS, SEP, MASK))
        special = {vocab.index(t) for t in MLM_RESERVED}
        self.ordinary = np.array([i for i in range(len(vocab)) if i not in special], np.int32)
        if not len(self.ordinary):
            self.ordinary = np.array([vocab.unk], np.int32)


def pair_lengths(la: int, lb: int, room: int) -> tuple[int, int]:
    """Lengths of A and B after BERT's ``truncate_seq_pair`` to ``room`` tokens: drop the last token of the
    longer side (A on a tie) until they fit, in closed form."""
    if la + lb <= room:
        return la, lb
    if 2 * min(la, lb) <= room:
        return (la, room - la) if la <= lb else (room - lb, lb)
    return room // 2, room - room // 2


def pack_pair(a: np.ndarray, b: np.ndarray | None, seq_len: int, sp: Specials) -> tuple[np.ndarray, np.ndarray, int]:
    """``<cls> a <sep> [b <sep>]`` cut to ``seq_len`` (:func:`pair_lengths`) and padded
    -> ``(tokens (T,), segments (T,), valid length)``."""
    tokens = np.full(seq_len, sp.pad, np.int32)
    segments = np.zeros(seq_len, np.int32)
    if b is None:
        la = min(len(a), seq_len - 2)
        tokens[0], tokens[1:1 + la], tokens[1 + la] = sp.cls, a[:la], sp.sep
        return tokens, segments, la + 2
    la, lb = pair_lengths(len(a), len(b), seq_len - 3)
    tokens[0], tokens[1:1 + la], tokens[1 + la] = sp.cls, a[:la], sp.sep
    tokens[2 + la:2 + la + lb], tokens[2 + la + lb] = b[:lb], sp.sep
    segments[2 + la:3 + la + lb] = 1
    return tokens, segments, la + lb + 3


def mask_tokens(tokens: np.ndarray, valid_len: np.ndarray, mask_prob: float, predictions: int, sp: Specials,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """BERT's masking (module docstring) of ``tokens`` ``(N, T)`` with valid lengths ``(N,)`` -> ``(masked
    tokens (N, T), positions (N, P), targets (N, P), weights (N, P))``; chosen positions in increasing order.

    Positions are chosen without replacement as the ``m`` smallest of uniform keys over the candidates.
    """
    n, t = tokens.shape
    p = predictions
    candidate = ((tokens != sp.cls) & (tokens != sp.sep) & (tokens != sp.pad)
                 & (np.arange(t)[None, :] < np.asarray(valid_len)[:, None]))
    count = candidate.sum(axis=1)
    m = np.minimum(np.minimum(p, count), np.maximum(1, np.rint(mask_prob * count).astype(np.int64)))
    keys = np.where(candidate, rng.random((n, t)), np.inf)
    order = np.argsort(keys, axis=1, kind="stable")[:, :p]
    used = np.arange(p)[None, :] < m[:, None]
    positions = np.sort(np.where(used, order, t), axis=1)            # unused slots sort last
    used = positions < t
    positions = np.where(used, positions, 0).astype(np.int32)
    rows = np.arange(n)[:, None]
    targets = np.where(used, tokens[rows, positions], 0).astype(np.int32)
    u = rng.random((n, p))
    random_ids = sp.ordinary[rng.integers(len(sp.ordinary), size=(n, p))]
    replaced = np.where(u < 0.8, sp.mask, np.where(u < 0.9, random_ids, targets))
    masked = tokens.copy()
    masked[rows.repeat(p, 1)[used], positions[used]] = replaced[used]
    return masked, positions, targets, used.astype(np.float32)


def make_examples(split: SentenceSplit, pair_ids: np.ndarray, config: MLMDataConfig, sp: Specials,
                  rng: np.random.Generator) -> Batch:
    """Masked inputs of the pairs ``pair_ids`` (indices into ``split.pairs``), drawing the random next
    sentences and the masks from ``rng`` -> a batch (module docstring)."""
    n, t = len(pair_ids), config.seq_len
    pairs = split.pairs[np.asarray(pair_ids, np.int64)].copy()
    labels = np.ones(n, np.int32)
    if config.nsp:
        swap = rng.random(n) < 0.5
        pairs[swap, 1] = rng.integers(len(split.sentences), size=int(swap.sum()))
        labels[swap] = 0
    tokens = np.zeros((n, t), np.int32)
    segments = np.zeros((n, t), np.int32)
    valid_len = np.zeros(n, np.int32)
    for row, (first, second) in enumerate(pairs.tolist()):
        tokens[row], segments[row], valid_len[row] = pack_pair(split.sentences[first], split.sentences[second], t, sp)
    masked, positions, targets, weights = mask_tokens(tokens, valid_len, config.mask_prob, config.predictions, sp, rng)
    return {"tokens": masked, "segments": segments, "valid_len": valid_len, "mlm_positions": positions,
            "mlm_targets": targets, "mlm_weights": weights, "nsp_labels": labels,
            "nsp_weights": np.ones(n, np.float32)}


class MLMBatches(EpochBatches):
    """Training batches of masked sentence pairs, resumable from ``(epoch, index)``.

    An epoch deals every pair once in an order from ``fold_rng(seed, epoch)``;
    batch ``index`` draws its random next sentences and masks from
    ``fold_rng(seed, epoch, index)``. ``shard=(i, n)``: this host's rows.
    """

    def __init__(self, split: SentenceSplit, vocab: Vocab, config: MLMDataConfig, *, seed: int = 0,
                 shard: tuple[int, int] = (0, 1)):
        super().__init__()
        self.split, self.config, self.seed, self.specials = split, config, seed, Specials(vocab)
        self.batch_size = config.batch_size
        self.rows = shard_rows(config.batch_size, shard)
        if self.batches_per_epoch < 1:
            raise DataError(f"the training split has {len(split.pairs)} sentence pairs, too few for one batch of "
                            f"{config.batch_size}; lower --batch-size or give more text")

    @property
    def batches_per_epoch(self) -> int:
        return len(self.split.pairs) // self.batch_size

    def layout(self, epoch: int) -> np.ndarray:
        order = fold_rng(self.seed, epoch).permutation(len(self.split.pairs))
        return order[: self.batches_per_epoch * self.batch_size].reshape(self.batches_per_epoch, self.batch_size)

    def batch(self, epoch: int, index: int, layout: np.ndarray | None = None) -> Batch:
        if layout is None:
            layout = self.layout(epoch)
        full = make_examples(self.split, layout[index], self.config, self.specials,
                             fold_rng(self.seed, epoch, index))
        return {k: v[self.rows] for k, v in full.items()}


def eval_batches(split: SentenceSplit, vocab: Vocab, config: MLMDataConfig) -> list[Batch]:
    """Every held-out pair once, with next sentences and masks fixed by ``--valid-seed``, in batches of
    ``--batch-size`` (the last padded with rows of weight 0, so every batch has one shape)."""
    sp = Specials(vocab)
    examples = make_examples(split, np.arange(len(split.pairs)), config, sp, fold_rng(config.valid_seed, 1 << 20))
    n, b = len(split.pairs), config.batch_size
    total = -(-n // b) * b
    padded = {}
    for k, v in examples.items():
        pad = np.zeros((total - n,) + v.shape[1:], v.dtype)
        if k == "tokens":
            pad[:, 0] = sp.cls
        if k == "valid_len":
            pad[:] = 1
        if k == "nsp_weights":
            pad[:] = 0.0
        padded[k] = np.concatenate([v, pad])
    return [{k: v[s:s + b] for k, v in padded.items()} for s in range(0, total, b)]
