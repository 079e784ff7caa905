"""Perplexity, accuracy and BLEU.

Perplexity is the exponential of the mean negative log-likelihood per token::

    PPL = exp( (1/N) sum_t -log P(x_t | x_<t) )

1 for a model that is always certain and right, ``V`` for a uniform guess over
a vocabulary of ``V`` tokens. Computed from the summed NLL and the token count
of the whole evaluation set, it is exact however the data is split into batches.
"""

from __future__ import annotations

import math

import numpy as np


def perplexity(total_nll: float, tokens: float) -> float:
    """``exp(total_nll / tokens)`` (inf on overflow, nan for no tokens)."""
    if tokens <= 0:
        return float("nan")
    mean = total_nll / tokens
    return math.exp(mean) if mean < 700 else float("inf")


def accuracy(predictions: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> float:
    """Weighted token accuracy."""
    weights = np.asarray(weights, np.float64)
    hits = (np.asarray(predictions) == np.asarray(targets)) * weights
    return float(hits.sum() / max(weights.sum(), 1.0))
