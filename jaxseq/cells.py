"""Recurrent cells as pure functions over explicit parameter pytrees.

Every cell here is an affine map followed by a pointwise *core*. At time step
``t`` each gate ``g`` gets two pre-activations,

    a^x_g = X_t W_xg + b_g            (B, H)   the input projection
    a^h_g = H_{t-1} W_hg [+ b_hg]     (B, H)   the recurrent projection

and the core turns them and the previous carry into the new carry. The cores:

RNN (``rnn``; gate ``h``)::

    H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h)          phi = tanh or relu

GRU (``gru``; gates ``r``, ``z``, ``h``)::

    R_t  = sigma(X_t W_xr + H_{t-1} W_hr + b_r)        reset gate
    Z_t  = sigma(X_t W_xz + H_{t-1} W_hz + b_z)        update gate
    H~_t = tanh(X_t W_xh + R_t * (H_{t-1} W_hh + b_hh) + b_h)   candidate state
    H_t  = Z_t * H_{t-1} + (1 - Z_t) * H~_t

  This is the "reset after" form of Cho et al. (2014) used by cuDNN, PyTorch,
  Keras and Flax's ``GRUCell``: the reset gate scales ``H_{t-1} W_hh`` rather
  than ``H_{t-1}`` (D2L writes ``(R_t * H_{t-1}) W_hh``). It has the same
  expressive power, lets all three recurrent products be taken at once, and
  makes our GRU equal to Flax's and PyTorch's given the same weights.

LSTM (``lstm``; gates ``i``, ``f``, ``o``, ``c``; carry ``(H, C)``)::

    I_t  = sigma(X_t W_xi + H_{t-1} W_hi + b_i)        input gate
    F_t  = sigma(X_t W_xf + H_{t-1} W_hf + b_f)        forget gate
    O_t  = sigma(X_t W_xo + H_{t-1} W_ho + b_o)        output gate
    C~_t = tanh(X_t W_xc + H_{t-1} W_hc + b_c)         candidate memory
    C_t  = F_t * C_{t-1} + I_t * C~_t
    H_t  = O_t * tanh(C_t)

The output layer ``O_t = H_t W_hq + b_q`` belongs to the model, not the cell.

minGRU and minLSTM (``MINGRU``, ``MINLSTM``, :func:`run_min`), whose gates read
only ``X_t`` so that a layer trains in parallel over time, have their own
section at the end of this file.

Parameters are flat dicts of per-gate arrays named as in the equations
(``W_xr``, ``W_hr``, ``b_r``, ...): measured on this project's CPU, separate
per-gate products in the scan body beat one fused ``(H, 3H)`` product split
inside it.

Running a layer over time (:func:`run`) is a ``jax.lax.scan``. Its layouts:

``layout="step"``     the input projection is taken inside the scan body;
``layout="hoisted"``  all ``T`` input projections are one ``(B*T, I) x (I, H)``
                      product before the scan;
``backward="custom"`` a hand-written backpropagation through time
                      (``jax.custom_vjp``): the reverse scan carries only
                      ``dH`` (``dH_{t-1} = sum_g dA^h_g W_hg^T + dcore``), and
                      every weight gradient is ONE matmul after the loop,
                      ``dW_hg = sum_t H_{t-1}^T dA^h_{g,t}``,
                      ``dW_xg = sum_t X_t^T dA^x_{g,t}``;
``backward="autodiff"`` JAX differentiates the scan (weight gradients are
                      accumulated step by step inside the reverse loop).

All variants compute the same function and the same gradients (tested against
a float64 NumPy loop); the defaults are the fastest on the benchmarks
(``benchmarks/bench_rnn.py``).

Shapes at the public API are batch-major: inputs ``(B, T, I)``, outputs
``(B, T, H)``, carries ``(B, H)`` (a tuple ``(H, C)`` for the LSTM).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq.errors import ConfigError

Array = jax.Array
Params = dict[str, Array]
Carry = Any  # (B, H) array, or a tuple of them (LSTM: (H, C))

LAYOUTS = ("step", "hoisted")
BACKWARDS = ("custom", "autodiff")


# --------------------------------------------------------------------------------------
# The pointwise cores. gx, gh: dicts gate -> (B, H) pre-activations.
# --------------------------------------------------------------------------------------

def _rnn_core(gx: dict, gh: dict, h: Array, activation: str) -> tuple[Array, Array]:
    pre = gx["h"] + gh["h"]
    h_new = jnp.tanh(pre) if activation == "tanh" else jax.nn.relu(pre)
    return h_new, h_new


def _gru_core(gx: dict, gh: dict, h: Array) -> tuple[Array, Array]:
    r = jax.nn.sigmoid(gx["r"] + gh["r"])
    z = jax.nn.sigmoid(gx["z"] + gh["z"])
    h_tilde = jnp.tanh(gx["h"] + r * gh["h"])
    h_new = z * h + (1.0 - z) * h_tilde
    return h_new, h_new


def _lstm_core(gx: dict, gh: dict, carry: tuple[Array, Array]) -> tuple[tuple[Array, Array], Array]:
    _, c = carry
    i = jax.nn.sigmoid(gx["i"] + gh["i"])
    f = jax.nn.sigmoid(gx["f"] + gh["f"])
    o = jax.nn.sigmoid(gx["o"] + gh["o"])
    c_tilde = jnp.tanh(gx["c"] + gh["c"])
    c_new = f * c + i * c_tilde
    h_new = o * jnp.tanh(c_new)
    return (h_new, c_new), h_new


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: its gates, its pointwise core and its parameter shapes.

    ``gates``         names of the affine pre-activations
    ``h_bias``        gates whose recurrent projection has its own bias (GRU: ``h``)
    ``carry_parts``   1 for a carry ``H``, 2 for ``(H, C)``
    ``core``          ``(gx, gh, carry) -> (carry, H_t)``, pointwise
    """

    name: str
    gates: tuple[str, ...]
    core: Callable[..., tuple[Carry, Array]]
    h_bias: tuple[str, ...] = ()
    carry_parts: int = 1
    forget_bias: float = 0.0     # added to the LSTM forget-gate bias at init

    # -- parameters ----------------------------------------------------------
    def init(self, key: Array, input_size: int, hidden_size: int, dtype=jnp.float32) -> Params:
        """Per-gate weights: ``W_x* ~ N(0, 1/I)`` (LeCun), ``W_h*`` orthogonal, biases 0.

        The LSTM's forget-gate bias starts at 1 (Jozefowicz et al., 2015) so
        the memory is kept early in training.
        """
        params: Params = {}
        keys = jax.random.split(key, 2 * len(self.gates))
        orthogonal = jax.nn.initializers.orthogonal()
        for n, g in enumerate(self.gates):
            params[f"W_x{g}"] = (jax.random.normal(keys[2 * n], (input_size, hidden_size), dtype)
                                 / math.sqrt(input_size)).astype(dtype)
            params[f"W_h{g}"] = orthogonal(keys[2 * n + 1], (hidden_size, hidden_size), dtype)
            bias = self.forget_bias if g == "f" else 0.0
            params[f"b_{g}"] = jnp.full((hidden_size,), bias, dtype)
            if g in self.h_bias:
                params[f"b_h{g}"] = jnp.zeros((hidden_size,), dtype)
        return params

    def recurrent_names(self) -> list[str]:
        """Names of the recurrent parameters ``W_hg`` and ``b_hg``."""
        return [f"W_h{g}" for g in self.gates] + [f"b_h{g}" for g in self.h_bias]

    def hidden_size(self, params: Params) -> int:
        return params[f"W_h{self.gates[0]}"].shape[0]

    def initial_carry(self, batch_size: int, hidden_size: int, dtype=jnp.float32) -> Carry:
        zeros = jnp.zeros((batch_size, hidden_size), dtype)
        return zeros if self.carry_parts == 1 else tuple(zeros for _ in range(self.carry_parts))

    # -- the affine maps -----------------------------------------------------
    def project_input(self, params: Params, x: Array) -> dict[str, Array]:
        """``a^x_g = X W_xg + b_g`` for every gate; ``x`` is ``(..., I)``."""
        return {g: add_bias(x @ params[f"W_x{g}"].astype(x.dtype), params[f"b_{g}"].astype(x.dtype))
                for g in self.gates}

    def project_hidden(self, params: Params, h: Array) -> dict[str, Array]:
        """``a^h_g = H W_hg (+ b_hg)`` for every gate; ``h`` is ``(B, H)``."""
        out = {}
        for g in self.gates:
            a = h @ params[f"W_h{g}"].astype(h.dtype)
            if g in self.h_bias:
                a = add_bias(a, params[f"b_h{g}"].astype(h.dtype))
            out[g] = a
        return out

    # -- one step and a whole layer ------------------------------------------
    def step(self, params: Params, carry: Carry, x: Array) -> tuple[Carry, Array]:
        """One time step: ``x`` is ``(B, I)``; returns ``(carry_t, H_t)``."""
        h = _hidden(carry)
        return self.core(self.project_input(params, x), self.project_hidden(params, h), carry)

    def scan(self, params: Params, xs: Array, carry: Carry | None = None, **kwargs) -> tuple[Carry, Array]:
        """Run over ``xs`` ``(B, T, I)``; see :func:`run` for the options."""
        return run(self, params, xs, carry, **kwargs)


