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
from pathlib import Path

import pytest

from jaxseq.errors import CheckpointError, ConfigError
from jaxseq.manifest import Manifest
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
    (legacy / "config.json").write_text(json.dumps({"task": "lm", "model": {"model": "gru"}, "train": {},
                                                    "optim": {}}))
    (legacy / "metrics.jsonl").write_text("")
    wd = Workdir(legacy)
    assert wd.is_owned() and wd.read_marker() is None
    # a config.json of something else is not a jaxseq run
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"task": "classify", "model": "resnet"}))
    assert not Workdir(other).is_owned()
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


# -- checkpoints: readers, foreign folders, refused names, a full disk ------------------------------

def _state(value: float, size: int = 4):
    import jax.numpy as jnp
    return {"w": jnp.full((size,), value, jnp.float32), "step": jnp.int32(value)}


def _abstract(size: int = 4):
    import jax
    import jax.numpy as jnp
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return {"w": jax.ShapeDtypeStruct((size,), jnp.float32, sharding=sharding),
            "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding)}


MANIFEST = {"task": "lm", "model": {"hidden": 4}, "vocab": "abc", "params": {}, "data": "d"}
EXPECTED = Manifest(**MANIFEST)


def _save(ckpt, step: int, size: int = 4):
    ckpt.save(step, _state(step, size), {"position": step}, dict(MANIFEST, step=step))


def _writer(directory, **kwargs):
    from jaxseq.checkpoint import Checkpointer
    return Checkpointer(directory, **kwargs)


def _write_steps(directory, *steps):
    """Checkpoints of ``steps`` written by a writer that is closed again."""
    ckpt = _writer(directory)
    try:
        for step in steps:
            _save(ckpt, step)
    finally:
        ckpt.close()


def test_a_reader_creates_nothing_deletes_nothing_and_skips_unfinished_checkpoints(tmp_path):
    from jaxseq.checkpoint import CHECKSUMS, Checkpointer
    directory = tmp_path / "checkpoints"
    _write_steps(directory, 1, 2)
    # what a running trainer's save looks like from outside: Orbax's temporary directory, and a
    # committed step whose checksums are still being computed
    (directory / "3.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
    ckpt = _writer(tmp_path / "scratch")
    try:
        _save(ckpt, 3)
    finally:
        ckpt.close()
    os.rename(tmp_path / "scratch" / "3", directory / "3")
    (directory / "3" / CHECKSUMS).unlink()
    before = _tree(directory)
    reader = Checkpointer(directory, read_only=True)
    try:
        assert reader.steps() == [1, 2] and reader.latest_step() == 2
        state, data, step = reader.restore(_abstract(), EXPECTED)
        assert step == 2 and data == {"position": 2} and float(state["w"][0]) == 2.0
        with pytest.raises(CheckpointError, match="opened read-only"):
            _save(reader, 4)
    finally:
        reader.close()
    assert _tree(directory) == before
    # the writer (holding the lock) is who cleans: the temporary directory goes, the unfinished step stays
    # and is refused with the way out
    writer = _writer(directory)
    try:
        assert not (directory / "3.orbax-checkpoint-tmp").exists() and (directory / "3").exists()
        with pytest.raises(CheckpointError, match="step 3 has no checksums.json.*--fallback to restore step 2"):
            writer.restore(_abstract(), EXPECTED)
    finally:
        writer.close()


def test_a_reader_of_a_missing_directory_creates_nothing(tmp_path):
    from jaxseq.checkpoint import Checkpointer, latest_complete_step
    missing = tmp_path / "run" / "checkpoints"
    reader = Checkpointer(missing, read_only=True)
    try:
        assert reader.steps() == [] and latest_complete_step(missing) is None
        with pytest.raises(CheckpointError, match="no complete checkpoint yet; train a model there first"):
            reader.restore(_abstract(), EXPECTED)
    finally:
        reader.close()
    assert not (tmp_path / "run").exists()


WRITER_LOOP = """
    import sys
    import jax.numpy as jnp
    from jaxseq.checkpoint import Checkpointer
    ckpt = Checkpointer(sys.argv[1], keep=2)
    for step in range(1, int(sys.argv[2]) + 1):
        ckpt.save(step, {"w": jnp.full((20000,), step, jnp.float32), "step": jnp.int32(step)},
                  {"position": step}, {"task": "lm", "model": {"hidden": 4}, "vocab": "abc", "params": {}, "data": "d",
                   "step": step})
        print(step, flush=True)
    ckpt.close()
"""


def test_readers_while_a_trainer_saves_and_prunes(tmp_path):
    """generate/evaluate during training: every read gets a complete checkpoint; the trainer is unharmed."""
    from jaxseq.checkpoint import Checkpointer
    directory = tmp_path / "checkpoints"
    writer = _python(WRITER_LOOP, directory, 30)
    assert writer.stdout.readline().strip() == "1", writer.stderr.read()[-3000:]
    seen = []
    while writer.poll() is None:
        reader = Checkpointer(directory, read_only=True)
        try:
            state, data, step = reader.restore(_abstract(20000), EXPECTED)
        finally:
            reader.close()
        assert float(state["w"][0]) == step == data["position"] == int(state["step"])
        seen.append(step)
    out, err = writer.communicate()
    assert writer.returncode == 0, err[-3000:]
    assert out.split()[-1] == "30" and seen == sorted(seen)
    assert sorted(p.name for p in directory.iterdir()) == ["29", "30"]    # pruned to --keep 2, nothing left over


def test_pruning_never_touches_folders_jaxseq_did_not_write(tmp_path):
    directory = tmp_path / "checkpoints"
    for name in ("0", "7", "12"):
        (directory / name).mkdir(parents=True)
        (directory / name / "photo.jpg").write_bytes(b"mine")
    ckpt = _writer(directory, keep=1)
    try:
        assert ckpt.steps() == [] and ckpt.latest_step() is None
        for step in (1, 2, 3, 13):
            _save(ckpt, step)
        assert ckpt.steps() == [13]
        with pytest.raises(CheckpointError, match="7: already exists and is not a jaxseq checkpoint"):
            _save(ckpt, 7)
        state, _, step = ckpt.restore(_abstract(), EXPECTED)
        assert step == 13
    finally:
        ckpt.close()
    assert sorted(p.name for p in directory.iterdir()) == ["0", "12", "13", "7"]
    assert all((directory / n / "photo.jpg").read_bytes() == b"mine" for n in ("0", "7", "12"))


def test_keep_best_survives_pruning_and_resuming(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpt = _writer(directory, keep=1, keep_best=True)
    try:
        for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0)):
            _save(ckpt, step)
            ckpt.save_best(step, loss, _state(step), {"position": step}, dict(MANIFEST, step=step))
    finally:
        ckpt.close()
    assert sorted(p.name for p in (directory / "best").iterdir()) == ["2"]
    ckpt = _writer(directory, keep=1, keep_best=True)
    try:
        assert ckpt.best_loss == 1.0 and ckpt.steps() == [3]
        assert not ckpt.save_best(4, 1.5, _state(4), {}, MANIFEST)
        assert ckpt.save_best(4, 0.5, _state(4), {}, MANIFEST)
    finally:
        ckpt.close()
    assert sorted(p.name for p in (directory / "best").iterdir()) == ["4"]


def _damage(step_dir: Path) -> None:
    victim = next(p for p in sorted((step_dir / "state").rglob("*")) if p.is_file() and p.stat().st_size > 16)
    data = victim.read_bytes()
    victim.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])


