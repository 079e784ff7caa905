"""Transformer layers: positions, feed-forward, residual + layer norm, encoder and decoder blocks.

The Transformer (Vaswani et al., 2017) maps token embeddings through ``N``
identical blocks. Inputs::

    X_0 = E[x] sqrt(d_model) + P                        (B, T, D)
    P[p, 2i]   = sin(p / 10000^(2i / d_model))          sinusoidal positions
    P[p, 2i+1] = cos(p / 10000^(2i / d_model))          (or a learned table)

Each sublayer ``f`` (self-attention, cross-attention, feed-forward) is wrapped
in a residual connection with layer normalisation, after (post-norm, the
original paper and D2L) or before (pre-norm, GPT-2; trains deeper stacks
without warmup) the sublayer::

    post-norm:  X <- LayerNorm(X + dropout(f(X)))
    pre-norm:   X <- X + dropout(f(LayerNorm(X)))        (and one LayerNorm after the last block)
    LayerNorm(x) = gamma (x - mean(x)) / sqrt(var(x) + eps) + beta      over the feature axis
    FFN(x)       = act(x W_1 + b_1) W_2 + b_2                            (position-wise)

An encoder block is self-attention (padding masked by the source valid
lengths) then FFN; a decoder block is causal self-attention, optionally
cross-attention to the encoder output, then FFN. Attention is
:class:`jaxseq.attention_layers.MultiHeadAttention`; dense layers run on
``(B*T, C)`` arrays (docs/DESIGN.md).

Decoding keeps, per decoder block, a self-attention key/value cache (and the
projected encoder keys/values for cross-attention): an explicit pytree whose
every leaf has the batch as its first axis. With ``scan_layers`` the blocks
are one ``nn.scan`` (compile time flat in depth); their parameters are then
stacked on a leading layer axis, and cache leaves are ``(B, N, ...)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import parallel
from jaxseq.attention_impl import IMPLS, resolve_impl
from jaxseq.attention_layers import MultiHeadAttention, Projection
from jaxseq.config import Config, option
from jaxseq.errors import ConfigError

Array = jax.Array
POSITIONALS = ("sinusoidal", "learned")
NORMS = ("post", "pre")
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),     # GPT-2's tanh form
}


@dataclass(frozen=True)
class TransformerOptions(Config):
    """The Transformer's flags, shared by the language model and the translation model.

    The number of blocks is the task's ``--layers`` and the dropout its
    ``--dropout`` (flags every model family shares).
    """

    d_model: int = option(128, "transformer: width of the residual stream", minimum=1)
    heads: int = option(4, "transformer: attention heads (must divide --d-model)", minimum=1)
    ffn: int | None = option(None, "transformer: hidden units of the feed-forward layers (default 4 x --d-model)",
                             minimum=1)
    ffn_activation: str = option("relu", "transformer: nonlinearity of the feed-forward layers (gelu: tanh form)",
                                 choices=tuple(ACTIVATIONS))
    positional: str = option("sinusoidal", "transformer: position encoding", choices=POSITIONALS)
    norm: str = option("post", "transformer: layer norm after each residual addition (post, the paper's) "
                       "or before each sublayer (pre, GPT-2's)", choices=NORMS)
    scan_layers: bool = option(False, "transformer: run the blocks as one nn.scan (compile time flat in depth)")
    attention_impl: str = option("auto", "transformer: attention kernel: jaxseq (hand-written, the reference), "
                                 "xla or cudnn (jax.nn.dot_product_attention; cudnn: NVIDIA GPU, --dtype "
                                 "bfloat16), auto (per platform, by measurement); no effect on the parameters",
                                 choices=IMPLS, resumable=True, legacy="jaxseq")

    def check(self) -> None:
        if self.d_model % self.heads:
            raise ConfigError(f"--d-model {self.d_model} is not divisible by --heads {self.heads}")

    def tensor_sizes(self) -> dict[str, int]:
        """What ``--tensor`` splits, by flag: the heads and the feed-forward width (it must divide both)."""
        return {"--heads": self.heads, "--ffn": self.ffn or 4 * self.d_model}

    def check_run(self, run: Any) -> None:
        """Refuse (training) an ``--attention-impl`` this platform, ``--dtype`` or ``--dropout`` cannot run,
        before anything is written (:func:`jaxseq.attention_impl.resolve_impl`, strict)."""
        resolve_impl(self.attention_impl, dtype=run.train.compute_dtype, head_dim=self.d_model // self.heads,
                     dropout=run.model.dropout)

    def stack_options(self, dtype: Any = jnp.float32, dropout: float = 0.0) -> dict[str, Any]:
        """The keyword arguments of :class:`Stack` these options set, ``--attention-impl`` resolved for
        the compute ``dtype`` and ``dropout`` on this platform (not strict: a saved run's model builds
        on any platform, with ``auto``'s choice where its own cannot run; training refused it already
        in :meth:`check_run`)."""
        impl = resolve_impl(self.attention_impl, dtype=dtype, head_dim=self.d_model // self.heads, dropout=dropout,
                            strict=False)
        return dict(d_model=self.d_model, num_heads=self.heads, ffn=self.ffn or 4 * self.d_model,
                    activation=self.ffn_activation, norm=self.norm, scan_layers=self.scan_layers,
                    attention_impl=impl)


def tensor_sizes(run: Any) -> dict[str, int]:
    """``ModelSpec.tensor_sizes`` of a Transformer run (its ``transformer`` section)."""
    return run.transformer.tensor_sizes()


# -- pure functions -----------------------------------------------------------------------

def sinusoidal_positions(length: int, d_model: int, dtype: Any = jnp.float32) -> np.ndarray:
    """``P`` of the module docstring, ``(length, d_model)`` (a NumPy constant)."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    freq = np.power(10000.0, -np.arange(0, d_model, 2, dtype=np.float64) / d_model)[None, :]
    table = np.zeros((length, d_model), np.float64)
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq)[:, : d_model // 2]
    return table.astype(dtype)


def _layer_norm_parts(x: Array, eps: float) -> tuple[Array, Array]:
    centred = x - x.mean(axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt((centred * centred).mean(axis=-1, keepdims=True) + eps)
    return centred * rstd, rstd


def _affine(xhat: Array, gamma: Array, beta: Array) -> Array:
    shape = (1,) * (xhat.ndim - 1) + gamma.shape
    return xhat * gamma.reshape(shape) + beta.reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: Array, gamma: Array, beta: Array, eps: float = 1e-5) -> Array:
    """``LayerNorm`` of the module docstring over the last axis of ``x`` ``(..., D)``.

    Its backward pass is written out (:func:`_layer_norm_bwd`): XLA's
    autodiff of the mean and variance makes more passes over ``x``.
    """
    return _affine(_layer_norm_parts(x, eps)[0], gamma, beta)


def _layer_norm_fwd(x, gamma, beta, eps):
    xhat, rstd = _layer_norm_parts(x, eps)
    return _affine(xhat, gamma, beta), (xhat, rstd, gamma)


def _layer_norm_bwd(eps, res, dy):
    """With ``xhat = (x - mean) / std``, ``g = dy * gamma``::

        dx     = (g - mean(g) - xhat mean(g xhat)) / std
        dgamma = sum dy xhat,   dbeta = sum dy           (over all but the feature axis)
    """
    xhat, rstd, gamma = res
    g = dy * gamma.reshape((1,) * (dy.ndim - 1) + gamma.shape)
    dx = (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True)) * rstd
    axes = tuple(range(dy.ndim - 1))
    return dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