def add_bias(a: Array, b: Array) -> Array:
    """``a + b`` for ``a`` ``(..., H)`` and ``b`` ``(H,)``, broadcast explicitly (strict rank promotion)."""
    return a + b.reshape((1,) * (a.ndim - 1) + b.shape)


def _hidden(carry: Carry) -> Array:
    return carry[0] if isinstance(carry, tuple) else carry


def _add_to_hidden(dcarry: Carry, extra: Array) -> Carry:
    if isinstance(dcarry, tuple):
        return (dcarry[0] + extra,) + tuple(dcarry[1:])
    return dcarry + extra


def rnn_cell(activation: str = "tanh") -> Cell:
    """The vanilla RNN, ``phi`` = tanh (default) or relu."""
    if activation not in ("tanh", "relu"):
        raise ConfigError(f"RNN activation must be tanh or relu, got {activation!r}")
    return Cell(f"rnn-{activation}" if activation != "tanh" else "rnn", ("h",),
                functools.partial(_rnn_core, activation=activation))


RNN = rnn_cell("tanh")
GRU = Cell("gru", ("r", "z", "h"), _gru_core, h_bias=("h",))
LSTM = Cell("lstm", ("i", "f", "o", "c"), _lstm_core, carry_parts=2, forget_bias=1.0)
CELLS: dict[str, Cell] = {"rnn": RNN, "gru": GRU, "lstm": LSTM}


