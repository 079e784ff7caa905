"""Attention: masked softmax, additive and scaled dot-product scoring, multi-head attention.

Attention pools values ``v_k`` with weights given by a score of each query
``q`` against each key ``k_k``::

    a(q, k_k)       = q . k_k / sqrt(d)                     scaled dot product  (dot_product_scores)
    a(q, k_k)       = q . k_k                               the notes' dot score (dot_product_scores, scale=1)
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

The Linen modules that own the projections are in :mod:`jaxseq.attention_layers`.

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


def dot_product_scores(q: Array, k: Array, scale: float | None = None) -> Array:
    """``a(q, k) = scale * q . k``: ``q`` ``(..., Q, d)``, ``k`` ``(..., K, d)`` -> ``(..., Q, K)``.

    ``scale`` defaults to ``1 / sqrt(d)`` (Vaswani et al.: keeps the scores'
    variance 1 for unit-variance ``q`` and ``k``); ``scale=1`` is the notes'
    dot score ``a(s, h) = s^T h``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return jnp.einsum("...qd,...kd->...qk", q if scale == 1.0 else q * scale, k)


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
    work = jnp.float64 if scores.dtype == jnp.float64 else jnp.float32
    weights = _masked_softmax(scores.astype(work), keep).astype(q.dtype)
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
