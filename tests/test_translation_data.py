"""Translation data: strict TSV reading, normalisation, ids, bucketing, resume, splits, the dates task."""

import argparse
import datetime

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxseq.config import add_arguments, from_args
from jaxseq.data import dates as dates_lib
from jaxseq.data import translation as tr
from jaxseq.data.vocab import Vocab
from jaxseq.errors import ConfigError, DataError

GOOD = "Go.\tVa !\nHi.\tSalut !\nRun!\tCours\u202f!\nWho?\tQui ?\nWow!\tÇa alors\u00a0!\n"


def write(tmp_path, content, name="pairs.tsv"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def config(path, **kw):
    kw.setdefault("min_freq", 1)
    return tr.TranslationDataConfig(data=str(path), **kw)


def numbered_pairs(n, *, long_every=0):
    """TSV text of ``n`` distinct pairs with varied lengths."""
    lines = []
    for i in range(n):
        k = 1 + (i * 7) % 9 + (12 if long_every and i % long_every == 0 else 0)
        src = " ".join(f"s{(i + j) % 13}" for j in range(k)) + f" n{i}"
        tgt = " ".join(f"t{(i * 3 + j) % 11}" for j in range(1 + (i * 5) % 8)) + f" m{i}"
        lines.append(f"{src}\t{tgt}\n")
    return "".join(lines)


# -- strict reading ---------------------------------------------------------------

@pytest.mark.parametrize("content, line, words", [
    ("a\tb\nno tab here\nc\td\n", 2, "no tab"),
    ("a\tb\nc\td\n\t x\n", 3, "source side"),
    ("a\tb\nc\t  \n", 2, "target side"),
    ("a\tb\n\nc\td\n", 2, "blank line"),
    (b"a\tb\nc\td\ne\xe9\tf\n", 3, "not valid UTF-8"),
    (b"\xef\xbb\xbfa\tb\nc\xff\td\n", 2, "not valid UTF-8"),
    ("a\tb\nc\td\tCC-BY attribution\n", 2, "more than two tab-separated fields"),
    ("a\tb\nc\td\t\n", 2, "more than two tab-separated fields"),
])
def test_bad_line_is_reported_with_file_and_line(tmp_path, content, line, words):
    path = write(tmp_path, content)
    with pytest.raises(DataError, match=words) as err:
        tr.load_translation(config(path))
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: ") and "\n" not in message
    assert "--on-bad-line skip" in message


@pytest.mark.parametrize("content, words", [
    (b"", "is empty"),
    (b"\n \n\t\n", "is empty"),
    (b"\xef\xbb\xbf", "is empty"),
    (b"a\tb\nc\x00d\te\n", "looks binary"),
])
def test_empty_and_binary_files_name_the_file(tmp_path, content, words):
    path = write(tmp_path, content)
    with pytest.raises(DataError, match=words) as err:
        tr.load_translation(config(path, on_bad_line="skip"))
    assert str(err.value).startswith(f"{path}: ")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file") as err:
        tr.load_translation(config(tmp_path / "nope.tsv"))
    assert str(tmp_path / "nope.tsv") in str(err.value)
    with pytest.raises(DataError, match="directory"):
        tr.load_translation(config(tmp_path))


def test_skip_drops_and_reports_bad_lines(tmp_path):
    content = (b"Go.\tVa !\n"          # 1 good
               b"no tab\n"             # 2
               b"\tonly target\n"      # 3
               b"Hi.\tSalut !\n"       # 4 good
               b"\n"                   # 5 blank inside
               b"bad \xc3\x28\tx\n"    # 6 bad UTF-8
               b"src\t \n"             # 7 empty target
               b"Run!\tCours !\tCC-BY attribution\n"  # 8 three fields
               b"Wow!\tOuah !\n"       # 9 good
               b"\n\n")                # trailing blank lines are fine
    path = write(tmp_path, content)
    data = tr.load_translation(config(path, on_bad_line="skip", valid_fraction=0.0, test_fraction=0.0))
    assert data.skipped == [(2, "no tab"), (3, "empty source"), (5, "blank line"), (6, "not valid UTF-8"),
                            (7, "empty target"), (8, "more than two fields")]
    assert [p.line for p in data.train] == [1, 4, 9]
    assert data.train[2] == tr.Pair(["wow", "!"], ["ouah", "!"], 9)
    assert data.first_two == []
    summary = tr.summarize_skipped(data.skipped)
    assert summary.startswith("skipped 6 lines: ") and "1 no tab (line 2)" in summary
    assert "1 more than two fields (line 8)" in summary
    assert "skipped 6 lines" in data.summary()


def test_extra_fields_error_says_what_to_do(tmp_path):
    path = write(tmp_path, "Go.\tVa !\nRun!\tCours !\tCC-BY 2.0 (France) Attribution: tatoeba.org\n")
    with pytest.raises(DataError) as err:
        tr.load_translation(config(path))
    message = str(err.value)
    assert message.startswith(f"{path}:2: more than two tab-separated fields") and "\n" not in message
    assert "--on-bad-line first-two" in message and "--on-bad-line skip" in message


def test_first_two_takes_the_first_two_fields_and_warns(tmp_path, capsys):
    content = ("Go.\tVa !\tCC-BY a\n"       # 1 three fields
               "Hi.\tSalut !\n"              # 2 good
               "Run!\tCours !\tCC-BY b\tx\n"  # 3 four fields
               "Who?\tQui ?\t\n")           # 4 an empty third field
    path = write(tmp_path, content)
    data = tr.load_translation(config(path, on_bad_line="first-two", valid_fraction=0.0, test_fraction=0.0))
    assert data.train == [tr.Pair(["go", "."], ["va", "!"], 1), tr.Pair(["hi", "."], ["salut", "!"], 2),
                          tr.Pair(["run", "!"], ["cours", "!"], 3), tr.Pair(["who", "?"], ["qui", "?"], 4)]
    assert data.first_two == [1, 3, 4] and data.skipped == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxseq: warning: ")
    assert f"{path}: 3 lines had more than two tab-separated fields" in err and "lines 1, 3, 4" in err
    pairs, skipped = tr.read_pairs(path, on_bad_line="first-two")           # read_pairs warns the same way
    assert [p.line for p in pairs] == [1, 2, 3, 4] and skipped == []
    assert "3 lines had more than two" in capsys.readouterr().err


def test_first_two_still_stops_on_other_bad_lines(tmp_path, capsys):
    path = write(tmp_path, "Go.\tVa !\tCC-BY\nno tab here\nHi.\tSalut !\n")
    with pytest.raises(DataError, match=f"^{path}:2: no tab"):
        tr.load_translation(config(path, on_bad_line="first-two"))
    path = write(tmp_path, b"Go.\tVa !\tCC-BY\nbad \xff\tx\n", name="bytes.tsv")
    with pytest.raises(DataError, match=f"^{path}:2: not valid UTF-8"):
        tr.load_translation(config(path, on_bad_line="first-two"))
    good = write(tmp_path, GOOD, name="good.tsv")
    tr.load_translation(config(good, on_bad_line="first-two"))
    assert capsys.readouterr().err == ""                     # nothing cut, nothing to warn about


def test_skip_with_nothing_left_is_an_error(tmp_path):
    path = write(tmp_path, "no tab\nnone here\n")
    with pytest.raises(DataError, match="no usable sentence pairs.*skipped 2 lines"):
        tr.load_translation(config(path, on_bad_line="skip"))


def test_bom_crlf_and_trailing_blank_lines(tmp_path):
    path = write(tmp_path, "\ufeffGo.\tVa !\r\nHi.\tSalut !\r\n\r\n  \n")
    pairs, skipped = tr.read_pairs(path)
    assert pairs == [tr.Pair(["go", "."], ["va", "!"], 1), tr.Pair(["hi", "."], ["salut", "!"], 2)]
    assert skipped == []


# -- normalisation ----------------------------------------------------------------

def d2l_preprocess(text):
    """D2L's MTFraEng._preprocess, verbatim."""
    text = text.replace('\u202f', ' ').replace('\xa0', ' ')
    no_space = lambda char, prev_char: char in ',.!?' and prev_char != ' '  # noqa: E731
    out = [' ' + char if i > 0 and no_space(char, text[i - 1]) else char
           for i, char in enumerate(text.lower())]
    return ''.join(out)


@pytest.mark.parametrize("text, expected", [
    ("Go.", "go ."),
    ("Cours\u202f!", "cours !"),
    ("Ça alors\u00a0!", "ça alors !"),
    ("I'm OK.", "i'm ok ."),
    ("Wait, what?!", "wait , what ? !"),
    ("Already spaced !", "already spaced !"),
    ("3.14", "3 .14"),
    (".hidden", ".hidden"),
])
def test_d2l_normalisation_examples(text, expected):
    assert tr.normalize(text, "d2l") == expected == d2l_preprocess(text)
    assert tr.normalize(text, "none") == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="aBé ,.!?\u202f\u00a0'", max_size=30))