def get_cell(name: str, activation: str = "tanh") -> Cell:
    """The cell ``name`` (``rnn``, ``gru``, ``lstm``); ``activation`` is the plain RNN's phi."""
    if name == "rnn":
        return rnn_cell(activation)
    if name not in CELLS:
        raise ConfigError(f"unknown cell {name!r}; choose one of {', '.join(CELLS)}")
    return CELLS[name]


# --------------------------------------------------------------------------------------
# Masking: a padded step leaves the carry as it was and outputs zeros.
# --------------------------------------------------------------------------------------

def _masked_core(cell: Cell, gx: dict, gh: dict, carry: Carry, keep: Array | None):
    new, h = cell.core(gx, gh, carry)
    if keep is None:
        return new, h
    k = keep[:, None]
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(k, a, b), new, carry)
    return new, jnp.where(k, h, jnp.zeros_like(h))


def lengths_to_mask(lengths: Array, steps: int) -> Array:
    """``(B,)`` valid lengths -> ``(B, T)`` boolean mask, True on real steps."""
    return jnp.arange(steps)[None, :] < jnp.asarray(lengths)[:, None]


# --------------------------------------------------------------------------------------
# The reference runner: lax.scan over cell.step, differentiated by JAX.
# --------------------------------------------------------------------------------------

def _scan_autodiff(cell: Cell, params: Params, xs_or_gx, carry: Carry, keep, reverse: bool, hoisted: bool,
                   remat: bool):
    def body(c, inp):
        x, m = inp
        gx = x if hoisted else cell.project_input(params, x)
        return _masked_core(cell, gx, cell.project_hidden(params, _hidden(c)), c, m)

    if remat:
        body = jax.checkpoint(body)
    return jax.lax.scan(body, carry, (xs_or_gx, keep), reverse=reverse)


# --------------------------------------------------------------------------------------
# Hand-written backpropagation through time (jax.custom_vjp).
# --------------------------------------------------------------------------------------

def _forward_saving(cell, params, inputs, carry, keep, reverse, hoisted, remat):
    """Forward scan that also returns what the backward pass needs per step.

    Saved per step: the carry before the step and, unless ``remat``, the
    recurrent pre-activations ``a^h`` (and ``a^x`` when it is computed inside
    the scan; a hoisted ``a^x`` is the function's own input). With ``remat``
    the backward pass recomputes them from the saved carries.
    """
    def body(c, inp):
        x, m = inp
        gx = x if hoisted else cell.project_input(params, x)
        gh = cell.project_hidden(params, _hidden(c))
        new, h = _masked_core(cell, gx, gh, c, m)
        saved_gh = None if remat else gh
        saved_gx = None if (remat or hoisted) else gx
        return new, (h, (c, saved_gh, saved_gx))

    carry_T, (hs, saved) = jax.lax.scan(body, carry, (inputs, keep), reverse=reverse)
    return carry_T, hs, saved


