"""Attention: masked softmax, additive and scaled dot-product scoring, multi-head attention.

Attention pools values ``v_k`` with weights given by a score of each query
``q`` against each key ``k_k``::

    a(q, k_k)       = q . k_k / sqrt(d)                     scaled dot product  (dot_product_scores)
    a(q, k_k)       = w_v^T tanh(W_q q + W_k k_k)            additive (Bahdanau) (additive_scores)
    alpha(q, k_k)   = exp(a(q, k_k)) / sum_{k' valid} exp(a(q, k'))   for valid k, else 0
                                                                              (masked_softmax)
    attention(q)    = sum_k alpha(q, k_k) v_k                                 (attention_pool)

A key is *valid* when it is inside the row's valid length (padding) and
allowed by the boolean ``mask`` (e.g. causal: key position <= query
position). Masked keys get exactly zero weight, and a query with no valid key
gets all-zero weights (and a zero output), never NaN.

Multi-head attention (Vaswani et al., 2017) runs ``h`` attentions on learned
projections and concatenates them::

    head_i = attention(Q W_q^i, K W_k^i, V W_v^i)     W_*^i (d_in, d_model / h)
    out    = concat(head_1 .. head_h) W_o             W_o  (d_model, d_model)

Shapes: ``(..., Q, d)`` queries, ``(..., K, d)`` keys, ``(..., K, dv)``
values, ``(..., Q, K)`` scores and weights; the leading axes (batch, heads)
are shared. Inside :class:`MultiHeadAttention` arrays are head-major
``(B, H, T, dh)``, so every attention product is a batched matrix product
with batch axes leading (what XLA's CPU and GPU matmul kernels take without a
transpose).

:func:`dot_product_attention` has a hand-written backward pass (see
:func:`_attention_bwd`): XLA's autodiff of the masked softmax keeps several
``(B, H, Q, K)`` temporaries and runs one elementwise pass per primitive;
the closed form needs two. Measured in ``benchmarks/bench_transformer.py``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

Array = jax.Array
Params = dict[str, Array]


# -- pure functions -----------------------------------------------------------------------

def valid_mask(valid_lens: Array, num_keys: int, ndim: int) -> Array:
    """Boolean keep-mask ``k < valid_len`` broadcastable to scores of rank ``ndim``.

    ``valid_lens`` ``(B,)``: one length per batch row (axis 0 of the scores),
    shared by every query and every other leading axis (heads); ``(B, Q)``:
    one length per batch row and query (axis 0 and axis -2). Returns shape
    ``(B, 1, ..., 1, K)`` or ``(B, 1, ..., Q, K)`` of rank ``ndim``.
    """
    keys = jnp.arange(num_keys, dtype=jnp.int32)
    lens = jnp.asarray(valid_lens).astype(jnp.int32)
    if lens.ndim == 1:
        lens = lens.reshape((lens.shape[0],) + (1,) * (ndim - 1))
    elif lens.ndim == 2:
        lens = lens.reshape((lens.shape[0],) + (1,) * (ndim - 3) + (lens.shape[1], 1))
    else:
        raise ValueError(f"valid_lens must be (B,) or (B, Q), got shape {lens.shape}")
    return keys.reshape((1,) * (ndim - 1) + (num_keys,)) < lens


def causal_mask(num_queries: int, num_keys: int | None = None, offset: int | Array = 0) -> Array:
    """``(Q, K)`` boolean: query ``i`` (at position ``offset + i``) may see key ``j <= offset + i``.

    A NumPy constant when ``offset`` is a Python int (so XLA sees a constant,
    and row tests on it cost nothing at run time), else a traced array.
    """
    num_keys = num_queries if num_keys is None else num_keys
    xp = np if isinstance(offset, int) else jnp
    q = xp.arange(num_queries, dtype=np.int32)[:, None] + offset
    return xp.arange(num_keys, dtype=np.int32)[None, :] <= q


def combine_masks(shape: tuple[int, ...], valid_lens: Array | None = None,
                  mask: Array | None = None) -> Array | None:
    """One boolean keep-mask of rank ``len(shape)`` from valid lengths and/or a mask (None: keep all)."""
    keep = None
    if valid_lens is not None:
        keep = valid_mask(valid_lens, shape[-1], len(shape))
    if mask is not None:
        mask = mask.astype(bool) if isinstance(mask, np.ndarray) else jnp.asarray(mask, bool)
        mask = mask.reshape((1,) * (len(shape) - mask.ndim) + mask.shape)
        keep = mask if keep is None else keep & mask
    return keep


def masked_softmax(scores: Array, valid_lens: Array | None = None, mask: Array | None = None) -> Array:
    """``alpha`` of the module docstring over the last axis of ``scores`` ``(..., Q, K)``.

    ``valid_lens`` ``(B,)`` or ``(B, Q)`` (see :func:`valid_mask`); ``mask``
    boolean, broadcastable to ``scores``, True where a key may be attended.
    Masked keys get exactly 0; rows with no valid key are all 0 (no NaN, also
    in the gradient). Computed as ``e = exp(s - max s)`` over valid keys and
    ``e / sum e``, in the scores' dtype.
    """
    keep = combine_masks(scores.shape, valid_lens, mask)
    return _masked_softmax(scores, keep)


def _masked_softmax(scores: Array, keep: Array | None) -> Array:
    if keep is not None:
        # masked scores become the dtype's minimum (finite, so no inf/NaN reaches the gradient);
        # exp(min - max) is then exactly 0 whenever the row has a valid key
        scores = jnp.where(keep, scores, jnp.asarray(jnp.finfo(scores.dtype).min, scores.dtype))
    top = jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True))
    e = jnp.exp(scores - top)
    inv = 1.0 / e.sum(axis=-1, keepdims=True)              # the sum is >= 1: exp(top - top) = 1
    if keep is not None:
        # a row with no valid key has top = min and e = 1 everywhere: zero it through the
        # (Q, 1)-sized factor rather than another pass over the (Q, K) weights (3% of a step)
        rows = keep.any(axis=-1, keepdims=True)
        if not (isinstance(rows, np.ndarray) and rows.all()):     # a constant mask may need nothing
            inv = jnp.where(rows, inv, jnp.zeros((), inv.dtype))
    return e * inv


def dot_product_scores(q: Array, k: Array) -> Array:
    """``q . k / sqrt(d)``: ``q`` ``(..., Q, d)``, ``k`` ``(..., K, d)`` -> ``(..., Q, K)``."""
    return jnp.einsum("...qd,...kd->...qk", q * (1.0 / math.sqrt(q.shape[-1])), k)


def additive_init(key: Array, dq: int, dk: int, hidden: int, dtype: Any = jnp.float32) -> Params:
    """Parameters of :func:`additive_scores`: ``W_q (dq, h)``, ``W_k (dk, h)``, ``w_v (h,)``.

    LeCun-normal (variance ``1 / fan_in``), the initialisation of Flax's Dense.
    """
    kq, kk, kv = jax.random.split(key, 3)
    return {"W_q": jax.random.normal(kq, (dq, hidden), dtype) / math.sqrt(dq),
            "W_k": jax.random.normal(kk, (dk, hidden), dtype) / math.sqrt(dk),
            "w_v": jax.random.normal(kv, (hidden,), dtype) / math.sqrt(hidden)}


def additive_scores(params: Params, q: Array, k: Array) -> Array:
    """``w_v^T tanh(W_q q + W_k k)``: ``q`` ``(..., Q, dq)``, ``k`` ``(..., K, dk)`` -> ``(..., Q, K)``.

    The projections are taken once per query and per key; only the ``tanh``
    and the ``w_v`` contraction run over all ``Q x K`` pairs. A decoder that
    queries the same keys at every step projects them once
    (:func:`additive_keys`) and scores with :func:`additive_scores_projected`.
    """
    return additive_scores_projected(params, q, additive_keys(params, k))


def additive_keys(params: Params, k: Array) -> Array:
    """The key projection ``W_k k`` of :func:`additive_scores`: ``(..., K, dk)`` -> ``(..., K, h)``."""
    return k @ params["W_k"]


def additive_scores_projected(params: Params, q: Array, pk: Array) -> Array:
    """:func:`additive_scores` given the projected keys ``pk = W_k k`` ``(..., K, h)``."""
    pq = q @ params["W_q"]                                       # (..., Q, h)
    features = jnp.tanh(pq[..., :, None, :] + pk[..., None, :, :])   # (..., Q, K, h)
    return features @ params["w_v"]


def attention_pool(weights: Array, v: Array) -> Array:
    """``sum_k alpha_qk v_k``: ``weights`` ``(..., Q, K)``, ``v`` ``(..., K, dv)`` -> ``(..., Q, dv)``."""
    return jnp.einsum("...qk,...kd->...qd", weights, v)


def dropout_multiplier(key: Array, rate: float, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """Inverted dropout as a multiplier: ``bernoulli(1 - rate) / (1 - rate)`` of ``shape``."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, jnp.asarray(1.0 / (1.0 - rate), dtype), jnp.zeros((), dtype))


