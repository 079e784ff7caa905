"""A run's working directory: everything needed to resume, evaluate or decode.

    WORKDIR/
      config.json     every setting of the run (task, data, model, optimizer, training)
      vocab.json      the vocabulary (translation: src_vocab.json and tgt_vocab.json)
      metrics.jsonl   one JSON object per log line (step, split, loss, perplexity, ...)
      checkpoints/    Orbax checkpoints (neural models)
      model.npz       the n-gram model
      results.json    the final validation results
      curve.png       the learning curve
      .jaxseq         the ownership marker (JSON: format, version, created), written when jaxseq takes the directory
      .jaxseq.lock    the writer lock (``flock``), recording the holder's PID, host and start time

A work directory is owned (docs/DESIGN.md, principle 7). jaxseq writes only into a
directory that is new, empty, or already marked as its own (``.jaxseq``, or
``config.json`` of a jaxseq run for directories written before the marker
existed); anything else is refused before a byte is written. One writer at a
time: a trainer holds an exclusive, non-blocking ``flock`` on ``.jaxseq.lock``
for as long as it runs, and the operating system releases it when the process
ends however it ends (``kill -9`` included), so a stale lock cannot exist.
Readers (evaluate, generate, translate) take no lock and write nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from jaxseq.config import dumps, field_metadata, resumable_flags
from jaxseq.errors import CheckpointError, ConfigError
from jaxseq.workdir_lock import LOCK, MARKER, WorkdirBusy, WorkdirLock, _now, read_lock_holder

__all__ = ["Workdir", "WorkdirLike", "WorkdirBusy", "WorkdirLock", "read_lock_holder", "MARKER", "LOCK",
           "default_workdir", "merge_resumed"]


def _is_writer() -> bool:
    """Only process 0 of a multi-host run writes the shared files."""
    import jax
    return jax.process_index() == 0


def _current_format(saved: dict, sections: dict[str, type]) -> bool:
    """Whether every saved section holds only settings of today's config classes (not a jaxseq 0.1 run)."""
    for name, value in saved.items():
        if name == "task":
            continue
        if name not in sections or not isinstance(value, dict):
            return False
        if set(value) - {f.name for f in fields(sections[name])}:
            return False
    return True


def merge_resumed(saved: dict, given: dict[str, Any], sections: dict[str, type], *, any_field: bool = False) -> dict:
    """``saved`` (a config.json) updated with the flags ``given`` now, by field name.

    A flag whose field is declared ``resumable`` (see :func:`jaxseq.config.option`)
    replaces the saved value (and clears the field its ``excludes`` names:
    ``--epochs`` replaces ``--steps``); any other flag must equal it, unless
    ``any_field`` (``--restart``: the run starts again, so anything may change).
    """
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for name, value in given.items():
        homes = [s for s, cls in sections.items() if s in merged and name in {f.name for f in fields(cls)}]
        flag = "--" + name.replace("_", "-")
        if not homes:
            raise ConfigError(f"{flag} is not a setting of the run being resumed (a "
                              f"{saved.get('model', {}).get('model')} model); drop the flag")
        for section in homes:
            old, meta = merged[section].get(name), field_metadata(sections[section], name)
            if meta.get("resumable") or any_field:
                merged[section][name] = value
                if meta.get("excludes") and value is not None:
                    merged[section][meta["excludes"]] = None
            elif old != value:
                raise ConfigError(f"{flag} {value} differs from the run being resumed ({old}); only "
                                  f"{', '.join(resumable_flags(sections.values()))} may change on --resume; "
                                  "drop the flag or use a new --workdir")
    return merged


MARKER_FORMAT = "jaxseq-workdir"
MARKER_VERSION = 1


def default_workdir(task: str, model: str) -> Path:
    return Path("runs") / f"{task}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


