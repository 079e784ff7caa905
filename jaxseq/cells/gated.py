"""RNN, GRU and LSTM cells, and :func:`run`, which runs one over a batch of sequences.

Every cell here is an affine map followed by a pointwise *core*. At time step
``t`` each gate ``g`` gets two pre-activations,

    a^x_g = X_t W_xg + b_g            (B, H)   the input projection
    a^h_g = H_{t-1} W_hg [+ b_hg]     (B, H)   the recurrent projection

and the core turns them and the previous carry into the new carry. The cores:

RNN (``rnn``; gate ``h``)::

    H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h)          phi = tanh or relu

GRU (``gru``; gates ``r``, ``z``, ``h``), in two forms (``reset=``, ``--gru-reset``).
The notes' form, ``reset="before"`` (Cho et al., 2014; the lecture notes'
Bahdanau decoder; D2L's from-scratch GRU): the reset gate scales the state
*before* the recurrent product::

    R_t  = sigma(X_t W_xr + H_{t-1} W_hr + b_r)        reset gate
    Z_t  = sigma(X_t W_xz + H_{t-1} W_hz + b_z)        update gate
    H~_t = tanh(X_t W_xh + (R_t * H_{t-1}) W_hh + b_h)  candidate state
    H_t  = Z_t * H_{t-1} + (1 - Z_t) * H~_t

  ``reset="after"`` (cuDNN, PyTorch, Keras, Flax's ``GRUCell``): the reset
  gate scales the product, which has its own bias ``b_hh``::

    H~_t = tanh(X_t W_xh + R_t * (H_{t-1} W_hh + b_hh) + b_h)

  It lets all three recurrent products be taken at once (the after form's
  products do not wait for ``R_t``) and makes the GRU equal to Flax's and
  PyTorch's given the same weights. In the before form the candidate's
  recurrent product reads ``R_t * H_{t-1}``: it is a *late* gate (``Cell.late``),
  whose product is taken after the early gates' pre-activations.

LSTM (``lstm``; gates ``i``, ``f``, ``o``, ``c``; carry ``(H, C)``)::

    I_t  = sigma(X_t W_xi + H_{t-1} W_hi + b_i)        input gate
    F_t  = sigma(X_t W_xf + H_{t-1} W_hf + b_f)        forget gate
    O_t  = sigma(X_t W_xo + H_{t-1} W_ho + b_o)        output gate
    C~_t = tanh(X_t W_xc + H_{t-1} W_hc + b_c)         candidate memory
    C_t  = F_t * C_{t-1} + I_t * C~_t
    H_t  = O_t * tanh(C_t)

Parameters are flat dicts of per-gate arrays named as in the equations
(``W_xr``, ``W_hr``, ``b_r``, ...): measured on this project's CPU, separate
per-gate products in the scan body beat one fused ``(H, 3H)`` product split
inside it.

Running a layer over time (:func:`run`) is a ``jax.lax.scan``. Its layouts:

``layout="step"``     the input projection is taken inside the scan body;
``layout="hoisted"``  all ``T`` input projections are one ``(B*T, I) x (I, H)``
                      product before the scan;
``backward="custom"`` a hand-written backpropagation through time
                      (``jax.custom_vjp``, :mod:`jaxseq.cells.bptt`, equations
                      there): the reverse scan carries only ``dH``, and every
                      weight gradient is ONE matmul after the loop;
``backward="autodiff"`` JAX differentiates the scan (weight gradients are
                      accumulated step by step inside the reverse loop).

All variants compute the same function and the same gradients (tested against
a float64 NumPy loop); the defaults are the fastest on the benchmarks
(``benchmarks/bench_rnn.py``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from jaxseq.cells.bptt import Array, Carry, Params, _hidden, _masked_core, _recurrence
from jaxseq.errors import ConfigError

LAYOUTS = ("step", "hoisted")
BACKWARDS = ("custom", "autodiff")


# --------------------------------------------------------------------------------------
# The pointwise cores. gx, gh: dicts gate -> (B, H) pre-activations.
# --------------------------------------------------------------------------------------

def _rnn_core(gx: dict, gh: dict, h: Array, activation: str) -> tuple[Array, Array]:
    """``H_t = phi(X_t W_xh + H_{t-1} W_hh + b_h)``, phi = tanh or relu; ``gx["h"]``, ``gh["h"]`` ``(B, H)``."""
    pre = gx["h"] + gh["h"]
    h_new = jnp.tanh(pre) if activation == "tanh" else jax.nn.relu(pre)
    return h_new, h_new


def _gru_gates(gx: dict, gh: dict) -> tuple[Array, Array]:
    """``R_t = sigma(X_t W_xr + H_{t-1} W_hr + b_r)``, ``Z_t = sigma(X_t W_xz + H_{t-1} W_hz + b_z)``."""
    return jax.nn.sigmoid(gx["r"] + gh["r"]), jax.nn.sigmoid(gx["z"] + gh["z"])


def _gru_update(z: Array, h: Array, h_tilde: Array) -> tuple[Array, Array]:
    """``H_t = Z_t * H_{t-1} + (1 - Z_t) * H~_t``."""
    h_new = z * h + (1.0 - z) * h_tilde
    return h_new, h_new


def _gru_core(gx: dict, gh: dict, h: Array) -> tuple[Array, Array]:
    """The GRU, reset after: ``H~_t = tanh(X_t W_xh + b_h + R_t * (H_{t-1} W_hh + b_hh))``.

    ``gx[g] = X_t W_xg + b_g`` and ``gh[g] = H_{t-1} W_hg (+ b_hh)``, all ``(B, H)``.
    """
    r, z = _gru_gates(gx, gh)
    return _gru_update(z, h, jnp.tanh(gx["h"] + r * gh["h"]))


def _gru_reset_state(gx: dict, gh: dict, h: Array) -> dict[str, Array]:
    """What the reset-before candidate's recurrent product reads: ``{"h": R_t * H_{t-1}}``."""
    r, _ = _gru_gates(gx, gh)
    return {"h": r * h}


