"""Hand-written backpropagation through time for :func:`jaxseq.cells.gated.run` (``backward="custom"``).

The layer is one ``jax.custom_vjp`` (:func:`_recurrence`). With ``a^x_g`` and
``a^h_g`` the pre-activations of :mod:`jaxseq.cells.gated` and ``core`` its
pointwise map ``(a^x_t, a^h_t, carry_{t-1}) -> (carry_t, H_t)``:

Forward (:func:`_forward_saving`): the ``jax.lax.scan`` of the layer, which
also saves per step what the backward pass needs.

Backward: a reverse-time scan (:func:`_backward_loop`) whose carry is only
the carry's cotangent ``dH`` (``(dH, dC)`` for the LSTM). At step ``t`` the VJP
of the masked core takes that and the output's cotangent to ``dA^x_{g,t}``,
``dA^h_{g,t}`` and ``dcore/dcarry_{t-1}``; the recurrent products are undone
by hand::

    dH_{t-1} = dcore/dH_{t-1} + sum_g dA^h_{g,t} W_hg^T

A *late* gate (the reset-before GRU's candidate) multiplies a gated state
``U_t = R_t * H_{t-1}`` rather than ``H_{t-1}``; its term is undone through
``U`` (:func:`_late_backward`), and its weight gradient reads ``U``::

    dU_t = dA^h_{h,t} W_hh^T,   dH_{t-1} += dU_t * R_t,   dR_t = dU_t * H_{t-1}
    dW_hh = sum_t U_t^T dA^h_{h,t}

Every weight gradient is then ONE matmul after the loop, the time and batch
axes flattened together (:func:`_recurrent_grads`, :func:`_input_grads`)::

    dW_hg = sum_t H_{t-1}^T dA^h_{g,t}        db_hg = sum_t dA^h_{g,t}
    dW_xg = sum_t X_t^T dA^x_{g,t}            db_g  = sum_t dA^x_{g,t}
    dX_t  = sum_g dA^x_{g,t} W_xg^T

With the hoisted layout the layer's input is ``a^x`` itself: its cotangent is
``dA^x`` and JAX differentiates the input projection taken before the scan.

This module does not import :mod:`jaxseq.cells.gated` (which imports it): the
cell is passed in, anything with ``gates``, ``h_bias``, ``core``,
``project_input``, ``project_hidden``, ``preactivate_hidden``, ``early``, ``late`` and
``late_input`` (a :class:`jaxseq.cells.gated.Cell`).
The masked step (:func:`_masked_core`) is shared with ``run``'s autodiff runner.
Shapes here are time-major: ``(T, B, ...)``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Params = dict[str, Array]
Carry = Any  # (B, H) array, or a tuple of them (LSTM: (H, C))


# --------------------------------------------------------------------------------------
# The carry and the masked step: a padded step leaves the carry as it was and outputs zeros.
# --------------------------------------------------------------------------------------

def _hidden(carry: Carry) -> Array:
    return carry[0] if isinstance(carry, tuple) else carry


def _add_to_hidden(dcarry: Carry, extra: Array) -> Carry:
    if isinstance(dcarry, tuple):
        return (dcarry[0] + extra,) + tuple(dcarry[1:])
    return dcarry + extra


def _masked_core(cell, gx: dict, gh: dict, carry: Carry, keep: Array | None):
    """``cell.core`` for one step; where ``keep`` ``(B,)`` is False, the old carry and a zero output."""
    new, h = cell.core(gx, gh, carry)
    if keep is None:
        return new, h
    k = keep[:, None]
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(k, a, b), new, carry)
    return new, jnp.where(k, h, jnp.zeros_like(h))


# --------------------------------------------------------------------------------------
# The custom VJP.
# --------------------------------------------------------------------------------------

def _forward_saving(cell, params, inputs, carry, keep, reverse, hoisted, remat, unroll=1):
    """Forward scan that also returns what the backward pass needs per step.

    Saved per step: the carry before the step and, unless ``remat``, the
    recurrent pre-activations ``a^h`` (and ``a^x`` when it is computed inside
    the scan; a hoisted ``a^x`` is the function's own input). With ``remat``
    the backward pass recomputes them from the saved carries.
    """
    def body(c, inp):
        x, m = inp
        gx = x if hoisted else cell.project_input(params, x)
        gh = cell.preactivate_hidden(params, gx, c)
        new, h = _masked_core(cell, gx, gh, c, m)
        saved_gh = None if remat else gh
        saved_gx = None if (remat or hoisted) else gx
        return new, (h, (c, saved_gh, saved_gx))

    carry_T, (hs, saved) = jax.lax.scan(body, carry, (inputs, keep), reverse=reverse, unroll=unroll)
    return carry_T, hs, saved


def _backward_loop(cell, params, inputs, saved, keep, dcarry_T, dhs, reverse, hoisted, unroll=1):
    """Reverse-time scan carrying ``dH`` only (the ``dH_{t-1}`` equation above);
    returns ``dcarry_0``, the per-step ``dA^x``, ``dA^h`` and the late gates' states ``U_t``."""
    carries, gh_all, gx_all = saved
    xs = inputs if gx_all is None else None

    def body(dc, inp):
        c, gh, gx, x, m, dh = inp
        if gx is None:
            gx = x if hoisted else cell.project_input(params, x)
        if gh is None:
            gh = cell.preactivate_hidden(params, gx, c)
        _, vjp = jax.vjp(lambda gx_, gh_, c_: _masked_core(cell, gx_, gh_, c_, m), gx, gh, c)
        dgx, dgh, dc_prev = vjp((dc, dh))
        us = None
        if cell.late:
            dgx, dgh, dc_prev, us = _late_backward(cell, params, gx, gh, c, dgx, dgh, dc_prev)
        back = sum(dgh[g] @ params[f"W_h{g}"].T.astype(dgh[g].dtype) for g in cell.early)
        return _add_to_hidden(dc_prev, back), (dgx, dgh, us)

    dcarry0, (dgx_all, dgh_all, us_all) = jax.lax.scan(
        body, dcarry_T, (carries, gh_all, gx_all, xs, keep, dhs), reverse=not reverse, unroll=unroll)
    return dcarry0, dgx_all, dgh_all, us_all


def _late_backward(cell, params, gx, gh, c, dgx, dgh, dc_prev):
    """Undo the late gates' products ``a^h_g = U_g W_hg`` with ``U = late_input(a^x, a^h_early, H_{t-1})``::

        dU_g = dA^h_g W_hg^T,   then the VJP of ``late_input`` adds to ``dA^x``, ``dA^h_early``, ``dH_{t-1}``

    (the reset-before GRU: ``dR_t = dU * H_{t-1}`` flows into the reset gate's
    pre-activations, ``dH_{t-1} += dU * R_t``). Returns the updated cotangents and ``U``."""
    early = {g: gh[g] for g in cell.early}
    us, late_vjp = jax.vjp(cell.late_input, gx, early, _hidden(c))
    du = {g: dgh[g] @ params[f"W_h{g}"].T.astype(dgh[g].dtype) for g in us}
    dgx_late, dgh_late, dh_late = late_vjp(du)
    dgx = jax.tree_util.tree_map(jnp.add, dgx, dgx_late)
    dgh = {g: dgh[g] + dgh_late[g] if g in dgh_late else dgh[g] for g in dgh}
    return dgx, dgh, _add_to_hidden(dc_prev, dh_late), us


def _flat(a: Array) -> Array:
    return a.reshape(-1, a.shape[-1])


def _recurrent_grads(cell, params, carries, dgh_all, us_all) -> dict[str, Array]:
    """``dW_hg`` (one matmul each) and ``db_hg`` from the saved carries (equations above);
    a late gate's product read ``U_g`` rather than ``H_{t-1}``: ``dW_hg = sum_t U_{g,t}^T dA^h_{g,t}``."""
    h_prev = _flat(_hidden(carries))
    grads = {}
    for g in cell.gates:
        read = _flat(us_all[g]) if g in cell.late else h_prev
        grads[f"W_h{g}"] = (read.T @ _flat(dgh_all[g])).astype(params[f"W_h{g}"].dtype)
        if g in cell.h_bias:
            grads[f"b_h{g}"] = _flat(dgh_all[g]).sum(0).astype(params[f"b_h{g}"].dtype)
    return grads


def _input_grads(cell, params, xs, dgx_all) -> tuple[dict[str, Array], Array]:
    """``dW_xg`` (one matmul each), ``db_g`` and ``dX`` for the step layout (equations above)."""
    x = _flat(xs)
    grads, dxs = {}, 0.0
    for g in cell.gates:
        dgx = _flat(dgx_all[g])
        grads[f"W_x{g}"] = (x.T @ dgx).astype(params[f"W_x{g}"].dtype)
        grads[f"b_{g}"] = dgx.sum(0).astype(params[f"b_{g}"].dtype)
        dxs = dxs + dgx_all[g] @ params[f"W_x{g}"].T.astype(dgx.dtype)
    return grads, dxs.astype(xs.dtype)


def _zero_cotangent(keep):
    return None if keep is None else np.zeros(keep.shape, jax.dtypes.float0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5, 6, 7, 8))