def test_d2l_normalisation_matches_d2l(text):
    assert tr.normalize(text, "d2l") == d2l_preprocess(text)


def test_preprocess_none_keeps_punctuation_on_words(tmp_path):
    path = write(tmp_path, GOOD)
    pairs, _ = tr.read_pairs(path, preprocess="none")
    assert pairs[0] == tr.Pair(["Go."], ["Va", "!"], 1)
    assert pairs[2].tgt == ["Cours", "!"]       # U+202F is white space to str.split



# -- ids, padding, truncation --------------------------------------------------------

def test_bos_eos_padding_and_valid_lengths(tmp_path):
    path = write(tmp_path, GOOD)
    data = tr.load_translation(config(path, valid_fraction=0.0, test_fraction=0.0, batch_size=5, max_len=10))
    sv, tv = data.src_vocab, data.tgt_vocab
    assert (sv.pad, sv.bos, sv.eos, tv.pad, tv.bos, tv.eos) == (0, 1, 2, 0, 1, 2)
    [batch] = data.eval_batches("train")
    assert batch["src"].dtype == batch["tgt_in"].dtype == batch["tgt_out"].dtype == np.int32
    assert batch["src_len"].dtype == batch["tgt_len"].dtype == np.int32 and batch["weights"].dtype == np.float32
    assert batch["src"].shape == (5, 8) and batch["tgt_in"].shape == batch["tgt_out"].shape == (5, 8)
    for row, i in enumerate(batch["index"].tolist()):
        pair = data.train[i]
        s, t = len(pair.src) + 1, len(pair.tgt) + 1
        assert batch["src_len"][row] == s and batch["tgt_len"][row] == t
        assert sv.decode(batch["src"][row, :s]) == pair.src + ["<eos>"]
        assert tv.decode(batch["tgt_in"][row, :t]) == ["<bos>"] + pair.tgt
        assert tv.decode(batch["tgt_out"][row, :t]) == pair.tgt + ["<eos>"]
        assert not batch["src"][row, s:].any() and not batch["tgt_in"][row, t:].any()
        assert not batch["tgt_out"][row, t:].any()
        assert batch["weights"][row].tolist() == [1.0] * t + [0.0] * (8 - t)
    total = sum(len(p.tgt) + 1 for p in data.train)
    assert batch["weights"].sum() == total == batch["tgt_len"].sum()