def test_falling_back_twice_from_the_same_step_keeps_both_refused_copies(tmp_path):
    directory = tmp_path / "checkpoints"
    warnings = []
    ckpt = _writer(directory)
    try:
        _save(ckpt, 1)
        for attempt in range(3):
            _save(ckpt, 2)
            _damage(directory / "2")
            with pytest.raises(CheckpointError, match="step 2 fails its checksum.*--fallback"):
                ckpt.restore(_abstract(), EXPECTED)
            _, _, step = ckpt.restore(_abstract(), EXPECTED, fallback=True, warn=warnings.append)
            assert step == 1 and ckpt.steps() == [1]
    finally:
        ckpt.close()
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2.refused", "2.refused.1", "2.refused.2"]
    assert len(warnings) == 3 and all("falling back to step 1" in w for w in warnings)


def test_a_reader_falls_back_without_renaming(tmp_path):
    from jaxseq.checkpoint import Checkpointer
    directory = tmp_path / "checkpoints"
    _write_steps(directory, 1, 2)
    _damage(directory / "2")
    before = _tree(directory)
    reader = Checkpointer(directory, read_only=True)
    try:
        with pytest.raises(CheckpointError, match="step 2 fails its checksum"):
            reader.restore(_abstract(), EXPECTED)
        assert reader.restore(_abstract(), EXPECTED, fallback=True)[2] == 1
    finally:
        reader.close()
    assert _tree(directory) == before