# -- modules ------------------------------------------------------------------------------

class LayerNorm(nn.Module):
    """:func:`layer_norm` with parameters ``scale`` (gamma, ones) and ``bias`` (beta, zeros); float32 inside."""

    eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        d = x.shape[-1]
        gamma = self.param("scale", nn.initializers.ones, (d,))
        beta = self.param("bias", nn.initializers.zeros, (d,))
        # statistics in float32 whatever the compute dtype
        return layer_norm(x.astype(jnp.float32), gamma, beta, self.eps).astype(self.dtype)


class FeedForward(nn.Module):
    """``FFN`` of the module docstring on ``(..., D)``; dense layers on 2-D arrays."""

    hidden: int
    d_model: int
    activation: str = "relu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        lead = x.shape[:-1]
        h = ACTIVATIONS[self.activation](Projection(self.hidden, dtype=self.dtype, name="dense1")(
            x.reshape(-1, x.shape[-1])))
        h = parallel.constrain(h, ("batch", "mlp"))                # tensor parallelism: column split
        return Projection(self.d_model, dtype=self.dtype, name="dense2")(h).reshape(*lead, self.d_model)


class Embedder(nn.Module):
    """Tokens ``(B, T)`` -> ``X_0`` ``(B, T, D)``: scaled embedding plus positions, then dropout.

    ``max_len`` bounds the positions (the learned table's size); a sequence
    reaching past it raises :class:`~jaxseq.errors.ConfigError`.
    """

    vocab_size: int
    d_model: int
    max_len: int
    positional: str = "sinusoidal"
    dropout: float = 0.0
    dtype: Any = jnp.float32

    def setup(self):
        if self.positional not in POSITIONALS:
            raise ConfigError(f"positional encoding must be one of {', '.join(POSITIONALS)}, got {self.positional!r}")
        self.embed = nn.Embed(self.vocab_size, self.d_model, name="embed")
        if self.positional == "learned":
            self.positions = self.param("positions", nn.initializers.normal(1.0), (self.max_len, self.d_model))
        else:
            self.positions = sinusoidal_positions(self.max_len, self.d_model)
        self.drop = nn.Dropout(self.dropout)

    def __call__(self, tokens: Array, positions: Array | None = None, *, train: bool = False) -> Array:
        """``positions`` ``(B, T)`` int (default ``0 .. T-1``; decoding passes the cache index)."""
        t = tokens.shape[1]
        if t > self.max_len:
            raise ConfigError(f"a sequence of {t} tokens is longer than the model's {self.max_len} positions; "
                              "shorten it or raise the positions (--context of a language model, --max-len of a translation model)")
        x = self.embed(tokens).astype(self.dtype) * math.sqrt(self.d_model)
        table = jnp.asarray(self.positions, self.dtype)
        if positions is None:
            x = x + table[None, :t]
        else:
            x = x + jnp.take(table, positions, axis=0, mode="clip")
        return self.drop(x, deterministic=not train) if self.dropout > 0 else x


