"""Language models of stacked minGRU / minLSTM layers (Feng et al., 2024).

The recurrences are :class:`jaxseq.cells.MinCell` (equations there); these
modules only own parameters and arrange the layers, nanoGPT-style, as the
paper's language-model experiments do: an embedding, ``L`` pre-norm residual
blocks, a final layer norm and the output layer::

    X^0   = E[x_t]                                            (B, T, D)   D = --hidden
    U     = X^{l-1} + Drop(minRNN(LN(X^{l-1})) W_o)          (B, T, D)   W_o only if --expansion != 1
    X^l   = U + Drop(gelu(LN(U) W_1 + c_1) W_2 + c_2)         (B, T, D)   the MLP, of width --mlp-ratio * D
    O_t   = LN(X^L_t) W_hq + b_q                              (B, T, V)

The recurrence inside a block is ``round(expansion * D)`` wide. Training runs
the recurrence with ``lax.associative_scan`` (``runner="parallel"``); the
decoding step feeds one token through the same step function with
``lax.scan`` (``runner="sequential"``). The carry is one ``(B, expansion*D)``
state per layer.
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
from jaxseq.models.recurrent import CarriedStateLM, apply_dense_2d
from jaxseq.models.registry import ModelSpec, register

Array = jax.Array


@dataclass(frozen=True)
class MinRNNConfig(Config):
    """The flags of the minGRU / minLSTM family (``--hidden`` is shared with the RNN family)."""

    hidden: int = option(256, "width D of the residual stream and embeddings", minimum=1)
    expansion: float = option(1.0, "width of the recurrence as a multiple of --hidden", above=0.0)
    mlp_ratio: int = option(4, "MLP width of each block as a multiple of --hidden (0: no MLP)", minimum=0)
    min_runner: str = option("parallel", "training runs the recurrence as an associative scan (parallel) or a "
                             "lax.scan (sequential; faster on a 2-core CPU, see benchmarks)",
                             choices=cells.MIN_RUNNERS)


def inner_width(hidden: int, expansion: float) -> int:
    """Width of the recurrence inside a block: ``round(expansion * hidden)``, at least 1."""
    return max(1, int(round(expansion * hidden)))


class MinRecurrent(nn.Module):
    """One minGRU / minLSTM layer over ``xs`` ``(B, T, I)`` -> ``(H_T (B, H), hs (B, T, H))``."""

    cell: str = "mingru"
    hidden: int = 256
    reverse: bool = False
    runner: str = "parallel"
    dtype: Any = jnp.float32
    unroll: int = 0               # the sequential runner's lax.scan unroll; 0: the platform's

    @nn.compact
    def __call__(self, xs: Array, carry: Array | None = None, mask: Array | None = None, *,
                 runner: str | None = None):
        cell = cells.get_min_cell(self.cell)
        params = self.param("cell", lambda key: cell.init(key, xs.shape[-1], self.hidden))
        params = jax.tree_util.tree_map(lambda p: p.astype(self.dtype), params)
        return cells.run_min(cell, params, xs.astype(self.dtype), carry, mask=mask, reverse=self.reverse,
                             runner=runner or self.runner, unroll=cells.platform_unroll(self.unroll))


class MinBlock(nn.Module):
    """One pre-norm residual block: the recurrence, then the MLP (see the module docstring)."""

    cell: str = "mingru"
    hidden: int = 256
    expansion: float = 1.0
    mlp_ratio: int = 4
    dropout: float = 0.0
    runner: str = "parallel"
    dtype: Any = jnp.float32
    unroll: int = 0               # the sequential runner's lax.scan unroll; 0: the platform's

    @nn.compact
    def __call__(self, x: Array, carry: Array, *, train: bool, runner: str | None = None):
        inner = inner_width(self.hidden, self.expansion)
        drop = nn.Dropout(self.dropout, deterministic=not train)
        y = nn.LayerNorm(dtype=self.dtype, name="norm_rnn")(x)
        carry, y = MinRecurrent(cell=self.cell, hidden=inner, runner=self.runner, dtype=self.dtype,
                                name="rnn")(y, carry, runner=runner)
        if inner != self.hidden:
            y = apply_dense_2d(nn.Dense(self.hidden, dtype=self.dtype, name="proj"), y)
        x = x + drop(y)
        if self.mlp_ratio:
            y = nn.LayerNorm(dtype=self.dtype, name="norm_mlp")(x)
            y = jax.nn.gelu(apply_dense_2d(nn.Dense(self.mlp_ratio * self.hidden, dtype=self.dtype,
                                                    name="mlp_in"), y))
            x = x + drop(apply_dense_2d(nn.Dense(self.hidden, dtype=self.dtype, name="mlp_out"), y))
        return x, carry


class MinRNNLM(CarriedStateLM):
    """A language model of stacked minGRU / minLSTM blocks; same contract as ``RNNLM``.

    Training and ``decode_init`` (the prefix, in one call) use ``runner``;
    ``decode_step`` the sequential runner (one step).
    """

    vocab_size: int
    cell: str = "mingru"
    hidden: int = 256
    layers: int = 1
    expansion: float = 1.0
    mlp_ratio: int = 4
    dropout: float = 0.0
    runner: str = "parallel"
    dtype: Any = jnp.float32

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.hidden, name="embed")
        self.blocks = [MinBlock(cell=self.cell, hidden=self.hidden, expansion=self.expansion,
                                mlp_ratio=self.mlp_ratio, dropout=self.dropout, runner=self.runner,
                                dtype=self.dtype, name=f"block{i}") for i in range(self.layers)]
        self.norm = nn.LayerNorm(dtype=self.dtype, name="norm")
        self.drop = nn.Dropout(self.dropout)
        self.out = nn.Dense(self.vocab_size, dtype=self.dtype, name="out")

    def initial_carry(self, batch_size: int):
        """Zero states, one ``(B, expansion * hidden)`` per layer (no parameters needed)."""
        inner = inner_width(self.hidden, self.expansion)
        return tuple(jnp.zeros((batch_size, inner), self.dtype) for _ in range(self.layers))

    def _forward(self, tokens: Array, carry, train: bool, step: bool = False):
        runner = "sequential" if step else None
        x = self.drop(self.embed(tokens).astype(self.dtype), deterministic=not train)
        finals = []
        for block, c in zip(self.blocks, carry):
            x, c = block(x, c, train=train, runner=runner)
            finals.append(c)
        return apply_dense_2d(self.out, self.norm(x)), tuple(finals)


def _build_min(cell: str, run, vocab_sizes: tuple[int, ...]) -> MinRNNLM:
    m = run.minrnn
    return MinRNNLM(vocab_size=vocab_sizes[0], cell=cell, hidden=m.hidden, layers=run.model.layers,
                    expansion=m.expansion, mlp_ratio=m.mlp_ratio, dropout=run.model.dropout, runner=m.min_runner,
                    dtype=run.train.compute_dtype)


def _flops(cell: str, run, vocab_sizes: tuple[int, ...], shapes) -> StepFlops:
    """Forward FLOPs (conventions of :mod:`jaxseq.flops`), ``N = B T``, ``G`` gates (minGRU 2,
    minLSTM 3), ``R`` = ``round(expansion D)``, ``M`` = ``mlp_ratio D``; the scan is elementwise::

        per block:  G (2 N D R) + [2 N R D if R != D] + [2 (2 N D M) if M]
        output:     2 N D V
    """
    m, n = run.minrnn, positions(shapes, "inputs")
    d, inner = m.hidden, inner_width(m.hidden, m.expansion)
    block = len(cells.get_min_cell(cell).gates) * matmul(n, d, inner)
    block += matmul(n, inner, d) if inner != d else 0.0
    block += 2 * matmul(n, d, m.mlp_ratio * d) if m.mlp_ratio else 0.0
    return StepFlops(run.model.layers * block + matmul(n, d, vocab_sizes[0]), n)


# defaults from experiments/README.md (the equal-time comparison): 2 blocks of width 192
_DEFAULTS = {"model": {"layers": 2}, "minrnn": {"hidden": 192, "mlp_ratio": 1}}
for _name, _text in (("mingru", "minGRU blocks (Feng et al., 2024), trained as a parallel scan"),
                     ("minlstm", "minLSTM blocks (Feng et al., 2024), trained as a parallel scan")):
    register(ModelSpec(task="lm", name=_name, description=_text, sections=("minrnn",),
                       build=functools.partial(_build_min, _name), defaults=_DEFAULTS, carries_state=True,
                       flops=functools.partial(_flops, _name)))