def _backward_loop(cell, params, inputs, saved, keep, dcarry_T, dhs, reverse, hoisted):
    """Reverse-time scan carrying ``dH`` only; returns per-step ``dA^x``, ``dA^h``.

    ``dH_{t-1} = dcore/dH_{t-1} + sum_g dA^h_{g,t} W_hg^T``.
    """
    carries, gh_all, gx_all = saved
    xs = inputs if gx_all is None else None

    def body(dc, inp):
        c, gh, gx, x, m, dh = inp
        if gx is None:
            gx = x if hoisted else cell.project_input(params, x)
        if gh is None:
            gh = cell.project_hidden(params, _hidden(c))
        _, vjp = jax.vjp(lambda gx_, gh_, c_: _masked_core(cell, gx_, gh_, c_, m), gx, gh, c)
        dgx, dgh, dc_prev = vjp((dc, dh))
        back = sum(dgh[g] @ params[f"W_h{g}"].T.astype(dgh[g].dtype) for g in cell.gates)
        return _add_to_hidden(dc_prev, back), (dgx, dgh)

    dcarry0, (dgx_all, dgh_all) = jax.lax.scan(
        body, dcarry_T, (carries, gh_all, gx_all, xs, keep, dhs), reverse=not reverse)
    return dcarry0, dgx_all, dgh_all


def _flat(a: Array) -> Array:
    return a.reshape(-1, a.shape[-1])


def _recurrent_grads(cell, params, carries, dgh_all) -> dict[str, Array]:
    """``dW_hg = sum_t H_{t-1}^T dA^h_g`` (one matmul), ``db_hg = sum dA^h_g``."""
    h_prev = _flat(_hidden(carries))
    grads = {}
    for g in cell.gates:
        grads[f"W_h{g}"] = (h_prev.T @ _flat(dgh_all[g])).astype(params[f"W_h{g}"].dtype)
        if g in cell.h_bias:
            grads[f"b_h{g}"] = _flat(dgh_all[g]).sum(0).astype(params[f"b_h{g}"].dtype)
    return grads


def _input_grads(cell, params, xs, dgx_all) -> tuple[dict[str, Array], Array]:
    """``dW_xg = sum_t X_t^T dA^x_g``, ``db_g = sum dA^x_g``, ``dX = sum_g dA^x_g W_xg^T``."""
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 5, 6, 7))
def _recurrence(cell, params, inputs, carry, keep, reverse, hoisted, remat):
    """The layer with a hand-written VJP. ``inputs``: time-major ``xs`` (step
    layout, ``params`` all weights) or the projections ``{g: a^x_g}``
    (hoisted, ``params`` the recurrent weights only)."""
    carry_T, hs, _ = _forward_saving(cell, params, inputs, carry, keep, reverse, hoisted, remat)
    return carry_T, hs


def _recurrence_fwd(cell, params, inputs, carry, keep, reverse, hoisted, remat):
    carry_T, hs, saved = _forward_saving(cell, params, inputs, carry, keep, reverse, hoisted, remat)
    return (carry_T, hs), (params, inputs, saved, keep)


def _recurrence_bwd(cell, reverse, hoisted, remat, res, cotangents):
    params, inputs, saved, keep = res
    dcarry_T, dhs = cotangents
    dcarry0, dgx_all, dgh_all = _backward_loop(cell, params, inputs, saved, keep, dcarry_T, dhs,
                                               reverse, hoisted)
    grads = _recurrent_grads(cell, params, saved[0], dgh_all)
    if hoisted:
        return grads, dgx_all, dcarry0, _zero_cotangent(keep)
    input_grads, dxs = _input_grads(cell, params, inputs, dgx_all)
    return {**grads, **input_grads}, dxs, dcarry0, _zero_cotangent(keep)


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


# --------------------------------------------------------------------------------------
# The public runner.
# --------------------------------------------------------------------------------------

