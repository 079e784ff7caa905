"""The built-in ``dates`` task: a date written out in one language -> another.

Each pair is one random calendar day, written by Babel's CLDR data
(:func:`babel.dates.format_date`) in a source locale and format and in a
target locale and format, lowercased and cut into tokens::

    friday , november 2 7 , 2 0 2 6    ->    vendredi 2 7 novembre 2 0 2 6

Why this is a good first translation task for a small GRU encoder-decoder
(a few minutes on 2 CPU cores):

* **It needs alignment.** English writes "month day, year", French (German,
  Spanish, Italian, ...) "day month year", so the decoder cannot just emit the
  source in order: it must look back at the day while writing it before the
  month. Attention shows this as an off-diagonal block in its heatmap.
* **Numbers are written digit by digit** (``numbers="digits"``, the default).
  Whole numbers as tokens would make every day (31) and year (200) its own
  word, each year seen only ~80 times in 16k training pairs, and
  "translating" a year would be a table lookup. As digits the vocabulary
  stays tiny (10 digits, 7 weekdays, 12 months, a comma: 30 words a side plus
  the 4 reserved ones) and the model must *copy* each digit from the right
  source position, in a different order from the month name: an exact test
  of alignment, scored without ambiguity (a date is right or wrong).
  ``numbers="whole"`` is there for comparison.
* **Sequences are short**: ``full`` English is 9-10 tokens (10-11 with
  ``<eos>``), French 7-8, so ``max_len=16`` holds every pair.
* **It is learnable in a minute, and attention visibly helps.** Measured on
  the 2-core CPU with a throwaway Flax GRU encoder-decoder (embedding 64,
  hidden 128, Adam 3e-3, batches of 64, 16k training pairs; exact-match
  accuracy of greedy decoding on the 2k validation dates):

  ======================  =====  =====  =====  =====
  steps                    100    150    200    300
  ======================  =====  =====  =====  =====
  attention, digits        33%    94%   100%   100%
  no attention, digits      1%     8%    51%    95%
  ======================  =====  =====  =====  =====

  With whole-number tokens both learn more slowly (17% without and 26% with
  attention after 250 steps, against 83% and 100% with digits).
* **It is exact and unlimited**: the reference translation is unique, so
  accuracy (whole dates right) and BLEU near 100 are reachable, and a model
  that is wrong is wrong for a reason one can read.

The days are drawn *without replacement* from ``[first_year-01-01,
last_year-12-31]`` (73,049 days for 1900-2099), so no date occurs twice and
train, validation and test never share a date. If the source format loses
information the target needs (``short`` English writes the year with two
digits, so 1926 and 2026 read alike), two different targets would share one
source; that is detected and refused with a ConfigError rather than training
on an unlearnable task.

Babel may put U+00A0 (no-break space) or U+202F (narrow no-break space)
into its output (Russian writes ``2026<U+202F>г.``); both become plain
spaces before tokenising, so the same date always gives the same tokens.
The strings come from the CLDR data shipped with the installed Babel (2.19
here); they have been stable for years for the default en -> fr pair, and
the tests pin a few of them, so a Babel that writes dates differently is
noticed rather than silently giving another dataset.

Tokens are: runs of letters, single digits (or whole numbers) and every
other non-space character on its own (``,`` ``.`` ``-`` ``/``). Chinese and
Japanese dates are cut the same way, so a run of ideographs stays one token.
The pairs come out as TSV lines (:func:`make_tsv`), so they go through the
same reader as any sentence-pair file.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

import numpy as np

from jaxseq.config import Config, option
from jaxseq.errors import ConfigError

DESCRIPTION = ("generated: random dates written out in one language and translated to another (Babel's CLDR "
               "data; default English 'friday , november 2 7 , 2 0 2 6' -> French 'vendredi 2 7 novembre 2 0 2 6')")
FORMAT_CHOICES = ("full", "long", "medium", "short")
NUMBER_CHOICES = ("digits", "whole")

_TOKEN = {"digits": re.compile(r"\d|[^\W\d_]+|[^\w\s]|_"),
          "whole": re.compile(r"\d+|[^\W\d_]+|[^\w\s]|_")}


@dataclass(frozen=True)
class DatesConfig(Config):
    """How the ``dates`` task is generated (fields are prefixed: they sit beside other flags)."""

    dates_count: int = option(20000, "how many date pairs the dates task generates", minimum=1)
    dates_source: str = option("en", "source language of the dates task (a CLDR locale: en, fr, de, es, ...)")
    dates_target: str = option("fr", "target language of the dates task (a CLDR locale)")
    dates_source_format: str = option("full", "how source dates are written (CLDR date format)",
                                      choices=FORMAT_CHOICES)
    dates_target_format: str = option("full", "how target dates are written (CLDR date format)",
                                      choices=FORMAT_CHOICES)
    dates_first_year: int = option(1900, "earliest year of a generated date")
    dates_last_year: int = option(2099, "latest year of a generated date")
    dates_numbers: str = option("digits", "numbers as single digits (a copying task) or whole tokens",
                                choices=NUMBER_CHOICES)
    dates_seed: int = option(0, "seed of the generated dates (fixed, so every run sees the same data)")

    def check(self) -> None:
        if not 1 <= self.dates_first_year <= self.dates_last_year <= 9999:
            raise ConfigError(f"--dates-first-year {self.dates_first_year} and --dates-last-year "
                              f"{self.dates_last_year} must satisfy 1 <= first <= last <= 9999")
        if self.dates_count > self.num_days:
            raise ConfigError(f"--dates-count {self.dates_count} exceeds the {self.num_days} days between "
                              f"{self.dates_first_year} and {self.dates_last_year}; widen the years")

    @property
    def num_days(self) -> int:
        first = datetime.date(self.dates_first_year, 1, 1)
        last = datetime.date(self.dates_last_year, 12, 31)
        return (last - first).days + 1


def _locale(name: str, flag: str):
    from babel import Locale, UnknownLocaleError
    try:
        return Locale.parse(name)
    except (UnknownLocaleError, ValueError, TypeError):
        raise ConfigError(f"{flag}: unknown locale {name!r}; give a CLDR locale such as en, fr, de, es") from None


def tokenize_date(text: str, numbers: str = "digits") -> list[str]:
    """Lowercase Babel's text and cut it into tokens (see the module docstring).

    >>> tokenize_date("Friday, November 27, 2026")
    ['friday', ',', 'november', '2', '7', ',', '2', '0', '2', '6']
    """
    text = text.replace("\u202f", " ").replace("\u00a0", " ").lower()
    return _TOKEN[numbers].findall(text)


def format_day(day: datetime.date, locale: str, fmt: str, numbers: str = "digits") -> str:
    """One date in one locale and format, as space-separated tokens."""
    from babel.dates import format_date
    loc = _locale(locale, "locale") if isinstance(locale, str) else locale
    return " ".join(tokenize_date(format_date(day, fmt, locale=loc), numbers))


def sample_days(config: DatesConfig) -> list[datetime.date]:
    """``dates_count`` distinct days, in a random order fixed by ``dates_seed``."""
    config.validate()
    rng = np.random.default_rng(config.dates_seed)
    offsets = rng.choice(config.num_days, size=config.dates_count, replace=False)
    first = datetime.date(config.dates_first_year, 1, 1)
    return [first + datetime.timedelta(days=int(k)) for k in offsets]


def generate_pairs(config: DatesConfig | None = None) -> list[tuple[str, str]]:
    """``(source, target)`` strings of tokens separated by single spaces, deterministic for the config.

    Raises ConfigError for an unknown locale, or when the source format
    cannot tell two dates apart that the target writes differently.
    """
    from babel.dates import format_date

    config = config or DatesConfig()
    config.validate()
    src_loc = _locale(config.dates_source, "--dates-source")
    tgt_loc = _locale(config.dates_target, "--dates-target")
    pairs, seen = [], {}
    for day in sample_days(config):
        src = " ".join(tokenize_date(format_date(day, config.dates_source_format, locale=src_loc),
                                     config.dates_numbers))
        tgt = " ".join(tokenize_date(format_date(day, config.dates_target_format, locale=tgt_loc),
                                     config.dates_numbers))
        if seen.setdefault(src, (day, tgt))[1] != tgt:
            other, other_tgt = seen[src]
            raise ConfigError(f"dates: the {config.dates_source} {config.dates_source_format!r} format writes "
                              f"{other} and {day} alike ({src!r}) but the target differs ({other_tgt!r} vs "
                              f"{tgt!r}); choose a source format that keeps the whole date")
        pairs.append((src, tgt))
    return pairs


def make_tsv(config: DatesConfig | None = None) -> str:
    """The generated pairs as ``source<TAB>target`` lines (the format the pair reader takes)."""
    return "".join(f"{s}\t{t}\n" for s, t in generate_pairs(config))
