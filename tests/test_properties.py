"""Property-based tests (hypothesis) of the functional core: invariants over random shapes, lengths and seeds.

Each property is checked against an independent reference (a Python loop over ``cell.step``, JAX's
autodiff of that loop or of the attention formula, a float64 NumPy softmax, an uninterrupted training
run), never against itself. Compiling dominates (an example runs in milliseconds), so shapes come from
a small fixed family (batch {3, 1}, time {7, 4, 1}, hidden 3, 2 heads) and each test runs a few
examples; lengths, masks, resets and data are values, drawn freely from seeded generators. Examples are
derandomized and not shrunk: CI sees the same cases every run, and a failure is reported as found.
"""

from __future__ import annotations

import math
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from jaxseq import attention as A
from jaxseq import cells, parallel, train
from jaxseq.checkpoint import Checkpointer
from jaxseq.data.lm import LMBatches
from jaxseq.errors import ConfigError
from jaxseq.manifest import Manifest, tree_signature
from jaxseq.optim import OptimConfig, make_optimizer
from jaxseq.tasks.lm import build_lm


def props(examples: int):
    """Few examples, no deadline (an example compiles), the same cases every run, and no shrinking
    (each shrink step would compile again: a failure is reported as found)."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=True,
                    phases=(Phase.explicit, Phase.generate),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the cells under test: every cell jaxseq offers, so a cell added later is picked up ------------------

def _gated_cells() -> list:
    """Every cell of ``cells.CELLS``, every variant ``cells.get_cell`` makes of one (the relu RNN), and
    any other ``Cell`` the package exports; one per name."""
    found: dict = {}
    for name, cell in cells.CELLS.items():
        found.setdefault(cell.name, cell)
        for activation in ("tanh", "relu"):
            try:
                variant = cells.get_cell(name, activation)
            except ConfigError:
                continue
            found.setdefault(variant.name, variant)
    for value in vars(cells).values():
        if isinstance(value, cells.Cell):
            found.setdefault(value.name, value)
    return list(found.values())


def _minimal_cells() -> list:
    found = {cell.name: cell for cell in cells.MIN_CELLS.values()}
    for value in vars(cells).values():
        if isinstance(value, cells.MinCell):
            found.setdefault(value.name, value)
    return list(found.values())


GATED = _gated_cells()
MINIMAL = _minimal_cells()
VARIANTS = [(layout, backward) for layout in cells.LAYOUTS for backward in cells.BACKWARDS]
INPUT = 4


def test_the_cell_lists_cover_every_cell():
    assert {"rnn", "rnn-relu", "gru", "lstm"} <= {c.name for c in GATED}
    assert {c.name for c in cells.CELLS.values()} <= {c.name for c in GATED}
    assert {"mingru", "minlstm"} <= {c.name for c in MINIMAL}


# -- strategies ----------------------------------------------------------------------------------------

# Hypothesis draws the structure (shapes, which masking, static options; the first choice of each list
# is what it tries first, so the general case leads) and a seed; the values (data, lengths, masks,
# resets) come from NumPy generators seeded by it, random even in the first example. Without shrinking
# (see props) nothing is lost by drawing values this way.
BATCH = st.sampled_from([3, 1])
STEPS = st.sampled_from([7, 4, 1])
HIDDEN = st.just(3)          # hidden != INPUT, so no transposed weight fits by accident
SEED = st.integers(0, 2 ** 31 - 1)
BOOL = st.sampled_from([True, False])


def masking(kind: str, rng: np.random.Generator, b: int, t: int):
    """``(lengths (B,) or None, mask (B, T) or None)``: random lengths in ``[0, T]``, or any mask."""
    if kind == "lengths":
        return rng.integers(0, t + 1, size=b).astype(np.int32), None
    if kind == "mask":
        return None, rng.random((b, t)) < 0.7
    return None, None


@st.composite
def sequence_cases(draw):
    """``(B, T, H, seed, (kind, lengths, mask))``."""
    b, t, h, seed = draw(BATCH), draw(STEPS), draw(HIDDEN), draw(SEED)
    kind = draw(st.sampled_from(["mask", "lengths", "none"]))
    return b, t, h, seed, (kind,) + masking(kind, np.random.default_rng([seed, 1]), b, t)


def keep_of(b: int, t: int, lengths, mask) -> np.ndarray:
    """The ``(B, T)`` boolean of real steps, written out independently of jaxseq."""
    if lengths is not None:
        return np.arange(t)[None, :] < lengths[:, None]
    if mask is not None:
        return mask
    return np.ones((b, t), bool)


def cell_params(cell, rng: np.random.Generator, hidden: int) -> dict:
    """The cell's own initialisation (seeded from ``rng``), with random non-zero biases."""
    p = cell.init(jax.random.PRNGKey(int(rng.integers(2 ** 31))), INPUT, hidden)
    return {k: (v + rng.normal(scale=0.5, size=v.shape).astype(np.float32)) if k.startswith("b") else v
            for k, v in p.items()}


