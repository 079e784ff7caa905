"""Checkpoint averaging: ``jaxseq average --workdir W --last K`` (or ``--steps a,b,c``).

The averaged parameters of checkpoints ``s_1 .. s_K`` of one run are the
element-wise mean (computed in float64, stored in each parameter's dtype)::

    theta_avg = (1 / K) sum_k theta_{s_k}

as fairseq's ``scripts/average_checkpoints.py`` and Vaswani et al. (2017,
the last 5 or 20 checkpoints) average them. Every chosen checkpoint must
belong to the run: its manifest is compared with the run's, field by field,
and the first differing field (another architecture, another vocabulary) is
named and the averaging refused.

The result is an ordinary jaxseq checkpoint under
``checkpoints/averaged/<newest step>/`` (its manifest lists the averaged
steps in ``averaged``; the optimizer state, step and data position are the
newest checkpoint's), read by ``evaluate`` and ``translate`` with
``--checkpoint averaged``. Training never reads or prunes it, and a new
average replaces the old one. Averaging writes into the work directory, so
it takes the writer lock: not while the run trains.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import jax
import numpy as np

from jaxseq.checkpoint import Checkpointer
from jaxseq.errors import ConfigError
from jaxseq.workdir import Workdir, WorkdirLike

AVERAGED = "averaged"


def parse_steps(text: str) -> list[int]:
    """``"1000,2000,3000"`` -> ``[1000, 2000, 3000]`` (ConfigError naming ``--steps`` otherwise)."""
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        steps = []
    if not steps or any(s < 0 for s in steps):
        raise ConfigError(f"--steps must be step numbers separated by commas (1000,2000,3000), got {text!r}")
    return sorted(set(steps))


def choose_steps(available: Sequence[int], last: int | None, steps: Sequence[int] | None) -> list[int]:
    """The steps to average: the ``last`` newest of ``available``, or exactly ``steps``."""
    if (last is None) == (steps is None):
        raise ConfigError("jaxseq average: give --last K or --steps a,b,c (one of them)")
    if last is not None:
        if last < 1:
            raise ConfigError(f"--last must be at least 1, got {last}")
        if last > len(available):
            raise ConfigError(f"--last {last}: the run has only {len(available)} complete checkpoint(s) "
                              f"({', '.join(map(str, available)) or 'none'}); keep more with --keep")
        return list(available[-last:])
    missing = [s for s in steps if s not in available]
    if missing:
        raise ConfigError(f"--steps: no complete checkpoint at step {', '.join(map(str, missing))}; the run has "
                          f"{', '.join(map(str, available)) or 'none'}")
    return list(steps)


def mean_params(trees: Sequence[Any]) -> Any:
    """The element-wise mean of parameter pytrees of one structure (float64 sums, each leaf's dtype)."""
    def mean(*leaves):
        total = np.zeros(np.shape(leaves[0]), np.float64)
        for leaf in leaves:
            total += np.asarray(leaf, np.float64)
        return (total / len(leaves)).astype(np.asarray(leaves[0]).dtype)
    return jax.tree_util.tree_map(mean, *trees)


def average_checkpoints(workdir: WorkdirLike, *, last: int | None = None, steps: Sequence[int] | None = None,
                        echo: Callable[[str], None] = print) -> dict:
    """Average checkpoints of the run in ``workdir`` into ``checkpoints/averaged`` (module docstring).

    Returns ``{"steps": the averaged steps, "step": the newest, "path": the written step folder,
    "params": the averaged parameters}``.
    """
    from jaxseq.tasks import runner

    workdir = Workdir.of(workdir)
    task = importlib.import_module(f"jaxseq.tasks.{workdir.require_any()}").TASK
    with workdir.lock(create=False):
        run, vocabs = runner.load_run(workdir, task)
        result = write_average(workdir, task, run, vocabs, last=last, steps=steps)
    echo(f"averaged the parameters of steps {', '.join(map(str, result['steps']))} into {result['path']}; use "
         "it with --checkpoint averaged")
    return result


def write_average(workdir: Workdir, task: Any, run: Any, vocabs: dict, *, last: int | None = None,
                  steps: Sequence[int] | None = None) -> dict:
    """:func:`average_checkpoints` for a caller that holds ``workdir``'s lock and knows its run (the trainer,
    with ``--average-last``)."""
    from jaxseq.tasks import runner

    if not run.spec.neural:
        raise ConfigError(f"{workdir.path}: a {run.model.model} model has no checkpoints to average")
    _, abstract = runner.abstract_run_state(task, run, vocabs)
    expected = runner.manifest(run, vocabs, abstract.params, None)
    reader = Checkpointer(workdir.checkpoints, read_only=True)
    try:
        chosen = choose_steps(reader.steps(), last, steps)
        for step in chosen:                 # every manifest first: refuse before reading any array
            expected.check(reader.read_manifest(step), step, str(workdir.checkpoints))
        states = []
        for step in chosen:
            state, data, _ = reader.restore(abstract, expected, step=step)
            states.append(jax.device_get(state))
        newest_manifest = reader.read_manifest(chosen[-1])
    finally:
        reader.close()
    averaged = states[-1].replace(params=mean_params([s.params for s in states]))
    directory = workdir.checkpoints / AVERAGED
    if directory.exists():
        from jaxseq.checkpoint import _remove_dir
        _remove_dir(directory)
    writer = Checkpointer(directory, keep=1)
    try:
        writer.save(chosen[-1], averaged, data, dict(newest_manifest, step=chosen[-1], averaged=chosen))
    finally:
        writer.close()
    return {"steps": chosen, "step": chosen[-1], "path": str(directory / str(chosen[-1])),
            "params": averaged.params}


__all__ = ["average_checkpoints", "write_average", "choose_steps", "mean_params", "parse_steps", "AVERAGED"]