class _Residual(nn.Module):
    """One sublayer's residual connection and layer norm (post- or pre-norm)."""

    norm: str = "post"
    dropout: float = 0.0
    dtype: Any = jnp.float32

    def setup(self):
        self.ln = LayerNorm(dtype=self.dtype, name="norm")
        self.drop = nn.Dropout(self.dropout)

    def before(self, x: Array) -> Array:
        """The sublayer's input."""
        return self.ln(x) if self.norm == "pre" else x

    def after(self, x: Array, y: Array, train: bool) -> Array:
        """Combine the block input ``x`` with the sublayer output ``y``."""
        if self.dropout > 0:
            y = self.drop(y, deterministic=not train)
        return x + y if self.norm == "pre" else self.ln(x + y)


class _Block(nn.Module):
    """Fields shared by encoder and decoder blocks.

    ``sow_weights``: keep each attention's weights ``(B, H, Q, K)`` in the
    ``"intermediates"`` collection (``attention_weights``, or
    ``self_attention_weights`` / ``cross_attention_weights``) for heatmaps:
    ``apply(..., mutable=["intermediates"])``.
    """

    d_model: int
    num_heads: int
    ffn: int
    dropout: float = 0.0
    norm: str = "post"
    activation: str = "relu"
    sow_weights: bool = False
    causal_block: int = 64
    attention_impl: str = "jaxseq"
    dtype: Any = jnp.float32

    def _mha(self, name: str) -> MultiHeadAttention:
        return MultiHeadAttention(self.num_heads, self.d_model, dropout=self.dropout,
                                  causal_block=self.causal_block, attention_impl=self.attention_impl,
                                  dtype=self.dtype, name=name)

    def _sowing(self) -> bool:
        """Whether this call keeps the weights: ``sow_weights`` and the caller collects ``intermediates``
        (otherwise the attention need not form them, and a fused ``--attention-impl`` can run)."""
        return self.sow_weights and self.is_mutable_collection("intermediates")

    def _res(self, name: str) -> _Residual:
        return _Residual(self.norm, self.dropout, self.dtype, name=name)

    def _ffn(self) -> FeedForward:
        return FeedForward(self.ffn, self.d_model, self.activation, self.dtype, name="ffn")


