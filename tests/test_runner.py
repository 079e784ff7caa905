"""The runner, the registry and the config rules: flags, per-model defaults, resume rules, data identity."""

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest

from jaxseq import cli, config as config_lib
from jaxseq.errors import CheckpointError, ConfigError
from jaxseq.models import registry
from jaxseq.tasks import lm as lm_task
from jaxseq.tasks import translate as translate_task
from jaxseq.train import TrainConfig

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 30
FLAGS = ["--seq-len", "8", "--batch-size", "8", "--hidden", "16", "--lr", "0.01", "--eval-every", "0",
         "--log-every", "2", "--no-progress", "--no-baseline", "--sample", "0"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-step GRU run checkpointed at its end (and its corpus)."""
    tmp = tmp_path_factory.mktemp("runner")
    corpus = tmp / "corpus.txt"
    corpus.write_text(TEXT)
    workdir = tmp / "run"
    assert cli.main(["train", "lm", "--data", corpus, "--workdir", workdir, "--steps", 6, *FLAGS]) == 0
    return corpus, workdir


# -- config rules on the fields -------------------------------------------------------------

def test_field_rules_are_checked_once_with_the_flag_name():
    @dataclasses.dataclass(frozen=True)
    class Example(config_lib.Config):
        rate: float = config_lib.option(0.5, "a rate", minimum=0.0, below=1.0)
        count: int | None = config_lib.option(None, "a count", minimum=1)
        mode: str = config_lib.option("a", "a mode", choices=("a", "b"))
        size: int = config_lib.option(2, "a size", above=0, flag="--the-size")

    Example().validate()
    Example(count=3, rate=0.0).validate()
    for bad, message in ((dict(rate=1.0), r"--rate must lie in \[0, 1\), got 1"),
                         (dict(rate=float("nan")), "--rate must lie in"),
                         (dict(count=0), "--count must be at least 1, got 0"),
                         (dict(count=2.5), "--count must be an integer, got 2.5"),
                         (dict(mode="c"), "--mode must be one of a, b, got 'c'"),
                         (dict(size=0), "--the-size must be greater than 0, got 0"),
                         (dict(size="2"), "--the-size must be a number")):
        with pytest.raises(ConfigError, match=message):
            Example(**bad).validate()


def test_resumable_flags_are_declared_on_the_fields():
    flags = config_lib.resumable_flags(lm_task.TASK.sections.values())
    for flag in ("--steps", "--epochs", "--time-limit", "--eval-every", "--checkpoint-every", "--log-every",
                 "--keep", "--progress", "--max-nonfinite", "--devices", "--lr", "--clip"):
        assert flag in flags
    for flag in ("--hidden", "--optimizer", "--seq-len", "--data", "--model", "--seed"):
        assert flag not in flags


# -- the registry and per-model defaults -------------------------------------------------------

def test_registry_knows_every_model_and_its_capabilities():
    assert set(registry.names("lm")) == {"ngram", "rnn", "gru", "lstm", "mingru", "minlstm", "transformer"}
    assert set(registry.names("translate")) == {"seq2seq", "bahdanau", "transformer"}
    assert not registry.get("lm", "ngram").neural and registry.get("lm", "gru").carries_state
    assert registry.get("translate", "bahdanau").cross_attention
    assert not registry.get("translate", "seq2seq").cross_attention
    assert registry.get("translate", "transformer").layered_attention
    with pytest.raises(ConfigError, match="--model must be one of .*got 'gpt'"):
        registry.get("lm", "gpt")


def test_no_dispatch_on_model_names_or_classes_outside_the_registry():
    """Code asks capabilities: no `== "<model>"` comparison or isinstance(<model class>) in the package."""
    names = set(registry.names("lm")) | set(registry.names("translate"))
    pattern = re.compile(r"""(==|!=)\s*["'](%s)["']|["'](%s)["']\s*(==|!=)|isinstance\([^)]*(LM|EncoderDecoder)\b"""
                         % ("|".join(names), "|".join(names)))
    offenders = [f"{path.relative_to(ROOT)}:{i}" for path in (ROOT / "jaxseq").rglob("*.py")
                 for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_each_model_brings_its_defaults_and_a_flag_wins():
    gpt = lm_task.resolve(model="transformer")
    assert (gpt.transformer.norm, gpt.optim.schedule, gpt.data.seq_len, gpt.model.layers) == ("pre", "cosine", 64, 4)
    assert "rnn" not in gpt.sections and "minrnn" not in gpt.sections
    assert lm_task.resolve(model="transformer", layers=2, seq_len=32).model.layers == 2
    gru = lm_task.resolve()
    assert (gru.model.model, gru.rnn.hidden, gru.optim.schedule, gru.data.seq_len) == ("gru", 256, "constant", 35)
    assert lm_task.resolve(model="mingru").minrnn.hidden == 192
    # --optimizer governs its section: the model's own optimizer defaults (AdamW's weight decay) step aside
    assert (lm_task.resolve(model="transformer", optimizer="adam").optim.weight_decay,
            lm_task.resolve(model="transformer", optimizer="adam").optim.schedule) == (None, "constant")
    assert lm_task.resolve(model="gru", hidden=128.0).rnn.hidden == 128          # plain Python types
    mt = translate_task.resolve(model="transformer")
    assert (mt.transformer.d_model, mt.train.label_smoothing, mt.optim.warmup) == (256, 0.1, 200)


def test_help_groups_flags_by_family_and_shows_each_models_defaults(capsys):
    assert cli.main(["train", "lm", "--help"]) == 0
    out = capsys.readouterr().out
    assert "rnn (--model rnn, gru, lstm):" in out and "transformer (--model transformer):" in out
    assert "minrnn (--model mingru, minlstm):" in out
    assert re.search(r"--lr LR .*default: None; transformer 0.001", " ".join(out.split()))


def test_a_flag_the_model_does_not_read_is_reported(capsys):
    lm_task.TASK.resolve({"model": "gru", "d_model": 64})
    assert "--model gru does not use --d-model; ignored" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown lm setting.*hiden"):
        lm_task.resolve(hiden=128)


# -- resume: what may change, what may not, data identity ----------------------------------------

def test_resume_takes_run_length_and_logistics_flags(trained, tmp_path):
    corpus, workdir = trained
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(workdir), str(run)], check=True)
    assert cli.main(["train", "lm", "--workdir", run, "--resume", "--steps", 8, "--time-limit", 60, "--lr", 0.005,
                     "--eval-every", 4, "--checkpoint-every", 4, "--log-every", 1, "--keep", 2,
                     "--no-progress", "--sample", "0", "--no-baseline"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["train"]["steps"], saved["train"]["time_limit"], saved["train"]["keep"]) == (8, 60.0, 2)
    assert saved["optim"]["lr"] == 0.005           # what the non-finite stop's message tells a diverged run to do
    assert json.loads((run / "results.json").read_text())["step"] == 8
    # --epochs replaces --steps on resume
    assert cli.main(["train", "lm", "--workdir", run, "--resume", "--epochs", 1, "--no-progress", "--sample", "0",
                     "--no-baseline"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["steps"] is None and saved["train"]["epochs"] == 1


@pytest.mark.parametrize("flag, value", [("--hidden", "32"), ("--optimizer", "sgd"), ("--seq-len", "16")])
def test_resume_refuses_model_and_data_flags(trained, capsys, flag, value):
    corpus, workdir = trained
    before = sorted(p.name for p in workdir.rglob("*"))
    assert cli.main(["train", "lm", "--workdir", workdir, "--resume", flag, value]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{flag} {value}" in err and "differs from the run being resumed" in err
    assert sorted(p.name for p in workdir.rglob("*")) == before


def test_resume_after_the_training_file_changed_is_refused(trained, tmp_path, capsys):
    corpus, workdir = trained
    changed = tmp_path / "corpus.txt"
    changed.write_text(TEXT)
    run = tmp_path / "run"
    assert cli.main(["train", "lm", "--data", changed, "--workdir", run, "--steps", 4, *FLAGS]) == 0
    with open(changed, "a") as f:
        f.write("It was the best of times. " * 3)                     # same characters, more of them
    capsys.readouterr()
    assert cli.main(["train", "lm", "--workdir", run, "--resume", "--steps", 6, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "belongs to other data" in err and "--allow-data-change" in err
    # evaluate on the validation split refuses it too; the explicit flag accepts it
    assert cli.main(["evaluate", "--workdir", run]) == 1
    assert "other data" in capsys.readouterr().err
    assert cli.main(["evaluate", "--workdir", run, "--allow-data-change"]) == 0
    assert cli.main(["train", "lm", "--workdir", run, "--resume", "--steps", 6, "--no-progress", "--sample", "0",
                     "--no-baseline", "--allow-data-change"]) == 0
    assert json.loads((run / "results.json").read_text())["step"] == 6
    # the new data is the run's data from now on
    assert cli.main(["train", "lm", "--workdir", run, "--resume", "--steps", 7, "--no-progress", "--sample", "0",
                     "--no-baseline"]) == 0


def test_restart_keeps_the_saved_settings_and_foreign_folders(trained, tmp_path):
    corpus, workdir = trained
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(workdir), str(run)], check=True)
    (run / "checkpoints" / "77").mkdir()
    (run / "checkpoints" / "77" / "mine.txt").write_text("not jaxseq's")
    assert cli.main(["train", "lm", "--workdir", run, "--restart", "--lr", 0.005, "--steps", 2, "--no-progress",
                     "--sample", 0, "--no-baseline"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["rnn"]["hidden"], saved["data"]["seq_len"], saved["optim"]["lr"]) == (16, 8, 0.005)
    assert json.loads((run / "results.json").read_text())["step"] == 2
    assert (run / "checkpoints" / "77" / "mine.txt").read_text() == "not jaxseq's"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name != "77") == ["2"]


def test_a_refused_resume_leaves_config_json_as_it_was(trained, tmp_path):
    corpus, workdir = trained
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(workdir), str(run)], check=True)
    (run / "vocab.json").write_text((run / "vocab.json").read_text().replace('"a"', '"A"'))  # another vocabulary
    before = (run / "config.json").read_text()
    assert cli.main(["train", "lm", "--workdir", run, "--resume", "--steps", 9, "--lr", 0.5]) == 1
    assert (run / "config.json").read_text() == before


def test_data_is_saved_by_absolute_path_and_read_from_anywhere(trained, tmp_path, monkeypatch, capsys):
    corpus, workdir = trained
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["data"]["data"] == str(corpus.resolve())
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("another file of the same name")
    capsys.readouterr()
    assert cli.main(["evaluate", "--workdir", workdir]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["data"].startswith(str(corpus.resolve()))


def test_results_do_not_change_through_the_api(trained, tmp_path):
    """jaxseq.fit with the same flags gives the CLI run's numbers exactly."""
    import jaxseq
    corpus, workdir = trained
    results = jaxseq.fit("lm", workdir=tmp_path / "api", data=str(corpus), steps=6, seq_len=8, batch_size=8,
                         hidden=16, lr=0.01, eval_every=0, log_every=2, progress=False, baseline=False,
                         sample_length=0, echo=None)
    cli_valid = json.loads((workdir / "results.json").read_text())["valid"]
    assert {k: v for k, v in results["valid"].items() if k != "wall_time"} == \
        {k: v for k, v in cli_valid.items() if k != "wall_time"}
    trained_run = jaxseq.load(tmp_path / "api")
    assert trained_run.step == 6 and trained_run.run.rnn.hidden == 16
    assert trained_run.log_prob("It was the best") < 0
    assert trained_run.generate("It was", 5, temperature=0).startswith("It was")
    with pytest.raises(CheckpointError, match="no such work directory"):
        jaxseq.load(tmp_path / "missing")


def test_max_nonfinite_is_a_training_setting():
    assert TrainConfig(max_nonfinite=3).max_nonfinite == 3
    with pytest.raises(ConfigError, match="--max-nonfinite must be at least 1"):
        TrainConfig(max_nonfinite=0).validate()


# -- evaluation of recurrent models: the state carried through the held-out text -------------

def test_recurrent_models_are_scored_on_the_continuous_stream(trained, capsys):
    """Trained with random windows, the GRU is still scored carrying its state through the held-out
    text (as B contiguous rows); the windowed score stays behind --eval-context window."""
    import jax
    import numpy as np
    from jaxseq.data.lm import eval_batches
    from jaxseq.tasks import runner
    corpus, workdir = trained
    capsys.readouterr()
    scores = {}
    for context in ("stream", "window"):
        assert cli.main(["evaluate", "--workdir", workdir, "--eval-context", context]) == 0
        scores[context] = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert scores[context]["eval_context"] == context
    assert cli.main(["evaluate", "--workdir", workdir]) == 0
    default = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert default == scores["stream"]
    results = json.loads((workdir / "results.json").read_text())
    assert results["valid"]["perplexity"] == pytest.approx(default["perplexity"], rel=1e-6)   # validation: the same

    # the stream score is each of the B contiguous rows read whole from a zero state
    loaded = runner.load(workdir, lm_task.TASK)
    run = loaded.run
    ids = lm_task.load_corpus(run.data, vocab=loaded.vocabs["vocab.json"]).valid
    windows = eval_batches(ids, seq_len=run.data.seq_len, batch_size=run.data.batch_size)
    rows = {k: np.concatenate([w[k] for w in windows], axis=1) for k in windows[0]}

    def nll(batch):
        logits, _ = loaded.model.apply({"params": loaded.params}, batch)
        logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
        picked = np.take_along_axis(np.asarray(logp), batch["targets"][..., None], axis=-1)[..., 0]
        return -(picked * batch["weights"]).sum()

    assert scores["stream"]["nll"] == pytest.approx(nll(rows) / rows["weights"].sum(), rel=1e-5)
    windowed = sum(nll(w) for w in windows) / rows["weights"].sum()
    assert scores["window"]["nll"] == pytest.approx(windowed, rel=1e-5)
    assert scores["stream"]["nll"] != pytest.approx(scores["window"]["nll"], rel=1e-4)


def test_a_gru_of_the_other_form_is_refused_on_resume(trained, tmp_path, capsys):
    corpus, workdir = trained
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(workdir), str(run)], check=True)
    capsys.readouterr()
    assert cli.main(["train", "lm", "--workdir", run, "--resume", "--steps", 8, "--gru-reset", "before"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--gru-reset" in err


def test_configs_saved_before_a_field_existed_mean_what_they_meant():
    """A saved GRU config without gru_reset is the reset-after GRU jaxseq trained then (its parameters
    hold b_hh), whatever today's default; a run saved before --eval-context keeps being validated as
    it was (state carried only with sequential sampling), so --keep-best compares like with like."""
    from jaxseq.data.lm import LMDataConfig
    from jaxseq.models.lm import RNNConfig
    assert config_lib.from_dict(RNNConfig, {"hidden": 8}).gru_reset == "after"
    assert config_lib.from_dict(RNNConfig, {"hidden": 8, "gru_reset": "before"}).gru_reset == "before"
    assert config_lib.from_dict(LMDataConfig, {"sampling": "random"}).eval_context == "window"
    assert config_lib.from_dict(LMDataConfig, {"sampling": "sequential"}).eval_context == "stream"
    assert config_lib.from_dict(LMDataConfig, {"eval_context": "stream"}).eval_context == "stream"
    assert LMDataConfig().eval_context == "stream"
