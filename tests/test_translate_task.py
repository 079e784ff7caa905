"""The translation job end to end through the CLI: memorise a tiny pair set, evaluate, translate, errors."""

import json
import shutil

import pytest

from jaxseq import cli
from jaxseq.checkpoint import Checkpointer
from jaxseq.data.vocab import Vocab

PAIRS = [("one cat", "un chat"), ("two cats", "deux chats"), ("one dog", "un chien"),
         ("two dogs", "deux chiens"), ("the big cat", "le gros chat"), ("the big dog", "le gros chien"),
         ("a cat and a dog", "un chat et un chien"), ("two big dogs", "deux gros chiens")]
TINY = ["--min-freq", "1", "--max-len", "8", "--valid-fraction", "0", "--test-fraction", "0", "--batch-size", "8",
        "--embed", "16", "--hidden", "32", "--layers", "1", "--dropout", "0", "--lr", "0.02", "--steps", "120",
        "--eval-every", "0", "--log-every", "40", "--no-progress"]


def run_cli(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
    path.write_text("".join(f"{s}\t{t}\n" for s, t in PAIRS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pairs_file):
    """A bahdanau model trained through ``jaxseq train translate`` until it knows the pairs by heart."""
    workdir = tmp_path_factory.mktemp("runs") / "tiny"
    code = cli.main(["train", "translate", "--data", str(pairs_file), *TINY, "--workdir", str(workdir)])
    assert code == 0
    return workdir


def test_workdir_layout_and_manifest(trained):
    for name in ("config.json", "src_vocab.json", "tgt_vocab.json", "metrics.jsonl", "results.json", "curve.png"):
        assert (trained / name).exists(), name
    config = json.loads((trained / "config.json").read_text())
    assert config["task"] == "translate" and config["model"]["model"] == "bahdanau"
    ckpt = Checkpointer(trained / "checkpoints", read_only=True)
    try:
        manifest = ckpt.read_manifest(ckpt.latest_step())
    finally:
        ckpt.close()
    assert manifest["vocab"] == {"src_vocab.json": Vocab.load(trained / "src_vocab.json").fingerprint(),
                                 "tgt_vocab.json": Vocab.load(trained / "tgt_vocab.json").fingerprint()}
    assert manifest["model"]["model"]["model"] == "bahdanau" and manifest["model"]["rnn"]["hidden"] == 32
    assert len(manifest["data"]) == 64                     # the SHA-256 of the token ids trained on


def test_memorises_the_pairs_to_bleu_100(trained, pairs_file, capsys):
    code, out, _ = run_cli(capsys, "evaluate", "--workdir", trained, "--data", pairs_file)
    result = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and result["pairs"] == len(PAIRS)
    assert result["bleu"] == pytest.approx(100.0) and result["exact"] == 1.0
    assert result["loss"] < 0.1
    code, out, _ = run_cli(capsys, "evaluate", "--workdir", trained, "--data", pairs_file, "--beam", "3")
    assert json.loads(out.strip().splitlines()[-1])["bleu"] == pytest.approx(100.0)


def test_translate_arguments_file_beam_and_attention(trained, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "translate", "--workdir", trained, "one cat", "two big dogs")
    assert code == 0 and out.splitlines() == ["un chat", "deux gros chiens"]
    source = tmp_path / "in.txt"
    source.write_text("the big dog\na cat and a dog\n\n", encoding="utf-8")
    png = tmp_path / "attention.png"
    code, out, _ = run_cli(capsys, "translate", "--workdir", trained, "--input", source, "--beam", "3",
                           "--show-attention", png)
    assert code == 0 and out.splitlines() == ["le gros chien", "un chat et un chien"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_python_loader_translates_like_the_cli(trained):
    import jaxseq
    loaded = jaxseq.load(trained)
    assert loaded.run.task == "translate" and loaded.step == json.loads((trained / "results.json").read_text())["step"]
    assert loaded.translate(["one cat", "two big dogs"]) == ["un chat", "deux gros chiens"]
    assert loaded.translate(["the big dog"], beam=3) == ["le gros chien"]
    with pytest.raises(jaxseq.ConfigError, match="needs a language-model run"):
        loaded.generate("one", 3)


def test_unknown_words_become_unk_with_a_warning(trained, capsys):
    code, out, err = run_cli(capsys, "translate", "--workdir", trained, "one zebra")
    assert code == 0 and len(out.splitlines()) == 1
    assert "'zebra'" in err and "<unk>" in err


@pytest.mark.parametrize("args, message", [
    (["translate"], "nothing to translate"),
    (["translate", "--beam", "0", "one cat"], "--beam must be at least 1"),
    (["translate", "--input", "{tmp}/missing.txt"], "missing.txt: no such file"),
    (["translate", "--input", "{tmp}/blank.txt"], "blank.txt:2: empty sentence"),
    (["translate", "--input", "{tmp}/binary.txt"], "looks binary"),
    (["translate", "--input", "{tmp}/blank.txt", "one cat"], "not both"),
    (["evaluate", "--data", "{tmp}/bad.tsv"], "bad.tsv:2: no tab"),
    (["evaluate", "--data", "{tmp}/missing.tsv"], "missing.tsv: no such file"),
    (["evaluate", "--eval-context", "window"], "--eval-context: for language-model runs"),
])
def test_bad_input_gives_one_line_errors(trained, tmp_path, capsys, args, message):
    (tmp_path / "blank.txt").write_text("one cat\n\ntwo dogs\n", encoding="utf-8")
    (tmp_path / "binary.txt").write_bytes(b"one\x00cat\n")
    (tmp_path / "bad.tsv").write_text("one cat\tun chat\none dog un chien\n", encoding="utf-8")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = run_cli(capsys, args[0], "--workdir", trained, *args[1:])
    assert code == 1 and out == ""
    assert err.startswith("jaxseq: error: ") and err.count("\n") == 1 and message in err


def test_show_attention_needs_an_attention_model(trained, tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("src_vocab.json", "tgt_vocab.json"):
        shutil.copy(trained / name, plain / name)
    config = json.loads((trained / "config.json").read_text())
    config["model"]["model"] = "seq2seq"
    (plain / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(capsys, "translate", "--workdir", plain, "--show-attention", tmp_path / "a.png", "one cat")
    assert code == 1 and "no attention" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "evaluate", "--workdir", tmp_path / "nowhere")
    assert code == 1 and "no such work directory" in err


def test_resume_continues_the_run(trained, pairs_file, tmp_path, capsys):
    workdir = tmp_path / "resumed"
    shutil.copytree(trained, workdir)
    code, out, _ = run_cli(capsys, "train", "translate", "--workdir", workdir, "--resume", "--steps", "125",
                           "--data", pairs_file, "--no-progress")
    assert code == 0 and "resumed from step 120" in out
    assert json.loads((workdir / "results.json").read_text())["step"] == 125
    code, _, err = run_cli(capsys, "train", "translate", "--workdir", workdir, "--resume", "--hidden", "64")
    assert code == 1 and "--hidden 64 differs" in err


TRANSFORMER = ["--model", "transformer", "--d-model", "32", "--heads", "2", "--ffn", "64", "--label-smoothing",
               "0.05", "--schedule", "rsqrt", "--warmup", "20"]


def test_transformer_memorises_the_pairs_and_draws_every_head(pairs_file, tmp_path, capsys):
    """``--model transformer`` through the same job: label smoothing, the rsqrt warmup schedule,
    greedy and beam search, and attention grids per layer and head."""
    workdir = tmp_path / "transformer"
    code, out, _ = run_cli(capsys, "train", "translate", "--data", pairs_file, *TINY, *TRANSFORMER,
                           "--lr", "0.01", "--steps", "150", "--workdir", workdir)
    assert code == 0 and "model: transformer" in out
    config = json.loads((workdir / "config.json").read_text())
    assert config["transformer"]["d_model"] == 32 and config["train"]["label_smoothing"] == 0.05
    assert "rnn" not in config                      # --embed and --hidden are the RNN models' flags
    code, out, _ = run_cli(capsys, "evaluate", "--workdir", workdir, "--data", pairs_file, "--beam", "3")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["bleu"] == pytest.approx(100.0) and result["exact"] == 1.0
    png = tmp_path / "heads.png"
    code, out, _ = run_cli(capsys, "translate", "--workdir", workdir, "the big dog", "two cats",
                           "--show-attention", png)
    assert code == 0 and out.splitlines() == ["le gros chien", "deux chats"]
    for path in (png, tmp_path / "heads.png.encoder.png", tmp_path / "heads.png.decoder.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run_cli(capsys, "translate", "--workdir", workdir, "--max-len", "9", "one cat")
    assert code == 1 and "--max-len 9: the model has 8 positions" in err and err.count("\n") == 1