def test_truncate_cuts_to_max_len_and_drops_eos(tmp_path):
    path = write(tmp_path, "a b c d e f\tu v w x y z\nshort\tkurz\n")
    data = tr.load_translation(config(path, max_len=4, valid_fraction=0.0, test_fraction=0.0, batch_size=2))
    [batch] = data.eval_batches("train")
    row = batch["index"].tolist().index(0)
    sv, tv = data.src_vocab, data.tgt_vocab
    assert batch["src"].shape[1] == 4
    assert sv.decode(batch["src"][row]) == ["a", "b", "c", "d"] and batch["src_len"][row] == 4
    assert tv.decode(batch["tgt_in"][row]) == ["<bos>", "u", "v", "w"]
    assert tv.decode(batch["tgt_out"][row]) == ["u", "v", "w", "x"]
    assert batch["weights"][row].sum() == 4
    other = 1 - row
    assert sv.decode(batch["src"][other, :2]) == ["short", "<eos>"]
    assert data.truncated() == 1 and "cut 1 pairs" in data.summary()


def test_overflow_drop_removes_and_counts(tmp_path):
    path = write(tmp_path, "a b c d e f\tu v\nshort\tkurz\nx\ty z w v u t s\nok\tgut\n")
    data = tr.load_translation(config(path, max_len=4, overflow="drop", valid_fraction=0.0, test_fraction=0.0))
    assert [p.line for p in data.train] == [2, 4]
    assert data.dropped == 2 and data.truncated() == 0 and "dropped 2 pairs" in data.summary()