def run(cell: Cell, params: Params, xs: Array | None, carry: Carry | None = None, *,
        projected: dict[str, Array] | None = None, lengths: Array | None = None,
        mask: Array | None = None, reverse: bool = False, layout: str = "hoisted",
        backward: str = "custom", remat: bool = False) -> tuple[Carry, Array]:
    """Run ``cell`` over a batch of sequences with ``jax.lax.scan``.

    Args:
      xs: inputs ``(B, T, I)``; or None when ``projected`` is given.
      carry: initial carry (zeros if None): ``(B, H)``, or ``(H, C)`` for the LSTM.
      projected: the input projections ``{g: (B, T, H)}`` (``a^x_g`` including
        ``b_g``) computed by the caller, e.g. an embedding-row lookup that
        equals a one-hot input times ``W_xg``. Implies ``layout="hoisted"``.
      lengths: ``(B,)`` valid lengths, or ``mask``: ``(B, T)`` booleans. A
        masked step leaves the carry unchanged and outputs zeros, so the final
        carry is the state at each sequence's true last step (for
        ``reverse=True`` with right padding, the reverse pass starts at each
        sequence's true last step).
      reverse: run from ``t = T-1`` down to 0 (outputs stay in time order).
      layout: ``"hoisted"`` or ``"step"`` (where the input projection is taken).
      backward: ``"custom"`` (hand-written BPTT) or ``"autodiff"``.
      remat: keep only the carries for the backward pass and recompute the
        gates there (less memory for long sequences, one more recurrent
        product per step); with ``autodiff`` this is ``jax.checkpoint`` on
        the scan body.

    Returns:
      ``(final_carry, hs)`` with ``hs`` of shape ``(B, T, H)``.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if backward not in BACKWARDS:
        raise ConfigError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    source = projected if projected is not None else xs
    batch, steps = jax.tree_util.tree_leaves(source)[0].shape[:2]
    if carry is None:
        carry = cell.initial_carry(batch, cell.hidden_size(params),
                                   jax.tree_util.tree_leaves(source)[0].dtype)
    if lengths is not None:
        if mask is not None:
            raise ConfigError("give lengths or mask, not both")
        mask = lengths_to_mask(lengths, steps)
    keep = None if mask is None else jnp.swapaxes(jnp.asarray(mask, bool), 0, 1)   # (T, B)
    time_major = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), source)
    hoisted = projected is not None or layout == "hoisted"
    if hoisted and projected is None:
        time_major = cell.project_input(params, time_major)
    if backward == "autodiff":
        carry, hs = _scan_autodiff(cell, params, time_major, carry, keep, reverse, hoisted, remat)
    else:
        used = {k: params[k] for k in cell.recurrent_names()} if hoisted else params
        carry, hs = _recurrence(cell, used, time_major, carry, keep, reverse, hoisted, remat)
    return carry, jnp.swapaxes(hs, 0, 1)


# ======================================================================================
# Minimal recurrences that train in parallel over time: minGRU and minLSTM
# (Feng et al., 2024, "Were RNNs All We Needed?"). Independent of everything above.
# ======================================================================================

MIN_RUNNERS = ("parallel", "sequential")
LOG_ZERO = -1e30   # log 0 as a finite number: exp() gives exactly 0, gradients stay finite


def min_g(x: Array) -> Array:
    """``g(x) = x + 1/2`` for ``x >= 0``, ``sigmoid(x)`` for ``x < 0``: positive, continuous, linear growth."""
    return jnp.where(x >= 0, jax.nn.relu(x) + 0.5, jax.nn.sigmoid(x))


def _softplus(x: Array) -> Array:
    """``log(1 + e^x)`` as ``max(x, 0) + log1p(e^-|x|)``. ``jax.nn.softplus`` goes through
    ``logaddexp``'s infinity handling; with this one (and one softplus shared per gate) the
    minGRU coefficients and their gradient ran 4.5x faster on this project's CPU."""
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def log_min_g(x: Array) -> Array:
    """``log g(x)`` without forming ``g``: ``log(x + 1/2)``, or ``log sigmoid(x) = x - softplus(x)``."""
    return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), x - _softplus(x))


def _mingru_log_coeffs(gx: dict[str, Array]) -> tuple[Array, Array]:
    """``log a_t = log(1 - Z_t) = -softplus(k_z)``; ``log b_t = log Z_t + log g(k_h)``,
    ``log Z_t = k_z - softplus(k_z)`` (one softplus for both)."""
    k = gx["z"]
    s = _softplus(k)
    return -s, k - s + log_min_g(gx["h"])


