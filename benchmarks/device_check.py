"""jaxseq measured on one accelerator in one short run: the python behind ``benchmarks/device_check.sh``.

Sections (each runs in its own process with its own time cap, so a crash,
an out-of-memory or a hang in one prints its error in the table and the
others still run; a global budget skips what no longer fits):

  env                 versions, the device, measured bf16 / float32 matmul rates
  transformer         decoder-only Transformer training tokens/s and MFU (jaxseq's train step, --dtype
                      bfloat16 policy: float32 parameters and loss, bf16 compute), seq 1,024 and 4,096,
                      --attention-impl auto, and seq 1,024 with the hand-written attention (jaxseq);
                      d_model 1,024, 16 heads, 8 pre-norm blocks (--scan-layers: one compiled block)
  torch-transformer   the same model in PyTorch (bf16 autocast, F.scaled_dot_product_attention(is_causal),
                      fused AdamW), same tokens per step, same analytic FLOP count for MFU
  gru                 GRU LM training tokens/s: jaxseq (hand-written BPTT with the platform's scan unroll and
                      with unroll 8; JAX's autodiff) vs Flax nn.RNN(GRUCell) vs PyTorch nn.GRU (cuDNN)
  mingru              minGRU one-layer training step time, associative vs sequential scan, T = 512 .. 16,384
  generate            cached generation tokens/s (Transformer batch 1 and 32, GRU batch 1)
  attention           causal attention forward+backward time per jaxseq impl (jaxseq, xla, cudnn) and
                      PyTorch SDPA, bf16, seq 1,024 and 4,096; each impl's largest difference from xla
  lstm                one LSTM layer's training step: jaxseq's hand-written BPTT vs cuDNN's LSTM through
                      jax.experimental.rnn (the measurement behind adopting it or not)

    python benchmarks/device_check.py [--cpu-smoke] [--budget 465] [--sections env gru ...] [--out DIR]

``--cpu-smoke`` runs the same code at tiny sizes (a minute on a CPU; PyTorch
rows are skipped with a note where torch is absent). Without it, a JAX that
sees no GPU/TPU stops the run after ``env`` (the full sizes would take hours
on a CPU). The table is printed last and written to ``DIR/device_check.md``
and ``DIR/device_check.json`` (``DIR``: ``--out``, else ``$OUT`` if set);
each section's log is appended to ``DIR/device_check_logs.txt`` (one file, written as sections end).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

# name -> seconds allowed (full run); the caps add up to the default budget
CAPS = {"env": 40, "transformer": 110, "torch-transformer": 60, "gru": 70, "mingru": 70, "generate": 45,
        "attention": 40, "lstm": 35}
SMOKE_CAP = 60
BUDGET = 470

SIZES = {
    "full": {
        "transformer": dict(vocab=256, d_model=1024, heads=16, layers=8, ffn=4096,
                            runs=((1024, 16, "auto"), (4096, 4, "auto"), (1024, 16, "jaxseq"))),
        "gru": dict(vocab=96, batch=128, seq=256, hidden=1024),
        "mingru": dict(hidden=512, tokens=65536, lengths=(512, 1024, 2048, 4096, 8192, 16384)),
        "generate": dict(length=512, batches=(1, 32), gru_hidden=1024, gru_length=1000),
        "attention": dict(batch=4, heads=16, head_dim=64, lengths=(1024, 4096), dtype="bfloat16"),
        "lstm": dict(batch=128, seq=256, hidden=1024),
        "target_s": 1.0, "repeats": 3,
    },
    "smoke": {
        "transformer": dict(vocab=32, d_model=32, heads=2, layers=1, ffn=64,
                            runs=((64, 2, "auto"), (128, 1, "auto"), (64, 2, "jaxseq"))),
        "gru": dict(vocab=16, batch=4, seq=16, hidden=32),
        "mingru": dict(hidden=16, tokens=1024, lengths=(64, 256)),
        "generate": dict(length=16, batches=(1, 4), gru_hidden=32, gru_length=16),
        "attention": dict(batch=1, heads=2, head_dim=16, lengths=(64, 128), dtype="float32"),
        "lstm": dict(batch=4, seq=16, hidden=32),
        "target_s": 0.05, "repeats": 2,
    },
}


# -- the worker side: one section, rows appended to a JSON-lines file as they are measured -------

class Rows:
    """Appends one JSON line per measured row (so a section killed by its cap keeps what it finished)."""

    def __init__(self, path: str, section: str):
        self.path, self.section = path, section

    def add(self, what: str, value: float | str | None, unit: str = "", note: str = "", **extra) -> None:
        row = {"section": self.section, "what": what, "value": value, "unit": unit, "note": note, **extra}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{self.section}] {what}: {value} {unit} {note}", flush=True)

    def error(self, what: str, exc: BaseException) -> None:
        traceback.print_exc()
        text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        self.add(what, None, note="ERROR " + text[:300])


def seconds_per_call(run, target: float, repeats: int) -> float:
    """Median seconds of one ``run()`` (which blocks until its work is done), after a warm-up call."""
    run()
    t = time.perf_counter()
    run()
    once = time.perf_counter() - t
    n = max(1, min(200, int(target / max(once, 1e-6))))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            run()
        times.append((time.perf_counter() - t) / n)
    return statistics.median(times)


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def torch_device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def flops_text(rate: float) -> str:
    """``123 TFLOP/s`` or ``45.6 GFLOP/s``."""
    return f"{rate / 1e12:.0f} TFLOP/s" if rate >= 1e12 else f"{rate / 1e9:.1f} GFLOP/s"


def jax_peak(dtype: str, size: int = 1024) -> tuple[float, str]:
    """``(peak FLOP/s per device, where it comes from)``: the vendor table for a known accelerator
    (jaxseq.hardware), else a matmul measured here."""
    from jaxseq import hardware
    kind = hardware.device_kind()
    peak = hardware.table_peak(kind, dtype)
    if peak:
        return peak, f"{kind} datasheet {dtype}"
    return hardware.measure_peak(dtype, size=size), f"measured {dtype} matmul"


def section_env(rows: Rows, size: dict, smoke: bool) -> None:
    import platform
    import jax
    import jax.numpy as jnp
    rows.add("python / platform", f"{platform.python_version()} / {platform.machine()}")
    import jaxlib
    rows.add("jax / jaxlib", f"{jax.__version__} / {jaxlib.__version__}")
    import flax
    import optax
    rows.add("flax / optax", f"{flax.__version__} / {optax.__version__}")
    rows.add("backend", jax.default_backend(), note=f"{jax.device_count()} device(s): {jax.devices()[0].device_kind}",
             backend=jax.default_backend())
    if have_torch():
        import torch
        rows.add("torch", torch.__version__, note=("cuda " + str(torch.version.cuda) + ", "
                                                   + torch.cuda.get_device_name(0)) if torch.cuda.is_available()
                 else "no CUDA device")
    else:
        rows.add("torch", "absent", note="PyTorch rows are skipped")
    n = 512 if smoke else 8192
    for dtype in ("bfloat16", "float32"):
        try:
            key = jax.random.PRNGKey(0)
            a = jax.random.normal(key, (n, n), dtype)
            b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
            f = jax.jit(lambda a, b: a @ b)
            s = seconds_per_call(lambda: f(a, b).block_until_ready(), 0.2 if smoke else 0.5, 5)
            rows.add(f"JAX {n}^3 matmul {dtype}", round(2 * n ** 3 / s / 1e12, 2), "TFLOP/s",
                     note="random data, default precision")
        except Exception as exc:        # noqa: BLE001 -- reported in the table
            rows.error(f"JAX matmul {dtype}", exc)
    del jnp


def _lm_batches(vocab: int, batch: int, seq: int, n: int = 2, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.integers(0, vocab, size=(batch, seq + 1)).astype(np.int32)
        out.append({"inputs": x[:, :-1], "targets": x[:, 1:], "weights": np.ones((batch, seq), np.float32)})
    return out


def _transformer_flags(cfg: dict, seq: int, batch: int, impl: str) -> dict:
    return {"model": "transformer", "layers": cfg["layers"], "d_model": cfg["d_model"], "heads": cfg["heads"],
            "ffn": cfg["ffn"], "ffn_activation": "gelu", "norm": "pre", "positional": "learned",
            "seq_len": seq, "batch_size": batch, "dtype": "bfloat16", "dropout": 0.0, "attention_impl": impl,
            "scan_layers": True}


def _transformer_flops_per_token(cfg: dict, seq: int, batch: int) -> float:
    from jaxseq.tasks import lm
    flags = _transformer_flags(cfg, seq, batch, "jaxseq")
    run = lm.TASK.resolve(flags, warn_unused=False)
    return run.spec.flops(run, (cfg["vocab"],), {"inputs": (batch, seq)}).per_token


def section_transformer(rows: Rows, size: dict, smoke: bool) -> None:
    import jax
    from jaxseq import parallel, train
    from jaxseq.optim import OptimConfig, make_optimizer
    from jaxseq.tasks import lm
    cfg = size["transformer"]
    peak, source = jax_peak("bfloat16", 256 if smoke else 1024)
    for seq, batch, impl in cfg["runs"]:
        what = f"jaxseq Transformer train, seq {seq}, batch {batch}, --attention-impl {impl}"
        try:
            run = lm.TASK.resolve(_transformer_flags(cfg, seq, batch, impl), warn_unused=False)
            model = run.spec.build(run, (cfg["vocab"],))
            resolved = getattr(model, "attention_impl", impl)
            mesh = parallel.make_mesh(1)
            tx = make_optimizer(OptimConfig(optimizer="adamw", lr=3e-4, clip=1.0), 1000)
            host = _lm_batches(cfg["vocab"], batch, seq)
            batches = [parallel.shard_batch(b, mesh) for b in host]
            holder = {"state": train.create_state(model, tx, host[0], 0, mesh)}
            step = train.make_train_step(model, tx, shardings=(train.state_shardings(holder["state"]),
                                                               parallel.batch_sharding(mesh)))
            t0 = time.perf_counter()
            holder["state"], m = step(holder["state"], batches[0])
            jax.block_until_ready(m["loss"])
            compile_s = time.perf_counter() - t0

            def one():
                s, m = step(holder["state"], batches[1])
                jax.block_until_ready(m["loss"])
                holder["state"] = s

            s = seconds_per_call(one, size["target_s"], size["repeats"])
            tokens = batch * seq / s
            per_token = _transformer_flops_per_token(cfg, seq, batch)
            rows.add(what, round(tokens), "tokens/s",
                     note=f"MFU {100 * tokens * per_token / peak:.1f}% of {flops_text(peak)} ({source}); "
                          f"attention {resolved}; step {1e3 * s:.1f} ms; compile {compile_s:.1f} s; "
                          f"loss {float(m['loss']):.3f}",
                     mfu=tokens * per_token / peak, seq=seq)
        except Exception as exc:        # noqa: BLE001
            rows.error(what, exc)


def _torch_gpt(cfg: dict, context: int):
    import torch
    import torch.nn.functional as F

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            d = cfg["d_model"]
            self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
            self.fc1, self.fc2 = torch.nn.Linear(d, cfg["ffn"]), torch.nn.Linear(cfg["ffn"], d)

        def forward(self, x):
            b, t, d = x.shape
            h = cfg["heads"]
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))

    class GPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            d = cfg["d_model"]
            self.tok, self.pos = torch.nn.Embedding(cfg["vocab"], d), torch.nn.Embedding(context, d)
            self.blocks = torch.nn.ModuleList(Block() for _ in range(cfg["layers"]))
            self.ln, self.head = torch.nn.LayerNorm(d), torch.nn.Linear(d, cfg["vocab"])

        def forward(self, tokens):
            x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
            for blk in self.blocks:
                x = blk(x)
            return self.head(self.ln(x))

    return GPT()


def section_torch_transformer(rows: Rows, size: dict, smoke: bool) -> None:
    if not have_torch():
        rows.add("PyTorch Transformer train", None, note="skipped: torch is not installed")
        return
    import torch
    import torch.nn.functional as F
    cfg = size["transformer"]
    dev = torch_device()
    peak = None
    if not smoke or dev.type == "cuda":
        try:
            from jaxseq import hardware
            peak = hardware.table_peak(torch.cuda.get_device_name(0).lower(), "bfloat16") \
                if dev.type == "cuda" else None
        except Exception:               # noqa: BLE001
            peak = None
    seen = set()
    for seq, batch, _ in cfg["runs"]:
        if seq in seen:
            continue
        seen.add(seq)
        what = f"PyTorch Transformer train, seq {seq}, batch {batch}, SDPA is_causal, bf16 autocast"
        try:
            torch.manual_seed(0)
            model = _torch_gpt(cfg, seq).to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1,
                                    fused=dev.type == "cuda")
            data = [{k: torch.from_numpy(v).to(dev) for k, v in b.items()}
                    for b in _lm_batches(cfg["vocab"], batch, seq)]
            data = [{"inputs": b["inputs"].long(), "targets": b["targets"].long()} for b in data]
            dtype = torch.bfloat16

            def one():
                b = data[1]
                with torch.autocast(dev.type, dtype=dtype):
                    logits = model(b["inputs"])
                loss = F.cross_entropy(logits.float().reshape(-1, cfg["vocab"]), b["targets"].reshape(-1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                torch_sync()
                holder["loss"] = loss

            holder = {}
            s = seconds_per_call(one, size["target_s"], size["repeats"])
            tokens = batch * seq / s
            note = f"step {1e3 * s:.1f} ms; eager; loss {float(holder['loss']):.3f}"
            mfu = None
            if peak:
                mfu = tokens * _transformer_flops_per_token(cfg, seq, batch) / peak
                note = f"MFU {100 * mfu:.1f}% (jaxseq's FLOP count); " + note
            rows.add(what, round(tokens), "tokens/s", note=note + f"; device {dev.type}", mfu=mfu, seq=seq)
        except Exception as exc:        # noqa: BLE001
            rows.error(what, exc)


def _torch_gru_trainer(cfg: dict):
    import torch
    import torch.nn.functional as F
    dev = torch_device()
    torch.manual_seed(0)
    V, H = cfg["vocab"], cfg["hidden"]

    from bench_rnn import torch_gru_lm
    model = torch_gru_lm(V, H).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    b = {k: torch.from_numpy(v).to(dev) for k, v in _lm_batches(V, cfg["batch"], cfg["seq"], 1)[0].items()}
    x, y = b["inputs"].long(), b["targets"].long()

    def run():
        loss = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        torch_sync()
    return run, dev.type


def section_gru(rows: Rows, size: dict, smoke: bool) -> None:
    from bench_rnn import flax_trainer, gru_flops_per_token, jaxseq_trainer
    cfg = size["gru"]
    work = cfg["batch"] * cfg["seq"]
    label = f"vocab {cfg['vocab']}, batch {cfg['batch']}, seq {cfg['seq']}, hidden {cfg['hidden']}, float32"
    try:
        per_token = gru_flops_per_token(cfg)
        peak, source = jax_peak("float32", 256 if smoke else 1024)
    except Exception as exc:            # noqa: BLE001
        rows.error("GRU FLOP count", exc)
        per_token, peak, source = None, None, ""
    jax_contestants = {"jaxseq GRU LM (custom BPTT)": lambda: jaxseq_trainer(cfg, 1, "custom"),
                       "Flax nn.RNN(GRUCell)": lambda: flax_trainer(cfg, 1),
                       "jaxseq GRU LM (custom BPTT, --scan-unroll 8)":
                           lambda: jaxseq_trainer(cfg, 1, "custom", scan_unroll=8),
                       "jaxseq GRU LM (autodiff)": lambda: jaxseq_trainer(cfg, 1, "autodiff")}
    order = list(jax_contestants)
    order.insert(2, "PyTorch nn.GRU")           # the three the issue compares first, in case the cap cuts the rest
    for name in order:
        try:
            if name == "PyTorch nn.GRU":
                if not have_torch():
                    rows.add("PyTorch nn.GRU train", None, note="skipped: torch is not installed")
                    continue
                run, dev = _torch_gru_trainer(cfg)
                s = seconds_per_call(run, size["target_s"], size["repeats"])
                rows.add("PyTorch nn.GRU train", round(work / s), "tokens/s",
                         note=f"{label}; device {dev} (cuDNN on CUDA)")
                continue
            s = seconds_per_call(jax_contestants[name](), size["target_s"], size["repeats"])
            note = label
            if per_token and peak:
                note += f"; MFU {100 * work / s * per_token / peak:.2f}% of {flops_text(peak)} ({source})"
            rows.add(f"{name} train", round(work / s), "tokens/s", note=note)
        except Exception as exc:        # noqa: BLE001
            rows.error(f"{name} train", exc)


def section_mingru(rows: Rows, size: dict, smoke: bool) -> None:
    from bench_minrnn import make_runner
    cfg = size["mingru"]
    for steps in cfg["lengths"]:
        batch = max(1, cfg["tokens"] // steps)
        times = {}
        for name in ("mingru (associative scan)", "mingru (sequential scan)"):
            what = f"minGRU layer train step, T {steps}, B {batch}, {name.split('(')[1][:-1]}"
            try:
                compile_s, run = make_runner(name, batch, steps, cfg["hidden"])
                s = seconds_per_call(lambda: run(1), min(size["target_s"], 0.3), size["repeats"])
                times[name] = s
                rows.add(what, round(1e3 * s, 3), "ms/step",
                         note=f"hidden {cfg['hidden']}, float32; compile {compile_s:.1f} s")
            except Exception as exc:    # noqa: BLE001
                rows.error(what, exc)
        if len(times) == 2:
            rows.add(f"minGRU T {steps}: associative / sequential speed-up",
                     round(times["mingru (sequential scan)"] / times["mingru (associative scan)"], 2), "x")


def section_generate(rows: Rows, size: dict, smoke: bool) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxseq import decode, train
    from jaxseq.tasks.lm import build_lm
    gcfg, tcfg = size["generate"], size["transformer"]
    length = gcfg["length"]
    key = jax.random.PRNGKey(0)
    for batch in gcfg["batches"]:
        what = f"jaxseq Transformer cached generation, batch {batch}, {length} tokens"
        try:
            flags = _transformer_flags(tcfg, length + 1, 1, "auto")
            for k in ("model", "seq_len", "batch_size"):
                flags.pop(k)
            model = build_lm("transformer", tcfg["vocab"], seq_len=length + 1, **flags)
            params = train.init_params(model, {"inputs": np.zeros((1, 8), np.int32)}, 0)
            prefix = jnp.zeros((batch, 1), jnp.int32)
            s = seconds_per_call(lambda: np.asarray(decode.generate(model, params, prefix, length, key=key)).tolist(),
                                 size["target_s"], max(2, size["repeats"] - 1))
            rows.add(what, round(batch * length / s), "tokens/s",
                     note=f"d_model {tcfg['d_model']}, {tcfg['layers']} layers, bf16, attention {model.attention_impl}, "
                          f"one lax.scan; {1e3 * s / length:.2f} ms/token")
        except Exception as exc:        # noqa: BLE001
            rows.error(what, exc)
    what = f"jaxseq GRU LM generation, batch 1, {gcfg['gru_length']} tokens"
    try:
        model = build_lm("gru", 96, hidden=gcfg["gru_hidden"])
        params = train.init_params(model, {"inputs": np.zeros((1, 4), np.int32)}, 0)
        prefix = jnp.zeros((1, 1), jnp.int32)
        n = gcfg["gru_length"]
        s = seconds_per_call(lambda: np.asarray(decode.generate(model, params, prefix, n, key=key)).tolist(),
                             size["target_s"], max(2, size["repeats"] - 1))
        rows.add(what, round(n / s), "tokens/s", note=f"hidden {gcfg['gru_hidden']}, float32")
    except Exception as exc:            # noqa: BLE001
        rows.error(what, exc)


def section_attention(rows: Rows, size: dict, smoke: bool) -> None:
    import jax
    import jax.numpy as jnp
    from jaxseq.attention_impl import attend
    cfg = size["attention"]
    dtype = jnp.dtype(cfg["dtype"])
    gpu = jax.default_backend() == "gpu"
    for t in cfg["lengths"]:
        key = jax.random.PRNGKey(t)
        shape = (cfg["batch"], cfg["heads"], t, cfg["head_dim"])
        q, k, v = (jax.random.normal(jax.random.fold_in(key, i), shape, dtype) for i in range(3))
        ref = None
        for impl in ("xla", "cudnn", "jaxseq"):
            what = f"jaxseq causal attention fwd+bwd, T {t}, impl {impl}"
            if impl == "cudnn" and not gpu:
                rows.add(what, None, note=f"skipped: cudnn needs a CUDA GPU (backend {jax.default_backend()})")
                continue
            try:
                def fwd(q, k, v, impl=impl):
                    return attend(q, k, v, causal=True, impl=impl)[0]

                def loss(q, k, v, impl=impl):
                    return jnp.sum(fwd(q, k, v).astype(jnp.float32))
                fwd = jax.jit(fwd)
                grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
                out = fwd(q, k, v).astype(jnp.float32)
                diff = "" if ref is None else f"; max abs diff from xla {float(jnp.max(jnp.abs(out - ref))):.2e}"
                if ref is None:
                    ref = out
                s = seconds_per_call(lambda: jax.block_until_ready(grad(q, k, v)), size["target_s"],
                                     size["repeats"])
                flops = 3 * 2 * 2 * cfg["batch"] * cfg["heads"] * t * t * cfg["head_dim"] / 2   # causal half
                rows.add(what, round(1e3 * s, 3), "ms", note=f"B {cfg['batch']}, H {cfg['heads']}, dh "
                         f"{cfg['head_dim']}, {cfg['dtype']}; {flops_text(flops / s)} (causal half){diff}")
            except Exception as exc:    # noqa: BLE001
                rows.error(what, exc)
        what = f"PyTorch SDPA causal fwd+bwd, T {t}"
        if not have_torch():
            rows.add(what, None, note="skipped: torch is not installed")
            continue
        try:
            import torch
            import torch.nn.functional as F
            dev = torch_device()
            tdtype = torch.bfloat16 if cfg["dtype"] == "bfloat16" else torch.float32
            tq, tk, tv = (torch.randn(shape, device=dev, dtype=tdtype, requires_grad=True) for _ in range(3))

            def one():
                F.scaled_dot_product_attention(tq, tk, tv, is_causal=True).float().sum().backward()
                torch_sync()

            s = seconds_per_call(one, size["target_s"], size["repeats"])
            rows.add(what, round(1e3 * s, 3), "ms", note=f"device {dev.type}")
        except Exception as exc:        # noqa: BLE001
            rows.error(what, exc)


def section_lstm(rows: Rows, size: dict, smoke: bool) -> None:
    """One LSTM layer's training step (loss sum(hs * W), gradients of weights and inputs): jaxseq's
    cells.run (hand-written BPTT) against jax.experimental.rnn.lstm (cuDNN's LSTM on a GPU)."""
    import jax
    import jax.numpy as jnp
    from jax.experimental import rnn
    from jaxseq import cells
    cfg = size["lstm"]
    b, t, h = cfg["batch"], cfg["seq"], cfg["hidden"]
    key = jax.random.PRNGKey(0)
    xs = jax.random.normal(key, (b, t, h), jnp.float32)
    w = jax.random.normal(jax.random.fold_in(key, 1), (b, t, h), jnp.float32)
    note = f"B {b}, T {t}, input = hidden {h}, float32"
    contestants = {
        "jaxseq cells.run(LSTM), hand-written BPTT": (
            cells.LSTM.init(key, h, h), lambda p, x: cells.run(cells.LSTM, p, x)[1]),
        "jax.experimental.rnn.lstm (cuDNN on a GPU)": (
            rnn.init_lstm_weight(key, h, h, 1, False),
            lambda p, x: rnn.lstm(x, jnp.zeros((1, b, h)), jnp.zeros((1, b, h)), p, jnp.full((b,), t, jnp.int32),
                                  h, h, 1, 0.0, False)[0])}
    for name, (params, layer) in contestants.items():
        if "cuDNN" in name and jax.default_backend() != "gpu":
            rows.add(f"LSTM layer train step: {name}", None,
                     note=f"skipped: jax.experimental.rnn runs only on a GPU (backend {jax.default_backend()})")
            continue
        try:
            step = jax.jit(jax.grad(lambda p, x, layer=layer: jnp.sum(layer(p, x) * w), (0, 1)))
            s = seconds_per_call(lambda: jax.block_until_ready(step(params, xs)), size["target_s"], size["repeats"])
            rows.add(f"LSTM layer train step: {name}", round(b * t / s), "tokens/s", note=note)
        except Exception as exc:        # noqa: BLE001
            rows.error(f"LSTM layer train step: {name}", exc)


SECTIONS = {"env": section_env, "transformer": section_transformer, "torch-transformer": section_torch_transformer,
            "gru": section_gru, "mingru": section_mingru, "generate": section_generate,
            "attention": section_attention, "lstm": section_lstm}


def run_section(name: str, result: str, smoke: bool) -> None:
    """Worker entry: run one section, appending its rows to ``result``."""
    rows = Rows(result, name)
    try:
        SECTIONS[name](rows, SIZES["smoke" if smoke else "full"], smoke)
    except Exception as exc:            # noqa: BLE001 -- an import or setup failure of the whole section
        rows.error(f"{name} (setup)", exc)


# -- the driver: sections in child processes, one table ----------------------------------------

def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass                        # a torn last line of a killed worker
    return out


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, (int, float)):
        return f"{value:,.0f}"
    return str(value)


