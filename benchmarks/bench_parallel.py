"""Data-parallel throughput on 1, 2 and 4 (forced) CPU devices, and the memory --remat saves.

Each measurement runs in a fresh subprocess, because the number of CPU devices
(``--xla_force_host_platform_device_count``) is fixed when JAX starts and peak
RSS is per process.

1. Throughput: a GRU language model (hidden 256, batch 32, seq 35, vocab 104)
   trained with jaxseq's train step on a mesh of N devices, the global batch
   split over them. On a 2-core machine N > 1 cannot be faster (the "devices"
   share the same 2 cores); it shows the cost of the sharded program and its
   all-reduce, which must stay small.
2. Memory: one training step of a GRU (hidden 512, batch 16) on sequences of
   2048 steps, with and without ``remat``, for both backward passes; peak
   resident memory of the process (``ru_maxrss``) after compiling and running.

    python benchmarks/bench_parallel.py [--steps 30] [--seq-len 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, time
cfg = json.loads(sys.argv[1])
import jax, numpy as np
from jaxseq import parallel, train
from jaxseq.data.lm import LMBatches
from jaxseq.tasks.lm import build_lm
from jaxseq.optim import OptimConfig, make_optimizer
mesh = parallel.make_mesh(cfg["devices"])
model = build_lm("gru", cfg["vocab"], hidden=cfg["hidden"], backward=cfg["backward"],
                 remat=cfg["remat"])
tx = make_optimizer(OptimConfig(), 1000)
ids = np.random.default_rng(0).integers(0, cfg["vocab"], size=cfg["batch"] * (cfg["seq"] + 1) * 8).astype(np.int32)
batches = LMBatches(ids, seq_len=cfg["seq"], batch_size=cfg["batch"], seed=0)
state = train.create_state(model, tx, batches.batch(0, 0), 0, mesh)
step = train.make_train_step(model, tx, shardings=(train.state_shardings(state), parallel.batch_sharding(mesh)))
data = [parallel.shard_batch(next(batches), mesh) for _ in range(4)]
state, m = step(state, data[0]); jax.block_until_ready(m["loss"])
rates = []
for sweep in range(cfg["sweeps"]):
    t = time.perf_counter()
    for i in range(cfg["steps"]):
        state, m = step(state, data[i % 4])
    jax.block_until_ready(m["loss"])
    rates.append(cfg["batch"] * cfg["seq"] * cfg["steps"] / (time.perf_counter() - t))
print(json.dumps({"tokens_per_s": sorted(rates)[len(rates) // 2],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(cfg: dict, devices: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sweeps", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    base = dict(vocab=104, hidden=256, batch=32, seq=35, steps=args.steps, sweeps=args.sweeps,
                remat=False, backward="custom")
    print("## data-parallel throughput (GRU LM, hidden 256, global batch 32 x 35)\n")
    print("| devices | tokens/s | vs 1 device |")
    print("|---|---|---|")
    rates = {}
    for n in (1, 2, 4):
        rates[n] = run_child(dict(base, devices=n), n)["tokens_per_s"]
        print(f"| {n} | {rates[n]:,.0f} | {rates[n] / rates[1]:.2f}x |", flush=True)

    if args.skip_memory:
        return
    print(f"\n## peak memory of a training step at sequence length {args.seq_len} "
          "(GRU hidden 512, batch 16, one device)\n")
    print("| backward | remat | peak RSS (MB) | tokens/s |")
    print("|---|---|---|---|")
    for backward in ("custom", "autodiff"):
        for remat in (False, True):
            cfg = dict(base, hidden=512, batch=16, seq=args.seq_len, steps=2, sweeps=1, remat=remat,
                       backward=backward, devices=1)
            r = run_child(cfg, 1)
            print(f"| {backward} | {'on' if remat else 'off'} | {r['peak_rss_mb']:,.0f} | "
                  f"{r['tokens_per_s']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