def random_carry(cell, rng: np.random.Generator, b: int, h: int):
    """A random initial carry (of either sign) with the cell's structure."""
    return jax.tree_util.tree_map(lambda z: jnp.asarray(rng.normal(scale=0.7, size=z.shape).astype(np.float32)),
                                  cell.initial_carry(b, h))


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def assert_trees_close(got, want, rtol=1e-5, atol=1e-6, what=""):
    got, want = leaves(got), leaves(want)
    assert len(got) == len(want), what
    for a, b in zip(got, want):
        assert a.shape == b.shape, (what, a.shape, b.shape)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=what)


def assert_grads_close(got, want, rtol=2e-4, what=""):
    """Gradients agree to ``rtol`` of each array's largest entry (float32 sums in another order)."""
    for a, b in zip(leaves(got), leaves(want)):
        assert a.shape == b.shape, what
        assert np.isfinite(a).all(), what
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max(initial=0.0))),
                                   err_msg=what)


# -- jitted entry points, one compile per (cell, shapes, static options) ----------------------------------

# Compiling dominates these tests (an example runs in milliseconds): LLVM's optimisation level 0 compiles
# the same XLA program about 40% faster. The library's HLO is unchanged; only the machine code is less tuned.
QUICK = {"xla_backend_optimization_level": 0}


def quick_jit(fun, **kwargs):
    return jax.jit(fun, compiler_options=QUICK, **kwargs)


def run_any(cell, p, xs, h0, lengths, mask, resets, options):
    """``cells.run`` or ``cells.run_min`` (``options``: their static keyword options, as a tuple of pairs)."""
    if isinstance(cell, cells.MinCell):
        return cells.run_min(cell, p, xs, h0, lengths=lengths, mask=mask, resets=resets, **dict(options))
    return cells.run(cell, p, xs, h0, lengths=lengths, mask=mask, **dict(options))


_run_any = quick_jit(run_any, static_argnums=(0, 7))
_step = quick_jit(lambda cell, p, carry, x: cell.step(p, carry, x), static_argnums=0)


def python_loop(cell, p, xs, h0, keep, resets=None, reverse=False, jitted=True):
    """The reference: a Python loop over ``cell.step``, masking written out here.

    A step with ``keep`` False leaves the carry and outputs zeros; a reset step (minimal cells)
    starts from a zero state. ``jitted=False`` runs the step eagerly (cheaper to differentiate once
    than compiling its gradient for every shape)."""
    t = xs.shape[1]
    carry, outs = h0, [None] * t
    for s in (range(t - 1, -1, -1) if reverse else range(t)):
        prev = carry
        if resets is not None:
            prev = jax.tree_util.tree_map(lambda a: jnp.where(resets[:, s, None], 0.0, a), prev)
        new, h = _step(cell, p, prev, xs[:, s]) if jitted else cell.step(p, prev, xs[:, s])
        k = keep[:, s, None]
        carry = jax.tree_util.tree_map(lambda a, c: jnp.where(k, a, c), new, carry)
        outs[s] = jnp.where(k, h, 0.0)
    return carry, jnp.stack(outs, axis=1)


# -- 1. lax.scan runs equal a Python loop over cell.step ----------------------------------------------------