def test_max_pairs_counts_kept_pairs_in_file_order(tmp_path):
    path = write(tmp_path, numbered_pairs(50))
    data = tr.load_translation(config(path, max_pairs=20, split="head", valid_fraction=0.25, test_fraction=0.0))
    assert [p.line for p in data.train] == list(range(1, 16))
    assert [p.line for p in data.valid] == list(range(16, 21)) and data.test == []


# -- batches: bucketing, resume, shards ------------------------------------------------

def make_data(tmp_path, n=203, **kw):
    path = write(tmp_path, numbered_pairs(n, long_every=10))
    kw.setdefault("valid_fraction", 0.0)
    kw.setdefault("test_fraction", 0.0)
    kw.setdefault("max_len", 24)
    kw.setdefault("batch_size", 16)
    return tr.load_translation(config(path, **kw), seed=3)


@pytest.mark.parametrize("buckets, widths", [("pow2", (8, 16, 24)), ("step8", (8, 16, 24)),
                                            ("step4", (8, 12, 16, 20, 24)), ("none", (24,))])
def test_bucketing_covers_every_pair_once_with_declared_shapes(tmp_path, buckets, widths):
    data = make_data(tmp_path, buckets=buckets)
    assert data.widths == widths
    batches = data.train_batches(seed=5)
    n = len(data.train)
    assert batches.batches_per_epoch == -(-n // 16)
    for epoch in range(2):
        seen = []
        for i in range(batches.batches_per_epoch):
            b = batches.batch(epoch, i)
            assert (b["src"].shape[1], b["tgt_in"].shape[1]) in batches.shapes
            assert b["src"].shape[0] == 16
            real = b["index"] >= 0
            seen += b["index"][real].tolist()
            assert b["src"].shape[1] == tr.fit_width(int(b["src_len"][real].max()), widths)
            assert b["tgt_out"].shape[1] == tr.fit_width(int(b["tgt_len"][real].max()), widths)
            assert not b["weights"][~real].any() and not b["tgt_len"][~real].any()
            assert (b["src_len"] >= 1).all()
            assert b["weights"].sum() == b["tgt_len"].sum()
        assert sorted(seen) == list(range(n))
    assert len(batches.shapes) == len(widths) ** 2


def test_bucketing_keeps_padding_small(tmp_path):
    data = make_data(tmp_path, n=2000, batch_size=32, max_len=64, buckets="step8")

    def padded(chunk_batches):        # chunk_batches=1: each batch a random draw, no sorting across batches
        batches = tr.TranslationBatches(data.encoded("train"), batch_size=32, seed=0, widths=data.widths,
                                        chunk_batches=chunk_batches)
        return sum(b["src"].size + b["tgt_in"].size for b in (batches.batch(0, i)
                                                              for i in range(batches.batches_per_epoch)))

    enc = data.encoded("train")
    real = int(enc.src_len.sum() + enc.tgt_len.sum())
    assert real <= padded(100) < 0.6 * padded(1)


def test_batches_are_deterministic_and_epochs_differ(tmp_path):
    data = make_data(tmp_path)
    a, b, c = data.train_batches(seed=5), data.train_batches(seed=5), data.train_batches(seed=6)
    assert np.array_equal(a.layout(0), b.layout(0)) and np.array_equal(a.layout(1), b.layout(1))
    assert not np.array_equal(a.layout(0), a.layout(1))
    assert not np.array_equal(a.layout(0), c.layout(0))


def test_resume_mid_epoch_gives_the_same_batches(tmp_path):
    data = make_data(tmp_path)
    first = data.train_batches(seed=1)
    per_epoch = first.batches_per_epoch
    stop = per_epoch - 3
    for _ in range(stop):
        next(first)
    state = first.get_state()
    assert state == {"epoch": 0, "index": stop}
    rest = [next(first) for _ in range(6)]     # crosses into epoch 1
    assert first.get_state() == {"epoch": 1, "index": 3}
    resumed = data.train_batches(seed=1)
    resumed.set_state(state)
    for want, got in zip(rest, (next(resumed) for _ in range(6))):
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])
    with pytest.raises(DataError, match="does not fit"):
        resumed.set_state({"epoch": 0, "index": per_epoch})


