"""Benchmark: jaxseq's vectorised n-gram models against NLTK, plus a perplexity table.

Times a character-level trigram modified Kneser-Ney model (``jaxseq.ngram``)
fitting ~1M training tokens and scoring 100k held-out tokens, side by side with
``nltk.lm.KneserNeyInterpolated`` (when NLTK is importable; NLTK scores a token
in about half a millisecond, so it is timed on a subset of the held-out tokens
and compared per token). Then prints validation perplexities of KN models of
several orders on the corpus split the CLI uses (``LMDataConfig``: char level,
last 10% held out).

    python benchmarks/bench_ngram.py                        # built-in corpus, repeated to 1.1M chars
    python benchmarks/bench_ngram.py --data ../shared/data/tinyshakespeare.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jaxseq.data.corpora import load_text  # noqa: E402
from jaxseq.data.lm import LMDataConfig, load_corpus  # noqa: E402
from jaxseq.data.vocab import UNK, Vocab  # noqa: E402
from jaxseq.ngram import NGramConfig, NGramLM  # noqa: E402


def timed(fn, repeats: int):
    """(result of the last call, list of wall-clock seconds per call)."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def fmt(times: list[float]) -> str:
    return f"{min(times):.3f} s (median {statistics.median(times):.3f}, {len(times)} runs)"


def speed(args) -> None:
    text, source = load_text(args.data)
    need = args.train_tokens + args.heldout_tokens
    repeated = len(text) < need
    while len(text) < need:
        text += "\n" + text
    tokens = list(text[:need])
    train_tokens, held_tokens = tokens[:args.train_tokens], tokens[args.train_tokens:]
    vocab = Vocab.build(train_tokens, reserved_tokens=(UNK,))
    (train, held), enc_times = timed(lambda: (vocab.encode(train_tokens), vocab.encode(held_tokens)), 1)
    print(f"corpus: {source}{' (repeated to reach the size)' if repeated else ''}; char level, V = {len(vocab)}; "
          f"train {len(train):,} tokens, held-out {len(held):,} tokens")
    print(f"(encoding both with Vocab.encode: {enc_times[0]:.3f} s, not included below)")

    config = NGramConfig(order=args.order, smoothing="kn")
    model, fit_times = timed(lambda: NGramLM.fit(train, len(vocab), config), args.repeats)
    result, score_times = timed(lambda: model.evaluate(held), args.repeats)
    ours_fit, ours_score = min(fit_times), min(score_times)
    print(f"\njaxseq  order-{args.order} modified KN: fit {fmt(fit_times)}; score {fmt(score_times)}; "
          f"held-out perplexity {result['perplexity']:.4f}")

    rows = [("fit", f"{len(train):,} tokens", ours_fit, None, None),
            ("score", f"{len(held) - 1:,} tokens", ours_score, None, None)]
    try:
        from nltk.lm import KneserNeyInterpolated
        from nltk.util import everygrams
    except ImportError:
        print("NLTK not importable: no comparison")
    else:
        if not args.nltk:
            print("NLTK comparison skipped (--no-nltk)")
        else:
            n_fit = min(args.nltk_train_tokens or len(train_tokens), len(train_tokens))
            sub = train_tokens[:n_fit]
            lm = KneserNeyInterpolated(args.order)
            t0 = time.perf_counter()
            lm.fit([list(everygrams(sub, max_len=args.order))], vocabulary_text=sub)
            nltk_fit = time.perf_counter() - t0
            m = min(args.nltk_score_tokens, len(held_tokens) - 1)
            t0 = time.perf_counter()
            for t in range(1, m + 1):
                lm.score(held_tokens[t], held_tokens[max(0, t - args.order + 1):t])
            nltk_score = time.perf_counter() - t0
            print(f"NLTK    KneserNeyInterpolated({args.order}): fit {n_fit:,} tokens {nltk_fit:.3f} s; "
                  f"score {m:,} tokens {nltk_score:.3f} s (one run each)")
            rows = [("fit", f"{len(train):,} tokens", ours_fit, n_fit, nltk_fit),
                    ("score", f"{len(held) - 1:,} tokens", ours_score, m, nltk_score)]

    print("\n| step | jaxseq | jaxseq per token | NLTK | NLTK per token | NLTK / jaxseq per token |")
    print("|---|---|---|---|---|---|")
    for name, size, ours, n_theirs, theirs in rows:
        n_ours = len(train) if name == "fit" else len(held) - 1
        per_ours = ours / n_ours * 1e6
        if theirs is None:
            print(f"| {name} | {ours:.3f} s ({size}) | {per_ours:.3f} us | - | - | - |")
        else:
            per_theirs = theirs / n_theirs * 1e6
            print(f"| {name} | {ours:.3f} s ({size}) | {per_ours:.3f} us | {theirs:.3f} s ({n_theirs:,} tokens) | "
                  f"{per_theirs:.2f} us | {per_theirs / per_ours:,.0f}x |")


def perplexities(args) -> None:
    corpus = load_corpus(LMDataConfig(data=args.data))
    print(f"\nvalidation perplexity, {corpus.source}: char level, V = {len(corpus.vocab)}, "
          f"train {corpus.train_tokens:,} / valid {len(corpus.valid):,} tokens (LMDataConfig defaults)")
    print("| order | smoothing | nats/char | perplexity | fit s |")
    print("|---|---|---|---|---|")
    for order in args.orders:
        for smoothing in args.smoothings:
            t0 = time.perf_counter()
            model = NGramLM.fit(corpus.train, len(corpus.vocab), NGramConfig(order=order, smoothing=smoothing))
            fit_s = time.perf_counter() - t0
            r = model.evaluate(corpus.valid)
            print(f"| {order} | {smoothing} | {r['nll']:.4f} | {r['perplexity']:.3f} | {fit_s:.2f} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="builtin", help="a text file, 'builtin' or a registered dataset name")
    p.add_argument("--order", type=int, default=3, help="order of the timed model")
    p.add_argument("--train-tokens", type=int, default=1_000_000)
    p.add_argument("--heldout-tokens", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of jaxseq (the best is reported)")
    p.add_argument("--nltk", action=argparse.BooleanOptionalAction, default=True, help="compare with NLTK")
    p.add_argument("--nltk-train-tokens", type=int, default=0, help="NLTK fit on this many tokens (0: all)")
    p.add_argument("--nltk-score-tokens", type=int, default=5000, help="NLTK scores this many held-out tokens")
    p.add_argument("--orders", type=int, nargs="*", default=[1, 2, 3, 5], help="orders of the perplexity table")
    p.add_argument("--smoothings", nargs="*", default=["kn"], help="smoothings of the perplexity table")
    p.add_argument("--skip-speed", action="store_true", help="only print the perplexity table")
    args = p.parse_args(argv)
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    if not args.skip_speed:
        speed(args)
    if args.orders:
        perplexities(args)


if __name__ == "__main__":
    main()