def _minlstm_log_coeffs(gx: dict[str, Array]) -> tuple[Array, Array]:
    """With ``d = log I_t - log F_t = (softplus(k_f) - k_f) - (softplus(k_i) - k_i)``:
    ``log a_t = log F'_t = -softplus(d)``; ``log b_t = log I'_t + log g(k_h)``, ``log I'_t = d - softplus(d)``."""
    kf, ki = gx["f"], gx["i"]
    d = (_softplus(kf) - kf) - (_softplus(ki) - ki)
    s = _softplus(d)
    return -s, d - s + log_min_g(gx["h"])


@dataclass(frozen=True)
class MinCell:
    """A minimal recurrence: gates that read only ``X_t``, so the state is linear in ``H_{t-1}``.

    Every gate is an input projection ``k_g = X_t W_xg + b_g`` (B, H); no gate
    sees ``H_{t-1}``. The cores:

    minGRU (``mingru``; gates ``z``, ``h``)::

        Z_t  = sigma(k_z)                                   update gate
        H~_t = g(k_h)                                       candidate state
        H_t  = (1 - Z_t) * H_{t-1} + Z_t * H~_t

    minLSTM (``minlstm``; gates ``f``, ``i``, ``h``)::

        F_t  = sigma(k_f),  I_t = sigma(k_i)                forget and input gates
        F'_t = F_t / (F_t + I_t),  I'_t = I_t / (F_t + I_t)   normalised (time-independent scale)
        H~_t = g(k_h)
        H_t  = F'_t * H_{t-1} + I'_t * H~_t

    with ``g`` = :func:`min_g`. Both are ``H_t = a_t * H_{t-1} + b_t`` with
    ``a_t`` in (0, 1) and ``b_t > 0`` depending on ``X_t`` only, and are
    computed from ``(log a_t, log b_t)`` (``log_coeffs``), as in the paper's
    appendix. Linear steps compose associatively::

        (a_1, b_1) then (a_2, b_2)  =  (a_1 a_2,  a_2 b_1 + b_2)
        in log space:  (la_1 + la_2,  logaddexp(la_2 + lb_1, lb_2))

    so ``(A_t, B_t)``, the composition of steps ``1..t``, comes from
    ``jax.lax.associative_scan`` in O(log T) parallel depth and
    ``H_t = A_t * H_0 + B_t`` for any initial state ``H_0`` (of any sign).
    The carry is ``H`` ``(B, H)``; there is no output gate or separate memory.
    """

    name: str
    gates: tuple[str, ...]
    log_coeffs: Callable[[dict[str, Array]], tuple[Array, Array]]

    def init(self, key: Array, input_size: int, hidden_size: int, dtype=jnp.float32) -> Params:
        """Per-gate ``W_xg ~ N(0, 1/I)`` (LeCun) and ``b_g = 0``."""
        params: Params = {}
        for k, g in zip(jax.random.split(key, len(self.gates)), self.gates):
            params[f"W_x{g}"] = (jax.random.normal(k, (input_size, hidden_size), dtype)
                                 / math.sqrt(input_size)).astype(dtype)
            params[f"b_{g}"] = jnp.zeros((hidden_size,), dtype)
        return params

    def hidden_size(self, params: Params) -> int:
        return params[f"W_x{self.gates[0]}"].shape[1]

    def initial_carry(self, batch_size: int, hidden_size: int, dtype=jnp.float32) -> Array:
        return jnp.zeros((batch_size, hidden_size), dtype)

    def project_input(self, params: Params, x: Array) -> dict[str, Array]:
        """``k_g = X W_xg + b_g`` for every gate; ``x`` is ``(..., I)``, taken as one 2-D product."""
        flat = x.reshape(-1, x.shape[-1])
        return {g: add_bias(flat @ params[f"W_x{g}"].astype(x.dtype),
                            params[f"b_{g}"].astype(x.dtype)).reshape(*x.shape[:-1], -1)
                for g in self.gates}

    def step(self, params: Params, carry: Array, x: Array) -> tuple[Array, Array]:
        """One time step: ``x`` ``(B, I)`` -> ``(H_t, H_t)``, ``H_t = a_t * H_{t-1} + b_t``."""
        h = min_update(carry, *self.log_coeffs(self.project_input(params, x)))
        return h, h

    def scan(self, params: Params, xs: Array, carry: Array | None = None, **kwargs) -> tuple[Array, Array]:
        """Run over ``xs`` ``(B, T, I)``; see :func:`run_min` for the options."""
        return run_min(self, params, xs, carry, **kwargs)


