"""Language-model windows, both partitionings, resume, evaluation coverage, corpora."""

import hashlib
import http.server
import threading
import zipfile
from functools import partial

import numpy as np
import pytest

from jaxseq.data import corpora
from jaxseq.data.lm import LMBatches, LMDataConfig, eval_batches, load_corpus, split_stream
from jaxseq.errors import ConfigError, DataError, FetchError


def _stream(n=1000):
    return np.arange(n, dtype=np.int32)  # every token unique: windows are identifiable


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_targets_are_inputs_shifted(sampling):
    ids = _stream()
    batches = LMBatches(ids, seq_len=7, batch_size=4, sampling=sampling, seed=1)
    for _ in range(batches.batches_per_epoch * 2):
        b = next(batches)
        assert b["inputs"].shape == b["targets"].shape == b["weights"].shape == (4, 7)
        np.testing.assert_array_equal(b["targets"], b["inputs"] + 1)  # the stream is arange
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["inputs"][:, :-1] + 1)


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_each_window_exactly_once_per_epoch(sampling):
    ids = _stream(1003)
    batches = LMBatches(ids, seq_len=10, batch_size=5, sampling=sampling, seed=3)
    for epoch in range(3):
        starts = [int(s) for _ in range(batches.batches_per_epoch) for s in next(batches)["inputs"][:, 0]]
        assert len(starts) == len(set(starts)), "a window repeats within an epoch"
        offset = min(starts) % 10
        assert all((s - offset) % 10 == 0 for s in starts) if sampling == "random" else True
        assert batches.get_state() == {"epoch": epoch + 1, "index": 0}


def test_random_sampling_covers_all_windows_of_the_offset():
    ids = _stream(1001)
    b = LMBatches(ids, seq_len=10, batch_size=1, sampling="random", seed=0)
    starts = sorted(int(s) for s in b.window_starts(0).ravel())
    offset = starts[0]
    assert offset < 10
    # batches_per_epoch is computed for the worst offset, so at most one window is left out
    assert len(starts) >= (1000 - offset) // 10 - 1
    assert starts == list(range(offset, offset + 10 * len(starts), 10))


def test_sequential_rows_continue_across_batches():
    ids = _stream(2000)
    batches = LMBatches(ids, seq_len=8, batch_size=4, sampling="sequential", seed=5)
    prev = next(batches)
    for _ in range(batches.batches_per_epoch - 1):
        cur = next(batches)
        np.testing.assert_array_equal(cur["inputs"][:, 0], prev["inputs"][:, -1] + 1)
        prev = cur


def test_epochs_differ_and_seeds_are_deterministic():
    ids = _stream(3000)
    a = LMBatches(ids, seq_len=9, batch_size=6, seed=11)
    b = LMBatches(ids, seq_len=9, batch_size=6, seed=11)
    c = LMBatches(ids, seq_len=9, batch_size=6, seed=12)
    first = [next(a)["inputs"] for _ in range(a.batches_per_epoch)]
    second = [next(a)["inputs"] for _ in range(a.batches_per_epoch)]
    again = [next(b)["inputs"] for _ in range(b.batches_per_epoch)]
    other = [next(c)["inputs"] for _ in range(c.batches_per_epoch)]
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not all(np.array_equal(x, y) for x, y in zip(first, second))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other))


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_resume_mid_epoch_gives_the_same_remaining_batches(sampling):
    ids = _stream(2500)
    full = LMBatches(ids, seq_len=7, batch_size=4, sampling=sampling, seed=2)
    reference = [next(full) for _ in range(60)]
    run = LMBatches(ids, seq_len=7, batch_size=4, sampling=sampling, seed=2)
    for _ in range(23):
        next(run)
    state = run.get_state()
    resumed = LMBatches(ids, seq_len=7, batch_size=4, sampling=sampling, seed=2)
    resumed.set_state(state)
    for want in reference[23:]:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(DataError, match="does not fit"):
        resumed.set_state({"epoch": 0, "index": 10**6})


def test_shards_partition_the_global_batch():
    ids = _stream(4000)
    whole = LMBatches(ids, seq_len=5, batch_size=8, seed=4)
    parts = [LMBatches(ids, seq_len=5, batch_size=8, seed=4, shard=(i, 4)) for i in range(4)]
    for _ in range(5):
        want = next(whole)["inputs"]
        got = np.concatenate([next(p)["inputs"] for p in parts])
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ConfigError, match="not divisible"):
        LMBatches(ids, seq_len=5, batch_size=6, shard=(0, 4))


def test_too_little_text_is_a_clear_error():
    with pytest.raises(DataError, match="too few for one batch"):
        LMBatches(_stream(50), seq_len=10, batch_size=8)


def test_eval_batches_score_every_target_once():
    ids = _stream(1234)
    batches = eval_batches(ids, seq_len=16, batch_size=5)
    assert len({b["inputs"].shape for b in batches}) == 1
    weights = np.concatenate([b["weights"] for b in batches], axis=1)
    targets = np.concatenate([b["targets"] for b in batches], axis=1)
    inputs = np.concatenate([b["inputs"] for b in batches], axis=1)
    assert weights.sum() == len(ids) - 1
    real = weights.ravel() > 0
    np.testing.assert_array_equal(np.sort(targets.ravel()[real]), ids[1:])
    np.testing.assert_array_equal(targets.ravel()[real], inputs.ravel()[real] + 1)


def test_split_stream_keeps_the_tail_for_validation():
    train, valid = split_stream(np.arange(100), 0.1)
    assert train.tolist() == list(range(90)) and valid.tolist() == list(range(90, 100))


