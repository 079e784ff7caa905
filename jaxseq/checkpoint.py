"""Orbax checkpoints with a manifest that is checked on restore.

A checkpoint (``WORKDIR/checkpoints/<step>/``) holds three items, written
together and atomically by Orbax (a temporary directory renamed into place
when complete):

``state``     the TrainState: params, optimizer state, step, RNG key, carry
``data``      the data iterator's position (JSON)
``manifest``  what the state belongs to: the model config, the vocabulary
              fingerprint(s), every parameter's path, shape and dtype

Once Orbax has committed a checkpoint, ``checksums.json`` (SHA-256 of every
file in it) is written beside the items. Restoring first verifies those
checksums (a missing, truncated or altered file is refused), then compares the
manifest with what the current run expects and refuses another architecture
or vocabulary with a message naming the step and the first difference, before
Orbax reads a single array. A refused checkpoint is left as it is; restoring
an older, good one instead happens only when asked (``fallback=True``, the
CLI's ``--fallback``), never silently.

A crash during a save leaves Orbax's temporary directory behind, not a
checkpoint: the previous checkpoint stays the latest valid one, and the
leftover is removed when the next run opens the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxseq.errors import CheckpointError
from jaxseq.manifest import Manifest


CHECKSUMS = "checksums.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_checksums(step_dir: Path) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of every file under ``step_dir``."""
    out = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS):
        out[path.relative_to(step_dir).as_posix()] = [path.stat().st_size, _sha256(path)]
    return out


def write_checksums(step_dir: Path) -> None:
    sums = file_checksums(step_dir)
    fd, tmp = tempfile.mkstemp(prefix=".checksums.", dir=step_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(sums, f, indent=0, sort_keys=True)
    os.replace(tmp, step_dir / CHECKSUMS)


def verify_checksums(step_dir: Path, step: int) -> None:
    """Raise CheckpointError naming the first missing, truncated or altered file."""
    listed = step_dir / CHECKSUMS
    if not listed.exists():
        raise CheckpointError(f"{step_dir}: checkpoint at step {step} has no {CHECKSUMS} "
                              "(its save did not finish)")
    try:
        expected = json.loads(listed.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise CheckpointError(f"{listed}: damaged checksum list of the checkpoint at step {step}") from None
    for name, (size, digest) in sorted(expected.items()):
        path = step_dir / name
        if not path.exists():
            raise CheckpointError(f"{step_dir}: checkpoint at step {step} is missing the file {name}")
        if path.stat().st_size != size:
            raise CheckpointError(f"{step_dir}: checkpoint at step {step} has {name} truncated or altered "
                                  f"({path.stat().st_size} bytes, expected {size})")
        if _sha256(path) != digest:
            raise CheckpointError(f"{step_dir}: checkpoint at step {step} fails its checksum for {name}")


class Checkpointer:
    """Saves and restores ``(state, data position, manifest)`` under ``directory``.

    Keeps the ``keep`` most recent checkpoints and, with ``keep_best``, the
    one with the lowest validation loss under ``directory/best``.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, keep_best: bool = False):
        self.directory = Path(directory).absolute()
        self._clean_leftovers()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
        self.best = (ocp.CheckpointManager(self.directory / "best",
                                           options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
                     if keep_best else None)
        self.best_loss = self._saved_best_loss()

    def _saved_best_loss(self) -> float:
        """The validation loss of the kept best checkpoint, if any (so a resumed run keeps it)."""
        if self.best is None or self.best.latest_step() is None:
            return float("inf")
        step = self.best.latest_step()
        try:
            path = self.directory / "best" / str(step) / "manifest" / "metadata"
            return float(json.loads(path.read_text(encoding="utf-8")).get("valid_loss", float("inf")))
        except (OSError, ValueError):
            return float("inf")

    def _clean_leftovers(self) -> None:
        """Remove temporary directories a crash during a save left behind (process 0)."""
        if not self.directory.exists() or jax.process_index() != 0:
            return
        for root in (self.directory, self.directory / "best"):
            if not root.exists():
                continue
            for child in root.iterdir():
                if child.is_dir() and ".orbax-checkpoint-tmp" in child.name:
                    shutil.rmtree(child, ignore_errors=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    @staticmethod
    def _args(state: Any, data: dict, manifest: dict):
        return ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
                                  manifest=ocp.args.JsonSave(manifest))

    def save(self, step: int, state: Any, data: dict, manifest: dict) -> None:
        """Save and wait for the commit, then write the checksums (process 0)."""
        self.manager.save(step, args=self._args(state, data, manifest), force=True)
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            write_checksums(self.directory / str(step))

    def save_best(self, step: int, loss: float, state: Any, data: dict, manifest: dict) -> bool:
        """Keep ``state`` under ``best/`` if ``loss`` is the lowest seen so far."""
        if self.best is None or not loss < self.best_loss:
            return False
        self.best_loss = loss
        if step in self.best.all_steps():   # written by a run that stopped before its next checkpoint
            self.best.delete(step)
        self.best.save(step, args=self._args(state, data, dict(manifest, valid_loss=loss)), force=True)
        self.best.wait_until_finished()
        if jax.process_index() == 0:
            write_checksums(self.directory / "best" / str(step))
        return True

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def read_manifest(self, step: int) -> dict:
        path = self.directory / str(step) / "manifest" / "metadata"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{self.directory}: checkpoint at step {step} has no readable manifest "
                                  f"({err.__class__.__name__}); it is damaged") from None

    def restore(self, abstract_state: Any, expected: Manifest, *, step: int | None = None,
                fallback: bool = False, warn=None) -> tuple[Any, dict, int]:
        """Restore ``step`` (default: the latest) after verifying its files and manifest.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` (with
        shardings) describing the state to restore into. With ``fallback`` a
        refused latest checkpoint is reported through ``warn``, renamed to
        ``<step>.refused`` (kept for inspection, out of the way of new saves),
        and the newest older one that passes is restored instead.
        """
        self.wait()
        steps = self.steps() if step is None else [step]
        if not steps:
            raise CheckpointError(f"{self.directory}: no checkpoint to resume from; train without --resume first")
        for candidate in reversed(steps):
            try:
                return self._restore_step(abstract_state, expected, candidate)
            except CheckpointError as err:
                older = [s for s in steps if s < candidate]
                if not fallback or not older:
                    hint = (f"; add --fallback to restore step {older[-1]} instead"
                            if older and not fallback else "")
                    raise CheckpointError(f"{err}{hint}") from None
                if warn is not None:
                    warn(f"{err}; falling back to step {older[-1]}")
                if jax.process_index() == 0:
                    bad = self.directory / str(candidate)
                    bad.rename(bad.with_name(f"{candidate}.refused"))
                self.manager.reload()
        raise AssertionError("unreachable")

    def _restore_step(self, abstract_state: Any, expected: Manifest, step: int) -> tuple[Any, dict, int]:
        verify_checksums(self.directory / str(step), step)
        expected.check(self.read_manifest(step), step, str(self.directory))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as err:  # Orbax raises many types for damaged files
            raise CheckpointError(f"{self.directory}: checkpoint at step {step} cannot be read "
                                  f"({err.__class__.__name__}: {str(err).splitlines()[0][:200]})") from None
        return restored.state, restored.data, step

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
        if self.best is not None:
            self.best.wait_until_finished()
            self.best.close()