@pytest.mark.parametrize("cell", GATED, ids=lambda c: c.name)
@props(2)
@given(case=sequence_cases(), reverse=BOOL, variant=st.sampled_from(VARIANTS), remat=BOOL)
def test_gated_scan_equals_a_python_loop_over_step(cell, case, reverse, variant, remat):
    """Every layout, backward mode and remat, forward and reverse, with lengths, any mask or none:
    the ``lax.scan`` run equals a Python loop over ``cell.step``; masked steps output exact zeros."""
    b, t, h, seed, (_, lengths, mask) = case
    rng = np.random.default_rng(seed)
    p = cell_params(cell, rng, h)
    xs = jnp.asarray(rng.normal(size=(b, t, INPUT)).astype(np.float32))
    h0 = random_carry(cell, rng, b, h)
    layout, backward = variant
    options = (("reverse", reverse), ("layout", layout), ("backward", backward), ("remat", remat))
    carry, hs = _run_any(cell, p, xs, h0, lengths, mask, None, options)
    ref_carry, ref_hs = python_loop(cell, p, xs, h0, keep_of(b, t, lengths, mask), reverse=reverse)
    np.testing.assert_allclose(hs, ref_hs, rtol=1e-5, atol=1e-6)
    assert_trees_close(carry, ref_carry)
    assert np.all(np.asarray(hs)[~keep_of(b, t, lengths, mask)] == 0.0)


def _minimal_case(cell, case):
    """A minGRU/minLSTM example from a drawn case: shapes, lengths or mask, a generator seeded by the
    case, parameters, inputs, an initial state of either sign and random resets."""
    b, t, h, seed, (_, lengths, mask) = case
    rng = np.random.default_rng(seed)
    p = cell_params(cell, rng, h)
    xs = jnp.asarray(2.0 * rng.normal(size=(b, t, INPUT)).astype(np.float32))
    h0 = random_carry(cell, rng, b, h)
    resets = rng.random((b, t)) < 0.3
    return b, t, h, lengths, mask, rng, p, xs, h0, resets


@pytest.mark.parametrize("cell", MINIMAL, ids=lambda c: c.name)
@props(3)
@given(case=sequence_cases(), reverse=BOOL, runner=st.sampled_from(cells.MIN_RUNNERS))
def test_minimal_runs_equal_a_python_loop_over_step(cell, case, reverse, runner):
    """Both runners (associative and sequential scan) equal the Python loop over ``cell.step``, for
    random lengths or masks, resets (also on masked steps, where they are ignored) and initial states."""
    b, t, h, lengths, mask, rng, p, xs, h0, resets = _minimal_case(cell, case)
    carry, hs = _run_any(cell, p, xs, h0, lengths, mask, resets, (("reverse", reverse), ("runner", runner)))
    ref_carry, ref_hs = python_loop(cell, p, xs, h0, keep_of(b, t, lengths, mask), resets, reverse)
    np.testing.assert_allclose(hs, ref_hs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(carry, ref_carry, rtol=1e-5, atol=1e-5)


# -- 2. hand-written backward passes equal autodiff ---------------------------------------------------------

def _tree_dot(tree, cotangent):
    """``sum(tree * cotangent)`` over matching leaves: a loss whose gradient is ``cotangent``."""
    return sum((a * c).sum() for a, c in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(cotangent)))


def _grads_of_run(cell, p, xs, h0, lengths, mask, resets, ct_hs, ct_carry, options):
    def loss(p, xs, h0):
        carry, hs = run_any(cell, p, xs, h0, lengths, mask, resets, options)
        return _tree_dot(hs, ct_hs) + _tree_dot(carry, ct_carry), (carry, hs)

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(p, xs, h0)


_grads = quick_jit(_grads_of_run, static_argnums=(0, 9))


def loop_grads(cell, p, xs, h0, keep, resets, reverse, ct_hs, ct_carry):
    """The reference gradients: JAX's autodiff of the Python loop over ``cell.step`` (run eagerly)."""
    def loss(p, xs, h0):
        carry, hs = python_loop(cell, p, xs, h0, keep, resets, reverse, jitted=False)
        return _tree_dot(hs, ct_hs) + _tree_dot(carry, ct_carry), (carry, hs)

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(p, xs, h0)


