"""Decoder-only Transformer: training throughput against PyTorch, achieved GFLOP/s, cached generation.

Training throughput (tokens/s) of one full step (forward, backward, clipped
AdamW update) of the same model (vocab 65, context 128, batch 16, 4 layers,
4 heads, d_model 128, FFN 512, post-norm, sinusoidal positions, scaled
embeddings) in
  * ``jaxseq``: jaxseq's ``TransformerLM`` through jaxseq's own train step,
  * ``flax``: a plain Flax model (``nn.MultiHeadDotProductAttention``,
    ``nn.Dense`` and ``nn.LayerNorm`` on ``(B, T, C)`` arrays, autodiff), the
    starting point,
  * ``torch``: PyTorch with ``F.scaled_dot_product_attention(is_causal=True)``,
  * ``jaxseq-glibc`` / ``jaxseq-unblocked``: jaxseq with one measured fix
    undone (glibc's default malloc, ``jaxseq/memory.py``; one masked ``T x T``
    attention product instead of causal blocks).
Each contestant runs in its own process (PyTorch's OpenMP threads and XLA's
thread pool slow each other down badly when they share one), and the
processes take turns (A B C, B C A, ...) so a busy neighbour slows them
alike; ``--wait-idle`` starts each turn only once the CPUs are idle.
Reported: the median of the per-round throughputs, the median of the
per-round ratios to PyTorch, and the best single step.

GFLOP/s counts the model's matmul FLOPs (dense layers, ``Q K^T`` and ``P V``
over the full ``T x T``, output layer; backward = 2x forward), the same count
for every contestant, against each framework's own float32 matmul peak
measured in the same run (the best of 1024x1024x1024 and 2048x128x512 products).
MFU is tokens/s times jaxseq's analytic count per token (``jaxseq.flops``, the
count behind ``mfu`` in metrics.jsonl: causal attention at half, MaxText's
convention) over the JAX worker's measured peak, the same for everyone.

Generation (tokens/s, batch 1, 512 tokens from a 1-token prompt, greedy) of
jaxseq's cached decoding (``decode.generate``: one prefill, then one token per
``decode_step``, all in one ``lax.scan``) against recomputing the full causal
pass over the 512-position buffer at every step (also one ``lax.scan``).

    python benchmarks/bench_transformer.py [--rounds 7] [--steps 5] [--wait-idle 0.12]
        [--contestants jaxseq flax torch ...] [--activation relu|gelu] [--gen-rounds 3]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import wait_idle   # noqa: E402

V, T, B, LAYERS, HEADS, D = 65, 128, 16, 4, 4, 128
F = 4 * D
GEN_LEN = 512


def model_flops_per_step(seq: int = T, batch: int = B) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3x forward)."""
    dense = 2 * (D * 3 * D + D * D + 2 * D * F)          # per token per layer: QKV, output, FFN
    attention = 2 * 2 * seq * D                         # per token per layer: Q K^T and P V over all T keys
    forward = batch * seq * (LAYERS * (dense + attention) + 2 * D * V)
    return 3.0 * forward


def jaxseq_flops_per_token() -> float:
    """jaxseq's analytic training FLOPs per token of this model (``ModelSpec.flops``)."""
    from jaxseq.tasks import lm
    run = lm.TASK.resolve({"model": "transformer", "layers": LAYERS, "heads": HEADS, "d_model": D, "ffn": F,
                           "ffn_activation": "relu", "norm": "post", "positional": "sinusoidal", "seq_len": T,
                           "batch_size": B}, warn_unused=False)
    return run.spec.flops(run, (V,), {"inputs": (B, T)}).per_token


def sinusoidal_positions(length: int, d_model: int):
    """The Transformer's position table (as jaxseq.transformer's; here so PyTorch and plain Flax
    workers run without importing jaxseq)."""
    import numpy as np
    pos = np.arange(length)[:, None] / np.power(10000.0, np.arange(0, d_model, 2) / d_model)[None, :]
    table = np.zeros((length, d_model))
    table[:, 0::2], table[:, 1::2] = np.sin(pos), np.cos(pos)
    return table.astype(np.float32)


