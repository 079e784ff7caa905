"""Faults and bad input: kill -9 and resume, SIGTERM, crashes during a save, refused checkpoints, CLI errors."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxseq import cli
from jaxseq.manifest import Manifest
from jaxseq.errors import CheckpointError
from jaxseq.tasks import lm as lm_task
from jaxseq.workdir import Workdir

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 30
FLAGS = ["--seq-len", "8", "--batch-size", "8", "--sampling", "sequential", "--hidden", "16",
         "--embedding", "8", "--dropout", "0.1", "--lr", "0.01", "--eval-every", "0", "--log-every", "2",
         "--no-progress", "--no-baseline", "--sample", "0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(TEXT)
    return path


def _cli(*args):
    return [sys.executable, "-m", "jaxseq.cli", *map(str, args)]


def _params(workdir: Path):
    return jax.device_get(lm_task.runner.load(Workdir(workdir), lm_task.TASK).params)


def _equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runs") / "full"
    assert cli.main(["train", "lm", "--data", corpus, "--workdir", workdir, "--steps", 40,
                     "--checkpoint-every", 5, *FLAGS]) == 0
    return workdir, _params(workdir)


def _start_and_stop(corpus, workdir, sig, wait_for_step):
    """Start a 40-step run in a subprocess and send ``sig`` once checkpoint ``wait_for_step`` exists."""
    proc = subprocess.Popen(_cli("train", "lm", "--data", corpus, "--workdir", workdir, "--steps", 40,
                                 "--checkpoint-every", 5, *FLAGS),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = workdir / "checkpoints" / str(wait_for_step) / "checksums.json"
    deadline = time.time() + 180
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "the run never reached its checkpoint"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_kill_9_then_resume_is_bit_identical(corpus, tmp_path, uninterrupted):
    _, reference = uninterrupted
    workdir = tmp_path / "killed"
    code, _, _ = _start_and_stop(corpus, workdir, signal.SIGKILL, 10)
    assert code == -signal.SIGKILL
    assert cli.main(["train", "lm", "--data", corpus, "--workdir", workdir, "--steps", 40,
                     "--checkpoint-every", 5, "--resume", *FLAGS]) == 0
    assert _equal(_params(workdir), reference)
    steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps), "records logged after the last checkpoint were not dropped on resume"


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(corpus, tmp_path, uninterrupted):
    _, reference = uninterrupted
    workdir = tmp_path / "terminated"
    code, out, err = _start_and_stop(corpus, workdir, signal.SIGTERM, 10)
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    assert "checkpoint saved; continue with --resume" in out
    stopped_at = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert 10 <= stopped_at < 40
    assert cli.main(["train", "lm", "--data", corpus, "--workdir", workdir, "--resume", *FLAGS]) == 0
    assert _equal(_params(workdir), reference)


def test_crash_during_a_save_leaves_the_previous_checkpoint(corpus, tmp_path, uninterrupted, capsys):
    """A save killed half way leaves Orbax's temporary directory; the next start removes it and
    resumes from the last complete checkpoint."""
    full_dir, reference = uninterrupted
    workdir = tmp_path / "crashed"
    shutil.copytree(full_dir, workdir)
    shutil.rmtree(workdir / "checkpoints" / "40")
    leftover = workdir / "checkpoints" / "40.orbax-checkpoint-tmp-1764237000"
    (leftover / "state").mkdir(parents=True)
    (leftover / "state" / "half_written").write_bytes(b"\x00" * 100)
    assert cli.main(["train", "lm", "--data", corpus, "--workdir", workdir, "--resume", *FLAGS]) == 0
    assert "resumed from step 35" in capsys.readouterr().out
    assert not leftover.exists()
    assert _equal(_params(workdir), reference)


def _refused(corpus, workdir, capsys, *extra):
    code = cli.main(["train", "lm", "--data", corpus, "--workdir", workdir, "--resume", *FLAGS, *extra])
    err = capsys.readouterr().err
    return code, err


def test_damaged_checkpoints_are_refused_and_fallback_is_explicit(corpus, tmp_path, uninterrupted, capsys):
    full_dir, reference = uninterrupted
    workdir = tmp_path / "damaged"
    shutil.copytree(full_dir, workdir)
    latest = workdir / "checkpoints" / "40"
    victim = next(p for p in sorted((latest / "state").rglob("*")) if p.is_file() and p.stat().st_size > 64)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])                       # truncated
    code, err = _refused(corpus, workdir, capsys, "--steps", 45)
    assert code == 1 and "step 40" in err and "truncated" in err and "--fallback" in err
    assert err.count("\n") == 1
    victim.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])           # same size, altered
    code, err = _refused(corpus, workdir, capsys, "--steps", 45)
    assert code == 1 and "fails its checksum" in err
    victim.unlink()                                                  # missing
    code, err = _refused(corpus, workdir, capsys, "--steps", 45)
    assert code == 1 and "missing the file" in err
    good = workdir / "checkpoints" / "35"
    before = {p: p.read_bytes() for p in good.rglob("*") if p.is_file()}
    code, err = _refused(corpus, workdir, capsys, "--steps", 45, "--fallback")
    assert code == 0 and "falling back to step 35" in err
    assert all(p.read_bytes() == b for p, b in before.items())       # the good one untouched
    assert (workdir / "checkpoints" / "40.refused").exists()


def test_checkpoints_of_another_model_or_vocabulary_are_refused(corpus, tmp_path, uninterrupted, capsys):
    full_dir, _ = uninterrupted
    # another architecture: a run with --hidden 24 whose checkpoints are replaced by ours
    other = tmp_path / "other"
    flags = [f if f != "16" else "24" for f in FLAGS]
    assert cli.main(["train", "lm", "--data", corpus, "--workdir", other, "--steps", 2, *flags]) == 0
    shutil.rmtree(other / "checkpoints")
    shutil.copytree(full_dir / "checkpoints", other / "checkpoints")
    code = cli.main(["train", "lm", "--data", corpus, "--workdir", other, "--resume", "--steps", 45, *flags])
    err = capsys.readouterr().err
    assert code == 1 and "step 40" in err and "another architecture" in err and "hidden" in err


def test_manifest_comparison_names_the_difference():
    saved = {"task": "lm", "model": {"rnn": {"hidden": 16}}, "vocab": {"vocab.json": "aaa"},
             "params": {"w": [[2, 2], "float32"]}, "data": "d1"}
    expected = Manifest(**saved)
    with pytest.raises(CheckpointError, match=r"step 7 belongs to another vocabulary \(vocab vocab.json: "
                                              r"checkpoint 'bbb' vs now 'aaa'\)"):
        expected.check(dict(saved, vocab={"vocab.json": "bbb"}), 7, "dir")
    with pytest.raises(CheckpointError, match=r"another architecture \(model rnn.hidden: checkpoint 24 vs now 16\)"):
        expected.check(dict(saved, model={"rnn": {"hidden": 24}}), 7, "dir")
    with pytest.raises(CheckpointError, match=r"parameter w as \[\[3, 2\], 'float32'\] but the model has"):
        expected.check(dict(saved, params={"w": [[3, 2], "float32"]}), 7, "dir")
    with pytest.raises(CheckpointError, match=r"other data \(data: checkpoint 'd0' vs now 'd1'\).*--allow-data-change"):
        expected.check(dict(saved, data="d0"), 7, "dir")
    with pytest.raises(CheckpointError, match="another task"):
        expected.check(dict(saved, task="translate"), 7, "dir")
    expected.check(dict(saved), 7, "dir")
    Manifest(**dict(saved, data=None)).check(dict(saved, data="d0"), 7, "dir")     # a reader without the data


def test_same_size_vocabulary_in_another_order_is_refused(corpus, tmp_path, uninterrupted, capsys):
    full_dir, _ = uninterrupted
    workdir = tmp_path / "reordered"
    shutil.copytree(full_dir, workdir)
    vocab = json.loads((workdir / "vocab.json").read_text())
    tokens = vocab["tokens"]
    tokens[-1], tokens[-2] = tokens[-2], tokens[-1]
    from jaxseq.data.vocab import Vocab
    Vocab(tokens).save(workdir / "vocab.json")
    code = cli.main(["train", "lm", "--data", corpus, "--workdir", workdir, "--resume", "--steps", 45, *FLAGS])
    err = capsys.readouterr().err
    assert code == 1 and "another vocabulary" in err and "step 40" in err


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), (b"", "is empty"), (b"text\x00\x01", "looks binary"),
    (b"caf\xe9 au lait", "not valid UTF-8 at byte offset 3"), (b"tiny", "too few for one batch"),
])
def test_bad_data_is_one_line_and_writes_nothing(tmp_path, capsys, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    workdir = tmp_path / "run"
    code = cli.main(["train", "lm", "--data", path, "--workdir", workdir, "--steps", 2, *FLAGS])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.startswith("jaxseq: error: ") and err.count("\n") == 1
    assert not workdir.exists()


def test_workdir_mistakes_are_one_line(corpus, tmp_path, uninterrupted, capsys):
    full_dir, _ = uninterrupted
    cases = [
        (["train", "lm", "--data", corpus, "--workdir", full_dir, *FLAGS], "already holds a lm run"),
        (["train", "lm", "--data", corpus, "--workdir", tmp_path / "none", "--resume", *FLAGS], "nothing to resume"),
        (["train", "lm", "--data", corpus, "--workdir", full_dir, "--resume", "--hidden", "32"], "--hidden 32 differs"),
        (["evaluate", "--workdir", tmp_path / "nowhere"], "no such work directory"),
        (["generate", "--workdir", full_dir, "--prefix", "", "--length", "5"], "--prefix is empty"),
        (["generate", "--workdir", full_dir, "--prefix", "it", "--length", "0"], "--length must be at least 1"),
    ]
    for args, message in cases:
        code = cli.main([str(a) for a in args])
        err = capsys.readouterr().err
        assert code == 1 and message in err and err.count("\n") == 1, (args, err)


def test_generate_warns_about_unknown_prefix_tokens(uninterrupted, capsys):
    full_dir, _ = uninterrupted
    assert cli.main(["generate", "--workdir", str(full_dir), "--prefix", "it was Z", "--length", "5"]) == 0
    captured = capsys.readouterr()
    assert "not in the vocabulary become <unk>: 'Z'" in captured.err
    assert captured.out.startswith("it was <unk>")