def assert_same_run_and_grads(got, want, keep):
    """``got``, ``want``: ``((value, (carry, hs)), grads)``; equal outputs, carries, values and gradients,
    and exactly zero gradient for the inputs of masked steps."""
    (value, (carry, hs)), grads = got
    (ref_value, (ref_carry, ref_hs)), ref_grads = want
    np.testing.assert_allclose(hs, ref_hs, rtol=1e-5, atol=1e-5)
    assert_trees_close(carry, ref_carry, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5)
    assert_grads_close(grads, ref_grads)
    assert np.all(np.asarray(grads[1])[~keep] == 0.0)


def _cotangents(cell, rng, b, t, h):
    ct_hs = jnp.asarray(rng.normal(size=(b, t, h)).astype(np.float32))
    return ct_hs, random_carry(cell, rng, b, h)


@pytest.mark.parametrize("cell", GATED, ids=lambda c: c.name)
@props(2)
@given(case=sequence_cases(), reverse=BOOL, layout=st.sampled_from(cells.LAYOUTS), remat=BOOL)
def test_gated_custom_backward_equals_autodiff(cell, case, reverse, layout, remat):
    """Gradients of a random linear functional of (final carry, outputs) w.r.t. params, inputs and the
    initial carry: the hand-written BPTT equals JAX's autodiff of the Python loop over ``cell.step``;
    inputs of masked steps get exactly zero gradient."""
    b, t, h, seed, (_, lengths, mask) = case
    rng = np.random.default_rng(seed)
    p = cell_params(cell, rng, h)
    xs = jnp.asarray(rng.normal(size=(b, t, INPUT)).astype(np.float32))
    h0 = random_carry(cell, rng, b, h)
    ct_hs, ct_carry = _cotangents(cell, rng, b, t, h)
    keep = keep_of(b, t, lengths, mask)
    options = (("reverse", reverse), ("layout", layout), ("remat", remat), ("backward", "custom"))
    assert_same_run_and_grads(_grads(cell, p, xs, h0, lengths, mask, None, ct_hs, ct_carry, options),
                              loop_grads(cell, p, xs, h0, keep, None, reverse, ct_hs, ct_carry), keep)


@pytest.mark.parametrize("cell", MINIMAL, ids=lambda c: c.name)
@props(2)
@given(case=sequence_cases(), reverse=BOOL)
def test_minimal_parallel_backward_equals_autodiff(cell, case, reverse):
    """The associative scan's hand-written backward equals JAX's autodiff of the Python loop over
    ``cell.step``, for random lengths or masks, resets and initial states of either sign."""
    b, t, h, lengths, mask, rng, p, xs, h0, resets = _minimal_case(cell, case)
    ct_hs, ct_carry = _cotangents(cell, rng, b, t, h)
    keep = keep_of(b, t, lengths, mask)
    options = (("reverse", reverse), ("runner", "parallel"))
    assert_same_run_and_grads(_grads(cell, p, xs, h0, lengths, mask, resets, ct_hs, ct_carry, options),
                              loop_grads(cell, p, xs, h0, keep, resets, reverse, ct_hs, ct_carry), keep)


# -- 3. padding never changes a result when lengths are given -----------------------------------------------

ALL_CELLS = GATED + MINIMAL


def _static_options(cell, draw):
    if isinstance(cell, cells.MinCell):
        return (("runner", draw(st.sampled_from(cells.MIN_RUNNERS))),)
    layout, backward = draw(st.sampled_from(VARIANTS))
    return (("layout", layout), ("backward", backward), ("remat", draw(BOOL)))


@props(5)
@given(data=st.data(), cell=st.sampled_from(ALL_CELLS), b=BATCH, t=st.sampled_from([4, 1]), h=HIDDEN,
       seed=SEED, reverse=BOOL, garbage=st.sampled_from([np.nan, 1e4, -np.inf, -1e4]))
