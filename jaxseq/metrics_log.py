"""``metrics.jsonl``: one JSON object per log line, appended safely, read back tolerantly.

A record is ``{"step", "split": "train" | "valid", "loss", "perplexity", ...}``.
Writes are appended whole or not at all (a failed write is rolled back and
reported in one line naming the file); a torn last line, what a full disk
leaves, is skipped when reading and dropped (with a warning) when a resumed
run truncates the log to its checkpoint; a damaged line in the middle is one
error naming the file and line.

With ``events`` (a directory) and tensorboardX installed, every record is
also written as TensorBoard scalars there (:mod:`jaxseq.events`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from jaxseq.errors import CheckpointError

class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (process 0 only).

    A crash or a full disk can leave the last line half-written (torn).
    :meth:`read` skips a torn last line; :meth:`truncate_after` (on resume)
    drops it and reports it. A damaged line anywhere else is not something
    jaxseq leaves behind, so it is an error naming the file and line. A
    failed :meth:`write` removes what it appended and raises one
    CheckpointError line naming the file.
    """

    def __init__(self, path: Path, enabled: bool = True, events: Path | None = None):
        self.path, self.enabled = Path(path), enabled
        self.events_dir, self._events, self._purge = events, None, 0

    def _mirror(self, record: dict) -> None:
        """Write ``record`` to the TensorBoard events too (opened on first use: after a resume's truncation)."""
        from jaxseq import events
        if self._events is None and events.available():
            self._events = events.EventWriter(self.events_dir, purge_step=self._purge)
        if self._events is not None:
            self._events.write(record)

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = memoryview((json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                if start and os.pread(fd, 1, start - 1) != b"\n":   # never glue a record onto another
                    line = memoryview(b"\n" + bytes(line))
                try:
                    while line:
                        line = line[os.write(fd, line):]
                except OSError:
                    os.ftruncate(fd, start)      # no torn line left behind (truncating needs no space)
                    raise
            finally:
                os.close(fd)
        except OSError as err:
            raise CheckpointError(f"{self.path}: {err.strerror or err}; cannot append to the metrics log; "
                                  "free some space and continue with --resume") from None
        if self.events_dir is not None:
            self._mirror(record)

    @staticmethod
    def _parse(path: Path) -> tuple[list[dict], int | None]:
        """The records of ``path`` and the line number of a torn last line (None if none)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return [], None
        except OSError as err:
            raise CheckpointError(f"{path}: cannot be read ({err.strerror})") from None
        lines = raw.split(b"\n")
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        records = []
        for i, line in enumerate(lines[:last + 1]):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                if i == last:
                    return records, i + 1
                raise CheckpointError(f"{path}:{i + 1}: damaged metrics record (not a JSON object on one line); "
                                      "repair or delete that line") from None
            records.append(record)
        return records, None

    @staticmethod
    def read(path: Path) -> list[dict]:
        """Every record of ``path`` ([] if it does not exist); a torn last line is skipped."""
        return MetricsLog._parse(path)[0]

    def truncate_after(self, step: int, warn: Callable[[str], None] | None = None) -> int:
        """Drop records logged after ``step`` (by a run that stopped before its next checkpoint),
        and a torn last line, which is reported through ``warn``. Returns the number of torn lines
        dropped (0 or 1)."""
        self._purge = step + 1              # TensorBoard drops points at steps >= purge_step
        if not (self.enabled and self.path.exists()):
            return 0
        records, torn = self._parse(self.path)
        kept = [r for r in records if r.get("step", 0) <= step]
        if torn is not None and warn is not None:
            warn(f"{self.path}:{torn}: the last line was half-written (a crash or a full disk); dropped it")
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(self.path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise CheckpointError(f"{self.path}: {err.strerror or err}; cannot rewrite the metrics log") from None
        return 0 if torn is None else 1
