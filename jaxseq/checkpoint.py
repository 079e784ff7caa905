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
leftover is removed when the next writer opens the directory.

Writers and readers (docs/DESIGN.md, principle 7). A writing ``Checkpointer`` (the
trainer, which holds the work directory's lock, :meth:`jaxseq.workdir.Workdir.lock`)
removes leftovers, saves, and prunes old checkpoints. A reader
(``Checkpointer(dir, read_only=True)``: evaluate, generate, translate)
creates nothing, deletes and renames nothing, and sees only *complete*
checkpoints: committed by Orbax (renamed from its temporary name) and with
``checksums.json`` written. A step directory without ``checksums.json`` is
still being finalised by a running trainer and is skipped, not refused.

Only jaxseq's own step directories are listed or pruned: a numbered folder
is a jaxseq checkpoint if it holds the ``manifest`` item or ``checksums.json``
(:func:`is_jaxseq_step`). Keeping the ``keep`` newest is done here, not by
Orbax's ``max_to_keep`` (which would delete any numbered folder).

Asynchronous saves (``async_save=True``, the CLI's ``--async-checkpoint``):
Orbax copies the state from the devices to host memory (the only part that
blocks the training loop; :attr:`Checkpointer.last_blocked_s`) and writes it
in background threads; a jaxseq thread then waits for Orbax's commit and
only then writes ``checksums.json`` and prunes. So the guarantees stay those
of a synchronous save: a step is complete only once fully written; a kill
during the write leaves Orbax's temporary directory (removed on the next
start) and the previous checkpoint as the latest valid one. The next save,
:meth:`Checkpointer.wait`, :meth:`Checkpointer.restore` and
:meth:`Checkpointer.close` first finish the pending save, and raise its
error, if any, as the same one line.

A save that fails for lack of space (or any other operating-system error,
also when Orbax or TensorStore wrap it) removes the partial step it started
and raises one :class:`CheckpointError` line naming the step directory, the
reason and the last complete checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxseq.checkpoint_files import (CHECKSUMS, LEFTOVER_MARKS, MANIFEST_ITEM, checkpoint_steps, file_checksums,
                                     is_complete, is_jaxseq_step, latest_complete_step, os_error_reason,
                                     verify_checksums, write_checksums)
from jaxseq.errors import CheckpointError

__all__ = ["Checkpointer", "CHECKSUMS", "checkpoint_steps", "file_checksums", "is_complete", "is_jaxseq_step",
           "latest_complete_step", "os_error_reason", "verify_checksums", "write_checksums"]
from jaxseq.manifest import Manifest


def _remove_dir(path: Path) -> None:
    """Remove a directory so that no reader ever sees it half-deleted: rename it aside, then delete."""
    aside = path.with_name(f"{path.name}.jaxseq-deleting-{os.getpid()}")
    try:
        path.rename(aside)
    except OSError:
        aside = path
    shutil.rmtree(aside, ignore_errors=True)


def _free_name(path: Path, suffix: str) -> Path:
    """``path`` + ``suffix``, or + ``suffix.1``, ``.2``, ... : the first name not taken."""
    candidate, n = path.with_name(path.name + suffix), 0
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}{suffix}.{n}")
    return candidate


class _held_stderr:
    """Hold what is written to file descriptor 2 while a save runs; pass it on unless :meth:`discard` is called.

    A write that fails deep in Orbax and TensorStore (a full disk) prints
    tracebacks from their threads, some straight to the descriptor; jaxseq
    reports the failure as one line instead, so that output is dropped. A
    save that succeeds passes on whatever was written, unchanged.
    """

    def __enter__(self) -> "_held_stderr":
        self._keep, self._saved = True, None
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        try:
            self._saved = os.dup(2)
        except OSError:                  # no stderr at all (closed): nothing to hold
            return self
        os.dup2(self._file.fileno(), 2)
        return self

    def discard(self, settle: float = 0.3, most: float = 5.0) -> None:
        """Drop what was held, after the failing threads have gone quiet (nothing new for ``settle`` s)."""
        self._keep = False
        deadline, size, quiet_since = time.monotonic() + most, -1, time.monotonic()
        while time.monotonic() < deadline:
            now = os.fstat(self._file.fileno()).st_size
            if now != size:
                size, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= settle:
                break
            time.sleep(0.05)

    def release(self) -> None:
        self._keep = True

    def __exit__(self, *exc) -> bool:
        if self._saved is None:
            self._file.close()
            return False
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        if self._keep:
            self._file.seek(0)
            held = self._file.read()
            if held:
                os.write(2, held)
        self._file.close()
        return False


