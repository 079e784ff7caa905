"""Perplexity, accuracy, exact match, BLEU and chrF (corpus BLEU and chrF via sacrebleu; D2L's sentence BLEU).

Perplexity is the exponential of the mean negative log-likelihood per token::

    PPL = exp( (1/N) sum_t -log P(x_t | x_<t) )

1 for a model that is always certain and right, ``V`` for a uniform guess over
a vocabulary of ``V`` tokens. Computed from the summed NLL and the token count
of the whole evaluation set, it is exact however the data is split into batches.
"""

from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np


def perplexity(total_nll: float, tokens: float) -> float:
    """``PPL = exp(total_nll / tokens)``, ``total_nll = sum_t -log P(x_t | x_<t)`` (inf on overflow,
    nan for no tokens): 1 at best, ``V`` for a uniform guess, inf when a token has probability 0."""
    if tokens <= 0:
        return float("nan")
    mean = total_nll / tokens
    return math.exp(mean) if mean < 700 else float("inf")


def accuracy(predictions: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> float:
    """Weighted token accuracy."""
    weights = np.asarray(weights, np.float64)
    hits = (np.asarray(predictions) == np.asarray(targets)) * weights
    return float(hits.sum() / max(weights.sum(), 1.0))


# --------------------------------------------------------------------------------------
# BLEU
# --------------------------------------------------------------------------------------
#
# Corpus BLEU (Papineni et al., 2002), over a corpus of hypotheses c and references r::
#
#     p_n  = sum_sent sum_{g in ngrams_n(c)} min(count_c(g), count_r(g)) / sum_sent |ngrams_n(c)|
#     BP   = min(1, exp(1 - len(r) / len(c)))           (lengths summed over the corpus)
#     BLEU = 100 * BP * exp( sum_{n=1..4} (1/4) log p_n )
#
# computed by sacrebleu, the implementation whose numbers papers quote. Our
# hypotheses and references are *already tokenised* (the words the model reads
# and writes: D2L's normalisation splits off ``, . ! ?``; the dates task cuts
# digits apart), so sacrebleu is run with ``tokenize="none"`` on the
# space-joined tokens: BLEU counts exactly the tokens the model predicts.
# Running its ``13a`` tokenizer on top would split some of our tokens again
# (``aujourd'hui``, ``c'est-à-dire``). The numbers are therefore comparable
# between jaxseq runs and with D2L's tokenisation, not with detokenised WMT BLEU.


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (0-100) of space-tokenised strings, one reference each.

    Uses ``tokenize="none"`` and sacrebleu's default ``exp`` smoothing (none
    at the corpus level), with ``force=True``: the input is tokenised on
    purpose, so sacrebleu's "forgot to detokenize?" warning does not apply.
    An empty corpus scores 0.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return 0.0
    from sacrebleu.metrics import BLEU

    return float(BLEU(tokenize="none", force=True).corpus_score(list(hypotheses), [list(references)]).score)


def corpus_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus chrF (0-100; Popovic, 2015), one reference each.

    Character n-grams up to 6 (spaces removed, so the tokenisation of the
    strings hardly matters), ``beta = 2``::

        chrF = (1 + beta^2) chrP chrR / (beta^2 chrP + chrR)

    with chrP, chrR the n-gram precision and recall averaged over n. An empty corpus scores 0.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return 0.0
    from sacrebleu.metrics import CHRF

    return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)


def bleu(pred: str, label: str, k: int = 2) -> float:
    """D2L's per-sentence BLEU (section 10.7) of space-tokenised strings, in [0, 1]::

        BLEU = exp(min(0, 1 - len_label / len_pred)) * prod_{n=1..k} p_n^(1 / 2^n)

    with ``p_n`` the clipped n-gram precision of ``pred`` against ``label``
    (orders above ``len_pred`` are skipped, as in the book). Longer n-grams
    weigh more (``1/2^n`` shrinks, so ``p_n^(1/2^n)`` is closer to 1 for the
    same ``p_n``). An empty prediction scores 0.
    """
    pred_tokens, label_tokens = pred.split(), label.split()
    len_pred, len_label = len(pred_tokens), len(label_tokens)
    if len_pred == 0:
        return 0.0
    score = math.exp(min(0.0, 1.0 - len_label / len_pred))
    for n in range(1, min(k, len_pred) + 1):
        label_counts = collections.Counter(tuple(label_tokens[i:i + n]) for i in range(len_label - n + 1))
        matches = 0
        for i in range(len_pred - n + 1):
            gram = tuple(pred_tokens[i:i + n])
            if label_counts[gram] > 0:
                matches += 1
                label_counts[gram] -= 1
        score *= math.pow(matches / (len_pred - n + 1), math.pow(0.5, n))
    return score


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of hypotheses equal to their reference token for token (0 for none)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return 0.0
    return sum(h.split() == r.split() for h, r in zip(hypotheses, references)) / len(hypotheses)
