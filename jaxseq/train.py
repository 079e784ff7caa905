"""One trainer for every model: TrainState, the jit-compiled steps, and the fit loop.

``train_step`` computes, for a batch with targets ``y`` and weights ``w``,

    loss(theta) = sum_bt w_bt nll_bt(theta) / sum_bt w_bt          (jaxseq.losses)
    g           = grad loss(theta)
    theta      <- theta + optimizer(clip(g))                        (jaxseq.optim)

as ONE ``jax.jit``-compiled function with the state donated, compiled once per
batch shape. ``eval_step`` returns the summed NLL and the token count, so the
validation perplexity ``exp(sum NLL / sum tokens)`` is exact whatever the
batch split.

A recurrent carry between batches (sequential partitioning) is part of the
TrainState: ``train_step`` feeds ``state.carry`` to the model and stores the
new carry with ``stop_gradient`` (truncated backpropagation through time).
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from jaxseq import losses, parallel
from jaxseq.checkpoint import Checkpointer
from jaxseq.config import Config, option
from jaxseq.errors import ConfigError, TrainingError
from jaxseq.metrics import perplexity
from jaxseq.metrics_log import MetricsLog
from jaxseq.optim import nonfinite_count
from jaxseq.profiling import StepProfiler, parse_window

Array = jax.Array
Batch = dict[str, Any]
BEST_METRICS = ("loss", "bleu", "chrf")


@dataclass(frozen=True)
class TrainConfig(Config):
    """How long to train and how often to validate, log and checkpoint."""

    steps: int | None = option(None, "training steps (parameter updates)", minimum=1, resumable=True,
                               excludes="epochs")
    epochs: int | None = option(None, "passes over the training data (instead of --steps)", minimum=1,
                                resumable=True, excludes="steps")
    seed: int = option(0, "seed for initialisation, data order and dropout")
    eval_every: int = option(500, "validate every N steps (0: only at the end)", minimum=0, resumable=True)
    log_every: int = option(50, "log training metrics every N steps", minimum=1, resumable=True)
    checkpoint_every: int = option(1000, "checkpoint every N steps (and always at the end)", minimum=0,
                                   resumable=True)
    keep: int = option(3, "how many recent checkpoints to keep", minimum=1, resumable=True)
    async_checkpoint: bool = option(False, "write checkpoints in the background (Orbax async): the loop waits only "
                                    "for the copy off the devices; a step counts once fully written",
                                    resumable=True)
    average_last: int = option(0, "after training, average the parameters of the last K checkpoints into "
                               "checkpoints/averaged (as `jaxseq average --last K`) and report the average's "
                               "scores too (0: off; needs --keep K or more)", minimum=0, resumable=True)
    keep_best: bool = option(False, "also keep the checkpoint with the best validation --best-metric "
                             "(checkpoints/best)")
    best_metric: str = option("loss", "validation metric that picks checkpoints/best and drives --patience: "
                              "loss (lower is better), or bleu / chrf (translation, higher is better)",
                              choices=BEST_METRICS)
    patience: int | None = option(None, "stop early after this many validations in a row without a better "
                                  "--best-metric (none: never)", minimum=1, resumable=True)
    label_smoothing: float = option(0.0, "label smoothing of the training loss", minimum=0.0, below=1.0)
    dtype: str = option("float32", "precision policy: float32, or bfloat16 = bf16 compute (matmuls, activations, "
                        "attention; softmax and recurrences in float32) with float32 parameters, optimizer "
                        "state, gradients and loss",
                        choices=("float32", "bfloat16"))
    remat: bool = option(False, "recompute activations in the backward pass (less memory, more compute)")
    time_limit: float | None = option(None, "stop after this many seconds of this run (checked every --log-every "
                                      "steps), then validate, checkpoint and report as at the last step; "
                                      "the schedule still spans --steps", above=0.0, resumable=True)
    max_nonfinite: int = option(5, "stop after this many non-finite steps in a row (each is skipped)", minimum=1,
                                resumable=True)
    progress: bool = option(True, "show a progress bar", resumable=True)
    profile: str | None = option(None, "write a jax.profiler trace of steps START+1..STOP (give START:STOP) into "
                                 "<workdir>/profile", resumable=True)
    profile_host: bool = option(False, "with --profile: also trace Python functions on the host", resumable=True)
    peak_flops: float | None = option(None, "peak FLOP/s per device for MFU (default: the vendor figure of a "
                                      "known accelerator, else a measured matmul peak)", above=0.0, resumable=True)

    def check(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ConfigError("give --steps or --epochs, not both")
        if self.profile is not None:
            parse_window(self.profile)
        if self.average_last > self.keep:
            raise ConfigError(f"--average-last {self.average_last} averages checkpoints that --keep {self.keep} "
                              f"deletes; give --keep {self.average_last} or more")

    @property
    def compute_dtype(self) -> Any:
        return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32

    def total_steps(self, batches_per_epoch: int, default: int) -> int:
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return self.epochs * batches_per_epoch
        return default


class TrainState(struct.PyTreeNode):
    """Everything a training run needs to continue exactly.

    ``rng`` is a raw ``uint32[2]`` key; the dropout key of step ``s`` is
    ``fold_in(rng, s)``. ``carry`` is the recurrent state threaded between
    batches (None when it is reset every batch).
    """

    step: Array
    params: Any
    opt_state: Any
    rng: Array
    carry: Any = None


def init_params(model: nn.Module, batch: Batch, seed: int) -> Any:
    """Parameters from ``model.init`` with ``PRNGKey(seed)`` (compiled, so large models init fast)."""
    key = jax.random.PRNGKey(seed)
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    return jax.jit(lambda k, b: model.init({"params": k, "dropout": k}, b, train=False)["params"])(key, batch)


def create_state(model: nn.Module, tx: optax.GradientTransformation, batch: Batch, seed: int,
                 mesh: Mesh, carry: Any = None, *,
                 transform_params: Callable[[Any], Any] | None = None) -> TrainState:
    """A fresh TrainState placed on ``mesh`` (see :func:`jaxseq.parallel.place_state`);
    the carry is split along the batch. ``transform_params`` replaces initialised parameters
    before the optimizer state is made (fine-tuning loads pretrained weights there; same shapes)."""
    params = init_params(model, batch, seed)
    if transform_params is not None:
        params = transform_params(params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.fold_in(jax.random.PRNGKey(seed), 1), carry=None)
    state = parallel.place_state(state, mesh)
    if carry is not None:
        state = state.replace(carry=parallel.shard_tree_along_batch(carry, mesh))
    return state


def state_shapes(model: nn.Module, tx: optax.GradientTransformation, batch: Batch, seed: int, mesh: Mesh,
                 carry: Any = None) -> TrainState:
    """What :func:`create_state` would return, as ``jax.ShapeDtypeStruct`` leaves carrying the
    shardings it places them with (``jax.eval_shape`` drops them); nothing is computed."""
    shapes = jax.eval_shape(lambda: create_state(model, tx, batch, seed, mesh, carry))
    struct = lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding)
    plain = shapes.replace(carry=None)
    state = jax.tree_util.tree_map(struct, plain, parallel.state_sharding_tree(plain, mesh))
    along = parallel.batch_sharding(mesh)
    return state.replace(carry=jax.tree_util.tree_map(lambda s: struct(s, along), shapes.carry))


def state_shardings(state: TrainState) -> Any:
    return jax.tree_util.tree_map(lambda x: x.sharding, state)


def abstract_state(state: TrainState) -> Any:
    """Shapes, dtypes and shardings of ``state``, for restoring a checkpoint into it."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _poison_if_nonfinite(grads: Any, loss: Array) -> Any:
    """Make every gradient NaN when the loss is not finite, so the update is skipped."""
    bad = ~jnp.isfinite(loss)
    return jax.tree_util.tree_map(lambda g: jnp.where(bad, jnp.full_like(g, jnp.nan), g), grads)