def _batches(n: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.integers(0, V, size=(B, T + 1)).astype(np.int32)
        out.append({"inputs": x[:, :-1], "targets": x[:, 1:], "weights": np.ones((B, T), np.float32)})
    return out


# -- contestants (each built inside its own worker process) ------------------------------------

def _jax_peak() -> float:
    import jax
    import jax.numpy as jnp
    best = 0.0
    for m, k, n in ((1024, 1024, 1024), (2048, 128, 512)):
        a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
        f = jax.jit(lambda a, b: a @ b)
        f(a, b).block_until_ready()
        for _ in range(20):
            t = time.perf_counter()
            f(a, b).block_until_ready()
            best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


def _torch_peak() -> float:
    import torch
    best = 0.0
    for m, k, n in ((1024, 1024, 1024), (2048, 128, 512)):
        a, b = torch.ones(m, k), torch.ones(k, n)
        a @ b
        for _ in range(20):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


# the architecture every contestant builds (the module docstring), not the registry's LM defaults
_ARCHITECTURE = dict(layers=LAYERS, heads=HEADS, d_model=D, ffn=None, norm="post", positional="sinusoidal",
                     dropout=0.0)


def jaxseq_trainer(activation: str, causal_block: int = 64):
    import jax
    from jaxseq import parallel, train
    from jaxseq.optim import OptimConfig, make_optimizer
    from jaxseq.tasks.lm import build_lm

    mesh = parallel.make_mesh(1)
    model = build_lm("transformer", V, **_ARCHITECTURE, ffn_activation=activation,
                     seq_len=T).clone(causal_block=causal_block)
    tx = make_optimizer(OptimConfig(optimizer="adamw", lr=1e-3, clip=1.0), 10_000)
    host = _batches(4)
    state = train.create_state(model, tx, host[0], 0, mesh)
    step = train.make_train_step(model, tx, shardings=(train.state_shardings(state), parallel.batch_sharding(mesh)))
    batches = [parallel.shard_batch(b, mesh) for b in host]
    holder = {"state": state, "i": 0}

    def run():
        holder["state"], m = step(holder["state"], batches[holder["i"] % 4])
        holder["i"] += 1
        jax.block_until_ready(m["loss"])
    return run, _jax_peak


def flax_trainer(activation: str):
    """A plain Flax model: Linen's own layers on (B, T, C) arrays, JAX's autodiff everywhere."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    act = {"relu": nn.relu, "gelu": lambda x: nn.gelu(x, approximate=True)}[activation]

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, mask):
            y = nn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=D)(x, x, mask=mask)
            x = nn.LayerNorm()(x + y)
            y = nn.Dense(D)(act(nn.Dense(F)(x)))
            return nn.LayerNorm()(x + y)

    class Model(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(V, D)(tokens) * math.sqrt(D) + sinusoidal_positions(T, D)[None]
            mask = nn.make_causal_mask(tokens)
            for _ in range(LAYERS):
                x = Block()(x, mask)
            return nn.Dense(V)(x)

    model = Model()
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=0.01))
    host = _batches(4)
    params = model.init(jax.random.PRNGKey(0), host[0]["inputs"])
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, batch):
        def loss(p):
            logits = model.apply(p, batch["inputs"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, value

    batches = [{k: jnp.asarray(v) for k, v in b.items()} for b in host]
    holder = {"p": params, "o": opt, "i": 0}

    def run():
        with jax.numpy_dtype_promotion("standard"):
            holder["p"], holder["o"], loss = step(holder["p"], holder["o"], batches[holder["i"] % 4])
        holder["i"] += 1
        loss.block_until_ready()
    return run, _jax_peak


def torch_trainer(activation: str):
    import torch
    import torch.nn as tnn
    import torch.nn.functional as tF
    torch.manual_seed(0)
    act = {"relu": tF.relu, "gelu": lambda x: tF.gelu(x, approximate="tanh")}[activation]

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.o = tnn.Linear(D, 3 * D), tnn.Linear(D, D)
            self.f1, self.f2 = tnn.Linear(D, F), tnn.Linear(F, D)
            self.ln1, self.ln2 = tnn.LayerNorm(D), tnn.LayerNorm(D)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = (z.view(b, t, HEADS, D // HEADS).transpose(1, 2) for z in self.qkv(x).split(D, dim=-1))
            y = tF.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, D)
            x = self.ln1(x + self.o(y))
            return self.ln2(x + self.f2(act(self.f1(x))))

    class Model(tnn.Module):
        def __init__(self):
            super().__init__()
            self.emb = tnn.Embedding(V, D)
            self.register_buffer("pos", torch.from_numpy(sinusoidal_positions(T, D)))
            self.blocks = tnn.Sequential(*[Block() for _ in range(LAYERS)])
            self.out = tnn.Linear(D, V)

        def forward(self, x):
            return self.out(self.blocks(self.emb(x) * math.sqrt(D) + self.pos[: x.shape[1]]))

    model = Model()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=1e-3)
    batches = [{k: torch.from_numpy(v).long() if k != "weights" else torch.from_numpy(v) for k, v in b.items()}
               for b in _batches(4)]
    holder = {"i": 0}

    def run():
        batch = batches[holder["i"] % 4]
        holder["i"] += 1
        loss = tF.cross_entropy(model(batch["inputs"]).reshape(-1, V), batch["targets"].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return run, _torch_peak


def generation_runners(activation: str):
    """(cached, recompute): each generates GEN_LEN - 1 tokens after a 1-token prompt; greedy."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxseq import decode, train
    from jaxseq.tasks.lm import build_lm

    model = build_lm("transformer", V, **_ARCHITECTURE, ffn_activation=activation, seq_len=GEN_LEN)
    sample = {"inputs": np.zeros((1, GEN_LEN), np.int32)}
    params = train.init_params(model, sample, 0)
    prompt = jnp.zeros((1, 1), jnp.int32)
    n = GEN_LEN - 1

    @jax.jit
    def recompute(params, prompt):
        buf = jnp.zeros((1, GEN_LEN), jnp.int32).at[:, 0].set(prompt[:, 0])

        def body(buf, t):
            logits, _ = model.apply({"params": params}, {"inputs": buf})
            token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False), -1).astype(jnp.int32)
            return jax.lax.dynamic_update_index_in_dim(buf, token[:, None], t + 1, axis=1), token
        _, tokens = jax.lax.scan(body, buf, jnp.arange(n))
        return tokens.T

    def cached_tokens():
        return decode.generate(model, params, prompt, n, key=jax.random.PRNGKey(0), temperature=0.0)

    a, b = np.asarray(cached_tokens()), np.asarray(recompute(params, prompt))
    agree = float((a == b).mean())
    return (lambda: jax.block_until_ready(cached_tokens()),
            lambda: jax.block_until_ready(recompute(params, prompt)), agree)


