"""Peak FLOP/s of a device, for model FLOPs utilisation (MFU).

``MFU = achieved model FLOP/s per device / peak FLOP/s per device``, with the
achieved rate from the analytic count of :mod:`jaxseq.flops`.

The peak comes from, in this order: ``--peak-flops`` (the user's figure);
:data:`PEAKS`, the vendors' dense (no sparsity) matrix figures per chip,
keyed by ``jax.devices()[0].device_kind``; else (a CPU, an unknown device) a
measured peak: the best rate of a large matrix product on the device
(:func:`measure_peak`), cached per machine in
``$XDG_CACHE_HOME/jaxseq/peak_flops.json`` (default ``~/.cache``).

A measured peak is a lower bound on a GPU or TPU missing from the table (a
1024^3 product does not fill a large accelerator), so MFU reads high there:
give ``--peak-flops`` for such a device.

For float32 runs the GPU entries are the TF32 tensor-core figures: XLA's
default precision runs float32 products on them (``jax_default_matmul_precision``
``highest`` would need the plain FP32 figures, quoted beside each entry).
A TPU runs float32 products as bfloat16 passes at default precision, so its
float32 entry is its bfloat16 figure.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

# device_kind (lower case; the first entry whose key starts the kind wins) -> FLOP/s per chip
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    # Google Cloud TPU documentation, "TPU v4": 275 TFLOPs bf16 per chip
    ("tpu v4", {"bfloat16": 275e12, "float32": 275e12}),
    # "TPU v5e" (device_kind "TPU v5 lite"): 197 TFLOPs bf16 per chip
    ("tpu v5 lite", {"bfloat16": 197e12, "float32": 197e12}),
    ("tpu v5e", {"bfloat16": 197e12, "float32": 197e12}),
    # "TPU v5p" (device_kind "TPU v5"): 459 TFLOPs bf16 per chip
    ("tpu v5p", {"bfloat16": 459e12, "float32": 459e12}),
    ("tpu v5", {"bfloat16": 459e12, "float32": 459e12}),
    # "TPU v6e" / Trillium (device_kind "TPU v6 lite"): 918 TFLOPs bf16 per chip
    ("tpu v6 lite", {"bfloat16": 918e12, "float32": 918e12}),
    ("tpu v6e", {"bfloat16": 918e12, "float32": 918e12}),
    # NVIDIA H200 datasheet (SXM): BF16 1,979 TFLOPS with sparsity = 989.5 dense; TF32 494.7 dense; FP32 67
    ("nvidia h200 nvl", {"bfloat16": 835.5e12, "float32": 417.5e12}),   # NVL: BF16 1,671 sparse; TF32 835 sparse; FP32 60
    ("nvidia h200", {"bfloat16": 989.5e12, "float32": 494.7e12}),
    # NVIDIA H100 datasheet: PCIe BF16 1,513 sparse = 756.5 dense, TF32 378; FP32 51
    ("nvidia h100 pcie", {"bfloat16": 756.5e12, "float32": 378e12}),
    # SXM5 (device_kind "NVIDIA H100 80GB HBM3"): BF16 1,979 sparse = 989.5 dense, TF32 494.7; FP32 67
    ("nvidia h100", {"bfloat16": 989.5e12, "float32": 494.7e12}),
    # NVIDIA A100 datasheet (SXM4 and PCIe): BF16 312 dense, TF32 156 dense; FP32 19.5
    ("nvidia a100", {"bfloat16": 312e12, "float32": 156e12}),
)


def device_kind() -> str:
    return jax.devices()[0].device_kind


def table_peak(kind: str, dtype: str) -> float | None:
    """The vendor peak of a ``device_kind`` for ``dtype`` (``"float32"``, ``"bfloat16"``), or None."""
    kind = kind.lower()
    for prefix, peaks in PEAKS:
        if kind.startswith(prefix):
            return peaks.get(dtype)
    return None


def measure_peak(dtype: str = "float32", size: int = 1024, repeats: int = 5) -> float:
    """The best FLOP/s of a ``(size, size) x (size, size)`` product on the default device.

    ``2 size^3`` FLOPs per product; the first call compiles and is not timed;
    the best of ``repeats`` is the peak (less disturbed by other jobs).
    """
    a = jnp.ones((size, size), jnp.dtype(dtype))
    product = jax.jit(lambda x, y: x @ y)
    product(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def cache_path() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxseq" / "peak_flops.json"


def _machine_key(kind: str, dtype: str) -> str:
    return f"{platform.node()}|{platform.machine()}|{os.cpu_count()}|{kind}|{jax.__version__}|{dtype}"


def measured_peak(dtype: str = "float32") -> float:
    """:func:`measure_peak`, measured once per machine, device kind, JAX version and dtype, then cached."""
    path, key = cache_path(), _machine_key(device_kind(), dtype)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and isinstance(cached.get(key), (int, float)):
        return float(cached[key])
    peak = measure_peak(dtype)
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = peak
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass                     # a read-only home: measure again next time
    return peak


def peak_flops(dtype: str = "float32", override: float | None = None) -> tuple[float, str]:
    """``(peak FLOP/s per device, where it came from)``: ``override``, the table, or the measured peak."""
    if override:
        return float(override), "--peak-flops"
    kind = device_kind()
    peak = table_peak(kind, dtype)
    if peak is not None:
        return peak, f"{kind} {dtype} (vendor figure)"
    return measured_peak(dtype), f"{kind} {dtype} (measured matmul peak, cached in {cache_path()})"