def test_padding_never_changes_a_result(data, cell, b, t, h, seed, reverse, garbage):
    """Three padded steps of garbage (huge, NaN or inf inputs) after each sequence's length: the final
    carry and the real outputs are those of the unpadded run, the padded outputs exactly zero, in both
    directions (reverse starts at each sequence's true last step)."""
    options = _static_options(cell, data.draw) + (("reverse", reverse),)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, t + 1, size=b).astype(np.int32)
    p = cell_params(cell, rng, h)
    xs = rng.normal(size=(b, t, INPUT)).astype(np.float32)
    h0 = random_carry(cell, rng, b, h)
    real = np.arange(t)[None, :] < lengths[:, None]
    xs_garbage = np.where(real[..., None], xs, np.float32(garbage)).astype(np.float32)
    padded = np.concatenate([xs_garbage, np.full((b, 3, INPUT), garbage, np.float32)], axis=1)
    carry, hs = _run_any(cell, p, jnp.asarray(xs), h0, lengths, None, None, options)
    carry_p, hs_p = _run_any(cell, p, jnp.asarray(padded), h0, lengths, None, None, options)
    assert_trees_close(carry_p, carry, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hs_p[:, :t], hs, rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(hs_p)[:, t:] == 0.0) and np.all(np.asarray(hs)[~real] == 0.0)


# -- 4. vmap over examples equals the batched call ----------------------------------------------------------

@props(4)
@given(data=st.data(), cell=st.sampled_from(ALL_CELLS), t=STEPS, h=HIDDEN, seed=SEED, reverse=BOOL)
def test_vmap_over_examples_equals_the_batched_call(data, cell, t, h, seed, reverse):
    """``vmap`` of the one-example run over 3 examples equals one run over the batch of 3."""
    b = 3
    options = _static_options(cell, data.draw) + (("reverse", reverse),)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, t + 1, size=b).astype(np.int32)
    p = cell_params(cell, rng, h)
    xs = jnp.asarray(rng.normal(size=(b, t, INPUT)).astype(np.float32))
    h0 = random_carry(cell, rng, b, h)

    def one(x, length, carry):
        carry, hs = run_any(cell, p, x[None], jax.tree_util.tree_map(lambda a: a[None], carry), length[None],
                             None, None, options)
        return jax.tree_util.tree_map(lambda a: a[0], carry), hs[0]

    carry_v, hs_v = quick_jit(jax.vmap(one))(xs, jnp.asarray(lengths), h0)
    carry, hs = _run_any(cell, p, xs, h0, lengths, None, None, options)
    np.testing.assert_allclose(hs_v, hs, rtol=1e-5, atol=1e-6)
    assert_trees_close(carry_v, carry)


# -- 5. masked softmax ---------------------------------------------------------------------------------------

def attention_masks(rng: np.random.Generator, lens_kind: str, mask_kind: str, b: int, q: int, k: int):
    """``(valid_lens or None, mask or None, keep)``: lengths per row (B,) or per query (B, Q), a boolean
    mask (Q, K) or (B, 2, Q, K), and the full ``(B, 2, Q, K)`` keep-mask they mean, written out here."""
    keep = np.ones((b, 2, q, k), bool)
    valid_lens = mask = None
    if lens_kind == "row":
        valid_lens = rng.integers(0, k + 1, size=b).astype(np.int32)
        keep &= np.arange(k)[None, None, None, :] < valid_lens[:, None, None, None]
    elif lens_kind == "query":
        valid_lens = rng.integers(0, k + 1, size=(b, q)).astype(np.int32)
        keep &= np.arange(k)[None, None, None, :] < valid_lens[:, None, :, None]
    if mask_kind != "none":
        mask = rng.random((q, k) if mask_kind == "(Q, K)" else (b, 2, q, k)) < 0.7
        keep &= mask
    return valid_lens, mask, keep


@st.composite
def attention_cases(draw):
    """``(B, Q, K, valid_lens, mask, keep, seed)``; 2 heads."""
    b, q, k, seed = draw(BATCH), draw(st.sampled_from([4, 1])), draw(st.sampled_from([5, 1])), draw(SEED)
    lens_kind = draw(st.sampled_from(["query", "row", "none"]))
    mask_kind = draw(st.sampled_from(["(Q, K)", "(B, 2, Q, K)", "none"]))
    return (b, q, k) + attention_masks(np.random.default_rng([seed, 1]), lens_kind, mask_kind, b, q, k) + (seed,)