def _gru_before_core(gx: dict, gh: dict, h: Array) -> tuple[Array, Array]:
    """The GRU, reset before (the notes' form): ``H~_t = tanh(X_t W_xh + b_h + (R_t * H_{t-1}) W_hh)``.

    ``gh["h"] = (R_t * H_{t-1}) W_hh`` was taken by :meth:`Cell.preactivate_hidden`
    from :func:`_gru_reset_state`; ``gh["r"]``, ``gh["z"]`` as in :func:`_gru_core`.
    """
    z = jax.nn.sigmoid(gx["z"] + gh["z"])          # R_t was used in gh["h"] already
    return _gru_update(z, h, jnp.tanh(gx["h"] + gh["h"]))


def _lstm_core(gx: dict, gh: dict, carry: tuple[Array, Array]) -> tuple[tuple[Array, Array], Array]:
    """The LSTM step (gates ``i f o c``; carry ``(H, C)``)::

        I_t = sigma(a_i)   F_t = sigma(a_f)   O_t = sigma(a_o)   C~_t = tanh(a_c)
        C_t = F_t * C_{t-1} + I_t * C~_t
        H_t = O_t * tanh(C_t)

    with ``a_g = X_t W_xg + H_{t-1} W_hg + b_g = gx[g] + gh[g]`` ``(B, H)``.
    """
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
    ``late``          gates whose recurrent product reads a gated state rather
                      than ``H_{t-1}`` (the reset-before GRU: ``h`` reads ``R_t * H_{t-1}``)
    ``late_input``    ``(gx, gh_early, carry) -> {g: state (B, H)}`` for the late gates
    """

    name: str
    gates: tuple[str, ...]
    core: Callable[..., tuple[Carry, Array]]
    h_bias: tuple[str, ...] = ()
    carry_parts: int = 1
    forget_bias: float = 0.0     # added to the LSTM forget-gate bias at init
    late: tuple[str, ...] = ()
    late_input: Callable[..., dict[str, Array]] | None = None

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

    def project_hidden(self, params: Params, h: Array, gates: tuple[str, ...] | None = None) -> dict[str, Array]:
        """``a^h_g = H W_hg (+ b_hg)`` for the early gates (or ``gates``); ``h`` is ``(B, H)``."""
        out = {}
        for g in (self.early if gates is None else gates):
            a = h @ params[f"W_h{g}"].astype(h.dtype)
            if g in self.h_bias:
                a = add_bias(a, params[f"b_h{g}"].astype(h.dtype))
            out[g] = a
        return out

    @property
    def early(self) -> tuple[str, ...]:
        """The gates whose recurrent product reads ``H_{t-1}`` itself."""
        return tuple(g for g in self.gates if g not in self.late)

    def preactivate_hidden(self, params: Params, gx: dict[str, Array], carry: Carry) -> dict[str, Array]:
        """``a^h_g`` for every gate: the early gates from ``H_{t-1}``, then each late
        gate from its gated state (``late_input``), e.g. ``(R_t * H_{t-1}) W_hh``."""
        gh = self.project_hidden(params, _hidden(carry))
        if self.late:
            for g, u in self.late_input(gx, gh, _hidden(carry)).items():
                gh.update(self.project_hidden(params, u, (g,)))
        return gh

    # -- one step and a whole layer ------------------------------------------
    def step(self, params: Params, carry: Carry, x: Array) -> tuple[Carry, Array]:
        """One time step, ``(carry_{t-1}, X_t) -> (carry_t, H_t)``; ``x`` is ``(B, I)``.

        The affine maps ``a^x_g = X_t W_xg + b_g`` (:meth:`project_input`) and
        ``a^h_g = H_{t-1} W_hg`` (:meth:`preactivate_hidden`; a late gate's reads
        its gated state) feed the cell's core, whose docstring is its equation
        (``_rnn_core``, ``_gru_core``, ``_gru_before_core``, ``_lstm_core``).
        """
        gx = self.project_input(params, x)
        return self.core(gx, self.preactivate_hidden(params, gx, carry), carry)

    def scan(self, params: Params, xs: Array, carry: Carry | None = None, **kwargs) -> tuple[Carry, Array]:
        """Run over ``xs`` ``(B, T, I)``; see :func:`run` for the options."""
        return run(self, params, xs, carry, **kwargs)


def add_bias(a: Array, b: Array) -> Array:
    """``a + b`` for ``a`` ``(..., H)`` and ``b`` ``(H,)``, broadcast explicitly (strict rank promotion)."""
    return a + b.reshape((1,) * (a.ndim - 1) + b.shape)


def rnn_cell(activation: str = "tanh") -> Cell:
    """The vanilla RNN, ``phi`` = tanh (default) or relu."""
    if activation not in ("tanh", "relu"):
        raise ConfigError(f"RNN activation must be tanh or relu, got {activation!r}")
    return Cell(f"rnn-{activation}" if activation != "tanh" else "rnn", ("h",),
                functools.partial(_rnn_core, activation=activation))


RNN = rnn_cell("tanh")
GRU_AFTER = Cell("gru", ("r", "z", "h"), _gru_core, h_bias=("h",))
GRU_BEFORE = Cell("gru-reset-before", ("r", "z", "h"), _gru_before_core, late=("h",),
                  late_input=_gru_reset_state)
GRU_RESETS = {"before": GRU_BEFORE, "after": GRU_AFTER}
GRU = GRU_AFTER
LSTM = Cell("lstm", ("i", "f", "o", "c"), _lstm_core, carry_parts=2, forget_bias=1.0)
CELLS: dict[str, Cell] = {"rnn": RNN, "gru": GRU, "lstm": LSTM}


def get_cell(name: str, activation: str = "tanh", reset: str = "after") -> Cell:
    """The cell ``name`` (``rnn``, ``gru``, ``lstm``); ``activation`` is the plain RNN's phi,
    ``reset`` the GRU's form (``before``: the notes', ``after``: cuDNN's)."""
    if name not in CELLS:
        raise ConfigError(f"unknown cell {name!r}; choose one of {', '.join(CELLS)}")
    if reset not in GRU_RESETS:
        raise ConfigError(f"GRU reset must be one of {', '.join(GRU_RESETS)}, got {reset!r}")
    if CELLS[name] is RNN:
        return rnn_cell(activation)
    return GRU_RESETS[reset] if CELLS[name] is GRU else CELLS[name]