def table(rows: list[dict]) -> str:
    lines = ["| section | what | value | unit | note |", "|---|---|---|---|---|"]
    for r in rows:
        note = str(r.get("note", "")).replace("|", "/")
        lines.append(f"| {r['section']} | {r['what']} | {_fmt(r.get('value'))} | {r.get('unit', '')} | {note} |")
    return "\n".join(lines)


def drive(sections: list[str], smoke: bool, budget: float, out: Path | None) -> list[dict]:
    start = time.time()
    rows: list[dict] = []
    # per-section logs in a temporary folder; with $OUT they are also appended to ONE file there
    # (what comes back from a device machine may be limited to a few files)
    logs = Path(tempfile.mkdtemp(prefix="device_check_logs_"))
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")    # JAX and PyTorch share the GPU
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # compiled programs kept between sections and for a rerun on the same machine (outside $OUT)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jaxseq-device-check-cache"))
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    if smoke:
        env.setdefault("JAX_PLATFORMS", "cpu")
        # tiny programs: compile time dominates, and LLVM's optimisation level 0 compiles them faster
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    if smoke:
        return _drive_smoke(sections, logs, env, out, start)
    caps = [CAPS[name] for name in sections]
    for i, name in enumerate(sections):
        cap = caps[i]
        left = budget - (time.time() - start)
        # a section may use the time earlier sections left unused, as long as every later one keeps its cap
        cap = max(cap, min(left, left - sum(caps[i + 1:])))
        if left < min(cap, 15):
            rows.append({"section": name, "what": "(section)", "value": None, "unit": "",
                         "note": f"skipped: {left:.0f} s of the {budget:.0f} s budget left"})
            continue
        limit = min(cap, left)
        result = logs / f"{name}.jsonl"
        result.unlink(missing_ok=True)
        t0 = time.time()
        print(f"== {name} (cap {limit:.0f} s)", flush=True)
        with open(logs / f"{name}.log", "w") as log:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--result", str(result)]
            if smoke:
                cmd.append("--cpu-smoke")
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                code = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                code = "timeout"
        got = _read_rows(result)
        rows.extend(got)
        took = time.time() - t0
        if code == "timeout":
            rows.append({"section": name, "what": "(section)", "value": None, "unit": "",
                         "note": f"ERROR stopped at its {limit:.0f} s cap; the rows above it finished"})
        elif code != 0:
            tail = (logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
            rows.append({"section": name, "what": "(section)", "value": None, "unit": "",
                         "note": f"ERROR exit code {code}: {tail[0][:300]}"})
        print(f"   {name}: {len(got)} rows, {took:.1f} s", flush=True)
        # every row as soon as its section ends, on stdout and in $OUT's top-level files, so a run cut short
        # (the whole call's time limit, a file-count limit on what comes back) still keeps what it measured
        for row in rows[len(rows) - len(got) - (1 if code != 0 else 0):]:
            print("   row: " + json.dumps(row), flush=True)
        if out:
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "device_check_logs.txt", "a") as combined:
                combined.write(f"== {name}\n" + (logs / f"{name}.log").read_text(errors="replace") + "\n")
            (out / "device_check.md").write_text(table(rows) + "\n")
            (out / "device_check.json").write_text(json.dumps(rows, indent=1) + "\n")
        if name == "env" and not smoke:
            backend = next((r.get("backend") for r in got if r.get("backend")), None)
            if backend not in ("gpu", "tpu"):
                rows.append({"section": "env", "what": "(run)", "value": None, "unit": "",
                             "note": f"ERROR JAX sees no accelerator (backend {backend}); stopped. "
                                     "Run with --cpu-smoke on a CPU"})
                break
    rows.append({"section": "total", "what": "wall time", "value": round(time.time() - start, 1), "unit": "s",
                 "note": ("cpu smoke sizes" if smoke else "full sizes") + f"; logs in {logs}"})
    return rows


