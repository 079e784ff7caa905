"""--attention-impl on this machine: the default Transformer LM's training step with each implementation.

One full jaxseq train step (forward, backward, AdamW update) of the
Transformer language model with its registered defaults (context 64, batch
12, 4 pre-norm layers, 4 heads, d_model 128, GELU FFN 512, learned
positions; vocab 65), once per ``--attention-impl`` (``jaxseq``: the
hand-written path with causal blocks; ``xla``: ``jax.nn.dot_product_attention``;
``cudnn`` only on an NVIDIA GPU), optionally in bf16 (``--dtype bfloat16``).
Each contestant runs in its own process and they take turns
(benchmarks/harness.py); reported: median tokens/s over rounds and the
median per-round ratio to ``jaxseq``. The winner on a platform is what
``--attention-impl auto`` picks there (``jaxseq.attention_impl.AUTO``).

    python benchmarks/bench_attention.py [--rounds 7] [--steps 10] [--impls jaxseq xla] [--dtype float32]
        [--seq-len 64] [--batch-size 12] [--idle 0.0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from harness import race   # noqa: E402

VOCAB = 65


def trainer(impl: str, steps: int, dtype: str, seq_len: int, batch_size: int):
    import jax
    import numpy as np
    from jaxseq import parallel, train
    from jaxseq.optim import OptimConfig, make_optimizer
    from jaxseq.tasks import lm

    run = lm.TASK.resolve({"model": "transformer", "attention_impl": impl, "dtype": dtype, "seq_len": seq_len,
                           "batch_size": batch_size}, warn_unused=False)
    model = run.spec.build(run, (VOCAB,))
    mesh = parallel.make_mesh(1)
    tx = make_optimizer(OptimConfig(optimizer="adamw", lr=1e-3, clip=1.0), 1000)
    rng = np.random.default_rng(0)
    host = []
    for _ in range(4):
        x = rng.integers(0, VOCAB, size=(batch_size, seq_len + 1)).astype(np.int32)
        host.append({"inputs": x[:, :-1], "targets": x[:, 1:], "weights": np.ones((batch_size, seq_len), np.float32)})
    batches = [parallel.shard_batch(b, mesh) for b in host]
    holder = {"state": train.create_state(model, tx, host[0], 0, mesh)}
    step = train.make_train_step(model, tx, shardings=(train.state_shardings(holder["state"]),
                                                       parallel.batch_sharding(mesh)))

    def run_steps():
        s = holder["state"]
        for i in range(steps):
            s, m = step(s, batches[i % 4])
        jax.block_until_ready(m["loss"])
        holder["state"] = s
    return run_steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impls", nargs="+", default=["jaxseq", "xla"], choices=["jaxseq", "xla", "cudnn"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--idle", type=float, default=0.0)
    args = parser.parse_args()
    import jax
    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    seconds = race({impl: (trainer, (impl, args.steps, args.dtype, args.seq_len, args.batch_size))
                    for impl in args.impls}, rounds=args.rounds, idle=args.idle)
    work = args.steps * args.seq_len * args.batch_size
    rates = {k: [work / s for s in v] for k, v in seconds.items()}
    print(f"\n| --attention-impl | tokens/s (median of {args.rounds}) | vs jaxseq (median of rounds) |\n|---|---|---|")
    for impl, r in rates.items():
        ratio = statistics.median(a / b for a, b in zip(r, rates["jaxseq"])) if "jaxseq" in rates else float("nan")
        print(f"| {impl} | {statistics.median(r):,.0f} | {ratio:.2f}x |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
