"""Encoder-decoder models, greedy and beam search, BLEU.

Invariants: padding never changes the encoder; the decoder is causal; the
step function used for decoding computes what training computes; beam size 1
is greedy; with a beam wide enough to keep everything, beam search returns the
best of all sequences (enumerated on a tiny vocabulary).
"""

import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sacrebleu

from jaxseq import decode, metrics
from jaxseq.models.seq2seq import (GRUEncoder, RNNEncoderDecoder, TransformerEncoderDecoder, TranslationModelConfig,
                                   attention_maps, cross_attention)
from jaxseq.tasks import translate as translate_task
from jaxseq.tasks.translate import build_translation_model
from jaxseq.errors import ConfigError

SRC_V, TGT_V, BOS, EOS = 11, 13, 1, 2
MODELS = {"seq2seq": None, "bahdanau": "additive", "transformer": "transformer"}


def make_model(attention, **kwargs):
    if attention == "transformer":
        return TransformerEncoderDecoder(SRC_V, TGT_V, max_len=12, d_model=16, num_heads=2, num_layers=2, ffn=24,
                                         dropout=0.1, **kwargs)
    return RNNEncoderDecoder(SRC_V, TGT_V, embed=8, hidden=16, layers=2, dropout=0.1, attention=attention)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    src_len = np.array([6, 3, 1, 5], np.int32)
    src = rng.integers(4, SRC_V, (4, 6)).astype(np.int32)
    src = np.where(np.arange(6)[None] < src_len[:, None], src, 0).astype(np.int32)
    tgt_in = rng.integers(3, TGT_V, (4, 5)).astype(np.int32)
    tgt_in[:, 0] = BOS
    return {"src": src, "src_len": src_len, "tgt_in": tgt_in}


class Setup:
    """A small model, its parameters and a jitted teacher-forced forward pass (compiled once per shape)."""

    def __init__(self, attention, batch, **kwargs):
        self.model = make_model(attention, **kwargs)
        self.params = jax.jit(lambda k: self.model.init({"params": k}, batch)["params"])(jax.random.PRNGKey(1))
        self.forward = jax.jit(lambda p, b: self.model.apply({"params": p}, b)[0])

    def logits(self, batch):
        return np.asarray(self.forward(self.params, batch))


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request, batch):
    return Setup(MODELS[request.param], batch)


def _pad_source(batch, extra):
    src = np.concatenate([batch["src"], np.zeros((len(batch["src"]), extra), np.int32)], axis=1)
    return dict(batch, src=src)


def test_encoder_padding_never_changes_states_or_context(batch):
    enc = GRUEncoder(SRC_V, embed=8, hidden=16, layers=2)
    params = enc.init(jax.random.PRNGKey(0), batch["src"], batch["src_len"])
    apply = jax.jit(enc.apply)
    carries, hs = apply(params, batch["src"], batch["src_len"])
    wide = _pad_source(batch, 5)["src"]
    carries_w, hs_w = apply(params, wide, batch["src_len"])
    for c, cw in zip(carries, carries_w):
        np.testing.assert_allclose(c, cw, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hs, np.asarray(hs_w)[:, :6], rtol=1e-6, atol=1e-6)
    real = np.arange(11)[None] < batch["src_len"][:, None]
    assert np.all(np.asarray(hs_w)[~real] == 0.0)
    # the context C is the top layer's state at each sentence's true last step
    last = np.asarray(hs)[np.arange(4), batch["src_len"] - 1]
    np.testing.assert_allclose(carries[-1], last, rtol=1e-6, atol=1e-6)


def _source_padding_is_ignored(setup, batch):
    logits = setup.logits(batch)
    assert logits.shape == (4, 5, TGT_V)
    np.testing.assert_allclose(logits, setup.logits(_pad_source(batch, 3)), rtol=1e-5, atol=1e-5)


def _decode_step_equals_teacher_forcing(setup, batch):
    """Teacher-forced logits == decode_init then decode_step token by token (the same equations)."""
    v = {"params": setup.params}
    logits = setup.logits(batch)
    state = setup.model.apply(v, batch, method="decode_init")
    step = jax.jit(lambda s, t: setup.model.apply(v, s, t, method="decode_step"))
    for t in range(batch["tgt_in"].shape[1]):
        out, state = step(state, jnp.asarray(batch["tgt_in"][:, t]))
        np.testing.assert_allclose(out, logits[:, t], rtol=1e-5, atol=1e-5)


def test_model_logits_ignore_source_padding(setup, batch):
    _source_padding_is_ignored(setup, batch)
    _, carry = setup.model.apply({"params": setup.params}, batch)
    assert carry is None


