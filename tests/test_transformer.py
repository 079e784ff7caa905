"""Transformer layers and the decoder-only language model: positions, layer norm, padding invariance,
cached decoding against the full pass, scanned layers, memorisation, the CLI."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import cli, decode, parallel, train
from jaxseq.data.lm import LMBatches
from jaxseq.errors import ConfigError
from jaxseq.tasks.lm import build_lm
from jaxseq.models.transformer_lm import TransformerLM
from jaxseq.optim import OptimConfig, make_optimizer
from jaxseq.transformer import Stack, layer_norm, sinusoidal_positions

SMALL = dict(d_model=16, num_heads=2, num_layers=2, ffn=24)


def test_sinusoidal_positions_formula():
    for d in (6, 7):
        table = sinusoidal_positions(9, d)
        for p in range(9):
            for j in range(d):
                angle = p / 10000 ** ((j - j % 2) / d)
                assert table[p, j] == pytest.approx(np.sin(angle) if j % 2 == 0 else np.cos(angle), abs=1e-6)


def test_layer_norm_matches_flax_and_its_gradient():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 4, 5)).astype(np.float32) * 3 + 1)
    gamma, beta = jnp.asarray(rng.normal(size=5).astype(np.float32)), jnp.asarray(rng.normal(size=5).astype(np.float32))
    ref = nn.LayerNorm(epsilon=1e-5)
    params = {"params": {"scale": gamma, "bias": beta}}
    np.testing.assert_allclose(layer_norm(x, gamma, beta), ref.apply(params, x), rtol=1e-5, atol=1e-5)
    w = jnp.asarray(rng.normal(size=(3, 4, 5)).astype(np.float32))
    ours = jax.grad(lambda x, g, b: (w * layer_norm(x, g, b)).sum(), (0, 1, 2))(x, gamma, beta)
    theirs = jax.grad(lambda x, g, b: (w * ref.apply({"params": {"scale": g, "bias": b}}, x)).sum(),
                      (0, 1, 2))(x, gamma, beta)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_is_invariant_to_padding(norm):
    """Valid positions do not see what fills the padding, nor how much padding there is."""
    rng = np.random.default_rng(1)
    enc = Stack(2, 16, 2, 24, norm=norm)
    x = jnp.asarray(rng.normal(size=(2, 6, 16)).astype(np.float32))
    lens = jnp.array([4, 6])
    variables = enc.init(jax.random.PRNGKey(0), x, valid_lens=lens)
    out = enc.apply(variables, x, valid_lens=lens)
    garbage = x.at[0, 4:].set(100.0)
    np.testing.assert_allclose(enc.apply(variables, garbage, valid_lens=lens)[0, :4], out[0, :4], rtol=1e-5, atol=1e-5)
    longer = jnp.concatenate([x, jnp.full((2, 3, 16), -7.0)], axis=1)
    out_long = enc.apply(variables, longer, valid_lens=lens)
    np.testing.assert_allclose(out_long[0, :4], out[0, :4], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_long[1, :6], out[1, :6], rtol=1e-5, atol=1e-5)
    # the attention weights, sown for plots: padded keys get none
    _, sown = enc.clone(sow_weights=True).apply(variables, x, valid_lens=lens, mutable=["intermediates"])
    weights = [np.asarray(w[0]) for w in (sown["intermediates"]["block_0"]["attention_weights"],
                                          sown["intermediates"]["block_1"]["attention_weights"])]
    for w in weights:
        assert w.shape == (2, 2, 6, 6) and np.all(w[0, :, :, 4:] == 0.0)
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decoder_with_cross_attention_decodes_like_the_full_pass(scan_layers):
    rng = np.random.default_rng(2)
    dec = Stack(2, 16, 2, 24, decoder=True, cross_attention=True, norm="pre", scan_layers=scan_layers)
    x = jnp.asarray(rng.normal(size=(2, 5, 16)).astype(np.float32))
    memory = jnp.asarray(rng.normal(size=(2, 4, 16)).astype(np.float32))
    mlens = jnp.array([2, 4])
    variables = dec.init(jax.random.PRNGKey(0), x, memory=memory, memory_valid_lens=mlens)
    full = dec.apply(variables, x, memory=memory, memory_valid_lens=mlens)
    cache = dec.apply(variables, 2, 6, memory, method="init_cache")
    lead = (2, 2) if scan_layers else (2,)
    block = cache if scan_layers else cache[0]
    assert block["self"]["k"].shape == lead + (2, 6, 8) and block["memory"]["k"].shape == lead + (2, 4, 8)
    out, cache = dec.apply(variables, x[:, :2], cache, mlens, method="decode")
    step = jax.jit(lambda x, cache: dec.apply(variables, x, cache, mlens, method="decode"))
    outs = [out]
    for t in range(2, 5):
        out, cache = step(x[:, t:t + 1], cache)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)


def test_scanned_layers_equal_unrolled_layers():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 16)).astype(np.float32))
    plain, scanned = (Stack(3, 16, 2, 24, decoder=True, scan_layers=s) for s in (False, True))
    params = plain.init(jax.random.PRNGKey(0), x)["params"]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[params[f"block_{i}"] for i in range(3)])
    assert jax.tree_util.tree_structure(scanned.init(jax.random.PRNGKey(0), x)["params"]["blocks"]) == \
        jax.tree_util.tree_structure(stacked)
    np.testing.assert_allclose(scanned.apply({"params": {"blocks": stacked}}, x), plain.apply({"params": params}, x),
                               rtol=1e-5, atol=1e-5)


def _lm(**kw):
    return TransformerLM(vocab_size=11, context=8, **{**SMALL, **kw})


@pytest.mark.parametrize("kw", [dict(), dict(norm="pre", positional="learned", activation="gelu", scan_layers=True,
                                              causal_block=3)])
def test_lm_cached_generation_equals_the_full_pass(kw):
    """decode_init on 3 tokens (one prefill call), then one token per decode_step: the logits of one full
    causal pass; past the context the window slides to the last context/2 tokens."""
    model = _lm(**kw)
    tokens = jnp.asarray(np.random.default_rng(4).integers(0, 11, size=(2, 10)), jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), {"inputs": tokens[:, :8]})
    forward = jax.jit(lambda inputs: model.apply(variables, {"inputs": inputs}))
    step = jax.jit(lambda state, token: model.apply(variables, state, token, method="decode_step"))
    full, carry = forward(tokens[:, :8])
    assert carry is None and full.shape == (2, 8, 11)
    state = model.apply(variables, {"inputs": tokens[:, :3]}, method="decode_init")
    steps = []
    for t in range(3, 10):
        logits, state = step(state, tokens[:, t])
        steps.append(logits)
    np.testing.assert_allclose(jnp.stack(steps[:5], axis=1), full[:, 3:], rtol=1e-5, atol=1e-5)
    # step 8 found the cache full: it re-read tokens 4..7 at positions 0..3, then token 8 at position 4
    window, _ = model.apply(variables, {"inputs": tokens[:, 4:10]})
    np.testing.assert_allclose(jnp.stack(steps[5:], axis=1), window[:, 4:], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(state["index"], [6, 6])
    # causality: later tokens do not change earlier logits
    changed, _ = forward(tokens[:, :8].at[:, 5:].set(0))
    np.testing.assert_array_equal(changed[:, :5], full[:, :5])


def test_lm_refuses_windows_longer_than_its_context():
    model = _lm()
    with pytest.raises(ConfigError, match="longer than the model's 8 positions"):
        model.init(jax.random.PRNGKey(0), {"inputs": jnp.zeros((1, 9), jnp.int32)})
    with pytest.raises(ConfigError, match="--seq-len 16 is longer than --context 8"):
        build_lm("transformer", 5, context=8, seq_len=16)
    with pytest.raises(ConfigError, match="not divisible by --heads"):
        build_lm("transformer", 5, d_model=10, heads=4, seq_len=8)
    assert build_lm("transformer", 5, layers=3, ffn=None, seq_len=8).context == 8
    default = build_lm("transformer", 5)                    # the registered defaults (nanoGPT's CPU config)
    assert (default.context, default.num_layers, default.d_model, default.norm) == (64, 4, 128, "pre")


def test_tiny_corpus_is_memorised_and_generated():
    """'abcab?' repeats with ? = d, e alternately: the letter 6 back decides it, which takes attention."""
    text = "abcabdabcabe" * 40
    ids = np.array(["abcde".index(c) for c in text], np.int32)
    model = build_lm("transformer", 5, layers=2, d_model=32, heads=2, norm="pre", seq_len=12,
                     positional="sinusoidal", ffn_activation="relu")
    mesh = parallel.make_mesh(1)
    optim = OptimConfig(optimizer="adamw", lr=3e-3, schedule="cosine", warmup=10)
    tx = make_optimizer(optim, 300)
    batches = LMBatches(ids, seq_len=12, batch_size=16, seed=0)
    state = train.create_state(model, tx, batches.batch(0, 0), 0, mesh)
    config = train.TrainConfig(steps=300, eval_every=0, log_every=100, progress=False)
    result = train.fit(model, state, tx, batches, total_steps=300, config=config, mesh=mesh)
    # windows at every offset; only targets with 6 letters of context before them are determined
    starts = np.arange(12)
    valid = [{"inputs": np.stack([ids[s:s + 12] for s in starts]),
              "targets": np.stack([ids[s + 1:s + 13] for s in starts]),
              "weights": np.repeat((np.arange(12) >= 5).astype(np.float32)[None], 12, axis=0)}]
    score = train.evaluate(train.make_eval_step(model), result.state.params, valid, mesh)
    assert score["perplexity"] < 1.05, score
    greedy = decode.generate(model, result.state.params, ids[None, :7], 5, key=jax.random.PRNGKey(0),
                             temperature=0.0)
    np.testing.assert_array_equal(np.asarray(greedy)[0], ids[7:12])


def test_cli_train_and_generate(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    workdir = tmp_path / "run"
    assert cli.main(["train", "lm", "--model", "transformer", "--layers", "1", "--heads", "2", "--d-model", "16",
                     "--seq-len", "16", "--batch-size", "4", "--steps", "4", "--dropout", "0.1",
                     "--optimizer", "adamw", "--lr", "1e-3", "--data", str(text), "--workdir", str(workdir),
                     "--no-baseline", "--no-progress", "--eval-every", "0"]) == 0
    out = capsys.readouterr().out
    assert "transformer: validation perplexity" in out and "sample:" in out
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["model"] == "transformer" and config["transformer"]["heads"] == 2
    assert "rnn" not in config and config["transformer"]["norm"] == "pre"      # the model's own defaults,
    assert config["optim"]["schedule"] == "constant"             # but --optimizer drops its optimizer defaults
    assert cli.main(["generate", "--workdir", str(workdir), "--prefix", "the q", "--length", "30", "--seed", "1"]) == 0
    generated = capsys.readouterr().out.rstrip("\n")
    for token in ("<pad>", "<bos>", "<eos>", "<unk>"):   # 4 steps of training may still sample these
        generated = generated.replace(token, "?")
    assert generated.startswith("the q") and len(generated) == 35     # past the 16-token context
