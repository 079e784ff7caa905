"""Masked (label-smoothed) cross-entropy.

For logits ``o`` ``(B, T, V)``, targets ``y`` ``(B, T)`` and weights ``w``
``(B, T)`` (1 on real tokens, 0 on padding)::

    nll_{b,t} = -log softmax(o_{b,t})[y_{b,t}] = logsumexp(o_{b,t}) - o_{b,t,y}
    loss      = sum_{b,t} w_{b,t} nll_{b,t} / sum_{b,t} w_{b,t}

With label smoothing ``eps`` the target distribution is
``(1 - eps) onehot(y) + eps / V``, so ``nll`` becomes
``logsumexp(o) - (1 - eps) o_y - eps mean_v o_v``.

The loss is computed in float32 whatever the logits' dtype, and returned as
the *sums* so that means over any split of the data are exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def token_nll(logits: Array, targets: Array, label_smoothing: float = 0.0) -> Array:
    """Per-token negative log-likelihood ``(B, T)`` in float32 (smoothed if asked)."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if label_smoothing:
        return lse - (1.0 - label_smoothing) * picked - label_smoothing * logits.mean(axis=-1)
    return lse - picked


def weighted_cross_entropy(logits: Array, targets: Array, weights: Array,
                           label_smoothing: float = 0.0) -> tuple[Array, Array]:
    """``(sum_bt w_bt nll_bt, sum_bt w_bt)``, ``nll_bt = -log softmax(o_bt)[y_bt]``; the mean loss is
    their ratio, and positions of weight 0 (padding) never count, whatever their logits."""
    weights = weights.astype(jnp.float32)
    nll = token_nll(logits, targets, label_smoothing)
    # where(): a padded position with a non-finite logit must not poison the sum (0 * inf = nan)
    return jnp.where(weights > 0, nll * weights, 0.0).sum(), weights.sum()


def mean_loss(total: Array, count: Array) -> Array:
    """``total / count``, and 0 for an all-padding batch (no NaN)."""
    return total / jnp.maximum(count, 1.0)