def test_decoder_is_causal(setup, batch):
    logits = setup.logits(batch)
    changed = batch["tgt_in"].copy()
    changed[:, 3:] = (changed[:, 3:] + 5) % TGT_V
    logits2 = setup.logits(dict(batch, tgt_in=changed))
    np.testing.assert_allclose(logits[:, :3], logits2[:, :3], rtol=1e-6, atol=1e-6)
    assert not np.allclose(logits[:, 3:], logits2[:, 3:])


def test_decode_step_computes_what_training_computes(setup, batch):
    _decode_step_equals_teacher_forcing(setup, batch)


@pytest.mark.parametrize("score", ["dot", "dot-unscaled"])
def test_dot_product_scoring(batch, score):
    setup = Setup(score, batch)
    _source_padding_is_ignored(setup, batch)
    _decode_step_equals_teacher_forcing(setup, batch)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _notes_gru(p, y, c, s):
    """One GRU step written from the notes' equations, the matrices named as there (float64):
    ``W_y*`` / ``W_c*`` are the rows of ``W_x*`` that read ``y`` / ``c`` (``c`` may be empty)."""
    e = y.shape[-1]
    W = {g: (p[f"W_x{g}"][:e], p[f"W_x{g}"][e:], p[f"W_h{g}"], p[f"b_{g}"]) for g in "rzh"}
    W_yr, W_cr, W_sr, b_r = W["r"]
    W_yz, W_cz, W_sz, b_z = W["z"]
    W_ys, W_cs, W_ss, b_s = W["h"]
    r = _sigmoid(y @ W_yr + s @ W_sr + c @ W_cr + b_r)
    z = _sigmoid(y @ W_yz + s @ W_sz + c @ W_cz + b_z)
    s_tilde = np.tanh(y @ W_ys + (s * r) @ W_ss + c @ W_cs + b_s)
    return z * s + (1 - z) * s_tilde


def _notes_bahdanau_logits(params, batch, score):
    """The whole Bahdanau model, float64 NumPy, from the notes: a masked GRU encoder, then per step
    alpha_t = softmax(a(s_{t-1}, h_j)) over the real source, c_t = sum_j alpha_tj h_j, the GRU on
    [y_{t-1}; c_t] (the first layer; higher layers read the layer below), o_t = s_t W_o + b_o."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    src, src_len, tgt_in = batch["src"], batch["src_len"], batch["tgt_in"]
    layers = [p["encoder"]["rnn"][f"layer{i}"]["cell"] for i in range(2)]
    B, S = src.shape
    hidden = layers[0]["W_hh"].shape[0]
    states = [np.zeros((B, hidden)) for _ in layers]
    enc = np.zeros((B, S, hidden))
    no_context = np.zeros((B, 0))
    for t in range(S):
        x, real = p["encoder"]["embed"]["embedding"][src[:, t]], (t < src_len)[:, None]
        for i, cell in enumerate(layers):
            new = _notes_gru(cell, x, no_context, states[i])
            states[i] = np.where(real, new, states[i])
            x = new
        enc[:, t] = np.where(real, states[-1], 0.0)
    dec = p["decoder"]
    cells_ = [dec["step"][f"layer{i}"]["cell"] for i in range(2)]
    logits = []
    for t in range(tgt_in.shape[1]):
        query = states[-1]                                                    # s_{t-1}: (B, H)
        if score == "dot-unscaled":
            a = np.einsum("bh,bsh->bs", query, enc)                          # s^T h
        else:
            att = dec["step"]["attention"]
            a = np.tanh((query @ att["W_q"])[:, None] + enc @ att["W_k"]) @ att["w_v"]
        a = np.where(np.arange(S)[None] < src_len[:, None], a, -np.inf)
        alpha = np.exp(a - a.max(-1, keepdims=True))
        alpha /= alpha.sum(-1, keepdims=True)
        context = np.einsum("bs,bsh->bh", alpha, enc)
        y = dec["embed"]["embedding"][tgt_in[:, t]]
        states[0] = _notes_gru(cells_[0], y, context, states[0])
        for i in range(1, len(cells_)):
            states[i] = _notes_gru(cells_[i], states[i - 1], no_context, states[i])
        logits.append(states[-1] @ dec["out"]["kernel"] + dec["out"]["bias"])
    return np.stack(logits, axis=1)


@pytest.mark.parametrize("score", ["additive", "dot-unscaled"])
def test_bahdanau_in_the_notes_form_equals_the_notes_equations(batch, score):
    """--gru-reset before: every GRU (encoder, decoder) is the notes' r/z/s~ with s_{t-1} * r_t before
    W_ss, and the decoder's gates read W_yr y + W_sr s + W_cr c; checked in float64 for the whole model."""
    model = RNNEncoderDecoder(SRC_V, TGT_V, embed=8, hidden=16, layers=2, dropout=0.1, attention=score,
                              reset="before")
    params = jax.jit(lambda k: model.init(k, batch)["params"])(jax.random.PRNGKey(3))
    # non-zero biases, so every b_* of the equations is exercised
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a + 0.2 if str(path[-1].key).startswith("b_") else a, params)
    assert "b_hh" not in params["decoder"]["step"]["layer0"]["cell"]        # the notes' form has b_s only
    logits = np.asarray(jax.jit(lambda p: model.apply({"params": p}, batch)[0])(params))
    np.testing.assert_allclose(logits, _notes_bahdanau_logits(params, batch, score), rtol=1e-4, atol=1e-5)


