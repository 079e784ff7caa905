"""Translation at scale through the CLI: token-budget batches, checkpoint averaging, length penalty,
--max-len-a/b, chrF, file translation, early stopping on validation BLEU, tied embeddings."""

import json
import shutil
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import cli, decode, metrics
from jaxseq.data import translation as tr
from jaxseq.data.vocab import DEFAULT_RESERVED, Vocab
from jaxseq.tasks import runner
from jaxseq.tasks import translate as translate_task

WORDS = [("one", "un"), ("two", "deux"), ("cat", "chat"), ("dog", "chien"), ("big", "gros"), ("the", "le"),
         ("and", "et"), ("small", "petit")]
SMALL = ["--model", "transformer", "--d-model", "16", "--heads", "2", "--ffn", "32", "--layers", "1",
         "--dropout", "0", "--min-freq", "1", "--max-len", "8", "--buckets", "step8", "--batch-size", "8",
         "--lr", "0.02", "--warmup", "0", "--schedule", "constant", "--log-every", "10", "--no-progress", "--beam", "1",
         "--examples", "0"]


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """24 word-for-word pairs of 1-4 words (a fixed seed)."""
    rng = np.random.default_rng(0)
    lines = set()
    while len(lines) < 24:
        picks = [WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(1, 5))]
        lines.add(" ".join(s for s, _ in picks) + "\t" + " ".join(t for _, t in picks))
    path = tmp_path_factory.mktemp("scale") / "pairs.tsv"
    path.write_text("".join(line + "\n" for line in sorted(lines)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pairs_file):
    """A tied-output Transformer on --batch-tokens batches, validated by BLEU every 10 steps with --patience 2,
    the last 3 checkpoints averaged at the end (--average-last 3)."""
    workdir = tmp_path_factory.mktemp("runs") / "scale"
    code = cli.main(["train", "translate", "--data", pairs_file, *SMALL, "--batch-tokens", "96",
                     "--tie-embeddings", "output", "--valid-fraction", "0.25", "--test-fraction", "0",
                     "--steps", "400", "--eval-every", "10", "--checkpoint-every", "10", "--keep", "40",
                     "--keep-best", "--best-metric", "bleu", "--patience", "2", "--average-last", "3",
                     "--workdir", workdir])
    assert code == 0
    return workdir


# -- token-budget batches ----------------------------------------------------------------

def test_token_batches_cover_each_pair_once_within_the_budget_and_resume_exactly():
    pairs = tr.encode_pairs([tr.Pair(["w"] * n, ["v"] * m, 0) for n in range(1, 20) for m in (1, 9, 19)],
                            Vocab.build(["w"], reserved_tokens=DEFAULT_RESERVED),
                            Vocab.build(["v"], reserved_tokens=DEFAULT_RESERVED), 24)
    batches = tr.TokenBatches(pairs, batch_tokens=200, seed=3, widths=(8, 16, 24), devices=2)
    assert batches.shapes == [(12, 8), (6, 16), (4, 24)]      # floor(200 / 2w / 2) * 2 rows, one shape a width
    seen = Counter()
    for _ in range(batches.batches_per_epoch):
        b = next(batches)
        rows, width = b["src"].shape
        assert b["tgt_out"].shape == (rows, width) and rows * 2 * width <= 200 and rows % 2 == 0
        real = b["index"][b["index"] >= 0]
        assert (np.maximum(pairs.src_len[real], pairs.tgt_len[real]) > width - 8).all()   # the smallest width
        seen.update(real.tolist())
    assert seen == Counter(range(len(pairs)))                  # every pair exactly once per epoch
    slots = sum(r * 2 * w * batches._counts[w] for r, w in batches.shapes)
    assert batches.nonpad_fraction == pytest.approx((pairs.src_len.sum() + pairs.tgt_len.sum()) / slots)
    straight = tr.TokenBatches(pairs, batch_tokens=200, seed=3, widths=(8, 16, 24), devices=2)
    run = [next(straight) for _ in range(2 * straight.batches_per_epoch + 3)]
    resumed = tr.TokenBatches(pairs, batch_tokens=200, seed=3, widths=(8, 16, 24), devices=2)
    resumed.set_state({"epoch": 1, "index": 5})
    again = [next(resumed) for _ in range(straight.batches_per_epoch - 2)]
    for a, b in zip(run[straight.batches_per_epoch + 5:], again):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    host = tr.TokenBatches(pairs, batch_tokens=200, seed=3, widths=(8, 16, 24), devices=2, shard=(1, 2))
    full = tr.TokenBatches(pairs, batch_tokens=200, seed=3, widths=(8, 16, 24), devices=2)
    a, b = next(host), next(full)
    assert np.array_equal(a["src"], b["src"][len(b["src"]) // 2:])   # host 1 of 2: the second half of the rows


@pytest.mark.parametrize("flags, message", [
    (["--batch-tokens", "10"], "--batch-tokens 10 is smaller than the longest allowed pair: 16 tokens"),
    (["--batch-tokens", "40"], "on each of the 4 devices (4 x 16 = 64)"),
    (["--tie-embeddings", "all"], "--tie-embeddings all shares one embedding table between the languages, but "
                                  "their vocabularies differ"),
    (["--tie-embeddings", "output", "--model", "bahdanau"], "--tie-embeddings output is for the transformer"),
    (["--average-last", "5", "--keep", "3"], "--average-last 5 averages checkpoints that --keep 3 deletes"),
])
def test_bad_scale_flags_give_one_line_before_training(pairs_file, tmp_path, capsys, flags, message):
    small = SMALL[8:] if "bahdanau" in flags else SMALL          # without the transformer's sizes
    code, out, err = run_cli(capsys, "train", "translate", "--data", pairs_file, *small, "--steps", "1", *flags,
                             "--workdir", tmp_path / "w")
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_token_budget_run_logs_its_non_padding_fraction(trained, capsys):
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    fractions = [r["nonpad_fraction"] for r in records if r["split"] == "train"]
    assert fractions and all(0.2 < f <= 1.0 for f in fractions)


# -- tied embeddings -----------------------------------------------------------------------

def test_tied_embeddings_share_the_tables_and_the_output_projection(trained):
    loaded = runner.load(trained, translate_task.TASK)
    params = loaded.params                                              # --tie-embeddings output
    assert "out" not in params and {"src_embedder", "tgt_embedder"} <= set(params)
    for tie, tables in (("all", {"embedder"}), ("none", {"src_embedder", "tgt_embedder", "out"})):
        model = translate_task.build_translation_model("transformer", 12, 12, d_model=16, heads=2, ffn=32,
                                                       layers=1, max_len=8, tie_embeddings=tie)
        batch = {"src": jnp.zeros((2, 8), jnp.int32), "src_len": jnp.full((2,), 8, jnp.int32),
                 "tgt_in": jnp.zeros((2, 8), jnp.int32)}
        shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch)["params"])   # nothing compiled
        assert tables <= set(shapes) and not ({"src_embedder", "embedder", "out"} - tables) & set(shapes)
    model, p = loaded.model, loaded.params
    batch = {"src": np.array([[3, 4, 2, 0, 0, 0, 0, 0]], np.int32), "src_len": np.array([3], np.int32),
             "tgt_in": np.array([[1, 5, 6, 0, 0, 0, 0, 0]], np.int32)}
    logits, _ = model.apply({"params": p}, batch)
    memory, src_len = model.apply({"params": p}, batch, method="encode")
    y = model.apply({"params": p}, batch, memory, src_len, method=lambda m, b, mem, sl: m.decoder(
        m.tgt_embedder(b["tgt_in"]), memory=mem, memory_valid_lens=sl))
    table = np.asarray(p["tgt_embedder"]["embed"]["embedding"], np.float64)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(y, np.float64) @ table.T, rtol=1e-4, atol=1e-5)


