"""``jaxseq inspect``: what a run's train step turns into, without training.

For the train step of a run (its flags, or its work directory) this reports

``params``  the parameter count per module (the Linen module owning each array)
``jaxpr``   the traced program (``jax.jit(step).trace(...)``): where ``jit``,
            ``lax.scan`` (a ``scan`` equation), ``custom_vjp`` and the
            optimizer update show up
``hlo``     the optimized HLO XLA compiled (``compiled.as_text()``)
``cost``    XLA's cost analysis (FLOPs, bytes accessed, transcendentals), per
            device program, beside the analytic count of :mod:`jaxseq.flops`
``memory``  ``compiled.memory_analysis()``: argument, output, aliased and
            temporary bytes per device

The step is built exactly as the runner builds it (:func:`jaxseq.train.train_step_for`
on the run's mesh) from abstract shapes (``jax.eval_shape``): nothing is
initialised, restored or trained. With ``unroll_scans`` every ``lax.scan`` is
traced fully unrolled (:func:`jaxseq.flops.unrolled_scans`), so XLA's cost
analysis, which counts a loop body once, counts every time step.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import jax

from jaxseq import flops as flops_lib
from jaxseq import parallel
from jaxseq import train as trainer
from jaxseq.errors import ConfigError
from jaxseq.optim import make_optimizer
from jaxseq.tasks.runner import check_tensor

WHAT = ("params", "jaxpr", "hlo", "cost", "memory", "all")


@dataclass
class StepProgram:
    """The train step of a run and its abstract arguments (shapes, dtypes, shardings)."""

    run: Any
    model: Any
    step: Callable
    state: Any              # TrainState of jax.ShapeDtypeStruct leaves
    batch: dict[str, jax.ShapeDtypeStruct]
    mesh: Any
    vocab_sizes: tuple[int, ...]

    def lower(self):
        return self.step.lower(self.state, self.batch)

    def analytic(self) -> flops_lib.StepFlops:
        return self.run.spec.flops(self.run, self.vocab_sizes, {k: v.shape for k, v in self.batch.items()})


def require_train_step(run):
    """The model spec of ``run``; a count-based model (no train step) is a one-line ConfigError."""
    if not run.spec.neural:
        raise ConfigError(f"--model {run.spec.name} is count-based: it has no train step to inspect")
    return run.spec


def step_program(task, run, vocab_sizes: tuple[int, ...]) -> StepProgram:
    """The train step ``runner.train`` would run for ``run`` (model built from the registry, the
    run's optimizer and mesh), with abstract state and batch."""
    spec = require_train_step(run)
    check_tensor(run)
    mesh = parallel.mesh_from_config(run.parallel)
    parallel.check_batch_size(run.data.batch_size, mesh)
    model = spec.build(run, vocab_sizes)
    sample = task.example_batch(run)
    tx = make_optimizer(run.optim, run.train.total_steps(1, spec.steps or task.default_steps))
    state = trainer.state_shapes(model, tx, sample, run.train.seed, mesh, task.initial_carry(run, model))
    along = parallel.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=along) for k, v in sample.items()}
    step = trainer.train_step_for(model, tx, state, mesh, run.train)
    return StepProgram(run, model, step, state, batch, mesh, tuple(vocab_sizes))


def param_table(params: Any) -> list[tuple[str, int, str]]:
    """``(module path, parameter count, shapes)`` per module owning parameters, in tree order."""
    counts: dict[str, int] = defaultdict(int)
    shapes: dict[str, list[str]] = defaultdict(list)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        module = "/".join(keys[:-1]) or "(top)"
        counts[module] += leaf.size
        shapes[module].append(f"{keys[-1]}{tuple(leaf.shape)}")
    return [(m, counts[m], " ".join(shapes[m])) for m in counts]


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    return f"{n}"


