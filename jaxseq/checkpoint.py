"""Orbax checkpoints with a manifest that is checked on restore.

A checkpoint (``WORKDIR/checkpoints/<step>/``) holds three items, written
together and atomically by Orbax (a temporary directory renamed into place
when complete):

``state``     the TrainState: params, optimizer state, step, RNG key, carry
``data``      the data iterator's position (JSON)
``manifest``  what the state belongs to: the model config, the vocabulary
              fingerprint(s), every parameter's path, shape and dtype

Restoring compares the manifest with what the current run expects and refuses
another architecture or vocabulary with a message naming the step and the
first difference, before Orbax reads a single array.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxseq.errors import CheckpointError


def tree_signature(tree: Any) -> dict[str, list]:
    """``{"params/layer/W": [shape, dtype], ...}`` for every leaf of ``tree``."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
        out[name] = [list(np.shape(leaf)), str(getattr(leaf, "dtype", type(leaf).__name__))]
    return out


def compare_manifests(saved: dict, expected: dict, step: int, where: str) -> None:
    """Raise CheckpointError naming the first difference between two manifests."""
    for key in ("task", "model", "vocab"):
        if key in expected and saved.get(key) != expected[key]:
            a, b = saved.get(key), expected[key]
            if isinstance(a, dict) and isinstance(b, dict):
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                detail = "; ".join(f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in diff[:3])
            else:
                detail = f"checkpoint {a!r} vs now {b!r}"
            what = {"vocab": "another vocabulary", "model": "another architecture", "task": "another task"}[key]
            raise CheckpointError(f"{where}: checkpoint at step {step} belongs to {what} ({detail}); "
                                  "use a new --workdir or the matching data and flags")
    if "params" in expected and saved.get("params") != expected["params"]:
        a, b = saved.get("params", {}), expected["params"]
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        name = diff[0]
        raise CheckpointError(f"{where}: checkpoint at step {step} has parameter {name} as "
                              f"{a.get(name, 'missing')} but the model has {b.get(name, 'missing')}; "
                              "the architecture differs")


class Checkpointer:
    """Saves and restores ``(state, data position, manifest)`` under ``directory``."""

    def __init__(self, directory: str | Path, *, keep: int = 3):
        self.directory = Path(directory).absolute()
        self._clean_leftovers()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def _clean_leftovers(self) -> None:
        """Remove temporary directories a crash during a save left behind."""
        if not self.directory.exists():
            return
        for child in self.directory.iterdir():
            if child.is_dir() and ".orbax-checkpoint-tmp" in child.name:
                shutil.rmtree(child, ignore_errors=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data: dict, manifest: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data),
            manifest=ocp.args.JsonSave(manifest)), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def read_manifest(self, step: int) -> dict:
        path = self.directory / str(step) / "manifest" / "metadata"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{self.directory}: checkpoint at step {step} has no readable manifest "
                                  f"({err.__class__.__name__}); it is damaged") from None

    def restore(self, abstract_state: Any, expected: dict, *, step: int | None = None) -> tuple[Any, dict, int]:
        """Restore ``step`` (default: the latest) after checking its manifest.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` (with
        shardings) describing the state to restore into.
        """
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: no checkpoint to resume from; train without --resume first")
        compare_manifests(self.read_manifest(step), expected, step, str(self.directory))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as err:  # Orbax raises many types for damaged files
            raise CheckpointError(f"{self.directory}: checkpoint at step {step} cannot be read "
                                  f"({err.__class__.__name__}: {str(err).splitlines()[0][:200]})") from None
        return restored.state, restored.data, step

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
