"""The scaling plan of docs/SCALING.md: memory per device and step time, and their check against XLA.

1. The plan (no devices needed): for decoder-only Transformers of GPT-3's 125M, 350M and 1.3B shapes on
   a TPU v5e-16, a TPU v5p-64 and 8 H100s, the mesh (data, fsdp, tensor), remat and global batch chosen by
   :func:`jaxseq.scaling.choose`, with parameter, optimizer-state, gradient and activation memory per
   device and the step time at the stated MFU (``--mfu``). Alternatives for each model on the v5e-16
   (the tightest memory) show why the others were not chosen.
2. The check (``--check``; CPU, 4 forced devices): for small Transformers that run here, the calculator's
   bytes against what XLA's memory analysis of the compiled train step reports (the numbers of
   ``jaxseq inspect --what memory``), on 1 device and on (data 2, tensor 2) and (fsdp 2, tensor 2).

    python benchmarks/scaling_plan.py [--mfu 0.4] [--check]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxseq import scaling  # noqa: E402

MAX_BATCH = {"125M": 256, "350M": 256, "1.3B": 512}     # GPT-3's batch sizes: 0.5M, 0.5M and 1M tokens


def plan(mfu: float) -> None:
    print("parameters (jaxseq's TransformerLM: untied output layer, learned positions):")
    for size in scaling.SIZES:
        print(f"  {size.name}: L {size.layers}, d_model {size.d_model}, heads {size.heads}, ffn {size.ffn}, "
              f"vocab {size.vocab}, context {size.context}: {scaling.parameter_count(size):,}")
    rows = [scaling.choose(size, hw, max_batch=MAX_BATCH[size.name], mfu=mfu)
            for size in scaling.SIZES for hw in scaling.HARDWARE]
    print("\nchosen plans:\n" + scaling.markdown_table(rows))
    v5e = scaling.HARDWARE[0]
    alternatives = []
    for size in scaling.SIZES:
        for mesh in ((16, 1, 1), (1, 16, 1), (1, 8, 2), (1, 2, 8)):
            for remat in (False, True):
                alternatives.append(scaling.plan_row(size, v5e, mesh, 16, remat=remat, mfu=mfu, why=""))
    print("\nalternatives on the v5e-16 at a global batch of 16 x 2048:\n" + scaling.markdown_table(alternatives))


def check() -> None:
    from jaxseq import inspection
    from jaxseq.tasks import lm as lm_task
    print("\ncheck against XLA's memory analysis (jaxseq inspect --what memory), float32 on CPU:")
    print("| config | mesh | state: calculator | state: XLA arguments | ratio | activations + grads: calculator "
          "| XLA temporaries | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    configs = [scaling.ModelSize("tiny", 2, 64, 4, 256, vocab=96, context=64),
               scaling.ModelSize("small", 4, 128, 8, 512, vocab=256, context=128)]
    for size in configs:
        for mesh in ((1, 1, 1), (2, 1, 2), (1, 2, 2)):
            batch = 8
            run = scaling.lm_run(size, batch, size.context, dtype="float32", mesh=mesh)
            run = lm_task.TASK.resolve({**{k: v for section in run.sections.values()
                                           for k, v in vars(section).items()}, "optimizer": "adamw"},
                                       warn_unused=False)
            program = inspection.step_program(lm_task.TASK, run, (size.vocab,))
            stats = program.lower().compile().memory_analysis()
            params, opt = scaling.state_shapes(run, size.vocab)
            state = scaling.sharded_bytes(params, mesh) + scaling.sharded_bytes(opt, mesh)
            groups = mesh[0] * mesh[1]
            batch_bytes = (batch // groups) * size.context * 12 + 4 + 8      # inputs, targets, weights; step; rng
            xla_args = stats.argument_size_in_bytes
            act = (scaling.activation_bytes(size, batch // groups, size.context, mesh[2], p=4)
                   + scaling.sharded_bytes(params, mesh))
            temp = stats.temp_size_in_bytes
            print(f"| {size.name} (L {size.layers}, d {size.d_model}, {batch} x {size.context}) | {mesh} | "
                  f"{(state + batch_bytes) / 2**20:.3f} MiB | {xla_args / 2**20:.3f} MiB | "
                  f"{(state + batch_bytes) / xla_args:.3f} | {act / 2**20:.2f} MiB | {temp / 2**20:.2f} MiB | "
                  f"{act / temp:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mfu", type=float, default=0.4, help="the model FLOPs utilisation assumed")
    parser.add_argument("--check", action="store_true", help="also compare with XLA on small configs (CPU)")
    args = parser.parse_args()
    plan(args.mfu)
    if args.check:
        check()


if __name__ == "__main__":
    main()