def test_shards_split_every_global_batch(tmp_path):
    data = make_data(tmp_path)
    whole = data.train_batches(seed=2)
    parts = [data.train_batches(seed=2, shard=(i, 4)) for i in range(4)]
    for _ in range(whole.batches_per_epoch + 2):
        g = next(whole)
        local = [next(p) for p in parts]
        for key in g:
            np.testing.assert_array_equal(np.concatenate([part[key] for part in local]), g[key])
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        data.train_batches(seed=2, shard=(0, 3))


def test_eval_batches_hold_every_pair_once(tmp_path):
    data = make_data(tmp_path, n=100, valid_fraction=0.3)
    batches = data.eval_batches("valid")
    index = np.concatenate([b["index"] for b in batches])
    assert sorted(index[index >= 0].tolist()) == list(range(len(data.valid)))
    assert sum(b["weights"].sum() for b in batches) == sum(min(len(p.tgt) + 1, 24) for p in data.valid)


# -- splits and vocabularies ----------------------------------------------------------

def test_random_splits_deterministic_disjoint_and_complete(tmp_path):
    path = write(tmp_path, numbered_pairs(300))
    cfg = config(path, valid_fraction=0.1, test_fraction=0.2)
    a, b, c = (tr.load_translation(cfg, seed=s) for s in (7, 7, 8))
    lines = lambda d: [[p.line for p in d.split(name)] for name in tr.SPLITS]  # noqa: E731
    train, valid, test = lines(a)
    assert (len(train), len(valid), len(test)) == (210, 30, 60)
    assert sorted(train + valid + test) == list(range(1, 301))
    assert all(x == sorted(x) for x in (train, valid, test))      # each split keeps file order
    assert lines(a) == lines(b) and lines(a) != lines(c)
    assert valid != list(range(211, 241))                          # shuffled, not the file's tail


def test_head_split_reproduces_d2l_first_512_and_128(tmp_path):
    path = write(tmp_path, numbered_pairs(1000))
    cfg = config(path, max_pairs=640, split="head", valid_fraction=0.2, test_fraction=0.0)
    data = tr.load_translation(cfg, seed=123)
    assert [p.line for p in data.train] == list(range(1, 513))
    assert [p.line for p in data.valid] == list(range(513, 641))


def test_vocab_from_training_split_only(tmp_path):
    path = write(tmp_path, "a b\tx y\na b\tx y\nc d\tz w\nc d\tz w\nrare valid\tseulement valid\n")
    data = tr.load_translation(config(path, split="head", valid_fraction=0.2, test_fraction=0.0, min_freq=2))
    assert [p.line for p in data.valid] == [5]
    assert data.src_vocab.idx_to_token == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "b", "c", "d"]
    assert "valid" not in data.src_vocab and "seulement" not in data.tgt_vocab
    enc = data.encoded("valid")
    assert enc.src_ids.tolist() == [3, 3, 2]                       # <unk> <unk> <eos>