# -- early stopping and the best checkpoint ------------------------------------------------

def test_patience_stops_early_and_keeps_the_best_bleu_checkpoint(trained, tmp_path, capsys):
    results = json.loads((trained / "results.json").read_text())
    valid = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in valid if r["split"] == "valid"]
    assert results["step"] < 400 and results["step"] == valid[-1]["step"] and results["stopped_early"]
    bleus = [r["bleu"] for r in valid]
    best = int(np.argmax(bleus))                 # the first best; then --patience 2 validations without a better one
    assert len(bleus) == best + 3 and max(bleus[best + 1:]) <= bleus[best]
    assert all(0 <= r["chrf"] <= 100 for r in valid)
    code, out, _ = run_cli(capsys, "evaluate", "--workdir", trained, "--checkpoint", "best", "--split", "valid")
    scores = last_json(out)
    assert code == 0 and scores["step"] == valid[best]["step"] and scores["bleu"] == pytest.approx(bleus[best])
    assert scores["data"].endswith("(validation split)") and scores["checkpoint"] == "best"
    code, _, err = run_cli(capsys, "evaluate", "--workdir", trained, "--split", "test")
    assert code == 1 and "the run has no test split (--test-fraction 0)" in err and err.count("\n") == 1
    unaveraged = tmp_path / "unaveraged"                  # the fixture averaged at the end (--average-last)
    shutil.copytree(trained, unaveraged, ignore=shutil.ignore_patterns("averaged"))
    code, _, err = run_cli(capsys, "evaluate", "--workdir", unaveraged, "--checkpoint", "averaged")
    assert code == 1 and "no averaged checkpoint in this run; write one with `jaxseq average" in err


