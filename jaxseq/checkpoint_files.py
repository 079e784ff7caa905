"""Checkpoint directories on disk: checksums, which step folders are jaxseq's and complete, OS errors.

A step folder ``checkpoints/<step>/`` is *jaxseq's* when it holds a
``manifest`` item or ``checksums.json``, and *complete* once
``checksums.json`` (SHA-256 and size of every file in it) has been written
after Orbax committed the step. Readers list only complete steps; writers
prune only jaxseq's. :func:`os_error_reason` finds the operating-system
reason (a full disk, a file too large ...) inside the errors Orbax and
TensorStore raise.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from jaxseq.errors import CheckpointError
CHECKSUMS = "checksums.json"


def file_sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_checksums(step_dir: Path) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of every file under ``step_dir``."""
    out = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUMS):
        out[path.relative_to(step_dir).as_posix()] = [path.stat().st_size, file_sha256(path)]
    return out


def write_checksums(step_dir: Path) -> None:
    """Write ``checksums.json`` atomically (a temporary file renamed into place; removed on failure)."""
    sums = file_checksums(step_dir)
    fd, tmp = tempfile.mkstemp(prefix=".checksums.", dir=step_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(sums, f, indent=0, sort_keys=True)
        os.replace(tmp, step_dir / CHECKSUMS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        try:                # a file can vanish underfoot: a trainer pruning the step a reader checks
            actual = path.stat().st_size
            if actual != size:
                raise CheckpointError(f"{step_dir}: checkpoint at step {step} has {name} truncated or altered "
                                      f"({actual} bytes, expected {size})")
            if file_sha256(path) != digest:
                raise CheckpointError(f"{step_dir}: checkpoint at step {step} fails its checksum for {name}")
        except OSError:
            raise CheckpointError(f"{step_dir}: checkpoint at step {step} is missing the file {name}") from None


# -- which step directories are jaxseq's, and which are complete ------------------------------

MANIFEST_ITEM = "manifest"
LEFTOVER_MARKS = (".orbax-checkpoint-tmp", ".jaxseq-deleting")


def is_jaxseq_step(path: Path) -> bool:
    """A numbered directory (``str(step)``) holding jaxseq's ``manifest`` item or ``checksums.json``."""
    name = path.name
    return (name.isdigit() and str(int(name)) == name and path.is_dir()
            and ((path / MANIFEST_ITEM).is_dir() or (path / CHECKSUMS).is_file()))


def is_complete(step_dir: Path) -> bool:
    """Committed by Orbax (under its final name) and its ``checksums.json`` written."""
    return is_jaxseq_step(step_dir) and (step_dir / CHECKSUMS).is_file()


def checkpoint_steps(directory: str | os.PathLike, *, complete_only: bool = False) -> list[int]:
    """The steps of jaxseq's checkpoints under ``directory``, ascending (reads only).

    ``complete_only`` drops those whose ``checksums.json`` is not written yet.
    """
    root = Path(directory)
    try:
        children = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    ok = is_complete if complete_only else is_jaxseq_step
    return sorted(int(p.name) for p in children if ok(p))


def latest_complete_step(directory: str | os.PathLike) -> int | None:
    """The newest complete checkpoint under ``directory`` (None if there is none); reads only."""
    steps = checkpoint_steps(directory, complete_only=True)
    return steps[-1] if steps else None


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_OS_PHRASES = tuple(os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS,
                                                   errno.EACCES, errno.EIO))


def os_error_reason(err: BaseException) -> str | None:
    """The operating-system reason behind ``err`` ("No space left on device", ...), or None.

    Looks through the exception's causes for an ``OSError``, then at the
    message, where TensorStore (Orbax's array writer) reports the error as
    ``... [os_error_code='28']``.
    """
    chain, todo = [], [err]
    while todo:
        e = todo.pop()
        if e is None or any(e is c for c in chain):
            continue
        chain.append(e)
        if isinstance(e, OSError) and (e.strerror or e.errno):
            return e.strerror or os.strerror(e.errno)
        todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
    for e in chain:
        text = str(e)
        match = _OS_ERROR_CODE.search(text)
        if match:
            return os.strerror(int(match.group(1)))
        for phrase in _OS_PHRASES:
            if phrase in text:
                return phrase
    return None
