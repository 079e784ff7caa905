"""The count-based n-gram language model in the registry (the model itself is :mod:`jaxseq.ngram`)."""

from __future__ import annotations

from jaxseq.models.registry import ModelSpec, register
from jaxseq.ngram import NGramLM


def _fit(run, train_ids, vocab_size: int) -> NGramLM:
    return NGramLM.fit(train_ids, vocab_size, run.ngram)


register(ModelSpec(task="lm", name="ngram", description="count-based n-gram (MLE, add-k or Kneser-Ney)",
                   sections=("ngram",), fit=_fit, load=NGramLM.load, neural=False))
