"""Work directories through the command line: readers during training, one writer, foreign directories,
no dead ends, one-line errors (issue #12's scenarios, each with a real second process)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxseq import cli
from jaxseq.tasks import lm as lm_task
from jaxseq.workdir import Workdir, read_lock_holder

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 30
FLAGS = ["--seq-len", "8", "--batch-size", "8", "--hidden", "16", "--lr", "0.01", "--eval-every", "0",
         "--log-every", "2", "--no-progress", "--no-baseline", "--sample", "0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(TEXT)
    return path


def _env():
    root = str(Path(__file__).resolve().parent.parent)
    return dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _start(*args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "jaxseq.cli", *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _params(workdir):
    return jax.device_get(lm_task.runner.load(Workdir(workdir), lm_task.TASK).params)


def _equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _wait_for(predicate, proc, what: str, timeout: float = 180):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, f"never saw {what}"
        time.sleep(0.05)


def _tree(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): (p.read_bytes() if p.is_file() else None) for p in path.rglob("*")}


def test_readers_during_training_leave_the_trainer_unharmed(corpus, tmp_path, capsys):
    """generate in a loop against a trainer that checkpoints every step: the trainer ends as it does alone."""
    run = ["train", "lm", "--data", corpus, "--steps", 16, "--checkpoint-every", 1, "--keep", 2, *FLAGS]
    alone = tmp_path / "alone"
    assert cli.main([*run, "--workdir", alone]) == 0
    watched = tmp_path / "watched"
    trainer = _start(*run, "--workdir", watched)
    _wait_for(lambda: (watched / "checkpoints" / "1" / "checksums.json").exists(), trainer, "a checkpoint")
    reads = 0
    while trainer.poll() is None:
        assert cli.main(["generate", "--workdir", watched, "--prefix", "It was", "--length", 5]) == 0
        reads += 1
    out, err = trainer.communicate()
    assert trainer.returncode == 0, err[-2000:]
    assert reads >= 1 and capsys.readouterr().out.count("It was") == reads
    assert _equal(_params(watched), _params(alone))
    assert json.loads((watched / "results.json").read_text())["valid"]["nll"] == \
        json.loads((alone / "results.json").read_text())["valid"]["nll"]


def test_one_writer_then_no_dead_end_after_a_kill(corpus, tmp_path, capsys):
    """A second trainer (new or --resume) is refused naming the holder; killed before its first checkpoint,
    the run is started again in place with --restart."""
    workdir = tmp_path / "run"
    trainer = _start("train", "lm", "--data", corpus, "--workdir", workdir, "--steps", 100000,
                     "--checkpoint-every", 0, *FLAGS)
    _wait_for(lambda: (read_lock_holder(workdir) or {}).get("pid") == trainer.pid and
              (workdir / "config.json").exists(), trainer, "the lock")
    for extra in ([], ["--resume"], ["--restart"]):
        assert cli.main(["train", "lm", "--data", corpus, "--workdir", workdir, "--steps", 4, *FLAGS, *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"PID {trainer.pid}" in err, err
    trainer.send_signal(signal.SIGKILL)
    trainer.communicate()
    assert not (workdir / "checkpoints").exists() or not any((workdir / "checkpoints").iterdir())
    assert cli.main(["train", "lm", "--data", corpus, "--workdir", workdir, "--steps", 4, *FLAGS]) == 1
    assert "--restart" in capsys.readouterr().err
    assert cli.main(["train", "lm", "--workdir", workdir, "--resume", "--steps", 4, *FLAGS]) == 1
    assert "no checkpoint to resume from yet; start the run again in place with --restart" in capsys.readouterr().err
    (workdir / "notes.txt").write_text("mine")
    assert cli.main(["train", "lm", "--data", corpus, "--workdir", workdir, "--steps", 4, "--restart", *FLAGS]) == 0
    assert json.loads((workdir / "results.json").read_text())["step"] == 4
    assert (workdir / "notes.txt").read_text() == "mine"              # only the run's own files were replaced
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4]


def test_a_foreign_directory_is_refused_untouched(corpus, tmp_path, capsys):
    foreign = tmp_path / "mine"
    (foreign / "checkpoints" / "5").mkdir(parents=True)
    (foreign / "checkpoints" / "5" / "weights.bin").write_bytes(b"\x00\x01")
    (foreign / "vocab.json").write_text('{"mine": true}')
    (foreign / "results.json").write_text("[]")
    (foreign / "x.orbax-checkpoint-tmp-1").mkdir()
    before = _tree(foreign)
    for extra in ([], ["--resume"], ["--restart"]):
        assert cli.main(["train", "lm", "--data", corpus, "--workdir", foreign, "--steps", 2, *FLAGS, *extra]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a jaxseq work directory" in err, err
        assert _tree(foreign) == before


def test_a_torn_metrics_line_does_not_block_resume(corpus, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert cli.main(["train", "lm", "--data", corpus, "--workdir", workdir, "--steps", 4, *FLAGS]) == 0
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "split": "tr')                       # what a full disk leaves
    capsys.readouterr()
    assert cli.main(["train", "lm", "--workdir", workdir, "--resume", "--steps", 6, *FLAGS]) == 0
    assert "metrics.jsonl:" in capsys.readouterr().err
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4, 6]


def test_a_full_disk_during_a_checkpoint_is_one_line(corpus, tmp_path):
    """The file-size limit stands in for a full disk: the save fails, one line names the path."""
    workdir = tmp_path / "run"
    limited = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
               "os.execv(sys.executable, [sys.executable, '-m', 'jaxseq.cli', *sys.argv[1:]])")
    args = ["train", "lm", "--data", corpus, "--workdir", workdir, "--steps", 4, *FLAGS[:4], "--hidden", "256",
            *FLAGS[6:]]
    proc = subprocess.Popen([sys.executable, "-c", limited, *map(str, args)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxseq: error: ") and "checkpoints" in lines[0]
    assert "File too large" in lines[0] or "No space left" in lines[0]
    assert not any(p.name.isdigit() for p in (workdir / "checkpoints").iterdir())   # nothing partial looks valid


@pytest.mark.parametrize("flags, message", [
    (["--top-k", "-5"], "--top-k"), (["--length", "1000000000000"], "--length"),
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature")])
def test_sampling_flags_are_checked_in_one_line(corpus, tmp_path, capsys, flags, message):
    assert cli.main(["generate", "--workdir", tmp_path / "none", "--prefix", "It", *flags]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
