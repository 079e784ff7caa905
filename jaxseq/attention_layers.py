"""Attention layers that own parameters (Flax Linen): projections, single- and multi-head attention.

Each module holds parameters and calls the pure functions of
:mod:`jaxseq.attention`, where the equations are (masked softmax, scaled
dot-product and additive scores, multi-head attention). Dense projections run
on ``(B*T, C)`` arrays (docs/DESIGN.md).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq import parallel
from jaxseq.attention import masked_softmax, additive_scores, attention_pool, dot_product_attention
from jaxseq.attention_impl import attend

Array = jax.Array


def _add_bias(x: Array, b: Array) -> Array:
    return x + b.reshape((1,) * (x.ndim - 1) + b.shape)


class Projection(nn.Module):
    """A dense layer ``x W + b`` taken on ``(N, C)``: ``(..., C)`` inputs are flattened first.

    (Dense layers on ``(B*T, C)`` were measured 1.35-1.6x faster than on
    ``(B, T, C)``: XLA transposes 3-D weight gradients; docs/DESIGN.md.)
    """

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        lead = x.shape[:-1]
        y = x.reshape(-1, x.shape[-1]).astype(self.dtype) @ kernel.astype(self.dtype)
        if self.use_bias:
            y = _add_bias(y, self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype))
        return y.reshape(*lead, self.features)


class DotProductAttention(nn.Module):
    """Scaled dot-product attention with dropout on the weights (no parameters)."""

    dropout: float = 0.0

    def __call__(self, q: Array, k: Array, v: Array, valid_lens: Array | None = None,
                 mask: Array | None = None, *, train: bool = False) -> tuple[Array, Array]:
        """``q`` ``(..., Q, d)``, ``k`` ``(..., K, d)``, ``v`` ``(..., K, dv)`` -> ``(out, weights)``."""
        rng = self.make_rng("dropout") if train and self.dropout > 0 else None
        return dot_product_attention(q, k, v, valid_lens, mask, dropout_rate=self.dropout, dropout_rng=rng)


class AdditiveAttention(nn.Module):
    """Additive (Bahdanau) attention; parameters ``{"W_q", "W_k", "w_v"}`` as in :func:`additive_init`."""

    hidden: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, q: Array, k: Array, v: Array, valid_lens: Array | None = None,
                 mask: Array | None = None, *, train: bool = False) -> tuple[Array, Array]:
        """``q`` ``(..., Q, dq)``, ``k`` ``(..., K, dk)``, ``v`` ``(..., K, dv)`` -> ``(out, weights)``."""
        dq, dk, h = q.shape[-1], k.shape[-1], self.hidden
        normal = nn.initializers.normal(1.0)
        params = {"W_q": self.param("W_q", lambda key: normal(key, (dq, h)) / math.sqrt(dq)),
                  "W_k": self.param("W_k", lambda key: normal(key, (dk, h)) / math.sqrt(dk)),
                  "w_v": self.param("w_v", lambda key: normal(key, (h,)) / math.sqrt(h))}
        weights = masked_softmax(additive_scores(params, q, k), valid_lens, mask)
        used = nn.Dropout(self.dropout, deterministic=not train)(weights) if self.dropout > 0 else weights
        return attention_pool(used, v), weights


class MultiHeadAttention(nn.Module):
    """Multi-head attention (module docstring) with padding and causal masks and a decode cache.

    ``__call__`` attends queries ``(B, Q, Dq)`` over keys/values ``(B, K, Dkv)``
    (self-attention when none are given). For autoregressive decoding:

    * :meth:`init_cache` -> ``{"k", "v": (B, H, L, dh), "index": (B,) int32}``,
      an explicit pytree (every leaf batch-major, so beam search can reorder it);
    * :meth:`decode` runs causal self-attention for ``P`` new tokens at
      positions ``index .. index + P - 1`` (a whole prompt in one call =
      prefill, then one token per call), writing their keys and values into
      the cache with ``lax.dynamic_update_slice``; the caller keeps
      ``index + P <= L``;
    * :meth:`project_memory` / :meth:`attend_memory`: cross-attention to an
      encoder output whose keys and values are projected once.

    Causal self-attention runs in query blocks of ``causal_block`` rows
    (:func:`causal_attention`; 0: one masked ``T x T`` product).
    ``attention_impl`` (resolved: ``jaxseq``, ``xla`` or ``cudnn``) picks the
    kernel (:mod:`jaxseq.attention_impl`); steps with attention dropout and
    calls that return the weights run the ``jaxseq`` path.
    """

    num_heads: int
    d_model: int
    dropout: float = 0.0
    use_bias: bool = True
    causal_block: int = 64
    fused_qkv: bool = True
    attention_impl: str = "jaxseq"
    dtype: Any = jnp.float32

    def setup(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by {self.num_heads} heads")
        proj = lambda name: Projection(self.d_model, use_bias=self.use_bias, dtype=self.dtype, name=name)
        self.query, self.key, self.value, self.out = (proj(n) for n in ("query", "key", "value", "out"))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def _heads(self, x: Array) -> Array:
        """``(B, T, D)`` -> ``(B, H, T, dh)``."""
        b, t, _ = x.shape
        heads = x.reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)
        return parallel.constrain(heads, ("batch", "heads", None, None))      # tensor parallelism: by heads

    def _merge(self, x: Array) -> Array:
        """``(B, H, T, dh)`` -> ``(B, T, D)`` through the output projection."""
        b, _, t, _ = x.shape
        return self.out(x.transpose(0, 2, 1, 3).reshape(b, t, self.d_model))

    def _self_projections(self, x: Array) -> tuple[Array, Array, Array]:
        """``Q, K, V`` ``(B, H, T, dh)`` of ``x`` ``(B, T, Dq)``, in ONE matmul: the three kernels
        side by side, ``(Dq, 3 D)`` (measured faster than three ``(Dq, D)`` products)."""
        # under --tensor the three kernels are split by heads: three local products, no concatenation
        if not self.fused_qkv or self.is_initializing() or parallel.tensor_size() > 1:
            return self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        b, t, _ = x.shape
        params = [m.variables["params"] for m in (self.query, self.key, self.value)]
        y = x.reshape(b * t, -1).astype(self.dtype) @ jnp.concatenate([p["kernel"] for p in params], axis=1
                                                                       ).astype(self.dtype)
        if self.use_bias:
            y = _add_bias(y, jnp.concatenate([p["bias"] for p in params]).astype(self.dtype))
        y = y.reshape(b, t, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        return y[0], y[1], y[2]

    def _attend(self, q, k, v, valid_lens, mask, train, causal=False, return_weights=False):
        rng = self.make_rng("dropout") if train and self.dropout > 0 else None
        return attend(q, k, v, valid_lens, mask, causal=causal, impl=self.attention_impl, dropout_rate=self.dropout,
                      dropout_rng=rng, causal_block=self.causal_block, return_weights=return_weights)

    def __call__(self, queries: Array, keys_values: Array | None = None, *, valid_lens: Array | None = None,
                 mask: Array | None = None, causal: bool = False, train: bool = False,
                 return_weights: bool = False) -> tuple[Array, Array | None]:
        """-> ``(out (B, Q, d_model), weights (B, H, Q, K) or None)``.

        ``valid_lens`` ``(B,)`` or ``(B, Q)``: valid keys per row (padding);
        ``mask`` boolean broadcastable to ``(B, H, Q, K)``; ``causal``: query
        ``i`` sees keys ``j <= i``.
        """
        if keys_values is None:
            q, k, v = self._self_projections(queries)
        else:
            q = self._heads(self.query(queries))
            k, v = self._heads(self.key(keys_values)), self._heads(self.value(keys_values))
        out, weights = self._attend(q, k, v, valid_lens, mask, train, causal=causal, return_weights=return_weights)
        return self._merge(out), (weights if return_weights else None)

    def init_cache(self, batch_size: int, max_len: int, dtype: Any = None) -> dict[str, Array]:
        """An empty self-attention cache for ``max_len`` positions (no parameters needed)."""
        shape = (batch_size, self.num_heads, max_len, self.head_dim)
        dtype = dtype or self.dtype
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                "index": jnp.zeros((batch_size,), jnp.int32)}

    def decode(self, x: Array, cache: dict[str, Array], *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        """Causal self-attention of ``x`` ``(B, P, Dq)`` over the cache plus itself -> ``(out (B, P, D), cache)``.

        Row ``b``'s new tokens sit at positions ``index[b] .. index[b] + P - 1``;
        they see every cached position before them and each other causally.
        The result equals the matching rows of a full causal ``__call__``.
        """
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        index = cache["index"]
        write = jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice(c, u.astype(c.dtype), (0, i, 0)))
        keys, values = write(cache["k"], k, index), write(cache["v"], v, index)
        p, length = x.shape[1], keys.shape[2]
        positions = index[:, None] + jnp.arange(p, dtype=jnp.int32)[None, :]           # (B, P)
        mask = jnp.arange(length, dtype=jnp.int32)[None, None, None, :] <= positions[:, None, :, None]
        out, _ = self._attend(q, keys.astype(q.dtype), values.astype(q.dtype), None, mask, train)
        return self._merge(out), {"k": keys, "v": values, "index": index + p}

    def project_memory(self, memory: Array) -> dict[str, Array]:
        """Keys and values of an encoder output ``(B, S, Dkv)`` -> ``{"k", "v": (B, H, S, dh)}``."""
        return {"k": self._heads(self.key(memory)), "v": self._heads(self.value(memory))}

    def attend_memory(self, x: Array, memory_kv: dict[str, Array], valid_lens: Array | None = None, *,
                      train: bool = False) -> Array:
        """Cross-attention of ``x`` ``(B, P, Dq)`` over projected memory -> ``(B, P, D)``."""
        out, _ = self._attend(self._heads(self.query(x)), memory_kv["k"], memory_kv["v"], valid_lens, None, train)
        return self._merge(out)
