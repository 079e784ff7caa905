"""Device meshes, sharding and multi-host start-up with ``jax.sharding`` and ``jax.distributed``.

No ``pmap`` and no hand-written collectives: a ``Mesh`` with axes
``("data", "fsdp")`` names the devices, arrays carry ``NamedSharding``s, and
the same ``jax.jit``-compiled step runs on the global arrays; XLA inserts the
communication (the gradient all-reduce, FSDP's all-gathers).

* Data parallelism: every batch array (and the recurrent carry) is split
  along its first, batch axis over all devices, ``P(("data", "fsdp"))``.
* Parameters and optimizer state are replicated (``P()``), or, with
  ``--fsdp N``, each array is split along its largest axis divisible by ``N``
  over the ``fsdp`` axis (FSDP/ZeRO-3 style: a device stores ``1/N`` of the
  state and gathers a layer's weights when it uses them).
* Many hosts: ``jax.distributed.initialize`` joins the processes; each feeds
  its rows of the global batch and ``jax.make_array_from_process_local_data``
  assembles the global array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseq.config import Config, option
from jaxseq.errors import ConfigError

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)


@dataclass(frozen=True)
class ParallelConfig(Config):
    """Devices, parameter sharding and the multi-host cluster."""

    devices: int | None = option(None, "devices to use (default: all devices of all hosts)", minimum=1,
                                 resumable=True)
    fsdp: int = option(1, "shard parameters and optimizer state over this many devices (FSDP)", minimum=1,
                       resumable=True)
    distributed: bool = option(False, "join a multi-host run (jax.distributed.initialize)", resumable=True)
    coordinator: str | None = option(None, "host:port of process 0 (default: auto-detected from the cluster)",
                                     resumable=True)
    num_processes: int | None = option(None, "number of processes (default: auto-detected)", minimum=1,
                                       resumable=True)
    process_id: int | None = option(None, "this process's index (default: auto-detected)", minimum=0,
                                    resumable=True)

    def check(self) -> None:
        manual = [self.coordinator, self.num_processes, self.process_id]
        if any(v is not None for v in manual) and not self.distributed:
            raise ConfigError("--coordinator, --num-processes and --process-id need --distributed")
        if any(v is not None for v in manual) and not all(v is not None for v in manual):
            raise ConfigError("give all of --coordinator, --num-processes and --process-id, or none "
                              "(to auto-detect the cluster)")


_initialized = False


def initialize(config: ParallelConfig) -> None:
    """``jax.distributed.initialize`` for ``--distributed`` runs (once per process).

    On CPU the cross-process collectives go through gloo.
    """
    global _initialized
    config.validate()
    if not config.distributed or _initialized:
        return
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=config.coordinator, num_processes=config.num_processes,
                                   process_id=config.process_id)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"--distributed: cannot join the cluster ({str(err).splitlines()[0][:200]}); "
                          "check --coordinator/--num-processes/--process-id") from None
    _initialized = True


def make_mesh(num_devices: int | None = None, fsdp: int = 1) -> Mesh:
    """A ``(data, fsdp)`` mesh over the first ``num_devices`` devices (default: all, on all hosts)."""
    devices = jax.devices()
    if num_devices is None or num_devices == 0:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ConfigError(f"--devices {num_devices}: only {len(devices)} device(s) available")
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ConfigError("--devices must be all devices when running on several hosts")
    if num_devices % fsdp:
        raise ConfigError(f"--fsdp {fsdp} does not divide the {num_devices} devices")
    return Mesh(np.array(devices[:num_devices]).reshape(num_devices // fsdp, fsdp), BATCH_AXES)


def mesh_from_config(config: ParallelConfig) -> Mesh:
    initialize(config)
    return make_mesh(config.devices, config.fsdp)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Replicated, or split over ``fsdp`` along the largest axis it divides."""
    if fsdp <= 1 or not shape:
        return P()
    candidates = [(size, axis) for axis, size in enumerate(shape) if size % fsdp == 0 and size >= fsdp]
    if not candidates:
        return P()
    _, axis = max(candidates)
    return P(*([None] * axis + [FSDP]))


def param_sharding(shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    """Where a parameter or optimizer-state array of ``shape`` lives: replicated, or FSDP-sharded by
    :func:`param_spec`."""
    return NamedSharding(mesh, param_spec(tuple(shape), mesh.shape[FSDP]))


def place_state(tree: Any, mesh: Mesh) -> Any:
    """Place parameters / optimizer state (:func:`param_sharding`)."""
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, param_sharding(np.shape(x), mesh)), tree)


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
