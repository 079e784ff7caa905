"""GRU language-model training and generation speed, side by side in one run.

Training throughput (tokens/s) of one full step (forward, backward, clipped
Adam update, one-hot inputs, output layer) for
  * ``jaxseq``: jaxseq's GRU language model through jaxseq's own train step
    (``custom``: hand-written BPTT, the default; ``autodiff``: JAX's), in both
    GRU forms (reset after the recurrent product, cuDNN's; reset before, the notes'),
  * ``flax``: Flax's ``nn.RNN(nn.GRUCell)`` with the same input, output layer
    and optax chain, in a jitted step,
  * ``torch``: PyTorch's ``nn.GRU`` (when torch is installed),
on D2L's size (vocab 28, batch 32, seq 35, hidden 256) and a larger one
(vocab 96, batch 64, seq 128, hidden 512).

Generation speed (characters/s, batch 1, hidden 256) of jaxseq's on-device
``lax.scan`` sampler (``decode.generate``) against a Python loop around a
jitted step, and against PyTorch's eager sampling loop.

Each contestant runs in its own process and they take turns (benchmarks/harness.py);
reported are the medians over rounds and the median of the per-round ratios.
MFU is every contestant's tokens/s times jaxseq's analytic FLOPs per token of
this GRU LM (``jaxseq.flops``: matmuls only, backward = 2x forward), over the
float32 matmul peak measured in this process after the races
(``jaxseq.hardware.measure_peak``: the best 1024^3 product).

    python benchmarks/bench_rnn.py [--rounds 5] [--steps 10] [--configs small large] [--idle 0.15]
                                   [--skip-generation] [--only-gru-forms]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from harness import race

CONFIGS = {"small": dict(vocab=28, batch=32, seq=35, hidden=256),
           "large": dict(vocab=96, batch=64, seq=128, hidden=512)}
GEN_VOCAB, GEN_HIDDEN = 28, 256


def make_batches(cfg, n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.integers(0, cfg["vocab"], size=(cfg["batch"], cfg["seq"] + 1)).astype(np.int32)
        out.append({"inputs": x[:, :-1], "targets": x[:, 1:],
                    "weights": np.ones((cfg["batch"], cfg["seq"]), np.float32)})
    return out


# -- training contestants: each builder returns run(), which does `steps` steps and blocks -------

def jaxseq_trainer(cfg, steps, backward, reset="after", **flags):
    import jax
    from jaxseq import parallel, train
    from jaxseq.tasks.lm import build_lm
    from jaxseq.optim import OptimConfig, make_optimizer

    mesh = parallel.make_mesh(1)
    model = build_lm("gru", cfg["vocab"], hidden=cfg["hidden"], backward=backward, gru_reset=reset, **flags)
    tx = make_optimizer(OptimConfig(optimizer="adam", lr=1e-3, clip=1.0), 1000)
    batches = [parallel.shard_batch(b, mesh) for b in make_batches(cfg, 4)]
    holder = {"state": train.create_state(model, tx, make_batches(cfg, 1)[0], 0, mesh)}
    step = train.make_train_step(model, tx, shardings=(train.state_shardings(holder["state"]),
                                                       parallel.batch_sharding(mesh)))

    def run():
        s = holder["state"]
        for i in range(steps):
            s, m = step(s, batches[i % 4])
        jax.block_until_ready(m["loss"])
        holder["state"] = s
    return run


def flax_trainer(cfg, steps):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    class FlaxGRULM(nn.Module):
        @nn.compact
        def __call__(self, tokens):
            hs = nn.RNN(nn.GRUCell(cfg["hidden"]))(jax.nn.one_hot(tokens, cfg["vocab"]))
            return nn.Dense(cfg["vocab"])(hs)

    model = FlaxGRULM()
    batches = [{k: jnp.asarray(v) for k, v in b.items()} for b in make_batches(cfg, 4)]
    params = model.init(jax.random.PRNGKey(0), batches[0]["inputs"])["params"]
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))

    @jax.jit
    def step(params, opt_state, batch):
        def loss_fn(p):
            logits = model.apply({"params": p}, batch["inputs"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    holder = {"p": params, "o": tx.init(params)}

    def run():
        p, o = holder["p"], holder["o"]
        for i in range(steps):
            p, o, loss = step(p, o, batches[i % 4])
        jax.block_until_ready(loss)
        holder.update(p=p, o=o)
    return run


def torch_gru_lm(vocab: int, hidden: int):
    """PyTorch's contestant: one-hot inputs -> ``nn.GRU`` -> ``nn.Linear`` (the jaxseq GRU LM's shape)."""
    import torch

    class TorchGRULM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.GRU(vocab, hidden, batch_first=True)
            self.out = torch.nn.Linear(hidden, vocab)

        def forward(self, tokens):
            hs, _ = self.rnn(torch.nn.functional.one_hot(tokens, vocab).float())
            return self.out(hs)

    return TorchGRULM()


def torch_trainer(cfg, steps):
    import torch

    torch.manual_seed(0)
    V, H = cfg["vocab"], cfg["hidden"]

    model = torch_gru_lm(V, H)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [{k: torch.from_numpy(v.astype(np.int64) if v.dtype == np.int32 else v) for k, v in b.items()}
               for b in make_batches(cfg, 4)]

    def run():
        for i in range(steps):
            b = batches[i % 4]
            loss = torch.nn.functional.cross_entropy(model(b["inputs"]).reshape(-1, V), b["targets"].reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return run


# -- generation contestants: each run() generates `length` characters --------------------------

def _gen_model():
    import jax.numpy as jnp
    from jaxseq import train
    from jaxseq.tasks.lm import build_lm
    model = build_lm("gru", GEN_VOCAB, hidden=GEN_HIDDEN)
    params = train.init_params(model, {"inputs": np.zeros((1, 4), np.int32)}, 0)
    return model, params, jnp.zeros((1, 4), jnp.int32)


def jaxseq_on_device(length):
    import jax
    from jaxseq import decode
    model, params, prefix = _gen_model()
    key = jax.random.PRNGKey(0)

    def run():
        np.asarray(decode.generate(model, params, prefix, length, key=key, temperature=1.0)).tolist()
    return run


def jax_python_loop(length):
    import jax
    import jax.numpy as jnp
    from jaxseq import decode
    model, params, prefix = _gen_model()
    key = jax.random.PRNGKey(0)
    init = jax.jit(lambda p, x: model.apply({"params": p}, {"inputs": x}, method="decode_init"))

    @jax.jit
    def step(p, state, token, k):
        logits, state = model.apply({"params": p}, state, token, method="decode_step")
        return decode.sample_logits(k, logits, 1.0), state

    def run():
        state, token, out = init(params, prefix[:, :-1]), prefix[:, -1], []
        for i in range(length):
            token, state = step(params, state, token, jax.random.fold_in(key, i))
            out.append(token)
        np.asarray(jnp.concatenate(out)).tolist()
    return run


def torch_eager_loop(length):
    import torch
    torch.manual_seed(0)
    gru = torch.nn.GRU(GEN_VOCAB, GEN_HIDDEN, batch_first=True)
    lin = torch.nn.Linear(GEN_HIDDEN, GEN_VOCAB)

    @torch.no_grad()
    def run():
        h, token, out = None, torch.zeros(1, 1, dtype=torch.long), []
        for _ in range(length):
            y, h = gru(torch.nn.functional.one_hot(token, GEN_VOCAB).float(), h)
            token = torch.multinomial(torch.softmax(lin(y[:, -1]), -1), 1)
            out.append(token)
        torch.cat(out).tolist()
    return run


def _have_torch() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def _table(title, seconds, work, unit, columns, mfu=None):
    """``mfu``: ``(FLOPs per unit of work, peak FLOP/s)`` adds an MFU column."""
    rates = {k: [work / s for s in v] for k, v in seconds.items()}
    print(f"\n## {title}\n")
    extra = " MFU |" if mfu else ""
    print(f"| contestant | {unit} (median) |" + "".join(f" vs {c} |" for c in columns) + extra)
    print("|---|---|" + "---|" * len(columns) + ("---|" if mfu else ""))
    for name, r in rates.items():
        ratios = [f"{statistics.median(a / b for a, b in zip(r, rates[c])):.2f}x" if c in rates else "n/a"
                  for c in columns]
        if mfu:
            ratios.append(f"{100 * statistics.median(r) * mfu[0] / mfu[1]:.1f}%")
        print(f"| {name} | {statistics.median(r):,.0f} |" + "".join(f" {x} |" for x in ratios))
    sys.stdout.flush()


def gru_flops_per_token(cfg) -> float:
    """jaxseq's analytic training FLOPs per token of the benchmarked GRU LM (one-hot inputs)."""
    from jaxseq.tasks import lm
    run = lm.TASK.resolve({"model": "gru", "hidden": cfg["hidden"], "batch_size": cfg["batch"],
                           "seq_len": cfg["seq"]}, warn_unused=False)
    return run.spec.flops(run, (cfg["vocab"],), {"inputs": (cfg["batch"], cfg["seq"])}).per_token


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["small", "large"], choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=10, help="training steps per turn (small config)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gen-length", type=int, default=500)
    parser.add_argument("--idle", type=float, default=0.0,
                        help="start each turn only when the CPUs are less busy than this fraction (0: never wait)")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--only-gru-forms", action="store_true",
                        help="race only jaxseq's GRU forms and Flax (the reset-before/after comparison)")
    args = parser.parse_args()
    torch_ok = _have_torch()
    import jax
    print(f"jax {jax.__version__}, torch {'installed' if torch_ok else 'not installed'}, "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}")
    results = []
    for name in args.configs:
        cfg = CONFIGS[name]
        steps = args.steps if name == "small" else max(2, args.steps // 4)
        contestants = {"jaxseq GRU (custom BPTT)": (jaxseq_trainer, (cfg, steps, "custom")),
                       "jaxseq GRU (autodiff)": (jaxseq_trainer, (cfg, steps, "autodiff")),
                       "jaxseq GRU reset-before (custom BPTT)": (jaxseq_trainer, (cfg, steps, "custom", "before")),
                       "jaxseq GRU reset-before (autodiff)": (jaxseq_trainer, (cfg, steps, "autodiff", "before")),
                       "Flax nn.RNN(GRUCell)": (flax_trainer, (cfg, steps))}
        if torch_ok and not args.only_gru_forms:
            contestants["PyTorch nn.GRU"] = (torch_trainer, (cfg, steps))
        if args.only_gru_forms:
            del contestants["jaxseq GRU (autodiff)"]
        results.append((name, cfg, steps, race(contestants, rounds=args.rounds, idle=args.idle)))
    from jaxseq.hardware import measure_peak
    peak = measure_peak("float32")
    print(f"measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    for name, cfg, steps, seconds in results:
        _table(f"training, {name}: vocab {cfg['vocab']}, batch {cfg['batch']}, seq {cfg['seq']}, hidden "
               f"{cfg['hidden']} ({args.rounds} rounds of {steps} steps; {gru_flops_per_token(cfg) / 1e6:.2f} "
               "MFLOP per token)", seconds, cfg["batch"] * cfg["seq"] * steps, "tokens/s",
               ["Flax nn.RNN(GRUCell)", "PyTorch nn.GRU"], mfu=(gru_flops_per_token(cfg), peak))
    if not args.skip_generation:
        contestants = {"jaxseq on-device lax.scan": (jaxseq_on_device, (args.gen_length,)),
                       "Python loop around a jitted step": (jax_python_loop, (args.gen_length,))}
        if torch_ok:
            contestants["PyTorch eager loop"] = (torch_eager_loop, (args.gen_length,))
        seconds = race(contestants, rounds=args.rounds, idle=args.idle)
        ours = "jaxseq on-device lax.scan"
        inverted = {k: [s / w for s, w in zip(seconds[ours], v)] for k, v in seconds.items()}
        _table(f"generation: GRU hidden {GEN_HIDDEN}, vocab {GEN_VOCAB}, batch 1, {args.gen_length} characters "
               "(ratios: how many times faster the on-device sampler is)", seconds, args.gen_length, "chars/s", [])
        print("\n| on-device sampler vs | speed-up (median of rounds) |\n|---|---|")
        for k, v in inverted.items():
            if k != ours:
                print(f"| {k} | {statistics.median(1 / x for x in v):.2f}x |")


if __name__ == "__main__":
    main()