def test_the_two_gru_forms_are_different_functions(batch):
    """The reset-after model is another function of other parameters (b_hh), not a relabelling."""
    after = RNNEncoderDecoder(SRC_V, TGT_V, embed=8, hidden=16, layers=1, attention="additive", reset="after")
    before = after.clone(reset="before")
    p_after = after.init(jax.random.PRNGKey(0), batch)["params"]
    p_before = before.init(jax.random.PRNGKey(0), batch)["params"]
    assert "b_hh" in p_after["encoder"]["rnn"]["layer0"]["cell"]
    assert "b_hh" not in p_before["encoder"]["rnn"]["layer0"]["cell"]
    shared = jax.tree_util.tree_map(lambda a: a, p_after)
    for part in (shared["encoder"]["rnn"]["layer0"]["cell"], shared["decoder"]["step"]["layer0"]["cell"]):
        del part["b_hh"]
    assert not np.allclose(after.apply({"params": p_after}, batch)[0], before.apply({"params": shared}, batch)[0])


def test_attention_weights_are_sown_and_masked(batch):
    model = make_model("additive")
    params = jax.jit(lambda k: model.init(k, batch)["params"])(jax.random.PRNGKey(0))
    _, state = jax.jit(lambda p: model.apply({"params": p}, batch, mutable=["intermediates"]))(params)
    w = np.asarray(state["intermediates"]["attention"][0])
    assert w.shape == (4, 5, 6)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    real = np.arange(6)[None] < batch["src_len"][:, None]
    assert np.all(w[np.broadcast_to(~real[:, None], w.shape)] < 1e-6)


@pytest.mark.parametrize("options", [dict(scan_layers=True, norm="pre"), dict(positional="learned")])
def test_transformer_variants_decode_what_training_computes(batch, options):
    setup = Setup("transformer", batch, **options)
    _source_padding_is_ignored(setup, batch)
    _decode_step_equals_teacher_forcing(setup, batch)


def test_transformer_attention_maps_per_layer_and_head(batch):
    """Every block's weights are sown; scanned and unrolled stacks give the same maps for the same weights."""
    maps = {}
    for scan in (False, True):
        model = make_model("transformer", scan_layers=scan)
        params = jax.jit(lambda k: model.init(k, batch)["params"])(jax.random.PRNGKey(0))
        if scan:        # the unrolled stack's weights, stacked on a leading layer axis
            stack = lambda tree: {"blocks": jax.tree_util.tree_map(lambda *x: jnp.stack(x),
                                                                   tree["block_0"], tree["block_1"])}
            params = dict(params, encoder=stack(unrolled["encoder"]), decoder=stack(unrolled["decoder"]))
        else:
            unrolled = params
        _, state = model.apply({"params": params}, batch, mutable=["intermediates"])
        maps[scan] = attention_maps(state["intermediates"])
        top = cross_attention(model, state["intermediates"])
    for kind in ("encoder", "decoder", "cross"):
        np.testing.assert_allclose(maps[True][kind], maps[False][kind], rtol=1e-5, atol=1e-6)
    enc, dec, cross = (np.asarray(maps[False][k]) for k in ("encoder", "decoder", "cross"))
    assert enc.shape == (2, 4, 2, 6, 6) and dec.shape == (2, 4, 2, 5, 5) and cross.shape == (2, 4, 2, 5, 6)
    for w in (enc, dec, cross):
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    padded = np.arange(6)[None] >= batch["src_len"][:, None]                       # (B, S)
    assert np.all(cross[np.broadcast_to(padded[None, :, None, None], cross.shape)] < 1e-6)
    assert np.all(enc[np.broadcast_to(padded[None, :, None, None], enc.shape)] < 1e-6)
    assert np.all(np.triu(np.ones((5, 5), bool), 1)[None, None, None] <= (dec < 1e-6))      # causal
    np.testing.assert_allclose(top, cross[-1].mean(axis=1), rtol=1e-6)


