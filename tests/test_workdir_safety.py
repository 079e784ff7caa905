"""A work directory is owned (DESIGN.md principle 7): the writer lock, the ownership marker,
read-only checkpoint readers, refused-checkpoint names, torn metrics, a full disk, sampling arguments.

Real second processes and real file-system limits, no mocks.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jaxseq.errors import CheckpointError, ConfigError
from jaxseq.workdir import LOCK, MARKER, Workdir, WorkdirBusy, WorkdirLock

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _python(code: str, *args, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


HOLD_LOCK = """
    import sys, time
    from jaxseq.workdir import WorkdirLock
    lock = WorkdirLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding the writer lock of ``tmp_path / "run"`` until killed."""
    workdir = tmp_path / "run"
    Workdir(workdir).claim()
    proc = _python(HOLD_LOCK, workdir)
    assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
    yield workdir, proc
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


# -- the writer lock ----------------------------------------------------------------------------

def test_second_writer_is_refused_with_the_holders_pid_and_start(holder):
    workdir, proc = holder
    record = json.loads((workdir / LOCK).read_text())
    assert record["pid"] == proc.pid and record["started"] and record["host"]
    with pytest.raises(WorkdirBusy) as err:
        Workdir(workdir).lock()
    message = str(err.value)
    assert isinstance(err.value, CheckpointError) and "\n" not in message
    assert str(workdir) in message and f"PID {proc.pid}" in message and record["started"] in message
    assert "wait for it to finish" in message


def test_the_lock_is_free_once_the_holder_is_killed(holder):
    workdir, proc = holder
    with pytest.raises(WorkdirBusy):
        WorkdirLock(workdir).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with Workdir(workdir).lock() as lock:           # the kernel released it; the stale record is replaced
        assert lock.held()
        assert json.loads((workdir / LOCK).read_text())["pid"] == os.getpid()
    assert not lock.held() and (workdir / LOCK).read_text() == ""    # released: emptied, kept


def test_lock_released_by_the_with_block_can_be_taken_by_another_process(tmp_path):
    workdir = tmp_path / "run"
    with Workdir(workdir).lock():
        (workdir / "config.json").write_text('{"task": "lm"}')
        probe = _python(HOLD_LOCK, workdir)
        _, err = probe.communicate(timeout=60)
        assert probe.returncode != 0 and "WorkdirBusy" in err and f"PID {os.getpid()}" in err
    probe = _python(HOLD_LOCK, workdir)
    try:
        assert probe.stdout.readline().strip() == "locked"
    finally:
        probe.kill()
        probe.communicate()


# -- ownership ----------------------------------------------------------------------------------

def _tree(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*"))}


def test_claim_creates_the_directory_and_marker(tmp_path):
    wd = Workdir(tmp_path / "runs" / "new")
    assert not wd.is_owned()
    marker = wd.claim()
    assert wd.is_owned() and marker["format"] == "jaxseq-workdir" and marker["version"] == 1
    assert json.loads((wd.path / MARKER).read_text()) == marker
    assert wd.claim() == marker                     # idempotent
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Workdir(empty).claim() and Workdir(empty).is_owned()


def test_a_foreign_directory_is_refused_and_left_untouched(tmp_path):
    foreign = tmp_path / "home"
    (foreign / "checkpoints" / "3").mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    (foreign / "config.json").write_text('{"colour": "blue"}')      # not a jaxseq config
    before = _tree(foreign)
    wd = Workdir(foreign)
    assert not wd.is_owned()
    for attempt in (wd.claim, wd.lock):
        with pytest.raises(CheckpointError) as err:
            attempt()
        message = str(err.value)
        assert "\n" not in message and "not a jaxseq work directory" in message and "--workdir" in message
        assert "notes.txt" in message
    assert _tree(foreign) == before                   # nothing written, nothing deleted
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        Workdir(tmp_path / "file").lock()


def test_a_legacy_run_is_owned_and_marked_by_its_next_writer(tmp_path):
    legacy = tmp_path / "old-run"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"task": "lm", "model": {"model": "gru"}}))
    (legacy / "metrics.jsonl").write_text("")
    wd = Workdir(legacy)
    assert wd.is_owned() and wd.read_marker() is None
    with wd.lock():
        marker = wd.read_marker()
    assert marker is not None and marker["adopted"] is True
    assert wd.is_owned() and (legacy / "config.json").exists()


def test_a_bad_marker_does_not_make_a_directory_jaxseqs(tmp_path):
    home = tmp_path / "home"
    (home / MARKER).mkdir(parents=True)              # e.g. a user's ~/.jaxseq settings folder
    with pytest.raises(CheckpointError, match="is not a jaxseq marker"):
        Workdir(home).claim()


def test_a_refused_run_that_took_the_lock_leaves_nothing_behind(tmp_path):
    wd = Workdir(tmp_path / "runs" / "refused")
    with wd.lock():
        assert (wd.path / MARKER).exists() and (wd.path / LOCK).exists()
    assert not wd.path.exists() and (tmp_path / "runs").exists()
    with wd.lock():
        (wd.path / "config.json").write_text('{"task": "lm"}')
    assert sorted(p.name for p in wd.path.iterdir()) == [MARKER, LOCK, "config.json"]


def test_a_lone_lock_file_counts_as_empty(tmp_path):
    """A writer killed between taking the lock and writing the marker leaves only the lock file."""
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text('{"pid": 1}')
    assert not Workdir(run).is_owned()
    with Workdir(run).lock():
        assert Workdir(run).is_owned()