# --------------------------------------------------------------------------------------
# Masking: a padded step leaves the carry as it was and outputs zeros (the masked
# step, bptt._masked_core, is shared by both runners).
# --------------------------------------------------------------------------------------

def lengths_to_mask(lengths: Array, steps: int) -> Array:
    """``(B,)`` valid lengths -> ``(B, T)`` boolean mask, True on real steps."""
    return jnp.arange(steps)[None, :] < jnp.asarray(lengths)[:, None]


# --------------------------------------------------------------------------------------
# The reference runner: lax.scan over cell.step, differentiated by JAX.
# --------------------------------------------------------------------------------------

def _scan_autodiff(cell: Cell, params: Params, xs_or_gx, carry: Carry, keep, reverse: bool, hoisted: bool,
                   remat: bool, unroll: int = 1):
    def body(c, inp):
        x, m = inp
        gx = x if hoisted else cell.project_input(params, x)
        return _masked_core(cell, gx, cell.preactivate_hidden(params, gx, c), c, m)

    if remat:
        body = jax.checkpoint(body)
    return jax.lax.scan(body, carry, (xs_or_gx, keep), reverse=reverse, unroll=unroll)


# --------------------------------------------------------------------------------------
# How many steps per loop iteration, per platform (--scan-unroll 0).
# --------------------------------------------------------------------------------------

