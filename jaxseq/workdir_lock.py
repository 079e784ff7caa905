"""The writer lock of a work directory: one writer at a time, released by the OS when it dies.

``WORKDIR/.jaxseq.lock`` is locked with ``fcntl.flock`` (non-blocking,
exclusive) by the process that writes the directory, and records that
process's PID, host, start time and command line. A second writer gets
:class:`WorkdirBusy`, one line naming the holder. The lock is released when
the writer finishes, and by the operating system when its process dies
(``kill -9`` included), so a stale lock never blocks a later run. Readers
never take it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from jaxseq.errors import CheckpointError

MARKER = ".jaxseq"          # the ownership marker (jaxseq.workdir); a directory holding only it and the lock is unused
LOCK = ".jaxseq.lock"


class WorkdirBusy(CheckpointError):
    """Another process holds the work directory's writer lock."""


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z")


def _holder_text(info: dict | None) -> str:
    if not info:
        return "another process (which has not recorded its PID yet)"
    host = info.get("host")
    where = "" if not host or host == socket.gethostname() else f" on {host}"
    return f"PID {info.get('pid', '?')}{where}, started {info.get('started', '?')}"


def read_lock_holder(path: str | os.PathLike) -> dict | None:
    """What ``WORKDIR/.jaxseq.lock`` records about its last holder (None if nothing readable).

    Only meaningful while the lock is held (see :meth:`WorkdirLock.held`):
    a released lock file is emptied, but one whose holder was killed keeps
    its (now stale) record.
    """
    try:
        info = json.loads((Path(path) / LOCK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


class WorkdirLock:
    """The exclusive writer lock of a work directory (``flock`` on ``WORKDIR/.jaxseq.lock``).

    ``acquire()`` never waits: if another process holds the lock it raises
    :class:`WorkdirBusy`, one line naming the directory and the holder's PID
    and start time. The holder's PID, host, start time and command line are
    written into the lock file. The kernel drops the lock when the holding
    process exits or is killed; :meth:`release` (or leaving the ``with``
    block) drops it earlier and empties the file. The lock file itself is
    kept (deleting a lock file others may have open would let two processes
    lock two different files).

    ``create=True`` creates the directory (and its parents) if needed;
    ``discard_if_unused=True`` removes, on release, a directory this lock
    created if it then holds nothing but the marker and the lock file (a
    run refused after taking the lock leaves nothing behind).
    ``enabled=False`` makes every method a no-op (processes other than 0 of
    a multi-host run, which write nothing).
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True, discard_if_unused: bool = False,
                 enabled: bool = True):
        self.path = Path(path)
        self.create, self.discard_if_unused, self.enabled = create, discard_if_unused, enabled
        self._fd: int | None = None
        self._created_dir = False

    @property
    def file(self) -> Path:
        return self.path / LOCK

    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> "WorkdirLock":
        if not self.enabled or self._fd is not None:
            return self
        if not self.path.is_dir():
            if self.path.exists():
                raise CheckpointError(f"{self.path}: is a file, not a work directory; choose another --workdir")
            if not self.create:
                raise CheckpointError(f"{self.path}: no such work directory; train a model there first")
            try:
                self.path.mkdir(parents=True)
                self._created_dir = True
            except FileExistsError:
                pass
            except OSError as err:
                raise CheckpointError(f"{self.path}: cannot create the work directory ({err.strerror})") from None
        for _ in range(10):
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as err:
                raise CheckpointError(f"{self.file}: cannot open the lock file ({err.strerror}); "
                                      "is the work directory writable?") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise CheckpointError(f"{self.file}: cannot lock ({err.strerror})") from None
                raise WorkdirBusy(
                    f"{self.path}: in use by another jaxseq process ({_holder_text(read_lock_holder(self.path))}); "
                    "wait for it to finish or stop it, or choose another --workdir") from None
            try:    # the file we locked must still be the one at the path (a discarding holder unlinks it)
                same = os.path.samestat(os.fstat(fd), os.stat(self.file))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise WorkdirBusy(f"{self.path}: the lock file keeps changing under us; another process is "
                              "taking and discarding the directory; try again")
        self._fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), "time": time.time(),
                "command": " ".join(sys.argv)[:500]}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info, sort_keys=True) + "\n").encode("utf-8"), 0)
        except OSError:
            pass    # the record is informative; the lock itself is held
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self.discard_if_unused and self._created_dir and \
                    {p.name for p in self.path.iterdir()} <= {MARKER, LOCK}:
                for name in (MARKER, LOCK):
                    (self.path / name).unlink(missing_ok=True)
                self.path.rmdir()
            else:
                os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)   # drops the flock

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
