"""Reading text strictly, preprocessing it and cutting it into tokens.

Text enters jaxseq only through :func:`read_text`, which refuses anything that
is not a non-empty UTF-8 text file with a one-line :class:`DataError` naming
the file (and, for bad bytes, the line and byte offset).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Iterable, Literal

from jaxseq.errors import DataError

Preprocess = Literal["none", "d2l"]
TokenLevel = Literal["char", "word"]
PREPROCESS_CHOICES = ("none", "d2l")
TOKEN_CHOICES = ("char", "word")


def warn(message: str) -> None:
    """Print a one-line warning on stderr (``jaxseq: warning: ...``): the one warning form of jaxseq."""
    print(f"jaxseq: warning: {message}", file=sys.stderr, flush=True)


def check_not_binary(data: bytes, source: str, expect: str = "a UTF-8 text file") -> None:
    """Refuse ``data`` holding a NUL byte (a binary file), naming ``source`` and asking for ``expect``."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{source}: looks binary (NUL byte at offset {nul}); give {expect}")


def decode_utf8(data: bytes, source: str, *, expect: str = "a UTF-8 text file",
                fix: str = "convert the file to UTF-8") -> str:
    """Decode ``data`` as strict UTF-8, refusing binary (NUL bytes) and bad bytes.

    A bad byte is named by line and byte offset (``source:line: not valid
    UTF-8 at byte offset ...; fix``); ``expect`` and ``fix`` complete the
    messages for a particular kind of file.
    """
    check_not_binary(data, source, expect)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{source}:{line}: not valid UTF-8 at byte offset {err.start} "
                        f"(byte 0x{data[err.start]:02x}); {fix}") from None


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a file's bytes, turning a missing path or directory into a DataError."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file; check the path")
    if p.is_dir():
        raise DataError(f"{p}: is a directory, not a text file")
    try:
        return p.read_bytes()
    except OSError as err:
        raise DataError(f"{p}: cannot be read ({err.strerror})") from None


def read_text(path: str | os.PathLike) -> str:
    """Return the text of a non-empty UTF-8 file (a leading BOM is dropped)."""
    data = read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    text = decode_utf8(data, str(path))
    if not text.strip():
        raise DataError(f"{path}: is empty; give a file with some text in it")
    return text


_NON_LETTERS = re.compile(r"[^A-Za-z]+")


def preprocess(text: str, mode: Preprocess = "none") -> str:
    """Apply a preprocessing rule.

    ``none``  leaves the text as it is.
    ``d2l``   D2L's rule for The Time Machine: every run of non-letters becomes
              one space, then everything is lowercased (27 symbols remain).
    """
    if mode == "none":
        return text
    if mode == "d2l":
        return _NON_LETTERS.sub(" ", text).lower()
    raise DataError(f"unknown preprocessing {mode!r}; choose one of {', '.join(PREPROCESS_CHOICES)}")


def tokenize(text: str, level: TokenLevel = "char") -> list[str]:
    """Characters, or words separated by white space."""
    if level == "char":
        return list(text)
    if level == "word":
        return text.split()
    raise DataError(f"unknown token level {level!r}; choose char or word")


def detokenize(tokens: Iterable[str], level: TokenLevel = "char") -> str:
    """Inverse of :func:`tokenize` (word level joins with single spaces)."""
    return ("" if level == "char" else " ").join(tokens)