def dot_product_attention(q: Array, k: Array, v: Array, valid_lens: Array | None = None,
                          mask: Array | None = None, *, dropout_rate: float = 0.0,
                          dropout_rng: Array | None = None) -> tuple[Array, Array]:
    """Scaled dot-product attention -> ``(out (..., Q, dv), weights (..., Q, K))``.

    ``out = attention_pool(dropout(masked_softmax(dot_product_scores(q, k))), v)``;
    ``weights`` are the attention weights before dropout. Dropout (on the
    weights, as in the Transformer) is applied when ``dropout_rate > 0`` and
    ``dropout_rng`` is given. Differentiable in ``q``, ``k``, ``v`` (reverse
    mode, by a hand-written backward pass; also through ``weights``).
    """
    shape = q.shape[:-1] + k.shape[-2:-1]
    keep = combine_masks(shape, valid_lens, mask)
    drop = None
    if dropout_rate > 0.0 and dropout_rng is not None:
        drop = dropout_multiplier(dropout_rng, dropout_rate, shape, q.dtype)
    return _attention(q, k, v, keep, drop)


def causal_attention(q: Array, k: Array, v: Array, valid_lens: Array | None = None, *, block: int = 64,
                     dropout_rate: float = 0.0, dropout_rng: Array | None = None) -> tuple[Array, Array]:
    """Causal self-attention (query ``i`` sees keys ``j <= i``), skipping the all-masked blocks.

    Equal to ``dot_product_attention(q, k, v, valid_lens, causal_mask(T))``
    for ``q``, ``k``, ``v`` ``(..., T, d)``, but the queries are taken in
    blocks of ``block`` rows and block ``b`` scores only keys
    ``< (b + 1) * block``: at ``T = 2 * block`` a quarter of the score
    matrix is never computed (measured 25% less attention time on the
    project's CPU). ``valid_lens`` ``(B,)`` or ``(B, T)``.
    """
    t = q.shape[-2]
    starts = list(range(0, t, block))
    if len(starts) <= 1:
        return dot_product_attention(q, k, v, valid_lens, causal_mask(t), dropout_rate=dropout_rate,
                                     dropout_rng=dropout_rng)
    outs, weights = [], []
    for i, start in enumerate(starts):
        end = min(start + block, t)
        lens = valid_lens[:, start:end] if valid_lens is not None and jnp.ndim(valid_lens) == 2 else valid_lens
        rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
        out, w = dot_product_attention(q[..., start:end, :], k[..., :end, :], v[..., :end, :], lens,
                                       causal_mask(end - start, end, offset=start), dropout_rate=dropout_rate,
                                       dropout_rng=rng)
        outs.append(out)
        weights.append(jnp.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, t - end)]))
    return jnp.concatenate(outs, axis=-2), jnp.concatenate(weights, axis=-2)


