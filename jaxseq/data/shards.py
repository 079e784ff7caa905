"""Token shards on disk: the directory `jaxseq prepare` writes and training reads by memory map.

A prepared directory ``DIR`` holds::

    .jaxseq-shards      the marker (a directory `jaxseq prepare` may write into again)
    index.json          format, tokenization settings, vocabulary fingerprint, dtype, counts,
                        every shard's file, split, tokens, bytes and SHA-256
    vocab.json          the vocabulary (built on the training part, as `train lm` builds it in memory)
    tokenizer.json      (--tokens bpe|wordpiece) the Hugging Face tokenizer, trained on the training part;
                        its fingerprint is in vocab.json and in the index
    train-00000.npy ... the training token stream, cut into shards of ``--shard-tokens`` ids
    valid.npy           the held-out validation shard (the last ``--valid-fraction`` of the stream)

Every shard is a 1-D ``.npy`` array of ``uint16`` while the vocabulary has at
most 65,536 entries, else ``uint32``, so ``np.load(path, mmap_mode="r")``
reads it without loading it. The training stream is the shards concatenated
in index order; :class:`TokenStream` presents it as one sequence and reads a
window ``[s, s + T + 1)`` (also across a shard boundary) from the memory maps,
so a process reads only the windows of its own batch rows.

What is checked when a directory is opened (:func:`open_prepared`), cheapest
first: the index parses and has this format; ``vocab.json``'s fingerprint is
the index's; every shard names that same vocabulary (shards of different
vocabularies are never mixed); every shard file exists, has the index's byte
size and a ``.npy`` header of the index's dtype and length. The SHA-256 of
every shard is compared too when the shards total at most
:data:`HASH_ON_OPEN_BYTES` (64 MiB: a fraction of a second); larger sets are
hashed by ``jaxseq prepare --verify DIR`` (which reads every byte once). A
run's data fingerprint is a hash of the index's shard hashes, so a resumed
run whose shard set changed is refused without reading every token.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from jaxseq.checkpoint_files import file_sha256
from jaxseq.errors import DataError

INDEX = "index.json"
VOCAB = "vocab.json"
TOKENIZER = "tokenizer.json"          # beside vocab.json for --tokens bpe|wordpiece (subword.tokenizer_file)
MARKER = ".jaxseq-shards"
VALID = "valid.npy"
FORMAT = "jaxseq-shards"
VERSION = 1
HASH_ON_OPEN_BYTES = 64 << 20
# LMDataConfig fields that say how windows are cut, not what the token stream is: every other
# field of the data section is a tokenization setting, recorded in the index by `prepare`
TRAINING_ONLY = ("data", "seq_len", "batch_size", "sampling", "eval_context")


def is_prepared(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by `jaxseq prepare` (it holds an ``index.json``)."""
    p = Path(path)
    return p.is_dir() and (p / INDEX).is_file()


