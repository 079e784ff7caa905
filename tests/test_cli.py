"""The `jaxseq` command end to end on the n-gram model (no compiling) and the data commands."""

import json

import numpy as np
import pytest

from jaxseq import cli
from jaxseq.data.lm import LMDataConfig, load_corpus
from jaxseq.ngram import NGramConfig, NGramLM


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("The cat sat on the mat. The dog sat on the log. " * 40, encoding="utf-8")
    return path


def test_ngram_train_evaluate_generate(tmp_path, text_file, capsys):
    workdir = tmp_path / "tri"
    assert cli.main(["train", "lm", "--model", "ngram", "--order", "3", "--smoothing", "kn",
                     "--data", text_file, "--tokens", "word", "--preprocess", "d2l", "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert "3-gram kn: validation perplexity" in out
    for name in ("config.json", "vocab.json", "model.npz", "results.json"):
        assert (workdir / name).exists()
    config = json.loads((workdir / "config.json").read_text())
    assert config["task"] == "lm" and config["ngram"]["order"] == 3 and config["data"]["tokens"] == "word"
    results = json.loads((workdir / "results.json").read_text())

    # evaluate: the last stdout line is JSON with perplexity, nll and tokens, equal to a direct computation
    assert cli.main(["evaluate", "--workdir", workdir]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    corpus = load_corpus(LMDataConfig(data=str(text_file), tokens="word", preprocess="d2l"))
    direct = NGramLM.fit(corpus.train, len(corpus.vocab), NGramConfig(order=3)).evaluate(corpus.valid)
    assert result["tokens"] == direct["tokens"] == len(corpus.valid) - 1
    assert result["perplexity"] == pytest.approx(direct["perplexity"]) == pytest.approx(results["valid"]["perplexity"])
    assert result["nll"] == pytest.approx(np.log(result["perplexity"]))

    # evaluate on another file, with words the vocabulary lacks (warned, scored as <unk>)
    other = tmp_path / "other.txt"
    other.write_text("the cat sat on the zebra")
    assert cli.main(["evaluate", "--workdir", workdir, "--data", other]) == 0
    captured = capsys.readouterr()
    assert "'zebra'" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["tokens"] == 5

    # generate: deterministic for a seed, starts with the prefix
    outs = []
    for _ in range(2):
        assert cli.main(["generate", "--workdir", workdir, "--prefix", "the cat", "--length", "8", "--seed", "3"]) == 0
        outs.append(capsys.readouterr().out.strip())
    assert outs[0] == outs[1] and outs[0].startswith("the cat ") and len(outs[0].split()) == 10


def test_stats_and_zipf_plot(tmp_path, text_file, capsys):
    plot = tmp_path / "zipf.png"
    assert cli.main(["stats", "--data", text_file, "--tokens", "word", "--top", "2", "--plot", plot]) == 0
    out = capsys.readouterr().out
    assert "top unigrams" in out and "top trigrams" in out and "'sat on the'" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_list_and_fetch_errors(tmp_cache, capsys):
    assert cli.main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("builtin", "dates", "timemachine", "fra-eng", "tinyshakespeare"):
        assert name in out
    assert cli.main(["data", "fetch", "nope"]) == 1
    assert "unknown dataset 'nope'" in capsys.readouterr().err
    # an unreachable mirror: a clear one-line error and nothing left in the cache
    assert cli.main(["data", "fetch", "timemachine", "--url", "http://127.0.0.1:9/none.txt"]) == 1
    err = capsys.readouterr().err
    assert "download from http://127.0.0.1:9/none.txt failed" in err and err.count("\n") == 1
    assert not any(p.is_file() for p in tmp_cache.rglob("*"))


@pytest.mark.parametrize("args, message", [
    (["train", "lm", "--model", "ngram", "--order", "0"], "order"),
    (["train", "lm", "--model", "ngram", "--valid-fraction", "0"], "--valid-fraction"),
    (["train", "lm", "--model", "ngram", "--data", "timemachine-typo.txt"], "no such file"),
])
def test_config_errors_are_one_line(tmp_path, capsys, args, message):
    assert cli.main(args + ["--workdir", tmp_path / "w"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not (tmp_path / "w").exists()


def test_allocator_policy_follows_the_model_also_on_resume(tmp_path):
    """glibc's malloc is tuned for Transformer training only (jaxseq/memory.py), also when --resume
    takes the model from the run's config.json."""
    parser = cli.build_parser()
    tuned = lambda argv: getattr(cli._train_spec(parser.parse_args(argv)), "tuned_allocator", False)
    assert tuned(["train", "lm", "--model", "transformer"]) and tuned(["train", "translate", "--model", "transformer"])
    assert not tuned(["train", "lm"]) and not tuned(["train", "translate"])
    (tmp_path / "config.json").write_text('{"task": "lm", "model": {"model": "transformer"}}', encoding="utf-8")
    assert tuned(["train", "lm", "--workdir", str(tmp_path), "--resume"])
    assert not tuned(["train", "lm", "--workdir", str(tmp_path / "x"), "--resume"])


def test_usage_errors_are_one_line_with_status_1(capsys):
    assert cli.main(["train", "lm", "--model", "foo"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxseq: error: jaxseq train lm: argument --model: invalid choice")
    assert cli.main(["generate", "--workdir", "w", "--prefix", "a", "--length", "x"]) == 1
    assert "invalid int value: 'x'" in capsys.readouterr().err
    assert cli.main(["--version"]) == 0
