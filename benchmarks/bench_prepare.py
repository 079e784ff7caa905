"""`jaxseq prepare` throughput, training tokens/s from shards vs in memory, and peak memory as the corpus grows.

For each scale ``s`` (default 1 and 10) the corpus (default
``../shared/data/tinyshakespeare.txt``) is repeated ``s`` times into one file
in a temporary directory (never kept), and three measurements run, each in a
fresh process so that peak RSS (``ru_maxrss``) is its own:

1. ``prepare``: the file into shards with ``--workers`` processes; MB/s of
   text, peak RSS of the main process and of the largest worker.
2. ``train shards``: the corpus opened from the shards (training stream
   memory-mapped, validation read batch by batch, as `train lm --data DIR` does), a
   GRU language model's train step run for ``--steps`` steps; tokens/s of the
   training loop (batches read from the shards included), tokens/s of the
   batch iterator alone, peak RSS.
3. ``train memory``: the same from the text file, the way `train lm --data
   FILE` loads it (the whole text, its token list and its ids in memory).

Flat memory means: the shard rows' peak RSS hardly moves from scale 1 to 10,
while the in-memory rows grow with the corpus. "peak RSS: data" is the peak
after the corpus is loaded, the held-out text read once and the batch
iterator timed, before JAX compiles anything (compiling has the larger peak
of a small run and would hide the data's); "peak RSS: run" is the whole
process's. Pages of the memory-mapped
shards a process has read count in its RSS as *file-backed* memory (page
cache the kernel can drop at will), so the table also gives the anonymous
and file-backed parts at the end of each training run.

    python benchmarks/bench_prepare.py                               # 1x and 10x tinyshakespeare
    python benchmarks/bench_prepare.py --scales 1 --steps 3 --data SMALL.txt    # smoke run
    python benchmarks/bench_prepare.py --tokens bpe                  # subwords: prepare trains the tokenizer
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PREPARE = r"""
import json, resource, sys, time
cfg = json.loads(sys.argv[1])
from jaxseq.data import prepare
from jaxseq.data.lm import LMDataConfig
t = time.perf_counter()
index = prepare.prepare(cfg["corpus"], cfg["out"], LMDataConfig(tokens=cfg["tokens"]),
                        prepare.PrepareConfig(workers=cfg["workers"], chunk_bytes=cfg["chunk_bytes"]),
                        echo=lambda s: None)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "mb_per_s": index["source_bytes"] / 1e6 / seconds,
                  "tokens": index["tokens"]["train"] + index["tokens"]["valid"], "shards": len(index["shards"]),
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

TRAIN = r"""
import json, resource, sys, time
cfg = json.loads(sys.argv[1])
import jax, numpy as np
from jaxseq import parallel, train
from jaxseq.data.lm import EvalBatches, LMBatches, LMDataConfig, load_corpus
from jaxseq.optim import OptimConfig, make_optimizer
from jaxseq.tasks.lm import build_lm
t = time.perf_counter()
corpus = load_corpus(LMDataConfig(data=cfg["data"], tokens=cfg["tokens"]))
valid = EvalBatches(corpus.valid, seq_len=cfg["seq"], batch_size=cfg["batch"])   # as `train lm` holds it
sum(float(b["weights"].sum()) for b in valid)          # one pass over the held-out text, as a validation reads it
load_seconds = time.perf_counter() - t
batches = LMBatches(corpus.train, seq_len=cfg["seq"], batch_size=cfg["batch"], seed=0)
t = time.perf_counter()
for _ in range(cfg["data_batches"]):
    next(batches)
data_tps = cfg["data_batches"] * cfg["batch"] * cfg["seq"] / (time.perf_counter() - t)
data_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # the data's peak, before JAX compiles
mesh = parallel.make_mesh(1)
model = build_lm("gru", len(corpus.vocab), hidden=cfg["hidden"])
tx = make_optimizer(OptimConfig(), 1000)
state = train.create_state(model, tx, batches.batch(0, 0), 0, mesh)
step = train.make_train_step(model, tx, shardings=(train.state_shardings(state), parallel.batch_sharding(mesh)))
state, m = step(state, parallel.shard_batch(next(batches), mesh)); jax.block_until_ready(m["loss"])
t = time.perf_counter()
for _ in range(cfg["steps"]):
    state, m = step(state, parallel.shard_batch(next(batches), mesh))
jax.block_until_ready(m["loss"])
train_tps = cfg["steps"] * cfg["batch"] * cfg["seq"] / (time.perf_counter() - t)
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({"load_seconds": load_seconds, "train_tokens": len(corpus.train), "train_tok_s": train_tps,
                  "data_tok_s": data_tps, "data_rss_mb": data_rss, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mb": int(status["RssAnon"].split()[0]) / 1024,
                  "file_mb": int(status["RssFile"].split()[0]) / 1024}))
"""


