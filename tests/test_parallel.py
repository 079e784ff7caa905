"""Data parallelism, FSDP, mixed precision, remat, multi-host and device-count changes on restore."""

import os
import shutil
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseq import losses, parallel, train
from jaxseq.data.lm import LMBatches
from jaxseq.errors import ConfigError
from jaxseq.tasks.lm import build_lm
from jaxseq.optim import OptimConfig, make_optimizer
from jaxseq.tasks import lm as lm_task
from jaxseq.workdir import Workdir

IDS = np.random.default_rng(0).integers(0, 11, size=2000).astype(np.int32)


def _train(mesh, steps=4, dtype="float32", remat=False, backward="custom"):
    model = build_lm("gru", 11, hidden=16, layers=2, backward=backward, dtype=dtype, remat=remat)
    tx = make_optimizer(OptimConfig(lr=1e-2), steps)
    batches = LMBatches(IDS, seq_len=8, batch_size=8, sampling="sequential", seed=0)
    state = train.create_state(model, tx, batches.batch(0, 0), 0, mesh, model.initial_carry(8))
    config = train.TrainConfig(steps=steps, eval_every=0, log_every=1, progress=False)
    result = train.fit(model, state, tx, batches, total_steps=steps, config=config, mesh=mesh)
    losses_ = [h["loss"] for h in result.history if h["split"] == "train"]
    return jax.device_get(result.state.params), losses_, result.state


@pytest.fixture(scope="module")
def single_device_run():
    return _train(parallel.make_mesh(1))


def _assert_close(a, b, rtol=2e-5, atol=1e-6):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_data_parallel_equals_single_device(single_device_run):
    params1, losses1, _ = single_device_run
    params4, losses4, state4 = _train(parallel.make_mesh(4))
    np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
    _assert_close(params4, params1)
    # the batch (and the carried state) is split over the 4 devices, parameters replicated
    carry = state4.carry[0]
    assert len(carry.sharding.device_set) == 4 and carry.addressable_shards[0].data.shape == (2, 16)
    w = state4.params["out"]["kernel"]
    assert w.sharding.is_fully_replicated


def test_fsdp_equals_single_device(single_device_run):
    params1, losses1, _ = single_device_run
    params, losses_, state = _train(parallel.make_mesh(4, fsdp=2))
    np.testing.assert_allclose(losses_, losses1, rtol=1e-5)
    _assert_close(params, params1)
    w = state.params["rnn"]["layer1"]["cell"]["W_hr"]       # (16, 16): split over the fsdp axis
    assert not w.sharding.is_fully_replicated
    assert w.addressable_shards[0].data.size == w.size // 2


def test_param_spec_rule():
    assert parallel.param_spec((104, 256), 4) == jax.sharding.PartitionSpec(None, "fsdp")
    assert parallel.param_spec((7, 3), 4) == jax.sharding.PartitionSpec()
    assert parallel.param_spec((), 4) == jax.sharding.PartitionSpec()
    assert parallel.param_spec((8,), 1) == jax.sharding.PartitionSpec()


def test_remat_and_bfloat16_match_float32(single_device_run):
    params1, losses1, _ = single_device_run
    mesh = parallel.make_mesh(1)
    params_r, losses_r, _ = _train(mesh, remat=True)
    np.testing.assert_allclose(losses_r, losses1, rtol=1e-5)
    _assert_close(params_r, params1)
    params_a, losses_a, _ = _train(mesh, remat=True, backward="autodiff")
    np.testing.assert_allclose(losses_a, losses1, rtol=1e-4)
    params_b, losses_b, state_b = _train(mesh, dtype="bfloat16")
    np.testing.assert_allclose(losses_b, losses1, rtol=2e-2)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params_b))   # params stay float32
    # Adam moves every weight by about lr per step whatever the gradient's size, so bf16 rounding
    # can flip a tiny gradient's sign: allow 3 steps' worth (3 * lr) of difference
    _assert_close(params_b, params1, rtol=0.0, atol=3e-2)


