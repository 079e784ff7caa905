"""Platform fast paths: --attention-impl (xla equals the hand-written path: outputs, gradients, masks, causal,
padding, decode cache; cudnn refused on the CPU), the bf16 precision policy, and the device check script."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import train
from jaxseq.attention_impl import AUTO, attend, resolve_impl
from jaxseq.errors import ConfigError
from jaxseq.models.transformer_lm import TransformerLM
from jaxseq.models.seq2seq import TransformerEncoderDecoder
from jaxseq.tasks import lm as lm_task
from jaxseq.tasks.lm import build_lm

ROOT = Path(__file__).resolve().parents[1]


def _qkv(b=2, h=2, q=6, k=6, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(b, h, n, d)).astype(np.float32)) for n in (q, k, k))


def _reference(q, k, v, keep):
    """float64 NumPy attention: softmax over kept keys (``keep`` broadcastable to (B, H, Q, K))."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    s = np.where(keep, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


CASES = {   # name -> (query length, key length, attend kwargs, keep mask for the reference)
    "plain": (6, 6, {}, np.ones((1, 1, 6, 6), bool)),
    "causal": (6, 6, {"causal": True}, np.tril(np.ones((6, 6), bool))[None, None]),
    "causal blocks": (6, 6, {"causal": True, "causal_block": 4}, np.tril(np.ones((6, 6), bool))[None, None]),
    "padding": (5, 7, {"valid_lens": jnp.array([3, 7])}, (np.arange(7) < np.array([3, 7])[:, None])[:, None, None]),
    "per-query lengths": (4, 6, {"valid_lens": jnp.array([[1, 2, 3, 4], [6, 5, 4, 3]])},
                          (np.arange(6)[None, None, :] < np.array([[1, 2, 3, 4], [6, 5, 4, 3]])[..., None])[:, None]),
    "mask": (6, 6, {"mask": np.random.default_rng(3).random((2, 1, 6, 6)) < 0.6},
             np.random.default_rng(3).random((2, 1, 6, 6)) < 0.6),
}


