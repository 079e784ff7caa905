"""The vocabulary: tokens <-> indices, with reserved tokens and ``<unk>``."""

from __future__ import annotations

import collections
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from jaxseq.errors import DataError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
DEFAULT_RESERVED = (PAD, BOS, EOS, UNK)


class Vocab:
    """An ordered token list and its inverse map.

    Order is deterministic: the reserved tokens first (in the order given),
    then the other tokens by decreasing frequency, ties broken by the tokens'
    code points. Tokens seen fewer than ``min_freq`` times are left out and map
    to ``<unk>``, which is always present.
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
        self.unk: int = self.token_to_idx[UNK]

    @classmethod
    def build(cls, tokens: Iterable[str], *, min_freq: int = 1,
              reserved_tokens: Sequence[str] = DEFAULT_RESERVED) -> "Vocab":
        reserved = list(dict.fromkeys(list(reserved_tokens) + ([UNK] if UNK not in reserved_tokens else [])))
        counts = collections.Counter(tokens)
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in reserved),
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
        """Token indices as an ``int32`` array; unknown tokens become ``<unk>``."""
        get, unk = self.token_to_idx.get, self.unk
        return np.fromiter((get(t, unk) for t in tokens), dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> list[str]:
        table = self.idx_to_token
        return [table[i] for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist()]

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """The tokens (in order, without repeats) the vocabulary does not hold."""
        return list(dict.fromkeys(t for t in tokens if t not in self.token_to_idx))

    def fingerprint(self) -> str:
        """sha256 of the ordered token list: equal iff the vocabularies are equal."""
        data = json.dumps(self.idx_to_token, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(data).hexdigest()

    def to_json(self) -> dict:
        return {"tokens": self.idx_to_token, "fingerprint": self.fingerprint()}

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocab":
        from jaxseq.data.text import read_text
        try:
            data = json.loads(read_text(path))
            vocab = cls(data["tokens"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(f"{path}: not a jaxseq vocabulary file ({err})") from None
        if "fingerprint" in data and data["fingerprint"] != vocab.fingerprint():
            raise DataError(f"{path}: fingerprint does not match its tokens; the file was edited or damaged")
        return vocab
