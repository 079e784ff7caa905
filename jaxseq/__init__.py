"""jaxseq: sequence models in JAX/Flax, from n-grams to Transformers.

The public surface, by name (``__all__``). The high-level entry points::

    import jaxseq
    results = jaxseq.fit("lm", model="gru", hidden=128, steps=200, workdir="runs/api")
    trained = jaxseq.load("runs/api")          # read-only: model, params, vocab, run configs
    trained.generate("The ", 40); trained.log_prob("The class")

The layers below them are modules of their own: :mod:`jaxseq.cells` (the
recurrences as pure functions), :mod:`jaxseq.attention`,
:mod:`jaxseq.transformer`, :mod:`jaxseq.models` (the registry),
:mod:`jaxseq.train` (the one trainer), :mod:`jaxseq.decode`,
:mod:`jaxseq.tasks` (the one runner). Names that need JAX are imported on
first use, so ``import jaxseq`` stays light. (``jaxseq.fit``, not
``jaxseq.train``: that name is the trainer module.)
"""

from jaxseq.memory import keep_freed_memory    # call first thing in a Transformer job (memory.py)
from jaxseq.errors import CheckpointError, ConfigError, DataError, FetchError, JaxseqError, TrainingError
from jaxseq.data.text import read_text, preprocess, tokenize, detokenize
from jaxseq.data.vocab import Vocab

__version__ = "0.2.0"

_LAZY = {
    "fit": "jaxseq.api", "load": "jaxseq.api", "Trained": "jaxseq.api",
    "build_lm": "jaxseq.tasks.lm", "build_translation_model": "jaxseq.tasks.translate",
    "ModelSpec": "jaxseq.models.registry",
    "LMDataConfig": "jaxseq.data.lm", "LMBatches": "jaxseq.data.lm", "eval_batches": "jaxseq.data.lm",
    "load_corpus": "jaxseq.data.lm",
}

__all__ = ["fit", "load", "Trained", "build_lm", "build_translation_model", "ModelSpec", "Vocab",
           "read_text", "preprocess", "tokenize", "detokenize", "LMDataConfig", "LMBatches", "eval_batches",
           "load_corpus", "keep_freed_memory", "JaxseqError", "DataError", "ConfigError", "CheckpointError",
           "TrainingError", "FetchError", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxseq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