def compact_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` while every id fits (``vocab_size <= 65536``), else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def shard_name(i: int) -> str:
    return f"train-{i:05d}.npy"


class ShardWriter:
    """Write a 1-D ``.npy`` shard of a known length piece by piece, hashing the bytes as they go.

    Plain file writes (no memory map), so the writer's memory stays that of one piece.
    """

    def __init__(self, path: Path, dtype: np.dtype, length: int):
        import io
        self.path, self.dtype, self.length, self.written = path, np.dtype(dtype), length, 0
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": (length,)})
        self.hash = hashlib.sha256(header.getvalue())
        self.file = open(path, "wb")
        self.file.write(header.getvalue())

    def write(self, ids: np.ndarray) -> None:
        data = np.ascontiguousarray(ids, dtype=self.dtype.newbyteorder("<")).tobytes()
        self.file.write(data)
        self.hash.update(data)
        self.written += len(ids)

    def close(self) -> dict[str, Any]:
        """The shard's index entry (``file``, ``tokens``, ``bytes``, ``sha256``)."""
        self.file.close()
        if self.written != self.length:           # a bug, not bad input
            raise AssertionError(f"{self.path}: wrote {self.written} of {self.length} tokens")
        return {"file": self.path.name, "tokens": self.length, "bytes": self.path.stat().st_size,
                "sha256": self.hash.hexdigest()}


class TokenStream:
    """Several 1-D id arrays (memory-mapped shards) read as one stream of ``len(self)`` tokens.

    ``windows(starts, L)`` is ``stream[starts[:, None] + arange(L)]`` as ``int32``
    (``(R,) -> (R, L)``), reading only those windows; a window that crosses a
    shard boundary is joined from its pieces.
    """

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.arrays = [a.view(np.ndarray) if isinstance(a, np.memmap) else a for a in arrays]   # no subclass cost
        sizes = np.array([len(a) for a in self.arrays], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])        # shard k holds [offsets[k], offsets[k+1])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        if starts.size and (starts.min() < 0 or starts.max() + length > len(self)):
            raise IndexError(f"a window of {length} tokens at {starts.min()}..{starts.max()} leaves the "
                             f"stream of {len(self)} tokens")
        out = np.empty((starts.size, length), np.int32)
        first = np.searchsorted(self.offsets, starts, side="right") - 1
        last = np.searchsorted(self.offsets, starts + length - 1, side="right") - 1
        inside = first == last
        for k in np.unique(first[inside]).tolist():      # windows within one shard: one gather per shard
            rows = np.flatnonzero(inside & (first == k))
            local = starts[rows] - self.offsets[k]
            out[rows] = self.arrays[k][local[:, None] + np.arange(length)[None, :]]
        for r in np.flatnonzero(~inside).tolist():       # windows across a boundary: joined from pieces
            s, k, filled = int(starts[r]), int(first[r]), 0
            while filled < length:
                local = s + filled - int(self.offsets[k])
                piece = self.arrays[k][local: local + length - filled]
                out[r, filled: filled + len(piece)] = piece
                filled += len(piece)
                k += 1
        return out

    def to_array(self) -> np.ndarray:
        """The whole stream in memory as ``int32`` (for small streams and tests)."""
        return np.concatenate([np.asarray(a, np.int32) for a in self.arrays]) if self.arrays else \
            np.zeros(0, np.int32)


def take_windows(ids: np.ndarray | TokenStream, starts: np.ndarray, length: int) -> np.ndarray:
    """``(R, length)`` windows of ``ids`` (an array or a :class:`TokenStream`) starting at ``starts`` (R,)."""
    if isinstance(ids, TokenStream):
        return ids.windows(starts, length)
    return ids[np.asarray(starts)[:, None] + np.arange(length)[None, :]]


# -- opening a prepared directory ---------------------------------------------------------------

def read_index(path: str | os.PathLike) -> dict:
    """The index of prepared directory ``path`` (a one-line DataError if it is not one)."""
    where = Path(path) / INDEX
    try:
        index = json.loads(where.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{where}: missing; {path} is not a directory written by `jaxseq prepare`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{where}: cannot be read as a shard index ({err}); run `jaxseq prepare` again") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{where}: not a jaxseq shard index; run `jaxseq prepare` again")
    if index.get("version") != VERSION:
        raise DataError(f"{where}: shard index version {index.get('version')}, this jaxseq reads {VERSION}; "
                        "run `jaxseq prepare` again")
    return index


@dataclass
class Prepared:
    """An opened prepared directory: its index, vocabulary, training stream and validation ids."""

    path: Path
    index: dict
    vocab: Any                    # jaxseq.data.vocab.Vocab
    train: TokenStream
    valid: np.ndarray             # (N_valid,) the held-out shard's ids (memory-mapped, compact dtype)

    @property
    def fingerprint(self) -> str:
        return data_fingerprint(self.index)


def data_fingerprint(index: dict) -> str:
    """SHA-256 over the vocabulary (and subword tokenizer) fingerprint and every shard's split, length and content
    hash."""
    tokenizer = index["vocab"].get("tokenizer_fingerprint")
    parts = [index["vocab"]["fingerprint"], *([tokenizer] if tokenizer else [])] + [
        f"{s['split']}:{s['file']}:{s['tokens']}:{s['sha256']}" for s in index["shards"]]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _check_shard(path: Path, entry: dict, dtype: np.dtype, hash_it: bool) -> np.ndarray:
    """The memory map of one shard, after checking it against its index entry."""
    name = path / entry["file"]
    if not name.is_file():
        raise DataError(f"{name}: shard missing (listed in {path / INDEX}); restore it or run `jaxseq prepare` "
                        "again")
    size = name.stat().st_size
    if size != entry["bytes"]:
        raise DataError(f"{name}: {size} bytes, the index says {entry['bytes']} (truncated or changed); restore "
                        "it or run `jaxseq prepare` again")
    try:
        array = np.load(name, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise DataError(f"{name}: not a readable .npy shard ({err}); run `jaxseq prepare` again") from None
    if array.dtype != dtype or array.shape != (entry["tokens"],):
        raise DataError(f"{name}: holds {array.dtype} {array.shape}, the index says {dtype} ({entry['tokens']},); "
                        "run `jaxseq prepare` again")
    if hash_it and file_sha256(name) != entry["sha256"]:
        raise DataError(f"{name}: contents changed since `jaxseq prepare` (SHA-256 differs from {path / INDEX}); "
                        "restore it or run `jaxseq prepare` again")
    return array


def open_prepared(path: str | os.PathLike, vocab=None, *, verify: bool | None = None) -> Prepared:
    """Open prepared directory ``path`` for training, checking it against its index (module docstring).

    ``vocab``: the run's saved vocabulary (on resume): refused unless it is the
    shards' vocabulary. ``verify``: hash every shard (default: only when the
    shards total at most :data:`HASH_ON_OPEN_BYTES`).
    """
    from jaxseq.data.vocab import Vocab

    path = Path(path)
    index = read_index(path)
    fingerprint = index["vocab"]["fingerprint"]
    saved = Vocab.load(path / VOCAB)
    if saved.fingerprint() != fingerprint:
        raise DataError(f"{path / VOCAB}: is not the vocabulary the shards were prepared with (fingerprint "
                        f"{saved.fingerprint()[:12]} vs {fingerprint[:12]} in {path / INDEX}); run `jaxseq prepare` "
                        "again")
    tokenizer = index["vocab"].get("tokenizer_fingerprint")
    if tokenizer != getattr(saved, "tokenizer_fingerprint", lambda: None)():
        raise DataError(f"{path / TOKENIZER}: is not the tokenizer the shards were prepared with (the index says "
                        f"{str(tokenizer)[:12]}); run `jaxseq prepare` again")
    for entry in index["shards"]:
        if entry.get("vocab") != fingerprint:
            raise DataError(f"{path / entry['file']}: prepared with another vocabulary ({str(entry.get('vocab'))[:12]} "
                            f"vs {fingerprint[:12]}); shards of different vocabularies cannot be mixed: prepare the "
                            "whole corpus into one directory")
    if vocab is not None and (vocab.fingerprint() != fingerprint or tokenizer != getattr(
            vocab, "tokenizer_fingerprint", lambda: None)()):
        raise DataError(f"{path}: shards prepared with vocabulary {fingerprint[:12]}, but the run's vocab.json is "
                        f"{vocab.fingerprint()[:12]}; train on shards prepared with the run's vocabulary, or start a "
                        "new --workdir")
    dtype = np.dtype(index["dtype"])
    if verify is None:
        verify = sum(s["bytes"] for s in index["shards"]) <= HASH_ON_OPEN_BYTES
    arrays = {s["file"]: _check_shard(path, s, dtype, verify) for s in index["shards"]}
    train = TokenStream([arrays[s["file"]] for s in index["shards"] if s["split"] == "train"])
    valid = [arrays[s["file"]].view(np.ndarray) for s in index["shards"] if s["split"] == "valid"]
    if len(valid) != 1:
        raise DataError(f"{path / INDEX}: lists {len(valid)} validation shards, not 1; run `jaxseq prepare` again")
    return Prepared(path=path, index=index, vocab=saved, train=train, valid=valid[0])


def tokenization(path: str | os.PathLike) -> dict[str, Any]:
    """The tokenization settings a prepared directory was made with (LMDataConfig fields by name)."""
    return dict(read_index(path)["tokenization"])
