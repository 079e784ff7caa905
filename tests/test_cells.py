"""Recurrent cells against a float64 NumPy loop, Flax's GRUCell, and each other."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxseq import cells
from jaxseq.errors import ConfigError
from jaxseq.models.recurrent import StackedRecurrent


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_step(name, p, carry, x):
    """The cell equations written out in float64 NumPy, independently of jaxseq."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    if name in ("rnn", "rnn-relu"):
        pre = x @ p["W_xh"] + carry @ p["W_hh"] + p["b_h"]
        h = np.tanh(pre) if name == "rnn" else np.maximum(pre, 0.0)
        return h, h
    if name == "gru":
        h = carry
        r = _sigmoid(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
        z = _sigmoid(x @ p["W_xz"] + h @ p["W_hz"] + p["b_z"])
        h_tilde = np.tanh(x @ p["W_xh"] + r * (h @ p["W_hh"] + p["b_hh"]) + p["b_h"])
        h = z * h + (1 - z) * h_tilde
        return h, h
    if name == "gru-before":        # the notes' form: the reset gate scales H_{t-1} before the product
        h = carry
        r = _sigmoid(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
        z = _sigmoid(x @ p["W_xz"] + h @ p["W_hz"] + p["b_z"])
        h_tilde = np.tanh(x @ p["W_xh"] + (r * h) @ p["W_hh"] + p["b_h"])
        h = z * h + (1 - z) * h_tilde
        return h, h
    h, c = carry
    i = _sigmoid(x @ p["W_xi"] + h @ p["W_hi"] + p["b_i"])
    f = _sigmoid(x @ p["W_xf"] + h @ p["W_hf"] + p["b_f"])
    o = _sigmoid(x @ p["W_xo"] + h @ p["W_ho"] + p["b_o"])
    c_tilde = np.tanh(x @ p["W_xc"] + h @ p["W_hc"] + p["b_c"])
    c = f * c + i * c_tilde
    h = o * np.tanh(c)
    return (h, c), h


def numpy_run(name, p, xs, carry, lengths=None, reverse=False):
    xs = np.asarray(xs, np.float64)
    B, T, _ = xs.shape
    outs = np.zeros((B, T, np.asarray(p[[k for k in p if k.startswith("W_h")][0]]).shape[0]))
    order = range(T - 1, -1, -1) if reverse else range(T)
    for t in order:
        new, h = numpy_step(name, p, carry, xs[:, t])
        if lengths is not None:
            keep = (t < np.asarray(lengths))[:, None]
            new = tuple(np.where(keep, a, b) for a, b in zip(new, carry)) if isinstance(new, tuple) \
                else np.where(keep, new, carry)
            h = np.where(keep, h, 0.0)
        carry = new
        outs[:, t] = h
    return carry, outs


def _random_params(cell, key, i=5, h=6):
    """Parameters with non-zero biases, so every bias is exercised."""
    p = cell.init(key, i, h)
    keys = jax.random.split(jax.random.fold_in(key, 7), len(p))
    return {k: v + (0.3 * jax.random.normal(kk, v.shape, v.dtype) if k.startswith("b") else 0.0)
            for (k, v), kk in zip(sorted(p.items()), keys)}


CELL_NAMES = ["rnn", "rnn-relu", "gru", "gru-before", "lstm"]


def _cell(name):
    """The cell a test case names ("rnn-relu": the plain RNN with phi = relu; "gru-before": the
    notes' GRU, reset gate before the product)."""
    if name == "gru-before":
        return cells.get_cell("gru", reset="before")
    return cells.get_cell("rnn", "relu") if name == "rnn-relu" else cells.get_cell(name)
VARIANTS = [(layout, backward) for layout in cells.LAYOUTS for backward in cells.BACKWARDS]


@pytest.mark.parametrize("name", CELL_NAMES)
def test_step_matches_numpy(name):
    cell = _cell(name)
    p = _random_params(cell, jax.random.PRNGKey(0))
    x = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    carry = cell.initial_carry(3, 6)
    carry = jax.tree_util.tree_map(lambda c: c + 0.5, carry)
    new, h = cell.step(p, carry, x)
    ref_new, ref_h = numpy_step(name, p, jax.tree_util.tree_map(np.asarray, carry), x)
    np.testing.assert_allclose(h, ref_h, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(ref_new)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CELL_NAMES)
@pytest.mark.parametrize("reverse", [False, True])
def test_run_matches_numpy_with_lengths(name, reverse):
    """The default runner; the other variants are held equal to it below."""
    cell = _cell(name)
    p = _random_params(cell, jax.random.PRNGKey(1))
    xs = np.random.default_rng(1).normal(size=(4, 7, 5)).astype(np.float32)
    lengths = np.array([7, 3, 1, 5])
    carry, hs = jax.jit(lambda p, xs: cells.run(cell, p, xs, lengths=lengths, reverse=reverse))(p, xs)
    ref_carry, ref_hs = numpy_run(name, p, xs, jax.tree_util.tree_map(np.asarray, cell.initial_carry(4, 6)),
                                  lengths, reverse)
    np.testing.assert_allclose(hs, ref_hs, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(ref_carry)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["rnn", "gru", "gru-before", "lstm"])
@pytest.mark.parametrize("layout", cells.LAYOUTS)
def test_custom_bptt_gradients_check_in_float64(name, layout):
    """Numerical vs analytic gradients (jax.test_util.check_grads) of the hand-written BPTT."""
    backward = "custom"
    cell = _cell(name)
    with jax.enable_x64(True):
        p = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                   _random_params(cell, jax.random.PRNGKey(2), i=3, h=4))
        xs = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 3)))
        h0 = jax.tree_util.tree_map(lambda c: c + 0.1, cell.initial_carry(2, 4, jnp.float64))
        lengths = jnp.array([5, 3])

        def f(p, xs, h0):
            carry, hs = cells.run(cell, p, xs, h0, lengths=lengths, layout=layout, backward=backward)
            return jnp.sum(hs * jnp.cos(hs)) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree_util.tree_leaves(carry))

        check_grads(f, (p, xs, h0), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_all_variants_agree_in_value_and_gradient(name):
    """Both layouts x both backward passes x remat on/off: one function, one gradient."""
    cell = _cell(name)
    p = _random_params(cell, jax.random.PRNGKey(3))
    xs = jax.random.normal(jax.random.PRNGKey(4), (3, 9, 5))
    lengths = jnp.array([9, 4, 6])

    def loss(p, xs, layout, backward):
        carry, hs = cells.run(cell, p, xs, lengths=lengths, layout=layout, backward=backward)
        return (hs ** 2).sum() + sum((c ** 2).sum() for c in jax.tree_util.tree_leaves(carry))

    def loss_remat(p, xs, layout, backward):
        carry, hs = cells.run(cell, p, xs, lengths=lengths, layout=layout, backward=backward, remat=True)
        return (hs ** 2).sum() + sum((c ** 2).sum() for c in jax.tree_util.tree_leaves(carry))

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=(2, 3))
    grad_remat = jax.jit(jax.value_and_grad(loss_remat, argnums=(0, 1)), static_argnums=(2, 3))
    results = {v: grad(p, xs, *v) for v in VARIANTS}
    results.update({v + ("remat",): grad_remat(p, xs, *v) for v in VARIANTS})
    ref_value, ref_grads = results[("step", "autodiff")]
    for value, grads in results.values():
        np.testing.assert_allclose(value, ref_value, rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_projected_inputs_equal_one_hot_inputs():
    """Looking up rows of W_x equals multiplying a one-hot input by it (values and gradients)."""
    cell = cells.GRU
    p = cell.init(jax.random.PRNGKey(5), 11, 6)
    tokens = jax.random.randint(jax.random.PRNGKey(6), (2, 8), 0, 11)

    def via_one_hot(p):
        return cells.run(cell, p, jax.nn.one_hot(tokens, 11))[1].sum()

    def via_rows(p):
        projected = {g: cells.add_bias(p[f"W_x{g}"][tokens], p[f"b_{g}"]) for g in cell.gates}
        return cells.run(cell, p, None, projected=projected)[1].sum()

    v1, g1 = jax.value_and_grad(via_one_hot)(p)
    v2, g2 = jax.value_and_grad(via_rows)(p)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for k in p:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-4, atol=1e-6)