# -- checkpoint averaging ------------------------------------------------------------------

def _copy_step(workdir, step: int, new: int):
    shutil.copytree(workdir / "checkpoints" / str(step), workdir / "checkpoints" / str(new))


def test_average_of_identical_checkpoints_is_the_same_model(trained, tmp_path, capsys):
    workdir = tmp_path / "copy"
    shutil.copytree(trained, workdir)
    step = json.loads((trained / "results.json").read_text())["step"]
    _copy_step(workdir, step, step + 1000)
    code, out, _ = run_cli(capsys, "average", "--workdir", workdir, "--steps", f"{step},{step + 1000}")
    assert code == 0 and f"checkpoints/averaged/{step + 1000}" in out
    one = runner.load(workdir, translate_task.TASK, checkpoint=str(step))
    avg = runner.load(workdir, translate_task.TASK, checkpoint="averaged")
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)),
                                                         one.params, avg.params))     # the same model, bit for bit
    # the mean of different checkpoints, against NumPy
    steps = sorted(int(p.name) for p in (trained / "checkpoints").iterdir() if p.name.isdigit())[:2]
    code, _, _ = run_cli(capsys, "average", "--workdir", workdir, "--steps", ",".join(map(str, steps)))
    assert code == 0
    trees = [runner.load(workdir, translate_task.TASK, checkpoint=str(s)).params for s in steps]
    avg = runner.load(workdir, translate_task.TASK, checkpoint="averaged").params
    for path_leaves in zip(*(jax.tree_util.tree_leaves(t) for t in trees), jax.tree_util.tree_leaves(avg)):
        *parts, mean = (np.asarray(x, np.float64) for x in path_leaves)
        assert not np.array_equal(parts[0], parts[1]) or not parts[0].any()     # different checkpoints
        np.testing.assert_allclose(mean, sum(parts) / 2, rtol=1e-6, atol=1e-7)


def test_average_last_reports_the_mean_of_the_last_checkpoints(trained):
    results = json.loads((trained / "results.json").read_text())
    saved = sorted(int(p.name) for p in (trained / "checkpoints").iterdir() if p.name.isdigit())
    averaged = results["averaged"]
    assert averaged["steps"] == saved[-3:] and saved[-1] == results["step"]
    assert set(averaged["valid"]) >= {"bleu", "chrf", "exact"}        # scored like the last checkpoint
    trees = [runner.load(trained, translate_task.TASK, checkpoint=str(s)).params for s in saved[-3:]]
    avg = runner.load(trained, translate_task.TASK, checkpoint="averaged").params
    for *parts, mean in zip(*(jax.tree_util.tree_leaves(t) for t in trees), jax.tree_util.tree_leaves(avg)):
        np.testing.assert_allclose(np.asarray(mean, np.float64), sum(np.asarray(p, np.float64) for p in parts) / 3,
                                   rtol=1e-6, atol=1e-7)


