"""Test-suite set-up: 4 CPU devices and strict promotion, before JAX is imported."""

import os

# 4 CPU devices; LLVM's backend optimisation off: on 2 cores compiling dominates the suite, and level 0
# compiles the same programs (same results, less optimised machine code) ~20% faster
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")

import tempfile  # noqa: E402

# One persistent compilation cache for the session, shared with the CLI subprocesses the tests
# start: the same small programs are compiled by many tests, and on 2 cores compiling dominates.
_CACHE = None if "JAX_COMPILATION_CACHE_DIR" in os.environ else tempfile.mkdtemp(prefix="jaxseq-xla-cache-")
if _CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
# the measured peak FLOP/s (jaxseq.hardware) is cached under $XDG_CACHE_HOME: the session's own, not the user's
_XDG = tempfile.mkdtemp(prefix="jaxseq-xdg-cache-")
os.environ["XDG_CACHE_HOME"] = _XDG
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

import pytest  # noqa: E402


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty dataset cache ($JAXSEQ_DATA) for the test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("JAXSEQ_DATA", str(cache))
    return cache


def pytest_sessionfinish(session, exitstatus):
    import shutil
    shutil.rmtree(_XDG, ignore_errors=True)
    if _CACHE:
        shutil.rmtree(_CACHE, ignore_errors=True)