def _recurrence(cell, params, inputs, carry, keep, reverse, hoisted, remat, unroll=1):
    """The layer with a hand-written VJP. ``inputs``: time-major ``xs`` (step
    layout, ``params`` all weights) or the projections ``{g: a^x_g}``
    (hoisted, ``params`` the recurrent weights only)."""
    carry_T, hs, _ = _forward_saving(cell, params, inputs, carry, keep, reverse, hoisted, remat, unroll)
    return carry_T, hs


def _recurrence_fwd(cell, params, inputs, carry, keep, reverse, hoisted, remat, unroll=1):
    carry_T, hs, saved = _forward_saving(cell, params, inputs, carry, keep, reverse, hoisted, remat, unroll)
    return (carry_T, hs), (params, inputs, saved, keep)


def _recurrence_bwd(cell, reverse, hoisted, remat, unroll, res, cotangents):
    params, inputs, saved, keep = res
    dcarry_T, dhs = cotangents
    dcarry0, dgx_all, dgh_all, us_all = _backward_loop(cell, params, inputs, saved, keep, dcarry_T, dhs,
                                                       reverse, hoisted, unroll)
    grads = _recurrent_grads(cell, params, saved[0], dgh_all, us_all)
    if hoisted:
        return grads, dgx_all, dcarry0, _zero_cotangent(keep)
    input_grads, dxs = _input_grads(cell, params, inputs, dgx_all)
    return {**grads, **input_grads}, dxs, dcarry0, _zero_cotangent(keep)


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
