"""Count-based n-gram language models: MLE, add-k and modified Kneser-Ney.

An order-``n`` model factorises a token stream as

    P(w_1 .. w_T) = prod_t P(w_t | h_t),    h_t = w_{t-n+1} .. w_{t-1}

and estimates each conditional from counts of the training stream. Tokens are
ids ``0 .. V-1``; every id is a possible outcome, including ids never seen in
training (``<unk>``). Below, ``c(h w)`` is the number of times the k-gram
``h w`` occurs in the training stream, ``c(h .) = sum_w c(h w)`` the number of
times ``h`` occurs followed by some token, and ``h'`` is ``h`` without its
first token (the next-lower-order context).

``mle`` (maximum likelihood)::

    P(w | h) = c(h w) / c(h .)                  if c(h .) > 0
             = P_mle(w | h')                    otherwise (back off)
    P(w)     = c(w) / N                         (N training tokens)

  Unseen contexts back off to the next lower order, so every conditional is a
  distribution; a token never seen after a seen context has probability 0
  (and held-out perplexity becomes ``inf``).

``add-k`` (Laplace when ``k = 1``)::

    P(w | h) = (c(h w) + k) / (c(h .) + k V)

  which is uniform, ``1 / V``, for a context never seen in training.

``kn``: interpolated *modified* Kneser-Ney (Chen & Goodman 1998, as KenLM's
``lmplz`` estimates it). For order ``k`` with context ``h`` (``k - 1`` tokens)::

    P_k(w | h) = max(a_k(h w) - D_k(a_k(h w)), 0) / a_k(h .)  +  gamma_k(h) P_{k-1}(w | h')
                                                    if a_k(h .) > 0
               = P_{k-1}(w | h')                    otherwise (unseen context)
    gamma_k(h) = (D_k1 N_1(h .) + D_k2 N_2(h .) + D_k3+ N_3+(h .)) / a_k(h .)
    P_0(w)     = 1 / V

  where ``N_j(h .)`` is the number of tokens ``w`` with ``a_k(h w) = j``
  (``N_3+``: at least 3), and the adjusted counts are the raw counts
  ``a_n = c`` at the highest order and continuation counts below it::

    a_k(g) = N_1+(. g) = |{v : c(v g) > 0}|         (k < n)

  The discounts of order ``k`` come from the count-of-counts ``n_j`` (the
  number of k-grams with adjusted count ``j``)::

    Y = n_1 / (n_1 + 2 n_2)
    D_k1 = 1 - 2 Y n_2 / n_1,  D_k2 = 2 - 3 Y n_3 / n_2,  D_k3+ = 3 - 4 Y n_4 / n_3,   D(0) = 0

  On tiny corpora an order may lack k-grams with adjusted count 1, 2 or 3, or
  an estimate may fall outside ``[0, j]``; that order then uses KenLM's
  ``--discount_fallback`` defaults ``(0.5, 1.0, 1.5)`` (:data:`FALLBACK_DISCOUNTS`).

Edges of the stream. There is no ``<s>`` token: the training stream is one
sequence and every k-gram inside it is counted. When scoring, the first
``n - 1`` positions of a stream have fewer than ``n - 1`` predecessors; the
context is truncated to what exists and the order-``(t + 1)`` estimate is used
(for ``kn`` this is the interpolated lower-order distribution built on
continuation counts, exactly what an unseen longer context would get). A
consequence of counting continuations within one stream: a k-gram (k < n)
seen only at the very start of the training stream has no left neighbour, so
its continuation count is 0 (a negligible edge effect on real corpora).

Implementation. Every k-gram is an ``int64`` key by iterative rank
compression, ``key_k = rank_{k-1}(context) * V + w``, where ``rank_{k-1}`` is
the index of the context in the sorted unique (k-1)-gram keys
(``np.unique(return_inverse=True)``). Keys stay below ``N V`` whatever ``n``,
and their sorted order is the lexicographic order of the k-grams, so all
k-grams with one context form a contiguous run. Held-out text is scored by
``np.searchsorted`` on the sorted keys; nothing loops over tokens in Python.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxseq import config as config_lib
from jaxseq.config import Config, option
from jaxseq.errors import ConfigError, DataError
from jaxseq.ngram_counts import check_ids, count_keys, lookup_ranks, ngram_counts, top_ngrams

__all__ = ["NGramConfig", "NGramLM", "kn_discounts", "ngram_counts", "top_ngrams", "SMOOTHING_CHOICES",
           "FALLBACK_DISCOUNTS"]

SMOOTHING_CHOICES = ("mle", "add-k", "kn")
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
FORMAT = "jaxseq-ngram"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class NGramConfig(Config):
    """Order and smoothing of a count-based n-gram language model."""

    order: int = option(3, "n-gram order (1 = unigram)", minimum=1)
    smoothing: str = option("kn", "mle, add-k (Laplace when k=1) or kn (interpolated modified Kneser-Ney)",
                            choices=SMOOTHING_CHOICES)
    add_k: float = option(1.0, "the k of add-k smoothing", above=0.0)


# -- Kneser-Ney discounts --------------------------------------------------------

def kn_discounts(adjusted_counts: np.ndarray) -> tuple[np.ndarray, bool]:
    """``([D1, D2, D3+], closed_form?)`` of one order from its adjusted counts.

    The closed form (module docstring) needs ``n_1, n_2, n_3 > 0`` and
    ``0 <= D_j <= j``; otherwise the order falls back to :data:`FALLBACK_DISCOUNTS`.
    """
    a = np.asarray(adjusted_counts)
    n1, n2, n3, n4 = (float(np.count_nonzero(a == j)) for j in (1, 2, 3, 4))
    if n1 > 0 and n2 > 0 and n3 > 0:
        y = n1 / (n1 + 2 * n2)
        d = np.array([1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3])
        if np.all(np.isfinite(d)) and np.all(d >= 0) and np.all(d <= np.arange(1, 4)):
            return d, True
    return np.array(FALLBACK_DISCOUNTS, np.float64), False


# -- the model ---------------------------------------------------------------------

class NGramLM:
    """An order-``n`` count-based language model over ids ``0 .. V-1`` (see the module docstring).

    Build one with :meth:`fit` (or :meth:`load`). Per order ``k`` it keeps the
    sorted k-gram keys and the counts its smoothing uses (raw counts; for
    ``kn`` adjusted counts), plus per-context totals indexed by context rank.
    """

    def __init__(self, config: NGramConfig, vocab_size: int, keys: list[np.ndarray], counts: list[np.ndarray],
                 discounts: np.ndarray):
        config.validate()
        self.config = config
        self.order = int(config.order)
        self.vocab_size = int(vocab_size)
        self.keys = [np.asarray(k, np.int64) for k in keys]
        self.counts = [np.asarray(c, np.int64) for c in counts]
        self.discounts = np.asarray(discounts, np.float64).reshape(self.order, 3)
        self._prepare()

    # -- estimation ------------------------------------------------------------
    @classmethod
    def fit(cls, ids, vocab_size: int, config: NGramConfig) -> "NGramLM":
        """Count the k-grams (k = 1..n) of the training stream ``ids`` (1-D ints < ``vocab_size``)."""
        config.validate()
        if int(vocab_size) < 1:
            raise ConfigError(f"vocab_size must be at least 1, got {vocab_size}")
        x = check_ids(ids, vocab_size, "n-gram training data")
        if x.size == 0:
            raise DataError("n-gram training data is empty; give at least one token")
        if len(x) * int(vocab_size) >= 2**62:
            raise DataError(f"n-gram training data too large for int64 keys ({len(x)} tokens x {vocab_size} ids)")
        n = int(config.order)
        keys, counts, ranks = count_keys(x, n, int(vocab_size))
        discounts = np.zeros((n, 3))
        if config.smoothing == "kn":
            for k in range(1, n):           # continuation counts N1+(. g) for k < n
                suffix = np.zeros(keys[k].size, np.int64)
                suffix[ranks[k][k:]] = ranks[k - 1][k:]        # the k-gram suffix of each (k+1)-gram type
                counts[k - 1] = np.bincount(suffix, minlength=keys[k - 1].size).astype(np.int64)
            for k in range(n):
                discounts[k] = kn_discounts(counts[k])[0]
        return cls(config, int(vocab_size), keys, counts, discounts)

    def _prepare(self) -> None:
        """Per-context totals ``a(h .)``, ``gamma(h)`` (``kn``) and the order-1 distribution.

        Every per-k-gram and per-context table gets one trailing 0 entry, so
        that rank ``-1`` (unseen) indexes a zero count / zero total.
        """
        V = self.vocab_size
        self._count, self._total, self._gamma = [], [], []
        for k in range(1, self.order + 1):
            n_ctx = 1 if k == 1 else self.keys[k - 2].size
            ctx = self.keys[k - 1] // V
            a = self.counts[k - 1]
            total = np.bincount(ctx, weights=a, minlength=n_ctx).astype(np.float64)
            d1, d2, d3 = self.discounts[k - 1]
            mass = (d1 * np.bincount(ctx[a == 1], minlength=n_ctx)
                    + d2 * np.bincount(ctx[a == 2], minlength=n_ctx)
                    + d3 * np.bincount(ctx[a >= 3], minlength=n_ctx))
            gamma = mass / np.where(total > 0, total, 1.0)
            self._count.append(np.append(a.astype(np.float64), 0.0))
            self._total.append(np.append(total, 0.0))
            self._gamma.append(np.append(gamma, 0.0))
        # the order-1 distribution over the whole vocabulary, P_1(w)
        dense = np.zeros(V, np.float64)
        if self.keys[0].size:
            dense[self.keys[0]] = self.counts[0]
        self._unigram = self._mix(1, 0, dense, np.full(V, 1.0 / V))

    def _discounted(self, k: int, a: np.ndarray) -> np.ndarray:
        """``max(a - D_k(a), 0)`` for adjusted counts ``a`` of order ``k``."""
        table = np.concatenate([[0.0], self.discounts[k - 1]])
        return np.maximum(a - table[np.minimum(a, 3).astype(np.int64)], 0.0)

    def _mix(self, k: int, ctx, a: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """``P_k(w | h)`` from the counts ``a = a_k(h w)`` and the lower-order ``P_{k-1}(w | h')``.

        Elementwise over arrays: ``ctx`` (context ranks, ``-1`` for a context
        never seen in training), ``a`` and ``lower`` broadcast together.
        """
        smoothing, V = self.config.smoothing, self.vocab_size
        total = self._total[k - 1][ctx]
        if smoothing == "add-k":
            kk = float(self.config.add_k)
            return (a + kk) / (total + kk * V)
        seen = total > 0
        safe = np.where(seen, total, 1.0)
        if smoothing == "mle":
            return np.where(seen, a / safe, lower)
        gamma = self._gamma[k - 1][ctx]
        return np.where(seen, self._discounted(k, a) / safe + gamma * lower, lower)

    # -- scoring ---------------------------------------------------------------
    def _token_probs(self, x: np.ndarray) -> np.ndarray:
        """``(len(x),)`` P(x_t | x_{max(0,t-n+1)} .. x_{t-1}) for every t (t = 0: the unigram)."""
        ranks = lookup_ranks(self.keys, x, self.vocab_size)
        p = self._unigram[x]
        for k in range(2, self.order + 1):
            if len(x) < k:
                break
            ctx = ranks[k - 2][k - 2:-1]                 # the (k-1)-gram ending at t-1, for t >= k-1
            a = self._count[k - 1][ranks[k - 1][k - 1:]]
            p[k - 1:] = self._mix(k, ctx, a, p[k - 1:])  # positions t < k-1 keep the lower order
        return p

    def log_probs(self, ids) -> np.ndarray:
        """``(len(ids) - 1,)`` float64: ``log P(ids[t] | ids[max(0, t-n+1) : t])`` for t = 1 .. len-1.

        By the chain rule their sum is ``log P(ids[1:] | ids[0])``::

            P(w_1 .. w_T) = prod_t P(w_t | w_1 .. w_{t-1}) ~ prod_t P(w_t | w_{t-n+1} .. w_{t-1})

        (the Markov approximation of order ``n - 1``; ``P(w_1)`` is ``distribution([])[w_1]``).
        The first ``n - 2`` scored positions have fewer than ``n - 1``
        predecessors and use the order-``(t + 1)`` estimate (module docstring).
        Natural logarithms; ``-inf`` where an MLE model gives probability 0.
        """
        x = check_ids(ids, self.vocab_size, "n-gram scoring data")
        if len(x) < 2:
            return np.zeros(0, np.float64)
        with np.errstate(divide="ignore"):
            return np.log(self._token_probs(x)[1:])

    def evaluate(self, ids) -> dict[str, float]:
        """``{"nll", "perplexity", "tokens"}`` over the ``len(ids) - 1`` predicted tokens.

        ``nll = -(1/T) sum_t log P(w_t | h_t)`` in nats per token and
        ``perplexity = exp(nll)``; both are ``inf`` when some token has
        probability 0 (MLE on unseen events).
        """
        lp = self.log_probs(ids)
        if lp.size == 0:
            raise DataError("n-gram evaluation needs at least 2 tokens (the first one is only context)")
        nll = float(-lp.mean()) if np.all(np.isfinite(lp)) else float("inf")
        with np.errstate(over="ignore"):
            perplexity = float(np.exp(nll))
        return {"nll": nll, "perplexity": perplexity, "tokens": int(lp.size)}

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """``(V,)`` float64 P(w | context) over the whole vocabulary; sums to 1.

        Only the last ``n - 1`` ids of ``context`` matter; a shorter context
        uses the order-``(len(context) + 1)`` estimate. With ``mle``::

            P(w)     = c(w) / N                      (context [])
            P(w | h) = c(h w) / c(h .)               (h seen in training; else back off)

        and the add-k and Kneser-Ney estimates of the module docstring otherwise.
        """
        h = check_ids(np.asarray(context), self.vocab_size, "n-gram context")
        h = h[len(h) - min(len(h), self.order - 1):]
        p = self._unigram.copy()
        ranks = lookup_ranks(self.keys[:len(h)], h, self.vocab_size)
        for k in range(2, len(h) + 2):
            p = self._dense(k, int(ranks[k - 2][-1]), p)
        return p

    def _dense(self, k: int, ctx: int, lower: np.ndarray) -> np.ndarray:
        """``(V,)`` P_k(. | h) for the context of rank ``ctx`` (``-1``: unseen), given P_{k-1}(. | h')."""
        V = self.vocab_size
        a = np.zeros(V, np.float64)
        if ctx >= 0:
            keys = self.keys[k - 1]
            lo, hi = np.searchsorted(keys, [ctx * V, (ctx + 1) * V])
            a[keys[lo:hi] - ctx * V] = self.counts[k - 1][lo:hi]
        return self._mix(k, ctx, a, lower)

    # -- generation --------------------------------------------------------------
    def sample(self, prefix: Sequence[int], length: int, rng: np.random.Generator,
               temperature: float = 1.0, top_k: int = 0) -> np.ndarray:
        """``(length,)`` int32: ``length`` new tokens drawn after ``prefix`` (the prefix is not included).

        Each token is drawn from ``P(w | h)^(1/temperature)``, renormalised;
        ``temperature = 0`` takes the most probable token (ties: the lowest id).
        ``top_k > 0`` first keeps only the ``top_k`` most probable tokens (ties
        broken towards the lowest id, so exactly ``top_k`` survive) and
        renormalises over them; ``top_k = 1`` is the greedy choice.
        Deterministic for a given ``rng`` state; tokens of probability 0 are never drawn.
        """
        if not (np.isfinite(temperature) and temperature >= 0):
            raise ConfigError(f"--temperature must be a non-negative number, got {temperature!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise ConfigError(f"--top-k must be a non-negative integer (0: all tokens), got {top_k!r}")
        if int(length) < 0:
            raise ConfigError(f"sample length must be non-negative, got {length}")
        history = [int(i) for i in check_ids(np.asarray(list(prefix)), self.vocab_size,
                                              "n-gram sampling prefix")]
        keep = self.order - 1
        k = int(top_k)
        out = np.empty(int(length), np.int32)
        for i in range(int(length)):
            p = self.distribution(history[len(history) - min(len(history), keep):])
            if temperature == 0:
                w = int(np.argmax(p))
            else:
                if 0 < k < self.vocab_size:
                    # the k most probable ids, ties to the lowest id (a stable sort of -p)
                    dropped = np.argsort(-p, kind="stable")[k:]
                    p = p.copy()
                    p[dropped] = 0.0
                if temperature != 1.0:
                    with np.errstate(divide="ignore"):
                        logits = np.log(p) / temperature
                    p = np.exp(logits - logits.max())
                cdf = np.cumsum(p)
                w = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
                w = min(w, self.vocab_size - 1)
            out[i] = w
            history.append(w)
        return out

    # -- persistence ---------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the model to one ``.npz`` file at exactly ``path`` (atomically)."""
        arrays = {"format": np.array(FORMAT), "version": np.array(FORMAT_VERSION),
                  "config": np.array(json.dumps(config_lib.to_dict(self.config), sort_keys=True)),
                  "vocab_size": np.array(self.vocab_size, np.int64), "discounts": self.discounts}
        for k in range(self.order):
            arrays[f"keys_{k + 1}"] = self.keys[k]
            arrays[f"counts_{k + 1}"] = self.counts[k]
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise DataError(f"{path}: cannot write the n-gram model ({err.strerror})") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NGramLM":
        """Read a model written by :meth:`save`; anything else is a DataError naming the file."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such n-gram model file; check the path")
        try:
            z = np.load(path, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with z:
                data = {name: z[name] for name in z.files}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
            raise DataError(f"{path}: not a jaxseq n-gram model file ({type(err).__name__}: {err})") from None
        try:
            if str(data["format"]) != FORMAT:
                raise ValueError(f"format {str(data['format'])!r}")
            if int(data["version"]) != FORMAT_VERSION:
                raise ValueError(f"format version {int(data['version'])}, this jaxseq reads {FORMAT_VERSION}")
            config = config_lib.from_dict(NGramConfig, json.loads(str(data["config"])), where=str(path))
            config.validate()
            n, vocab_size = int(config.order), int(data["vocab_size"])
            keys = [data[f"keys_{k}"] for k in range(1, n + 1)]
            counts = [data[f"counts_{k}"] for k in range(1, n + 1)]
            for k, (key, cnt) in enumerate(zip(keys, counts), start=1):
                if key.ndim != 1 or key.shape != cnt.shape or not np.issubdtype(key.dtype, np.integer) \
                        or not np.issubdtype(cnt.dtype, np.integer) or np.any(np.diff(key) <= 0) \
                        or np.any(cnt < 0) \
                        or (key.size and (key[0] < 0 or key[-1] >= (1 if k == 1 else keys[k - 2].size) * vocab_size)):
                    raise ValueError(f"inconsistent {k}-gram tables")
            discounts = data["discounts"]
            if discounts.shape != (n, 3) or not np.all(np.isfinite(discounts)):
                raise ValueError("bad discounts")
        except (KeyError, ValueError, TypeError, json.JSONDecodeError, ConfigError) as err:
            raise DataError(f"{path}: not a valid jaxseq n-gram model file ({err})") from None
        return cls(config, vocab_size, keys, counts, discounts)

    def __repr__(self) -> str:
        sizes = ", ".join(str(k.size) for k in self.keys)
        return (f"NGramLM(order={self.order}, smoothing={self.config.smoothing!r}, vocab_size={self.vocab_size}, "
                f"ngrams=[{sizes}])")