@pytest.mark.parametrize("case", list(CASES))
def test_xla_attention_equals_the_hand_written_path_and_float64(case):
    """Outputs against float64 and gradients of both implementations against each other."""
    nq, nk, kw, keep = CASES[case]
    keep = np.array(keep)
    keep[..., 0] = True                                    # every query keeps a key (see attention_impl's doc)
    if "mask" in kw:
        kw = dict(kw, mask=keep)
    q, k, v = _qkv(q=nq, k=nk)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(2, 2, nq, 4)).astype(np.float32))
    outs, grads = {}, {}
    for impl in ("jaxseq", "xla"):
        f = lambda q, k, v, impl=impl: attend(q, k, v, impl=impl, **kw)[0]
        both = jax.jit(lambda q, k, v, f=f: (f(q, k, v), jax.grad(lambda *a: jnp.sum(f(*a) * w), (0, 1, 2))(q, k, v)))
        outs[impl], grads[impl] = both(q, k, v)
        np.testing.assert_allclose(outs[impl], _reference(q, k, v, keep), rtol=1e-5, atol=1e-5)
    for a, b in zip(grads["jaxseq"], grads["xla"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_resolve_impl_per_platform_and_its_refusals():
    assert resolve_impl("auto", dtype=jnp.float32, head_dim=32, backend="cpu") == AUTO["cpu"]
    assert resolve_impl("auto", dtype=jnp.bfloat16, head_dim=64, backend="gpu") == "cudnn"
    assert resolve_impl("auto", dtype=jnp.float32, head_dim=64, backend="gpu") == AUTO["gpu"]
    assert resolve_impl("auto", dtype=jnp.bfloat16, head_dim=12, backend="gpu") == AUTO["gpu"]
    assert resolve_impl("auto", dtype=jnp.bfloat16, head_dim=64, dropout=0.1, backend="gpu") == "cudnn"
    assert resolve_impl("xla", dtype=jnp.float32, head_dim=5, backend="cpu") == "xla"
    with pytest.raises(ConfigError, match="--attention-impl cudnn needs an NVIDIA GPU, but JAX runs on cpu"):
        resolve_impl("cudnn", dtype=jnp.bfloat16, head_dim=64, backend="cpu")
    with pytest.raises(ConfigError, match="needs --dtype bfloat16"):
        resolve_impl("cudnn", dtype=jnp.float32, head_dim=64, backend="gpu")
    with pytest.raises(ConfigError, match="--attention-impl xla has no attention dropout; give --dropout 0"):
        resolve_impl("xla", dtype=jnp.float32, head_dim=8, dropout=0.1, backend="cpu")
    # a training config is refused when validated (before a work directory is written), on this CPU ...
    with pytest.raises(ConfigError, match="--attention-impl cudnn needs an NVIDIA GPU"):
        lm_task.TASK.resolve({"model": "transformer", "attention_impl": "cudnn", "dtype": "bfloat16"})
    # ... but a saved run's model still builds here (to evaluate or generate), with auto's choice
    run = lm_task.TASK.resolve({"model": "transformer", "attention_impl": "cudnn", "dtype": "bfloat16"},
                               validate=False)
    assert run.spec.build(run, (11,)).attention_impl == AUTO["cpu"]
    assert resolve_impl("xla", dtype=jnp.float32, head_dim=8, dropout=0.1, backend="cpu", strict=False) == AUTO["cpu"]


SMALL = dict(d_model=16, num_heads=2, num_layers=1, ffn=24)


def test_transformer_lm_xla_equals_jaxseq_in_training_and_cached_decoding():
    """The same parameters give the same logits, gradients and cached decoding on both paths."""
    models = {impl: TransformerLM(vocab_size=11, context=8, attention_impl=impl, causal_block=4, **SMALL)
              for impl in ("jaxseq", "xla")}
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, size=(2, 8)).astype(np.int32))
    params = train.init_params(models["jaxseq"], {"inputs": tokens}, 0)
    logits, grads, steps = {}, {}, {}
    for impl, model in models.items():
        @jax.jit
        def run(p, model=model):
            forward = lambda p: model.apply({"params": p}, {"inputs": tokens})[0]
            grads = jax.grad(lambda p: jnp.sum(jax.nn.log_softmax(forward(p))[..., 0]))(p)
            state = model.apply({"params": p}, {"inputs": tokens[:, :5]}, method="decode_init")
            return forward(p), grads, model.apply({"params": p}, state, tokens[:, 5], method="decode_step")[0]
        logits[impl], grads[impl], steps[impl] = run(params)
    np.testing.assert_allclose(logits["xla"], logits["jaxseq"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(steps["xla"], logits["jaxseq"][:, 5], rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(grads["xla"]), jax.tree_util.tree_leaves(grads["jaxseq"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_translation_transformer_xla_equals_jaxseq_with_padding_and_keeps_its_heatmap():
    models = {impl: TransformerEncoderDecoder(9, 10, 7, attention_impl=impl, **SMALL) for impl in ("jaxseq", "xla")}
    rng = np.random.default_rng(2)
    batch = {"src": jnp.asarray(rng.integers(0, 9, size=(2, 7)).astype(np.int32)), "src_len": jnp.array([4, 7]),
             "tgt_in": jnp.asarray(rng.integers(0, 10, size=(2, 5)).astype(np.int32))}
    params = train.init_params(models["jaxseq"], batch, 0)
    out = {impl: jax.jit(lambda p, m=m: m.apply({"params": p}, batch)[0])(params) for impl, m in models.items()}
    np.testing.assert_allclose(out["xla"], out["jaxseq"], rtol=1e-4, atol=1e-5)
    # the weights for heatmaps are still sown when collected (the jaxseq path runs for them)
    _, sown = jax.jit(lambda p: models["xla"].apply({"params": p}, batch, mutable=["intermediates"]))(params)
    assert jax.tree_util.tree_leaves(sown)


def test_bf16_policy_keeps_float32_parameters_and_loss_and_tracks_float32():
    """--dtype bfloat16: bf16 compute, float32 parameters, gradients and loss; a step within bf16 tolerance."""
    tokens = np.random.default_rng(4).integers(0, 11, size=(2, 9)).astype(np.int32)
    batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
             "weights": jnp.ones((2, 8), jnp.float32)}
    results = {}
    for dtype in ("float32", "bfloat16"):
        model = build_lm("transformer", 11, seq_len=8, d_model=16, heads=2, layers=1, dtype=dtype)
        params = train.init_params(model, batch, 0)

        @jax.jit
        def value_and_grad(p, model=model):
            def loss(p):
                logits = model.apply({"params": p}, batch)[0]
                nll = -jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), batch["targets"][..., None], -1)
                return jnp.mean(nll), logits
            return jax.value_and_grad(loss, has_aux=True)(p)
        (value, logits), grads = value_and_grad(params)
        logits_dtype = logits.dtype
        assert {x.dtype for x in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
        assert {x.dtype for x in jax.tree_util.tree_leaves(grads)} == {jnp.dtype(jnp.float32)}
        assert value.dtype == jnp.float32
        results[dtype] = (value, grads, logits_dtype)
    assert results["bfloat16"][2] == jnp.bfloat16 and results["float32"][2] == jnp.float32
    assert abs(float(results["bfloat16"][0]) - float(results["float32"][0])) < 2e-2 * float(results["float32"][0])
    g32 = jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(results["float32"][1])])
    g16 = jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(results["bfloat16"][1])])
    assert float(jnp.linalg.norm(g16 - g32) / jnp.linalg.norm(g32)) < 5e-2