def test_load_corpus_builtin_and_file(tmp_path):
    corpus = load_corpus(LMDataConfig())
    assert corpus.source == "builtin" and corpus.vocab.idx_to_token[0] == "<unk>"
    total = len(corpus.train) + len(corpus.valid)
    assert abs(len(corpus.valid) - 0.1 * total) <= 1
    path = tmp_path / "t.txt"
    path.write_text("the cat sat on the mat. " * 20)
    words = load_corpus(LMDataConfig(data=str(path), tokens="word", preprocess="d2l", valid_fraction=0.25))
    assert words.vocab.decode(words.train[:3]) == ["the", "cat", "sat"]
    with pytest.raises(ConfigError, match="valid-fraction"):
        load_corpus(LMDataConfig(valid_fraction=1.5))
    with pytest.raises(DataError, match="no such file"):
        load_corpus(LMDataConfig(data=str(tmp_path / "missing.txt")))


def test_min_freq_above_every_count_is_refused(tmp_path):
    """Only <unk> in the vocabulary (perplexity 1.000, nothing learnt) is refused, naming --min-freq (issue #12)."""
    path = tmp_path / "t.txt"
    path.write_text("abcabcab" * 4)                           # the first 24 characters train: a, b 9 each, c 6
    with pytest.raises(DataError) as err:
        load_corpus(LMDataConfig(data=str(path), min_freq=12, valid_fraction=0.25))
    message = str(err.value)
    assert message.startswith(f"{path}: --min-freq 12 keeps no token of the training text") and "\n" not in message
    assert "'a', is seen 9 times" in message and "lower --min-freq to 9 or less" in message
    corpus = load_corpus(LMDataConfig(data=str(path), min_freq=9, valid_fraction=0.25))
    assert corpus.vocab.idx_to_token == ["<unk>", "a", "b"]


def test_reserved_words_in_the_text_are_unk_with_a_warning(tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_text("the cat <eos> sat <unk> on the <eos> mat " * 3)
    corpus = load_corpus(LMDataConfig(data=str(path), tokens="word", valid_fraction=0.25))
    err = capsys.readouterr().err
    assert err == (f"jaxseq: warning: {path}: 9 occurrences of reserved token strings in the text (<eos> x6, "
                   "<unk> x3) are read as <unk>, not as the special tokens; rename them in the file if they "
                   "are words\n")
    assert "<eos>" not in corpus.vocab and corpus.vocab.idx_to_token[0] == "<unk>"
    assert corpus.vocab.decode(corpus.train[:5]) == ["the", "cat", "<unk>", "sat", "<unk>"]
    load_corpus(LMDataConfig(data=str(path), tokens="char", valid_fraction=0.25))   # single characters: none
    assert capsys.readouterr().err == ""


def test_builtin_corpus_is_the_python_reference():
    text = corpora.builtin_text()
    assert len(text) > 100_000 and "assert" in text


# -- fetching, offline, over loopback -------------------------------------------------

@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _register(monkeypatch, name, data, *, member=None, filename="small.txt"):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ds = corpora.Dataset(name, "http://unused.invalid/", digest, filename, member, "text", "test")
    monkeypatch.setitem(corpora.REGISTRY, name, ds)


def test_fetch_good_checksum(server, tmp_cache, monkeypatch):
    root, url = server
    (root / "small.txt").write_bytes(b"hello from loopback\n")
    _register(monkeypatch, "small", b"hello from loopback\n")
    path = corpora.fetch("small", url=url + "small.txt")
    assert path.read_bytes() == b"hello from loopback\n"
    assert path.parent.parent == tmp_cache
    assert [p.name for p in path.parent.iterdir()] == ["small.txt"]  # no leftovers
    # cached: a second fetch does not need the server
    assert corpora.fetch("small", url=url + "gone.txt") == path


def test_fetch_bad_checksum_leaves_nothing(server, tmp_cache, monkeypatch):
    root, url = server
    (root / "small.txt").write_bytes(b"tampered\n")
    _register(monkeypatch, "small", b"the real content\n")
    with pytest.raises(FetchError, match="checksum mismatch"):
        corpora.fetch("small", url=url + "small.txt")
    assert list((tmp_cache / "small").iterdir()) == []


def test_fetch_failed_download_leaves_nothing(server, tmp_cache, monkeypatch):
    _, url = server
    _register(monkeypatch, "small", b"x")
    with pytest.raises(FetchError, match="download .* failed"):
        corpora.fetch("small", url=url + "missing.txt")
    assert list((tmp_cache / "small").iterdir()) == []


def test_fetch_file_url_and_zip_member(tmp_path, tmp_cache, monkeypatch):
    archive = tmp_path / "pairs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("pairs/fra.txt", "Go.\tVa !\n")
    _register(monkeypatch, "pairs", archive.read_bytes(), member="pairs/fra.txt", filename="pairs.zip")
    path = corpora.fetch("pairs", url=archive.as_uri())
    assert path.name == "fra.txt" and path.read_text() == "Go.\tVa !\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["fra.txt"]


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset"):
        corpora.fetch("nope")


def test_registry_has_the_d2l_checksums():
    assert corpora.REGISTRY["timemachine"].digest == "sha1:090b5e7e70c295757f55df93cb0a180b9691891a"
    assert corpora.REGISTRY["fra-eng"].digest == "sha1:94646ad1522d915e7b0f9296181140edcf86a4f5"
