"""The trainer: clipping, exact perplexity, memorisation, exact resume, compile counts, non-finite loss."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseq import losses, parallel, train
from jaxseq.data.lm import LMBatches
from jaxseq.errors import ConfigError, TrainingError
from jaxseq.metrics import perplexity
from jaxseq.tasks.lm import build_lm
from jaxseq.optim import OptimConfig, make_optimizer, schedule
from jaxseq.tasks import lm as lm_task
from jaxseq.workdir import Workdir


@pytest.fixture(scope="module")
def mesh1():
    return parallel.make_mesh(1)


def test_clipping_bounds_the_global_norm():
    """g <- min(1, clip/||g||) g: SGD with lr 1 moves parameters by exactly the clipped gradient."""
    tx = make_optimizer(OptimConfig(optimizer="sgd", lr=1.0, clip=0.5), 10)
    params = {"a": jnp.zeros((3,)), "b": jnp.zeros((2, 2))}
    state = tx.init(params)
    for scale in (0.01, 1.0, 100.0):
        grads = {"a": scale * jnp.array([1.0, -2.0, 3.0]), "b": scale * jnp.ones((2, 2))}
        updates, _ = tx.update(grads, state, params)
        norm = optax.tree.norm(grads)
        expected = jax.tree_util.tree_map(lambda g: -g * min(1.0, 0.5 / float(norm)), grads)
        for u, e in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
            np.testing.assert_allclose(u, e, rtol=1e-6)
        assert float(optax.tree.norm(updates)) <= 0.5 + 1e-6


def test_nonfinite_gradients_skip_the_update():
    tx = make_optimizer(OptimConfig(optimizer="adam", lr=0.1), 10)
    params = {"w": jnp.ones((2,))}
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.array([jnp.nan, 1.0])}, state, params)
    np.testing.assert_array_equal(updates["w"], 0.0)
    assert int(state.notfinite_count) == 1
    updates, state = tx.update({"w": jnp.array([1.0, 1.0])}, state, params)
    assert int(state.notfinite_count) == 0 and np.all(np.asarray(updates["w"]) != 0)


def test_schedules():
    cos = schedule(OptimConfig(lr=1e-3, schedule="cosine", warmup=100, min_lr=1e-4), 2000)
    assert float(cos(0)) == 0.0
    np.testing.assert_allclose(float(cos(100)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(cos(2000)), 1e-4, rtol=1e-5)
    rs = schedule(OptimConfig(lr=1.0, schedule="rsqrt", warmup=4), 100)
    np.testing.assert_allclose([float(rs(s)) for s in (0, 3, 15)], [0.25, 1.0, 0.5], rtol=1e-6)
    const = schedule(OptimConfig(lr=0.5), 10)
    assert float(const(7)) == 0.5
    with pytest.raises(ConfigError, match="weight-decay"):
        make_optimizer(OptimConfig(optimizer="adam", weight_decay=0.1), 10)


def test_weighted_cross_entropy_matches_numpy_and_ignores_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 5)).astype(np.float32)
    targets = rng.integers(0, 5, size=(2, 3))
    weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    logits_bad = logits.copy()
    logits_bad[1, 2] = np.inf    # padding may hold anything
    total, count = losses.weighted_cross_entropy(jnp.asarray(logits_bad), jnp.asarray(targets), jnp.asarray(weights))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ref = -sum(logp[b, t, targets[b, t]] for b in range(2) for t in range(3) if weights[b, t])
    np.testing.assert_allclose(float(total), ref, rtol=1e-5)
    assert float(count) == 3.0
    # label smoothing: (1-eps) nll + eps * mean_v(-log p_v)
    smooth, _ = losses.weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), 0.1)
    ref_s = sum(0.9 * -logp[b, t, targets[b, t]] + 0.1 * -logp[b, t].mean()
                for b in range(2) for t in range(3) if weights[b, t])
    np.testing.assert_allclose(float(smooth), ref_s, rtol=1e-5)
    # an all-padding batch: finite zero loss
    assert float(losses.mean_loss(*losses.weighted_cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), jnp.zeros((2, 3))))) == 0.0


@pytest.fixture(scope="module")
def small_lm():
    model = build_lm("gru", 7, hidden=16)
    return model


def test_perplexity_is_exact_across_batch_splits(small_lm, mesh1):
    rng = np.random.default_rng(1)
    inputs = rng.integers(0, 7, size=(8, 6)).astype(np.int32)
    targets = rng.integers(0, 7, size=(8, 6)).astype(np.int32)
    weights = (rng.random((8, 6)) > 0.3).astype(np.float32)
    params = train.init_params(small_lm, {"inputs": inputs}, 0)
    step = train.make_eval_step(small_lm)
    whole = train.evaluate(step, params, [{"inputs": inputs, "targets": targets, "weights": weights}], mesh1)
    halves = [{"inputs": inputs[i:i + 4], "targets": targets[i:i + 4], "weights": weights[i:i + 4]}
              for i in (0, 4)]
    split = train.evaluate(step, params, halves, mesh1)
    assert whole["tokens"] == split["tokens"] == int(weights.sum())
    np.testing.assert_allclose(split["perplexity"], whole["perplexity"], rtol=1e-6)
    # and it is exp of the mean NLL computed directly
    logits, _ = small_lm.apply({"params": params}, {"inputs": inputs})
    total, count = losses.weighted_cross_entropy(logits, jnp.asarray(targets), jnp.asarray(weights))
    np.testing.assert_allclose(whole["perplexity"], perplexity(float(total), float(count)), rtol=1e-6)
    assert perplexity(0.0, 5) == 1.0 and perplexity(5 * np.log(7), 5) == pytest.approx(7.0)


def _fit(model, ids, steps, mesh, *, seed=0, sampling="random", batch_size=4, seq_len=8, lr=1e-2,
         checkpointer=None, state=None, batches=None, tx=None, valid=None, **options):
    tx = tx or make_optimizer(OptimConfig(optimizer="adam", lr=lr), steps)
    batches = batches or LMBatches(ids, seq_len=seq_len, batch_size=batch_size, sampling=sampling, seed=seed)
    if state is None:
        carry = model.initial_carry(batch_size) if sampling == "sequential" else None
        state = train.create_state(model, tx, batches.batch(0, 0), seed, mesh, carry)
    config = train.TrainConfig(**{"steps": steps, "eval_every": 0, "log_every": 5, "progress": False, **options})
    result = train.fit(model, state, tx, batches, total_steps=steps, config=config, mesh=mesh,
                       checkpointer=checkpointer, valid_batches=valid)
    return result, batches


def test_tiny_corpus_is_memorised(mesh1):
    text = "abcabdabcabe" * 40
    ids = np.array(["abcde".index(c) for c in text], np.int32)
    model = build_lm("gru", 5, hidden=32)
    result, _ = _fit(model, ids, 150, mesh1, seq_len=12, batch_size=8, lr=2e-2, sampling="sequential")
    valid = [{"inputs": ids[None, :-1][:, :96].repeat(1, 0), "targets": ids[None, 1:][:, :96],
              "weights": np.ones((1, 96), np.float32)}]
    score = train.evaluate(train.make_eval_step(model), result.state.params, valid, mesh1)
    # 'abcab?' has an unpredictable 6th letter only where 12-periodic context is missing
    assert score["perplexity"] < 1.5, score


def test_train_step_compiles_once(small_lm, mesh1):
    ids = np.random.default_rng(0).integers(0, 7, size=500).astype(np.int32)
    tx = make_optimizer(OptimConfig(), 10)
    batches = LMBatches(ids, seq_len=8, batch_size=4, seed=0)
    state = train.create_state(small_lm, tx, batches.batch(0, 0), 0, mesh1)
    step = train.make_train_step(small_lm, tx, shardings=(train.state_shardings(state),
                                                          parallel.batch_sharding(mesh1)))
    for _ in range(6):
        state, metrics = step(state, parallel.shard_batch(next(batches), mesh1))
    assert step.traces[0] == 1
    assert int(state.step) == 6


def test_nonfinite_loss_stops_with_the_step_named(small_lm, mesh1):
    ids = np.random.default_rng(0).integers(0, 7, size=500).astype(np.int32)

    class Poisoned(LMBatches):
        def __next__(self):
            batch = super().__next__()
            if self.index >= 4 or self.epoch > 0:   # batches from the 4th on have NaN weights
                batch = dict(batch, weights=np.full_like(batch["weights"], np.nan))
            return batch

    batches = Poisoned(ids, seq_len=8, batch_size=4, seed=0)
    with pytest.raises(TrainingError, match=r"step 4: the loss or gradients became non-finite \(3 steps in a row"):
        _fit(small_lm, ids, 20, mesh1, batches=batches, max_nonfinite=3)
    # any optax transformation trains: without apply_if_finite the trainer counts the streak itself
    batches = Poisoned(ids, seq_len=8, batch_size=4, seed=0)
    with pytest.raises(TrainingError, match=r"step 4: .* \(3 steps in a row"):
        _fit(small_lm, ids, 20, mesh1, batches=batches, tx=optax.sgd(0.1), max_nonfinite=3)


def test_any_optax_transformation_trains(small_lm, mesh1):
    """A plain optax optimizer (no apply_if_finite in its state) trains, and lowers the loss."""
    ids = np.array(["abcde".index(c) for c in "abcabdabcabe" * 40], np.int32)
    result, _ = _fit(small_lm, ids, 60, mesh1, tx=optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0)),
                     log_every=10)
    train_losses = [r["loss"] for r in result.history if r["split"] == "train"]
    assert train_losses[-1] < 0.7 * train_losses[0]
    assert int(jax.device_get(train.nonfinite_count(result.state.opt_state))) == 0


def test_time_limit_ends_the_run_like_its_last_step(small_lm, mesh1, tmp_path):
    """Past --time-limit the run stops at the next log step, validated and checkpointed there."""
    from jaxseq.checkpoint import Checkpointer
    ids = np.random.default_rng(0).integers(0, 7, size=500).astype(np.int32)
    valid = [LMBatches(ids, seq_len=8, batch_size=4, seed=1).batch(0, 0)]
    ckpt = Checkpointer(tmp_path / "ckpt")
    try:
        result, _ = _fit(small_lm, ids, 1000, mesh1, checkpointer=ckpt, valid=valid, time_limit=1e-6,
                         eval_every=5)
        assert result.timed_out and result.interrupted is None
        assert int(result.state.step) == 5 and ckpt.latest_step() == 5
        assert result.valid["step"] == 5 and np.isfinite(result.valid["nll"])
        assert [r["step"] for r in result.history if r["split"] == "valid"] == [5]     # validated once
    finally:
        ckpt.close()
    with pytest.raises(ConfigError, match="--time-limit"):
        train.TrainConfig(time_limit=0).validate()


def _params_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_resume_is_exact_through_the_workdir(tmp_path, sampling):
    """Train N steps in one go, or N/2, stop, resume, N/2 more: identical parameters."""
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 30)
    flags = dict(data=str(text), seq_len=8, batch_size=4, sampling=sampling, model="gru", hidden=16, dropout=0.1,
                 embedding=8, lr=1e-2, eval_every=0, checkpoint_every=0, progress=False)
    quiet = lambda m: None
    lm_task.train_lm(lm_task.resolve(flags, steps=12), Workdir(tmp_path / "full"), baseline=False, echo=quiet)
    half = lm_task.resolve(flags, steps=6)
    lm_task.train_lm(half, Workdir(tmp_path / "half"), baseline=False, echo=quiet)
    lm_task.train_lm(half, Workdir(tmp_path / "half"), resume=True, given={"steps": 12}, baseline=False, echo=quiet)
    full = lm_task.runner.load(Workdir(tmp_path / "full"), lm_task.TASK)
    resumed = lm_task.runner.load(Workdir(tmp_path / "half"), lm_task.TASK)
    assert resumed.run.train.steps == 12
    assert _params_equal(full.params, resumed.params)
    # the last validation of each run (checkpoint records, with checkpoint_blocked_s, come after it)
    last = lambda name: [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                         if "perplexity" in json.loads(l)][-1]
    assert last("full")["perplexity"] == last("half")["perplexity"]