class EncoderBlock(_Block):
    """Self-attention over the (padded) source, then FFN; ``(B, S, D)`` -> ``(B, S, D)``::

        post-norm:  Y = LayerNorm(X + MultiHead(X, X, X)),   Z = LayerNorm(Y + FFN(Y))
        pre-norm:   Y = X + MultiHead(N, N, N), N = LayerNorm(X);   Z = Y + FFN(LayerNorm(Y))

    (dropout on each sublayer's output in training).
    """

    def setup(self):
        self.attention = self._mha("attention")
        self.res1, self.res2, self.feed = self._res("res1"), self._res("res2"), self._ffn()

    def __call__(self, x: Array, valid_lens: Array | None = None, *, train: bool = False) -> Array:
        """``valid_lens`` ``(B,)``: keys at or past a row's length are masked."""
        sowing = self._sowing()
        y, w = self.attention(self.res1.before(x), valid_lens=valid_lens, train=train,
                              return_weights=sowing)
        if sowing:
            self.sow("intermediates", "attention_weights", w)
        x = self.res1.after(x, y, train)
        return self.res2.after(x, self.feed(self.res2.before(x)), train)


class DecoderBlock(_Block):
    """Causal self-attention, cross-attention to ``memory`` (if ``cross_attention``), then FFN."""

    cross_attention: bool = False

    def setup(self):
        self.self_attention = self._mha("self_attention")
        self.res1, self.res3, self.feed = self._res("res1"), self._res("res3"), self._ffn()
        if self.cross_attention:
            self.cross = self._mha("cross_attention")
            self.res2 = self._res("res2")

    def __call__(self, x: Array, memory: Array | None = None, memory_valid_lens: Array | None = None, *,
                 train: bool = False) -> Array:
        """``x`` ``(B, T, D)``, ``memory`` ``(B, S, D)`` with ``memory_valid_lens`` ``(B,)`` -> ``(B, T, D)``."""
        sowing = self._sowing()
        y, w = self.self_attention(self.res1.before(x), causal=True, train=train,
                                   return_weights=sowing)
        if sowing:
            self.sow("intermediates", "self_attention_weights", w)
        x = self.res1.after(x, y, train)
        if self.cross_attention:
            if memory is None:
                raise ValueError("a decoder block with cross-attention needs the encoder output (memory)")
            y, w = self.cross(self.res2.before(x), memory, valid_lens=memory_valid_lens, train=train,
                              return_weights=sowing)
            if sowing:
                self.sow("intermediates", "cross_attention_weights", w)
            x = self.res2.after(x, y, train)
        return self.res3.after(x, self.feed(self.res3.before(x)), train)

    def init_cache(self, memory: Array | None, batch_size: int, max_len: int) -> dict[str, Any]:
        """``{"self": MHA cache, "memory": {"k", "v": (B, H, S, dh)}}`` (the latter with cross-attention)."""
        cache = {"self": self.self_attention.init_cache(batch_size, max_len, self.dtype)}
        if self.cross_attention:
            cache["memory"] = self.cross.project_memory(memory)
        return cache

    def decode(self, x: Array, cache: dict[str, Any], memory_valid_lens: Array | None = None, *,
               train: bool = False) -> tuple[Array, dict[str, Any]]:
        """``P`` new positions ``x`` ``(B, P, D)`` after those in ``cache`` -> ``(out, cache)``."""
        y, self_cache = self.self_attention.decode(self.res1.before(x), cache["self"], train=train)
        x = self.res1.after(x, y, train)
        if self.cross_attention:
            y = self.cross.attend_memory(self.res2.before(x), cache["memory"], memory_valid_lens, train=train)
            x = self.res2.after(x, y, train)
        x = self.res3.after(x, self.feed(self.res3.before(x)), train)
        return x, dict(cache, self=self_cache)


