"""The recurrent language models (RNN / GRU / LSTM) and the config every language model shares.

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

import functools
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq import cells
from jaxseq.config import Config, option
from jaxseq.flops import StepFlops, matmul, positions
from jaxseq.models.recurrent import CarriedStateLM, StackedRecurrent, apply_dense_2d
from jaxseq.models.registry import ModelSpec, register

Array = jax.Array


@dataclass(frozen=True)
class LMModelConfig(Config):
    """Which language model (a name in :mod:`jaxseq.models.registry`), and what every neural family shares."""

    model: str = option("gru", "the model; each family's own flags are listed under its name")
    layers: int = option(1, "stacked layers (recurrent layers, minRNN blocks or Transformer blocks)", minimum=1)
    dropout: float = option(0.0, "dropout between layers and before the output layer", minimum=0.0, below=1.0)


@dataclass(frozen=True)
class RNNConfig(Config):
    """The flags of the RNN / GRU / LSTM family."""

    hidden: int = option(256, "hidden units of each recurrent layer (also minRNN blocks)", minimum=1)
    embedding: int | None = option(None, "input embedding dimension, or none for one-hot inputs", minimum=1)
    activation: str = option("tanh", "the RNN's nonlinearity phi", choices=("tanh", "relu"))
    gru_reset: str = option("after", "the GRU's reset gate: before the recurrent product, "
                            "tanh(X W_xh + (R*H) W_hh + b_h) (the notes' form), or after it, "
                            "tanh(X W_xh + b_h + R*(H W_hh + b_hh)) (cuDNN's)", choices=tuple(cells.GRU_RESETS),
                            legacy="after")
    layout: str = option("hoisted", "where a recurrent layer takes its input projection", choices=cells.LAYOUTS)
    backward: str = option("custom", "backpropagation through time: hand-written (custom) or JAX's",
                           choices=cells.BACKWARDS)
    scan_unroll: int = option(0, "time steps per iteration of the recurrent lax.scan loops (0: the platform's "
                              "measured default, jaxseq.cells.UNROLL); same results for any value",
                              minimum=0, resumable=True, legacy=0)


class RNNLM(CarriedStateLM):
    """A recurrent language model; the carry is a tuple of per-layer states."""

    vocab_size: int
    cell: str = "gru"
    activation: str = "tanh"
    reset: str = "after"
    hidden: int = 256
    layers: int = 1
    embedding: int | None = None
    dropout: float = 0.0
    layout: str = "hoisted"
    backward: str = "custom"
    dtype: Any = jnp.float32
    remat: bool = False
    unroll: int = 0

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.embedding, name="embed") if self.embedding else None
        self.rnn = StackedRecurrent(cell=self.cell, activation=self.activation, reset=self.reset, hidden=self.hidden,
                                    layers=self.layers, dropout=self.dropout, layout=self.layout,
                                    backward=self.backward,
                                    vocab_size=None if self.embedding else self.vocab_size,
                                    dtype=self.dtype, remat=self.remat, unroll=self.unroll, name="rnn")
        self.drop = nn.Dropout(self.dropout)
        self.out = nn.Dense(self.vocab_size, dtype=self.dtype, name="out")

    def initial_carry(self, batch_size: int):
        """Zero states for every layer (no parameters needed)."""
        cell = cells.get_cell(self.cell, self.activation, self.reset)
        return tuple(cell.initial_carry(batch_size, self.hidden, self.dtype) for _ in range(self.layers))

    def _forward(self, tokens: Array, carry, train: bool, step: bool = False):
        x = self.embed(tokens).astype(self.dtype) if self.embed is not None else tokens
        if self.embed is not None and self.dropout > 0:
            x = self.drop(x, deterministic=not train)
        carry, hs = self.rnn(x, carry, train=train)
        if self.dropout > 0:
            hs = self.drop(hs, deterministic=not train)
        return apply_dense_2d(self.out, hs), carry


def _build_rnn(cell: str, run, vocab_sizes: tuple[int, ...]) -> RNNLM:
    rnn = run.rnn
    return RNNLM(vocab_size=vocab_sizes[0], cell=cell, activation=rnn.activation, reset=rnn.gru_reset,
                 hidden=rnn.hidden,
                 layers=run.model.layers, embedding=rnn.embedding, dropout=run.model.dropout, layout=rnn.layout,
                 backward=rnn.backward, dtype=run.train.compute_dtype, remat=run.train.remat,
                 unroll=rnn.scan_unroll)


def _flops(cell: str, run, vocab_sizes: tuple[int, ...], shapes) -> StepFlops:
    """Forward FLOPs (conventions of :mod:`jaxseq.flops`), ``N = B T`` positions, ``G`` gates::

        per layer:  G (2 N I H)   input products X W_xg (none for one-hot inputs: a row lookup)
                  + G (2 N H H)   recurrent products H_{t-1} W_hg
        output:     2 N H V
    """
    n, hidden = positions(shapes, "inputs"), run.rnn.hidden
    gates = len(cells.get_cell(cell, run.rnn.activation).gates)
    forward = matmul(n, hidden, vocab_sizes[0])
    for layer in range(run.model.layers):
        width = run.rnn.embedding if layer == 0 else hidden
        forward += gates * ((matmul(n, width, hidden) if width else 0.0) + matmul(n, hidden, hidden))
    return StepFlops(forward, n)


_DESCRIPTIONS = {"rnn": "Elman RNN, H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h)", "gru": "gated recurrent unit",
                 "lstm": "long short-term memory"}
for _name, _text in _DESCRIPTIONS.items():
    register(ModelSpec(task="lm", name=_name, description=_text, sections=("rnn",),
                       build=functools.partial(_build_rnn, _name), flops=functools.partial(_flops, _name),
                       carries_state=True))
