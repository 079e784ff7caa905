"""Pieces shared by the language-model and translation jobs."""

from __future__ import annotations

import hashlib
import sys
from typing import Any, Callable

import jax
import numpy as np

from jaxseq import parallel, train
from jaxseq.checkpoint import Checkpointer, tree_signature
from jaxseq.workdir import Workdir

Echo = Callable[[str], None]


def echo_stdout(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def warn(message: str) -> None:
    print(f"jaxseq: warning: {message}", file=sys.stderr, flush=True)


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
