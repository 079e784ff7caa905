"""Recurrent cells as pure functions over explicit parameter pytrees.

Two independent families, each with its equations in the docstring of the
module that implements it:

:mod:`jaxseq.cells.gated`
    RNN, GRU and LSTM (``RNN``, ``GRU``, ``LSTM``, :func:`get_cell`; the GRU in
    the notes' form ``GRU_BEFORE`` and cuDNN's ``GRU_AFTER``): an affine
    map of ``X_t`` and ``H_{t-1}`` followed by a pointwise core, run over time
    by :func:`run` (a ``jax.lax.scan``; its layouts, masks and backward passes).
:mod:`jaxseq.cells.bptt`
    the hand-written backpropagation through time (``jax.custom_vjp``) that
    :func:`run` uses by default (``backward="custom"``).
:mod:`jaxseq.cells.minimal`
    minGRU and minLSTM (``MINGRU``, ``MINLSTM``, :func:`run_min`), whose gates
    read only ``X_t`` so that a layer trains in parallel over time (a log-space
    associative scan with a hand-written backward pass).

Parameters are flat dicts of per-gate arrays named as in those equations
(``W_xg``, ``W_hg``, ``b_g``, ...). The output layer ``O_t = H_t W_hq + b_q``
belongs to the model, not the cell.

Shapes at the public API are batch-major: inputs ``(B, T, I)``, outputs
``(B, T, H)``, carries ``(B, H)`` (a tuple ``(H, C)`` for the LSTM).

Everything public is re-exported here: ``from jaxseq import cells``, then
``cells.run(cells.GRU, ...)``, ``cells.run_min(cells.MINGRU, ...)``.
"""

from jaxseq.cells.gated import (
    BACKWARDS,
    CELLS,
    GRU,
    GRU_AFTER,
    GRU_BEFORE,
    GRU_RESETS,
    LAYOUTS,
    LSTM,
    RNN,
    UNROLL,
    Array,
    Carry,
    Cell,
    Params,
    add_bias,
    get_cell,
    lengths_to_mask,
    platform_unroll,
    rnn_cell,
    run,
)
from jaxseq.cells.minimal import (
    LOG_ZERO,
    MIN_CELLS,
    MIN_RUNNERS,
    MINGRU,
    MINLSTM,
    MinCell,
    get_min_cell,
    log_min_g,
    min_g,
    min_update,
    mingru,
    minlstm,
    run_min,
)

__all__ = [
    # types
    "Array", "Carry", "Params",
    # RNN, GRU, LSTM (jaxseq.cells.gated)
    "Cell", "RNN", "GRU", "GRU_BEFORE", "GRU_AFTER", "GRU_RESETS", "LSTM", "CELLS", "rnn_cell", "get_cell",
    "LAYOUTS", "BACKWARDS", "add_bias", "lengths_to_mask", "run", "UNROLL", "platform_unroll",
    # minGRU, minLSTM (jaxseq.cells.minimal)
    "MinCell", "MINGRU", "MINLSTM", "MIN_CELLS", "get_min_cell", "MIN_RUNNERS", "LOG_ZERO",
    "min_g", "log_min_g", "min_update", "run_min", "mingru", "minlstm",
]
