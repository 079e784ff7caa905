"""Asynchronous checkpoints: the loop runs on while a save is written; kill -9 during one loses nothing.

The killed run trains with --tensor 2 on 4 devices and is resumed with plain data parallelism on 4
devices (as the uninterrupted run), so the test also restores a checkpoint under another mesh through the CLI.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxseq import cli
from jaxseq.tasks import lm as lm_task
from jaxseq.workdir import Workdir

TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 30
FLAGS = ["--model", "transformer", "--d-model", "16", "--heads", "4", "--ffn", "32", "--layers", "1",
         "--seq-len", "8", "--batch-size", "8", "--sampling", "sequential", "--optimizer", "sgd", "--lr", "0.3",
         "--steps", "12", "--checkpoint-every", "4", "--eval-every", "0", "--log-every", "1", "--no-progress",
         "--no-baseline", "--sample", "0", "--async-checkpoint"]
SLOW_STEP = 8

# Run the CLI with Orbax's commit of one step held back (as a slow disk would): the step's files stay
# under Orbax's temporary name until the process is killed.
SLOW_SAVE = f"""
import asyncio, sys
from orbax.checkpoint._src.path import atomicity
original = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self, *args, **kwargs):
    if self._final_path.name == "{SLOW_STEP}":
        await asyncio.sleep(3600)
    return await original(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
from jaxseq import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def _params(workdir: Path):
    return jax.device_get(lm_task.runner.load(Workdir(workdir), lm_task.TASK).params)


def _records(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_kill_9_during_an_async_save_then_resume_on_another_mesh(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT)
    full = tmp_path / "full"
    assert cli.main(["train", "lm", "--data", corpus, "--workdir", full, "--devices", "4", *FLAGS]) == 0
    saves = [r for r in _records(full) if r["split"] == "checkpoint"]
    assert [r["step"] for r in saves] == [4, 8, 12]
    assert all(r["checkpoint_blocked_s"] >= 0 for r in saves)

    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, "train", "lm", "--data", str(corpus),
                             "--workdir", str(killed), "--devices", "4", "--tensor", "2", *FLAGS],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoints = killed / "checkpoints"
    deadline = time.time() + 300
    # the loop trains on past step 8 while step 8's checkpoint is still being written
    while not any(r["split"] == "train" and r["step"] >= SLOW_STEP + 2 for r in _records(killed)):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "the run never trained past its pending save"
        time.sleep(0.05)
    pending = [p.name for p in checkpoints.iterdir() if p.name.startswith(f"{SLOW_STEP}.orbax-checkpoint-tmp")]
    assert pending and not (checkpoints / str(SLOW_STEP)).exists()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (checkpoints / "4" / "checksums.json").exists()           # the previous checkpoint is complete
    blocked = [r["checkpoint_blocked_s"] for r in _records(killed) if r["split"] == "checkpoint"]
    assert blocked and max(blocked) < 60                              # the loop never waited for the write

    assert cli.main(["train", "lm", "--data", corpus, "--workdir", killed, "--devices", "4", "--tensor", "1",
                     "--resume", *FLAGS]) == 0
    assert not any(p.name.startswith(f"{SLOW_STEP}.orbax") for p in checkpoints.iterdir())   # leftover removed
    steps = [r["step"] for r in _records(killed) if r["split"] == "train"]
    assert steps == list(range(1, 13))                   # records after the resumed step were dropped, then redone
    for a, b in zip(jax.tree_util.tree_leaves(_params(killed)), jax.tree_util.tree_leaves(_params(full))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_async_checkpointer_finishes_marks_and_prunes_in_the_background(tmp_path):
    import jax.numpy as jnp
    from jaxseq.checkpoint import Checkpointer, is_complete
    from jaxseq.manifest import Manifest, tree_signature
    state = {"w": jnp.arange(4.0)}
    manifest = Manifest(task="lm", model={}, vocab={}, params=tree_signature(state))
    ckpt = Checkpointer(tmp_path, keep=2, async_save=True)
    try:
        for step in (1, 2, 3):
            ckpt.save(step, {"w": state["w"] + step}, {"position": step}, manifest.to_dict())
            assert step in ckpt.steps() and ckpt.last_blocked_s >= 0    # the pending step counts as saved
        ckpt.wait()
        assert ckpt.steps() == [2, 3] and all(is_complete(tmp_path / str(s)) for s in (2, 3))
    finally:
        ckpt.close()
    abstract = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
    reader = Checkpointer(tmp_path, read_only=True)
    try:
        restored, data, step = reader.restore(abstract, manifest)
    finally:
        reader.close()
    assert step == 3 and data == {"position": 3}
    np.testing.assert_array_equal(restored["w"], np.arange(4.0) + 3)


FULL_DISK = """
import resource, signal, sys
import jax.numpy as jnp, numpy as np
from jaxseq.checkpoint import Checkpointer
from jaxseq.errors import JaxseqError
manifest = {"task": "lm", "model": {}, "vocab": "abc", "params": {}, "data": "d"}
ckpt = Checkpointer(sys.argv[1], keep=3, async_save=True)
for step in (1, 2):
    ckpt.save(step, {"w": jnp.full((4,), step, jnp.float32)}, {"position": step}, manifest)
ckpt.wait()
# from here on no file may grow past 64 KiB: writes fail with EFBIG, as they would with ENOSPC
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
ckpt.save(3, {"w": jnp.asarray(np.random.default_rng(0).standard_normal(200000).astype(np.float32))},
          {"position": 3}, manifest)
print("RETURNED")                      # the loop went on; the failure comes with the next wait
try:
    ckpt.wait()
except JaxseqError as err:
    print("SAVE", type(err).__name__, err)
ckpt.close()
"""


def test_a_full_disk_during_a_background_save_is_one_line(tmp_path):
    directory = tmp_path / "checkpoints"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, str(directory)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["RETURNED", f"SAVE CheckpointError {directory / '3'}: File too large; the "
                                        "last complete checkpoint is step 2; free some space and continue with "
                                        "--resume"]
    assert proc.stderr == ""                                   # Orbax's thread tracebacks were held back
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"]             # nothing partial
