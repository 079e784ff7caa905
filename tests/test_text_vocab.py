"""Strict text reading, preprocessing, tokenizers and the vocabulary."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxseq.data.text import decode_utf8, detokenize, preprocess, read_text, tokenize
from jaxseq.data.vocab import (RESERVED_STRINGS, UNK, Vocab, count_reserved, require_real_tokens,
                               reserved_warning)
from jaxseq.errors import DataError, JaxseqError


def test_read_text_good_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("héllo wörld\n", encoding="utf-8")
    assert read_text(p) == "héllo wörld\n"


def test_read_text_drops_bom(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbfabc")
    assert read_text(p) == "abc"


@pytest.mark.parametrize("content, fragment", [
    (None, "no such file"),
    (b"", "is empty"),
    (b"  \n\t\n", "is empty"),
    (b"abc\x00def", "NUL byte at offset 3"),
    (b"caf\xc3\xa9 ok then \xff bad", "byte offset 14"),
])
def test_read_text_refuses_bad_files(tmp_path, content, fragment):
    p = tmp_path / "f.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_text(p)
    message = str(err.value)
    assert fragment in message and str(p) in message and "\n" not in message
    assert isinstance(err.value, JaxseqError)


def test_bad_bytes_are_named_by_line_and_offset(tmp_path):
    p = tmp_path / "f.txt"
    p.write_bytes(b"one\ntwo\nth\xffree\n")
    with pytest.raises(DataError, match=rf"^{p}:3: not valid UTF-8 at byte offset 10 \(byte 0xff\); convert"):
        read_text(p)
    with pytest.raises(DataError, match=r"^x: looks binary \(NUL byte at offset 1\); give pairs, please$"):
        decode_utf8(b"a\x00b", "x", expect="pairs, please")
    with pytest.raises(DataError, match=r"^x:1: not valid UTF-8 .*; or else$"):
        decode_utf8(b"\xc3", "x", fix="or else")


def test_read_text_refuses_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        read_text(tmp_path)


def test_preprocess_d2l():
    assert preprocess("The Time-Machine, by H. G. Wells [1898]\n\nI", "d2l") == \
        "the time machine by h g wells i"
    assert preprocess("Keep IT", "none") == "Keep IT"
    with pytest.raises(DataError):
        preprocess("x", "fancy")


def test_tokenizers_round_trip():
    text = "to be or  not"
    assert tokenize(text, "char") == list(text)
    assert tokenize(text, "word") == ["to", "be", "or", "not"]
    assert detokenize(tokenize(text, "char"), "char") == text
    assert detokenize(tokenize(text, "word"), "word") == "to be or not"


def test_vocab_order_and_reserved():
    vocab = Vocab.build("abracadabra", reserved_tokens=("<pad>", "<bos>", "<eos>", UNK))
    # reserved first, then by count (a:5, b:2, r:2, c:1, d:1), ties by code point
    assert vocab.idx_to_token == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "b", "r", "c", "d"]
    assert (vocab.pad, vocab.bos, vocab.eos, vocab.unk) == (0, 1, 2, 3)
    assert vocab.encode("abz").tolist() == [4, 5, 3]
    assert vocab.decode([4, 5, 3]) == ["a", "b", UNK]


def test_vocab_min_freq_and_unknown():
    vocab = Vocab.build("aaabbc", min_freq=2, reserved_tokens=(UNK,))
    assert vocab.idx_to_token == [UNK, "a", "b"]
    assert vocab.encode("abc").tolist() == [1, 2, 0]
    assert vocab.unknown("xcax") == ["x", "c"]
    assert vocab.pad is None


def test_vocab_save_load_and_fingerprint(tmp_path):
    vocab = Vocab.build(list("hello world"))
    path = tmp_path / "vocab.json"
    vocab.save(path)
    again = Vocab.load(path)
    assert again == vocab and again.fingerprint() == vocab.fingerprint()
    # same size, another order: another fingerprint
    swapped = list(vocab.idx_to_token)
    swapped[-1], swapped[-2] = swapped[-2], swapped[-1]
    assert Vocab(swapped).fingerprint() != vocab.fingerprint()
    # an edited file is refused
    data = json.loads(path.read_text())
    data["tokens"] = swapped
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="fingerprint"):
        Vocab.load(path)
    path.write_text("not json")
    with pytest.raises(DataError, match="not a jaxseq vocabulary"):
        Vocab.load(path)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_vocab_round_trips_any_unicode_chars(text):
    vocab = Vocab.build(list(text))
    ids = vocab.encode(list(text))
    assert ids.dtype == np.int32
    assert UNK not in vocab.decode(ids) or UNK in text
    assert "".join(vocab.decode(ids)) == text


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1).filter(lambda w: not any(c.isspace() for c in w))
                | st.sampled_from(sorted(RESERVED_STRINGS)), min_size=1))
def test_vocab_round_trips_any_unicode_words(words):
    vocab = Vocab.build(words)
    assert vocab.decode(vocab.encode(words)) == [UNK if w in RESERVED_STRINGS else w for w in words]


def test_reserved_strings_in_the_text_are_escaped_to_unk():
    """``<eos>`` as a word of the text is <unk>, never the special id; build never counts it."""
    words = ["<eos>", "go", "<bos>", "<eos>", "go", "<pad>", "<unk>", "<sep>"]
    vocab = Vocab.build(words)
    assert vocab.idx_to_token == ["<pad>", "<bos>", "<eos>", "<unk>", "go", "<sep>"]
    assert vocab.encode(words).tolist() == [3, 4, 3, 3, 4, 3, 3, 5]
    assert vocab.unknown(words) == ["<eos>", "<bos>", "<pad>", "<unk>"]
    assert "<eos>" in vocab and vocab.eos == 2                   # the special token itself is there
    lm = Vocab.build(words, reserved_tokens=(UNK,))              # a language model reserves only <unk>
    assert lm.idx_to_token == ["<unk>", "go", "<sep>"] and lm.encode(["<eos>"]).tolist() == [0]
    counts = count_reserved(words)
    assert counts == {"<eos>": 2, "<bos>": 1, "<pad>": 1, "<unk>": 1}
    assert reserved_warning(counts, "f.txt") == ("f.txt: 5 occurrences of reserved token strings in the text "
                                                 "(<eos> x2, <bos> x1, <pad> x1, <unk> x1) are read as <unk>, not as "
                                                 "the special tokens; rename them in the file if they are words")
    assert reserved_warning(count_reserved(["go"]), "f.txt") is None


def test_require_real_tokens():
    tokens = list("aab")
    require_real_tokens(Vocab.build(tokens, min_freq=2), tokens, min_freq=2, source="s", what="token", of="t")
    with pytest.raises(DataError, match=r"^s: --min-freq 3 keeps no token of t \(the most frequent, 'a', is seen 2 "
                                        r"times\), so every token would be <unk>; lower --min-freq to 2 or less"):
        require_real_tokens(Vocab.build(tokens, min_freq=3), tokens, min_freq=3, source="s", what="token", of="t")
    only = ["<eos>", "<eos>"]
    with pytest.raises(DataError, match="^s: t holds no word other than reserved token strings"):
        require_real_tokens(Vocab.build(only), only, min_freq=1, source="s", what="word", of="t")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(min_size=1), min_size=1))
def test_vocab_json_round_trip_exact(tmp_path_factory, tokens):
    vocab = Vocab.build(tokens)
    path = tmp_path_factory.mktemp("v") / "vocab.json"
    vocab.save(path)
    assert Vocab.load(path).idx_to_token == vocab.idx_to_token
