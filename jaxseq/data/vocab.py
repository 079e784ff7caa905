"""The vocabulary: tokens <-> indices, with reserved tokens and ``<unk>``.

Reserved token strings in the text
    ``<pad> <bos> <eos> <unk>`` name special tokens, so a word (or a character
    sequence the tokenizer keeps together) that happens to be spelled like one
    must not become that special token: a literal ``<eos>`` in a training
    sentence would otherwise teach a translation model to stop there. Text
    tokens spelled like a reserved token are therefore *escaped*: they are
    never counted into a vocabulary and :meth:`Vocab.encode` maps them to
    ``<unk>`` (a literal ``<unk>`` so keeps its meaning). Special ids come only
    from :attr:`Vocab.pad`, :attr:`Vocab.bos`, :attr:`Vocab.eos`. The data
    loaders count such occurrences and warn once per file
    (:func:`count_reserved`, :func:`reserved_warning`).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from jaxseq.errors import DataError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
DEFAULT_RESERVED = (PAD, BOS, EOS, UNK)
RESERVED_STRINGS = frozenset(DEFAULT_RESERVED)   # text tokens spelled like these are read as <unk>


class Vocab:
    """An ordered token list and its inverse map.

    Order is deterministic: the reserved tokens first (in the order given),
    then the other tokens by decreasing frequency, ties broken by the tokens'
    code points. Tokens seen fewer than ``min_freq`` times are left out and map
    to ``<unk>``, which is always present.

    Text tokens spelled like a reserved token (``<pad> <bos> <eos> <unk>``,
    :data:`RESERVED_STRINGS`) are escaped: :meth:`build` never counts them
    and :meth:`encode` maps them to ``<unk>``, never to the special id (see
    the module docstring). ``token_to_idx`` holds every entry, reserved ones
    included; ``text_to_idx`` is the map text goes through (without them).
    """

    def __init__(self, idx_to_token: Sequence[str]):
        tokens = list(idx_to_token)
        if UNK not in tokens:
            raise DataError(f"a vocabulary needs the {UNK} token")
        if len(set(tokens)) != len(tokens):
            dup = [t for t, n in collections.Counter(tokens).items() if n > 1][0]
            raise DataError(f"vocabulary lists the token {dup!r} twice")
        self.idx_to_token: list[str] = tokens
        self.token_to_idx: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.text_to_idx: dict[str, int] = {t: i for t, i in self.token_to_idx.items() if t not in RESERVED_STRINGS}
        self.unk: int = self.token_to_idx[UNK]

    @classmethod
    def build(cls, tokens: Iterable[str], *, min_freq: int = 1,
              reserved_tokens: Sequence[str] = DEFAULT_RESERVED) -> "Vocab":
        """The vocabulary of ``tokens``: ``reserved_tokens`` (and ``<unk>``) first, then every token seen
        at least ``min_freq`` times (text tokens spelled like a reserved token are never counted)."""
        return cls.from_counts(collections.Counter(tokens), min_freq=min_freq, reserved_tokens=reserved_tokens)

    @classmethod
    def from_counts(cls, counts: collections.Counter, *, min_freq: int = 1,
                    reserved_tokens: Sequence[str] = DEFAULT_RESERVED) -> "Vocab":
        """:meth:`build` from token counts (``jaxseq prepare`` merges the counts of a corpus streamed in chunks)."""
        reserved = list(dict.fromkeys(list(reserved_tokens) + ([UNK] if UNK not in reserved_tokens else [])))
        kept = sorted((t for t, c in counts.items()
                       if c >= min_freq and t not in reserved and t not in RESERVED_STRINGS),
                      key=lambda t: (-counts[t], t))
        return cls(reserved + kept)

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __contains__(self, token: str) -> bool:
        return token in self.token_to_idx

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.idx_to_token == other.idx_to_token

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, fingerprint={self.fingerprint()[:12]})"

    def index(self, token: str) -> int | None:
        """Index of a (reserved) token, or None where the vocabulary lacks it."""
        return self.token_to_idx.get(token)

    @property
    def pad(self) -> int | None:
        return self.index(PAD)

    @property
    def bos(self) -> int | None:
        return self.index(BOS)

    @property
    def eos(self) -> int | None:
        return self.index(EOS)

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Indices of text tokens as an ``int32`` array.

        Unknown tokens become ``<unk>``, and so do tokens spelled like a
        reserved token (``"<eos>"`` in the text is ``<unk>``, not ``eos``).
        """
        get, unk = self.text_to_idx.get, self.unk
        return np.fromiter(map(get, tokens, itertools.repeat(unk)), dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> list[str]:
        table = self.idx_to_token
        return [table[i] for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist()]

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """The text tokens (in order, without repeats) that :meth:`encode` makes ``<unk>``."""
        return list(dict.fromkeys(t for t in tokens if t not in self.text_to_idx))

    def fingerprint(self) -> str:
        """sha256 of the ordered token list: equal iff the vocabularies are equal."""
        data = json.dumps(self.idx_to_token, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(data).hexdigest()

    def fingerprints(self, name: str) -> dict[str, str]:
        """What a checkpoint's manifest records of this vocabulary saved as ``name`` (a subword
        vocabulary adds its tokenizer's fingerprint)."""
        return {name: self.fingerprint()}

    def to_json(self) -> dict:
        return {"tokens": self.idx_to_token, "fingerprint": self.fingerprint()}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocab":
        """A saved vocabulary; one saved with a subword tokenizer (``"subword"`` in its JSON) comes back as a
        :class:`~jaxseq.data.subword.SubwordVocab` with the tokenizer file beside it."""
        from jaxseq.data.text import read_text
        try:
            data = json.loads(read_text(path))
            vocab = Vocab(data["tokens"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a jaxseq vocabulary file ({err})") from None
        if "fingerprint" in data and data["fingerprint"] != vocab.fingerprint():
            raise DataError(f"{path}: fingerprint does not match its tokens; the file was edited or damaged")
        if "subword" in data:
            from jaxseq.data.subword import SubwordVocab
            return SubwordVocab.from_saved(path, data)
        return vocab


def count_reserved(tokens: Iterable[str]) -> collections.Counter:
    """How often each reserved token string (``<pad> <bos> <eos> <unk>``) occurs among text ``tokens``."""
    return collections.Counter(t for t in tokens if t in RESERVED_STRINGS)


def reserved_warning(counts: collections.Counter, source: str) -> str | None:
    """One line for the warning about reserved token strings in ``source``'s text (None if there are none)."""
    total = sum(counts.values())
    if not total:
        return None
    each = ", ".join(f"{t} x{n}" for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return (f"{source}: {total} occurrence{'s' if total > 1 else ''} of reserved token strings in the text "
            f"({each}) are read as <unk>, not as the special tokens; rename them in the file if they are words")


def require_real_tokens(vocab: Vocab, tokens: Iterable[str], *, min_freq: int, source: str, what: str,
                        of: str) -> None:
    """Refuse a newly built vocabulary that holds nothing but reserved tokens.

    Every token would then be ``<unk>`` and a model would learn nothing (a
    language model's perplexity is a meaningless 1.000). ``tokens`` are the
    ones the vocabulary was built from; the one-line DataError reads
    ``{source}: --min-freq N keeps no {what} of {of} ...``.
    """
    if any(t not in RESERVED_STRINGS for t in vocab.idx_to_token):
        return
    counts = collections.Counter(t for t in tokens if t not in RESERVED_STRINGS)
    if not counts:
        raise DataError(f"{source}: {of} holds no {what} other than reserved token strings "
                        f"({' '.join(DEFAULT_RESERVED)}); give real text")
    top, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    raise DataError(f"{source}: --min-freq {min_freq} keeps no {what} of {of} (the most frequent, {top!r}, is seen "
                    f"{n} time{'s' if n > 1 else ''}), so every {what} would be <unk>; "
                    f"lower --min-freq to {n} or less, or give more text")
