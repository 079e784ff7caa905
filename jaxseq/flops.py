"""FLOPs of one training step: counted analytically per model family, and as XLA counts them.

The analytic count follows MaxText's conventions, so MFU here means what it
means there:

* a matrix product ``(m, k) x (k, n)`` costs ``2 m k n`` FLOPs
  (:func:`matmul`); only matrix products are counted: elementwise maps,
  softmax, layer norms, the loss and the optimizer update are left out (they
  are ``O(activations + parameters)`` against the products'
  ``O(activations x width)``);
* the backward pass of a product costs twice its forward one
  (``dX = dY W^T`` and ``dW = X^T dY``), so a training step is ``3 x`` the
  forward FLOPs (:attr:`StepFlops.train`);
* embedding lookups, and the one-hot inputs a recurrent layer takes as a row
  lookup, cost nothing;
* attention over ``Q`` queries and ``K`` keys of total width ``D`` costs
  ``4 B Q K D`` forward (``Q K^T`` and ``P V``); causal self-attention counts
  half of it (:func:`attention`), the useful triangle;
* recomputation (``--remat``) is not counted: this is the *model* FLOP count
  of MFU, not the hardware count.

Each model registers its count next to its code as
``ModelSpec.flops(run, vocab_sizes, shapes) -> StepFlops``, where ``shapes``
maps each batch key to its shape (``{"inputs": (B, T), ...}``).

XLA's own count is :func:`xla_cost` (``compiled.cost_analysis()``). It
differs from the analytic one in known ways: it counts every elementwise op
too; under SPMD it is the count of *one* device's program; a dense kernel
computes the masked half of causal attention (:attr:`StepFlops.masked`); and
it counts the body of a ``while`` loop -- every ``lax.scan`` over time --
ONCE, whatever its trip count. :func:`unrolled_scans` lowers every
``lax.scan`` fully unrolled so that XLA's count covers every step (the tests
compare the two counts that way; ``tests/test_flops.py``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import jax

Shapes = Mapping[str, tuple[int, ...]]
TRAIN_FACTOR = 3      # forward + backward = (1 + 2) x forward, for every counted product


@dataclass(frozen=True)
class StepFlops:
    """The analytic FLOPs of one training step on a batch.

    ``forward``: model FLOPs of the forward pass; ``positions``: target
    positions of the batch (``B x T``, padding included: it is computed);
    ``masked``: forward FLOPs of causal attention's masked half, which a
    dense kernel computes but the count leaves out (0 without causal attention).
    """

    forward: float
    positions: int
    masked: float = 0.0

    @property
    def train(self) -> float:
        """FLOPs of a training step: ``3 x forward``."""
        return TRAIN_FACTOR * self.forward

    @property
    def per_token(self) -> float:
        """Training FLOPs per target position: ``train / positions``."""
        return self.train / max(self.positions, 1)


FlopsFn = Callable[[Any, tuple[int, ...], Shapes], StepFlops]


def matmul(m: int, k: int, n: int) -> float:
    """FLOPs of a ``(m, k) x (k, n)`` product: ``2 m k n``."""
    return 2.0 * m * k * n


def attention(batch: int, queries: int, keys: int, width: int, causal: bool = False,
              block: int = 0) -> tuple[float, float]:
    """Forward FLOPs of (multi-head) attention -> ``(counted, masked)``.

    ``Q K^T`` and ``P V`` over all heads (``width`` = heads x head width)::

        full    = 2 x 2 B Q K D
        counted = full / 2 if causal else full          (MaxText's convention)

    ``masked`` is what a kernel computes beyond ``counted``: with ``causal``
    and ``block`` > 0 (jaxseq's blocked causal attention, query blocks of
    ``block`` rows scoring keys ``< (b + 1) x block``) that is the blocks'
    part above the diagonal, else the whole upper half.
    """
    full = 4.0 * batch * queries * keys * width
    if not causal:
        return full, 0.0
    counted = full / 2
    if block and queries > block:
        computed = sum(4.0 * batch * (min(s + block, queries) - s) * min(s + block, queries) * width
                       for s in range(0, queries, block))
    else:
        computed = full
    return counted, computed - counted


def transformer_block(n: int, d: int, ffn: int) -> float:
    """Forward FLOPs of a Transformer block's dense layers on ``N`` positions: the Q, K, V and
    output projections ``4 (2 N D D)`` and the FFN ``2 (2 N D F)`` (attention: :func:`attention`)."""
    return 4 * matmul(n, d, d) + 2 * matmul(n, d, ffn)


def positions(shapes: Shapes, key: str) -> int:
    """``B x T`` of the batch entry ``key``."""
    b, t = shapes[key]
    return b * t


# -- what XLA counts -------------------------------------------------------------------------

def xla_cost(compiled: Any) -> dict[str, float]:
    """``compiled.cost_analysis()`` as one dict (older JAX returned a list of one dict per program).

    Keys used here: ``flops``, ``bytes accessed``, ``transcendentals``; the
    counts are per device program (SPMD: one device's share).
    """
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


@contextlib.contextmanager
def unrolled_scans() -> Iterator[None]:
    """Within this context every ``jax.lax.scan`` traced is fully unrolled (``unroll=True``).

    XLA's cost analysis counts a ``while`` loop's body once; unrolled, each
    step is its own code and is counted. Compile time grows with the trip
    count: for small shapes only (tests, ``jaxseq inspect``). Functions must
    be *traced* inside the context (a fresh ``jax.jit``).
    """
    original = jax.lax.scan

    @functools.wraps(original)
    def scan(f, init, xs=None, length=None, reverse=False, unroll=1, _split_transpose=False):
        return original(f, init, xs, length, reverse=reverse, unroll=True, _split_transpose=_split_transpose)

    jax.lax.scan = scan
    try:
        yield
    finally:
        jax.lax.scan = original
