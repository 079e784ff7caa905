"""Pieces shared by the language-model and translation jobs."""

from __future__ import annotations

import hashlib
import sys
from typing import Any, Callable, ClassVar, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import config as config_lib
from jaxseq import parallel, train
from jaxseq.checkpoint import Checkpointer, tree_signature
from jaxseq.data.vocab import Vocab
from jaxseq.errors import CheckpointError
from jaxseq.workdir import Workdir

Echo = Callable[[str], None]


def echo_stdout(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def warn(message: str) -> None:
    print(f"jaxseq: warning: {message}", file=sys.stderr, flush=True)


def compute_dtype(config: train.TrainConfig) -> Any:
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def array_fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def manifest(task: str, model_config: dict, vocab: Any, params: Any, data: str) -> dict:
    return {"task": task, "model": model_config, "vocab": vocab, "data": data,
            "params": tree_signature(params)}


def restore_params(workdir: Workdir, model, tx, sample_batch: dict, expected: dict,
                   carry: Any = None) -> tuple[Any, int]:
    """The parameters of the latest checkpoint of ``workdir`` (one device)."""
    mesh = parallel.make_mesh(1)
    abstract = jax.eval_shape(lambda: train.create_state(model, tx, sample_batch, 0, mesh, carry))
    sharding = parallel.replicated(mesh)
    abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), abstract)
    ckpt = Checkpointer(workdir.checkpoints)
    try:
        state, _, step = ckpt.restore(abstract, expected)
    finally:
        ckpt.close()
    return state.params, step


# -- run configurations ----------------------------------------------------------------------

class RunConfig:
    """Mixin for a dataclass with one field per config section (``SECTIONS``: name -> class).

    ``to_dict`` is what ``config.json`` holds (``{"task": TASK, section: {...}}``).
    """

    TASK: ClassVar[str]
    SECTIONS: ClassVar[dict[str, type]]

    def to_dict(self) -> dict:
        return {"task": self.TASK, **{name: config_lib.to_dict(getattr(self, name)) for name in self.SECTIONS}}

    @classmethod
    def from_dict(cls, data: dict, where: str):
        return cls(**{name: config_lib.from_dict(kind, data.get(name, {}), where=where)
                      for name, kind in cls.SECTIONS.items()})


def load_vocab(workdir: Workdir, name: str = "vocab.json") -> Vocab:
    """A vocabulary saved in ``workdir``; a missing file means an incomplete work directory."""
    path = workdir.file(name)
    if not path.exists():
        raise CheckpointError(f"{path}: missing; the work directory is incomplete")
    return Vocab.load(path)


def warn_unknown(what: str, unknown: Sequence[str], where: str = "the vocabulary") -> None:
    """Warn that ``unknown`` token types became ``<unk>`` (nothing if there are none)."""
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        warn(f"{what}: {len(unknown)} token type(s) not in {where} become <unk>: {shown}")


def count_params(params: Any) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(params))


# -- training into a work directory ----------------------------------------------------------

def fit_in_workdir(model, state: train.TrainState, tx, batches, *, workdir: Workdir, expected: dict,
                   resume: bool, fallback: bool = False, total_steps: int, train_config: train.TrainConfig,
                   optim: Any, mesh, valid_batches: list | None, describe: Callable[[], str], echo: Echo,
                   eval_carry: Any = None, extra_eval: Callable[[Any], dict] | None = None) -> train.FitResult:
    """Restore the latest checkpoint when resuming, then :func:`jaxseq.train.fit` with checkpoints and logs.

    ``describe()`` is echoed (the model and run size) after a restore and
    before training starts.
    """
    checkpointer = Checkpointer(workdir.checkpoints, keep=train_config.keep, keep_best=train_config.keep_best)
    metrics_log = train.MetricsLog(workdir.metrics, jax.process_index() == 0)
    try:
        if resume and checkpointer.latest_step() is not None:
            state, data_state, step = checkpointer.restore(train.abstract_state(state), expected,
                                                           fallback=fallback, warn=warn)
            batches.set_state(data_state)
            metrics_log.truncate_after(step)
            echo(f"resumed from step {step}")
        elif resume:
            raise CheckpointError(f"{workdir.checkpoints}: no checkpoint to resume from; train without --resume")
        echo(describe())
        return train.fit(model, state, tx, batches, total_steps=total_steps, config=train_config, optim=optim,
                         mesh=mesh, valid_batches=valid_batches, eval_carry=eval_carry, checkpointer=checkpointer,
                         manifest=expected, metrics_log=metrics_log, extra_eval=extra_eval, echo=echo)
    finally:
        checkpointer.close()


def stopped_early(result: train.FitResult, results: dict, echo: Echo) -> bool:
    """Record a signal that stopped the run in ``results`` (True), or return False."""
    if result.interrupted is None:
        return False
    results["interrupted"] = int(result.interrupted)
    echo(f"stopped by signal {result.interrupted} at step {results.get('step')}; checkpoint saved; "
         "continue with --resume")
    return True


def write_results(workdir: Workdir, results: dict, title: str) -> None:
    """``results.json`` and the learning curve ``curve.png`` (process 0 only)."""
    if jax.process_index() != 0:
        return
    workdir.write_json("results.json", results)
    from jaxseq import plots
    plots.learning_curve(workdir.metrics, workdir.file("curve.png"), title=title)
