"""BERT: masking, sentence pairs, the two-objective loss against float64, and the CLI end to end
(train mlm -> evaluate -> fill-mask -> train classify --init-from -> classify), exact resume on 4 devices."""

import json

import jax
import numpy as np
import pytest

from jaxseq import cli, train
from jaxseq.data import mlm as mlm_data
from jaxseq.data.labels import parse_labelled
from jaxseq.data.vocab import Vocab
from jaxseq.errors import DataError
from jaxseq.tasks import classify, mlm, runner

WORDS = ("time traveller machine future past river city light night day walk read write sees hears knows "
         "small large old young green red quiet loud").split()


def _corpus(paragraphs=60, seed=0) -> str:
    """Paragraphs of short sentences built from a small grammar (blank lines between paragraphs)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(paragraphs):
        sentences = []
        for _ in range(rng.integers(2, 5)):
            words = ["the", *rng.choice(WORDS[14:], 1), *rng.choice(WORDS[:12], 1), *rng.choice(WORDS[8:14], 1),
                     "the", *rng.choice(WORDS[:8], rng.integers(1, 4))]
            sentences.append(" ".join(words) + ".")
        out.append(" ".join(sentences))
    return "\n\n".join(out) + "\n"


def _vocab(n=40) -> Vocab:
    return Vocab(list(mlm_data.MLM_RESERVED) + [f"w{i}" for i in range(n)])


# -- data -----------------------------------------------------------------------------------

def test_masking_is_15_percent_80_10_10_and_never_special():
    vocab = _vocab()
    sp = mlm_data.Specials(vocab)
    rng = np.random.default_rng(0)
    n, t = 4000, 32
    lengths = rng.integers(8, t + 1, size=n)
    tokens = np.full((n, t), sp.pad, np.int32)
    for i, length in enumerate(lengths):
        tokens[i, :length] = rng.choice(sp.ordinary, size=length)
        tokens[i, 0], tokens[i, length // 2], tokens[i, length - 1] = sp.cls, sp.sep, sp.sep
    p = 5
    masked, positions, targets, weights = mlm_data.mask_tokens(tokens, lengths, 0.15, p, sp, rng)
    used = weights > 0
    rows = np.repeat(np.arange(n)[:, None], p, 1)
    chosen = tokens[rows[used], positions[used]]
    # never a special token, never past the valid length, each position once, targets the original tokens
    assert not np.isin(chosen, [sp.pad, sp.cls, sp.sep, sp.mask]).any()
    assert (positions[used] < np.repeat(lengths[:, None], p, 1)[used]).all()
    for i in range(200):
        assert len(set(positions[i][used[i]])) == used[i].sum()
    np.testing.assert_array_equal(targets[used], chosen)
    # m = min(P, max(1, round(0.15 n_candidates))) per row
    candidates = lengths - 3
    np.testing.assert_array_equal(used.sum(1), np.minimum(p, np.maximum(1, np.rint(0.15 * candidates))))
    # 80% <mask>, 10% random, 10% kept (a random draw equal to the original counts as kept)
    after = masked[rows[used], positions[used]]
    share_mask = np.mean(after == sp.mask)
    share_kept = np.mean(after == chosen)
    k = len(sp.ordinary)
    assert abs(share_mask - 0.8) < 0.015
    assert abs(share_kept - (0.1 + 0.1 / k)) < 0.01
    assert not np.isin(after[(after != sp.mask)], [sp.pad, sp.cls, sp.sep, vocab.unk]).any()
    # nothing else changes
    untouched = np.ones_like(tokens, bool)
    untouched[rows[used], positions[used]] = False
    np.testing.assert_array_equal(masked[untouched], tokens[untouched])


def test_pairs_truncation_nsp_half_true_fixed_heldout_and_resumable_batches(tmp_path):
    for la, lb, room in [(10, 10, 7), (3, 10, 7), (10, 3, 6), (10, 4, 7), (4, 10, 7), (2, 3, 9)]:
        a, b = la, lb
        while a + b > room:                      # BERT's truncate_seq_pair
            if b > a:
                b -= 1
            else:
                a -= 1
        assert mlm_data.pair_lengths(la, lb, room) == (a, b)
    path = tmp_path / "corpus.txt"
    path.write_text(_corpus())
    config = mlm_data.MLMDataConfig(data=str(path), seq_len=16, batch_size=8, min_freq=1)
    corpus = mlm_data.load_mlm_corpus(config)
    assert corpus.vocab.idx_to_token[:5] == list(mlm_data.MLM_RESERVED)
    batches = mlm_data.MLMBatches(corpus.train, corpus.vocab, config, seed=3)
    labels, firsts = [], []
    sp = mlm_data.Specials(corpus.vocab)
    for _ in range(3 * batches.batches_per_epoch):
        b = next(batches)
        labels.append(b["nsp_labels"])
        firsts.append(b)
        assert ((b["tokens"][:, 0] == sp.cls) & (b["segments"][:, 0] == 0)).all()
    labels = np.concatenate(labels)
    assert abs(labels.mean() - 0.5) < 0.06 and len(labels) > 300
    # a true pair's B is the sentence after A (read back from the unmasked inputs of a --mask-prob-free look)
    pair_ids = np.arange(len(corpus.train.pairs))
    ex = mlm_data.make_examples(corpus.train, pair_ids, config, sp, np.random.default_rng(1))
    for row in np.flatnonzero(ex["nsp_labels"])[:20]:
        tokens = ex["tokens"][row].copy()
        tokens[ex["mlm_positions"][row][ex["mlm_weights"][row] > 0]] = ex["mlm_targets"][row][ex["mlm_weights"][row] > 0]
        a, b = corpus.train.pairs[row]
        want, _, _ = mlm_data.pack_pair(corpus.train.sentences[a], corpus.train.sentences[b], 16, sp)
        np.testing.assert_array_equal(tokens, want)
    # resume: the batch after set_state is the batch an uninterrupted iterator gives
    fresh = mlm_data.MLMBatches(corpus.train, corpus.vocab, config, seed=3)
    fresh.set_state({"epoch": 2, "index": 1})
    expect = firsts[2 * batches.batches_per_epoch + 1]
    for k, v in next(fresh).items():
        np.testing.assert_array_equal(v, expect[k])
    # the held-out masks depend on --valid-seed only
    one = mlm_data.eval_batches(corpus.valid, corpus.vocab, config)
    two = mlm_data.eval_batches(corpus.valid, corpus.vocab, config)
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(one, two) for k in x)
    n_real = sum(int(b["nsp_weights"].sum()) for b in one)
    assert n_real == len(corpus.valid.pairs)
    # fill-mask with word tokens: each <mask> is one word's slot, the words around it looked up
    run = mlm.resolve(data=str(path), seq_len=16, min_freq=1)
    ids, positions = mlm.encode_masked_text(run, corpus.vocab, "The <mask> traveller <mask>")
    np.testing.assert_array_equal(ids, [sp.cls, corpus.vocab.index("the"), sp.mask, corpus.vocab.index("traveller"),
                                        sp.mask, sp.sep])
    np.testing.assert_array_equal(positions, [2, 4])


def test_too_few_sentences_and_bad_tsv_are_one_line_errors(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("Just one sentence here\n\nAnd another paragraph\n")
    with pytest.raises(DataError, match="no paragraph with two consecutive sentences"):
        mlm_data.load_mlm_corpus(mlm_data.MLMDataConfig(data=str(path)))
    with pytest.raises(DataError, match=r"x.tsv:2: no tab"):
        parse_labelled("a\tgood line\nbad line\n", "x.tsv")
    with pytest.raises(DataError, match=r"x.tsv:2: 3 fields, but line 1 has 2"):
        parse_labelled("a\tone\nb\tone\ttwo\n", "x.tsv")
    with pytest.raises(DataError, match=r"x.tsv:1: empty label"):
        parse_labelled("\ttext\n", "x.tsv")
    assert [e.b for e in parse_labelled("a\tx\ty\n\nb\tz\tw\n", "x.tsv")] == ["y", "w"]
    assert classify.classification_scores([0, 0, 1, 1], [0, 1, 1, 1]) == {
        "accuracy": 0.75, "macro_f1": pytest.approx(np.mean([2 / 3, 0.8]))}


# -- the loss --------------------------------------------------------------------------------

def test_two_objective_loss_matches_float64_on_masked_positions_only():
    run = mlm.resolve(seq_len=12, batch_size=4, d_model=16, heads=2, ffn=32, layers=1, mask_prob=0.25,
                      devices=1)
    model = run.spec.build(run, (30,))
    rng = np.random.default_rng(0)
    batch = {**mlm.TASK.example_batch(run)}
    batch["tokens"] = rng.integers(5, 30, size=(4, 12)).astype(np.int32)
    batch["valid_len"] = np.array([12, 9, 7, 12], np.int32)
    batch["mlm_positions"] = rng.integers(1, 7, size=(4, 3)).astype(np.int32)
    batch["mlm_targets"] = rng.integers(5, 30, size=(4, 3)).astype(np.int32)
    batch["mlm_weights"] = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 1]], np.float32)
    batch["nsp_labels"] = np.array([1, 0, 0, 1], np.int32)
    batch["nsp_weights"] = np.array([1, 1, 1, 0], np.float32)
    params = train.init_params(model, batch, 0)
    apply = jax.jit(lambda p, b: model.apply({"params": p}, b)[0])
    out = apply(params, batch)
    assert out["mlm"].shape == (4, 3, 30) and out["nsp"].shape == (4, 2)
    objective = jax.jit(lambda o, b: train._objective(train.objectives(model), o, b, 0.0))
    loss, nll, count = objective(out, batch)

    def mean_nll(logits, targets, weights):
        logits = np.asarray(logits, np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        picked = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
        return -(picked * weights).sum(), weights.sum()

    m_sum, m_count = mean_nll(out["mlm"], batch["mlm_targets"], batch["mlm_weights"])
    n_sum, n_count = mean_nll(out["nsp"], batch["nsp_labels"], batch["nsp_weights"])
    np.testing.assert_allclose(float(loss), m_sum / m_count + n_sum / n_count, rtol=1e-5)
    np.testing.assert_allclose((float(nll), float(count)), (m_sum, m_count), rtol=1e-5)
    # targets at weight-0 slots do not count
    other = dict(batch, mlm_targets=np.where(batch["mlm_weights"] > 0, batch["mlm_targets"], 7).astype(np.int32))
    assert float(objective(out, other)[0]) == pytest.approx(float(loss))
    # padding keys (past valid_len) do not change the outputs of a row
    padded = dict(batch, tokens=batch["tokens"].copy())
    padded["tokens"][2, 7:] = 3
    out2 = apply(params, padded)
    np.testing.assert_allclose(out2["mlm"][2], out["mlm"][2], rtol=1e-5, atol=1e-6)


# -- the CLI end to end, resume, 4 devices ----------------------------------------------------

# one shape for both CLI tests (4 devices, no dropout, byte-level BPE), so the second compiles nothing new
# (the word path is read through the data layer and fill-mask's encoder in the tests above)
TINY = ["--seq-len", "16", "--batch-size", "8", "--d-model", "16", "--heads", "2", "--ffn", "32", "--layers", "1",
        "--min-freq", "1", "--eval-every", "0", "--log-every", "2", "--checkpoint-every", "3", "--no-progress",
        "--dropout", "0", "--devices", "4", "--tokens", "bpe", "--vocab-size", "300"]


def test_cli_pretrain_fill_mask_finetune_classify(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_corpus())
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    assert cli.main(["train", "mlm", "--data", corpus, "--workdir", pre, "--steps", "6", *TINY]) == 0
    assert (pre / "tokenizer.json").exists()
    run, vocabs = runner.load_run(pre, mlm.TASK)
    vocab = vocabs["vocab.json"]
    assert len(vocab) == 300 and vocab.idx_to_token[:5] == list(mlm_data.MLM_RESERVED)
    # the space before a mask is dropped, the word after it keeps its own: encode("the") <mask> encode(" traveller")
    ids, positions = mlm.encode_masked_text(run, vocab, "the <mask> traveller")
    sp = mlm_data.Specials(vocab)
    np.testing.assert_array_equal(ids, [sp.cls, *vocab.encode_text("the"), sp.mask,
                                        *vocab.encode_text(" traveller"), sp.sep])
    assert ids[positions[0]] == sp.mask and vocab.decode_text(ids) == "the traveller"
    # a literal <mask> through the tokenizer is ordinary bytes, never the mask id
    assert sp.mask not in vocab.encode_text("the <mask> traveller").tolist()
    assert cli.main(["evaluate", "--workdir", pre]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["step"] == 6 and 0 <= scores["mlm_accuracy"] <= 1 and scores["pairs"] > 0
    results = json.loads((pre / "results.json").read_text())
    assert results["valid"]["nll"] == pytest.approx(scores["nll"], rel=1e-5)
    assert results["valid"]["mlm_accuracy"] == pytest.approx(scores["mlm_accuracy"])
    assert "mlm_accuracy_most_frequent" in results["baseline"]

    filled = mlm.fill_mask(pre, ["the <mask> traveller"], top_k=3)[0]
    probs = [p for _, p in filled.choices[0]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    assert filled.best() == f"the {filled.choices[0][0][0]} traveller"
    assert not any(token.startswith(" ") for token, _ in filled.choices[0])      # leading space stripped
    assert cli.main(["fill-mask", "--workdir", pre, "the <mask> traveller", "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == filled.best() and lines[1].startswith("  <mask> 1: ")
    assert cli.main(["fill-mask", "--workdir", pre, "no mask here"]) == 1
    assert "write the token to fill as <mask>" in capsys.readouterr().err

    labels = tmp_path / "labels.tsv"
    rng = np.random.default_rng(0)
    labels.write_text("".join(f"{'pos' if i % 2 else 'neg'}\tthe {'green' if i % 2 else 'red'} "
                              f"{rng.choice(WORDS[:8])} walk\n" for i in range(48)))
    assert cli.main(["train", "classify", "--init-from", pre, "--data", labels, "--workdir", fine, "--steps", "4",
                     "--batch-size", "8", "--eval-every", "0", "--log-every", "2", "--no-progress",
                     "--devices", "1"]) == 0
    out = capsys.readouterr().out
    assert "initialised" in out and "from scratch" not in out
    saved = json.loads((fine / "config.json").read_text())
    assert (saved["bert"]["d_model"], saved["data"]["seq_len"]) == (16, 16)          # taken from the MLM run
    assert (saved["data"]["tokens"], saved["data"]["vocab_size"]) == ("bpe", 300)
    assert (fine / "tokenizer.json").read_text() == (pre / "tokenizer.json").read_text()
    # the encoder starts from the pretrained weights: step 0 of a --steps 0 run would be them; compare the
    # untouched segment table row of segment 1 (only pair inputs use it; these are single texts)
    pre_params = runner.load(pre, mlm.TASK).params["encoder"]
    fine_params = runner.load(fine, classify.TASK).params["encoder"]
    np.testing.assert_allclose(fine_params["segment"]["embedding"][1], pre_params["segment"]["embedding"][1],
                               rtol=1e-2, atol=1e-3)
    assert cli.main(["classify", "--workdir", fine, "the green time walk", "the red day walk"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 2 and all(r.split(",")[0].split()[0] in ("pos", "neg") for r in rows)
    assert cli.main(["evaluate", "--workdir", fine]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(scores) >= {"accuracy", "macro_f1", "loss"} and scores["examples"] == 10
    # --init-from a run that is not a masked-LM run, or an encoder of another shape: refused in one line
    assert cli.main(["train", "classify", "--init-from", fine, "--data", labels, "--workdir", tmp_path / "x"]) == 1
    assert "not a masked-LM run" in capsys.readouterr().err
    assert cli.main(["train", "classify", "--init-from", pre, "--data", labels, "--d-model", "32",
                     "--workdir", tmp_path / "y"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has shape (16,) there and (32,) here" in err
    assert not (tmp_path / "y").exists()
    # another tokenizer than the pretraining run's, or an edited tokenizer file: refused in one line
    assert cli.main(["train", "classify", "--init-from", pre, "--data", labels, "--tokens", "word",
                     "--workdir", tmp_path / "z"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pretrained with --tokens bpe" in err and not (tmp_path / "z").exists()
    edited = json.loads((fine / "tokenizer.json").read_text())
    edited["model"]["vocab"] = {t: i for i, t in enumerate(reversed(list(edited["model"]["vocab"])))}
    (fine / "tokenizer.json").write_text(json.dumps(edited))
    assert cli.main(["classify", "--workdir", fine, "the green time walk"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokenizer.json" in err


def _params(workdir):
    return jax.device_get(runner.load(workdir, mlm.TASK).params)


def test_resume_on_four_devices_is_exact(tmp_path, capsys):
    """Three steps, then --resume to six, on 4 forced CPU devices: the very parameters of six straight steps
    (the masks and next sentences of every batch come back with the iterator position)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_corpus())
    base = ["train", "mlm", "--data", corpus, *TINY]
    assert cli.main([*base, "--workdir", tmp_path / "straight", "--steps", "6"]) == 0
    assert cli.main([*base, "--workdir", tmp_path / "split", "--steps", "3"]) == 0
    assert cli.main(["train", "mlm", "--workdir", tmp_path / "split", "--resume", "--steps", "6",
                     "--no-progress"]) == 0
    straight, split = _params(tmp_path / "straight"), _params(tmp_path / "split")
    for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(split)):
        np.testing.assert_array_equal(a, b)
    # --tensor: refused in one line (the encoder has no tensor-parallel axes declared)
    assert cli.main([*base, "--workdir", tmp_path / "tensor", "--steps", "6", "--tensor", "2"]) == 1
    assert "--tensor 2: --model bert has no tensor-parallel axes" in capsys.readouterr().err
    valid = [json.loads((tmp_path / name / "results.json").read_text())["valid"] for name in ("split", "straight")]
    assert [{k: v for k, v in d.items() if k != "wall_time"} for d in valid[:1]] == [
        pytest.approx({k: v for k, v in valid[1].items() if k != "wall_time"}, rel=1e-6)]