def _child(code: str, cfg: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    out = subprocess.run([sys.executable, "-c", code, json.dumps(cfg)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--scales", default="1,10", help="corpus sizes as multiples of --data")
    parser.add_argument("--tokens", default="char", choices=("char", "word", "bpe", "wordpiece"),
                        help="subwords: the tokenizer is trained in prepare (and in memory), default --vocab-size")
    parser.add_argument("--workers", type=int, default=0, help="prepare's processes (0: one per core)")
    parser.add_argument("--chunk-bytes", type=int, default=1 << 20, help="prepare's unit of work")
    parser.add_argument("--steps", type=int, default=50, help="timed train steps")
    parser.add_argument("--data-batches", type=int, default=2000, help="batches timed for the iterator alone")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=35)
    parser.add_argument("--tmp", default=None, help="where the repeated corpora go (default: the system's)")
    args = parser.parse_args()
    text = Path(args.data).read_bytes()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="jaxseq-bench-prepare-", dir=args.tmp))
    try:
        for scale in (int(s) for s in args.scales.split(",")):
            corpus = tmp / f"corpus-x{scale}.txt"
            with open(corpus, "wb") as f:
                for _ in range(scale):
                    f.write(text)
            out = tmp / f"shards-x{scale}"
            prep = _child(PREPARE, {"corpus": str(corpus), "out": str(out), "tokens": args.tokens,
                                    "workers": args.workers, "chunk_bytes": args.chunk_bytes})
            common = {"tokens": args.tokens, "steps": args.steps, "data_batches": args.data_batches,
                      "hidden": args.hidden, "batch": args.batch, "seq": args.seq}
            from_shards = _child(TRAIN, {**common, "data": str(out)})
            in_memory = _child(TRAIN, {**common, "data": str(corpus)})
            mb = corpus.stat().st_size / 1e6
            rows.append(f"| {scale}x | {mb:.1f} MB | prepare | {prep['mb_per_s']:.2f} MB/s ({prep['seconds']:.1f} s, "
                        f"{prep['shards']} shards) | | | {prep['rss_mb']:.0f} MB | (largest worker "
                        f"{prep['worker_rss_mb']:.0f} MB) |")
            for name, r in (("train shards", from_shards), ("train memory", in_memory)):
                rows.append(f"| {scale}x | {mb:.1f} MB | {name} | load {r['load_seconds']:.2f} s | "
                            f"{r['train_tok_s']:,.0f} | {r['data_tok_s']:,.0f} | {r['data_rss_mb']:.0f} MB | "
                            f"{r['rss_mb']:.0f} MB (at the end: "
                            f"{r['anon_mb']:.0f} MB anonymous, {r['file_mb']:.0f} MB file-backed) |")
            shutil.rmtree(out)
            corpus.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"corpus {args.data} ({args.tokens} tokens); GRU hidden {args.hidden}, batch {args.batch} x {args.seq}")
    print("| scale | text | what | time | train tokens/s | iterator tokens/s | peak RSS: data | peak RSS: run |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
