"""`jaxseq prepare`: tokenize a corpus once, streaming, into token shards on disk (:mod:`jaxseq.data.shards`).

The corpus is a file, a directory (every file under it, hidden ones skipped,
in sorted path order) or a glob. Each file is cut into *chunks* of about
``--chunk-bytes`` that end just after a newline (with ``--preprocess d2l``:
a newline followed by an ASCII letter, so no run of non-letters spans two
chunks), so tokenizing the chunks one by one gives exactly the tokens of the
whole file; a line longer than a chunk makes that chunk longer. The chunk
plan depends only on the files and ``--chunk-bytes``, never on the number of
workers, and results are consumed in chunk order: the shards are the same
bytes whatever ``--workers``.

Three passes over the chunks, each in ``--workers`` processes (``spawn``:
safe beside JAX's threads), each holding at most ``2 x workers`` chunks in
flight, so memory is bounded by the chunk size and the vocabulary, not by the
corpus:

1. count: tokens per chunk and token counts, merged in chunk order;
2. the validation tail (the last ``--valid-fraction`` of the token stream,
   as `train lm` splits a file in memory) is counted again and subtracted,
   so the vocabulary is built on the training part only, exactly as in
   memory (:meth:`Vocab.from_counts`);
3. encode: ids in the compact dtype, written in order into ``train-NNNNN.npy``
   shards of ``--shard-tokens`` ids and ``valid.npy``, hashed as they are
   written.

For one file the shards' stream is exactly the ids ``load_corpus`` gives
(tests pin it); for several files, those of the files' texts concatenated.
UTF-8 is checked per chunk and a bad byte names its file, line and offset.

Subword tokens (``--tokens bpe|wordpiece``, :mod:`jaxseq.data.prepare_subword`) split as
`train lm` does in memory: the last ``--valid-fraction`` of the *characters*
is validation, and the tokenizer (:func:`jaxseq.data.subword.train_subword`,
Hugging Face's ``train_from_iterator``) is trained on an iterator over the
training pieces only, read by the workers, so memory stays bounded. Chunk
cuts are safe for the byte-level pre-tokenizer (``piece_text``); each
chunk is encoded in the workers with the ``tokenizer.json`` saved beside
``vocab.json``, twice (once to count the ids, so the shard lengths are known,
once to write them). The index records the tokenizer's file and fingerprint.
"""

from __future__ import annotations

import collections
import glob as glob_lib
import json
import multiprocessing
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from jaxseq.config import Config, option, to_dict
from jaxseq.data import shards
from jaxseq.data.lm import LMDataConfig, tokens_from_config
from jaxseq.data import text as text_lib
from jaxseq.data import tokens as tokens_lib
from jaxseq.data.vocab import (RESERVED_STRINGS, UNK, Vocab, count_reserved, require_real_tokens,
                               reserved_warning)
from jaxseq.errors import ConfigError, DataError

BLOCK = 1 << 16


@dataclass(frozen=True)
class PrepareConfig(Config):
    """How `jaxseq prepare` works (not what it produces, except the shard size)."""

    workers: int = option(0, "processes that tokenize (0: one per CPU core); the shards are the same "
                          "whatever the number", minimum=0)
    shard_tokens: int = option(1 << 26, "token ids per training shard", minimum=1)
    chunk_bytes: int = option(1 << 22, "bytes of text per unit of work (cut after a newline); bounds the "
                              "memory of each worker", minimum=1)


@dataclass(frozen=True)
class Chunk:
    """Bytes ``[start, end)`` of file ``path``."""

    path: str
    start: int
    end: int


# -- the corpus and its chunks -------------------------------------------------------------------

def corpus_files(spec: str) -> list[Path]:
    """The files of a corpus given as a file, a directory or a glob (sorted; a one-line error if none)."""
    from jaxseq.data import corpora
    if spec in corpora.REGISTRY and not Path(spec).exists():
        return [corpora.fetch(spec)]
    p = Path(spec)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise DataError(f"{spec}: directory holds no files; give a text file, a directory of them or a glob")
        return files
    if any(c in spec for c in "*?["):
        files = sorted(Path(f) for f in glob_lib.glob(spec, recursive=True) if Path(f).is_file())
        if not files:
            raise DataError(f"{spec}: the pattern matches no file")
        return files
    raise DataError(f"{spec}: no such file, directory or glob match; check the path")