def test_reused_vocabularies_and_checks(tmp_path):
    path = write(tmp_path, GOOD)
    first = tr.load_translation(config(path), seed=0)
    again = tr.load_translation(config(path), seed=0, src_vocab=first.src_vocab, tgt_vocab=first.tgt_vocab)
    assert again.src_vocab == first.src_vocab
    with pytest.raises(DataError, match="lacks <pad> <bos> <eos>"):
        tr.load_translation(config(path), src_vocab=Vocab(["<unk>", "go"]), tgt_vocab=first.tgt_vocab)
    with pytest.raises(ConfigError, match="both"):
        tr.load_translation(config(path), src_vocab=first.src_vocab)


def test_min_freq_above_every_count_is_refused(tmp_path):
    """A vocabulary of reserved tokens only (every word <unk>) is refused, naming --min-freq (issue #12)."""
    path = write(tmp_path, "a b\tx y\na c\tx z\na d\ty w\n")     # source: a x3; target: x, y x2
    flat = dict(valid_fraction=0.0, test_fraction=0.0)
    with pytest.raises(DataError) as err:
        tr.load_translation(config(path, min_freq=4, **flat))
    message = str(err.value)
    assert message.startswith(f"{path}: --min-freq 4 keeps no source word of the 3 training pairs")
    assert "'a', is seen 3 times" in message and "lower --min-freq to 3 or less" in message and "\n" not in message
    with pytest.raises(DataError, match=f"^{path}: --min-freq 3 keeps no target word .*'x', is seen 2 times"):
        tr.load_translation(config(path, min_freq=3, **flat))
    data = tr.load_translation(config(path, min_freq=2, **flat))
    assert data.src_vocab.idx_to_token[4:] == ["a"] and data.tgt_vocab.idx_to_token[4:] == ["x", "y"]


