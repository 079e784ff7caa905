"""Keep freed memory in the process, so XLA:CPU's per-step buffers do not page-fault.

XLA:CPU allocates the temporaries of every run of a compiled function afresh
(one block, ~100 MB for a training step of the benchmark Transformer) and
frees them at the end. glibc serves a block that large with ``mmap`` (always
from a thread's secondary arena, whose heaps are at most 64 MB) and returns it
with ``munmap``, so every step touches ~26,000 fresh pages: a page fault and
a zeroed page each, ~25-35% of the step time on the project's 2-core CPU
(``benchmarks/bench_transformer.py``). Three ``mallopt`` settings keep the
memory instead: one arena (the main, ``brk``-grown heap), no ``mmap`` for
large blocks, and no trimming of the heap's top.

The costs: the process keeps its peak heap (it is not returned to the system
until exit), and XLA's threads share one arena's lock, which slowed the
small-matrix GRU training step by about 10% (``benchmarks/bench_rnn.py``
setup, measured 2026-11-27). So the settings are not applied at import:
``jaxseq train`` of a model whose registry entry says ``tuned_allocator`` (the
Transformers) applies them before XLA starts its
threads, and a program that trains a Transformer through the library calls
:func:`keep_freed_memory` first thing. ``JAXSEQ_KEEP_MEMORY=0`` turns them
off; other C libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the settings above once; True when they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("JAXSEQ_KEEP_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version                      # glibc only
        version.restype = ctypes.c_char_p
        gnu = version()
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not gnu:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in
                   ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))
    return _applied
