"""Device meshes, sharding and multi-host start-up with ``jax.sharding`` and ``jax.distributed``.

No ``pmap`` and no hand-written collectives: a ``Mesh`` with axes
``("data", "fsdp", "tensor")`` names the devices, arrays carry
``NamedSharding``s, and the same ``jax.jit``-compiled step runs on the global
arrays; XLA inserts the communication (the gradient all-reduce, FSDP's
all-gathers, tensor parallelism's all-reduces).

* Data parallelism: every batch array (and the recurrent carry) is split
  along its first, batch axis over the ``data`` and ``fsdp`` axes,
  ``P(("data", "fsdp"))``; the ``tensor`` devices of one group see the same rows.
* Parameters and optimizer state are replicated (``P()``), or sharded by
  :func:`state_spec`: every parameter array's trailing axes carry *logical*
  names (:data:`LOGICAL_AXES`, a rule table on parameter paths: ``embed``,
  ``heads``, ``mlp``, ``vocab``), and ONE table, :data:`RULES`, maps logical
  names to mesh axes. With ``--tensor N`` (Megatron-LM, Shoeybi et al. 2019)
  the attention's Q/K/V kernels ``(D, H dh)`` are split by heads (columns) and
  its output kernel ``(H dh, D)`` by rows; the FFN's first kernel ``(D, F)``
  by columns and its second ``(F, D)`` by rows; so a block needs one
  all-reduce after attention and one after the FFN (forward). The vocabulary
  axis of the embedding and output layer is split too when ``N`` divides it.
  With ``--fsdp N`` each array is further split over ``fsdp`` along its
  ``embed`` axis, or (arrays without names, the RNNs) its largest axis
  divisible by ``N`` (FSDP/ZeRO-3 style: a device stores ``1/N`` of the
  state and gathers a layer's weights when it uses them).
* Activations: :func:`constrain` pins the heads axis of ``Q, K, V``
  ``(B, H, T, dh)`` and the FFN's hidden ``(B T, F)`` to ``tensor`` (and the
  batch to ``data, fsdp``) while a train step is traced under
  :func:`mesh_context`; elsewhere it does nothing.
* Many hosts: ``jax.distributed.initialize`` joins the processes; each feeds
  its rows of the global batch and ``jax.make_array_from_process_local_data``
  assembles the global array.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseq.config import Config, option
from jaxseq.errors import ConfigError

DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
BATCH_AXES = (DATA, FSDP)
MESH_AXES = (DATA, FSDP, TENSOR)

# The logical axes of parameter arrays: (pattern on the parameter's path "a/b/kernel", names of its trailing
# axes). The path is the chain of dictionary keys, so optimizer-state copies (Adam's mu, nu) match as their
# parameters do; a leading layer axis (scan_layers) stays unnamed. First match wins.
LOGICAL_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(^|/)(query|key|value)/kernel$", ("embed", "heads")),        # column split: each device some heads
    (r"(^|/)(query|key|value)/bias$", ("heads",)),
    (r"(^|/)(attention|self_attention|cross_attention)/out/kernel$", ("heads", "embed")),   # row split
    (r"(^|/)ffn/dense1/kernel$", ("embed", "mlp")),                  # column split
    (r"(^|/)ffn/dense1/bias$", ("mlp",)),
    (r"(^|/)ffn/dense2/kernel$", ("mlp", "embed")),                  # row split
    (r"embedder/embed/embedding$", ("vocab", "embed")),             # (src_, tgt_)embedder
    (r"^out/kernel$", ("embed", "vocab")),                           # a Transformer's output layer
    (r"^out/bias$", ("vocab",)),
)

# THE rules: logical axis -> mesh axis. "heads" and "mlp" must be divisible by --tensor (checked with a
# message by check_tensor); "vocab" is split only when --tensor divides it, "embed" only when --fsdp does.
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "heads": TENSOR,
    "mlp": TENSOR,
    "vocab": TENSOR,
    "embed": FSDP,
}


@dataclass(frozen=True)
class ParallelConfig(Config):
    """Devices, parameter sharding and the multi-host cluster."""

    devices: int | None = option(None, "devices to use (default: all devices of all hosts)", minimum=1,
                                 resumable=True)
    fsdp: int = option(1, "shard parameters and optimizer state over this many devices (FSDP)", minimum=1,
                       resumable=True)
    tensor: int = option(1, "tensor parallelism: split attention heads and feed-forward width over this many "
                         "devices (Megatron-style; Transformers)", minimum=1, resumable=True)
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


def make_mesh(num_devices: int | None = None, fsdp: int = 1, tensor: int = 1) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over the first ``num_devices`` devices (default: all, on all hosts).

    ``tensor`` is the innermost axis: a tensor group is neighbouring devices (one host, fastest links).
    """
    devices = jax.devices()
    if num_devices is None or num_devices == 0:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ConfigError(f"--devices {num_devices}: only {len(devices)} device(s) available")
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ConfigError("--devices must be all devices when running on several hosts")
    if num_devices % (fsdp * tensor):
        what = f"--fsdp {fsdp} x --tensor {tensor}" if tensor > 1 else f"--fsdp {fsdp}"
        raise ConfigError(f"{what} does not divide the {num_devices} devices")
    if jax.process_count() > 1 and jax.local_device_count() % tensor:
        raise ConfigError(f"--tensor {tensor} must divide the {jax.local_device_count()} devices of one host "
                          "(a tensor group stays on one host; each host feeds its own rows)")
    grid = np.array(devices[:num_devices]).reshape(num_devices // (fsdp * tensor), fsdp, tensor)
    return Mesh(grid, MESH_AXES)


def mesh_from_config(config: ParallelConfig) -> Mesh:
    initialize(config)
    return make_mesh(config.devices, config.fsdp, config.tensor)


def axis_size(mesh: Mesh, axis: str) -> int:
    """The size of ``axis`` in ``mesh`` (1 if the mesh has no such axis)."""
    return int(dict(mesh.shape).get(axis, 1))


def check_tensor(tensor: int, sizes: dict[str, int] | None, model: str) -> None:
    """Refuse a ``--tensor`` the model cannot use.

    ``sizes``: the model's tensor-split sizes by flag (``{"--heads": 4, "--ffn": 512}``,
    :attr:`jaxseq.models.registry.ModelSpec.tensor_sizes`), None for a model without them.
    """
    if tensor <= 1:
        return
    if not sizes:
        raise ConfigError(f"--tensor {tensor}: --model {model} has no tensor-parallel axes (attention heads, "
                          "feed-forward width); use --tensor 1 (data parallelism and --fsdp still apply)")
    if any(n % tensor for n in sizes.values()):
        named = " and ".join(f"{flag} {n}" for flag, n in sizes.items())
        raise ConfigError(f"--tensor {tensor} does not divide {named}; choose a --tensor that divides "
                          + ("both" if len(sizes) == 2 else "each"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis over the ``data`` and ``fsdp`` axes of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Replicated, or split over ``fsdp`` along the largest axis it divides (arrays without logical names)."""
    return state_spec(shape, None, {FSDP: fsdp})


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...] | None:
    """The logical names of an array's axes from its parameter ``path`` (:data:`LOGICAL_AXES`), or None."""
    for pattern, names in LOGICAL_AXES:
        if re.search(pattern, path) and ndim >= len(names):
            return (None,) * (ndim - len(names)) + names
    return None


def state_spec(shape: Sequence[int], names: Sequence[str | None] | None, sizes: dict[str, int]) -> P:
    """The ``PartitionSpec`` of a parameter / optimizer-state array of ``shape`` on a mesh of axis ``sizes``.

    Each named axis goes to its mesh axis by :data:`RULES` when that axis has
    more than one device and divides it; then, if ``fsdp`` is still unused, the
    largest remaining axis that ``fsdp`` divides takes it.
    """
    shape = tuple(shape)
    spec: list[Any] = [None] * len(shape)
    used: set[str] = set()
    for axis, name in enumerate(names or ()):
        mesh_axis = RULES.get(name) if name else None
        if not isinstance(mesh_axis, str) or mesh_axis in used:
            continue
        n = sizes.get(mesh_axis, 1)
        if n > 1 and shape[axis] % n == 0:
            spec[axis] = mesh_axis
            used.add(mesh_axis)
    fsdp = sizes.get(FSDP, 1)
    if fsdp > 1 and FSDP not in used:
        free = [(size, axis) for axis, size in enumerate(shape)
                if spec[axis] is None and size % fsdp == 0 and size >= fsdp]
        if free:
            spec[max(free)[1]] = FSDP
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def _key_path(path: tuple) -> str:
    """``"a/b/kernel"``: the dictionary keys of a pytree path (attribute and index keys left out)."""
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def param_sharding(shape: tuple[int, ...], mesh: Mesh, path: str = "") -> NamedSharding:
    """Where a parameter or optimizer-state array of ``shape`` at ``path`` lives (:func:`state_spec`)."""
    names = logical_axes(path, len(shape)) if path else None
    sizes = {axis: axis_size(mesh, axis) for axis in MESH_AXES}
    return NamedSharding(mesh, state_spec(tuple(shape), names, sizes))


def state_sharding_tree(tree: Any, mesh: Mesh) -> Any:
    """:func:`param_sharding` of every leaf of ``tree`` (arrays or ``ShapeDtypeStruct``s), by its path."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: param_sharding(tuple(np.shape(x)), mesh, _key_path(path)), tree)


def place_state(tree: Any, mesh: Mesh) -> Any:
    """Place parameters / optimizer state (:func:`param_sharding`, by each leaf's path)."""
    return jax.tree_util.tree_map(jax.device_put, tree, state_sharding_tree(tree, mesh))


@contextmanager
def mesh_context(mesh: Mesh | None) -> Iterator[None]:
    """Trace under ``mesh`` so that :func:`constrain` applies (entered inside the traced function:
    ``jax.sharding.use_abstract_mesh``); nothing for a mesh without a ``tensor`` axis > 1."""
    if mesh is None or axis_size(mesh, TENSOR) == 1:
        yield
        return
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        yield


def _context_sizes() -> dict[str, int]:
    mesh = jax.sharding.get_abstract_mesh()
    return {} if mesh.empty else dict(mesh.shape)


def tensor_size() -> int:
    """The ``tensor`` axis of the mesh being traced under (:func:`mesh_context`), else 1."""
    return _context_sizes().get(TENSOR, 1)


def constrain(x: Any, names: Sequence[str | None]) -> Any:
    """Pin activation ``x``'s axes, named logically (``("batch", "heads", None, None)``), to mesh axes by
    :data:`RULES` (``with_sharding_constraint``) when traced under a mesh with a ``tensor`` axis > 1;
    else ``x`` unchanged. An axis the mesh axis does not divide stays unconstrained."""
    sizes = _context_sizes()
    if sizes.get(TENSOR, 1) <= 1:
        return x
    spec = []
    for size, name in zip(x.shape, names):
        axes = RULES.get(name) if name else None
        axes_t = (axes,) if isinstance(axes, str) else tuple(axes or ())
        n = int(np.prod([sizes.get(a, 1) for a in axes_t])) if axes_t else 1
        spec.append(axes if axes_t and size % n == 0 else None)
    return jax.lax.with_sharding_constraint(x, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, flag: str = "--batch-size") -> None:
    """The batch is split over the ``data`` and ``fsdp`` axes (the ``tensor`` devices share rows)."""
    tensor = axis_size(mesh, TENSOR)
    n = mesh.devices.size // tensor
    if batch_size % n:
        where = f"the {n} devices" if tensor == 1 else f"the {n} batch groups ({mesh.devices.size} devices / " \
                                                        f"--tensor {tensor})"
        raise ConfigError(f"{flag} {batch_size} is not divisible by {where}; "
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
