"""What a checkpoint belongs to, written beside it and compared field by field on restore.

A :class:`Manifest` names the task, the model's config sections, the
vocabulary fingerprint(s), the data fingerprint (a SHA-256 of the token ids
read for training and validation) and every parameter's path, shape and
dtype. :meth:`Manifest.check` compares a saved manifest with the one the
current run expects, every field, and refuses the first difference with one
line naming the field and both values.

Config sections are compared on the settings both know: a setting added to
jaxseq after the checkpoint was written takes its default when the run's
config is read, and the parameter shapes still catch any architecture
change it makes. ``data=None`` (a reader that does not load the training
data: ``generate``, ``translate``, ``evaluate --data FILE``) skips the data
comparison; nothing else is ever skipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import jax
import numpy as np

from jaxseq.errors import CheckpointError


def tree_signature(tree: Any) -> dict[str, list]:
    """``{"params/layer/W": [shape, dtype], ...}`` for every leaf of ``tree``."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
        out[name] = [list(np.shape(leaf)), str(getattr(leaf, "dtype", type(leaf).__name__))]
    return out


def array_fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 of the bytes of ``arrays`` (the token ids a run reads)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


_WHAT = {"task": "another task", "model": "another architecture", "vocab": "another vocabulary",
         "data": "other data"}
_DO = {"data": "the training data changed since the run started; restore the file, use a new --workdir, "
               "or add --allow-data-change to accept the new data",
       "params": "the architecture differs; use a new --workdir or the run's own flags"}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _differences(saved: Any, expected: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(path, saved, expected)`` for every setting both sides know that differs (dicts compared by key)."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        out = []
        for key in sorted(set(saved) & set(expected)):
            out += _differences(saved[key], expected[key], f"{prefix}{key}.")
        return out
    return [] if saved == expected else [(prefix.rstrip("."), saved, expected)]


@dataclass(frozen=True)
class Manifest:
    """What a checkpoint belongs to; ``to_dict()`` is what is saved beside it."""

    task: str
    model: dict
    vocab: Any
    params: dict
    data: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self, saved: dict, step: int, where: str) -> None:
        """Raise CheckpointError naming the first field of ``saved`` that differs from this manifest."""
        for key in ("task", "model", "vocab", "data"):
            expected = getattr(self, key)
            if expected is None:
                continue
            if key not in saved:
                if key == "data":        # written before data fingerprints were compared
                    continue
                raise CheckpointError(f"{where}: checkpoint at step {step} has no {key} in its manifest; "
                                      "it was not written by this jaxseq")
            diff = _differences(saved[key], expected)
            if diff:
                name, a, b = diff[0]
                field = f"{key} {name}" if name else key
                raise CheckpointError(f"{where}: checkpoint at step {step} belongs to {_WHAT[key]} ({field}: "
                                      f"checkpoint {_short(a)} vs now {_short(b)}); "
                                      + _DO.get(key, "use a new --workdir or the matching data and flags"))
        if "params" not in saved:
            raise CheckpointError(f"{where}: checkpoint at step {step} has no params in its manifest; "
                                  "it was not written by this jaxseq")
        a, b = saved["params"], self.params
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            name = diff[0]
            raise CheckpointError(f"{where}: checkpoint at step {step} has parameter {name} as "
                                  f"{a.get(name, 'missing')} but the model has {b.get(name, 'missing')}; "
                                  + _DO["params"])