def test_batch_not_divisible_by_devices_is_refused():
    with pytest.raises(ConfigError, match="not divisible by the 4 devices"):
        parallel.check_batch_size(6, parallel.make_mesh(4))
    with pytest.raises(ConfigError, match="only 4 device"):
        parallel.make_mesh(8)
    with pytest.raises(ConfigError, match="does not divide"):
        parallel.make_mesh(4, fsdp=3)
    with pytest.raises(ConfigError, match="need --distributed"):
        parallel.ParallelConfig(process_id=1).validate()


def test_all_padding_batch_gives_finite_loss_and_zero_gradient():
    model = build_lm("gru", 5, hidden=8)
    batch = {"inputs": jnp.zeros((2, 3), jnp.int32), "targets": jnp.zeros((2, 3), jnp.int32),
             "weights": jnp.zeros((2, 3))}
    params = train.init_params(model, batch, 0)

    def loss(p):
        logits, _ = model.apply({"params": p}, batch)
        return losses.mean_loss(*losses.weighted_cross_entropy(logits, batch["targets"], batch["weights"]))

    value, grads = jax.value_and_grad(loss)(params)
    assert float(value) == 0.0
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(grads))


# -- whole runs through the work directory ----------------------------------------------------------

TEXT = "to be, or not to be, that is the question: whether tis nobler in the mind to suffer. " * 25


def _run(tmp_path, name, steps, devices=None, resume=False, given=None):
    path = tmp_path / "corpus.txt"
    if not path.exists():
        path.write_text(TEXT)
    run = lm_task.resolve(data=str(path), seq_len=8, batch_size=8, sampling="sequential", model="gru", hidden=16,
                          lr=1e-2, steps=steps, eval_every=0, checkpoint_every=4, log_every=2, progress=False,
                          devices=devices)
    workdir = Workdir(tmp_path / name)
    lm_task.train_lm(run, workdir, resume=resume, given=given, baseline=False, sample_length=0,
                     echo=lambda m: None)
    return workdir


def _params(workdir):
    return jax.device_get(lm_task.runner.load(workdir, lm_task.TASK).params)


@pytest.fixture(scope="module")
def four_device_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    return tmp, _params(_run(tmp, "full", 8, devices=4))


@pytest.mark.parametrize("devices", [1, 2])
def test_restore_onto_another_device_count(four_device_reference, tmp_path, devices):
    """Save on 4 devices, resume on 1 or 2: the run continues (to float tolerance)."""
    ref_dir, reference = four_device_reference
    shutil.copy(ref_dir / "corpus.txt", tmp_path / "corpus.txt")
    _run(tmp_path, "moved", 4, devices=4)
    workdir = _run(tmp_path, "moved", 8, devices=devices, resume=True,
                   given={"steps": 8, "devices": devices})
    _assert_close(_params(workdir), reference, rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_on_loopback_match_one(four_device_reference, tmp_path):
    """Two processes with 2 CPU devices each train like one process with 4 devices."""
    ref_dir, reference = four_device_reference
    shutil.copy(ref_dir / "corpus.txt", tmp_path / "corpus.txt")
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "jaxseq.cli", "train", "lm", "--data", str(tmp_path / "corpus.txt"),
           "--seq-len", "8", "--batch-size", "8", "--sampling", "sequential", "--hidden", "16", "--lr", "0.01",
           "--steps", "8", "--eval-every", "0", "--checkpoint-every", "4", "--log-every", "2", "--no-progress",
           "--no-baseline", "--sample", "0", "--workdir", str(tmp_path / "multi"),
           "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    procs = [subprocess.Popen(cmd + ["--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert "validation perplexity" in outs[0][0] and "validation perplexity" not in outs[1][0]  # process 0 reports
    _assert_close(_params(Workdir(tmp_path / "multi")), reference, rtol=1e-4, atol=1e-5)