def test_device_check_script_parses_and_its_driver_runs_a_section(tmp_path):
    """`bash -n` on the script; the driver runs the env section in a child process and writes its table."""
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "device_check.sh")], check=True)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import device_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert device_check.main(["--cpu-smoke", "--sections", "env", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "device_check.md").read_text()
    assert "| env | backend | cpu |" in table and "ERROR" not in table
    assert "JAX 512^3 matmul float32" in table
    assert (tmp_path / "device_check.json").exists()
    assert "== env" in (tmp_path / "device_check_logs.txt").read_text()      # one log file, written as it ends


def test_scan_unroll_gives_the_same_results_for_any_unroll():
    """GRU (hand-written backward, masked): unroll 1 == unroll 3 (T = 7), outputs and gradients."""
    from jaxseq import cells
    rng = np.random.default_rng(5)
    xs = jnp.asarray(rng.normal(size=(2, 7, 3)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(2, 7, 4)).astype(np.float32))
    lengths = jnp.array([7, 4])
    gru = cells.GRU.init(jax.random.PRNGKey(0), 3, 4)
    runs = {"gru": lambda p, x, u: cells.run(cells.GRU, p, x, lengths=lengths, unroll=u)[1]}   # hand-written BPTT
    for name, f in runs.items():
        params = gru
        both = jax.jit(lambda p, x, f=f: [(f(p, x, u), jax.grad(lambda p, x: jnp.sum(f(p, x, u) * w), (0, 1))(p, x))
                                          for u in (1, 3)])
        (h1, g1), (h3, g3) = both(params, xs)
        np.testing.assert_allclose(h3, h1, rtol=1e-6, atol=1e-6, err_msg=name)
        for a, b in zip(jax.tree_util.tree_leaves(g3), jax.tree_util.tree_leaves(g1)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    assert cells.platform_unroll(0, "cpu") == cells.UNROLL["cpu"] and cells.platform_unroll(5, "gpu") == 5
    assert build_lm("gru", 7, scan_unroll=4).unroll == 4
