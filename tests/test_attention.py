"""Attention: masked softmax, both scorings and multi-head attention against NumPy loops; causality; the cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import attention as A
from jaxseq import attention_layers as L


def _rand(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def _np_softmax_rows(scores, keep):
    """Reference: per row, softmax over the kept keys, zeros elsewhere (and for empty rows)."""
    out = np.zeros_like(scores, dtype=np.float64)
    for idx in np.ndindex(scores.shape[:-1]):
        k = keep[idx]
        if k.any():
            e = np.exp(scores[idx][k].astype(np.float64) - scores[idx][k].max())
            out[idx][k] = e / e.sum()
    return out


def test_masked_softmax_valid_lens_and_masks():
    rng = np.random.default_rng(0)
    s = _rand(rng, 3, 2, 4, 5) * 3
    # (B,) lengths, shared by heads and queries; one row fully masked
    lens = np.array([2, 0, 5])
    w = np.asarray(A.masked_softmax(jnp.asarray(s), jnp.asarray(lens)))
    keep = np.broadcast_to(np.arange(5)[None, None, None, :] < lens[:, None, None, None], s.shape)
    np.testing.assert_allclose(w, _np_softmax_rows(s, keep), atol=1e-6)
    assert np.all(w[~keep] == 0.0) and np.all(np.isfinite(w))
    np.testing.assert_allclose(w[0].sum(-1), 1.0, rtol=1e-6)
    assert np.all(w[1] == 0.0)
    # (B, Q) lengths: one per query
    lens_q = np.array([[1, 2, 3, 0], [5, 4, 3, 2], [1, 1, 1, 1]])
    w = np.asarray(A.masked_softmax(jnp.asarray(s), jnp.asarray(lens_q)))
    keep = np.broadcast_to(np.arange(5)[None, None, None, :] < lens_q[:, None, :, None], s.shape)
    np.testing.assert_allclose(w, _np_softmax_rows(s, keep), atol=1e-6)
    # a boolean mask broadcast from (Q, K), combined with lengths
    causal = np.tril(np.ones((4, 5), bool))
    w = np.asarray(A.masked_softmax(jnp.asarray(s), jnp.asarray(lens), mask=jnp.asarray(causal)))
    keep = np.broadcast_to(causal, s.shape) & (np.arange(5) < lens[:, None, None, None])
    np.testing.assert_allclose(w, _np_softmax_rows(s, keep), atol=1e-6)
    # no mask: a plain softmax; huge scores do not overflow
    w = np.asarray(A.masked_softmax(jnp.asarray(s * 1e4)))
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)


def test_masked_softmax_gradient_is_finite_on_fully_masked_rows():
    s = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)) * 1e3
    g = jax.grad(lambda x: (A.masked_softmax(x, jnp.array([0, 2])) ** 2).sum())(s)
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[0] == 0.0) and np.all(np.asarray(g)[1, :, 2:] == 0.0)


def test_scores_against_loops():
    rng = np.random.default_rng(2)
    q, k = _rand(rng, 2, 3, 6), _rand(rng, 2, 4, 6)
    s = np.asarray(A.dot_product_scores(jnp.asarray(q), jnp.asarray(k)))
    ref = np.array([[[q[b, i] @ k[b, j] / np.sqrt(6) for j in range(4)] for i in range(3)] for b in range(2)])
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-6)
    # the notes' dot score s^T h: no 1/sqrt(d)
    s = np.asarray(A.dot_product_scores(jnp.asarray(q), jnp.asarray(k), scale=1.0))
    np.testing.assert_allclose(s, ref * np.sqrt(6), rtol=1e-5, atol=1e-6)
    params = A.additive_init(jax.random.PRNGKey(0), 6, 5, 7)
    assert {n: p.shape for n, p in params.items()} == {"W_q": (6, 7), "W_k": (5, 7), "w_v": (7,)}
    k2 = _rand(rng, 2, 4, 5)
    s = np.asarray(A.additive_scores(params, jnp.asarray(q), jnp.asarray(k2)))
    P = {n: np.asarray(p, np.float64) for n, p in params.items()}
    ref = np.array([[[P["w_v"] @ np.tanh(q[b, i] @ P["W_q"] + k2[b, j] @ P["W_k"]) for j in range(4)]
                     for i in range(3)] for b in range(2)])
    np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-5)


def test_dot_product_attention_and_its_backward_pass():
    """Forward against NumPy; the hand-written backward against autodiff of the composed pure functions."""
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(_rand(rng, *s)) for s in [(2, 3, 4, 8), (2, 3, 5, 8), (2, 3, 5, 6)])
    lens = jnp.array([3, 0])
    out, w = A.dot_product_attention(q, k, v, lens)
    ref_w = _np_softmax_rows(np.asarray(A.dot_product_scores(q, k)),
                             np.broadcast_to(np.arange(5) < np.array([3, 0])[:, None, None, None], (2, 3, 4, 5)))
    np.testing.assert_allclose(w, ref_w, atol=1e-6)
    np.testing.assert_allclose(out, np.einsum("bhqk,bhkd->bhqd", ref_w, np.asarray(v)), atol=1e-5)
    assert np.all(np.asarray(out)[1] == 0.0)      # no valid key: zero output, no NaN
    key = jax.random.PRNGKey(7)

    def composed(q, k, v, rate):
        w = A.masked_softmax(A.dot_product_scores(q, k), lens)
        d = A.dropout_multiplier(key, rate, w.shape) if rate else 1.0
        return A.attention_pool(w * d, v), w

    for rate in (0.0, 0.5):
        for use_w in (False, True):
            def loss(fn):
                def f(q, k, v):
                    o, w = fn(q, k, v)
                    return (o * o).sum() + ((w * jnp.cos(3.0 * w)).sum() if use_w else 0.0)
                return f
            fast = loss(lambda q, k, v: A.dot_product_attention(q, k, v, lens, dropout_rate=rate, dropout_rng=key))
            slow = loss(lambda q, k, v: composed(q, k, v, rate))
            for a, b in zip(jax.grad(fast, (0, 1, 2))(q, k, v), jax.grad(slow, (0, 1, 2))(q, k, v)):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_causal_attention_in_blocks_equals_one_masked_product():
    rng = np.random.default_rng(8)
    q, k, v = (jnp.asarray(_rand(rng, 2, 3, 7, 4)) for _ in range(3))
    for lens in (None, jnp.array([5, 7]), jnp.array([[1, 2, 3, 4, 5, 6, 7], [7, 7, 7, 3, 3, 3, 0]])):
        ref = A.dot_product_attention(q, k, v, lens, A.causal_mask(7))
        got = A.causal_attention(q, k, v, lens, block=3)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        loss = lambda f: lambda q, k, v: (f(q, k, v)[0] ** 2).sum()
        grads = jax.grad(loss(lambda q, k, v: A.causal_attention(q, k, v, lens, block=3)), (0, 1, 2))(q, k, v)
        refs = jax.grad(loss(lambda q, k, v: A.dot_product_attention(q, k, v, lens, A.causal_mask(7))),
                        (0, 1, 2))(q, k, v)
        for a, b in zip(grads, refs):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_attention_modules():
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(_rand(rng, *s)) for s in [(2, 3, 4), (2, 5, 6), (2, 5, 3)])
    lens = jnp.array([2, 5])
    add = L.AdditiveAttention(hidden=8, dropout=0.5)
    variables = add.init(jax.random.PRNGKey(0), q, k, v, lens)
    out, w = add.apply(variables, q, k, v, lens)
    params = variables["params"]
    ref_w = A.masked_softmax(A.additive_scores(params, q, k), lens)
    np.testing.assert_allclose(w, ref_w, atol=1e-6)
    np.testing.assert_allclose(out, A.attention_pool(ref_w, v), atol=1e-6)
    dropped, w_train = add.apply(variables, q, k, v, lens, train=True, rngs={"dropout": jax.random.PRNGKey(1)})
    np.testing.assert_allclose(w_train, w, atol=1e-6)              # weights are reported before dropout
    assert not np.allclose(dropped, out)
    dot = L.DotProductAttention(dropout=0.5)
    kq = jnp.asarray(_rand(rng, 2, 5, 4))
    out, w = dot.apply({}, q, kq, v, lens)
    ref_out, ref_w = A.dot_product_attention(q, kq, v, lens)
    np.testing.assert_allclose(out, ref_out, atol=1e-6)
    np.testing.assert_allclose(w, ref_w, atol=1e-6)


def _np_mha(p, xq, xkv, heads, keep):
    """Naive multi-head attention: per batch row, per head, per query, in float64."""
    P = {n: {m: np.asarray(a, np.float64) for m, a in d.items()} for n, d in p.items()}
    proj = lambda x, n: x @ P[n]["kernel"] + P[n]["bias"]
    Q, K, V = proj(xq, "query"), proj(xkv, "key"), proj(xkv, "value")
    b, tq, d = Q.shape
    dh = d // heads
    out = np.zeros((b, tq, d))
    for bi in range(b):
        for h in range(heads):
            sl = slice(h * dh, (h + 1) * dh)
            for i in range(tq):
                ks = [j for j in range(K.shape[1]) if keep(bi, i, j)]
                if not ks:
                    continue
                s = np.array([Q[bi, i, sl] @ K[bi, j, sl] / np.sqrt(dh) for j in ks])
                e = np.exp(s - s.max())
                out[bi, i, sl] = sum(wj * V[bi, j, sl] for wj, j in zip(e / e.sum(), ks))
    return out @ P["out"]["kernel"] + P["out"]["bias"]


def test_multi_head_attention_against_numpy():
    rng = np.random.default_rng(5)
    xq, xkv = _rand(rng, 2, 4, 6), _rand(rng, 2, 5, 7)
    mha = L.MultiHeadAttention(num_heads=2, d_model=8)
    lens = np.array([3, 5])
    variables = mha.init(jax.random.PRNGKey(0), jnp.asarray(xq), jnp.asarray(xkv), valid_lens=jnp.asarray(lens))
    out, w = mha.apply(variables, jnp.asarray(xq), jnp.asarray(xkv), valid_lens=jnp.asarray(lens),
                       return_weights=True)
    ref = _np_mha(variables["params"], xq, xkv, 2, lambda b, i, j: j < lens[b])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert w.shape == (2, 2, 4, 5) and np.all(np.asarray(w)[0, :, :, 3:] == 0.0)
    # causal self-attention
    self_mha = L.MultiHeadAttention(num_heads=2, d_model=6)
    sv = self_mha.init(jax.random.PRNGKey(1), jnp.asarray(xq))
    out, _ = self_mha.apply(sv, jnp.asarray(xq), causal=True)
    np.testing.assert_allclose(out, _np_mha(sv["params"], xq, xq, 2, lambda b, i, j: j <= i), rtol=1e-4, atol=1e-5)


def test_causal_attention_has_zero_gradient_to_later_inputs():
    x = jnp.asarray(np.random.default_rng(6).normal(size=(1, 5, 4)).astype(np.float32))
    mha = L.MultiHeadAttention(num_heads=2, d_model=4, causal_block=2)
    variables = mha.init(jax.random.PRNGKey(0), x)
    jac = jax.jit(jax.jacobian(lambda x: mha.apply(variables, x, causal=True)[0]))(x)[0, :, :, 0]   # (T, D, T, D)
    for i in range(5):
        assert np.all(np.asarray(jac[i, :, i + 1:]) == 0.0)
        assert np.any(np.asarray(jac[i, :, : i + 1]) != 0.0)


def test_cached_decoding_equals_the_full_causal_pass():
    """Prefill 3 positions in one call, then one per call: the same outputs as one causal pass."""
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 7, 4)).astype(np.float32))
    mha = L.MultiHeadAttention(num_heads=2, d_model=4)
    variables = mha.init(jax.random.PRNGKey(0), x)
    full, _ = mha.apply(variables, x, causal=True)
    cache = mha.init_cache(2, 8)
    assert {n: a.shape for n, a in cache.items()} == {"k": (2, 2, 8, 2), "v": (2, 2, 8, 2), "index": (2,)}
    out, cache = mha.apply(variables, x[:, :3], cache, method="decode")
    step = jax.jit(lambda x, cache: mha.apply(variables, x, cache, method="decode"))
    outs = [out]
    for t in range(3, 7):
        out, cache = step(x[:, t:t + 1], cache)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cache["index"], [7, 7])


def test_bad_valid_lens_shape():
    with pytest.raises(ValueError, match="valid_lens"):
        A.masked_softmax(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 1), jnp.int32))