BUILDERS = {
    "jaxseq": jaxseq_trainer,
    # the two measured fixes undone, one at a time:
    "jaxseq-unblocked": lambda act: jaxseq_trainer(act, causal_block=0),    # one masked T x T product
    "jaxseq-glibc": jaxseq_trainer,                                         # keep_freed_memory not called
    "flax": flax_trainer,
    "torch": torch_trainer,
}


def _worker(conn, name: str, activation: str):
    if name in ("jaxseq", "jaxseq-unblocked", "generation"):
        from jaxseq.memory import keep_freed_memory
        keep_freed_memory()               # as `jaxseq train --model transformer` does (jaxseq/memory.py)
    if name == "generation":
        cached, recompute, agree = generation_runners(activation)
        runs = {"cached": cached, "recompute": recompute}
        conn.send({"agree": agree})
    else:
        run, peak = BUILDERS[name](activation)
        t = time.perf_counter()
        for _ in range(2):
            run()
        conn.send({"warmup_s": time.perf_counter() - t, "peak": peak()})
        runs = {"train": run}
    while True:
        msg = conn.recv()
        if msg is None:
            break
        what, n = msg
        if what == "peak":
            conn.send(peak())
            continue
        times = []
        for _ in range(n):
            t = time.perf_counter()
            runs[what]()
            times.append(time.perf_counter() - t)
        conn.send(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="training steps per contestant per round")
    parser.add_argument("--contestants", nargs="+", default=["jaxseq", "flax", "torch"], choices=list(BUILDERS))
    parser.add_argument("--activation", default="relu", choices=("relu", "gelu"))
    parser.add_argument("--gen-rounds", type=int, default=3, help="generation rounds (0: skip)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="FRACTION",
                        help="start each round only when the CPUs are less busy than this (0: never wait)")
    parser.add_argument("--idle-timeout", type=float, default=120.0, help="seconds to wait for idle CPUs")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    workers = {}
    for name in args.contestants + (["generation"] if args.gen_rounds else []):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, name, args.activation), daemon=True)
        proc.start()
        workers[name] = (parent, proc, parent.recv())
    load = os.getloadavg()
    flops = model_flops_per_step()
    tokens = B * T
    rates = {name: [] for name in args.contestants}
    fastest = {name: math.inf for name in args.contestants}
    peaks = {name: [workers[name][2]["peak"]] for name in args.contestants}
    idle_turns = 0
    for r in range(args.rounds):
        order = args.contestants[r % len(args.contestants):] + args.contestants[:r % len(args.contestants)]
        for name in order:                    # rotated each round: nobody always runs first
            if args.wait_idle:
                idle_turns += wait_idle(args.wait_idle, args.idle_timeout)
            conn = workers[name][0]
            conn.send(("train", args.steps))
            times = conn.recv()
            rates[name].append(tokens * len(times) / sum(times))
            fastest[name] = min(fastest[name], min(times))
    for name in args.contestants:
        workers[name][0].send(("peak", 0))
        peaks[name].append(workers[name][0].recv())
    gen = {"cached": [], "recompute": []}
    if args.gen_rounds:
        conn = workers["generation"][0]
        for _ in range(args.gen_rounds):
            if args.wait_idle:
                wait_idle(args.wait_idle, args.idle_timeout)
            for what in gen:
                conn.send((what, 1))
                gen[what].append((GEN_LEN - 1) / conn.recv()[0])
    load_after = os.getloadavg()
    for conn, proc, _ in workers.values():
        conn.send(None)
        proc.join()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; load average {load[0]:.2f} before, "
          f"{load_after[0]:.2f} after; activation {args.activation}")
    if args.wait_idle:
        print(f"{idle_turns} of {args.rounds * len(args.contestants)} turns started on idle CPUs "
              f"(< {100 * args.wait_idle:.0f}% busy for 1 s)")
    per_token = jaxseq_flops_per_token()
    jax_peak = max(max(peaks[n]) for n in args.contestants if n.startswith("jaxseq") or n == "flax")
    print(f"model FLOPs per training step: {flops / 1e9:.2f} GFLOP ({tokens} tokens); jaxseq's count "
          f"(causal attention at half): {per_token * tokens / 1e9:.2f} GFLOP; MFU against the JAX "
          f"worker's measured peak {jax_peak:.0f} GFLOP/s\n")
    ref = statistics.median(rates["torch"]) if "torch" in rates else None
    print("| contestant | tokens/s median | best step | vs torch (medians) | vs torch (median of rounds) "
          "| GFLOP/s median | matmul peak GFLOP/s | % of peak | MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.contestants:
        med, best = statistics.median(rates[name]), tokens / fastest[name]
        gflops = med / tokens * flops / 1e9
        peak = max(peaks[name])
        rel = f"{med / ref:.2f}x" if ref else "-"
        # each round's ratio compares two turns taken seconds apart, so a slow spell of the host cancels
        paired = (f"{statistics.median(a / b for a, b in zip(rates[name], rates['torch'])):.2f}x"
                  if ref else "-")
        print(f"| {name} | {med:,.0f} | {best:,.0f} | {rel} | {paired} | {gflops:.1f} | {peak:.0f} | "
              f"{100 * gflops / peak:.0f}% | {100 * med * per_token / (jax_peak * 1e9):.1f}% |")
    print("\nper-round tokens/s:", {k: [round(x) for x in v] for k, v in rates.items()})
    if args.gen_rounds:
        c, r = statistics.median(gen["cached"]), statistics.median(gen["recompute"])
        print(f"\ngeneration, {GEN_LEN - 1} tokens, batch 1 (greedy outputs agree on "
              f"{100 * workers['generation'][2]['agree']:.1f}% of tokens):")
        print("| decoding | tokens/s median | best |\n|---|---|---|")
        print(f"| cached (prefill + decode_step) | {c:,.0f} | {max(gen['cached']):,.0f} |")
        print(f"| recompute the full prefix | {r:,.0f} | {max(gen['recompute']):,.0f} |")
        print(f"\ncached / recompute: {c / r:.1f}x")


if __name__ == "__main__":
    main()
