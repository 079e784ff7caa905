"""Labelled texts for classification: ``label<TAB>text`` or ``label<TAB>a<TAB>b`` lines, and a built-in task.

A file is read strictly (:func:`jaxseq.data.text.read_text`) and every line
must have the same form: a line without a tab, with more than three fields,
with an empty field, or with a different number of fields than the first
line stops reading with a DataError naming the file and the line (blank
lines are skipped).

``builtin`` (no download) is generated from the built-in corpus (the Python
language reference): sentences of 6 to 30 words, each either as written
(label ``ordered``) or with its words shuffled (label ``shuffled``), one
half each, in an order fixed by the seed. Bag-of-words features cannot
separate the classes, word order can: a model that learned the language
(a pretrained encoder) has a head start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jaxseq.data.text import read_text
from jaxseq.errors import DataError

BUILTIN_SIZE = 2000
_FORMS = "label<TAB>text or label<TAB>text_a<TAB>text_b"


@dataclass
class Example:
    """One labelled text (``b`` is None for a single text) and where it came from."""

    label: str
    a: str
    b: str | None
    line: int


def parse_labelled(text: str, source: str) -> list[Example]:
    """The examples of a TSV text (module docstring); bad lines are one-line DataErrors."""
    out: list[Example] = []
    fields_seen: tuple[int, int] | None = None          # (fields, line) of the first line
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(f"{source}:{number}: no tab; each line must be {_FORMS}")
        if len(fields) > 3:
            raise DataError(f"{source}:{number}: {len(fields)} tab-separated fields; each line must be {_FORMS}")
        empty = [i for i, f in enumerate(fields) if not f.strip()]
        if empty:
            what = ("label", "text", "second text")[empty[0]]
            raise DataError(f"{source}:{number}: empty {what}; each line must be {_FORMS}")
        if fields_seen is None:
            fields_seen = (len(fields), number)
        elif len(fields) != fields_seen[0]:
            raise DataError(f"{source}:{number}: {len(fields)} fields, but line {fields_seen[1]} has "
                            f"{fields_seen[0]}; give single texts or pairs, not both")
        out.append(Example(fields[0].strip(), fields[1].strip(), fields[2].strip() if len(fields) == 3 else None,
                           number))
    if not out:
        raise DataError(f"{source}: no labelled lines; each line must be {_FORMS}")
    return out


def read_labelled(path: str) -> list[Example]:
    return parse_labelled(read_text(path), str(path))


def builtin_examples(seed: int = 0, size: int = BUILTIN_SIZE) -> list[Example]:
    """The built-in word-order task (module docstring): ``size`` examples, half ``ordered``, half ``shuffled``."""
    from jaxseq.data import corpora
    from jaxseq.data.mlm import split_sentences
    from jaxseq.data.text import preprocess

    sentences = [preprocess(s, "d2l").split() for para in split_sentences(corpora.builtin_text(), "punct")
                 for s in para]
    return word_order_examples(sentences, seed, size)


def word_order_examples(sentences: list[list[str]], seed: int = 0, size: int = BUILTIN_SIZE, *,
                        min_words: int = 6, max_words: int = 30) -> list[Example]:
    """The word-order task on any sentences (lists of words): of those with ``min_words..max_words`` words and
    more than two distinct ones, ``size`` in an order fixed by ``seed``; every second one with its words
    shuffled (label ``shuffled``, never the identity), the others as written (``ordered``)."""
    kept = [words for words in sentences if min_words <= len(words) <= max_words and len(set(words)) > 2]
    rng = np.random.default_rng([seed, 7])
    order = rng.permutation(len(kept))[:size]
    out = []
    for i, k in enumerate(order.tolist()):
        words = list(kept[k])
        label = "ordered"
        if i % 2:
            label = "shuffled"
            while True:
                perm = rng.permutation(len(words))
                if (perm != np.arange(len(words))).any() and [words[j] for j in perm] != words:
                    break
            words = [words[j] for j in perm]
        out.append(Example(label, " ".join(words), None, i + 1))
    return out