def _next_cut(f, pos: int, size: int, letter_after: bool) -> int:
    """The first cut point at or after ``pos``: just after a newline (followed by an ASCII letter if asked)."""
    f.seek(pos)
    buf, base = f.read(BLOCK), pos
    i = 0
    while buf:
        i = buf.find(b"\n", i)
        if i < 0:
            base, buf, i = base + len(buf), f.read(BLOCK), 0
            continue
        if not letter_after:
            return base + i + 1
        if i + 1 == len(buf):                    # the next byte is in the next block
            more = f.read(BLOCK)
            if not more:
                return size
            buf, base, i = buf[i:] + more, base + i, 0
            continue
        if chr(buf[i + 1]).isascii() and chr(buf[i + 1]).isalpha():
            return base + i + 1
        i += 1
    return size


def plan_chunks(files: Sequence[Path], chunk_bytes: int, preprocess: str) -> list[Chunk]:
    """Cut every file into chunks of about ``chunk_bytes`` at safe points (module docstring)."""
    out = []
    for path in files:
        try:
            size = path.stat().st_size
            if size == 0:
                raise DataError(f"{path}: is empty; give a file with some text in it (or remove it from the corpus)")
            with open(path, "rb") as f:
                start = 0
                while start < size:
                    end = size if start + chunk_bytes >= size else _next_cut(f, start + chunk_bytes, size,
                                                                            preprocess == "d2l")
                    out.append(Chunk(str(path), start, end))
                    start = end
        except OSError as err:
            raise DataError(f"{path}: cannot be read ({err.strerror})") from None
    return out


def read_chunk(chunk: Chunk) -> str:
    """The text of a chunk: strict UTF-8, a leading BOM of the file dropped; bad bytes named by file line."""
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        data = f.read(chunk.end - chunk.start)
    skip = 3 if chunk.start == 0 and data.startswith(b"\xef\xbb\xbf") else 0
    data = data[skip:]
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{chunk.path}: looks binary (NUL byte at offset {chunk.start + skip + nul}); "
                        "give a UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = chunk.start + skip + err.start
        raise DataError(f"{chunk.path}:{_line_of(chunk.path, offset)}: not valid UTF-8 at byte offset {offset} "
                        f"(byte 0x{data[err.start]:02x}); convert the file to UTF-8") from None


def _line_of(path: str, offset: int) -> int:
    """The 1-based line of byte ``offset`` in ``path`` (streamed: only on the error path)."""
    line, done = 1, 0
    with open(path, "rb") as f:
        while done < offset:
            block = f.read(min(BLOCK, offset - done))
            if not block:
                break
            line += block.count(b"\n")
            done += len(block)
    return line


# -- the work of one chunk (in a worker process) -------------------------------------------------

_CONFIG: LMDataConfig | None = None
_VOCAB: Vocab | None = None
_VOCAB_PATH: str | None = None
_CHAR_TABLE: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.uint32), np.zeros(0, np.int32))


def _init(config: LMDataConfig) -> None:
    global _CONFIG, _VOCAB, _VOCAB_PATH
    _CONFIG, _VOCAB, _VOCAB_PATH = config, None, None


def _use_vocab(path: str) -> None:
    """Load the vocabulary pass 3 encodes with (written by the main process before it starts), once per worker."""
    global _VOCAB, _VOCAB_PATH, _CHAR_TABLE
    if _VOCAB_PATH == path:
        return
    _VOCAB, _VOCAB_PATH = Vocab.load(path), path
    # the one-character text tokens by code point, sorted, and their ids
    chars = sorted((ord(t), i) for t, i in _VOCAB.text_to_idx.items() if len(t) == 1)
    _CHAR_TABLE = (np.array([c for c, _ in chars] or [0], np.uint32),
                   np.array([i for _, i in chars] or [_VOCAB.unk], np.int32))


