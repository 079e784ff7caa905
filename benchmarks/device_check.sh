#!/usr/bin/env bash
# jaxseq on one accelerator: one table in under 8 minutes (benchmarks/device_check.py has the sections).
#
# Who runs it: a person with one GPU (or TPU) and a Python that has a CUDA (or TPU) JAX. jaxseq is NOT
# installed: it is used from this checkout (the script puts the repository root on PYTHONPATH).
#
#   bash benchmarks/device_check.sh               # full sizes; needs an accelerator; ~7.5 minutes
#   bash benchmarks/device_check.sh --cpu-smoke   # the same code at tiny sizes on the CPU, about a minute
#   OUT=/some/dir bash benchmarks/device_check.sh # also writes device_check.md, device_check.json, device_check_logs.txt (rewritten as each section ends)
#   bash benchmarks/device_check.sh --sections transformer gru --budget 200    # a subset
#
# What it needs beyond a CUDA JAX image: jaxseq imports jax, flax, optax, orbax-checkpoint, numpy, tqdm,
# matplotlib at `import jaxseq.tasks.lm` (babel is read only by the dates corpus, sacrebleu only for BLEU,
# tensorboardX only with --events: none of them is used here); PyTorch is optional (its rows are skipped
# without it). A CUDA image with JAX, Flax and PyTorch (e.g. the H200 image: jax 0.11.2, flax, optax,
# orbax-checkpoint, torch 2.11) needs nothing more.
#
# No network: this script installs nothing from a registry. Carry a missing package as wheels instead:
#   here (with network):  pip download PACKAGE==VERSION --only-binary=:all: --no-deps \
#                             --python-version 3.12 --platform manylinux2014_x86_64 -d .whl
#   there:                this script finds .whl/*.whl in the repository root and runs
#                         pip install --no-index --no-deps --target .whl/site .whl/*.whl
#                         then puts .whl/site on PYTHONPATH. (.whl/ is git-ignored: name it in what you
#                         carry to the machine, e.g. the device tool's carry=[".whl"].)
#
# Robustness: each section runs in its own process under its own time cap, a crash or timeout prints
# ERROR in its row and the next section runs; the table is printed last. JAX does not preallocate GPU
# memory here (XLA_PYTHON_CLIENT_PREALLOCATE=false) so JAX and PyTorch can share the card.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || PY=python

if compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing carried wheels from .whl/ (no network)"
    "$PY" -m pip install --quiet --no-index --no-deps --target .whl/site .whl/*.whl \
        || echo "WARNING: installing the carried wheels failed; continuing with what is installed"
fi
if [ -d .whl/site ]; then
    export PYTHONPATH="$ROOT/.whl/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}

# preflight: every module jaxseq's benchmarks import, named if missing (one line each)
"$PY" - <<'PYEOF' || { echo "device_check: a package is missing (above); carry it as a wheel (see this script's header)"; exit 1; }
import importlib, sys
missing = []
for name in ("jax", "flax", "optax", "orbax.checkpoint", "numpy", "tqdm", "matplotlib", "jaxseq.tasks.lm"):
    try:
        importlib.import_module(name)
    except Exception as exc:
        missing.append(f"{name}: {type(exc).__name__}: {exc}")
for line in missing:
    print("missing:", line)
sys.exit(1 if missing else 0)
PYEOF

exec "$PY" benchmarks/device_check.py "$@"