def test_average_last_is_refused_where_the_report_cannot_score_it(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "lm", "--model", "rnn", "--steps", "2", "--average-last", "2",
                           "--workdir", tmp_path / "lm")
    assert code == 1 and err.count("\n") == 1 and "--average-last is for translation runs" in err, err
    assert not (tmp_path / "lm" / "checkpoints").exists()


# -- defaults on the user's own pairs --------------------------------------------------------

def test_transformer_defaults_scale_to_a_data_file():
    """On a file the Transformer trains as on a real corpus; flags given win; the dates task is untouched."""
    run = translate_task.resolve(model="transformer", data="pairs.tsv", tokens="bpe", time_limit=2700)
    assert (run.data.batch_tokens, run.data.buckets, run.data.max_len) == (4096, "step4", 32)
    assert (run.data.valid_max, run.data.test_max, run.data.joint_vocab) == (1000, 5000, True)
    assert (run.model.tie_embeddings, run.model.dropout) == ("all", 0.1)
    assert (run.optim.schedule, run.optim.lr, run.optim.warmup) == ("rsqrt", 2e-3, 500)
    assert (run.train.epochs, run.train.steps, run.train.average_last, run.train.keep) == (100, None, 3, 3)
    given = translate_task.resolve(model="transformer", data="pairs.tsv", batch_size=128, valid_fraction=0.2,
                                   tokens="bpe", joint_vocab=False, steps=50, dropout=0.3)
    assert given.data.batch_tokens is None and given.data.valid_max is None and given.data.test_max == 5000
    assert not given.data.joint_vocab and given.model.tie_embeddings == "none"
    assert (given.train.steps, given.train.epochs, given.model.dropout) == (50, None, 0.3)
    words = translate_task.resolve(model="transformer", data="pairs.tsv")
    assert words.model.tie_embeddings == "none" and not words.data.joint_vocab and words.train.epochs == 10
    for run in (translate_task.resolve(model="transformer"), translate_task.resolve(model="bahdanau",
                                                                                     data="pairs.tsv")):
        assert run.data.batch_tokens is None and run.train.average_last == 0 and run.optim.schedule == "constant"


def test_split_caps_keep_the_pairs_a_fraction_would_pick():
    assert tr.split_sizes(162130, 0.1, 0.1, 1000, 5000) == (156130, 1000, 5000)
    assert tr.split_sizes(300, 0.1, 0.1, 1000, 5000) == (240, 30, 30)         # a small file: the fractions
    pairs = [tr.Pair([f"s{i}"], [f"t{i}"], i + 1) for i in range(200)]
    capped = tr.split_pairs(pairs, valid_fraction=0.5, test_fraction=0.3, valid_max=10, test_max=20, seed=4)
    counted = tr.split_pairs(pairs, valid_fraction=0.05, test_fraction=0.1, seed=4)
    assert capped == counted and [len(part) for part in capped] == [170, 10, 20]


@pytest.mark.parametrize("field, value, message", [
    (("model", "transformer", "d_model"), 32, "model transformer.d_model: checkpoint 32 vs now 16"),
    (("vocab", "tgt_vocab.json"), "0" * 64, "another vocabulary (vocab tgt_vocab.json"),
])
def test_averaging_refuses_checkpoints_of_another_model(trained, tmp_path, capsys, field, value, message):
    workdir = tmp_path / "mixed"
    shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns("averaged"))     # none yet
    step = json.loads((trained / "results.json").read_text())["step"]
    _copy_step(workdir, step, 9999)
    path = workdir / "checkpoints" / "9999" / "manifest" / "metadata"
    manifest = json.loads(path.read_text())
    node = manifest
    for key in field[:-1]:
        node = node[key]
    node[field[-1]] = value
    path.write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, "average", "--workdir", workdir, "--last", "2")
    assert code == 1 and err.count("\n") == 1 and message in err and "step 9999" in err, err
    assert not (workdir / "checkpoints" / "averaged").exists()
    code, _, err = run_cli(capsys, "average", "--workdir", workdir, "--last", "99")
    assert code == 1 and "--last 99: the run has only" in err


# -- decoding ------------------------------------------------------------------------------

