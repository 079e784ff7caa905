"""BERT pretraining: training-step throughput of jaxseq against Hugging Face ``transformers``' PyTorch
``BertForPreTraining`` of the same size and sequence length.

The model is D2L's BERT by default (2 blocks, d_model 128, 2 heads, FFN 256,
64 positions, tanh-GELU, post-norm, dropout 0.1) with a vocabulary of
``--vocab`` tokens; one step is forward, masked-LM + NSP loss, backward,
clipped AdamW update, on a batch of ``--batch`` sentence pairs masked as in
``jaxseq train mlm`` (15%: ``P = ceil(0.15 T)`` prediction slots per row).

* ``jaxseq``: jaxseq's ``BertPretraining`` through jaxseq's own train step
  (the output layer runs on the ``P`` masked slots only);
* ``torch``: ``transformers.BertForPreTraining`` (``attn_implementation="sdpa"``; on the GPU when
  ``torch.cuda`` sees one, as JAX then uses it too),
  labels ``-100`` off the masked positions (it computes the output layer on
  all ``T`` positions, as Hugging Face does), ``torch.optim.AdamW``.

Each contestant runs in its own process (:mod:`harness`), taking turns.
Reported: the median pairs/s of each and the ratio jaxseq / torch (target
>= 1.0). ``transformers`` and ``torch`` are benchmark-only dependencies.

    python benchmarks/bench_bert.py [--rounds 5] [--steps 5] [--batch 32] [--seq-len 64] [--vocab 10000]
        [--wait-idle 0.12]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import race   # noqa: E402

LAYERS, HEADS, D, F = 2, 2, 128, 256


def _batches(n: int, batch: int, seq_len: int, vocab: int, seed: int = 0) -> list[dict]:
    """Masked pairs ``<cls> A <sep> B <sep>`` of random tokens (the keys of jaxseq.data.mlm's batches)."""
    import numpy as np
    from jaxseq.data import mlm as mlm_data
    from jaxseq.data.vocab import Vocab

    vocab_obj = Vocab(list(mlm_data.MLM_RESERVED) + [f"w{i}" for i in range(vocab - len(mlm_data.MLM_RESERVED))])
    sp = mlm_data.Specials(vocab_obj)
    rng = np.random.default_rng(seed)
    p = math.ceil(0.15 * seq_len)
    out = []
    for _ in range(n):
        la = rng.integers(4, seq_len - 7, size=batch)
        lb = seq_len - 3 - la
        tokens = rng.choice(sp.ordinary, size=(batch, seq_len)).astype(np.int32)
        segments = np.zeros((batch, seq_len), np.int32)
        rows = np.arange(batch)
        tokens[:, 0], tokens[rows, 1 + la], tokens[:, -1] = sp.cls, sp.sep, sp.sep
        for r in range(batch):
            segments[r, 2 + la[r]:2 + la[r] + lb[r] + 1] = 1
        valid = np.full(batch, seq_len, np.int32)
        masked, positions, targets, weights = mlm_data.mask_tokens(tokens, valid, 0.15, p, sp, rng)
        out.append({"tokens": masked, "segments": segments, "valid_len": valid, "mlm_positions": positions,
                    "mlm_targets": targets, "mlm_weights": weights,
                    "nsp_labels": rng.integers(0, 2, size=batch).astype(np.int32),
                    "nsp_weights": np.ones(batch, np.float32)})
    return out


def jaxseq_trainer(batch: int, seq_len: int, vocab: int):
    import jax
    from jaxseq import parallel, train
    from jaxseq.memory import keep_freed_memory
    from jaxseq.optim import make_optimizer
    from jaxseq.tasks import mlm

    keep_freed_memory()                      # as `jaxseq train mlm` does (the bert spec's tuned_allocator)
    run = mlm.TASK.resolve({"layers": LAYERS, "heads": HEADS, "d_model": D, "ffn": F, "seq_len": seq_len,
                            "batch_size": batch, "dropout": 0.1, "clip": 1.0, "devices": 1}, warn_unused=False)
    model = run.spec.build(run, (vocab,))
    mesh = parallel.make_mesh(1)
    tx = make_optimizer(run.optim, 10_000)
    host = _batches(4, batch, seq_len, vocab)
    state = train.create_state(model, tx, host[0], 0, mesh)
    step = train.train_step_for(model, tx, state, mesh, run.train)
    batches = [parallel.shard_batch(b, mesh) for b in host]
    holder = {"state": state, "i": 0}

    def one():
        holder["state"], m = step(holder["state"], batches[holder["i"] % 4])
        holder["i"] += 1
        jax.block_until_ready(m["loss"])
    return one


def torch_trainer(batch: int, seq_len: int, vocab: int):
    import torch
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=D, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=F, max_position_embeddings=seq_len, type_vocab_size=2,
                        hidden_act="gelu_new", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = BertForPreTraining._from_config(config, attn_implementation="sdpa").to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    batches = []
    for b in _batches(4, batch, seq_len, vocab):
        labels = torch.full((batch, seq_len), -100, dtype=torch.long)
        for r in range(batch):
            used = b["mlm_weights"][r] > 0
            labels[r, torch.from_numpy(b["mlm_positions"][r][used]).long()] = \
                torch.from_numpy(b["mlm_targets"][r][used]).long()
        batches.append({k: v.to(device) for k, v in {
            "input_ids": torch.from_numpy(b["tokens"]).long(), "token_type_ids": torch.from_numpy(b["segments"]).long(),
            "attention_mask": torch.ones(batch, seq_len, dtype=torch.long), "labels": labels,
            "next_sentence_label": torch.from_numpy(b["nsp_labels"]).long()}.items()})
    holder = {"i": 0}

    def one():
        out = model(**batches[holder["i"] % 4])
        holder["i"] += 1
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
    return one


def _accelerator() -> str:
    """The GPU both contestants use, if any (torch.cuda's name; jaxseq's JAX sees the same device)."""
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except ImportError:
        return "no GPU (torch not installed)"


def _steps(builder, steps: int, *args):
    run = builder(*args)

    def many():
        for _ in range(steps):
            run()
    return many


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="train steps per timed call")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--wait-idle", type=float, default=0.0, help="start each turn once CPUs are this idle")
    ap.add_argument("--contestants", nargs="+", default=["jaxseq", "torch"], choices=["jaxseq", "torch"])
    args = ap.parse_args(argv)
    builders = {"jaxseq": jaxseq_trainer, "torch": torch_trainer}
    shape = (args.batch, args.seq_len, args.vocab)
    contestants = {name: (_steps, (builders[name], args.steps, *shape)) for name in args.contestants}
    seconds = race(contestants, rounds=args.rounds, idle=args.wait_idle)
    print(f"BERT pretraining step: {LAYERS} blocks, d_model {D}, {HEADS} heads, FFN {F}, vocab {args.vocab}, "
          f"batch {args.batch} x {args.seq_len}; {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, "
          f"{_accelerator()}")
    pairs = {}
    for name, times in seconds.items():
        pairs[name] = [args.steps * args.batch / t for t in times]
        print(f"  {name:<8} {statistics.median(pairs[name]):9.1f} pairs/s  (median of {len(times)} rounds; best "
              f"{max(pairs[name]):.1f})")
    if "jaxseq" in pairs and "torch" in pairs:
        ratios = [a / b for a, b in zip(pairs["jaxseq"], pairs["torch"])]
        print(f"  ratio jaxseq / torch: {statistics.median(ratios):.2f} (median of per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