MINGRU = MinCell("mingru", ("z", "h"), _mingru_log_coeffs)
MINLSTM = MinCell("minlstm", ("f", "i", "h"), _minlstm_log_coeffs)
MIN_CELLS: dict[str, MinCell] = {"mingru": MINGRU, "minlstm": MINLSTM}


def get_min_cell(name: str) -> MinCell:
    if name not in MIN_CELLS:
        raise ConfigError(f"unknown minimal cell {name!r}; choose one of {', '.join(MIN_CELLS)}")
    return MIN_CELLS[name]


def min_update(h: Array, log_a: Array, log_b: Array) -> Array:
    """The step shared by both runners: ``H_t = exp(log a_t) * H_{t-1} + exp(log b_t)``."""
    return (jnp.exp(log_a) * h + jnp.exp(log_b)).astype(h.dtype)


def _masked_log_coeffs(cell: MinCell, gx: dict[str, Array], keep: Array | None,
                       resets: Array | None) -> tuple[Array, Array]:
    """``(log a_t, log b_t)`` with a reset step ``a_t = 0`` (the state restarts from 0)
    and a padded step ``a_t = 1, b_t = 0`` (the state is left as it was); ``keep``,
    ``resets``: ``(..., B)`` booleans."""
    log_a, log_b = cell.log_coeffs(gx)
    if resets is not None:
        log_a = jnp.where(resets[..., None], LOG_ZERO, log_a)
    if keep is not None:
        log_a = jnp.where(keep[..., None], log_a, 0.0)
        log_b = jnp.where(keep[..., None], log_b, LOG_ZERO)
    return log_a, log_b


def _logaddexp(x: Array, y: Array) -> Array:
    """``log(e^x + e^y)`` for finite ``x``, ``y`` (log 0 is ``LOG_ZERO``, so no infinities to handle)."""
    return jnp.maximum(x, y) + jnp.log1p(jnp.exp(-jnp.abs(x - y)))


def _compose_log(first: tuple[Array, Array], second: tuple[Array, Array]) -> tuple[Array, Array]:
    """``first`` then ``second`` for the affine maps ``h -> a h + b`` given as ``(log a, log b)``."""
    la1, lb1 = first
    la2, lb2 = second
    return la1 + la2, _logaddexp(la2 + lb1, lb2)


def _compose_linear(first: tuple[Array, Array], second: tuple[Array, Array]) -> tuple[Array, Array]:
    """The same composition in linear space, for values of any sign (the backward pass)."""
    a1, b1 = first
    a2, b2 = second
    return a1 * a2, a2 * b1 + b2


@jax.custom_vjp
def _min_parallel_forward(log_a: Array, log_b: Array, h0: Array) -> Array:
    """All ``H_t`` ``(T, B, H)`` in time order: ``H_t = A_t * H_0 + B_t``, ``(A, B)`` by ``associative_scan``."""
    log_A, log_B = jax.lax.associative_scan(_compose_log, (log_a, log_b), axis=0)
    return min_update(h0[None], log_A, log_B)


def _min_parallel_fwd(log_a, log_b, h0):
    hs = _min_parallel_forward(log_a, log_b, h0)
    return hs, (log_a, log_b, h0, hs)


def _min_parallel_bwd(res, dhs):
    """The adjoint of a linear recurrence is one backwards in time, again a parallel scan::

        G_t = dH_t + a_{t+1} G_{t+1}       (G_T = dH_T)
        d log a_t = G_t a_t H_{t-1},   d log b_t = G_t b_t,   dH_0 = a_1 G_1

    ``G`` has any sign, so it is scanned in linear space; that is stable because
    ``0 <= a_t <= 1`` (products only shrink, and nothing is divided by them).
    """
    log_a, log_b, h0, hs = res
    a = jnp.exp(log_a)
    a_next = jnp.concatenate([a[1:], jnp.zeros_like(a[:1])])
    g = jax.lax.associative_scan(_compose_linear, (a_next, dhs), reverse=True, axis=0)[1]
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    return g * a * h_prev, g * jnp.exp(log_b), a[0] * g[0]


_min_parallel_forward.defvjp(_min_parallel_fwd, _min_parallel_bwd)