def _tokens(chunk: Chunk) -> tuple[list[str], str]:
    text = read_chunk(chunk)
    return tokens_from_config(_CONFIG, text), text


def _code_points(chunk: Chunk) -> tuple[np.ndarray, str]:
    """Character tokens as code points: ``list(text)`` is ``map(chr, code points)``, one to one, so
    counting and encoding them with NumPy gives exactly the ids of the token path, ~20x faster."""
    text = read_chunk(chunk)
    prepared = text_lib.preprocess(text, _CONFIG.preprocess)
    return np.frombuffer(prepared.encode("utf-32-le"), np.uint32), text


def _count(chunk: Chunk) -> tuple[int, collections.Counter, collections.Counter, bool]:
    """``(tokens, counts, reserved-string counts, has non-space text)`` of a chunk."""
    if _CONFIG.tokens == "char":            # no character is spelled like a reserved token (<unk> ...)
        points, text = _code_points(chunk)
        values, counts = np.unique(points, return_counts=True)
        return len(points), collections.Counter(dict(zip(map(chr, values.tolist()), counts.tolist()))), \
            collections.Counter(), bool(text.strip())
    tokens, text = _tokens(chunk)
    reserved = count_reserved(tokens) if any(r in text for r in RESERVED_STRINGS) else collections.Counter()
    return len(tokens), collections.Counter(tokens), reserved, bool(text.strip())


def _count_tail(job: tuple[Chunk, int]) -> collections.Counter:
    """Counts of a chunk's tokens from position ``skip`` on (the validation part)."""
    chunk, skip = job
    if _CONFIG.tokens == "char":
        values, counts = np.unique(_code_points(chunk)[0][skip:], return_counts=True)
        return collections.Counter(dict(zip(map(chr, values.tolist()), counts.tolist())))
    return collections.Counter(_tokens(chunk)[0][skip:])


def _encode(job: tuple[Chunk, str]) -> np.ndarray:
    chunk, vocab_path = job
    _use_vocab(vocab_path)
    if _CONFIG.tokens == "char":
        points = _code_points(chunk)[0]
        keys, ids = _CHAR_TABLE
        at = np.minimum(np.searchsorted(keys, points), len(keys) - 1)
        return np.where(keys[at] == points, ids[at], _VOCAB.unk).astype(np.int32)
    return _VOCAB.encode(_tokens(chunk)[0])


def _mapped(fn: Callable, jobs: Sequence, pool, workers: int) -> Iterator:
    """``fn`` over ``jobs`` in order, in ``pool`` (or here), at most ``2 x workers`` results in flight."""
    if pool is None:
        yield from map(fn, jobs)
        return
    window = 2 * workers
    for i in range(0, len(jobs), window):
        yield from pool.map(fn, jobs[i: i + window], chunksize=1)


def _pool(workers: int, config: LMDataConfig):
    if workers <= 1:
        _init(config)
        return None
    return multiprocessing.get_context("spawn").Pool(workers, initializer=_init, initargs=(config,))


# -- the three passes ----------------------------------------------------------------------------

