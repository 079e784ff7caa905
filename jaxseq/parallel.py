"""Device meshes and batch sharding with ``jax.sharding`` (no pmap, no hand-written collectives).

Data parallelism: a 1-D ``Mesh`` over the devices with axis ``data``; every
batch array is split along its first (batch) axis over that axis
(``NamedSharding(mesh, P("data"))``), parameters and optimizer state are
replicated (``P()``), and the same ``jax.jit``-compiled step runs on the
global arrays: XLA inserts the gradient all-reduce.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseq.errors import ConfigError

DATA = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A ``data`` mesh over the first ``num_devices`` devices (default: all, on all hosts)."""
    devices = jax.devices()
    if num_devices is None or num_devices == 0:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ConfigError(f"--devices {num_devices}: only {len(devices)} device(s) available")
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ConfigError("--devices must be all devices when running on several hosts")
    return Mesh(np.array(devices[:num_devices]), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, flag: str = "--batch-size") -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(f"{flag} {batch_size} is not divisible by the {n} devices; "
                          f"use a multiple of {n} or --devices")


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a global batch -> global arrays sharded along ``data``."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def shard_tree_along_batch(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree whose leaves have a leading batch axis (e.g. RNN carries)."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, replicated(mesh))


def local_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This process's equal share of the rows of a global host batch."""
    index, count = jax.process_index(), jax.process_count()
    if count == 1:
        return batch
    def rows(a):
        n = a.shape[0]
        if n % count:
            raise ConfigError(f"a batch of {n} rows cannot be split over {count} processes")
        return a[index * n // count:(index + 1) * n // count]
    return {k: rows(np.asarray(v)) for k, v in batch.items()}