def test_beam_scores_follow_the_gnmt_length_penalty(trained):
    loaded = runner.load(trained, translate_task.TASK)
    vocab = loaded.vocabs[translate_task.TGT]
    batch = {"src": np.array([[3, 4, 2, 0, 0, 0, 0, 0], [5, 2, 0, 0, 0, 0, 0, 0], [6, 7, 8, 9, 2, 0, 0, 0]],
                             np.int32), "src_len": np.array([3, 2, 5], np.int32)}
    alpha = 0.8         # (B, S, beam, max_len) as in the file test below: one compilation for both
    out = decode.beam_search(loaded.model, loaded.params, batch, bos=vocab.bos, eos=vocab.eos, max_len=8, beam=2,
                             alpha=alpha)
    lengths = np.asarray(out.lengths, np.float64)
    np.testing.assert_allclose(np.asarray(out.scores, np.float64),
                               np.asarray(out.log_probs, np.float64) / ((5 + lengths) / 6) ** alpha, rtol=1e-6)
    # log P(y | x) of the chosen outputs, teacher-forced, in NumPy
    tokens = np.asarray(out.tokens)
    tgt_in = np.concatenate([np.full((3, 1), vocab.bos), tokens[:, :-1]], axis=1).astype(np.int32)
    logits, _ = loaded.model.apply({"params": loaded.params}, dict(batch, tgt_in=jnp.asarray(tgt_in)))
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
    mask = np.arange(tokens.shape[1])[None] < lengths[:, None]
    np.testing.assert_allclose((picked * mask).sum(1), np.asarray(out.log_probs), rtol=1e-4, atol=1e-4)


def test_max_len_a_b_and_output_limit(trained, tmp_path, capsys):
    assert translate_task.output_limit(object(), 16, 5, 1.5) == 29            # floor(1.5 x 16 + 5)
    model = runner.load(trained, translate_task.TASK).model
    assert translate_task.output_limit(model, 16, 5, 1.5) == 8                # the model's 8 positions
    assert translate_task.output_limit(model, 8, 2, 0.0) == 2
    source = tmp_path / "in.txt"
    source.write_text("one big dog and two cats\nthe cat\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "translate", "--workdir", trained, "--file", source, "--max-len-a", "0.125",
                           "--max-len-b", "1")                              # floor(0.125 x 8 + 1) = 2 tokens
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and all(len(line.split()) <= 2 for line in lines), lines


def test_file_translation_keeps_empty_lines_in_place(trained, tmp_path, capsys):
    source, target = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("one cat\n\nthe big dog\n   \r\ntwo dogs\n\n", encoding="utf-8")
    code, _, err = run_cli(capsys, "translate", "--workdir", trained, "--file", source, "--out", target,
                           "--beam", "2", "--length-penalty", "1.0")
    lines = target.read_text(encoding="utf-8").split("\n")
    assert code == 0 and len(lines) == 7 and lines[-1] == ""                  # six lines, each ended by \n
    assert lines[1] == lines[3] == lines[5] == ""
    code, out, _ = run_cli(capsys, "translate", "--workdir", trained, "--beam", "2", "--alpha", "1.0", "one cat",
                           "the big dog", "two dogs")
    assert code == 0 and out.splitlines() == [lines[0], lines[2], lines[4]]


def test_chrf_matches_its_definition():
    hyps, refs = ["le gros chien", "un petit chat"], ["le gros chien", "deux petits chats"]

    def grams(text, n):
        text = text.replace(" ", "")
        return Counter(text[i:i + n] for i in range(len(text) - n + 1))

    precision, recall = [], []
    for n in range(1, 7):
        match = hyp = ref = 0
        for h, r in zip(hyps, refs):
            gh, gr = grams(h, n), grams(r, n)
            match += sum((gh & gr).values())
            hyp += sum(gh.values())
            ref += sum(gr.values())
        precision.append(match / hyp)
        recall.append(match / ref)
    p, r = np.mean(precision), np.mean(recall)
    assert metrics.corpus_chrf(hyps, refs) == pytest.approx(100 * 5 * p * r / (4 * p + r), rel=1e-9)
    assert metrics.corpus_chrf(refs, refs) == pytest.approx(100.0)