def prepare(corpus: str, out: str | os.PathLike, config: LMDataConfig | None = None,
            options: PrepareConfig | None = None, *, echo: Callable[[str], None] = print) -> dict:
    """Tokenize ``corpus`` into shards in ``out`` (module docstring); returns the index.

    ``config``: the tokenization settings (the fields of `train lm`'s data
    section other than :data:`shards.TRAINING_ONLY`); ``options``: workers,
    shard and chunk sizes.
    """
    config = config or LMDataConfig()
    options = options or PrepareConfig()
    config.validate()
    options.validate()
    t0 = time.perf_counter()
    out = Path(out)
    inside = out.resolve()
    files = [f for f in corpus_files(corpus) if inside not in f.resolve().parents]    # never its own shards
    if not files:
        raise DataError(f"{corpus}: holds no files besides --out {out}; give the corpus")
    _claim(out)
    chunks = plan_chunks(files, options.chunk_bytes, config.preprocess)
    total_bytes = sum(f.stat().st_size for f in files)
    workers = options.workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(chunks)))

    pool = _pool(workers, config)
    try:
        if tokens_lib.is_subword(config.tokens):
            from jaxseq.data.prepare_subword import subword_passes
            vocab, dtype, n_train, n_valid, entries = subword_passes(corpus, out, config, options, chunks, files,
                                                                      pool, workers)
        else:
            vocab, dtype, n_train, n_valid, entries = _plain_passes(corpus, out, config, options, chunks, files,
                                                                    pool, workers)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    seconds = time.perf_counter() - t0
    index = {"format": shards.FORMAT, "version": shards.VERSION,
             "sources": [str(f.resolve()) for f in files], "source_bytes": total_bytes,
             "tokenization": {k: v for k, v in to_dict(config).items() if k not in shards.TRAINING_ONLY},
             "vocab": {"file": shards.VOCAB, "size": len(vocab), "fingerprint": vocab.fingerprint(),
                       **_tokenizer_entry(vocab)},
             "dtype": dtype.name, "tokens": {"train": n_train, "valid": n_valid},
             "valid_shard": shards.VALID, "shards": entries,
             "prepare": {"chunk_bytes": options.chunk_bytes, "shard_tokens": options.shard_tokens,
                         "chunks": len(chunks)}}
    tmp = out / (shards.INDEX + ".part")
    tmp.write_text(json.dumps(index, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out / shards.INDEX)
    n_shards = sum(e["split"] == "train" for e in entries)
    echo(f"prepared {len(files)} file(s), {total_bytes / 1e6:.2f} MB, into {out}: {n_train:,} training tokens in "
         f"{n_shards} shard(s) and {n_valid:,} validation tokens ({shards.VALID}), {dtype.name}, vocabulary "
         f"{len(vocab):,}; {seconds:.2f}s ({total_bytes / 1e6 / max(seconds, 1e-9):.2f} MB/s, {workers} worker(s))")
    return index


def _plain_passes(corpus: str, out: Path, config: LMDataConfig, options: PrepareConfig, chunks: list[Chunk],
                  files: list[Path], pool, workers: int) -> tuple[Vocab, np.dtype, int, int, list[dict]]:
    """The three passes of char/word tokens (module docstring): ``(vocab, dtype, n_train, n_valid, entries)``."""
    from jaxseq.data.text import warn

    # pass 1: count
    sizes, counts = [], collections.Counter()
    reserved: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    has_text: dict[str, bool] = collections.defaultdict(bool)
    for chunk, (n, c, r, text) in zip(chunks, _mapped(_count, chunks, pool, workers)):
        sizes.append(n)
        counts.update(c)
        reserved[chunk.path].update(r)
        has_text[chunk.path] |= text
    for path in map(str, files):
        if not has_text[path]:
            raise DataError(f"{path}: is empty; give a file with some text in it (or remove it from the corpus)")
        message = reserved_warning(reserved[path], path)
        if message:
            warn(message)
    n_total = sum(sizes)
    if n_total < 4:
        raise DataError(f"{corpus}: only {n_total} tokens after preprocessing; give more text")
    n_valid = int(round(n_total * config.valid_fraction))
    n_train = n_total - n_valid
    if n_valid < 2:
        raise DataError(f"{corpus}: the validation split would hold {n_valid} token(s) of {n_total}; raise "
                        "--valid-fraction or give more text")
    # pass 2: the validation tail's counts, subtracted
    starts = np.concatenate([[0], np.cumsum(sizes)])
    tail = [(chunk, max(0, n_train - int(s))) for chunk, s, e in zip(chunks, starts[:-1], starts[1:])
            if e > n_train]
    for c in _mapped(_count_tail, tail, pool, workers):
        counts.subtract(c)
    counts = +counts
    vocab = Vocab.from_counts(counts, min_freq=config.min_freq, reserved_tokens=(UNK,))
    require_real_tokens(vocab, counts.elements(), min_freq=config.min_freq, source=corpus, what="token",
                        of="the training text")
    dtype = shards.compact_dtype(len(vocab))
    vocab.save(out / shards.VOCAB)                # the workers read it from there

    # pass 3: encode and write
    sink = _Sink(out, dtype, n_train, n_valid, options.shard_tokens, vocab.fingerprint())
    vocab_path = str((out / shards.VOCAB).resolve())
    for ids in _mapped(_encode, [(chunk, vocab_path) for chunk in chunks], pool, workers):
        sink.write(ids)
    return vocab, dtype, n_train, n_valid, sink.close()


def _tokenizer_entry(vocab: Vocab) -> dict[str, str]:
    """What the index records of a subword vocabulary's tokenizer (nothing for char/word)."""
    if not hasattr(vocab, "tokenizer_fingerprint"):
        return {}
    return {"subword": vocab.kind, "tokenizer": shards.TOKENIZER,
            "tokenizer_fingerprint": vocab.tokenizer_fingerprint()}


def _claim(out: Path) -> None:
    """Make ``out`` a shard directory: new, empty, or an earlier `jaxseq prepare` output (whose files go)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; give --out a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not (out / shards.MARKER).exists():
        raise DataError(f"{out}: not empty and not written by `jaxseq prepare`; give --out a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / shards.MARKER).write_text("jaxseq prepare writes here\n")
    (out / shards.INDEX).unlink(missing_ok=True)          # first: a half-written directory has no index
    for old in list(out.glob("train-*.npy")) + [out / shards.VALID, out / shards.VOCAB, out / shards.TOKENIZER]:
        old.unlink(missing_ok=True)


class _Sink:
    """Distributes the ids of consecutive chunks over the training shards and the validation shard."""

    def __init__(self, out: Path, dtype: np.dtype, n_train: int, n_valid: int, shard_tokens: int, vocab: str):
        self.out, self.dtype, self.n_train, self.shard_tokens, self.vocab = out, dtype, n_train, shard_tokens, vocab
        self.lengths = [min(shard_tokens, n_train - s) for s in range(0, n_train, shard_tokens)]
        self.n_valid, self.pos, self.k, self.writer, self.entries = n_valid, 0, -1, None, []

    def _finish(self, split: str) -> None:
        if self.writer is not None:
            self.entries.append({**self.writer.close(), "split": split, "vocab": self.vocab})
            self.writer = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.pos < self.n_train:
                shard_end = min((self.pos // self.shard_tokens + 1) * self.shard_tokens, self.n_train)
                if self.writer is None:
                    self.k += 1
                    self.writer = shards.ShardWriter(self.out / shards.shard_name(self.k), self.dtype,
                                                     self.lengths[self.k])
                take = min(len(ids), shard_end - self.pos)
                self.writer.write(ids[:take])
                self.pos += take
                ids = ids[take:]
                if self.pos == shard_end:
                    self._finish("train")
            else:
                if self.writer is None:
                    self.writer = shards.ShardWriter(self.out / shards.VALID, self.dtype, self.n_valid)
                self.writer.write(ids)
                self.pos += len(ids)
                ids = ids[:0]

    def close(self) -> list[dict]:
        self._finish("valid")
        return self.entries


def verify(path: str | os.PathLike, echo: Callable[[str], None] = print) -> dict:
    """Check every shard of a prepared directory against its index, hashing every byte."""
    t0 = time.perf_counter()
    opened = shards.open_prepared(path, verify=True)
    total = sum(s["bytes"] for s in opened.index["shards"])
    echo(f"{path}: {len(opened.index['shards'])} shard(s), {total / 1e6:.2f} MB, match {shards.INDEX} "
         f"({time.perf_counter() - t0:.2f}s)")
    return opened.index


def data_config(given: dict[str, Any]) -> LMDataConfig:
    """The tokenization settings of `jaxseq prepare` from its flags by field name."""
    names = {f.name for f in fields(LMDataConfig)} - set(shards.TRAINING_ONLY)
    strange = sorted(set(given) - names)
    if strange:
        raise ConfigError(f"`jaxseq prepare` does not take {', '.join(strange)}")
    return LMDataConfig(**given)
