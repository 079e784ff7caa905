"""Sentence pairs: reading TSV strictly, normalising, tokenising.

Input is a TSV file of ``source<TAB>target`` lines (the format of D2L's
fra-eng), a registered dataset (``fra-eng``) or a generated task (``dates``,
see :mod:`jaxseq.data.dates`). The file is read strictly (through
:mod:`jaxseq.data.text`): missing, empty, binary or non-UTF-8 files stop with
a DataError naming the file (and the line, for bad bytes).

Bad lines
    A malformed line (no tab, more than two tab-separated fields, an empty
    side, a blank line before the end) stops reading with a DataError naming
    file and line (``on_bad_line="error"``, the default). With ``skip`` such
    lines are dropped and returned as ``(line, reason)``. With ``first-two``
    a line of more than two fields (e.g. the attribution column of
    manythings.org's Anki files) gives a pair of its first two fields, and the
    loaders warn once with the number of such lines; other bad lines still
    stop. Blank lines at the end of the file and a leading UTF-8 BOM are fine.
    The encoding is checked over the whole file, even when ``max_pairs`` stops
    reading early.

Text and tokens
    ``preprocess="d2l"`` is D2L's rule for fra-eng (``MTFraEng._preprocess``):
    U+202F and U+00A0 become spaces, everything is lowercased, and a space is
    put before ``, . ! ?`` unless one is there already. ``none`` leaves the
    text alone. Either way tokens are the white-space separated words, so
    under ``none`` punctuation stays glued to its word (``go.``). D2L splits
    on U+0020 only; splitting on all white space differs from it on 78 of
    fra-eng's 162k pairs, where a U+2009 thin space would otherwise stay glued
    to a word (``recule\u2009``) and make it a different word.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

from jaxseq.data import dates
from jaxseq.data.text import check_not_binary, decode_utf8, read_bytes, warn
from jaxseq.errors import ConfigError, DataError

PREPROCESS_CHOICES = ("none", "d2l")
ON_BAD_LINE_CHOICES = ("error", "skip", "first-two")


_D2L_PUNCT = re.compile(r"(?<=[^ ])(?=[,.!?])")   # where a space goes


def normalize(text: str, mode: str = "d2l") -> str:
    """D2L's fra-eng preprocessing (``d2l``) or nothing (``none``).

    >>> normalize("Va\u202f!  Il a dit\u00a0: «\u00a0Non.\u00a0»")
    'va !  il a dit : « non . »'
    """
    if mode == "none":
        return text
    if mode == "d2l":
        text = text.replace("\u202f", " ").replace("\u00a0", " ").lower()
        return _D2L_PUNCT.sub(" ", text)
    raise ConfigError(f"unknown preprocessing {mode!r}; choose one of {', '.join(PREPROCESS_CHOICES)}")


def tokenize(text: str) -> list[str]:
    """Words separated by white space (punctuation is split off only by ``d2l`` normalisation)."""
    return text.split()


# -- reading pairs ------------------------------------------------------------

_BOM = "\ufeff"
_EXPECT = "a UTF-8 text file of source<TAB>target lines"


class Pair(NamedTuple):
    """One sentence pair as tokens (without ``<eos>``) and its 1-based line in the file."""

    src: list[str]
    tgt: list[str]
    line: int


def _lines(data: bytes, source: str, preprocess: str, on_bad_line: str,
           skipped: list[tuple[int, str]]) -> list[str | None]:
    """The decoded, normalised lines (``None`` for an undecodable line that is skipped).

    Normalising the whole text at once gives the same words as normalising
    each side (it never adds or removes a tab or newline) and is 5x faster.
    """
    if on_bad_line != "skip":
        text = decode_utf8(data, source, expect=_EXPECT, fix="convert the file to UTF-8 or pass --on-bad-line skip")
        return normalize(text.removeprefix(_BOM), preprocess).split("\n")
    check_not_binary(data, source, _EXPECT)
    try:
        return normalize(data.decode("utf-8").removeprefix(_BOM), preprocess).split("\n")
    except UnicodeDecodeError:
        pass                                   # decode line by line, skipping the bad ones
    out: list[str | None] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
            out.append(normalize(text.removeprefix(_BOM) if number == 1 else text, preprocess))
        except UnicodeDecodeError:
            skipped.append((number, "not valid UTF-8"))
            out.append(None)
    return out


def iter_pairs(data: bytes, source: str, *, preprocess: str = "d2l", on_bad_line: str = "error",
               skipped: list[tuple[int, str]] | None = None, first_two: list[int] | None = None) -> Iterator[Pair]:
    """Parse TSV bytes into pairs, lazily, in file order.

    Bad lines raise a DataError naming ``source`` and the line, or with
    ``on_bad_line="skip"`` are appended to ``skipped`` as ``(line, reason)``.
    With ``on_bad_line="first-two"`` a line of more than two tab-separated
    fields gives a pair of its first two, and its number is appended to
    ``first_two`` (the caller warns, see :func:`first_two_warning`); any
    other bad line still raises.
    """
    if on_bad_line not in ON_BAD_LINE_CHOICES:
        raise ConfigError(f"--on-bad-line must be one of {', '.join(ON_BAD_LINE_CHOICES)}, got {on_bad_line!r}")
    skipped = [] if skipped is None else skipped
    first_two = [] if first_two is None else first_two
    if preprocess not in PREPROCESS_CHOICES:
        raise ConfigError(f"--preprocess must be one of {', '.join(PREPROCESS_CHOICES)}, got {preprocess!r}")
    lines = _lines(data, source, preprocess, on_bad_line, skipped)
    end = len(lines)
    while end and lines[end - 1] is not None and not lines[end - 1].strip():
        end -= 1
    if end == 0:
        raise DataError(f"{source}: is empty; give a file of source<TAB>target lines")
    for number in range(1, end + 1):
        line = lines[number - 1]
        if line is None:
            continue
        if line.endswith("\r"):
            line = line[:-1]
        reason = None
        if not line.strip():
            reason = "blank line"
        elif "\t" not in line:
            reason = "no tab"
        else:
            parts = line.split("\t")
            if len(parts) > 2 and on_bad_line != "first-two":
                reason = "more than two fields"
            elif not (src := tokenize(parts[0])):
                reason = "empty source"
            elif not (tgt := tokenize(parts[1])):
                reason = "empty target"
            else:
                if len(parts) > 2:
                    first_two.append(number)
                yield Pair(src, tgt, number)
                continue
        if on_bad_line != "skip":
            raise DataError(f"{source}:{number}: {_EXPLAIN[reason]}; {_FIX.get(reason, _FIX[None])}")
        skipped.append((number, reason))


_EXPLAIN = {"blank line": "blank line inside the file (only trailing blank lines are allowed)",
            "no tab": "no tab between source and target; each line must be source<TAB>target",
            "more than two fields": "more than two tab-separated fields; each line must be source<TAB>target",
            "empty source": "the source side (before the tab) is empty",
            "empty target": "the target side (after the tab) is empty"}
_FIX = {None: "fix the line or pass --on-bad-line skip",
        "more than two fields": "remove the extra fields, pass --on-bad-line first-two to use the first two "
                                "(e.g. for an attribution column) or --on-bad-line skip to drop such lines"}


def first_two_warning(lines: Sequence[int], source: str, *, examples: int = 3) -> str | None:
    """One line for the warning about lines cut to their first two fields (None if there are none)."""
    if not lines:
        return None
    shown = ", ".join(map(str, lines[:examples])) + (", ..." if len(lines) > examples else "")
    return (f"{source}: {len(lines)} line{'s' if len(lines) > 1 else ''} had more than two tab-separated fields; "
            f"used the first two (--on-bad-line first-two; line{'s' if len(lines) > 1 else ''} {shown})")


def summarize_skipped(skipped: Sequence[tuple[int, str]], *, examples: int = 3) -> str:
    """One line for the CLI, e.g. ``skipped 3 lines: 2 no tab (lines 4, 9), 1 empty target (line 12)``."""
    if not skipped:
        return "skipped no lines"
    by_reason: dict[str, list[int]] = collections.defaultdict(list)
    for number, reason in skipped:
        by_reason[reason].append(number)
    parts = []
    for reason, numbers in by_reason.items():
        shown = ", ".join(map(str, numbers[:examples])) + (", ..." if len(numbers) > examples else "")
        parts.append(f"{len(numbers)} {reason} (line{'s' if len(numbers) > 1 else ''} {shown})")
    return f"skipped {len(skipped)} line{'s' if len(skipped) > 1 else ''}: " + ", ".join(parts)


@dataclass(frozen=True)
class GeneratedTask:
    """A built-in pair task made on the fly: ``make_tsv(options)`` returns TSV text."""

    name: str
    description: str
    make_tsv: Callable[..., str]


GENERATED_TASKS: dict[str, GeneratedTask] = {t.name: t for t in [
    GeneratedTask("dates", dates.DESCRIPTION, dates.make_tsv),
]}


def pair_bytes(spec: str, options=None) -> tuple[bytes, str]:
    """``(tsv bytes, source name)`` for a generated task, a registered pair dataset or a file path.

    ``options`` configures a generated task (e.g. a :class:`~jaxseq.data.dates.DatesConfig`).
    """
    from jaxseq.data import corpora

    if spec in GENERATED_TASKS and not Path(spec).exists():
        return GENERATED_TASKS[spec].make_tsv(options).encode("utf-8"), spec
    if spec in corpora.REGISTRY and not Path(spec).exists() and corpora.REGISTRY[spec].kind != "pairs":
        raise ConfigError(f"{spec} is a language-model corpus, not sentence pairs; give a TSV file, "
                          f"'fra-eng' or one of {', '.join(GENERATED_TASKS)}")
    path = corpora.resolve_path(spec)
    return read_bytes(path), str(path)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small lists of strings.

    They hold no cycles, but each allocation counts towards a collection:
    reading fra-eng's 162k pairs takes 1.6 s with the collector and 1.0 s without.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_pairs(path: str | os.PathLike, *, preprocess: str = "d2l", on_bad_line: str = "error",
               max_pairs: int | None = None) -> tuple[list[Pair], list[tuple[int, str]]]:
    """``(pairs, skipped)`` from a TSV file; reading stops after ``max_pairs`` good pairs.

    Lines cut to their first two fields (``on_bad_line="first-two"``) are warned about in one line.
    """
    skipped: list[tuple[int, str]] = []
    first_two: list[int] = []
    pairs = []
    with gc_paused():
        for pair in iter_pairs(read_bytes(path), str(path), preprocess=preprocess, on_bad_line=on_bad_line,
                               skipped=skipped, first_two=first_two):
            pairs.append(pair)
            if max_pairs is not None and len(pairs) >= max_pairs:
                break
    if first_two:
        warn(first_two_warning(first_two, str(path)))
    return pairs, sorted(skipped)