class Workdir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def of(cls, workdir: "str | os.PathLike | Workdir") -> "Workdir":
        """``workdir`` as a :class:`Workdir` (library functions take a path or a Workdir)."""
        return workdir if isinstance(workdir, Workdir) else cls(workdir)

    def __str__(self) -> str:
        return str(self.path)

    # -- paths ----------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.file("config.json")

    @property
    def checkpoints(self) -> Path:
        return self.file("checkpoints")

    @property
    def metrics(self) -> Path:
        return self.file("metrics.jsonl")

    @property
    def marker(self) -> Path:
        return self.file(MARKER)

    # -- ownership and the writer lock ---------------------------------------------
    def read_marker(self) -> dict | None:
        """The ownership marker's content, or None if there is no valid marker."""
        try:
            data = json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("format") == MARKER_FORMAT else None

    def _legacy(self) -> bool:
        """A run written before the marker existed: a jaxseq ``config.json`` (a task of jaxseq's, and its
        ``model``, ``train`` and ``optim`` sections)."""
        try:
            config = json.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (isinstance(config, dict) and config.get("task") in ("lm", "translate")
                and all(isinstance(config.get(k), dict) for k in ("model", "train", "optim")))

    def is_owned(self) -> bool:
        """True if the directory is jaxseq's: it holds the marker, or (legacy) a jaxseq ``config.json``.

        A nonexistent or empty directory is not owned yet but may be claimed
        (:meth:`check_claimable`, :meth:`claim`).
        """
        return self.path.is_dir() and (self.read_marker() is not None or self._legacy())

    def check_claimable(self) -> None:
        """Raise CheckpointError (one line) unless jaxseq may write here: the path does not
        exist, is an empty directory (a lone lock file counts as empty) or is owned. Reads only."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: is a file, not a work directory; choose another --workdir")
        if self.is_owned():
            return
        try:
            entries = sorted(p.name for p in self.path.iterdir() if p.name != LOCK)
        except OSError as err:
            raise CheckpointError(f"{self.path}: cannot be read ({err.strerror}); choose another --workdir") from None
        if not entries:
            return
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        what = (f"its {MARKER} is not a jaxseq marker" if MARKER in entries else f"it has no {MARKER} marker")
        raise CheckpointError(f"{self.path}: not a jaxseq work directory ({len(entries)} entries: {shown}; {what}); "
                              "jaxseq writes only into a new or empty directory or one it created; "
                              "choose another --workdir")

    def write_marker(self) -> dict:
        """Write the ownership marker (atomically) if there is none yet; returns the marker."""
        existing = self.read_marker()
        if existing is not None:
            return existing
        marker = {"format": MARKER_FORMAT, "version": MARKER_VERSION, "created": _now(),
                  "adopted": self._legacy()}
        fd, tmp = tempfile.mkstemp(prefix=f"{MARKER}.", suffix=".tmp", dir=self.path)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(marker, sort_keys=True) + "\n")
            os.replace(tmp, self.marker)
        except OSError as err:
            Path(tmp).unlink(missing_ok=True)
            raise CheckpointError(f"{self.marker}: cannot write the ownership marker ({err.strerror})") from None
        return marker

    def claim(self) -> dict:
        """Make the directory jaxseq's: refuse a foreign one (nothing written, nothing deleted),
        create it if needed and write the marker if missing. Returns the marker.

        Without the writer lock two processes could claim at once; a writer
        should use :meth:`lock`, which claims while holding the lock.
        """
        self.check_claimable()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointError(f"{self.path}: cannot create the work directory ({err.strerror})") from None
        return self.write_marker()

    def lock(self, *, create: bool = True, discard_if_unused: bool = True) -> WorkdirLock:
        """Take the writer lock (a :class:`WorkdirLock`, also a context manager) and claim the directory.

        Refuses a foreign directory before writing anything
        (:meth:`check_claimable`), creates a missing one (unless
        ``create=False``), takes the lock (:class:`WorkdirBusy` if another
        process holds it) and then writes the marker if it is missing, which
        also adopts a legacy run directory. With ``discard_if_unused`` a
        directory created here that still holds only the marker and the lock
        when the lock is released is removed again. Only process 0 of a
        multi-host run locks; elsewhere the returned lock does nothing.
        """
        enabled = _is_writer()
        if enabled:
            self.check_claimable()
        lock = WorkdirLock(self.path, create=create, discard_if_unused=discard_if_unused, enabled=enabled)
        lock.acquire()
        if enabled:
            try:
                self.check_claimable()    # re-checked under the lock
                self.write_marker()
            except BaseException:
                lock.release()
                raise
        return lock

    # -- reading and writing ----------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.exists()

    def write_json(self, name: str, data: Any) -> None:
        """Write atomically (a temporary file renamed into place), on process 0 only."""
        if not _is_writer():
            return
        text = dumps(data) + "\n"          # a value JSON cannot hold fails here, before any file exists
        tmp = None
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.path)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.file(name))
        except OSError as err:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise CheckpointError(f"{self.file(name)}: {err.strerror or err}; not written "
                                  "(the previous version, if any, is intact)") from None

    def read_json(self, name: str) -> Any:
        path = self.file(name)
        if not path.exists():
            raise CheckpointError(f"{path}: missing; is {self.path} a jaxseq work directory?")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: damaged ({err}); the run cannot be read") from None

    def config(self) -> dict:
        config = self.read_json("config.json")
        if not isinstance(config, dict) or "task" not in config:
            raise CheckpointError(f"{self.config_path}: not a jaxseq run configuration")
        return config

    def require_any(self) -> str:
        """The task of the run in this directory."""
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such work directory; train a model there first")
        return self.config()["task"]

    def plan(self, config: dict, *, resume: bool, restart: bool = False, given: dict[str, Any] | None = None,
             sections: dict[str, type] | None = None) -> dict:
        """The config a new, restarted or resumed run will use; checks, but writes nothing.

        A new run refuses a directory that already holds one (``restart``
        takes its place: see :meth:`discard_run`). On ``resume`` the saved
        config wins; the flags given now (``given``, by field name) must
        agree with it except those declared ``resumable`` on their field (run
        length and logistics), which are updated. ``sections`` maps each
        section name of the config to its dataclass. Write the result with
        :meth:`save_config` once the data and model have been checked, so a
        refused run leaves nothing behind.
        """
        if restart:
            if not self.exists():
                return config
            saved = self.config()
            if saved.get("task") != config["task"]:
                raise CheckpointError(f"{self.path}: holds a {saved['task']} run, not {config['task']}; "
                                      "--restart restarts a run of the same task")
            if "model" in (given or {}) and given["model"] != saved.get("model", {}).get("model"):
                return config                     # another model: the flags given now, nothing saved
            if not _current_format(saved, sections or {}):
                return config                     # a run of jaxseq 0.1: its settings cannot be carried over
            return merge_resumed(saved, given or {}, sections or {}, any_field=True)
        if not resume:
            if _is_writer() and self.exists():
                old = self.config()
                raise CheckpointError(
                    f"{self.path}: already holds a {old['task']} run (model {old.get('model', {}).get('model')}); "
                    "add --resume to continue it, --restart to start it again, or choose a new --workdir")
            return config
        if not self.exists():
            raise CheckpointError(f"{self.path}: nothing to resume (no config.json); train without --resume first")
        saved = self.config()
        if saved["task"] != config["task"]:
            raise CheckpointError(f"{self.path}: holds a {saved['task']} run, not {config['task']}")
        return merge_resumed(saved, given or {}, sections or {})

    RUN_FILES = ("config.json", "metrics.jsonl", "results.json", "curve.png", "model.npz")

    def discard_run(self, vocab_files: tuple[str, ...] = ()) -> None:
        """Remove the run's own files (config, vocabularies, logs, results, jaxseq's checkpoints), nothing else.

        Called under the writer lock by ``--restart``; the marker, the lock,
        and any file or folder jaxseq did not write (a numbered folder under
        ``checkpoints/`` without a jaxseq manifest, say) stay.
        """
        if not _is_writer():
            return
        from jaxseq.checkpoint_files import LEFTOVER_MARKS, is_jaxseq_step
        for name in self.RUN_FILES + tuple(vocab_files):
            self.file(name).unlink(missing_ok=True)
        for root in (self.checkpoints, self.checkpoints / "best"):
            if not root.is_dir():
                continue
            for child in root.iterdir():
                ours = (is_jaxseq_step(child) or any(mark in child.name for mark in LEFTOVER_MARKS)
                        or (child.name.split(".")[0].isdigit() and ".refused" in child.name))
                if child.is_dir() and ours:
                    shutil.rmtree(child)
        for root in (self.checkpoints / "best", self.checkpoints):
            if root.is_dir() and not any(root.iterdir()):
                root.rmdir()

    def save_config(self, config: dict) -> None:
        self.write_json("config.json", config)


WorkdirLike = str | os.PathLike | Workdir      # what library functions take as a work directory