# Measured: on the project's 2-core CPU unroll=8 never helped (docs/DESIGN.md, "Fast by
# measurement"); on one H200 (benchmarks/README.md, "Device check", 2026-11-30) the GRU LM
# trained 1.17x faster with unroll 8 (2.33M vs 1.99M tokens/s, hidden 1024, batch 128).
# TPU: 1 until measured.
UNROLL = {"cpu": 1, "gpu": 8, "tpu": 1}


def platform_unroll(unroll: int = 0, backend: str | None = None) -> int:
    """``unroll`` itself when positive, else the table's entry for ``backend`` (default: JAX's)."""
    if unroll > 0:
        return unroll
    return UNROLL.get(backend or jax.default_backend(), 1)


# --------------------------------------------------------------------------------------
# The public runner.
# --------------------------------------------------------------------------------------

def run(cell: Cell, params: Params, xs: Array | None, carry: Carry | None = None, *,
        projected: dict[str, Array] | None = None, lengths: Array | None = None,
        mask: Array | None = None, reverse: bool = False, layout: str = "hoisted",
        backward: str = "custom", remat: bool = False, unroll: int = 1) -> tuple[Carry, Array]:
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
      unroll: time steps per iteration of the compiled loop (``lax.scan``'s
        ``unroll``, forward and backward scans alike); the results are the
        same for any value (:func:`platform_unroll` picks one per platform).

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
        carry, hs = _scan_autodiff(cell, params, time_major, carry, keep, reverse, hoisted, remat, unroll)
    else:
        used = {k: params[k] for k in cell.recurrent_names()} if hoisted else params
        carry, hs = _recurrence(cell, used, time_major, carry, keep, reverse, hoisted, remat, unroll)
    return carry, jnp.swapaxes(hs, 0, 1)