def test_gru_equals_flax_gru_cell_with_mapped_weights():
    """jaxseq's GRU is Flax's nn.GRUCell given the same weights."""
    H, I = 6, 4
    flax_cell = nn.GRUCell(features=H)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, I))
    h0 = jax.random.normal(jax.random.PRNGKey(1), (3, H))
    fp = flax_cell.init(jax.random.PRNGKey(2), h0, x)["params"]
    fp = jax.tree_util.tree_map(lambda a: a + 0.1, fp)   # non-zero biases
    ours = {"W_xr": fp["ir"]["kernel"], "b_r": fp["ir"]["bias"], "W_hr": fp["hr"]["kernel"],
            "W_xz": fp["iz"]["kernel"], "b_z": fp["iz"]["bias"], "W_hz": fp["hz"]["kernel"],
            "W_xh": fp["in"]["kernel"], "b_h": fp["in"]["bias"], "W_hh": fp["hn"]["kernel"],
            "b_hh": fp["hn"]["bias"]}
    flax_h, _ = flax_cell.apply({"params": fp}, h0, x)
    our_h, _ = cells.GRU.step(ours, h0, x)
    np.testing.assert_allclose(our_h, flax_h, rtol=1e-5, atol=1e-6)
    # and over a sequence, nn.RNN(GRUCell) against cells.run
    xs = jax.random.normal(jax.random.PRNGKey(3), (3, 7, I))
    flax_hs = nn.RNN(flax_cell).apply({"params": {"cell": fp}}, xs, initial_carry=h0)
    _, our_hs = cells.run(cells.GRU, ours, xs, h0)
    np.testing.assert_allclose(our_hs, flax_hs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gru", "gru-before", "lstm"])
def test_padding_never_changes_a_sequence(name):
    """Appending padding (masked steps) leaves outputs and the final state unchanged."""
    cell = _cell(name)
    p = _random_params(cell, jax.random.PRNGKey(8))
    xs = jax.random.normal(jax.random.PRNGKey(9), (2, 5, 5))
    carry, hs = cells.run(cell, p, xs)
    junk = 100.0 * jax.random.normal(jax.random.PRNGKey(10), (2, 4, 5))
    padded = jnp.concatenate([xs, junk], axis=1)
    carry_p, hs_p = cells.run(cell, p, padded, lengths=jnp.array([5, 5]))
    np.testing.assert_allclose(hs_p[:, :5], hs, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(hs_p[:, 5:], 0.0)
    for a, b in zip(jax.tree_util.tree_leaves(carry_p), jax.tree_util.tree_leaves(carry)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # the reverse direction starts at each sequence's true last step
    carry_r, hs_r = cells.run(cell, p, xs, reverse=True)
    carry_rp, hs_rp = cells.run(cell, p, padded, lengths=jnp.array([5, 5]), reverse=True)
    np.testing.assert_allclose(hs_rp[:, :5], hs_r, rtol=1e-5, atol=1e-6)


def test_final_state_is_the_state_at_each_true_length():
    cell = cells.GRU
    p = _random_params(cell, jax.random.PRNGKey(11))
    xs = jax.random.normal(jax.random.PRNGKey(12), (3, 6, 5))
    lengths = jnp.array([6, 2, 4])
    carry, _ = cells.run(cell, p, xs, lengths=lengths)
    for b, n in enumerate([6, 2, 4]):
        _, hs = cells.run(cell, p, xs[b:b + 1, :n])
        np.testing.assert_allclose(carry[b], hs[0, -1], rtol=1e-5, atol=1e-6)


def test_bidirectional_is_both_directions_concatenated():
    module = StackedRecurrent(cell="gru", hidden=4, layers=1, bidirectional=True)
    xs = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 3))
    mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2], bool)
    variables = module.init(jax.random.PRNGKey(1), xs, mask=mask)
    (carry,), hs = module.apply(variables, xs, mask=mask)
    fwd = variables["params"]["layer0_fwd"]["cell"]
    bwd = variables["params"]["layer0_bwd"]["cell"]
    c_f, h_f = cells.run(cells.GRU, fwd, xs, mask=mask)
    c_b, h_b = cells.run(cells.GRU, bwd, xs, mask=mask, reverse=True)
    np.testing.assert_allclose(hs, jnp.concatenate([h_f, h_b], -1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(carry[0], c_f, rtol=1e-6)
    np.testing.assert_allclose(carry[1], c_b, rtol=1e-6)


def test_stacked_layers_feed_each_other():
    module = StackedRecurrent(cell="lstm", hidden=5, layers=2)
    xs = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 3))
    variables = module.init(jax.random.PRNGKey(1), xs)
    carries, hs = module.apply(variables, xs)
    p0 = variables["params"]["layer0"]["cell"]
    p1 = variables["params"]["layer1"]["cell"]
    c0, h0 = cells.run(cells.LSTM, p0, xs)
    c1, h1 = cells.run(cells.LSTM, p1, h0)
    np.testing.assert_allclose(hs, h1, rtol=1e-6, atol=1e-6)
    assert len(carries) == 2


def test_bad_options_are_config_errors():
    p = cells.GRU.init(jax.random.PRNGKey(0), 2, 3)
    xs = jnp.zeros((1, 2, 2))
    with pytest.raises(ConfigError, match="layout"):
        cells.run(cells.GRU, p, xs, layout="diagonal")
    with pytest.raises(ConfigError, match="backward"):
        cells.run(cells.GRU, p, xs, backward="magic")
    with pytest.raises(ConfigError, match="unknown cell"):
        cells.get_cell("transformer")
    with pytest.raises(ConfigError, match="GRU reset"):
        cells.get_cell("gru", reset="sometimes")
