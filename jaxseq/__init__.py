"""jaxseq: sequence models in JAX/Flax, from n-grams to Transformers."""

from jaxseq.memory import keep_freed_memory

keep_freed_memory()     # before XLA starts its threads: no page faults on per-step buffers (memory.py)

from jaxseq.errors import CheckpointError, ConfigError, DataError, FetchError, JaxseqError, TrainingError
from jaxseq.data.text import read_text, preprocess, tokenize, detokenize
from jaxseq.data.vocab import Vocab
from jaxseq.data.lm import LMDataConfig, LMBatches, eval_batches, load_corpus

__version__ = "0.1.0"