def test_a_reader_moves_on_when_the_trainer_prunes_the_checkpoint_it_reads(tmp_path):
    """The trainer's prune renames a step aside and deletes it; a reader caught in the middle lists again."""
    from jaxseq.checkpoint import Checkpointer, _remove_dir
    directory = tmp_path / "checkpoints"
    _write_steps(directory, 1, 2)

    class PrunedUnderfoot(Checkpointer):
        def _restore_step(self, abstract_state, expected, step):
            if step == 2 and (directory / "2").exists():
                _remove_dir(directory / "2")          # exactly what the trainer's prune does
            return super()._restore_step(abstract_state, expected, step)

    reader = PrunedUnderfoot(directory, read_only=True)
    try:
        assert reader.restore(_abstract(), EXPECTED)[2] == 1
    finally:
        reader.close()


FULL_DISK = """
    import resource, signal, sys
    import jax.numpy as jnp, numpy as np
    from jaxseq.checkpoint import Checkpointer
    from jaxseq.errors import JaxseqError
    from jaxseq.metrics_log import MetricsLog
    manifest = {"task": "lm", "model": {"hidden": 4}, "vocab": "abc", "params": {}, "data": "d"}
    ckpt = Checkpointer(sys.argv[1], keep=3)
    log = MetricsLog(sys.argv[2])
    for step in (1, 2):
        ckpt.save(step, {"w": jnp.full((4,), step, jnp.float32)}, {"position": step}, manifest)
        log.write({"step": step, "loss": 1.0})
    # from here on no file may grow past 64 KiB: writes fail with EFBIG, as they would with ENOSPC
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    noise = np.random.default_rng(0).standard_normal(200000).astype(np.float32)
    try:
        ckpt.save(3, {"w": jnp.asarray(noise)}, {"position": 3}, manifest)
    except JaxseqError as err:
        print("SAVE", type(err).__name__, err)
    try:
        log.write({"step": 3, "note": "x" * 100000})
    except JaxseqError as err:
        print("LOG", type(err).__name__, err)
    from jaxseq.workdir import Workdir
    Workdir(sys.argv[3]).write_json("results.json", {"step": 2})
    try:
        Workdir(sys.argv[3]).write_json("results.json", {"notes": "x" * 100000})
    except JaxseqError as err:
        print("JSON", type(err).__name__, err)
    ckpt.close()
"""


def test_a_full_disk_during_a_save_is_one_line_and_leaves_nothing_partial(tmp_path):
    from jaxseq.checkpoint import Checkpointer
    directory, metrics = tmp_path / "checkpoints", tmp_path / "metrics.jsonl"
    run = tmp_path / "run"
    proc = _python(FULL_DISK, directory, metrics, run)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["SAVE"] == (f"CheckpointError {directory / '3'}: File too large; the last complete checkpoint "
                             "is step 2; free some space and continue with --resume")
    assert lines["LOG"].startswith(f"CheckpointError {metrics}: File too large")
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"]            # no partial step 3, no temporary
    assert metrics.read_text() == '{"loss": 1.0, "step": 1}\n{"loss": 1.0, "step": 2}\n'    # no torn line
    assert lines["JSON"].startswith(f"CheckpointError {run / 'results.json'}: File too large; not written")
    assert os.listdir(run) == ["results.json"] and json.loads((run / "results.json").read_text()) == {"step": 2}
    reader = Checkpointer(directory, read_only=True)
    try:
        assert reader.restore({"w": _abstract()["w"]}, EXPECTED)[2] == 2
    finally:
        reader.close()


