"""GRU language-model training and generation speed, side by side in one process.

Training throughput (tokens/s) of one full step (forward, backward, clipped
Adam update) for
  * jaxseq's GRU language model through jaxseq's own train step
    (``backward=custom``: hand-written BPTT; ``backward=autodiff``: JAX's),
  * Flax's ``nn.RNN(nn.GRUCell)`` with the same one-hot input, output layer
    and optax chain,
  * PyTorch's ``nn.GRU`` (when torch is installed),
on D2L's size (vocab 28, batch 32, seq 35, hidden 256) and a larger one
(vocab 96, batch 64, seq 128, hidden 512). The contestants are timed in
interleaved sweeps (A B C, A B C, ...) and the median of the sweeps is
reported, so a noisy neighbour slows all of them alike.

Generation speed (characters/s) of jaxseq's on-device ``lax.scan`` sampler
against a Python loop around a jitted step, and PyTorch's eager loop.

    python benchmarks/bench_rnn.py [--sweeps 3] [--steps 20] [--configs small large]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseq import decode, parallel, train
from jaxseq.models.lm import LMModelConfig, build_lm
from jaxseq.optim import OptimConfig, make_optimizer

try:
    import torch
except ImportError:  # optional
    torch = None

CONFIGS = {"small": dict(vocab=28, batch=32, seq=35, hidden=256),
           "large": dict(vocab=96, batch=64, seq=128, hidden=512)}


def make_batches(cfg, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.integers(0, cfg["vocab"], size=(cfg["batch"], cfg["seq"] + 1)).astype(np.int32)
        out.append({"inputs": x[:, :-1], "targets": x[:, 1:], "weights": np.ones((cfg["batch"], cfg["seq"]), np.float32)})
    return out


# -- contestants: each returns a callable that runs `steps` training steps and blocks --------

def jaxseq_runner(cfg, backward):
    mesh = parallel.make_mesh(1)
    model = build_lm(LMModelConfig(model="gru", hidden=cfg["hidden"], backward=backward), cfg["vocab"])
    optim = OptimConfig(optimizer="adam", lr=1e-3, clip=1.0)
    tx = make_optimizer(optim, 1000)
    batches = [parallel.shard_batch(b, mesh) for b in make_batches(cfg, 4)]
    state = train.create_state(model, tx, make_batches(cfg, 1)[0], 0, mesh)
    step = train.make_train_step(model, tx, shardings=(train.state_shardings(state), parallel.batch_sharding(mesh)))
    holder = {"state": state}

    def run(steps):
        s = holder["state"]
        for i in range(steps):
            s, m = step(s, batches[i % 4])
        jax.block_until_ready(m["loss"])
        holder["state"] = s
    return run


class FlaxGRULM(nn.Module):
    vocab: int
    hidden: int

    @nn.compact
    def __call__(self, tokens):
        x = jax.nn.one_hot(tokens, self.vocab)
        hs = nn.RNN(nn.GRUCell(self.hidden))(x)
        return nn.Dense(self.vocab)(hs)


def flax_runner(cfg):
    model = FlaxGRULM(cfg["vocab"], cfg["hidden"])
    batches = [{k: jnp.asarray(v) for k, v in b.items()} for b in make_batches(cfg, 4)]
    params = model.init(jax.random.PRNGKey(0), batches[0]["inputs"])["params"]
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            logits = model.apply({"params": p}, batch["inputs"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    holder = {"p": params, "o": opt_state}

    def run(steps):
        p, o = holder["p"], holder["o"]
        for i in range(steps):
            p, o, loss = step(p, o, batches[i % 4])
        jax.block_until_ready(loss)
        holder.update(p=p, o=o)
    return run


def torch_runner(cfg):
    torch.manual_seed(0)
    V, H = cfg["vocab"], cfg["hidden"]

    class TorchGRULM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(V, H, batch_first=True)
            self.out = torch.nn.Linear(H, V)

        def forward(self, tokens):
            x = torch.nn.functional.one_hot(tokens, V).float()
            hs, _ = self.rnn(x)
            return self.out(hs)

    model = TorchGRULM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [{k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.int32 else v) for k, v in b.items()}
               for b in make_batches(cfg, 4)]

    def run(steps):
        for i in range(steps):
            b = batches[i % 4]
            logits = model(b["inputs"])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), b["targets"].reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return run


def bench_training(name, cfg, steps, sweeps):
    contestants = {"jaxseq GRU (custom BPTT)": jaxseq_runner(cfg, "custom"),
                   "jaxseq GRU (autodiff)": jaxseq_runner(cfg, "autodiff"),
                   "Flax nn.RNN(GRUCell)": flax_runner(cfg)}
    if torch is not None:
        contestants["PyTorch nn.GRU"] = torch_runner(cfg)
    for run in contestants.values():   # compile and warm up
        run(3)
    times = {k: [] for k in contestants}
    for _ in range(sweeps):
        for k, run in contestants.items():
            t = time.perf_counter()
            run(steps)
            times[k].append(time.perf_counter() - t)
    tokens = cfg["batch"] * cfg["seq"] * steps
    rates = {k: tokens / statistics.median(v) for k, v in times.items()}
    base = rates["Flax nn.RNN(GRUCell)"]
    print(f"\n## training, {name} config: vocab {cfg['vocab']}, batch {cfg['batch']}, seq {cfg['seq']}, "
          f"hidden {cfg['hidden']} (median of {sweeps} sweeps of {steps} steps)\n")
    print("| model | tokens/s | vs Flax | vs PyTorch |")
    print("|---|---|---|---|")
    torch_rate = rates.get("PyTorch nn.GRU")
    for k, r in rates.items():
        vs_torch = f"{r / torch_rate:.2f}x" if torch_rate else "n/a"
        print(f"| {k} | {r:,.0f} | {r / base:.2f}x | {vs_torch} |")
    sys.stdout.flush()
    return rates


def bench_generation(length, sweeps):
    cfg = CONFIGS["small"]
    model = build_lm(LMModelConfig(model="gru", hidden=cfg["hidden"]), cfg["vocab"])
    params = train.init_params(model, {"inputs": np.zeros((1, 4), np.int32)}, 0)
    prefix = jnp.zeros((1, 4), jnp.int32)
    key = jax.random.PRNGKey(0)

    def on_device():
        jax.block_until_ready(decode.generate(model, params, prefix, length, key=key, temperature=1.0))

    step = jax.jit(lambda p, s, t: model.apply({"params": p}, s, t, method="decode_step"))
    sample = jax.jit(lambda k, logits: decode.sample_logits(k, logits, 1.0))
    init = jax.jit(lambda p, x: model.apply({"params": p}, {"inputs": x}, method="decode_init"))

    def python_loop():
        state = init(params, prefix[:, :-1])
        token = prefix[:, -1]
        out = []
        for i in range(length):
            logits, state = step(params, state, token)
            token = sample(jax.random.fold_in(key, i), logits)
            out.append(token)
        np.asarray(jnp.stack(out))

    runners = {"jaxseq on-device lax.scan": on_device, "Python loop around jitted step": python_loop}
    if torch is not None:
        gru = torch.nn.GRU(cfg["vocab"], cfg["hidden"], batch_first=True)
        lin = torch.nn.Linear(cfg["hidden"], cfg["vocab"])

        @torch.no_grad()
        def torch_loop():
            h = None
            token = torch.zeros(1, 1, dtype=torch.long)
            out = []
            for _ in range(length):
                x = torch.nn.functional.one_hot(token, cfg["vocab"]).float()
                y, h = gru(x, h)
                probs = torch.softmax(lin(y[:, -1]), -1)
                token = torch.multinomial(probs, 1)
                out.append(int(token))
        runners["PyTorch eager loop"] = torch_loop
    for run in runners.values():
        run()
    times = {k: [] for k in runners}
    for _ in range(sweeps):
        for k, run in runners.items():
            t = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t)
    rates = {k: length / statistics.median(v) for k, v in times.items()}
    print(f"\n## generation: GRU hidden {cfg['hidden']}, vocab {cfg['vocab']}, {length} characters, batch 1\n")
    print("| sampler | chars/s | jaxseq on-device vs this |")
    print("|---|---|---|")
    ours = rates["jaxseq on-device lax.scan"]
    for k, r in rates.items():
        print(f"| {k} | {r:,.0f} | {ours / r:.2f}x |")
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["small", "large"], choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sweeps", type=int, default=3)
    parser.add_argument("--gen-length", type=int, default=500)
    parser.add_argument("--skip-generation", action="store_true")
    args = parser.parse_args()
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, "
          f"torch {torch.__version__ if torch else 'not installed'}, {os.cpu_count()} CPU cores")
    for name in args.configs:
        steps = args.steps if name == "small" else max(3, args.steps // 4)
        bench_training(name, CONFIGS[name], steps, args.sweeps)
    if not args.skip_generation:
        bench_generation(args.gen_length, args.sweeps)


if __name__ == "__main__":
    main()
