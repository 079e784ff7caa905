"""Built-in corpora (no download) and a registry of public datasets.

``builtin``
    The English text of the Python language reference that every CPython
    ships in ``pydoc_data.topics`` (about 465k characters on CPython 3.11;
    the exact text, hence any perplexity on it, depends on the Python
    version). It is the default language-model corpus.

Registered datasets are fetched on demand into ``$JAXSEQ_DATA`` (default
``~/.cache/jaxseq``) and checked against a SHA-1 or SHA-256 digest. A
download goes to a temporary file in the cache directory and is renamed into
place only after its checksum matched, so a failed or corrupt download never
leaves a partial file behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from jaxseq.data.text import decode_utf8, read_text
from jaxseq.errors import DataError, FetchError

D2L_URL = "http://d2l-data.s3-accelerate.amazonaws.com/"


@dataclass(frozen=True)
class Dataset:
    """A public dataset: where it lives, its digest, and the text file inside."""

    name: str
    url: str
    digest: str              # "sha1:<hex>" or "sha256:<hex>" of the downloaded file
    filename: str            # name of the downloaded file in the cache
    member: str | None       # for archives: the text file inside
    kind: str                # "text" (a language-model corpus) or "pairs" (TSV sentence pairs)
    description: str


REGISTRY: dict[str, Dataset] = {d.name: d for d in [
    Dataset("timemachine", D2L_URL + "timemachine.txt", "sha1:090b5e7e70c295757f55df93cb0a180b9691891a",
            "timemachine.txt", None, "text",
            "H. G. Wells, The Time Machine (D2L's copy, about 180k characters)"),
    Dataset("fra-eng", D2L_URL + "fra-eng.zip", "sha1:94646ad1522d915e7b0f9296181140edcf86a4f5",
            "fra-eng.zip", "fra-eng/fra.txt", "pairs",
            "English-French sentence pairs from Tatoeba via manythings.org (D2L's copy)"),
    Dataset("tinyshakespeare",
            "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            "sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            "tinyshakespeare.txt", None, "text",
            "Shakespeare's plays as one file (char-rnn's tinyshakespeare, 1,115,394 characters)"),
]}


def generated_tasks() -> dict[str, str]:
    """Built-in generated translation tasks: name -> description."""
    from jaxseq.data import dates
    return {"dates": dates.DESCRIPTION}


def builtin_text() -> str:
    """The Python language reference's topics, joined in sorted topic order."""
    from pydoc_data.topics import topics
    return "\n".join(topics[key] for key in sorted(topics))


def cache_dir() -> Path:
    return Path(os.environ.get("JAXSEQ_DATA") or Path.home() / ".cache" / "jaxseq")


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_digest(path: Path, digest: str) -> str | None:
    """None if ``path`` matches ``digest``, else the actual digest."""
    algorithm, expected = digest.split(":", 1)
    actual = _file_digest(path, algorithm)
    return None if actual == expected else actual


def dataset_path(name: str) -> Path:
    """Where ``name``'s text file lies once fetched."""
    d = _lookup(name)
    return cache_dir() / d.name / (d.member.split("/")[-1] if d.member else d.filename)


def _lookup(name: str) -> Dataset:
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def fetch(name: str, *, url: str | None = None, force: bool = False, timeout: float = 60.0) -> Path:
    """Download ``name`` into the cache (unless there already), verify it, return the text file.

    ``url`` overrides the registered address (a mirror, or a local server in
    tests); the checksum is the registered one either way.
    """
    d = _lookup(name)
    target = dataset_path(name)
    if target.exists() and not force:
        return target
    folder = cache_dir() / d.name
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{d.filename}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url or d.url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise FetchError(f"{name}: download from {url or d.url} failed ({reason}); check the network "
                             f"or put the file at {target} yourself") from None
        bad = _check_digest(tmp, d.digest)
        if bad is not None:
            raise FetchError(f"{name}: checksum mismatch for {url or d.url} (expected {d.digest}, got "
                             f"{d.digest.split(':')[0]}:{bad}); the download is corrupt or the file changed")
        if d.member:
            try:
                with zipfile.ZipFile(tmp) as z, z.open(d.member) as src:
                    data = src.read()
            except (zipfile.BadZipFile, KeyError) as err:
                raise FetchError(f"{name}: archive does not hold {d.member} ({err})") from None
            decode_utf8(data, f"{name}:{d.member}")
            part = target.with_name(target.name + ".part")
            part.write_bytes(data)
            os.replace(part, target)
        else:
            os.replace(tmp, target)
        return target
    finally:
        tmp.unlink(missing_ok=True)


def load_text(spec: str) -> tuple[str, str]:
    """``(text, source)`` for ``builtin``, a registered dataset name, or a file path."""
    if spec == "builtin":
        return builtin_text(), "builtin"
    if spec in REGISTRY and not Path(spec).exists():
        path = fetch(spec)
        return read_text(path), spec
    return read_text(spec), spec


def resolve_path(spec: str) -> Path:
    """A file path for a registered dataset name (fetched if needed) or a path."""
    if spec in REGISTRY and not Path(spec).exists():
        return fetch(spec)
    return Path(spec)