def test_os_error_reasons_are_found_through_wrappers():
    import errno
    from jaxseq.checkpoint import os_error_reason
    assert os_error_reason(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device"
    try:
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        except OSError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        assert os_error_reason(outer) == os.strerror(errno.EDQUOT)
    tensorstore = ValueError("OUT_OF_RANGE: Error writing \"w/0\": Failed to write 349903 bytes to file 5: "
                             "No space left on device [os_error_code='28']")
    assert os_error_reason(tensorstore) == os.strerror(errno.ENOSPC)
    assert os_error_reason(TypeError("unhashable type: 'list'")) is None


# -- torn metrics -----------------------------------------------------------------------------------

def _metrics(tmp_path, text: str) -> Path:
    path = tmp_path / "metrics.jsonl"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = '{"split": "train", "step": 2}\n{"split": "train", "step": 4}\n{"split": "valid", "step": 4}\n'


def test_a_torn_last_metrics_line_is_skipped_by_read_and_dropped_on_resume(tmp_path):
    from jaxseq.metrics_log import MetricsLog
    path = _metrics(tmp_path, GOOD + '{"split": "train", "st')
    assert [r["step"] for r in MetricsLog.read(path)] == [2, 4, 4]
    warnings = []
    assert MetricsLog(path).truncate_after(2, warn=warnings.append) == 1
    assert path.read_text() == '{"split": "train", "step": 2}\n'
    assert warnings == [f"{path}:4: the last line was half-written (a crash or a full disk); dropped it"]
    assert MetricsLog(path).truncate_after(2, warn=warnings.append) == 0 and len(warnings) == 1


@pytest.mark.parametrize("torn", [b'{"step": 6, "loss": 1.2', b"\x00\x00\x00\x00", b'{"note": "\xc3'])
def test_torn_bytes_of_any_kind_at_the_end(tmp_path, torn):
    from jaxseq.metrics_log import MetricsLog
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(GOOD.encode() + torn)
    assert len(MetricsLog.read(path)) == 3
    assert MetricsLog(path).truncate_after(10) == 1 and path.read_text() == GOOD


def test_a_damaged_metrics_line_in_the_middle_is_one_line_naming_it(tmp_path):
    from jaxseq.metrics_log import MetricsLog
    path = _metrics(tmp_path, '{"step": 2}\n{"step": 4, "lo\n{"step": 6}\n')
    for call in (lambda: MetricsLog.read(path), lambda: MetricsLog(path).truncate_after(4)):
        with pytest.raises(CheckpointError) as err:
            call()
        assert str(err.value).startswith(f"{path}:2: damaged metrics record") and "\n" not in str(err.value)
    assert path.read_text() == '{"step": 2}\n{"step": 4, "lo\n{"step": 6}\n'     # left as it was


def test_a_record_is_never_glued_onto_an_unterminated_line(tmp_path):
    from jaxseq.metrics_log import MetricsLog
    path = _metrics(tmp_path, '{"step": 2}')
    MetricsLog(path).write({"step": 3})
    assert [r["step"] for r in MetricsLog.read(path)] == [2, 3]
    assert MetricsLog.read(tmp_path / "missing.jsonl") == []


# -- sampling arguments and the n-gram sampler's top-k ---------------------------------------------

def _ngram(V=12, order=3, seed=0):
    import numpy as np
    from jaxseq.ngram import NGramConfig, NGramLM
    ids = np.random.default_rng(seed).choice(V, size=600, p=np.arange(1, V + 1) / (V * (V + 1) / 2))
    return NGramLM.fit(ids, V, NGramConfig(order=order, smoothing="kn"))


def test_ngram_top_k_1_is_the_greedy_path():
    import numpy as np
    model = _ngram()
    greedy = model.sample([1, 2], 40, np.random.default_rng(0), temperature=0.0)
    for temperature in (1.0, 0.5, 3.0):
        top1 = model.sample([1, 2], 40, np.random.default_rng(5), temperature=temperature, top_k=1)
        np.testing.assert_array_equal(top1, greedy)


def test_ngram_top_k_never_leaves_the_k_most_likely_and_matches_the_renormalised_distribution():
    import numpy as np
    model = _ngram()
    k = 3
    for context in ([1, 2], [11, 11], [5]):
        p = model.distribution(context)
        allowed = set(np.argsort(-p, kind="stable")[:k].tolist())
        # one step from a fixed context, many times: the empirical frequencies of the k survivors
        draws = np.array([model.sample(context, 1, np.random.default_rng(i), top_k=k)[0] for i in range(3000)])
        assert set(draws.tolist()) <= allowed and len(set(draws.tolist())) == k
        expected = np.zeros_like(p)
        expected[list(allowed)] = p[list(allowed)] / p[list(allowed)].sum()
        freq = np.bincount(draws, minlength=len(p)) / len(draws)
        assert np.abs(freq - expected).max() < 0.04
        # exactly: each draw is the inverse CDF of the renormalised top-k distribution at the rng's uniform
        cdf = np.cumsum(expected)
        for i in range(50):
            u = np.random.default_rng(i).random()
            assert draws[i] == min(int(np.searchsorted(cdf, u * cdf[-1], side="right")), len(p) - 1)
    # along a chain, every token is among the k most likely after its own history
    chain = model.sample([1, 2], 200, np.random.default_rng(3), temperature=1.7, top_k=k)
    history = [1, 2]
    for token in chain:
        p = model.distribution(history[-2:])
        assert int(token) in set(np.argsort(-p, kind="stable")[:k].tolist())
        history.append(int(token))
    # top_k >= V changes nothing: the same draws as without it
    np.testing.assert_array_equal(model.sample([1], 50, np.random.default_rng(9), top_k=model.vocab_size),
                                  model.sample([1], 50, np.random.default_rng(9)))


def test_ngram_top_k_ties_keep_exactly_k_lowest_ids():
    import numpy as np
    from jaxseq.ngram import NGramConfig, NGramLM
    # add-k on a stream with every id once: a uniform unigram distribution, all ties
    model = NGramLM.fit(np.arange(8), 8, NGramConfig(order=1, smoothing="add-k", add_k=1.0))
    out = model.sample([0], 500, np.random.default_rng(0), top_k=3)
    assert set(out.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_ngram_refuses_a_bad_top_k(bad):
    import numpy as np
    with pytest.raises(ConfigError, match="--top-k"):
        _ngram().sample([1], 3, np.random.default_rng(0), top_k=bad)


@pytest.mark.parametrize("args, flag", [
    ((0, 1.0, 0), "--length must be at least 1"), ((10_000_001, 1.0, 0), "--length"), ((2.5, 1.0, 0), "--length"),
    ((5, float("nan"), 0), "--temperature"), ((5, float("inf"), 0), "--temperature"),
    ((5, -0.1, 0), "--temperature"), ((5, 1.0, -1), "--top-k"), ((5, 1.0, 2.0), "--top-k")])
def test_sampling_arguments_are_checked_with_the_flag_named(args, flag):
    from jaxseq import decode
    with pytest.raises(ConfigError, match=flag) as err:
        decode.check_sample_args(*args)
    assert "\n" not in str(err.value)


def test_sampling_arguments_that_are_fine():
    import numpy as np
    from jaxseq import decode
    for args in ((1, 0.0, 0), (10_000_000, 1e-6, 5), (np.int64(3), np.float32(0.7), np.int32(2))):
        decode.check_sample_args(*args)


def test_neural_generate_refuses_bad_sampling_arguments_before_compiling():
    import jax
    import numpy as np
    from jaxseq import decode
    for kwargs, flag in (({"temperature": float("nan")}, "--temperature"), ({"top_k": -2}, "--top-k")):
        with pytest.raises(ConfigError, match=flag):
            decode.generate(None, {}, np.zeros((1, 2), np.int32), 5, key=jax.random.PRNGKey(0), **kwargs)
    with pytest.raises(ConfigError, match="--length"):
        decode.generate(None, {}, np.zeros((1, 2), np.int32), 0, key=jax.random.PRNGKey(0))