def test_literal_reserved_words_never_become_special_ids(tmp_path, capsys):
    """A word spelled <eos> (or <bos>, <pad>, <unk>) in the text is <unk>, with one warning line (issue #12)."""
    content = ("stop <eos> here\tarrête <eos> ici\n"
               "go <bos> now\tva <pad> <eos>\n"
               "<EOS> again\tencore <unk>\n"            # d2l lowercases it into <eos>
               "plain words\tmots simples\n")
    path = write(tmp_path, content)
    data = tr.load_translation(config(path, valid_fraction=0.0, test_fraction=0.0, batch_size=4))
    err = capsys.readouterr().err
    assert err.startswith("jaxseq: warning: ") and err.count("\n") == 1
    assert f"{path}: 7 occurrences of reserved token strings" in err
    assert "<eos> x4, <bos> x1, <pad> x1, <unk> x1" in err and "read as <unk>" in err
    assert data.reserved == {"<eos>": 4, "<bos>": 1, "<pad>": 1, "<unk>": 1}
    sv, tv = data.src_vocab, data.tgt_vocab
    assert sv.idx_to_token[:4] == tv.idx_to_token[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert not {"<eos>", "<bos>", "<pad>", "<unk>"} & set(sv.idx_to_token[4:] + tv.idx_to_token[4:])
    enc = data.encoded("train")
    for ids, starts, lengths, vocab in ((enc.src_ids, enc.src_start, enc.src_len, sv),
                                        (enc.tgt_ids, enc.tgt_start, enc.tgt_len, tv)):
        for start, length in zip(starts.tolist(), lengths.tolist()):
            row = ids[start:start + length].tolist()
            assert row[-1] == vocab.eos and vocab.eos not in row[:-1]          # only the appended <eos>
            assert vocab.bos not in row and vocab.pad not in row
    first = [tv.index(w) for w in ("arrête", "ici")]
    assert enc.tgt_ids[enc.tgt_start[0]:enc.tgt_start[0] + 4].tolist() == [first[0], tv.unk, first[1], tv.eos]
    batch = next(data.train_batches(seed=0))
    for row in range(4):
        t = int(batch["tgt_len"][row])
        assert np.flatnonzero(batch["tgt_out"][row] == tv.eos).tolist() == [t - 1]
        assert np.flatnonzero(batch["tgt_in"][row] == tv.bos).tolist() == [0]
    typed = data.encode_source("stop <eos> here")
    assert typed.ids.tolist() == [sv.index("stop"), sv.unk, sv.index("here"), sv.eos] and "<eos>" in typed.unknown


def test_encode_source_and_decode_target(tmp_path):
    path = write(tmp_path, GOOD * 2)
    data = tr.load_translation(config(path, max_len=6, valid_fraction=0.0, test_fraction=0.0))
    enc = data.encode_source("Go, Zorglub!")
    assert enc.tokens == ["go", ",", "zorglub", "!"] and enc.unknown == [",", "zorglub"]
    assert data.src_vocab.decode(enc.ids) == ["go", "<unk>", "<unk>", "!", "<eos>"] and not enc.truncated
    long = data.encode_source("go go go go go go go")
    assert len(long.ids) == 6 and long.truncated
    batch, encs = data.source_batch(["Hi.", "Run! Go."])
    assert batch["src"].shape == (2, 6) and batch["src_len"].tolist() == [3, 5]
    tv = data.tgt_vocab
    ids = [tv.bos] + tv.encode(["va", "!"]).tolist() + [tv.eos, tv.index("salut"), tv.pad]
    assert data.decode_target(ids) == "va !"
    assert data.decode_target(np.array([[tv.index("qui"), tv.pad, tv.index("?")]])) == "qui ?"


def test_config_validation_and_flags():
    for bad in (dict(valid_fraction=0.6, test_fraction=0.4), dict(max_len=1), dict(batch_size=0),
                dict(max_pairs=0), dict(split="tail"), dict(test_fraction=-0.1)):
        with pytest.raises(ConfigError):
            tr.TranslationDataConfig(**bad).validate()
    parser = argparse.ArgumentParser()
    add_arguments(parser, tr.TranslationDataConfig)
    add_arguments(parser, dates_lib.DatesConfig)
    args = parser.parse_args(["--max-len", "9", "--split", "head", "--max-pairs", "640", "--on-bad-line", "skip",
                              "--dates-source", "de"])
    cfg = from_args(tr.TranslationDataConfig, args)
    assert (cfg.max_len, cfg.split, cfg.max_pairs, cfg.on_bad_line) == (9, "head", 640, "skip")
    assert from_args(dates_lib.DatesConfig, args).dates_source == "de"
    args = parser.parse_args(["--on-bad-line", "first-two"])
    assert from_args(tr.TranslationDataConfig, args).on_bad_line == "first-two"
    with pytest.raises(SystemExit):
        parser.parse_args(["--on-bad-line", "ignore"])
    [action] = [a for a in parser._actions if "--on-bad-line" in a.option_strings]
    assert "more than two tab-separated fields" in action.help and "first-two" in action.help


def test_language_model_corpus_is_not_pairs(tmp_cache):
    with pytest.raises(ConfigError, match="not sentence pairs"):
        tr.load_translation(tr.TranslationDataConfig(data="timemachine"))


# -- the dates task ---------------------------------------------------------------------

SMALL = dates_lib.DatesConfig(dates_count=300, dates_seed=4)


def test_babel_strings_are_pinned():
    day = datetime.date(2026, 11, 27)
    assert dates_lib.format_day(day, "en", "full") == "friday , november 2 7 , 2 0 2 6"
    assert dates_lib.format_day(day, "fr", "full") == "vendredi 2 7 novembre 2 0 2 6"
    assert dates_lib.format_day(day, "fr", "full", "whole") == "vendredi 27 novembre 2026"
    assert dates_lib.format_day(day, "de", "long") == "2 7 . november 2 0 2 6"
    russian = dates_lib.format_day(day, "ru", "long")          # Babel writes "2026\u202fг."
    assert russian.endswith("2 0 2 6 г .") and "\u202f" not in russian


def test_dates_deterministic_for_a_seed():
    a, b = dates_lib.generate_pairs(SMALL), dates_lib.generate_pairs(SMALL)
    c = dates_lib.generate_pairs(dates_lib.DatesConfig(dates_count=300, dates_seed=5))
    assert a == b and a != c
    assert len(set(a)) == 300                                   # distinct dates


def test_dates_word_order_differs_between_locales():
    months_en = {"january", "february", "march", "april", "may", "june", "july", "august", "september",
                 "october", "november", "december"}
    for src, tgt in dates_lib.generate_pairs(SMALL):
        s, t = src.split(), tgt.split()
        s_month = next(i for i, w in enumerate(s) if w in months_en)
        t_month = next(i for i, w in enumerate(t) if w.isalpha() and i > 0)
        assert s[s_month + 1].isdigit()                         # en: month day
        assert t[t_month - 1].isdigit() and t[1].isdigit()      # fr: weekday day month
        assert [w for w in s if w.isdigit()] == [w for w in t if w.isdigit()]
        assert max(len(s), len(t)) + 1 <= 12


def test_dates_round_trip_through_the_tsv_reader():
    pairs = dates_lib.generate_pairs(SMALL)
    text = dates_lib.make_tsv(SMALL)
    skipped = []
    read = list(tr.iter_pairs(text.encode("utf-8"), "dates", on_bad_line="error", skipped=skipped))
    assert skipped == [] and len(read) == 300
    assert [(" ".join(p.src), " ".join(p.tgt)) for p in read] == pairs
    none = list(tr.iter_pairs(text.encode("utf-8"), "dates", preprocess="none"))
    assert [(p.src, p.tgt) for p in none] == [(p.src, p.tgt) for p in read]


def test_dates_as_a_data_source():
    data = tr.load_translation(tr.TranslationDataConfig(data="dates", batch_size=8), seed=0, options=SMALL)
    assert data.source == "dates" and (len(data.train), len(data.valid), len(data.test)) == (240, 30, 30)
    assert data.truncated() == 0 and data.skipped == []
    assert {"friday", ",", "7"} <= set(data.src_vocab.idx_to_token) and "vendredi" in data.tgt_vocab
    batch = next(data.train_batches(seed=0))
    assert batch["src"].shape == (8, 16)


def test_dates_refuse_bad_configs():
    with pytest.raises(ConfigError, match="writes .* alike"):
        dates_lib.generate_pairs(dates_lib.DatesConfig(dates_count=3000, dates_source_format="short"))
    with pytest.raises(ConfigError, match="unknown locale 'xx'"):
        dates_lib.generate_pairs(dates_lib.DatesConfig(dates_count=10, dates_target="xx"))
    with pytest.raises(ConfigError, match="exceeds the 365 days"):
        dates_lib.generate_pairs(dates_lib.DatesConfig(dates_count=400, dates_first_year=2001, dates_last_year=2001))


def test_padding_uses_each_vocabulary_pad_index(tmp_path):
    path = write(tmp_path, "a\tx y z\nb c d\tw\n")
    src_vocab = Vocab(["a", "b", "c", "d", "<bos>", "<eos>", "<unk>", "<pad>"])
    tgt_vocab = Vocab(["<unk>", "<pad>", "<eos>", "<bos>", "w", "x", "y", "z"])
    data = tr.load_translation(config(path, valid_fraction=0.0, test_fraction=0.0, batch_size=2),
                               src_vocab=src_vocab, tgt_vocab=tgt_vocab)
    [batch] = data.eval_batches("train")
    short = batch["index"].tolist().index(0)
    assert batch["src"][short].tolist() == [0, 5] + [7] * 6
    assert batch["tgt_in"][short].tolist() == [3, 5, 6, 7] + [1] * 4
    assert batch["tgt_out"][1 - short].tolist() == [4, 2] + [1] * 6
