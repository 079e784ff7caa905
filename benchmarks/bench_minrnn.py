"""minGRU trained in parallel over time (associative scan) vs step by step (lax.scan) vs the GRU.

One training step of ONE recurrent layer (input projection, recurrence,
backward pass, Adam update of the layer's parameters) on ``(B, T, I)`` inputs
with a fixed number of tokens per batch ``B * T`` (16,384 by default), for
sequence lengths ``T = 128 ... 4,096``:

  * ``mingru (associative scan)``: ``jaxseq.cells.run_min(..., runner="parallel")``
    -- log-space ``lax.associative_scan`` forward, hand-written backward scan;
  * ``mingru (sequential scan)``: ``runner="sequential"`` -- ``lax.scan`` over
    the same step, differentiated by JAX;
  * ``GRU``: ``jaxseq.cells.run(cells.GRU, ...)`` with its defaults (hoisted
    input projection, hand-written BPTT).

The loss is ``sum(hs * W)`` for a fixed random ``W``. Each contestant is
compiled first (the compile time is reported), warmed up, then timed in
interleaved sweeps (A B C, A B C, ...); the table gives the median step time
and the speed-ups of the associative scan (> 1: it is faster).
Prints a markdown table and writes a plot of step time against ``T``.

    python benchmarks/bench_minrnn.py [--hidden 256] [--tokens 16384] [--sweeps 5] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import optax

from jaxseq import cells

LENGTHS = (128, 256, 512, 1024, 2048, 4096)
CONTESTANTS = ("mingru (associative scan)", "mingru (sequential scan)", "GRU")


def layer_fn(name: str):
    """``(params, xs) -> hs`` for a contestant."""
    if name == "GRU":
        return lambda p, xs: cells.run(cells.GRU, p, xs)[1]
    runner = "parallel" if "associative" in name else "sequential"
    return lambda p, xs: cells.run_min(cells.MINGRU, p, xs, runner=runner)[1]


def make_runner(name: str, batch: int, steps: int, hidden: int, seed: int = 0):
    """Compile one contestant; returns ``(compile_seconds, run(n) -> None)``."""
    key = jax.random.PRNGKey(seed)
    cell = cells.GRU if name == "GRU" else cells.MINGRU
    params = cell.init(key, hidden, hidden)
    xs = jax.random.normal(jax.random.fold_in(key, 1), (batch, steps, hidden))
    w = jax.random.normal(jax.random.fold_in(key, 2), (batch, steps, hidden))
    tx = optax.adam(1e-3)
    layer = layer_fn(name)

    def step(params, opt_state, xs, w):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum(layer(p, xs) * w))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    t = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, xs, w).compile()
    compile_s = time.perf_counter() - t
    holder = {"p": params, "o": opt_state}

    def run(n: int) -> None:
        p, o = holder["p"], holder["o"]
        for _ in range(n):
            p, o, loss = compiled(p, o, xs, w)
        jax.block_until_ready(loss)
        holder.update(p=p, o=o)

    return compile_s, run


def bench_length(steps: int, tokens: int, hidden: int, sweeps: int, reps: int) -> dict:
    batch = max(1, tokens // steps)
    compiled = {name: make_runner(name, batch, steps, hidden) for name in CONTESTANTS}
    for _, run in compiled.values():
        run(1)
    times = {name: [] for name in CONTESTANTS}
    for _ in range(sweeps):
        for name, (_, run) in compiled.items():
            t = time.perf_counter()
            run(reps)
            times[name].append((time.perf_counter() - t) / reps)
    return {"T": steps, "B": batch,
            "step": {n: statistics.median(v) for n, v in times.items()},
            "spread": {n: (min(v), max(v)) for n, v in times.items()},
            "compile": {n: c for n, (c, _) in compiled.items()}}


def table(rows: list[dict]) -> str:
    head = ("| T | B | " + " | ".join(f"{n} step (ms)" for n in CONTESTANTS)
            + " | scan speed-up vs sequential | scan speed-up vs GRU | "
            + " | ".join(f"{n} compile (s)" for n in CONTESTANTS) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s = r["step"]
        par, seq, gru = (s[n] for n in CONTESTANTS)
        lines.append(f"| {r['T']:,} | {r['B']} | " + " | ".join(f"{1e3 * s[n]:.1f}" for n in CONTESTANTS)
                     + f" | {seq / par:.2f}x | {gru / par:.2f}x | "
                     + " | ".join(f"{r['compile'][n]:.1f}" for n in CONTESTANTS) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=90)
    ts = [r["T"] for r in rows]
    for name, marker in zip(CONTESTANTS, "osd"):
        ax.plot(ts, [1e3 * r["step"][name] for r in rows], marker=marker, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T (B x T fixed)")
    ax.set_ylabel("training step (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--tokens", type=int, default=16384, help="B * T per batch")
    parser.add_argument("--hidden", type=int, default=256, help="input and hidden size")
    parser.add_argument("--sweeps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed run")
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("minrnn_step_time.png"))
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    for steps in args.lengths:
        rows.append(bench_length(steps, args.tokens, args.hidden, args.sweeps, args.steps))
        r = rows[-1]
        print(f"T={steps}: " + ", ".join(f"{n} {1e3 * r['step'][n]:.1f} ms "
                                        f"[{1e3 * r['spread'][n][0]:.1f}-{1e3 * r['spread'][n][1]:.1f}]"
                                        for n in CONTESTANTS), file=sys.stderr, flush=True)
    print(f"\n## one layer, hidden {args.hidden}, B x T = {args.tokens:,} tokens per step "
          f"(median of {args.sweeps} interleaved sweeps of {args.steps} steps; load average "
          f"{os.getloadavg()[0]:.1f} at the end)\n")
    print(table(rows))
    plot(rows, args.plot, f"one recurrent layer, H = {args.hidden}, B x T = {args.tokens:,}, CPU")
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