def _params_section(program: StepProgram) -> str:
    rows = param_table(program.state.params)
    width = max(len("module"), *(len(m) for m, _, _ in rows))
    lines = [f"{'module':<{width}}  {'parameters':>12}  shapes"]
    lines += [f"{m:<{width}}  {n:>12,}  {s}" for m, n, s in rows]
    lines.append(f"{'total':<{width}}  {sum(n for _, n, _ in rows):>12,}")
    return "\n".join(lines)


def _cost_section(program: StepProgram, compiled: Any, hlo: str) -> str:
    cost = flops_lib.xla_cost(compiled)
    devices = program.mesh.devices.size
    loops = hlo.count(" while(")
    analytic = program.analytic()
    xla = float(cost.get("flops", 0.0))
    lines = [f"XLA cost analysis (one device's program; {devices} device(s)):",
             f"  flops              {xla:,.0f}",
             f"  transcendentals    {float(cost.get('transcendentals', 0.0)):,.0f}",
             f"  bytes accessed     {_bytes(float(cost.get('bytes accessed', 0.0)))}",
             f"  while loops        {loops} (XLA counts each loop body once, whatever its trip count)",
             "analytic FLOPs (jaxseq.flops: matmuls only, backward = 2 x forward, causal attention at half):",
             f"  forward            {analytic.forward:,.0f}",
             f"  train step         {analytic.train:,.0f}  ({analytic.train / devices:,.0f} per device)",
             f"  per position       {analytic.per_token:,.0f}  ({analytic.positions:,} positions per step)"]
    if analytic.masked:
        lines.append(f"  causal mask        {3 * analytic.masked:,.0f} computed by the dense kernel, not counted")
    if xla:
        lines.append(f"  XLA / analytic     {xla * devices / analytic.train:.3f}"
                     + ("  (loop bodies counted once by XLA)" if loops else ""))
    return "\n".join(lines)


def _memory_section(compiled: Any) -> str:
    stats = compiled.memory_analysis()
    if stats is None:
        return "memory analysis: not available on this backend"
    fields = (("arguments", "argument_size_in_bytes"), ("outputs", "output_size_in_bytes"),
              ("aliased (donated)", "alias_size_in_bytes"), ("temporaries", "temp_size_in_bytes"),
              ("generated code", "generated_code_size_in_bytes"))
    lines = ["memory analysis (per device):"]
    lines += [f"  {name:<18} {_bytes(getattr(stats, attr, 0) or 0)}" for name, attr in fields
              if hasattr(stats, attr)]
    return "\n".join(lines)


def report(program: StepProgram, what: str = "all", unroll_scans: bool = False) -> str:
    """The sections of ``what`` (one of :data:`WHAT`) as text (``unroll_scans``: see the module docstring)."""
    if what not in WHAT:
        raise ConfigError(f"--what must be one of {', '.join(WHAT)}, got {what!r}")
    run, spec = program.run, program.run.spec
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in program.batch.items())
    parts = [f"model: {spec.name} ({run.task}); batch: {shapes}; {program.mesh.devices.size} device(s), "
             f"{jax.devices()[0].device_kind}" + ("; every lax.scan unrolled" if unroll_scans else "")]
    chosen = WHAT[:-1] if what == "all" else (what,)
    with flops_lib.unrolled_scans() if unroll_scans else contextlib.nullcontext():
        parts += _sections(program, chosen)
    return "\n\n".join(parts) + "\n"


def _sections(program: StepProgram, chosen: tuple[str, ...]) -> list[str]:
    parts = []
    if "params" in chosen:
        parts.append("== parameters ==\n" + _params_section(program))
    if "jaxpr" in chosen:
        parts.append("== jaxpr of the train step ==\n" + str(program.step.trace(program.state, program.batch).jaxpr))
    if {"hlo", "cost", "memory"} & set(chosen):
        compiled = program.lower().compile()
        hlo = compiled.as_text()
        if "hlo" in chosen:
            parts.append("== optimized HLO ==\n" + hlo)
        if "cost" in chosen:
            parts.append("== cost ==\n" + _cost_section(program, compiled, hlo))
        if "memory" in chosen:
            parts.append("== memory ==\n" + _memory_section(compiled))
    return parts