Objective = tuple[str | None, str, str]     # (output name or None, target key, weight key)


def objectives(model: nn.Module) -> tuple[Objective, ...]:
    """The model's training objectives: ``model.objectives`` where it declares several (BERT's masked
    LM and next-sentence prediction), else one, its logits against ``batch[model.target_key]``
    weighted by ``batch["weights"]``."""
    declared = getattr(model, "objectives", None)
    return tuple(declared) if declared else ((None, model.target_key, "weights"),)


def _objective(heads: tuple[Objective, ...], outputs: Any, batch: Batch,
               label_smoothing: float) -> tuple[Array, Array, Array]:
    """``(loss, nll_sum, count)``: the loss is the sum over objectives of each one's weighted mean
    cross-entropy, ``sum_h (sum w_h nll_h / sum w_h)`` (one objective: the usual mean); ``nll_sum``
    and ``count`` are the first objective's unsmoothed sums (what is logged and validated)."""
    loss, first = 0.0, None
    for name, target_key, weight_key in heads:
        logits = outputs if name is None else outputs[name]
        total, count = losses.weighted_cross_entropy(logits, batch[target_key], batch[weight_key], label_smoothing)
        nll = losses.weighted_cross_entropy(logits, batch[target_key], batch[weight_key])[0] if label_smoothing \
            else total
        loss = loss + losses.mean_loss(total, count)
        if first is None:
            first = (nll, count)
    return loss, first[0], first[1]


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *, label_smoothing: float = 0.0,
                    shardings: tuple[Any, Any] | None = None,
                    mesh: Mesh | None = None) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """The jit-compiled ``(state, batch) -> (state, metrics)``; state is donated.

    ``mesh``: traced under it (:func:`jaxseq.parallel.mesh_context`), so the
    model's activation constraints apply (tensor parallelism).

    ``metrics``: ``nll_sum`` (unsmoothed), ``tokens``, ``loss`` (the
    optimised mean), ``grad_norm`` (before clipping), ``nonfinite`` (the
    consecutive count of skipped steps after this one). ``step.traces``
    counts how often the function was traced (compiled).
    """
    heads = objectives(model)
    traces = [0]

    def step(state: TrainState, batch: Batch):
        traces[0] += 1
        with parallel.mesh_context(mesh):
            return _step(state, batch)

    def _step(state: TrainState, batch: Batch):
        dropout_key = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            outputs, carry = model.apply({"params": params}, batch, train=True, carry=state.carry,
                                         rngs={"dropout": dropout_key})
            loss, nll, count = _objective(heads, outputs, batch, label_smoothing)
            return loss, (nll, count, carry)

        (loss, (nll, count, carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = _poison_if_nonfinite(grads, loss)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_carry = None if state.carry is None else jax.lax.stop_gradient(carry)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, carry=new_carry)
        metrics = {"nll_sum": nll, "tokens": count, "loss": loss, "grad_norm": optax.tree.norm(grads),
                   "nonfinite": nonfinite_count(opt_state)}
        return new_state, metrics

    if shardings is None:
        fn = jax.jit(step, donate_argnums=0)
    else:
        state_sh, batch_sh = shardings
        fn = jax.jit(step, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=0)
    fn.traces = traces
    return fn


def train_step_for(model: nn.Module, tx: optax.GradientTransformation, state: Any, mesh: Mesh,
                   config: TrainConfig) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
    """The train step :func:`fit` runs for ``state`` (concrete or abstract, with shardings) on ``mesh``."""
    return make_train_step(model, tx, label_smoothing=config.label_smoothing,
                           shardings=(state_shardings(state), parallel.batch_sharding(mesh)), mesh=mesh)


def make_eval_step(model: nn.Module) -> Callable:
    """The jit-compiled ``(params, batch, carry) -> (nll_sum, tokens, carry)`` of the model's first objective."""
    name, target_key, weight_key = objectives(model)[0]
    traces = [0]

    def step(params, batch, carry):
        traces[0] += 1
        outputs, carry = model.apply({"params": params}, batch, train=False, carry=carry)
        logits = outputs if name is None else outputs[name]
        total, count = losses.weighted_cross_entropy(logits, batch[target_key], batch[weight_key])
        return total, count, carry

    fn = jax.jit(step)
    fn.traces = traces
    return fn


def evaluate(eval_step: Callable, params: Any, batches: list[Batch], mesh: Mesh,
             carry: Any = None) -> dict[str, float]:
    """``{"nll", "perplexity", "tokens"}`` over all ``batches``.

    With a ``carry`` (recurrent models trained with sequential partitioning)
    the state flows from each batch to the next, as the rows of
    :func:`jaxseq.data.lm.eval_batches` are contiguous streams.
    """
    sums = []
    for batch in batches:
        total, count, new_carry = eval_step(params, parallel.shard_batch(batch, mesh), carry)
        if carry is not None:
            carry = new_carry
        sums.append((total, count))
    sums = jax.device_get(sums)
    nll = float(sum(np.float64(t) for t, _ in sums))
    tokens = float(sum(np.float64(c) for _, c in sums))
    mean = nll / tokens if tokens else float("nan")
    return {"nll": mean, "perplexity": perplexity(nll, tokens), "tokens": int(tokens)}


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:   # a second signal: stop at once
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


def _past(t0: float, limit: float) -> bool:
    """Whether ``limit`` seconds have passed since ``t0`` on process 0 (every process gets its answer)."""
    late = np.array(time.perf_counter() - t0 > limit)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        late = multihost_utils.broadcast_one_to_all(late)
    return bool(late)


@dataclass
class FitResult:
    state: TrainState
    valid: dict | None = None
    interrupted: int | None = None      # the signal number, if a signal stopped the run
    timed_out: bool = False             # --time-limit ended the run before total_steps
    stopped_early: bool = False         # --patience ended the run before total_steps
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


class _Periodic:
    """The actions of a fit between steps: log, validate, checkpoint (each also at the end).

    It owns the log window and the buffered step metrics; the loop in
    :func:`fit` owns the state and calls these after each step.
    """

    def __init__(self, *, config: TrainConfig, batches, mesh: Mesh, eval_fn: Callable,
                 valid_batches: list[Batch] | None, eval_carry: Any, extra_eval: Callable[[Any], dict] | None,
                 checkpointer: Checkpointer | None, manifest: dict | None, metrics_log: MetricsLog,
                 echo: Callable[[str], None], bar, result: FitResult, t0: float,
                 flops: Callable[[dict], Any] | None = None, peak: float | None = None):
        self.config, self.batches, self.mesh, self.eval_fn = config, batches, mesh, eval_fn
        self.valid_batches, self.eval_carry, self.extra_eval = valid_batches, eval_carry, extra_eval
        self.checkpointer, self.manifest, self.metrics_log = checkpointer, manifest, metrics_log
        self.echo, self.bar, self.result, self.t0 = echo, bar, result, t0
        self.flops_fn, self.peak, self._flops = flops, peak, {}
        self.pending: list[dict] = []
        self.streak = 0                  # consecutive non-finite steps seen on the host
        self.window = _empty_window(time.perf_counter())
        # the best --best-metric score seen (higher is better: a loss negated; a resumed run's kept best) and
        # the validations since it (--patience counts afresh after a resume)
        kept = checkpointer.best_loss if checkpointer is not None and config.keep_best else math.inf
        self.best, self.stale = -kept, 0
        self.validated: int | None = None       # the step last validated

    def count(self, batch: Batch, wait: float, host_batch: Batch | None = None) -> None:
        """Add a step's seconds waiting for its batch, its analytic FLOPs (by batch shape) and its real and
        padded token slots (:func:`padding_counts`) to the window."""
        self.window["wait"] += wait
        counts = None if host_batch is None else padding_counts(host_batch)
        if counts is not None:
            self.window["real"] += counts[0]
            self.window["slots"] += counts[1]
        if self.flops_fn is not None:
            key = tuple((k, tuple(v.shape) if hasattr(v, "shape") else np.shape(v)) for k, v in batch.items())
            if key not in self._flops:
                self._flops[key] = self.flops_fn({k: shape for k, shape in key})
            step_flops = self._flops[key]
            self.window["flops"] += step_flops.train
            self.window["positions"] += step_flops.positions

    def _speed(self, elapsed: float) -> dict:
        """The window's ``data_wait_fraction`` and (with a FLOP count) ``flops_per_token``,
        ``tflops_per_s`` per device and ``mfu`` (with a peak)."""
        window = self.window
        out = {"data_wait_fraction": min(window["wait"] / elapsed, 1.0)}
        if window["slots"]:
            out["nonpad_fraction"] = window["real"] / window["slots"]
        if window["flops"]:
            per_device = window["flops"] / elapsed / self.mesh.devices.size
            out.update(flops_per_token=window["flops"] / max(window["positions"], 1),
                       tflops_per_s=per_device / 1e12)
            if self.peak:
                out["mfu"] = per_device / self.peak
        return out

    def flush(self, step: int) -> None:
        """Read buffered step metrics back (one device sync) and log them; stop on a non-finite streak."""
        if not self.pending:
            return
        values, window = jax.device_get(self.pending), self.window
        first = step - len(values) + 1
        for i, m in enumerate(values):
            finite = np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])
            window["skipped"] += not finite
            # the optimizer's own count (apply_if_finite), or ours for a transformation without one
            self.streak = 0 if finite else self.streak + 1
            streak = max(int(m["nonfinite"]), self.streak)
            if streak >= self.config.max_nonfinite:
                self._nonfinite_stop(first + i - streak + 1, streak)
            window["nll"] += float(m["nll_sum"])
            window["tokens"] += float(m["tokens"])
        self.pending.clear()
        now = time.perf_counter()
        loss, elapsed = window["nll"] / max(window["tokens"], 1.0), max(now - window["time"], 1e-9)
        record = {"step": step, "split": "train", "loss": loss, "perplexity": math.exp(min(loss, 700)),
                  "tokens_per_s": window["tokens"] / elapsed,
                  "grad_norm": float(values[-1]["grad_norm"]), "skipped": window["skipped"],
                  "wall_time": now - self.t0, **self._speed(elapsed)}
        self.metrics_log.write(record)
        self.result.history.append(record)
        shown = {"mfu": f"{record['mfu']:.1%}"} if "mfu" in record else {}
        self.bar.set_postfix(loss=f"{loss:.3f}", ppl=f"{record['perplexity']:.2f}",
                             tok_s=f"{record['tokens_per_s']:.0f}", **shown, refresh=False)
        self.window = _empty_window(now)

    def _nonfinite_stop(self, streak_start: int, count: int) -> None:
        last = self.checkpointer.latest_step() if self.checkpointer else None
        if last:
            where = (f"the last good checkpoint (step {last}) is intact; continue from it with --resume and a "
                     "lower --lr or tighter --clip")
        else:
            where = "no checkpoint was written; start again with --restart and a lower --lr or tighter --clip"
        raise TrainingError(f"step {streak_start}: the loss or gradients became non-finite ({count} steps in a "
                            f"row, each skipped); {where}, or check the data")

    def score(self, record: dict) -> float | None:
        """The record's ``--best-metric`` as higher-is-better (the negated loss), or None if it lacks it."""
        metric = self.config.best_metric
        value = record.get("nll" if metric == "loss" else metric)
        if value is None or not np.isfinite(value):
            return None
        return -float(value) if metric == "loss" else float(value)

    def exhausted(self) -> bool:
        """Whether ``--patience`` validations in a row brought no better ``--best-metric``."""
        return self.config.patience is not None and self.stale >= self.config.patience

    def validate(self, state: TrainState, step: int) -> None:
        if not self.valid_batches or self.validated == step:
            return
        self.validated = step
        self.flush(step)
        t = time.perf_counter()
        record = evaluate(self.eval_fn, state.params, self.valid_batches, self.mesh, self.eval_carry)
        if self.extra_eval is not None:
            record.update(self.extra_eval(state.params))
        record.update(step=step, split="valid", wall_time=time.perf_counter() - self.t0)
        self.result.valid = record
        score = self.score(record)
        if score is None and self.config.best_metric != "loss":
            raise ConfigError(f"--best-metric {self.config.best_metric}: validation reports no "
                              f"{self.config.best_metric} for this task; use --best-metric loss")
        if score is not None:
            self.best, self.stale = (score, 0) if score > self.best else (self.best, self.stale + 1)
        if self.checkpointer is not None and self.config.keep_best and score is not None:
            # save_best keeps the lowest value: the loss, or the negated BLEU / chrF
            self.checkpointer.save_best(step, -score, state, self.batches.get_state(),
                                        dict(self.manifest or {}, step=step, best_metric=self.config.best_metric))
        self.metrics_log.write(record)
        self.result.history.append(record)
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in record.items() if k not in ("step", "split", "wall_time", "tokens"))
        self.echo(f"step {step}: validation {shown}")
        self.window["time"] += time.perf_counter() - t   # validation time is not training time

    def save(self, state: TrainState, step: int) -> None:
        if self.checkpointer is None or step in self.checkpointer.steps():   # saved already (resumed or stopped)
            return
        self.flush(step)
        self.checkpointer.save(step, state, self.batches.get_state(), dict(self.manifest or {}, step=step))
        # how long the loop waited for this save (with --async-checkpoint: the copy off the devices, and the
        # previous save if still being written)
        record = {"step": step, "split": "checkpoint", "checkpoint_blocked_s": self.checkpointer.last_blocked_s,
                  "wall_time": time.perf_counter() - self.t0}
        self.metrics_log.write(record)