class _held_orbax_errors(logging.Filter):
    """Hold the error records (with tracebacks) Orbax logs through absl while a background save runs.

    A background save cannot hold file descriptor 2 (:class:`_held_stderr`) without holding the training
    loop's own output; Orbax's threads report a failed write through the ``absl`` logger, so that is
    held instead: dropped when the failure becomes one CheckpointError line, passed on otherwise.
    """

    def __init__(self):
        super().__init__()
        self.held: list[logging.LogRecord] = []
        self.logger = logging.getLogger("absl")
        self.logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.held.append(record)
            return False
        return True

    def close(self, keep: bool) -> None:
        self.logger.removeFilter(self)
        if keep:
            for record in self.held:
                self.logger.handle(record)
        self.held = []


class Checkpointer:
    """Saves and restores ``(state, data position, manifest)`` under ``directory``.

    Keeps the ``keep`` most recent complete checkpoints and, with
    ``keep_best``, the one with the lowest validation loss under
    ``directory/best``.

    A writer (the default) must hold the work directory's lock: it removes
    what crashed saves left behind, creates ``directory`` and prunes old
    checkpoints. ``read_only=True`` opens a reader: nothing is created,
    removed or renamed (``save``/``save_best`` refuse), only complete
    checkpoints are listed, and a checkpoint pruned by a running trainer
    while it is being read is replaced by the then newest one.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, keep_best: bool = False,
                 read_only: bool = False, async_save: bool = False):
        self.directory = Path(directory).absolute()
        self.keep, self.read_only, self.async_save = keep, read_only, async_save
        self.manager = self.best = None
        self.last_blocked_s = 0.0             # seconds the last save() kept its caller waiting
        self._pending: threading.Thread | None = None
        self._pending_step: int | None = None
        self._pending_error: BaseException | None = None
        if read_only:
            self._reader = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        else:
            self._reader = None
            self._clean_leftovers()
            # max_to_keep stays None: Orbax would delete any numbered folder; _prune keeps jaxseq's own
            self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(create=True))
            if keep_best:
                self.best = ocp.CheckpointManager(self.directory / "best",
                                                  options=ocp.CheckpointManagerOptions(create=True))
        self.best_loss = self._saved_best_loss() if keep_best else float("inf")

    def _saved_best_loss(self) -> float:
        """The validation loss of the kept best checkpoint, if any (so a resumed run keeps it)."""
        step = latest_complete_step(self.directory / "best")
        if step is None:
            return float("inf")
        try:
            path = self.directory / "best" / str(step) / MANIFEST_ITEM / "metadata"
            return float(json.loads(path.read_text(encoding="utf-8")).get("valid_loss", float("inf")))
        except (OSError, ValueError):
            return float("inf")

    def _clean_leftovers(self) -> None:
        """Remove temporary directories a crash during a save (or a prune) left behind (process 0)."""
        if not self.directory.exists() or jax.process_index() != 0:
            return
        for root in (self.directory, self.directory / "best"):
            if not root.is_dir():
                continue
            for child in root.iterdir():
                if child.is_dir() and any(mark in child.name for mark in LEFTOVER_MARKS):
                    shutil.rmtree(child, ignore_errors=True)

    def steps(self) -> list[int]:
        """jaxseq's checkpoints, ascending; a reader lists only complete ones, a writer also the step
        its background save is writing."""
        steps = checkpoint_steps(self.directory, complete_only=self.read_only)
        if self._pending_step is not None and self._pending_step not in steps:
            steps = sorted(steps + [self._pending_step])
        return steps

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    @staticmethod
    def _args(state: Any, data: dict, manifest: dict):
        return ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
                                  manifest=ocp.args.JsonSave(manifest))

    def _writer(self, what: str) -> None:
        if self.read_only:
            raise CheckpointError(f"{self.directory}: opened read-only; cannot {what}")

    def _last_complete(self) -> str:
        """Where the run stands after a failed save, and the command that continues it."""
        last = latest_complete_step(self.directory)
        if last is None:
            return "no complete checkpoint has been written yet; free some space and start again with --restart"
        return f"the last complete checkpoint is step {last}; free some space and continue with --resume"

    def _save(self, manager, root: Path, step: int, args, keep: int, background: bool = False) -> None:
        """Save, wait for the commit, write the checksums (process 0), then prune to ``keep``.

        With ``background`` only Orbax's blocking part (the copy off the
        devices) runs here; a thread waits for the commit and finishes
        (:meth:`_finish`). An operating-system failure (a full disk, ...)
        removes the step directory and temporary directory this save created
        and raises one CheckpointError line (from :meth:`wait` or the next
        save, for a background one).
        """
        step_dir = root / str(step)
        if step_dir.exists():
            foreign = "" if is_jaxseq_step(step_dir) else " and is not a jaxseq checkpoint"
            raise CheckpointError(f"{step_dir}: already exists{foreign}; move it out of the way and resume")
        before = {p.name for p in root.iterdir()} if root.is_dir() else set()
        if background:
            logs = _held_orbax_errors()
            try:
                manager.save(step, args=args, force=True)
            except Exception as err:
                logs.close(keep=os_error_reason(err) is None)
                self._failed(err, manager, root, step, before, None)
            self._pending_error, self._pending_step = None, step
            self._pending = threading.Thread(target=self._finish_in_background,
                                             args=(manager, root, step, keep, before, logs),
                                             name=f"jaxseq-checkpoint-{step}", daemon=True)
            self._pending.start()
            return
        with _held_stderr() as held:
            try:
                manager.save(step, args=args, force=True)
                self._commit(manager, step_dir)
            except Exception as err:
                self._failed(err, manager, root, step, before, held)
        self._prune(root, keep)
        manager.reload()

    @staticmethod
    def _commit(manager, step_dir: Path) -> None:
        """Wait until Orbax has committed ``step_dir``, then mark it complete (``checksums.json``, process 0)."""
        manager.wait_until_finished()
        if jax.process_index() == 0:
            write_checksums(step_dir)

    def _failed(self, err: BaseException, manager, root: Path, step: int, before: set[str], held) -> None:
        """Turn a failed save into one CheckpointError line (OS errors), removing what it created."""
        reason = os_error_reason(err)
        if reason is None:
            if held is not None:
                held.release()
            raise err
        self._remove_partial(root, step, before)
        try:
            manager.reload()
        except Exception:  # the manager may be unusable now; the error below is what matters
            pass
        if held is not None:
            held.discard()
        raise CheckpointError(f"{root / str(step)}: {reason}; {self._last_complete()}") from None

    def _finish_in_background(self, manager, root: Path, step: int, keep: int, before: set[str],
                              logs: _held_orbax_errors) -> None:
        try:
            try:
                self._commit(manager, root / str(step))
            except Exception as err:
                self._failed(err, manager, root, step, before, None)
            self._prune(root, keep)
            manager.reload()
        except BaseException as err:       # raised in the caller's thread by _join
            self._pending_error = err
        finally:
            logs.close(keep=not isinstance(self._pending_error, CheckpointError))

    def _join(self) -> None:
        """Finish the pending background save (if any); raise its error."""
        if self._pending is None:
            return
        self._pending.join()
        self._pending, self._pending_step, error = None, None, self._pending_error
        self._pending_error = None
        if error is not None:
            logs = _held_orbax_errors()
            try:        # Orbax raises a failed save once per thread that waits: this thread's, reported below
                self.manager.wait_until_finished()
            except Exception:
                pass
            finally:
                logs.close(keep=not isinstance(error, CheckpointError))
            raise error

    @staticmethod
    def _remove_partial(root: Path, step: int, before: set[str]) -> None:
        """Remove what a failed save of ``step`` created under ``root`` (process 0)."""
        if jax.process_index() != 0 or not root.is_dir():
            return
        for child in root.iterdir():
            if child.name in before:
                continue
            if child.name == str(step) or child.name.startswith(f"{step}.orbax-checkpoint-tmp"):
                shutil.rmtree(child, ignore_errors=True)

    @staticmethod
    def _prune(root: Path, keep: int) -> None:
        """Keep the ``keep`` newest complete jaxseq checkpoints under ``root``; remove older jaxseq ones.

        Folders that are not jaxseq checkpoints (:func:`is_jaxseq_step`) are never touched.
        """
        if jax.process_index() != 0:
            return
        complete = checkpoint_steps(root, complete_only=True)
        if len(complete) <= keep:
            return
        oldest_kept = complete[-keep]
        for step in checkpoint_steps(root):
            if step < oldest_kept:
                _remove_dir(root / str(step))

    def save(self, step: int, state: Any, data: dict, manifest: dict) -> None:
        """Save and wait for the commit, then write the checksums (process 0) and prune to ``keep``.

        With ``async_save`` it returns once the state is off the devices; the
        write, the checksums and the pruning finish in the background (module
        docstring). :attr:`last_blocked_s` is how long the call took (waiting
        for the previous save included).
        """
        self._writer("save a checkpoint")
        t = time.perf_counter()
        try:
            self._join()
            self._save(self.manager, self.directory, step, self._args(state, data, manifest), self.keep,
                       background=self.async_save)
        finally:
            self.last_blocked_s = time.perf_counter() - t

    def save_best(self, step: int, loss: float, state: Any, data: dict, manifest: dict) -> bool:
        """Keep ``state`` under ``best/`` if ``loss`` is the lowest seen so far."""
        self._writer("save a checkpoint")
        if self.best is None or not loss < self.best_loss:
            return False
        self._join()
        best = self.directory / "best"
        if is_jaxseq_step(best / str(step)):    # written by a run that stopped before its next checkpoint
            if jax.process_index() == 0:
                _remove_dir(best / str(step))
            self.best.reload()
        self._save(self.best, best, step, self._args(state, data, dict(manifest, valid_loss=loss)), 1)
        self.best_loss = loss
        return True

    def wait(self) -> None:
        """Finish every pending save (raising a background save's error)."""
        self._join()
        if self.manager is not None:
            self.manager.wait_until_finished()

    def read_manifest(self, step: int) -> dict:
        path = self.directory / str(step) / MANIFEST_ITEM / "metadata"
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
        refused latest checkpoint is reported through ``warn`` and the newest
        older one that passes is restored instead; a writer also renames the
        refused one to ``<step>.refused`` (``.refused.1``, ... if taken),
        kept for inspection, out of the way of new saves. A reader renames
        nothing, and moves on without a word when a checkpoint it was reading
        is pruned by a running trainer.
        """
        self.wait()
        for _ in range(20):
            steps = self.steps() if step is None else [step]
            if not steps and self.read_only:
                raise CheckpointError(f"{self.directory}: no complete checkpoint yet; train a model there first "
                                      "(a running trainer writes one every --checkpoint-every steps)")
            if not steps:
                raise CheckpointError(f"{self.directory}: no checkpoint to resume from; train without --resume first")
            for candidate in reversed(steps):
                try:
                    return self._restore_step(abstract_state, expected, candidate)
                except CheckpointError as err:
                    if self.read_only and step is None and not (self.directory / str(candidate)).exists():
                        break                   # pruned by the trainer while we read it: list again
                    older = [s for s in steps if s < candidate]
                    if not fallback or not older:
                        hint = (f"; add --fallback to restore step {older[-1]} instead"
                                if older and not fallback else "")
                        raise CheckpointError(f"{err}{hint}") from None
                    if warn is not None:
                        warn(f"{err}; falling back to step {older[-1]}")
                    if not self.read_only and jax.process_index() == 0:
                        bad = self.directory / str(candidate)
                        bad.rename(_free_name(bad, ".refused"))
                    if self.manager is not None:
                        self.manager.reload()
        raise CheckpointError(f"{self.directory}: checkpoints keep disappearing while being read "
                              "(a trainer pruning them); try again")

    def _restore_step(self, abstract_state: Any, expected: Manifest, step: int) -> tuple[Any, dict, int]:
        verify_checksums(self.directory / str(step), step)
        expected.check(self.read_manifest(step), step, str(self.directory))
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())
        try:
            if self.read_only:
                restored = self._reader.restore(self.directory / str(step), args=args)
            else:
                restored = self.manager.restore(step, args=args)
        except Exception as err:  # Orbax raises many types for damaged files
            raise CheckpointError(f"{self.directory}: checkpoint at step {step} cannot be read "
                                  f"({err.__class__.__name__}: {str(err).splitlines()[0][:200]})") from None
        return restored.state, restored.data, step

    def close(self) -> None:
        try:
            self._join()
        finally:
            self._close()

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        for manager in (self.manager, self.best):
            if manager is not None:
                manager.wait_until_finished()
                manager.close()
