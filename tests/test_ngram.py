"""Count-based n-gram models: hand-computed values, an independent slow reference, invariants."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxseq.errors import ConfigError, DataError
from jaxseq.ngram import FALLBACK_DISCOUNTS, NGramConfig, NGramLM, kn_discounts, ngram_counts, top_ngrams

# The toy corpus of the hand computations: a b a c a b, with a=0, b=1, c=2 and
# an id 3 (<unk>) that never occurs, so V = 4.
TOY = [0, 1, 0, 2, 0, 1]
V_TOY = 4


def fit(ids, vocab_size, order, smoothing, add_k=1.0):
    return NGramLM.fit(np.asarray(ids), vocab_size, NGramConfig(order=order, smoothing=smoothing, add_k=add_k))


# -- hand-computed perplexities (MLE and add-1) ----------------------------------

# Bigram counts of TOY: (a,b)=2 (b,a)=1 (a,c)=1 (c,a)=1; context totals a:3 b:1 c:1.
# Trigram counts: (a,b,a)=1 (b,a,c)=1 (a,c,a)=1 (c,a,b)=1; every context total 1.
# Unigram counts: a:3 b:2 c:1, N = 6.
# The test stream a b a c scores P(b|a), P(a|..b), P(c|..a) (the first has only one token of context).

def test_bigram_perplexity_mle_and_add1_by_hand():
    test = [0, 1, 0, 2]
    mle = fit(TOY, V_TOY, 2, "mle").evaluate(test)
    # P(b|a) = 2/3, P(a|b) = 1/1, P(c|a) = 1/3
    assert mle["tokens"] == 3
    assert mle["perplexity"] == pytest.approx((2 / 3 * 1 * 1 / 3) ** (-1 / 3), rel=1e-12)
    assert mle["nll"] == pytest.approx(-(math.log(2 / 3) + math.log(1) + math.log(1 / 3)) / 3, rel=1e-12)
    add1 = fit(TOY, V_TOY, 2, "add-k").evaluate(test)
    # (c(hw) + 1) / (c(h.) + 4): 3/7, 2/5, 2/7
    assert add1["perplexity"] == pytest.approx((3 / 7 * 2 / 5 * 2 / 7) ** (-1 / 3), rel=1e-12)


def test_trigram_perplexity_mle_and_add1_by_hand():
    test = [0, 1, 0, 2]
    # t=1 has one token of context: the bigram estimate P(b|a); then P(a|a b) and P(c|b a)
    mle = fit(TOY, V_TOY, 3, "mle").evaluate(test)
    assert mle["perplexity"] == pytest.approx((2 / 3 * 1 * 1) ** (-1 / 3), rel=1e-12)
    add1 = fit(TOY, V_TOY, 3, "add-k").evaluate(test)
    # bigram add-1 3/7, then (1 + 1) / (1 + 4) twice
    assert add1["perplexity"] == pytest.approx((3 / 7 * 2 / 5 * 2 / 5) ** (-1 / 3), rel=1e-12)
    add_half = fit(TOY, V_TOY, 3, "add-k", add_k=0.5).evaluate(test)
    # (c + 0.5) / (c(h.) + 2): 2.5/5, 1.5/3, 1.5/3
    assert add_half["perplexity"] == pytest.approx((0.5 * 0.5 * 0.5) ** (-1 / 3), rel=1e-12)


def test_unseen_context_mle_backs_off_add_k_is_uniform():
    # context <unk> (3) never occurs: MLE backs off to the unigram c(b)/N = 2/6, add-k gives 1/V
    assert np.exp(fit(TOY, V_TOY, 2, "mle").log_probs([3, 1])) == pytest.approx([2 / 6], rel=1e-12)
    assert np.exp(fit(TOY, V_TOY, 2, "add-k").log_probs([3, 1])) == pytest.approx([1 / 4], rel=1e-12)
    # a trigram context (c, b) never seen, but (b) is: MLE backs off to P(a|b) = 1
    assert np.exp(fit(TOY, V_TOY, 3, "mle").log_probs([2, 1, 0])) == pytest.approx([0.0, 1.0], abs=1e-12)


def test_mle_zero_probability_gives_inf_perplexity():
    model = fit(TOY, V_TOY, 2, "mle")
    with np.errstate(all="raise"):
        result = model.evaluate([0, 1, 1, 0])        # P(b|b) = 0
    assert result["nll"] == math.inf and result["perplexity"] == math.inf
    assert not math.isnan(result["nll"])
    assert np.isneginf(model.log_probs([0, 1, 1, 0])[1])


# -- Kneser-Ney by hand -------------------------------------------------------------

def test_kn_discounts_closed_form_and_fallback():
    # n1=10 n2=4 n3=2 n4=1: Y = 10/18; D1 = 1 - 2Y 4/10 = 5/9, D2 = 2 - 3Y 2/4 = 7/6, D3+ = 3 - 4Y 1/2 = 17/9
    counts = np.array([1] * 10 + [2] * 4 + [3] * 2 + [4] + [9, 0, 0])
    d, closed = kn_discounts(counts)
    assert closed and d == pytest.approx([5 / 9, 7 / 6, 17 / 9], rel=1e-12)
    # no k-gram with count 2: no closed form
    d, closed = kn_discounts(np.array([1, 1, 3, 4]))
    assert not closed and tuple(d) == FALLBACK_DISCOUNTS
    # n1=n2=1, n3=10: D2 = 2 - 3 (1/3) 10 < 0 is out of range
    d, closed = kn_discounts(np.array([1, 2] + [3] * 10))
    assert not closed and tuple(d) == FALLBACK_DISCOUNTS


def test_kn_bigram_by_hand():
    # Highest order (raw counts): (a,b)=2 (b,a)=1 (a,c)=1 (c,a)=1 -> n1=3, n2=1, n3=0: fallback D = .5, 1, 1.5
    # Unigram continuation counts N1+(. w): a:{b,c}=2  b:{a}=1  c:{a}=1  <unk>:0; total 4
    #   n1=2, n2=1, n3=0: fallback again
    # gamma_1 = (.5*2 + 1*1) / 4 = 1/2;  P1(w) = max(N1+(.w) - D, 0)/4 + gamma_1/4
    p1 = np.array([(2 - 1) / 4 + 1 / 8, 0.5 / 4 + 1 / 8, 0.5 / 4 + 1 / 8, 1 / 8])
    assert p1.sum() == pytest.approx(1.0)
    model = fit(TOY, V_TOY, 2, "kn")
    assert model.discounts == pytest.approx(np.array([FALLBACK_DISCOUNTS] * 2))
    assert model.distribution([]) == pytest.approx(p1, rel=1e-12)
    # context a: c(a.) = 3, (a,b)=2 (D=1), (a,c)=1 (D=.5); gamma(a) = (.5*1 + 1*1) / 3 = 1/2
    expected = 0.5 * p1 + np.array([0, (2 - 1) / 3, (1 - 0.5) / 3, 0])
    assert model.distribution([0]) == pytest.approx(expected, rel=1e-12)
    # context <unk>: never seen, so the lower order entirely
    assert model.distribution([3]) == pytest.approx(p1, rel=1e-12)
    # the first token of a stream only has the empty context; log_probs start at t=1
    assert np.exp(model.log_probs([0, 1, 0, 2])) == pytest.approx([expected[1], 0.5 / 1 + 0.5 * p1[0], expected[2]])


def test_kn_trigram_by_hand():
    # Trigrams (raw): (a,b,a) (b,a,c) (a,c,a) (c,a,b), all 1: n1=4, n2=0 -> fallback D = .5, 1, 1.5
    # Bigram continuation counts N1+(. x y): (a,b):{c}=1 (b,a):{a}=1 (a,c):{b}=1 (c,a):{a}=1 -> fallback
    #   (the (a,b) at the very start of the stream has no left neighbour, so it adds nothing)
    # Unigram continuation counts as in the bigram test: P1 = [.375, .25, .25, .125]
    p1 = np.array([0.375, 0.25, 0.25, 0.125])
    # order 2, context a: a(a.) = 2, N1 = 2, gamma = .5*2/2 = 1/2; context b: a(b.) = 1, gamma = 1/2
    p2_a = np.array([0, 0.5 / 2, 0.5 / 2, 0]) + 0.5 * p1
    p2_b = np.array([0.5 / 1, 0, 0, 0]) + 0.5 * p1
    # order 3, context (a,b): (a,b,a)=1, gamma = 1/2;  context (b,a): (b,a,c)=1, gamma = 1/2
    p3_ab = np.array([0.5, 0, 0, 0]) + 0.5 * p2_b
    p3_ba = np.array([0, 0, 0.5, 0]) + 0.5 * p2_a
    model = fit(TOY, V_TOY, 3, "kn")
    assert model.distribution([0]) == pytest.approx(p2_a, rel=1e-12)
    assert model.distribution([1]) == pytest.approx(p2_b, rel=1e-12)
    assert model.distribution([0, 1]) == pytest.approx(p3_ab, rel=1e-12)
    assert model.distribution([2, 0, 1]) == pytest.approx(p3_ab, rel=1e-12)   # only the last n-1 count
    assert model.distribution([1, 0]) == pytest.approx(p3_ba, rel=1e-12)
    # (b,b) never seen: back off to P2(. | b)
    assert model.distribution([1, 1]) == pytest.approx(p2_b, rel=1e-12)
    # hand values: P2(b|a) = .25 + .125 = .375, P3(a|a,b) = .5 + .5*.6875, P3(c|b,a) = .5 + .5*.375
    assert np.exp(model.log_probs([0, 1, 0, 2])) == pytest.approx([0.375, 0.84375, 0.6875], rel=1e-12)
    assert model.evaluate([0, 1, 0, 2])["perplexity"] == pytest.approx((0.375 * 0.84375 * 0.6875) ** (-1 / 3))


# -- an independent slow reference -------------------------------------------------

class ReferenceLM:
    """Dict-of-tuples n-gram model, written straight from the equations (slow, obviously correct)."""

    def __init__(self, train, V, n, smoothing, add_k=1.0):
        self.V, self.n, self.smoothing, self.k = V, n, smoothing, add_k
        train = [int(t) for t in train]
        raw = {k: Counter(tuple(train[i - k + 1:i + 1]) for i in range(k - 1, len(train))) for k in range(1, n + 1)}
        self.adj = {k: dict(raw[k]) for k in raw}
        if smoothing == "kn":
            for k in range(1, n):
                cont = Counter()
                for gram in raw[k + 1]:          # one per distinct left extension
                    cont[gram[1:]] += 1
                self.adj[k] = dict(cont)
        self.disc, self.closed = {}, {}
        for k in range(1, n + 1):
            cc = Counter(self.adj[k].values())
            n1, n2, n3, n4 = (cc.get(j, 0) for j in (1, 2, 3, 4))
            d = None
            if n1 and n2 and n3:
                y = n1 / (n1 + 2 * n2)
                d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
                if not all(0 <= dj <= j for j, dj in zip((1, 2, 3), d)):
                    d = None
            self.closed[k] = d is not None
            self.disc[k] = (0.0,) + (d or (0.5, 1.0, 1.5))
        self.stats = {k: {} for k in range(1, n + 1)}     # h -> [total, N1, N2, N3+]
        for k, table in self.adj.items():
            for gram, a in table.items():
                s = self.stats[k].setdefault(gram[:-1], [0, 0, 0, 0])
                s[0] += a
                if a > 0:
                    s[min(a, 3)] += 1

    def prob(self, w, h):
        h = tuple(h)[max(0, len(h) - (self.n - 1)):]
        k = len(h) + 1
        s = self.stats[k].get(h, [0, 0, 0, 0])
        a = self.adj[k].get(h + (w,), 0)
        if self.smoothing == "add-k":
            return (a + self.k) / (s[0] + self.k * self.V)
        lower = 1 / self.V if k == 1 else self.prob(w, h[1:])
        if s[0] == 0:
            return lower
        if self.smoothing == "mle":
            return a / s[0]
        D = self.disc[k]
        gamma = (D[1] * s[1] + D[2] * s[2] + D[3] * s[3]) / s[0]
        return max(a - D[min(a, 3)], 0) / s[0] + gamma * lower

    def log_probs(self, ids):
        ids = [int(t) for t in ids]
        with np.errstate(divide="ignore"):
            return np.log([self.prob(ids[t], ids[max(0, t - self.n + 1):t]) for t in range(1, len(ids))])


@pytest.mark.parametrize("order", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kn_matches_reference(order, seed):
    rng = np.random.default_rng(seed)
    V = 25
    # a Zipf-like source (so every order has k-grams seen 1, 2, 3 times), token V-1 never used
    probs = np.append(1 / np.arange(1, V), 0.0)
    train = rng.choice(V, size=600, p=probs / probs.sum())
    test = rng.choice(V, size=200, p=np.full(V, 1 / V))
    model = fit(train, V, order, "kn")
    ref = ReferenceLM(train, V, order, "kn")
    assert any(ref.closed.values())                          # the closed-form discounts are exercised
    assert model.discounts == pytest.approx(np.array([ref.disc[k][1:] for k in range(1, order + 1)]), rel=1e-12)
    np.testing.assert_allclose(model.log_probs(test), ref.log_probs(test), rtol=1e-10, atol=1e-12)
    for t in range(0, 40, 3):
        context = test[t:t + order - 1 - (t % order)]
        expected = [ref.prob(w, context) for w in range(V)]
        np.testing.assert_allclose(model.distribution(context), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("smoothing", ["mle", "add-k"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_mle_add_k_match_reference(smoothing, order):
    rng = np.random.default_rng(order)
    V = 6
    train = rng.choice(V - 1, size=300)
    test = np.concatenate([train[-30:], rng.choice(V, size=50)])
    model = fit(train, V, order, smoothing, add_k=0.3)
    ref = ReferenceLM(train, V, order, smoothing, add_k=0.3)
    np.testing.assert_allclose(model.log_probs(test), ref.log_probs(test), rtol=1e-10, atol=1e-12)


# -- invariants ---------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(data=st.data(), order=st.integers(1, 4), smoothing=st.sampled_from(["mle", "add-k", "kn"]),
       vocab_size=st.integers(1, 8))
def test_every_conditional_distribution_sums_to_one(data, order, smoothing, vocab_size):
    train = data.draw(st.lists(st.integers(0, vocab_size - 1), min_size=1, max_size=60))
    model = fit(train, vocab_size, order, smoothing, add_k=data.draw(st.sampled_from([0.01, 0.5, 1.0, 3.0])))
    contexts = [train[max(0, i - order + 1):i] for i in range(len(train) + 1)]          # seen (and short)
    contexts += data.draw(st.lists(st.lists(st.integers(0, vocab_size - 1), max_size=order + 1), max_size=5))
    for context in contexts:
        p = model.distribution(context)
        assert p.shape == (vocab_size,) and p.dtype == np.float64
        assert np.all(p >= 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("smoothing", ["mle", "add-k", "kn"])
def test_log_probs_agree_with_distribution(smoothing):
    rng = np.random.default_rng(3)
    V = 9
    train, test = rng.choice(V - 1, size=500), rng.choice(V, size=60)
    model = fit(train, V, 3, smoothing)
    lp = model.log_probs(test)
    assert lp.shape == (59,) and lp.dtype == np.float64
    with np.errstate(divide="ignore"):
        expected = [np.log(model.distribution(test[max(0, t - 2):t])[test[t]]) for t in range(1, len(test))]
    np.testing.assert_allclose(lp, expected, rtol=1e-12)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.choice(12, size=800), rng.choice(12, size=100)
    for smoothing in ("mle", "add-k", "kn"):
        model = fit(train, 12, 4, smoothing, add_k=0.25)
        path = tmp_path / f"model-{smoothing}"               # no .npz suffix: the exact path is used
        model.save(path)
        assert path.exists()
        loaded = NGramLM.load(path)
        assert loaded.config == model.config and loaded.vocab_size == 12
        np.testing.assert_array_equal(loaded.log_probs(test), model.log_probs(test))
        np.testing.assert_array_equal(loaded.distribution([1, 2, 3]), model.distribution([1, 2, 3]))
        np.testing.assert_array_equal(loaded.discounts, model.discounts)


def test_load_rejects_bad_files(tmp_path):
    missing = tmp_path / "missing.npz"
    with pytest.raises(DataError, match="missing.npz"):
        NGramLM.load(missing)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(DataError, match="text.npz"):
        NGramLM.load(text)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.arange(3))
    with pytest.raises(DataError, match="other.npz"):
        NGramLM.load(other)
    good = tmp_path / "good.npz"
    fit(TOY, V_TOY, 2, "kn").save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match="truncated.npz"):
        NGramLM.load(truncated)
    with np.load(good) as z:
        arrays = dict(z)
    arrays["keys_2"] = arrays["keys_2"][::-1].copy()           # no longer sorted
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays)
    with pytest.raises(DataError, match="tampered.npz"):
        NGramLM.load(tampered)


def test_sample_is_deterministic_and_in_vocabulary():
    rng = np.random.default_rng(0)
    V = 10
    model = fit(rng.choice(V, size=400), V, 3, "kn")
    a = model.sample([1, 2], 50, np.random.default_rng(7))
    b = model.sample([1, 2], 50, np.random.default_rng(7))
    assert a.shape == (50,) and a.dtype == np.int32
    np.testing.assert_array_equal(a, b)
    assert np.all((0 <= a) & (a < V))
    assert not np.array_equal(a, model.sample([1, 2], 50, np.random.default_rng(8)))
    # temperature 0 is greedy: always the argmax of the distribution
    greedy = model.sample([1, 2], 5, np.random.default_rng(0), temperature=0.0)
    history = [1, 2]
    for token in greedy:
        assert token == np.argmax(model.distribution(history[-2:]))
        history.append(int(token))
    with pytest.raises(ConfigError):
        model.sample([1], 3, np.random.default_rng(0), temperature=-1.0)


def test_sample_never_draws_zero_probability_tokens():
    # MLE after "a" only ever saw "b": a sampled chain from TOY alternates within seen bigrams
    model = fit(TOY, V_TOY, 2, "mle")
    out = model.sample([0], 200, np.random.default_rng(1))
    seen = {(0, 1), (1, 0), (0, 2), (2, 0)}
    chain = [0] + out.tolist()
    assert all(pair in seen for pair in zip(chain, chain[1:]))
    assert 3 not in chain


@pytest.mark.parametrize("kwargs", [{"order": 0}, {"order": -2}, {"order": 2.5}, {"add_k": 0.0},
                                    {"add_k": -1.0}, {"add_k": float("nan")}, {"smoothing": "witten-bell"}])
def test_bad_config_raises(kwargs):
    with pytest.raises(ConfigError):
        NGramConfig(**kwargs).validate()
    with pytest.raises(ConfigError):
        NGramLM.fit(np.array(TOY), V_TOY, NGramConfig(**kwargs))


def test_bad_data_raises():
    with pytest.raises(DataError, match="outside the vocabulary"):
        NGramLM.fit(np.array([0, 1, 4]), 4, NGramConfig())
    with pytest.raises(DataError, match="empty"):
        NGramLM.fit(np.array([], np.int64), 4, NGramConfig())
    model = fit(TOY, V_TOY, 2, "kn")
    with pytest.raises(DataError, match="outside the vocabulary"):
        model.log_probs([0, 5])
    with pytest.raises(DataError, match="at least 2 tokens"):
        model.evaluate([0])


def test_short_training_stream():
    # fewer tokens than the order: every context is unseen and the model still normalises
    for smoothing in ("mle", "add-k", "kn"):
        model = fit([2], 3, 4, smoothing)
        for context in ([], [2], [2, 2], [0, 1, 2]):
            assert model.distribution(context).sum() == pytest.approx(1.0)
        assert model.log_probs([2, 2, 2]).shape == (2,)


# -- corpus statistics ---------------------------------------------------------------

def test_ngram_counts_and_top_ngrams():
    ids = [0, 1, 0, 2, 0, 1, 0, 1]
    grams, counts = ngram_counts(ids, 2)
    assert grams.tolist() == [[0, 1], [0, 2], [1, 0], [2, 0]]
    assert counts.tolist() == [3, 1, 2, 1]
    assert top_ngrams(ids, 1, 2) == [((0,), 4), ((1,), 3)]
    # ties broken in lexicographic order of the n-grams
    assert top_ngrams(ids, 2, 10) == [((0, 1), 3), ((1, 0), 2), ((0, 2), 1), ((2, 0), 1)]
    assert top_ngrams(ids, 3, 1) == [((0, 1, 0), 2)]
    assert top_ngrams(ids, 9, 3) == []


def test_zipf_plot_writes_png(tmp_path):
    from jaxseq.plots import zipf_plot

    rng = np.random.default_rng(0)
    ids = rng.zipf(1.5, size=2000) % 50
    out = zipf_plot(ids, tmp_path / "zipf.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DataError):
        zipf_plot(ids, tmp_path / "no" / "such" / "dir.png")


# -- NLTK, where the definitions agree ---------------------------------------------

def test_matches_nltk_mle_and_laplace_on_seen_contexts():
    lm = pytest.importorskip("nltk.lm")
    from nltk.util import bigrams

    rng = np.random.default_rng(5)
    V = 6                                       # ids 0..4 occur, 5 plays <unk>: NLTK's vocab also has V entries
    train = rng.choice(V - 1, size=300)
    words = [str(i) for i in train.tolist()]    # NLTK's vocabulary looks up strings
    ours = {"mle": fit(train, V, 2, "mle"), "add-k": fit(train, V, 2, "add-k")}
    theirs = {"mle": lm.MLE(2), "add-k": lm.Laplace(2)}
    for model in theirs.values():
        model.fit([list(bigrams(words))], vocabulary_text=words)
        assert len(model.vocab) == V
    for name in ours:
        for h in range(V - 1):
            expected = [theirs[name].score(str(w), [str(h)]) for w in range(V - 1)]
            np.testing.assert_allclose(ours[name].distribution([h])[:V - 1], expected, rtol=1e-12)
