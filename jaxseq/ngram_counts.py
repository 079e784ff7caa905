"""k-gram counting for the n-gram models, vectorised in NumPy.

The k-gram ending at position ``t`` is one integer key: the rank of its
(k-1)-gram prefix among the distinct (k-1)-grams, times ``V``, plus its last
id (so keys stay below ``#distinct (k-1)-grams x V`` and never overflow).
``np.unique`` of the keys gives the counts ``c(h w)`` of :mod:`jaxseq.ngram`,
and ``np.searchsorted`` finds a k-gram's rank among them when scoring.
"""

from __future__ import annotations

import numpy as np

from jaxseq.errors import ConfigError, DataError


def check_ids(ids, vocab_size: int, what: str) -> np.ndarray:
    """``ids`` as a 1-D int64 array with every value in ``[0, vocab_size)``."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise DataError(f"{what}: expected a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{what}: token ids must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise DataError(f"{what}: token id {bad} is outside the vocabulary [0, {vocab_size}); "
                        "encode the text with the model's vocabulary")
    return arr.astype(np.int64, copy=False)


def count_keys(x: np.ndarray, order: int, vocab_size: int):
    """Per order k = 1..order: sorted unique keys, their counts, and the positional ranks.

    ``ranks[k-1][t]`` is the index in ``keys[k-1]`` of the k-gram ending at
    position ``t`` (``-1`` for ``t < k - 1``).
    """
    n_tok = len(x)
    keys, counts, ranks = [], [], []
    prev = None
    for k in range(1, order + 1):
        rank = np.full(n_tok, -1, np.int64)
        if n_tok >= k:
            cand = x if k == 1 else prev[k - 2:n_tok - 1] * vocab_size + x[k - 1:]
            uniq, inv, cnt = np.unique(cand, return_inverse=True, return_counts=True)
            rank[k - 1:] = inv.reshape(-1)
        else:
            uniq, cnt = np.zeros(0, np.int64), np.zeros(0, np.int64)
        keys.append(uniq.astype(np.int64, copy=False))
        counts.append(cnt.astype(np.int64, copy=False))
        ranks.append(rank)
        prev = rank
    return keys, counts, ranks


def lookup_ranks(keys: list[np.ndarray], x: np.ndarray, vocab_size: int) -> list[np.ndarray]:
    """Positional ranks of ``x``'s k-grams in trained key tables (``-1``: unseen or before the start)."""
    n_tok = len(x)
    out, prev = [], None
    for k, table in enumerate(keys, start=1):
        rank = np.full(n_tok, -1, np.int64)
        if n_tok >= k and table.size:
            # an unseen context has rank -1, so its candidate key is negative and never matches
            cand = x if k == 1 else prev[k - 2:n_tok - 1] * vocab_size + x[k - 1:]
            pos = np.minimum(np.searchsorted(table, cand), table.size - 1)
            rank[k - 1:] = np.where(table[pos] == cand, pos, -1)
        out.append(rank)
        prev = rank
    return out


def ngram_counts(ids, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every distinct n-gram of ``ids`` and its count.

    Returns ``(grams (U, n) int64, counts (U,) int64)``, the n-grams in
    lexicographic order.
    """
    if n < 1:
        raise ConfigError(f"n-gram length must be at least 1, got {n}")
    x = np.asarray(ids)
    if x.ndim != 1 or (x.size and not np.issubdtype(x.dtype, np.integer)) or (x.size and x.min() < 0):
        raise DataError("ngram_counts: expected a 1-D sequence of non-negative integer token ids")
    x = x.astype(np.int64, copy=False)
    if len(x) < n:
        return np.zeros((0, n), np.int64), np.zeros(0, np.int64)
    vocab_size = int(x.max()) + 1
    _, counts, ranks = count_keys(x, n, vocab_size)
    end = np.empty(counts[-1].size, np.int64)
    end[ranks[-1][n - 1:]] = np.arange(n - 1, len(x))  # a position where each n-gram ends (any will do)
    grams = x[end[:, None] + np.arange(1 - n, 1)[None, :]]
    return grams, counts[-1]


def top_ngrams(ids, n: int, k: int) -> list[tuple[tuple[int, ...], int]]:
    """The ``k`` most frequent n-grams of ``ids`` as ``[(ngram, count), ...]``.

    Sorted by decreasing count; ties in lexicographic order of the n-grams.
    """
    grams, counts = ngram_counts(ids, n)
    order = np.argsort(-counts, kind="stable")[:max(k, 0)]
    return [(tuple(g), int(c)) for g, c in zip(grams[order].tolist(), counts[order].tolist())]
