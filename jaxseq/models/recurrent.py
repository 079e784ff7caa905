"""Thin Linen modules that own recurrent parameters and call :mod:`jaxseq.cells`."""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq import cells

Array = jax.Array


class Recurrent(nn.Module):
    """One recurrent layer in one direction.

    ``xs`` is ``(B, T, I)`` floats, or ``(B, T)`` token ids when
    ``vocab_size`` is set: the input is then the one-hot vector of the token,
    and ``X_t W_xg`` is computed exactly as the row ``W_xg[token]`` (no
    ``(B, T, V)`` one-hot array is built).
    """

    cell: str = "gru"
    activation: str = "tanh"      # phi of the plain RNN cell
    reset: str = "after"          # the GRU's form (jaxseq.cells.gated): before (the notes') or after
    hidden: int = 256
    reverse: bool = False
    vocab_size: int | None = None
    layout: str = "hoisted"
    backward: str = "custom"
    dtype: Any = jnp.float32
    remat: bool = False
    unroll: int = 0               # lax.scan's unroll; 0: the platform's (cells.platform_unroll)

    @nn.compact
    def __call__(self, xs: Array, carry=None, mask: Array | None = None):
        cell = cells.get_cell(self.cell, self.activation, self.reset)
        in_size = self.vocab_size if self.vocab_size else xs.shape[-1]
        params = self.param("cell", lambda key: cell.init(key, in_size, self.hidden))
        params = jax.tree_util.tree_map(lambda p: p.astype(self.dtype), params)
        if self.vocab_size:
            projected = {g: cells.add_bias(params[f"W_x{g}"][xs], params[f"b_{g}"]) for g in cell.gates}
            return cells.run(cell, params, None, carry, projected=projected, mask=mask,
                             reverse=self.reverse, backward=self.backward, remat=self.remat,
                             unroll=cells.platform_unroll(self.unroll))
        return cells.run(cell, params, xs.astype(self.dtype), carry, mask=mask, reverse=self.reverse,
                         layout=self.layout, backward=self.backward, remat=self.remat,
                         unroll=cells.platform_unroll(self.unroll))


class StackedRecurrent(nn.Module):
    """``layers`` recurrent layers, optionally bidirectional, dropout between layers.

    Returns ``(carries, hs)``: a tuple of per-layer final carries (each a
    ``(forward, backward)`` pair when bidirectional) and the last layer's
    outputs ``(B, T, H)`` (``(B, T, 2H)`` bidirectional: both directions
    concatenated on the feature axis).
    """

    cell: str = "gru"
    activation: str = "tanh"
    reset: str = "after"
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    vocab_size: int | None = None
    layout: str = "hoisted"
    backward: str = "custom"
    dtype: Any = jnp.float32
    remat: bool = False
    unroll: int = 0

    def initial_carry(self, batch_size: int):
        cell = cells.get_cell(self.cell, self.activation, self.reset)
        one = cell.initial_carry(batch_size, self.hidden, self.dtype)
        return tuple((one, one) if self.bidirectional else one for _ in range(self.layers))

    @nn.compact
    def __call__(self, xs: Array, carry=None, mask: Array | None = None, *, train: bool = False):
        if carry is None:
            carry = self.initial_carry(xs.shape[0])
        finals = []
        for layer in range(self.layers):
            if layer > 0 and self.dropout > 0:
                xs = nn.Dropout(self.dropout, deterministic=not train)(xs)
            kwargs = dict(cell=self.cell, activation=self.activation, reset=self.reset, hidden=self.hidden, layout=self.layout,
                          backward=self.backward, dtype=self.dtype, remat=self.remat, unroll=self.unroll,
                          vocab_size=self.vocab_size if layer == 0 else None)
            if self.bidirectional:
                c_f, h_f = Recurrent(**kwargs, name=f"layer{layer}_fwd")(xs, carry[layer][0], mask)
                c_b, h_b = Recurrent(**kwargs, reverse=True, name=f"layer{layer}_bwd")(xs, carry[layer][1], mask)
                finals.append((c_f, c_b))
                xs = jnp.concatenate([h_f, h_b], axis=-1)
            else:
                c, xs = Recurrent(**kwargs, name=f"layer{layer}")(xs, carry[layer], mask)
                finals.append(c)
        return tuple(finals), xs


def apply_dense_2d(dense: nn.Module, x: Array) -> Array:
    """``y = x W + b`` (``dense``'s kernel and bias) over the last axis of ``x`` ``(..., C)``:
    the output layer ``O_t = H_t W_hq + b_q`` of the recurrent models.

    Taken on ``(B*T, C)`` rather than ``(B, T, C)``: XLA transposes 3-D weight
    gradients, and the 2-D form was measured 1.35-1.6x faster (docs/DESIGN.md)."""
    lead = x.shape[:-1]
    y = dense(x.reshape(-1, x.shape[-1]))
    return y.reshape(*lead, y.shape[-1])


class CarriedStateLM(nn.Module):
    """The model contract of a language model whose state is a carry (a tuple of per-layer states).

    A subclass defines ``initial_carry(batch_size)`` and ``_forward(tokens,
    carry, train, step=False) -> (logits (B, T, V), carry)`` (``step``: one
    token at a time, for decoding); this class turns them into ``__call__``,
    ``decode_init`` and ``decode_step``.
    """

    target_key: ClassVar[str] = "targets"

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