def _empty_window(now: float) -> dict:
    """A logging window's sums, empty, starting at ``now``: NLL and tokens, skipped steps, seconds waiting for
    data, analytic FLOPs and positions (MFU), real and padded token slots (``nonpad_fraction``)."""
    return {"nll": 0.0, "tokens": 0.0, "time": now, "skipped": 0, "wait": 0.0, "flops": 0.0, "positions": 0,
            "real": 0.0, "slots": 0.0}


def padding_counts(batch: Batch) -> tuple[float, float] | None:
    """``(real tokens, token slots)`` of a host batch, padding included, or None without ``weights``.

    Targets count their weighted positions; a batch with ``src`` and
    ``src_len`` (translation) adds the sources of its real rows (rows with
    any weight) and every source slot.
    """
    weights = batch.get("weights")
    if weights is None:
        return None
    weights = np.asarray(weights)
    real, slots = float(weights.sum()), float(weights.size)
    if "src" in batch and "src_len" in batch:
        rows = weights.reshape(weights.shape[0], -1).sum(axis=1) > 0
        real += float(np.asarray(batch["src_len"])[rows].sum())
        slots += float(np.asarray(batch["src"]).size)
    return real, slots


def _due(every: int, step: int, total: int) -> bool:
    """Whether a periodic action set to ``every`` steps (0: never) falls on ``step`` before the last."""
    return bool(every) and step % every == 0 and step < total


