"""Subword vocabularies (byte-level BPE and WordPiece), trained with Hugging Face ``tokenizers``.

A :class:`SubwordVocab` is a :class:`~jaxseq.data.vocab.Vocab` whose token
list is jaxseq's reserved tokens (``<pad> <bos> <eos> <unk>``, plus any a task
asks for, e.g. ``<cls> <sep> <mask>``) followed by the trained subwords in the
tokenizer's id order, so every model, loss and decoder works unchanged; text
goes through the Hugging Face tokenizer it carries.

Exact detokenization
    Both kinds pre-tokenize with GPT-2's byte-level rule (``ByteLevel``, no
    prefix space): the text's UTF-8 bytes are spelled with 256 printable
    characters and cut at word / number / punctuation / white-space
    boundaries, and the byte alphabet is always in the vocabulary, so no text
    is ever ``<unk>`` and ``decode_text(encode_text(t)) == t`` for every
    Unicode string ``t`` (white space, newlines and control characters
    included). WordPiece marks a piece that continues a word with
    :data:`CONTINUE` (``＃＃``, full-width, outside the byte alphabet, so a
    literal ``##`` in the text is never mistaken for it) and every
    ``CONTINUE + byte`` is added to its vocabulary, so every word can be cut.

Reserved token strings in the text
    A reserved token (``<eos>``) is never a subword: the byte-level rule cuts
    ``<``, ``eos`` and ``>`` apart, so text spelled like a reserved token is
    encoded as ordinary subwords and comes back unchanged; special ids come
    only from :attr:`Vocab.pad` / ``bos`` / ``eos``.

Lines
    :meth:`SubwordVocab.encode_text` encodes each line (newline kept) on its
    own and concatenates the ids, so a long text is encoded in parallel and
    the ids of a text are those of its lines.

Determinism: the same texts, kind, size and minimum frequency give the same
tokenizer (same JSON, same fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from jaxseq.data.vocab import DEFAULT_RESERVED, UNK, Vocab
from jaxseq.errors import ConfigError, DataError

SUBWORD_KINDS = ("bpe", "wordpiece")
CONTINUE = "\uff03\uff03"              # WordPiece's continuation mark (full-width ##)
_MAX_WORD = 1 << 30                     # WordPiece: never give up on a long word (it would become <unk>)


def _tokenizers():
    try:
        import tokenizers
    except ImportError:               # pragma: no cover - a declared dependency
        raise ConfigError("--tokens bpe/wordpiece needs the Hugging Face tokenizers package: "
                          "pip install 'tokenizers>=0.19'") from None
    return tokenizers


def tokenizer_file(vocab_file: str) -> str:
    """The tokenizer's file name beside a vocabulary file: ``vocab.json`` -> ``tokenizer.json``,
    ``src_vocab.json`` -> ``src_tokenizer.json``."""
    return vocab_file.replace("vocab", "tokenizer") if "vocab" in vocab_file else vocab_file + ".tokenizer.json"


def canonical_fingerprint(hf_json: str) -> str:
    """SHA-256 of a tokenizer's JSON with sorted keys (equal iff the tokenizers are equal)."""
    data = json.dumps(json.loads(hf_json), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def _chunks(texts: Iterable[str]) -> Iterable[str]:
    for text in texts:
        yield from text.splitlines(keepends=True)


def train_subword(texts: Iterable[str], kind: str, vocab_size: int, *, min_freq: int = 1,
                  reserved_tokens: Sequence[str] = DEFAULT_RESERVED) -> "SubwordVocab":
    """Train a ``kind`` (``bpe`` or ``wordpiece``) tokenizer of about ``vocab_size`` entries on ``texts``.

    ``vocab_size`` counts everything: the reserved tokens, the 256 bytes (and,
    for WordPiece, their continuation forms) and the learned merges; it is an
    upper bound (a small text runs out of merges first). Pairs seen fewer
    than ``min_freq`` times are not merged. A size too small to
    hold the byte alphabet is refused naming ``--vocab-size``.
    """
    tk = _tokenizers()
    if kind not in SUBWORD_KINDS:
        raise ConfigError(f"--tokens must be one of {', '.join(SUBWORD_KINDS)} for a subword vocabulary, got {kind!r}")
    reserved = list(dict.fromkeys(list(reserved_tokens) + ([UNK] if UNK not in reserved_tokens else [])))
    alphabet = sorted(tk.pre_tokenizers.ByteLevel.alphabet())
    floor = len(reserved) + len(alphabet) * (2 if kind == "wordpiece" else 1)
    if vocab_size < floor + 1:
        raise ConfigError(f"--vocab-size {vocab_size} is too small for --tokens {kind}: it must exceed {floor} "
                          f"(the {len(reserved)} reserved tokens and the byte alphabet); give a larger one")
    learned = vocab_size - len(reserved)
    hf = tk.Tokenizer(tk.models.BPE())
    if kind == "bpe":
        hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = tk.trainers.BpeTrainer(vocab_size=learned, min_frequency=min_freq, show_progress=False,
                                         initial_alphabet=alphabet, special_tokens=[])
        hf.train_from_iterator(_chunks(texts), trainer=trainer)
    else:
        pieces = _train_wordpiece(tk, texts, learned - 1, min_freq, alphabet)
        hf = tk.Tokenizer(tk.models.WordPiece({t: i for i, t in enumerate(pieces + [UNK])}, unk_token=UNK,
                                              continuing_subword_prefix=CONTINUE, max_input_chars_per_word=_MAX_WORD))
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = tk.decoders.ByteLevel()
    return SubwordVocab(reserved, hf)


def _train_wordpiece(tk, texts: Iterable[str], size: int, min_freq: int, alphabet: list[str]) -> list[str]:
    """WordPiece's vocabulary as Hugging Face's ``WordPieceTrainer`` learns it (BPE merges where a
    symbol inside a word is a continuation), but deterministic.

    That trainer numbers the continuation symbols in hash-map order, which
    breaks ties between equally frequent merges differently in every process.
    Here each byte symbol inside a word is spelled with its own private-use
    character (``U+F0000 + i``), so plain BPE (whose alphabet is sorted) learns
    the same kind of merges in a fixed order; the pieces are then spelled back
    (a piece inside a word gets :data:`CONTINUE`). Every byte is kept in both forms.
    """
    inner = {c: chr(0xF0000 + i) for i, c in enumerate(alphabet)}
    back = {v: k for k, v in inner.items()}
    pre = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)

    def marked() -> Iterable[str]:
        for line in _chunks(texts):
            yield " ".join(w[0] + "".join(inner[c] for c in w[1:]) for w, _ in pre.pre_tokenize_str(line) if w)

    bpe = tk.Tokenizer(tk.models.BPE())
    bpe.pre_tokenizer = tk.pre_tokenizers.WhitespaceSplit()
    trainer = tk.trainers.BpeTrainer(vocab_size=size, min_frequency=min_freq, show_progress=False,
                                     initial_alphabet=alphabet + list(inner.values()), special_tokens=[])
    bpe.train_from_iterator(marked(), trainer=trainer)
    vocab = bpe.get_vocab()

    def spelled(piece: str) -> str:
        head = CONTINUE + back[piece[0]] if piece[0] in back else piece[0]
        return head + "".join(back[c] for c in piece[1:])

    return [spelled(t) for t in sorted(vocab, key=vocab.__getitem__)]


