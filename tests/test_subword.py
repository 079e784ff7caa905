"""Subword vocabularies (byte-level BPE / WordPiece): exact round trip, training split only, files,
manifests, bits per character, and `train lm` / `train translate --tokens bpe` through the CLI."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxseq import cli
from jaxseq.config import from_dict
from jaxseq.data import tokens as tokens_lib
from jaxseq.data import translation as tr
from jaxseq.data.lm import LMDataConfig, load_corpus
from jaxseq.data.subword import SubwordVocab
from jaxseq.data.vocab import DEFAULT_RESERVED, UNK, Vocab
from jaxseq.errors import CheckpointError, ConfigError, DataError
from jaxseq.tasks import lm as lm_task

TEXT = ("The Time Traveller (for so it will be convenient to speak of him) was expounding a recondite "
        "matter to us.\n  His grey eyes shone and twinkled, and his usually pale face was flushed and "
        "animated.\nМосква — столица России. 東京は日本の首都です。 القاهرة عاصمة مصر. 🚀 naïve café"
        "\t<eos> ##tag\r\n") * 6
NON_LATIN = ["Москва — столица России.", "東京は日本の首都です。", "القاهرة عاصمة مصر", "Ελληνικά κείμενα",
             "हिन्दी पाठ", "emoji 🤖🧪 and ZWJ 👩‍🔬", "\x00\x01 control \u200b zero width", "  leading and trailing  \n\n"]
EXTRA = ("<cls>", "<sep>", "<mask>")


@pytest.fixture(scope="module")
def vocabs():
    return {kind: tokens_lib.build_vocab(kind, [TEXT], vocab_size=900, reserved_tokens=DEFAULT_RESERVED + EXTRA)
            for kind in ("bpe", "wordpiece")}


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=60))
def test_round_trip_is_exact_on_any_unicode(vocabs, kind, text):
    vocab = vocabs[kind]
    ids = tokens_lib.encode(vocab, text, kind)
    assert tokens_lib.decode(vocab, ids, kind) == text
    assert ids.dtype == np.int32 and np.all(ids >= len(DEFAULT_RESERVED + EXTRA))   # never a reserved id


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
@settings(max_examples=100, deadline=None)
@given(sentences=st.lists(st.lists(st.text(min_size=1, max_size=8).map(lambda w: "".join(w.split()) or "x"),
                                   max_size=5), max_size=4))
def test_sentences_encode_word_by_word_as_a_whole(vocabs, kind, sentences):
    vocab = vocabs[kind]
    ids, lengths = vocab.encode_sentences(sentences)
    each = [vocab.encode_text(" ".join(s)) for s in sentences]
    assert lengths.tolist() == [len(e) for e in each]
    np.testing.assert_array_equal(ids, np.concatenate(each) if each else np.zeros(0, np.int32))


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_non_latin_text_and_reserved_spellings(vocabs, kind):
    vocab = vocabs[kind]
    for text in NON_LATIN + ["<eos> <pad> <mask> are words here", TEXT]:
        ids = vocab.encode_text(text)
        assert vocab.decode_text(ids) == text
        assert vocab.unk not in ids.tolist()
    # the reserved tokens keep ids 0..k-1 in the order asked for, the extras included
    assert vocab.idx_to_token[:7] == list(DEFAULT_RESERVED + EXTRA)
    assert (vocab.pad, vocab.bos, vocab.eos, vocab.unk) == (0, 1, 2, 3)
    # learned subwords: a frequent word is fewer tokens than its bytes
    assert len(vocab.encode_text("Traveller")) < len("Traveller".encode())


def test_training_is_deterministic_and_sized(vocabs):
    again = tokens_lib.build_vocab("bpe", [TEXT], vocab_size=900, reserved_tokens=DEFAULT_RESERVED + EXTRA)
    assert again == vocabs["bpe"] and again.tokenizer_fingerprint() == vocabs["bpe"].tokenizer_fingerprint()
    assert len(again) <= 900                                            # a small text runs out of merges
    # and in another process (Hugging Face's WordPiece trainer alone breaks ties in hash-map order)
    code = ("import sys; from jaxseq.data import tokens as t; r = t.DEFAULT_RESERVED + ('<cls>', '<sep>', '<mask>'); "
            "text = sys.stdin.buffer.read().decode(); "
            "print(*(t.build_vocab(k, [text], vocab_size=900, reserved_tokens=r).tokenizer_fingerprint() "
            "for k in ('bpe', 'wordpiece')))")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], input=TEXT.encode(), capture_output=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(root)}).stdout.decode()
    assert out.split() == [vocabs[k].tokenizer_fingerprint() for k in ("bpe", "wordpiece")]
    assert len(tokens_lib.build_vocab("bpe", [TEXT], vocab_size=400)) == 400
    assert 520 <= len(tokens_lib.build_vocab("wordpiece", [TEXT], vocab_size=600)) <= 600
    assert tokens_lib.default_vocab_size(["a b c"] * 3) == 320          # 256 + 3 // 4 -> 64-multiple
    assert tokens_lib.default_vocab_size([" ".join(map(str, range(400_000)))]) == 32000


def test_saved_and_loaded_give_identical_ids(vocabs, tmp_path):
    for kind, vocab in vocabs.items():
        path = tmp_path / f"{kind}_src_vocab.json"
        vocab.save(path)
        assert (tmp_path / f"{kind}_src_tokenizer.json").exists()
        loaded = Vocab.load(path)
        assert isinstance(loaded, SubwordVocab) and loaded == vocab and loaded.kind == kind
        for text in NON_LATIN:
            np.testing.assert_array_equal(loaded.encode_text(text), vocab.encode_text(text))
        assert loaded.fingerprints("src_vocab.json") == vocab.fingerprints("src_vocab.json")
    # the tokenizer is part of the vocabulary: missing, or from another run, is refused in one line
    vocabs["bpe"].save(tmp_path / "vocab.json")
    other = tokens_lib.build_vocab("bpe", [TEXT[:300]], vocab_size=400)
    (tmp_path / "tokenizer.json").write_text(other.hf_json, encoding="utf-8")
    with pytest.raises(DataError, match="tokenizer.json: its fingerprint does not match"):
        Vocab.load(tmp_path / "vocab.json")
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(DataError, match="tokenizer.json: missing"):
        Vocab.load(tmp_path / "vocab.json")


def test_manifest_refuses_another_tokenizer(vocabs):
    from jaxseq.tasks import runner
    run = lm_task.resolve(model="gru", tokens="bpe")
    params = {"w": np.zeros((2, 3), np.float32)}
    saved = runner.manifest(run, {"vocab.json": vocabs["bpe"]}, params, None).to_dict()
    assert set(saved["vocab"]) == {"vocab.json", "tokenizer.json"}
    other = tokens_lib.build_vocab("bpe", [TEXT[:-200]], vocab_size=900, reserved_tokens=DEFAULT_RESERVED + EXTRA)
    now = runner.manifest(run, {"vocab.json": other}, params, None)
    with pytest.raises(CheckpointError, match=r"another vocabulary \(vocab tokenizer.json: checkpoint"):
        now.check(saved, 10, "w")
    runner.manifest(run, {"vocab.json": vocabs["bpe"]}, params, None).check(saved, 10, "w")   # same: accepted


def test_lm_tokenizer_sees_the_training_split_only(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abc abd abe " * 200 + "qqqzzz " * 100, encoding="utf-8")   # the last ~23%: validation only
    corpus = load_corpus(LMDataConfig(data=str(path), tokens="bpe", vocab_size=300, valid_fraction=0.25))
    assert not [t for t in corpus.vocab.idx_to_token if "qq" in t or "zz" in t]
    assert any("ab" in t for t in corpus.vocab.idx_to_token)
    text = path.read_text()
    cut = len(text) - round(len(text) * 0.25)
    assert corpus.vocab.decode_text(corpus.train) == text[:cut]
    assert corpus.vocab.decode_text(corpus.valid) == text[cut:]


def test_translation_vocabularies_joint_or_separate(tmp_path):
    path = tmp_path / "pairs.tsv"
    lines = [f"the cat sat {i}\tle chat assis {i}" for i in range(30)] + ["zebra zebra\tzèbre zèbre"] * 10
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = dict(data=str(path), tokens="bpe", vocab_size=300, split="head", valid_fraction=0.25, test_fraction=0,
                min_freq=1)
    data = tr.load_translation(tr.TranslationDataConfig(**base))
    assert data.src_vocab != data.tgt_vocab
    assert not [t for v in (data.src_vocab, data.tgt_vocab) for t in v.idx_to_token if "zeb" in t or "zè" in t]
    joint = tr.load_translation(tr.TranslationDataConfig(**base, joint_vocab=True))
    assert joint.src_vocab is joint.tgt_vocab
    # encoded pairs decode back to the (normalised) sentences; <eos> closes each
    enc = joint.encoded("valid")
    for i, pair in enumerate(joint.valid):
        ids = enc.tgt_ids[enc.tgt_start[i]:enc.tgt_start[i] + enc.tgt_len[i]]
        assert ids[-1] == joint.tgt_vocab.eos and tr.decode_target(ids, joint.tgt_vocab) == " ".join(pair.tgt)
    # a config saved before these flags existed reads as words, one vocabulary per language
    old = {k: v for k, v in tr.TranslationDataConfig().__dict__.items() if k not in ("tokens", "vocab_size",
                                                                                     "joint_vocab")}
    restored = from_dict(tr.TranslationDataConfig, old)
    assert (restored.tokens, restored.vocab_size, restored.joint_vocab) == ("word", None, False)


def test_bad_vocab_size_is_one_line():
    with pytest.raises(ConfigError, match="--vocab-size applies to --tokens bpe or wordpiece, not --tokens word"):
        LMDataConfig(tokens="word", vocab_size=500).validate()
    with pytest.raises(ConfigError, match="--vocab-size 100 is too small for --tokens bpe"):
        tokens_lib.build_vocab("bpe", ["some text"], vocab_size=100)
    assert cli.main(["train", "translate", "--vocab-size", "500"]) == 1


def test_bits_per_char_by_hand():
    """bpc = total NLL in bits / characters the scored targets spell (first token: context only)."""
    run = lm_task.resolve(model="gru", tokens="char")
    vocab = Vocab.build(list("hello world"), reserved_tokens=(UNK,))
    ids = vocab.encode(list("hello world"))
    scores = {"nll": 1.3, "tokens": len(ids) - 1}
    out = lm_task.per_char(run, vocab, ids, scores)
    assert out["chars"] == 10 and math.isclose(out["bits_per_char"], 1.3 / math.log(2))
    word_run = lm_task.resolve(model="gru", tokens="word")
    wv = Vocab.build("hello big world".split(), reserved_tokens=(UNK,))
    out = lm_task.per_char(word_run, wv, wv.encode("hello big world".split()), {"nll": 2.0, "tokens": 2})
    assert out["chars"] == len(" big world") and math.isclose(out["bits_per_char"], 2.0 * 2 / (10 * math.log(2)))


# -- through the CLI -------------------------------------------------------------------------------

def test_train_lm_bpe_then_generate_and_evaluate(tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXT * 3, encoding="utf-8")
    workdir = tmp_path / "lm"
    assert cli.main(["train", "lm", "--data", str(text), "--tokens", "bpe", "--vocab-size", "320", "--model", "ngram",
                     "--order", "3", "--workdir", str(workdir)]) == 0
    assert (workdir / "tokenizer.json").exists() and isinstance(Vocab.load(workdir / "vocab.json"), SubwordVocab)
    capsys.readouterr()
    assert cli.main(["generate", "--workdir", str(workdir), "--prefix", "Москва 東京", "--length", "6"]) == 0
    assert capsys.readouterr().out.startswith("Москва 東京")          # the prefix comes back exactly
    assert cli.main(["evaluate", "--workdir", str(workdir)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run, vocabs = lm_task.runner.load_run(workdir, lm_task.TASK)
    valid = load_corpus(run.data, vocab=vocabs["vocab.json"]).valid
    full = (TEXT * 3)
    valid_text = full[len(full) - round(len(full) * run.data.valid_fraction):]
    assert result["chars"] == len(valid_text) - len(vocabs["vocab.json"].decode_text(valid[:1]))
    assert math.isclose(result["bits_per_char"], result["nll"] * result["tokens"] / (result["chars"] * math.log(2)))
    # another --tokens on resume is refused, naming the flag
    assert cli.main(["train", "lm", "--workdir", str(workdir), "--resume", "--tokens", "wordpiece"]) == 1
    assert "--tokens" in capsys.readouterr().err


def test_train_translate_bpe_joint_memorises_then_translates(tmp_path, capsys):
    pairs = [("one cat", "un chat"), ("two cats", "deux chats"), ("one dog", "un chien"),
             ("two dogs", "deux chiens"), ("the big cat", "le gros chat"), ("the big dog", "le gros chien"),
             ("a cat and a dog", "un chat et un chien"), ("two big dogs", "deux gros chiens")]
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    workdir = tmp_path / "tr"
    assert cli.main(["train", "translate", "--data", str(path), "--tokens", "bpe", "--vocab-size", "300",
                     "--joint-vocab", "--min-freq", "1", "--max-len", "12", "--valid-fraction", "0",
                     "--test-fraction", "0", "--batch-size", "8", "--buckets", "none", "--embed", "16", "--hidden",
                     "32", "--layers", "1", "--dropout", "0", "--lr", "0.03", "--steps", "60", "--eval-every", "0",
                     "--log-every", "20", "--no-progress", "--beam", "1", "--examples", "0", "--devices", "1",
                     "--workdir", str(workdir)]) == 0
    for side in ("src", "tgt"):
        assert (workdir / f"{side}_tokenizer.json").exists()
    assert Vocab.load(workdir / "src_vocab.json") == Vocab.load(workdir / "tgt_vocab.json")
    capsys.readouterr()
    sources = tmp_path / "sources.txt"          # all 8: the batch shape evaluate decodes (compiled once)
    sources.write_text("".join(f"{src}\n" for src, _ in pairs), encoding="utf-8")
    assert cli.main(["translate", "--workdir", str(workdir), "--input", str(sources)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-len(pairs):] == [tgt for _, tgt in pairs]
    assert cli.main(["evaluate", "--workdir", str(workdir), "--data", str(path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["exact"] == 1.0 and result["bleu"] == pytest.approx(100.0)
