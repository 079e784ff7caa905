"""Which attention kernel runs: jaxseq's hand-written path or ``jax.nn.dot_product_attention`` (``--attention-impl``).

Every implementation computes the same function, multi-head scaled
dot-product attention of :mod:`jaxseq.attention`::

    out = softmax_valid(q k^T / sqrt(dh)) v        q (B, H, Q, dh), k, v (B, H, K, dh) -> (B, H, Q, dh)

with keys masked by a row's valid length (padding), by causality (query
``i`` sees keys ``j <= i``) or by a boolean mask. They differ in how:

* ``jaxseq``: :func:`jaxseq.attention.dot_product_attention` /
  :func:`~jaxseq.attention.causal_attention`, the hand-written backward pass
  and causal query blocks (measured on the CPU; the reference path; the only
  one with attention dropout and with the weights returned for heatmaps);
* ``xla``: ``jax.nn.dot_product_attention(implementation="xla")``, XLA's
  own fusion, differentiated by JAX;
* ``cudnn``: ``implementation="cudnn"``, cuDNN's fused (flash) attention on
  an NVIDIA GPU: bf16 or fp16 only (``--dtype bfloat16``), head size a
  multiple of 8, causal and length masks native; a general boolean mask (the
  decode cache's) runs on ``xla`` instead;
* ``auto``: per platform, by measurement (:data:`AUTO`): on a GPU ``cudnn``
  when the dtype and head size allow it, else the platform's entry.

None of them changes the parameters, so the flag may change on ``--resume``.
A row whose keys are all masked (a zero valid length) gives 0 on ``jaxseq``
and the mean of the values on ``xla``/``cudnn``; jaxseq's models never
produce one. Attention dropout exists only on ``jaxseq``: an explicit
``xla``/``cudnn`` with ``--dropout > 0`` is refused, and ``auto`` runs the
``jaxseq`` path in training steps that drop (evaluation and decoding keep
the fused path).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxseq.attention import causal_attention, causal_mask, combine_masks, dot_product_attention
from jaxseq.errors import ConfigError

Array = jax.Array

IMPLS = ("auto", "xla", "cudnn", "jaxseq")

# ``auto``'s choice per JAX backend where cuDNN does not apply (benchmarks/README.md,
# "Attention implementations"): on the project's 2-core CPU the default Transformer LM's
# train step ran 11% faster with jaxseq than with xla (2026-11-30). GPU: xla (on one H200,
# causal fwd+bwd at T 1024 in bf16 took 1.52 ms with xla, 1.66 with jaxseq; cudnn 0.50 ms is
# auto's choice wherever cudnn_fits). TPU: xla, not measured.
AUTO = {"cpu": "jaxseq", "gpu": "xla", "tpu": "xla"}

CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def cudnn_fits(dtype: Any, head_dim: int) -> bool:
    """Whether cuDNN's fused attention takes this compute dtype and head size (auto's test)."""
    return jnp.dtype(dtype) in [jnp.dtype(d) for d in CUDNN_DTYPES] and head_dim % 8 == 0 and head_dim <= 128


def resolve_impl(impl: str, *, dtype: Any, head_dim: int, dropout: float = 0.0, backend: str | None = None,
                 strict: bool = True) -> str:
    """The implementation ``--attention-impl impl`` runs on ``backend`` (default: JAX's).

    ``strict`` (training): an implementation that cannot run here is a
    :class:`~jaxseq.errors.ConfigError` naming the flag. Not strict (building a
    saved run's model to evaluate or generate, maybe on another platform):
    it falls back to what ``auto`` picks here.
    """
    if impl not in IMPLS:
        raise ConfigError(f"--attention-impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    backend = backend or jax.default_backend()
    if impl == "auto":
        if backend == "gpu" and cudnn_fits(dtype, head_dim):
            return "cudnn"
        return AUTO.get(backend, "jaxseq")
    refusal = _refusal(impl, jnp.dtype(dtype), head_dim, dropout, backend)
    if refusal is None:
        return impl
    if strict:
        raise ConfigError(refusal)
    return resolve_impl("auto", dtype=dtype, head_dim=head_dim, dropout=dropout, backend=backend)


def _refusal(impl: str, dtype: Any, head_dim: int, dropout: float, backend: str) -> str | None:
    """Why ``impl`` cannot run here (one line naming the flag), or None."""
    if impl == "cudnn":
        if backend != "gpu":
            return (f"--attention-impl cudnn needs an NVIDIA GPU, but JAX runs on {backend}; "
                    "use --attention-impl auto, xla or jaxseq")
        if dtype not in [jnp.dtype(d) for d in CUDNN_DTYPES]:
            return (f"--attention-impl cudnn needs --dtype bfloat16 (cuDNN's fused attention takes bf16/fp16), "
                    f"got {dtype.name}; or use --attention-impl auto or xla")
        if head_dim % 8:
            return (f"--attention-impl cudnn needs a head size (--d-model / --heads) that is a multiple of 8, "
                    f"got {head_dim}; or use --attention-impl auto or xla")
    if impl in ("xla", "cudnn") and dropout > 0:
        return (f"--attention-impl {impl} has no attention dropout; give --dropout 0, or use "
                "--attention-impl auto (the jaxseq path in training steps that drop) or jaxseq")
    return None


def fused_attention(q: Array, k: Array, v: Array, valid_lens: Array | None = None, mask: Array | None = None,
                    *, causal: bool = False, impl: str = "xla") -> Array:
    """Attention through ``jax.nn.dot_product_attention(implementation=impl)`` on head-major arrays.

    ``q`` ``(B, H, Q, dh)``, ``k``, ``v`` ``(B, H, K, dh)`` -> ``(B, H, Q, dh)``;
    ``valid_lens`` ``(B,)`` (key lengths) or ``(B, Q)``; ``mask`` boolean,
    broadcastable to ``(B, H, Q, K)``; ``causal``: query ``i`` sees keys
    ``j <= i``. JAX's function takes ``(B, T, H, dh)``; the transposes
    around it fuse with the projections.
    """
    kv_lens = None
    if valid_lens is not None and jnp.ndim(valid_lens) == 1:
        kv_lens = jnp.asarray(valid_lens, jnp.int32)
    elif valid_lens is not None or mask is not None:
        mask = combine_masks(q.shape[:-1] + k.shape[-2:-1], valid_lens, mask)
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    out = jax.nn.dot_product_attention(q.swapaxes(1, 2), k.swapaxes(1, 2), v.swapaxes(1, 2), mask=mask,
                                       is_causal=causal, key_value_seq_lengths=kv_lens, implementation=impl)
    return out.swapaxes(1, 2)


def attend(q: Array, k: Array, v: Array, valid_lens: Array | None = None, mask: Array | None = None, *,
           causal: bool = False, impl: str = "jaxseq", dropout_rate: float = 0.0, dropout_rng: Array | None = None,
           causal_block: int = 64, return_weights: bool = False) -> tuple[Array, Array | None]:
    """Attention by implementation ``impl`` (resolved: ``jaxseq``, ``xla`` or ``cudnn``) -> ``(out, weights)``.

    Shapes as :func:`fused_attention`. The ``jaxseq`` path runs when asked, when
    dropout is applied (``dropout_rate > 0`` and a key) and when the weights
    are wanted (``weights`` is None otherwise); ``cudnn`` with a general
    ``mask`` runs on ``xla``. Causal ``jaxseq`` attention without a mask
    runs in query blocks of ``causal_block`` rows (0: one masked product).
    """
    dropping = dropout_rate > 0.0 and dropout_rng is not None
    if impl != "jaxseq" and not dropping and not return_weights:
        return fused_attention(q, k, v, valid_lens, mask, causal=causal,
                               impl="xla" if impl == "cudnn" and mask is not None else impl), None
    if causal and mask is None and causal_block > 0 and q.shape[-2] == k.shape[-2]:
        out, weights = causal_attention(q, k, v, valid_lens, block=causal_block, dropout_rate=dropout_rate,
                                        dropout_rng=dropout_rng)
    else:
        if causal:
            c = causal_mask(q.shape[-2], k.shape[-2])
            mask = c if mask is None else jnp.asarray(mask, bool) & c.reshape((1,) * (jnp.ndim(mask) - 2) + c.shape)
        out, weights = dot_product_attention(q, k, v, valid_lens, mask, dropout_rate=dropout_rate,
                                              dropout_rng=dropout_rng)
    return out, (weights if return_weights else None)