class Stack(nn.Module):
    """``num_layers`` encoder or decoder blocks (plus the final LayerNorm of pre-norm stacks).

    ``scan_layers``: the blocks run as one ``nn.scan`` over stacked
    parameters, so compile time does not grow with depth. ``remat``: each
    block's activations are recomputed in the backward pass (less memory).
    """

    num_layers: int
    d_model: int
    num_heads: int
    ffn: int
    decoder: bool = False
    cross_attention: bool = False
    dropout: float = 0.0
    norm: str = "post"
    activation: str = "relu"
    scan_layers: bool = False
    remat: bool = False
    sow_weights: bool = False
    causal_block: int = 64
    attention_impl: str = "jaxseq"
    dtype: Any = jnp.float32

    def setup(self):
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        kwargs = dict(d_model=self.d_model, num_heads=self.num_heads, ffn=self.ffn, dropout=self.dropout,
                      norm=self.norm, activation=self.activation, sow_weights=self.sow_weights,
                      causal_block=self.causal_block, attention_impl=self.attention_impl, dtype=self.dtype)
        if self.decoder:
            make = lambda name: DecoderBlock(**kwargs, cross_attention=self.cross_attention, name=name)
        else:
            make = lambda name: EncoderBlock(**kwargs, name=name)
        if self.scan_layers:
            self.blocks = make("blocks")
        else:
            self.blocks = [make(f"block_{i}") for i in range(self.num_layers)]
        self.final_norm = LayerNorm(dtype=self.dtype, name="final_norm") if self.norm == "pre" else None

    def _scan(self, body: Callable, *, in_axes: Any = 0, out_axes: Any = 0) -> Callable:
        return nn.scan(body, variable_axes={"params": 0, "intermediates": 0},
                       split_rngs={"params": True, "dropout": True}, in_axes=in_axes, out_axes=out_axes,
                       length=self.num_layers)

    def _finish(self, x: Array) -> Array:
        return self.final_norm(x) if self.final_norm is not None else x

    def __call__(self, x: Array, *, valid_lens: Array | None = None, memory: Array | None = None,
                 memory_valid_lens: Array | None = None, train: bool = False) -> Array:
        """``x`` ``(B, T, D)`` -> ``(B, T, D)``.

        Encoder: ``valid_lens`` ``(B,)`` masks padded keys. Decoder: causal,
        attending to ``memory`` ``(B, S, D)`` (``memory_valid_lens``) when
        built with ``cross_attention``.
        """
        if self.decoder:
            apply = lambda block, h: block(h, memory, memory_valid_lens, train=train)
        else:
            apply = lambda block, h: block(h, valid_lens, train=train)
        if self.remat:
            apply = nn.remat(apply)
        if self.scan_layers:
            x, _ = self._scan(lambda block, h, _: (apply(block, h), None))(self.blocks, x, None)
        else:
            for block in self.blocks:
                x = apply(block, x)
        return self._finish(x)

    def init_cache(self, batch_size: int, max_len: int, memory: Array | None = None) -> Any:
        """Per-block decode caches (:meth:`DecoderBlock.init_cache`) for ``max_len`` positions.

        A tuple of block caches, or with ``scan_layers`` one cache whose leaves
        are ``(B, N, ...)``.
        """
        if not self.decoder:
            raise ValueError("an encoder stack has no decode cache")
        if self.scan_layers:
            body = lambda block, c, _: (c, block.init_cache(memory, batch_size, max_len))
            _, cache = self._scan(body, out_axes=1)(self.blocks, None, None)
            return cache
        return tuple(block.init_cache(memory, batch_size, max_len) for block in self.blocks)

    def decode(self, x: Array, cache: Any, memory_valid_lens: Array | None = None, *,
               train: bool = False) -> tuple[Array, Any]:
        """``P`` new positions ``x`` ``(B, P, D)`` -> ``(out (B, P, D), cache)``; see :meth:`DecoderBlock.decode`."""
        if self.scan_layers:
            body = lambda block, h, c: block.decode(h, c, memory_valid_lens, train=train)
            x, cache = self._scan(body, in_axes=1, out_axes=1)(self.blocks, x, cache)
        else:
            outs = []
            for block, c in zip(self.blocks, cache):
                x, c = block.decode(x, c, memory_valid_lens, train=train)
                outs.append(c)
            cache = tuple(outs)
        return self._finish(x), cache