def _attention_forward(q, k, v, keep, drop):
    # the softmax in float32 at least (bfloat16 scores would lose the small weights)
    scores = dot_product_scores(q, k)
    weights = _masked_softmax(scores.astype(jnp.promote_types(scores.dtype, jnp.float32)), keep).astype(q.dtype)
    used = weights if drop is None else weights * drop
    return attention_pool(used, v), weights


@jax.custom_vjp
def _attention(q, k, v, keep, drop):
    return _attention_forward(q, k, v, keep, drop)


def _attention_fwd(q, k, v, keep, drop):
    q, k, v, keep, drop = (x.value if isinstance(x, CustomVJPPrimal) else x for x in (q, k, v, keep, drop))
    out, weights = _attention_forward(q, k, v, keep, drop)
    return (out, weights), (q, k, v, keep, drop, out, weights)


def _attention_bwd(res, cotangents):
    """The backward pass of attention in closed form.

    With ``s = q k^T / sqrt(d)``, ``P = masked_softmax(s)``, ``P~ = P * drop``
    and ``o = P~ v``, for output cotangent ``do`` (and ``dP_w`` on the
    returned weights)::

        dv  = P~^T do
        dP  = (do v^T) * drop + dP_w
        ds  = P * (dP - rowsum(dP * P))        (zero where P is masked)
        dq  = ds k / sqrt(d),   dk = ds^T q / sqrt(d)

    Without ``dP_w``, ``rowsum(dP * P) = rowsum(do * o)``: a ``(.., Q, dv)``
    product instead of a ``(.., Q, K)`` one (the FlashAttention identity).
    """
    q, k, v, keep, drop, out, weights = res
    d_out, d_weights = cotangents
    scale = 1.0 / math.sqrt(q.shape[-1])
    used = weights if drop is None else weights * drop
    if isinstance(d_out, SymbolicZero):
        d_out = jnp.zeros(out.shape, out.dtype)
    dv = _transposed_product(d_out, used)
    dp = jnp.einsum("...qd,...kd->...qk", d_out, v)
    if drop is not None:
        dp = dp * drop
    if isinstance(d_weights, SymbolicZero):
        row = (d_out * out).sum(axis=-1, keepdims=True)
    else:
        dp = dp + d_weights
        row = (dp * weights).sum(axis=-1, keepdims=True)
    ds = weights * (dp - row) * scale
    dq = jnp.einsum("...qk,...kd->...qd", ds, k)
    dk = _transposed_product(q, ds)
    return dq, dk, dv, None, None