def _drive_smoke(sections: list[str], logs: Path, env: dict, out: Path | None, start: float) -> list[dict]:
    """``--cpu-smoke``: every section in ONE child process (tiny sizes: starting Python, JAX and PyTorch
    once per section would cost more than the sections), still each under its error catch."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cpu-smoke", "--result", str(logs), "--section-list",
           *sections]
    print(f"== {', '.join(sections)} (one process, cap {SMOKE_CAP * len(sections)} s)", flush=True)
    with open(logs / "smoke.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=SMOKE_CAP * len(sections))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            code = "timeout"
    rows: list[dict] = []
    for name in sections:
        rows.extend(_read_rows(logs / f"{name}.jsonl"))
    if code != 0:
        rows.append({"section": "smoke", "what": "(run)", "value": None, "unit": "",
                     "note": f"ERROR {code}: see {logs / 'smoke.log'}"})
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "device_check_logs.txt").write_text((logs / "smoke.log").read_text(errors="replace"))
    rows.append({"section": "total", "what": "wall time", "value": round(time.time() - start, 1), "unit": "s",
                 "note": f"cpu smoke sizes, one process; logs in {logs}"})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (about a minute)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds for all sections together")
    parser.add_argument("--out", type=Path, default=None, help="where the table, JSON and logs go (default $OUT)")
    parser.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--section-list", nargs="+", choices=list(SECTIONS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        run_section(args.section, args.result, args.cpu_smoke)
        return 0
    if args.section_list:
        for name in args.section_list:
            print(f"== {name}", flush=True)
            run_section(name, str(Path(args.result) / f"{name}.jsonl"), args.cpu_smoke)
        return 0
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    rows = drive(args.sections, args.cpu_smoke, args.budget, out)
    text = table(rows)
    print("\n# jaxseq device check " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()) + "\n")
    print(text, flush=True)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "device_check.md").write_text(text + "\n")
        (out / "device_check.json").write_text(json.dumps(rows, indent=1) + "\n")
        print(f"\nwritten: {out / 'device_check.md'}, {out / 'device_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