class SubwordVocab(Vocab):
    """A vocabulary of reserved tokens and trained subwords, with the tokenizer that cuts text into them.

    ``idx_to_token`` is ``reserved + subwords`` (subwords in the tokenizer's
    id order); ``encode_text`` / ``decode_text`` go through the tokenizer.
    """

    def __init__(self, reserved: Sequence[str], hf):
        self.hf = hf
        self.kind = "wordpiece" if type(hf.model).__name__ == "WordPiece" else "bpe"
        vocab = hf.get_vocab()
        hf_tokens = sorted(vocab, key=vocab.__getitem__)
        if [vocab[t] for t in hf_tokens] != list(range(len(hf_tokens))):
            raise DataError("the subword tokenizer's ids are not 0..n-1; it was not written by jaxseq")
        reserved = list(reserved)
        super().__init__(reserved + [t for t in hf_tokens if t not in reserved])
        self.reserved = reserved
        self.hf_json = hf.to_str()
        # hf id -> jaxseq id (a reserved string in the tokenizer's vocabulary, WordPiece's <unk>, maps to ours)
        self._to_id = np.array([self.token_to_idx[t] for t in hf_tokens], np.int32)
        self._to_hf = np.full(len(self), -1, np.int64)
        self._to_hf[self._to_id] = np.arange(len(hf_tokens))
        self._byte_decoder = _tokenizers().decoders.ByteLevel()

    # -- text <-> ids ----------------------------------------------------------------------
    def encode_text(self, text: str) -> np.ndarray:
        """``int32`` ids of ``text`` (each line encoded on its own, newlines kept; never ``<unk>``)."""
        lines = text.splitlines(keepends=True)
        if not lines:
            return np.zeros(0, np.int32)
        encodings = self.hf.encode_batch(lines, add_special_tokens=False)
        hf_ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64)
        return self._to_id[hf_ids] if hf_ids.size else np.zeros(0, np.int32)

    def encode_sentences(self, sentences: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, lengths)``: the ids of every sentence (its words joined by single spaces) end to end,
        and each sentence's count; equal to :meth:`encode_text` of each, only faster.

        The byte-level rule never cuts across a single space before a word
        (the space starts the word's first piece) and words hold no white
        space, so a sentence's ids are those of its first word followed by
        those of `` " " + word`` for each next word: each distinct word is
        encoded once (a corpus has far fewer words than sentences).
        """
        firsts = {s[0] for s in sentences if len(s)}
        keys = sorted(firsts) + sorted({" " + w for s in sentences for w in s[1:]})
        table = dict(zip(keys, (e.ids for e in self.hf.encode_batch(keys, add_special_tokens=False))))
        per = [[table[s[0]], *(table[" " + w] for w in s[1:])] if len(s) else [] for s in sentences]
        lengths = np.fromiter((sum(map(len, parts)) for parts in per), dtype=np.int64, count=len(per))
        flat = np.fromiter((i for parts in per for part in parts for i in part), dtype=np.int64,
                           count=int(lengths.sum()))
        return self._to_id[flat] if flat.size else np.zeros(0, np.int32), lengths

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The byte-level pieces of subword ids (reserved ids skipped), continuation marks removed."""
        table, hf = self._to_hf, self.idx_to_token
        out = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if table[i] < 0:
                continue
            piece = hf[i]
            out.append(piece[len(CONTINUE):] if piece.startswith(CONTINUE) else piece)
        return out

    def decode_text(self, ids: Iterable[int]) -> str:
        """The text of subword ids (reserved ids, such as ``<bos>``, spell nothing); a byte sequence
        that is not UTF-8 (a sampled id cut inside a character) becomes U+FFFD."""
        pieces = self.pieces(ids)
        return self._byte_decoder.decode(["".join(pieces)]) if pieces else ""

    # -- the Vocab interface for code that hands over words --------------------------------
    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        """Ids of the words ``tokens`` joined by single spaces (how the word path writes a sentence)."""
        return self.encode_text(" ".join(tokens))

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Each id's own text (for labels: a piece holding part of a character shows U+FFFD)."""
        out = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            out.append(self.idx_to_token[i] if self._to_hf[i] < 0 else self.decode_text([i]))
        return out

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        """Nothing: byte-level subwords spell every text."""
        return []

    # -- identity and files ----------------------------------------------------------------
    def tokenizer_fingerprint(self) -> str:
        return canonical_fingerprint(self.hf_json)

    def fingerprints(self, name: str) -> dict[str, str]:
        return {name: self.fingerprint(), tokenizer_file(name): self.tokenizer_fingerprint()}

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, SubwordVocab) and self.idx_to_token == other.idx_to_token
                and self.tokenizer_fingerprint() == other.tokenizer_fingerprint())

    def __repr__(self) -> str:
        return f"SubwordVocab({self.kind}, size={len(self)}, fingerprint={self.fingerprint()[:12]})"

    def to_json(self) -> dict:
        return {**super().to_json(), "reserved": self.reserved, "subword": self.kind,
                "tokenizer_fingerprint": self.tokenizer_fingerprint()}

    def save(self, path: str | os.PathLike) -> None:
        """``path`` (the token list) and the Hugging Face tokenizer JSON beside it (:func:`tokenizer_file`)."""
        path = Path(path)
        path.with_name(tokenizer_file(path.name)).write_text(self.hf_json, encoding="utf-8")
        super().save(path)

    @classmethod
    def from_saved(cls, path: str | os.PathLike, data: dict) -> "SubwordVocab":
        """The vocabulary whose ``vocab.json`` content is ``data`` and whose tokenizer lies beside ``path``."""
        from jaxseq.data.text import read_text
        path = Path(path)
        tok_path = path.with_name(tokenizer_file(path.name))
        if not tok_path.exists():
            raise DataError(f"{tok_path}: missing; {path} is a {data.get('subword')} vocabulary and needs its "
                            "tokenizer beside it")
        text = read_text(tok_path)
        try:
            hf = _tokenizers().Tokenizer.from_str(text)
        except Exception as err:               # the library raises a bare Exception on a bad file
            raise DataError(f"{tok_path}: not a Hugging Face tokenizer file ({str(err).splitlines()[0]})") from None
        if data.get("tokenizer_fingerprint") not in (None, canonical_fingerprint(text)):
            raise DataError(f"{tok_path}: its fingerprint does not match {path}; the file was edited or replaced")
        vocab = cls(data.get("reserved", []), hf)
        if vocab.idx_to_token != list(data.get("tokens", [])):
            raise DataError(f"{tok_path}: its subwords differ from the tokens of {path}; the files do not belong "
                            "together")
        return vocab
