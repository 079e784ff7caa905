"""Plots written as PNG files: corpus statistics, learning curves, attention heatmaps.

matplotlib is imported only when a plot is drawn, and with the non-interactive
``Agg`` backend unless the caller has already imported ``pyplot`` (and so
chosen a backend). Every function writes one file and returns its path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxseq.errors import DataError


def pyplot():
    """``matplotlib.pyplot``, imported lazily with the Agg backend."""
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` as PNG and close it; an unwritable path is a DataError."""
    plt = pyplot()
    path = Path(path)
    try:
        fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    except OSError as err:
        raise DataError(f"{path}: cannot write the plot ({err.strerror or err})") from None
    finally:
        plt.close(fig)
    return path


def zipf_plot(ids, path: str | os.PathLike, title: str = "Zipf's law: rank vs frequency",
              orders: Sequence[int] = (1, 2, 3)) -> Path:
    """Log-log plot of n-gram frequency against frequency rank, one line per order.

    Zipf's law says the frequency of the ``r``-th most frequent token falls
    roughly as ``r^(-alpha)``, a straight line of slope ``-alpha`` here.
    ``ids``: 1-D token ids; orders longer than the text are skipped.
    """
    from jaxseq.ngram import ngram_counts

    x = np.asarray(ids)
    if x.ndim != 1 or x.size == 0:
        raise DataError("zipf_plot: expected a non-empty 1-D sequence of token ids")
    names = {1: "unigrams", 2: "bigrams", 3: "trigrams"}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for n in orders:
        _, counts = ngram_counts(x, n)
        if counts.size == 0:
            continue
        freq = np.sort(counts)[::-1]
        ax.loglog(np.arange(1, freq.size + 1), freq, label=names.get(n, f"{n}-grams"))
    ax.set_xlabel("rank")
    ax.set_ylabel("frequency")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def learning_curve(metrics_path: str | os.PathLike, path: str | os.PathLike,
                   title: str = "learning curve") -> Path:
    """Training and validation perplexity against step, from a run's ``metrics.jsonl``.

    A log-scaled y axis, since perplexity falls over orders of magnitude at
    first. Validation records that carry ``bleu`` get a second panel.
    """
    from jaxseq.metrics_log import MetricsLog

    records = MetricsLog.read(Path(metrics_path))      # a torn last line (a full disk) is skipped
    train = [(r["step"], r["perplexity"]) for r in records if r.get("split") == "train"]
    valid = [(r["step"], r["perplexity"]) for r in records if r.get("split") == "valid"]
    bleu = [(r["step"], r["bleu"]) for r in records if r.get("split") == "valid" and "bleu" in r]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if bleu else 1, figsize=(10 if bleu else 6, 4.5), squeeze=False)
    ax = axes[0, 0]
    for points, label, style in ((train, "train", "-"), (valid, "validation", "o-")):
        if points:
            steps, ppl = zip(*points)
            ax.plot(steps, ppl, style, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if bleu:
        steps, values = zip(*bleu)
        axes[0, 1].plot(steps, values, "o-", color="tab:green")
        axes[0, 1].set_xlabel("step")
        axes[0, 1].set_ylabel("BLEU (validation)")
        axes[0, 1].grid(True, alpha=0.3)
    return save_figure(fig, path)


def _attention_weights(weights, rows: int, cols: int, leading: int, where: str) -> np.ndarray:
    """``weights`` as float64 with ``leading`` axes before ``(T, S)``, cut to ``(rows, cols)`` tokens."""
    w = np.asarray(weights, np.float64)
    if w.ndim != leading + 2 or w.shape[-2] < rows or w.shape[-1] < cols:
        raise DataError(f"{where}: weights of shape {w.shape} do not cover {rows} target x {cols} source tokens")
    return w[..., :rows, :cols]


def _draw_attention(ax, w: np.ndarray, src_tokens: Sequence[str], tgt_tokens: Sequence[str]):
    image = ax.imshow(w, cmap="Reds", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(src_tokens)), list(src_tokens), rotation=90)
    ax.set_yticks(range(len(tgt_tokens)), list(tgt_tokens))
    return image


def attention_heatmap(weights, src_tokens: Sequence[str], tgt_tokens: Sequence[str],
                      path: str | os.PathLike, title: str = "attention") -> Path:
    """Attention weights as a heatmap: one row per target token, one column per source token.

    ``weights`` is ``(T, S)``: row ``t`` is the distribution over source
    positions the decoder used when writing ``tgt_tokens[t]``; it is cut to
    ``(len(tgt_tokens), len(src_tokens))`` (padding columns are not drawn).
    """
    w = _attention_weights(weights, len(tgt_tokens), len(src_tokens), 0, "attention_heatmap")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(0.45 * len(src_tokens) + 2.5, 0.4 * len(tgt_tokens) + 1.8))
    image = _draw_attention(ax, w, src_tokens, tgt_tokens)
    ax.set_xlabel("source")
    ax.set_ylabel("target")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)


def attention_grid(weights, key_tokens: Sequence[str], query_tokens: Sequence[str],
                   path: str | os.PathLike, title: str = "attention") -> Path:
    """Multi-head attention of every layer: a grid of heatmaps, one row per layer, one column per head.

    ``weights`` is ``(L, H, Q, K)``, cut to ``(len(query_tokens),
    len(key_tokens))``; the tokens label the left column and the bottom row.
    """
    w = _attention_weights(weights, len(query_tokens), len(key_tokens), 2, "attention_grid")
    layers, heads = w.shape[:2]
    plt = pyplot()
    cell_w, cell_h = 0.3 * len(key_tokens) + 1.0, 0.28 * len(query_tokens) + 0.9
    fig, axes = plt.subplots(layers, heads, figsize=(cell_w * heads + 1.5, cell_h * layers + 1.0), squeeze=False)
    for i in range(layers):
        for j in range(heads):
            ax = axes[i, j]
            image = _draw_attention(ax, w[i, j], key_tokens, query_tokens)
            if i < layers - 1:
                ax.set_xticks([])
            if j:
                ax.set_yticks([])
            ax.set_title(f"layer {i + 1}, head {j + 1}", fontsize=8)
    fig.suptitle(title)
    fig.colorbar(image, ax=axes, fraction=0.02, pad=0.02)
    return save_figure(fig, path)