def test_training_mode_uses_dropout(setup, batch):
    train = jax.jit(lambda p, k: setup.model.apply({"params": p}, batch, train=True, rngs={"dropout": k})[0])
    a, b = train(setup.params, jax.random.PRNGKey(0)), train(setup.params, jax.random.PRNGKey(1))
    assert not np.allclose(a, b)
    np.testing.assert_allclose(train(setup.params, jax.random.PRNGKey(0)), a)


def test_config_validation():
    with pytest.raises(ConfigError, match="--model must be one of seq2seq, bahdanau, transformer"):
        build_translation_model("transformerx", 5, 6)
    with pytest.raises(ConfigError, match=r"--dropout must lie in \[0, 1\), got 1"):
        TranslationModelConfig(dropout=1.0).validate()
    with pytest.raises(ConfigError, match="--d-model 30 is not divisible by --heads 4"):
        build_translation_model("transformer", 5, 6, d_model=30, heads=4)
    m = build_translation_model("seq2seq", 5, 6, embed=4, hidden=8, layers=1)
    assert m.attention is None and m.target_key == "tgt_out"
    t = build_translation_model("transformer", 5, 6, d_model=8, heads=2, ffn=None, layers=3, max_len=12)
    assert (t.max_len, t.num_layers, t.num_heads, t.ffn, t.dropout) == (12, 3, 2, 32, 0.2)
    # the registered defaults of the Transformer (experiments/fra_eng_transformer.sh's)
    run = translate_task.resolve(model="transformer")
    assert (run.transformer.d_model, run.transformer.ffn, run.train.label_smoothing, run.optim.lr,
            run.optim.warmup) == (256, 1024, 0.1, 1e-3, 200)
    assert translate_task.resolve(model="transformer", lr=5e-4).optim.lr == 5e-4          # a flag wins


# -- greedy and beam search ---------------------------------------------------------------------

def test_beam_of_one_is_greedy(setup, batch):
    model, params = setup.model, setup.params
    src = {"src": batch["src"], "src_len": batch["src_len"]}
    g = decode.greedy_search(model, params, src, bos=BOS, eos=EOS, max_len=7)
    b = decode.beam_search(model, params, src, bos=BOS, eos=EOS, max_len=7, beam=1, alpha=0.6)
    np.testing.assert_array_equal(g.tokens, b.tokens)
    np.testing.assert_array_equal(g.lengths, b.lengths)
    np.testing.assert_allclose(g.log_probs, b.log_probs, rtol=1e-5)
    # a wider beam never finds a worse-scoring output than the beam of one on these rows, and
    # its outputs end at their first <eos>
    b4 = decode.beam_search(model, params, src, bos=BOS, eos=EOS, max_len=7, beam=4, alpha=0.0)
    for row, n in zip(np.asarray(b4.tokens), np.asarray(b4.lengths)):
        assert EOS not in row[:n - 1] and np.all(row[n:] == EOS)


class TableModel(nn.Module):
    """A fake decoder whose logits are a fixed table indexed by the whole prefix (enumerable)."""

    vocab: int
    depth: int

    def setup(self):
        rows = (self.vocab + 1) ** (self.depth + 1)
        self.table = self.param("table", nn.initializers.normal(2.0), (rows, self.vocab))

    def decode_init(self, batch):
        return {"code": jnp.zeros((batch["src"].shape[0],), jnp.int32)}

    def decode_step(self, state, tokens):
        code = state["code"] * (self.vocab + 1) + tokens + 1
        return self.table[code], {"code": code}


def _enumerate(table, vocab, depth, alpha, eos):
    """Every possible output (ending at <eos>, or cut at ``depth``) with its log-probability and score."""
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(table), axis=-1), np.float64)
    best = None
    words = [v for v in range(vocab) if v != eos]
    for n in range(1, depth + 1):
        for body in itertools.product(words, repeat=n - 1):
            endings = [(eos,)] + ([(w,) for w in words] if n == depth else [])
            for end in endings:
                seq, code, total = body + end, 0, 0.0
                prev = vocab                                  # <bos>
                for tok in seq:
                    code = code * (vocab + 1) + prev + 1
                    total += logp[code, tok]
                    prev = tok
                score = total / ((5 + n) / 6) ** alpha
                if best is None or score > best[0]:
                    best = (score, seq, total)
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_finds_the_best_of_all_sequences(alpha):
    vocab, depth, eos = 3, 4, 0
    model = TableModel(vocab, depth)
    src = {"src": np.zeros((3, 1), np.int32)}
    for seed in range(3):
        table = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), ((vocab + 1) ** (depth + 1), vocab))) * 2.0
        params = {"table": jnp.asarray(table, jnp.float32)}
        out = decode.beam_search(model, params, src, bos=vocab, eos=eos, max_len=depth, beam=32, alpha=alpha)
        score, seq, total = _enumerate(table, vocab, depth, alpha, eos)
        n = int(out.lengths[0])
        assert tuple(np.asarray(out.tokens[0, :n]).tolist()) == seq
        np.testing.assert_allclose(float(out.scores[0]), score, rtol=1e-5)
        np.testing.assert_allclose(float(out.log_probs[0]), total, rtol=1e-5)
        g = decode.greedy_search(model, params, src, bos=vocab, eos=eos, max_len=depth, alpha=alpha)
        assert float(g.scores[0]) <= score + 1e-5