def _min_parallel(log_a: Array, log_b: Array, h0: Array, reverse: bool) -> Array:
    """All ``H_t`` ``(T, B, H)`` by ``associative_scan`` (forward in log space, hand-written backward)."""
    if reverse:
        return jnp.flip(_min_parallel_forward(jnp.flip(log_a, 0), jnp.flip(log_b, 0), h0), 0)
    return _min_parallel_forward(log_a, log_b, h0)


def _min_sequential(log_a: Array, log_b: Array, h0: Array, reverse: bool) -> Array:
    """All ``H_t`` ``(T, B, H)`` by ``lax.scan`` over :func:`min_update`, one step at a time."""
    def body(h, coeffs):
        h = min_update(h, *coeffs)
        return h, h

    return jax.lax.scan(body, h0, (log_a, log_b), reverse=reverse)[1]


def run_min(cell: MinCell, params: Params, xs: Array | None, carry: Array | None = None, *,
            projected: dict[str, Array] | None = None, lengths: Array | None = None,
            mask: Array | None = None, resets: Array | None = None, reverse: bool = False,
            runner: str = "parallel") -> tuple[Array, Array]:
    """Run a minimal cell over a batch of sequences.

    Args:
      xs: inputs ``(B, T, I)``; or None when ``projected`` (``{g: k_g (B, T, H)}``,
        biases included, e.g. embedding rows) is given.
      carry: the initial state ``H_0`` ``(B, H)`` (zeros if None).
      lengths: ``(B,)`` valid lengths, or ``mask``: ``(B, T)`` booleans. A masked
        step leaves the state unchanged and outputs zeros, as in :func:`run`.
      resets: ``(B, T)`` booleans: the state before a reset step is taken as 0
        (``a_t = 0``), e.g. at document boundaries. Ignored on masked steps.
      reverse: run from ``t = T-1`` down to 0 (outputs stay in time order).
      runner: ``"parallel"`` (``lax.associative_scan`` in log space, for
        training; its backward pass is hand-written, one more scan) or
        ``"sequential"`` (``lax.scan`` over the same step, as in generation;
        differentiated by JAX). Both compute the same function.

    Returns:
      ``(final_state (B, H), hs (B, T, H))``; the final state is the state at
      each sequence's true last step.
    """
    if runner not in MIN_RUNNERS:
        raise ConfigError(f"runner must be one of {MIN_RUNNERS}, got {runner!r}")
    gx = projected if projected is not None else cell.project_input(params, xs)
    first = jax.tree_util.tree_leaves(gx)[0]
    batch, steps, hidden = first.shape
    dtype = first.dtype
    if carry is None:
        carry = cell.initial_carry(batch, hidden, dtype)
    if lengths is not None:
        if mask is not None:
            raise ConfigError("give lengths or mask, not both")
        mask = lengths_to_mask(lengths, steps)
    keep = None if mask is None else jnp.swapaxes(jnp.asarray(mask, bool), 0, 1)          # (T, B)
    resets = None if resets is None else jnp.swapaxes(jnp.asarray(resets, bool), 0, 1)   # (T, B)
    # the recurrence in float32 at least (bfloat16 cannot hold a long log-space sum)
    work = jnp.float64 if dtype == jnp.float64 else jnp.float32
    gx = {g: jnp.swapaxes(a, 0, 1).astype(work) for g, a in gx.items()}
    log_a, log_b = _masked_log_coeffs(cell, gx, keep, resets)
    scan = _min_parallel if runner == "parallel" else _min_sequential
    hs = scan(log_a, log_b, carry.astype(work), reverse)
    final = hs[0] if reverse else hs[-1]
    if keep is not None:
        hs = jnp.where(keep[..., None], hs, 0.0)
    return final.astype(dtype), jnp.swapaxes(hs, 0, 1).astype(dtype)


def mingru(params: Params, xs: Array, carry: Array | None = None, **kwargs) -> tuple[Array, Array]:
    """The minGRU over ``xs`` ``(B, T, I)`` -> ``(H_T (B, H), hs (B, T, H))``; options of :func:`run_min`."""
    return run_min(MINGRU, params, xs, carry, **kwargs)


def minlstm(params: Params, xs: Array, carry: Array | None = None, **kwargs) -> tuple[Array, Array]:
    """The minLSTM over ``xs`` ``(B, T, I)`` -> ``(H_T (B, H), hs (B, T, H))``; options of :func:`run_min`."""
    return run_min(MINLSTM, params, xs, carry, **kwargs)
