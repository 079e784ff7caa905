"""Language models behind one interface: RNN / GRU / LSTM (and the Transformer).

A recurrent language model reads tokens ``x_1 .. x_T`` and predicts each next
token::

    H_t = cell(X_t, H_{t-1})             (the layers of jaxseq.cells)
    O_t = H_t W_hq + b_q                 (B, T, V) logits
    P(x_{t+1} | x_<=t) = softmax(O_t)

``X_t`` is the one-hot vector of ``x_t`` (the seed's encoding, D2L's scratch
models; computed as a row lookup) or a learned embedding of ``--embedding``
dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq import cells
from jaxseq.config import option
from jaxseq.errors import ConfigError
from jaxseq.models.recurrent import StackedRecurrent, apply_dense_2d
from jaxseq.transformer import TransformerOptions

Array = jax.Array
RNN_MODELS = ("rnn", "gru", "lstm")
MIN_MODELS = ("mingru", "minlstm")     # jaxseq.models.minrnn
TRANSFORMER_MODELS = ("transformer",)   # jaxseq.models.transformer_lm
LM_MODELS = ("ngram",) + RNN_MODELS + MIN_MODELS + TRANSFORMER_MODELS


@dataclass(frozen=True)
class LMModelConfig(TransformerOptions):
    """Architecture of a neural language model."""

    model: str = option("gru", "the model", choices=LM_MODELS)
    hidden: int = option(256, "hidden units of each recurrent layer")
    layers: int = option(1, "number of stacked layers")
    embedding: int | None = option(None, "input embedding dimension, or none for one-hot inputs")
    dropout: float = option(0.0, "dropout between layers and before the output layer")
    activation: str = option("tanh", "the RNN's nonlinearity phi", choices=("tanh", "relu"))
    layout: str = option("hoisted", "where a recurrent layer takes its input projection",
                         choices=cells.LAYOUTS)
    backward: str = option("custom", "backpropagation through time: hand-written (custom) or JAX's",
                           choices=cells.BACKWARDS)
    expansion: float = option(1.0, "mingru/minlstm: width of the recurrence as a multiple of --hidden")
    mlp_ratio: int = option(4, "mingru/minlstm: MLP width of each block as a multiple of --hidden (0: no MLP)")
    min_runner: str = option("parallel", "mingru/minlstm: training runs the recurrence as an associative scan "
                             "(parallel) or a lax.scan (sequential; faster on a 2-core CPU, see benchmarks)",
                             choices=cells.MIN_RUNNERS)
    context: int | None = option(None, "transformer: the most positions it reads (decode cache, learned "
                                 "positions; default --seq-len); longer generation slides a window")

    def validate(self) -> None:
        if self.model not in LM_MODELS:
            raise ConfigError(f"--model must be one of {', '.join(LM_MODELS)}, got {self.model!r}")
        for name in ("hidden", "layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.embedding is not None and self.embedding < 1:
            raise ConfigError(f"--embedding must be a positive size or none, got {self.embedding}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must lie in [0, 1), got {self.dropout}")
        if self.expansion <= 0 or self.mlp_ratio < 0:
            raise ConfigError(f"--expansion must be > 0 and --mlp-ratio >= 0, "
                              f"got {self.expansion} and {self.mlp_ratio}")
        if self.model in MIN_MODELS and self.embedding not in (None, self.hidden):
            raise ConfigError(f"--model {self.model} embeds tokens in --hidden dimensions; drop --embedding")
        if self.model in TRANSFORMER_MODELS:
            self.validate_transformer()
            if self.context is not None and self.context < 1:
                raise ConfigError(f"--context must be at least 1, got {self.context}")


class CarriedStateLM(nn.Module):
    """The model contract of a language model whose state is a carry (a tuple of per-layer states).

    A subclass defines ``initial_carry(batch_size)`` and ``_forward(tokens,
    carry, train, step=False) -> (logits (B, T, V), carry)`` (``step``: one
    token at a time, for decoding); this class turns them into ``__call__``,
    ``decode_init`` and ``decode_step``.
    """

    target_key: ClassVar[str] = "targets"
    recurrent: ClassVar[bool] = True

    def __call__(self, batch: dict[str, Array], *, train: bool = False, carry=None):
        """``batch["inputs"]`` ``(B, T)`` -> ``(logits (B, T, V), carry)``."""
        tokens = batch["inputs"]
        if carry is None:
            carry = self.initial_carry(tokens.shape[0])
        return self._forward(tokens, carry, train)

    def decode_init(self, batch: dict[str, Array]):
        """The state after reading ``batch["inputs"]`` ``(B, P)`` in one call (P may be 0)."""
        tokens = batch["inputs"]
        carry = self.initial_carry(tokens.shape[0])
        if tokens.shape[1] == 0:
            return carry
        return self._forward(tokens, carry, False)[1]

    def decode_step(self, state, tokens: Array):
        """``tokens`` ``(B,)`` -> ``(logits (B, V), state)``."""
        logits, state = self._forward(tokens[:, None], state, False, step=True)
        return logits[:, 0], state


class RNNLM(CarriedStateLM):
    """A recurrent language model; the carry is a tuple of per-layer states."""

    vocab_size: int
    cell: str = "gru"
    hidden: int = 256
    layers: int = 1
    embedding: int | None = None
    dropout: float = 0.0
    layout: str = "hoisted"
    backward: str = "custom"
    dtype: Any = jnp.float32
    remat: bool = False

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embedding, name="embed") if self.embedding else None
        self.rnn = StackedRecurrent(cell=self.cell, hidden=self.hidden, layers=self.layers,
                                    dropout=self.dropout, layout=self.layout, backward=self.backward,
                                    vocab_size=None if self.embedding else self.vocab_size,
                                    dtype=self.dtype, remat=self.remat, name="rnn")
        self.drop = nn.Dropout(self.dropout)
        self.out = nn.Dense(self.vocab_size, dtype=self.dtype, name="out")

    def initial_carry(self, batch_size: int):
        """Zero states for every layer (no parameters needed)."""
        cell = cells.get_cell(self.cell)
        return tuple(cell.initial_carry(batch_size, self.hidden, self.dtype) for _ in range(self.layers))

    def _forward(self, tokens: Array, carry, train: bool, step: bool = False):
        x = self.embed(tokens).astype(self.dtype) if self.embed is not None else tokens
        if self.embed is not None and self.dropout > 0:
            x = self.drop(x, deterministic=not train)
        carry, hs = self.rnn(x, carry, train=train)
        if self.dropout > 0:
            hs = self.drop(hs, deterministic=not train)
        return apply_dense_2d(self.out, hs), carry


def build_lm(config: LMModelConfig, vocab_size: int, dtype: Any = jnp.float32, remat: bool = False, *,
             seq_len: int | None = None) -> nn.Module:
    """The Linen module for ``config`` (not the n-gram model, which is not neural).

    ``seq_len``: the training window, the Transformer's default ``context``.
    """
    config.validate()
    if config.model in RNN_MODELS:
        cell = "rnn-relu" if config.model == "rnn" and config.activation == "relu" else config.model
        return RNNLM(vocab_size=vocab_size, cell=cell, hidden=config.hidden, layers=config.layers,
                     embedding=config.embedding, dropout=config.dropout, layout=config.layout,
                     backward=config.backward, dtype=dtype, remat=remat)
    if config.model in MIN_MODELS:
        from jaxseq.models.minrnn import MinRNNLM
        return MinRNNLM(vocab_size=vocab_size, cell=config.model, hidden=config.hidden, layers=config.layers,
                        expansion=config.expansion, mlp_ratio=config.mlp_ratio, dropout=config.dropout,
                        runner=config.min_runner, dtype=dtype)
    if config.model in TRANSFORMER_MODELS:
        from jaxseq.models.transformer_lm import TransformerLM
        context = config.context or seq_len
        if context is None:
            raise ConfigError("--model transformer needs --context (or the training --seq-len)")
        if seq_len is not None and seq_len > context:
            raise ConfigError(f"--seq-len {seq_len} is longer than --context {context}; raise --context")
        return TransformerLM(vocab_size=vocab_size, context=context, num_layers=config.layers,
                             dropout=config.dropout, positional=config.positional, remat=remat, dtype=dtype,
                             **config.stack_options())
    raise ConfigError(f"--model {config.model} is not a neural language model")