def test_decoding_past_the_transformers_positions_is_refused(batch):
    model = make_model("transformer")            # max_len 12: a 12-position decode cache
    src = {"src": batch["src"], "src_len": batch["src_len"]}
    for search in (decode.greedy_search, decode.beam_search):
        with pytest.raises(ConfigError, match="--max-len 13: the model has 12 positions"):
            search(model, {}, src, bos=BOS, eos=EOS, max_len=13)


def test_decode_arguments_are_checked(batch):
    model, params = TableModel(3, 2), {}
    src = {"src": batch["src"], "src_len": batch["src_len"]}
    with pytest.raises(ConfigError, match="--beam"):
        decode.beam_search(model, params, src, bos=BOS, eos=EOS, max_len=5, beam=0)
    with pytest.raises(ConfigError, match="--max-len"):
        decode.greedy_search(model, params, src, bos=BOS, eos=EOS, max_len=0)
    with pytest.raises(ConfigError, match="--alpha"):
        decode.beam_search(model, params, src, bos=BOS, eos=EOS, max_len=5, alpha=-1.0)


# -- BLEU ------------------------------------------------------------------------------------------

HYPS = ["il est riche .", "va !", "je suis chez moi .", "le chat est sur le tapis ."]
REFS = ["il est calme .", "va !", "je suis chez moi .", "le chat est sur un tapis ."]


def _bleu_by_hand(hyps, refs):
    """BLEU = BP exp(mean_n log p_n), clipped n-gram counts summed over the corpus (n = 1..4)."""
    matches, totals = np.zeros(4), np.zeros(4)
    c = r = 0
    for h, ref in zip(hyps, refs):
        h, ref = h.split(), ref.split()
        c, r = c + len(h), r + len(ref)
        for n in range(1, 5):
            hg = [tuple(h[i:i + n]) for i in range(len(h) - n + 1)]
            rg = [tuple(ref[i:i + n]) for i in range(len(ref) - n + 1)]
            matches[n - 1] += sum(min(hg.count(g), rg.count(g)) for g in set(hg))
            totals[n - 1] += len(hg)
    bp = min(1.0, math.exp(1 - r / c))
    return 100 * bp * math.exp(np.mean(np.log(matches / totals)))


def test_corpus_bleu_is_sacrebleus():
    ours = metrics.corpus_bleu(HYPS, REFS)
    theirs = sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="none").score
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert ours == pytest.approx(_bleu_by_hand(HYPS, REFS), rel=1e-9)
    assert metrics.corpus_bleu(REFS, REFS) == pytest.approx(100.0)
    assert metrics.corpus_bleu([], []) == 0.0
    # tokenize="none": our tokens are kept ("chez-moi" stays one word, as the model wrote it)
    assert metrics.corpus_bleu(["je suis chez-moi ."], ["je suis chez moi ."]) < 40


def test_d2l_sentence_bleu_on_the_books_examples():
    # D2L's four example sentences (10.7, 11.4) with predictions of the kind its sections print
    assert metrics.bleu("va !", "va !", k=2) == pytest.approx(1.0)
    assert metrics.bleu("j'ai perdu .", "j'ai perdu .", k=2) == pytest.approx(1.0)
    assert metrics.bleu("il est riche .", "il est calme .", k=2) == pytest.approx(0.658, abs=5e-4)
    assert metrics.bleu("il court .", "il est calme .", k=2) == 0.0
    # brevity penalty exp(1 - 4/3) with unigram precision 1, bigram 1
    assert metrics.bleu("je suis chez", "je suis chez moi", k=2) == pytest.approx(math.exp(1 - 4 / 3))
    assert metrics.bleu("", "va !") == 0.0
    assert metrics.exact_match(HYPS, REFS) == 0.5