def _transposed_product(a: Array, p: Array) -> Array:
    """``p^T a`` for ``a`` ``(..., Q, d)``, ``p`` ``(..., Q, K)`` -> ``(..., K, d)``, computed as
    ``(a^T p)^T``: both operands contracted in the layouts XLA's CPU matmul library takes
    (contracting ``p`` over its rows directly fell back to a 3-5x slower loop)."""
    a_t = jax.lax.optimization_barrier(jnp.swapaxes(a, -1, -2))
    out_t = jax.lax.optimization_barrier(jnp.einsum("...dq,...qk->...dk", a_t, p))
    return jnp.swapaxes(out_t, -1, -2)


_attention.defvjp(_attention_fwd, _attention_bwd, symbolic_zeros=True)


# -- Linen modules ------------------------------------------------------------------------

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
    """

    num_heads: int
    d_model: int
    dropout: float = 0.0
    use_bias: bool = True
    causal_block: int = 64
    fused_qkv: bool = True
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
        return x.reshape(b, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _merge(self, x: Array) -> Array:
        """``(B, H, T, dh)`` -> ``(B, T, D)`` through the output projection."""
        b, _, t, _ = x.shape
        return self.out(x.transpose(0, 2, 1, 3).reshape(b, t, self.d_model))

    def _self_projections(self, x: Array) -> tuple[Array, Array, Array]:
        """``Q, K, V`` ``(B, H, T, dh)`` of ``x`` ``(B, T, Dq)``, in ONE matmul: the three kernels
        side by side, ``(Dq, 3 D)`` (measured faster than three ``(Dq, D)`` products)."""
        if not self.fused_qkv or self.is_initializing():
            return self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        b, t, _ = x.shape
        params = [m.variables["params"] for m in (self.query, self.key, self.value)]
        y = x.reshape(b * t, -1).astype(self.dtype) @ jnp.concatenate([p["kernel"] for p in params], axis=1
                                                                       ).astype(self.dtype)
        if self.use_bias:
            y = _add_bias(y, jnp.concatenate([p["bias"] for p in params]).astype(self.dtype))
        y = y.reshape(b, t, 3, self.num_heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        return y[0], y[1], y[2]

    def _attend(self, q, k, v, valid_lens, mask, train, causal=False):
        rng = self.make_rng("dropout") if train and self.dropout > 0 else None
        if causal:
            return causal_attention(q, k, v, valid_lens, block=self.causal_block, dropout_rate=self.dropout,
                                    dropout_rng=rng)
        return dot_product_attention(q, k, v, valid_lens, mask, dropout_rate=self.dropout, dropout_rng=rng)

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
        blocked = causal and keys_values is None and mask is None and self.causal_block > 0
        if causal and not blocked:
            c = causal_mask(q.shape[2], k.shape[2])
            mask = c if mask is None else mask & c.reshape((1,) * (jnp.ndim(mask) - 2) + c.shape)
        out, weights = self._attend(q, k, v, valid_lens, mask, train, causal=blocked)
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