def fit(model: nn.Module, state: TrainState, tx: optax.GradientTransformation, batches: Iterator[Batch], *,
        total_steps: int, config: TrainConfig, mesh: Mesh,
        valid_batches: list[Batch] | None = None, eval_carry: Any = None,
        checkpointer: Checkpointer | None = None, manifest: dict | None = None,
        metrics_log: MetricsLog | None = None, extra_eval: Callable[[Any], dict] | None = None,
        echo: Callable[[str], None] | None = None, flops: Callable[[dict], Any] | None = None,
        peak_flops: float | None = None, profile_dir: Path | None = None) -> FitResult:
    """Train ``state`` up to ``total_steps`` updates with any optax transformation ``tx``.

    ``batches`` yields host (NumPy) batches and has ``get_state()`` (saved in
    each checkpoint). Every ``log_every`` steps the buffered metrics are read
    back (one device sync), checked for non-finite steps and logged; every
    ``eval_every`` steps the model is validated (plus ``extra_eval(params)``,
    e.g. BLEU); every ``checkpoint_every`` steps and at the end the state is
    saved. SIGINT/SIGTERM save a checkpoint after the current step and return
    with ``interrupted`` set. With ``config.time_limit`` the run ends like
    its last step (validation, checkpoint) at the first log step past the
    limit, with ``timed_out`` set; process 0's clock decides for all.

    ``flops(shapes)`` (a :class:`jaxseq.flops.StepFlops` for a batch's
    shapes) and ``peak_flops`` (per device) add ``flops_per_token``,
    ``tflops_per_s`` and ``mfu`` to each log record; ``data_wait_fraction``
    is the share of the window's wall time spent getting the next batch
    (the iterator and the host-to-device copy). Dispatch is asynchronous, so
    the device may be computing meanwhile: it bounds the input stall from
    above; near 1, the input pipeline sets the pace. ``config.profile``
    traces a window of steps into ``profile_dir`` (:mod:`jaxseq.profiling`).
    """
    from tqdm.auto import tqdm

    step_fn = train_step_for(model, tx, state, mesh, config)
    start, t0 = int(jax.device_get(state.step)), time.perf_counter()
    result = FitResult(state=state)
    bar = tqdm(total=total_steps, initial=start, disable=not config.progress or jax.process_index() != 0,
               dynamic_ncols=True, file=sys.stderr, leave=False, unit="step")
    actions = _Periodic(config=config, batches=batches, mesh=mesh, eval_fn=make_eval_step(model),
                        valid_batches=valid_batches, eval_carry=eval_carry, extra_eval=extra_eval,
                        checkpointer=checkpointer, manifest=manifest,
                        metrics_log=metrics_log or MetricsLog(Path("/dev/null"), enabled=False),
                        echo=echo or (lambda msg: None), bar=bar, result=result, t0=t0, flops=flops,
                        peak=peak_flops)
    profiler = StepProfiler(config.profile, profile_dir, host=config.profile_host)
    with _StopSignals() as stop:
        step = start
        try:
            while step < total_steps:
                profiler.before(step)
                waited = time.perf_counter()
                host_batch = next(batches)
                batch = parallel.shard_batch(host_batch, mesh)
                actions.count(batch, time.perf_counter() - waited, host_batch)   # global shapes: every host's FLOPs
                with profiler.annotate(step):
                    state, metrics = step_fn(state, batch)
                actions.pending.append(metrics)
                step += 1
                profiler.after(step, state)
                bar.update(1)
                if step % config.log_every == 0 or step == total_steps:
                    actions.flush(step)
                if (config.time_limit and _due(config.log_every, step, total_steps)
                        and _past(t0, config.time_limit)):
                    actions.echo(f"step {step}: --time-limit of {config.time_limit:g}s reached")
                    result.timed_out = True
                    break                             # validated and saved below, as a last step
                if _due(config.eval_every, step, total_steps):
                    actions.validate(state, step)
                    if actions.exhausted():
                        actions.echo(f"step {step}: no better validation {config.best_metric} in "
                                     f"{config.patience} validations (--patience); stopping early")
                        result.stopped_early = True
                        break                         # saved below, as a last step
                if _due(config.checkpoint_every, step, total_steps):
                    actions.save(state, step)
                if stop.received is not None:
                    actions.save(state, step)
                    result.interrupted = stop.received
                    break
            if result.interrupted is None:
                actions.flush(step)
                actions.validate(state, step)
                actions.save(state, step)
        finally:
            bar.close()
            if checkpointer is not None:
                checkpointer.wait()
            profiler.stop(state)
    result.state = state
    result.seconds = time.perf_counter() - t0
    return result