def numpy_masked_softmax(scores: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per row, softmax over the kept keys in float64; zeros elsewhere and on rows with none kept."""
    s = np.where(keep, scores.astype(np.float64), -np.inf)
    top = np.max(s, axis=-1, keepdims=True)
    e = np.where(keep, np.exp(s - np.where(np.isfinite(top), top, 0.0)), 0.0)
    total = e.sum(-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


_softmax = quick_jit(A.masked_softmax)
_softmax_grad = quick_jit(jax.grad(lambda s, lens, mask, c: (A.masked_softmax(s, lens, mask) * c).sum()))


@props(6)
@given(case=attention_cases(), scale=st.sampled_from([30.0, 1.0, 1e4]))
def test_masked_softmax_rows_sum_to_one_and_padding_gets_exact_zeros(case, scale):
    """Over random shapes, lengths (per row or per query) and masks: weights are finite, exactly 0 on
    masked keys and on rows with no valid key, rows with a valid key sum to 1, the float64 softmax over
    the valid keys; and the gradient never reaches a masked score."""
    b, q, k, valid_lens, mask, keep, seed = case
    rng = np.random.default_rng(seed)
    scores = (scale * rng.normal(size=(b, 2, q, k))).astype(np.float32)
    w = np.asarray(_softmax(jnp.asarray(scores), valid_lens, mask))
    assert np.isfinite(w).all()
    assert np.all(w[~keep] == 0.0)
    rows = keep.any(-1)
    np.testing.assert_allclose(w.sum(-1)[rows], 1.0, rtol=2e-6)
    assert np.all(w[~rows] == 0.0)
    np.testing.assert_allclose(w, numpy_masked_softmax(scores, keep), rtol=1e-5, atol=1e-6)
    c = rng.normal(size=scores.shape).astype(np.float32)
    g = np.asarray(_softmax_grad(jnp.asarray(scores), valid_lens, mask, jnp.asarray(c)))
    assert np.isfinite(g).all() and np.all(g[~keep] == 0.0)


# -- 6. dot_product_attention's hand-written backward equals autodiff of a plain reference -------------------

D, DV = 4, 3


def plain_attention(q, k, v, keep, drop):
    """Scaled dot-product attention in plain jnp from the formula (differentiated by JAX)."""
    s = jnp.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1])
    w = jax.nn.softmax(jnp.where(keep, s, -1e30), axis=-1) * keep.any(-1, keepdims=True).astype(s.dtype)
    return jnp.einsum("...qk,...kd->...qd", w * drop, v), w


def _attention_grads(q, k, v, valid_lens, mask, keep, ct_out, ct_w, key, rate, use_w, plain):
    drop = A.dropout_multiplier(key, rate, keep.shape) if rate else jnp.ones(keep.shape, jnp.float32)

    def loss(q, k, v):
        if plain:
            out, w = plain_attention(q, k, v, keep, drop)
        else:
            out, w = A.dot_product_attention(q, k, v, valid_lens, mask, dropout_rate=rate,
                                             dropout_rng=key if rate else None)
        return (out * ct_out).sum() + ((w * ct_w).sum() if use_w else 0.0), (out, w)

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)


_attention_grads_jit = quick_jit(_attention_grads, static_argnums=(9, 10, 11))


@props(4)
@given(case=attention_cases(), rate=st.sampled_from([0.4, 0.0]), use_w=BOOL)
def test_attention_backward_equals_autodiff_of_a_plain_reference(case, rate, use_w):
    """Random shapes, lengths, masks, dropout, with or without a cotangent on the returned weights:
    ``dot_product_attention`` (hand-written backward) equals JAX's gradient of the formula, and its
    forward pass equals the formula."""
    b, q, k, valid_lens, mask, keep, seed = case
    rng = np.random.default_rng(seed)
    qs, ks = (jnp.asarray(rng.normal(size=(b, 2, n, D)).astype(np.float32)) for n in (q, k))
    vs = jnp.asarray(rng.normal(size=(b, 2, k, DV)).astype(np.float32))
    ct_out = jnp.asarray(rng.normal(size=(b, 2, q, DV)).astype(np.float32))
    ct_w = jnp.asarray(rng.normal(size=(b, 2, q, k)).astype(np.float32))
    key = jax.random.key(int(rng.integers(2 ** 31)), impl="rbg")    # threefry would compile 10x longer
    args = (qs, ks, vs, valid_lens, mask, keep, ct_out, ct_w, key, rate, use_w)
    (value, (out, w)), grads = _attention_grads_jit(*args, False)
    (ref_value, (ref_out, ref_w)), ref_grads = _attention_grads_jit(*args, True)
    np.testing.assert_allclose(w, ref_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5)
    assert_grads_close(grads, ref_grads, rtol=1e-5)


# -- 7. resume at a random step equals the uninterrupted run ------------------------------------------------

RESUME_STEPS = 8
_UNINTERRUPTED: list = []


def _resume_setup():
    """A tiny GRU LM with dropout, a warmup-then-cosine Adam schedule spanning ``RESUME_STEPS``, its
    batches (sequential, so a recurrent carry is threaded; 3 batches an epoch, so a run crosses epochs)
    and a fresh state: the same shapes in every call, so the train step hits the compile cache."""
    mesh = parallel.make_mesh(1)
    ids = np.random.default_rng(0).integers(0, 6, size=50).astype(np.int32)
    model = build_lm("gru", 6, hidden=8, embedding=4, dropout=0.2)
    tx = make_optimizer(OptimConfig(optimizer="adam", lr=1e-2, schedule="cosine", warmup=3), RESUME_STEPS)
    batches = LMBatches(ids, seq_len=6, batch_size=2, sampling="sequential", seed=3)
    assert batches.batches_per_epoch == 3
    state = train.create_state(model, tx, batches.batch(0, 0), 3, mesh, model.initial_carry(2))
    config = train.TrainConfig(steps=RESUME_STEPS, eval_every=0, log_every=2, checkpoint_every=0, progress=False)
    return model, tx, batches, state, mesh, config


def _fit(model, tx, batches, state, mesh, config, total, checkpointer=None, manifest=None):
    return train.fit(model, state, tx, batches, total_steps=total, config=config, mesh=mesh,
                     checkpointer=checkpointer, manifest=manifest).state


@props(2)
@given(stop=st.integers(1, RESUME_STEPS - 1))
def test_resume_at_a_random_step_equals_the_uninterrupted_run(stop):
    """Train ``stop`` steps and checkpoint (Orbax), restore into a fresh state and a fresh batch
    iterator, train on to ``RESUME_STEPS``: step, parameters, optimizer state and recurrent carry are
    bit-for-bit those of one uninterrupted run (dropout keys, schedule and data order included).
    The recurrent carry and epoch boundaries cross the stop too; one compiled train step serves every
    run (the uninterrupted one is computed once)."""
    if not _UNINTERRUPTED:
        _UNINTERRUPTED.append(jax.device_get(_fit(*_resume_setup(), RESUME_STEPS)))
    want = _UNINTERRUPTED[0]
    with tempfile.TemporaryDirectory() as tmp:
        model, tx, batches, state, mesh, config = _resume_setup()
        expected = Manifest(task="lm", model={}, vocab={}, params=tree_signature(state.params))
        ckpt = Checkpointer(f"{tmp}/ckpt")
        try:
            _fit(model, tx, batches, state, mesh, config, stop, ckpt, expected.to_dict())
        finally:
            ckpt.close()
        model, tx, batches, fresh, mesh, config = _resume_setup()      # a new process, as it were
        ckpt = Checkpointer(f"{tmp}/ckpt")
        try:
            restored, data_state, step = ckpt.restore(train.abstract_state(fresh), expected)
        finally:
            ckpt.close()
        assert step == stop and int(restored.step) == stop
        at_stop = jax.device_get(restored.params)
        batches.set_state(data_state)
        got = jax.device_get(_fit(model, tx, batches, restored, mesh, config, RESUME_STEPS))
    assert int(got.step) == RESUME_STEPS
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(leaves(got), leaves(want)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(at_stop), leaves(want.params)))   # it trained on
