"""jaxseq: sequence models in JAX/Flax, from n-grams to Transformers."""

from jaxseq.memory import keep_freed_memory    # call first thing in a Transformer job (memory.py)
from jaxseq.errors import CheckpointError, ConfigError, DataError, FetchError, JaxseqError, TrainingError
from jaxseq.data.text import read_text, preprocess, tokenize, detokenize
from jaxseq.data.vocab import Vocab
from jaxseq.data.lm import LMDataConfig, LMBatches, eval_batches, load_corpus

__version__ = "0.1.0"
