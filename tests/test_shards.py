"""`jaxseq prepare` and training from memory-mapped token shards (issue 17): the shards hold exactly the
in-memory corpus whatever the number of workers, windows read from them are the in-memory windows, training
through the CLI resumes exactly on 4 devices, and every mismatch between an index and its files is one line."""

import json
import random
import shutil

import jax
import numpy as np
import pytest

from jaxseq import cli
from jaxseq.data import prepare, shards
from jaxseq.data.lm import EvalBatches, LMBatches, LMDataConfig, eval_batches, load_corpus
from jaxseq.errors import DataError
from jaxseq.tasks import lm as lm_task
from jaxseq.workdir import Workdir

FLAGS = ["--seq-len", "8", "--batch-size", "8", "--hidden", "16", "--lr", "0.01", "--eval-every", "0",
         "--log-every", "2", "--no-progress", "--no-baseline", "--sample", "0", "--sampling", "sequential"]
PREP = ["--chunk-bytes", "400", "--shard-tokens", "700"]


def _text(seed: int, lines: int) -> str:
    rng = random.Random(seed)
    words = "it was the best of times worst age wisdom foolishness. belief, incredulity".split()
    return "".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + "\n" for _ in range(lines))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A directory of three text files (one with a BOM) and the same text as one file."""
    tmp = tmp_path_factory.mktemp("corpus")
    texts = [_text(i, 60) for i in range(3)]
    folder = tmp / "books"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i}.txt").write_bytes((b"\xef\xbb\xbf" if i == 1 else b"") + text.encode())
    (tmp / "all.txt").write_text("".join(texts))
    return folder, tmp / "all.txt"


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "shards"
    assert cli.main(["prepare", "--data", corpus[0], "--out", out, "--workers", 1, *PREP]) == 0
    return out


def _files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.mark.parametrize("tokens, preprocess", [("char", "none"), ("char", "d2l"), ("word", "d2l")])
def test_shards_hold_the_in_memory_corpus_whatever_the_workers(corpus, tmp_path, tokens, preprocess):
    folder, whole = corpus
    config = LMDataConfig(tokens=tokens, preprocess=preprocess, valid_fraction=0.15)
    one = prepare.prepare(str(folder), tmp_path / "one", config, prepare.PrepareConfig(workers=1, chunk_bytes=300,
                                                                                       shard_tokens=500))
    memory = load_corpus(LMDataConfig(data=str(whole), tokens=tokens, preprocess=preprocess, valid_fraction=0.15))
    opened = load_corpus(LMDataConfig(data=str(tmp_path / "one"), tokens=tokens, preprocess=preprocess,
                                      valid_fraction=0.15))
    assert opened.vocab == memory.vocab and opened.sharded
    np.testing.assert_array_equal(opened.train.to_array(), memory.train)
    np.testing.assert_array_equal(np.asarray(opened.valid, np.int32), memory.valid)
    assert one["dtype"] == "uint16" and len(one["shards"]) == -(-len(memory.train) // 500) + 1
    if tokens == "char":       # several processes: the same bytes (spawning costs seconds: once)
        prepare.prepare(str(folder), tmp_path / "two", config, prepare.PrepareConfig(workers=2, chunk_bytes=300,
                                                                                     shard_tokens=500))
        assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_compact_dtype_follows_the_vocabulary_size():
    assert shards.compact_dtype(65536) == np.uint16 and shards.compact_dtype(65537) == np.uint32


def test_windows_from_shards_equal_the_in_memory_windows(prepared):
    opened = shards.open_prepared(prepared)
    ids = opened.train.to_array()
    assert len(opened.train.arrays) > 5          # windows cross shard boundaries
    for sampling in ("random", "sequential"):
        for shard in ((0, 1), (1, 2)):
            kw = dict(seq_len=11, batch_size=6, sampling=sampling, seed=5, shard=shard)
            memory, mapped = LMBatches(ids, **kw), LMBatches(opened.train, **kw)
            for _ in range(memory.batches_per_epoch + 3):
                a, b = next(memory), next(mapped)
                assert all(np.array_equal(a[k], b[k]) for k in a)
            state = mapped.get_state()
            resumed = LMBatches(opened.train, **kw)
            resumed.set_state(state)
            a, b = next(resumed), next(mapped)
            assert all(np.array_equal(a[k], b[k]) for k in a)
    # validation batches gathered from the memory-mapped held-out shard one at a time: eval_batches' batches
    lazy, whole = EvalBatches(opened.valid, seq_len=11, batch_size=6), eval_batches(opened.valid, seq_len=11,
                                                                                     batch_size=6)
    assert opened.valid.dtype == np.uint16 and len(lazy) == len(whole) > 1
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for a, b in zip(lazy, whole) for k in a)


def _params(workdir):
    return jax.device_get(lm_task.runner.load(Workdir(workdir), lm_task.TASK).params)


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory):
    """4 steps from the shards straight through, and 2 steps then --resume to 4 (4 forced devices)."""
    tmp = tmp_path_factory.mktemp("runs")
    straight, resumed = tmp / "straight", tmp / "resumed"
    assert cli.main(["train", "lm", "--data", prepared, "--workdir", straight, "--steps", 4, *FLAGS]) == 0
    assert cli.main(["train", "lm", "--data", prepared, "--workdir", resumed, "--steps", 2, *FLAGS]) == 0
    assert cli.main(["train", "lm", "--workdir", resumed, "--resume", "--steps", 4, "--no-progress",
                     "--sample", 0, "--no-baseline"]) == 0
    return straight, resumed


def test_training_from_shards_resumes_exactly_on_four_devices(prepared, trained, capsys):
    straight, resumed = trained
    assert jax.device_count() == 4
    a, b = _params(straight), _params(resumed)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    saved = json.loads((straight / "config.json").read_text())
    assert saved["data"]["data"] == str(prepared.resolve()) and saved["data"]["valid_fraction"] == 0.1
    results = json.loads((straight / "results.json").read_text())
    assert results["step"] == 4 and np.isfinite(results["valid"]["perplexity"])
    assert (straight / "vocab.json").read_bytes() == (prepared / "vocab.json").read_bytes()
    # evaluate scores the held-out shard again: the perplexity training reported
    capsys.readouterr()
    assert cli.main(["evaluate", "--workdir", straight]) == 0
    scored = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert scored["perplexity"] == pytest.approx(results["valid"]["perplexity"], rel=1e-6)
    assert scored["tokens"] == json.loads((prepared / "index.json").read_text())["tokens"]["valid"] - 1


def _refused(args, capsys, *needles):
    capsys.readouterr()
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("damage, message", [
    ("truncate", "bytes, the index says"), ("change", "contents changed since `jaxseq prepare`"),
    ("remove", "shard missing"), ("vocab", "is not the vocabulary the shards were prepared with"),
    ("mix", "shards of different vocabularies cannot be mixed")])
def test_an_index_not_matching_its_files_is_one_line_naming_the_shard(prepared, tmp_path, capsys, damage, message):
    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    shard = copy / "train-00003.npy"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-2])
    elif damage == "change":
        data = bytearray(shard.read_bytes())
        data[-1] ^= 1
        shard.write_bytes(bytes(data))
    elif damage == "remove":
        shard.unlink()
    elif damage == "vocab":
        vocab = json.loads((copy / "vocab.json").read_text())
        tokens = vocab["tokens"]
        tokens[1], tokens[2] = tokens[2], tokens[1]
        (copy / "vocab.json").write_text(json.dumps({"tokens": tokens}))
    else:    # an index entry copied from a directory prepared with another vocabulary
        index = json.loads((copy / "index.json").read_text())
        index["shards"][3]["vocab"] = "0" * 64
        (copy / "index.json").write_text(json.dumps(index))
    named = "vocab.json" if damage == "vocab" else "train-00003.npy"
    _refused(["train", "lm", "--data", copy, "--workdir", tmp_path / "run", *FLAGS], capsys, named, message)
    if damage in ("truncate", "change"):
        _refused(["prepare", "--verify", copy], capsys, named, message)
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_resumed_run_whose_shards_changed_is_refused(corpus, trained, tmp_path, capsys):
    folder, whole = corpus
    straight, _ = trained
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    shard_dir = tmp_path / "shards"
    saved = json.loads((run / "config.json").read_text())
    saved["data"]["data"] = str(shard_dir)
    (run / "config.json").write_text(json.dumps(saved))
    # the same tokens cut into other shards: another shard set
    assert cli.main(["prepare", "--data", folder, "--out", shard_dir, "--workers", 1, "--shard-tokens", 900]) == 0
    _refused(["train", "lm", "--workdir", run, "--resume", "--steps", 6, "--no-progress"], capsys,
             "belongs to other data")
    # shards of another vocabulary: other text, same settings
    other = tmp_path / "other.txt"
    other.write_text(_text(9, 80).upper())
    assert cli.main(["prepare", "--data", other, "--out", shard_dir, "--workers", 1]) == 0
    _refused(["train", "lm", "--workdir", run, "--resume", "--steps", 6, "--no-progress"], capsys,
             str(shard_dir), "but the run's vocab.json is")
    # shards of other tokenization settings (prepared again in place, word tokens)
    assert cli.main(["prepare", "--data", folder, "--out", shard_dir, "--workers", 1, "--tokens", "word"]) == 0
    _refused(["train", "lm", "--workdir", run, "--resume", "--steps", 6, "--no-progress"], capsys,
             str(shard_dir), "prepared with --tokens word, the run has --tokens char")


def test_prepare_refuses_bad_input_in_one_line(corpus, tmp_path, capsys):
    folder, _ = corpus
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "2.txt").write_bytes(b"fine\nstill fine\nbad \xff byte\n")
    _refused(["prepare", "--data", bad, "--out", tmp_path / "o1"], capsys, "2.txt:3: not valid UTF-8 at byte offset 20")
    (bad / "2.txt").write_bytes(b"")
    _refused(["prepare", "--data", bad, "--out", tmp_path / "o2"], capsys, "2.txt: is empty")
    _refused(["prepare", "--data", str(tmp_path / "nothing*.txt"), "--out", tmp_path / "o3"], capsys,
             "the pattern matches no file")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    _refused(["prepare", "--data", folder, "--out", tmp_path / "mine"], capsys, "not written by `jaxseq prepare`")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_train_flags_contradicting_the_shards_are_refused(prepared, tmp_path, capsys):
    _refused(["train", "lm", "--data", prepared, "--tokens", "word", "--workdir", tmp_path / "r", *FLAGS], capsys,
             "--tokens word differs from the tokenization of the prepared shards")
    _refused(["train", "lm", "--data", prepared, "--model", "ngram", "--workdir", tmp_path / "n"], capsys,
             "counts every token in memory")
    with pytest.raises(DataError, match="not a directory written by `jaxseq prepare`"):
        shards.read_index(tmp_path)


# -- subword shards (--tokens bpe|wordpiece) ------------------------------------------------------

@pytest.mark.parametrize("tokens, preprocess", [("bpe", "none"), ("wordpiece", "d2l")])
def test_subword_shards_hold_the_in_memory_corpus_whatever_the_workers(corpus, tmp_path, tokens, preprocess):
    """The tokenizer trained on the training pieces only is the in-memory one, and the chunked ids are the ids
    of the whole text (with d2l every chunk cut sits in a space run: piece_text moves it to the next word)."""
    folder, whole = corpus
    config = LMDataConfig(tokens=tokens, preprocess=preprocess, valid_fraction=0.15)
    options = dict(chunk_bytes=300, shard_tokens=500)
    one = prepare.prepare(str(folder), tmp_path / "one", config, prepare.PrepareConfig(workers=1, **options))
    memory = load_corpus(LMDataConfig(data=str(whole), tokens=tokens, preprocess=preprocess, valid_fraction=0.15))
    opened = load_corpus(LMDataConfig(data=str(tmp_path / "one"), tokens=tokens, preprocess=preprocess,
                                      valid_fraction=0.15))
    assert opened.vocab == memory.vocab              # the same subwords and the same tokenizer JSON
    assert one["prepare"]["chunks"] > 10 and len(memory.vocab) > 300
    np.testing.assert_array_equal(opened.train.to_array(), memory.train)
    np.testing.assert_array_equal(np.asarray(opened.valid, np.int32), memory.valid)
    assert one["vocab"]["tokenizer"] == "tokenizer.json"
    assert one["vocab"]["tokenizer_fingerprint"] == memory.vocab.tokenizer_fingerprint()
    if tokens == "bpe":        # several processes: the same bytes (spawning costs seconds: once)
        prepare.prepare(str(folder), tmp_path / "two", config, prepare.PrepareConfig(workers=2, **options))
        assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_train_lm_on_bpe_shards_then_generate_and_evaluate(corpus, tmp_path, capsys):
    folder, _ = corpus
    out, run = tmp_path / "bpe", tmp_path / "run"
    assert cli.main(["prepare", "--data", folder, "--out", out, "--workers", 1, "--tokens", "bpe", "--vocab-size",
                     320, *PREP]) == 0
    assert cli.main(["train", "lm", "--data", out, "--workdir", run, "--steps", 1, "--devices", 1, *FLAGS]) == 0
    saved = json.loads((run / "config.json").read_text())["data"]
    assert saved["tokens"] == "bpe" and saved["vocab_size"] == 320
    assert (run / "tokenizer.json").read_bytes() == (out / "tokenizer.json").read_bytes()
    capsys.readouterr()
    assert cli.main(["generate", "--workdir", run, "--prefix", "it was  the Москва", "--length", 5]) == 0
    assert capsys.readouterr().out.startswith("it was  the Москва")       # decoded exactly
    assert cli.main(["evaluate", "--workdir", run]) == 0
    scored = json.loads(capsys.readouterr().out.splitlines()[-1])
    results = json.loads((run / "results.json").read_text())
    assert scored["perplexity"] == pytest.approx(results["valid"]["perplexity"], rel=1e-6)
    assert scored["chars"] > scored["tokens"] and np.isfinite(scored["bits_per_char"])
    # another tokenizer beside the vocabulary: one line naming it
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"]["trim_offsets"] = not tokenizer["pre_tokenizer"]["trim_offsets"]
    (out / "tokenizer.json").write_text(json.dumps(tokenizer))
    _refused(["train", "lm", "--data", out, "--workdir", tmp_path / "r2", *FLAGS], capsys, "tokenizer.json")
