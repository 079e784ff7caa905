"""The error hierarchy.

Every error jaxseq raises on purpose is a :class:`JaxseqError` whose message is
one line: what went wrong, where (file, line, byte offset, step or parameter)
and what to do about it. The CLI prints that line and exits non-zero; it never
shows a traceback for these.
"""

from __future__ import annotations


class JaxseqError(Exception):
    """Base class of every deliberate jaxseq error (one-line message)."""


class DataError(JaxseqError):
    """Input data is missing, empty, binary, not UTF-8 or malformed."""


class ConfigError(JaxseqError):
    """A flag, parameter or configuration value is invalid or inconsistent."""


class CheckpointError(JaxseqError):
    """A checkpoint or work directory is missing, corrupt or belongs to another run."""


class TrainingError(JaxseqError):
    """Training cannot go on (e.g. the loss became non-finite)."""


class FetchError(DataError):
    """A dataset could not be downloaded or failed its checksum."""
