"""Optimizers: clipping, the update rule, learning-rate schedules, a finite-update guard.

Every model trains with the same optax chain::

    apply_if_finite( chain( clip_by_global_norm(clip), optimizer(schedule) ) )

Gradient clipping by global norm (the seed's rule): with ``g`` all gradients
concatenated,

    g <- min(1, clip / ||g||_2) g        so that ||g||_2 <= clip afterwards.

``clip = 0`` turns clipping off. ``apply_if_finite`` skips (and counts) an
update whose gradients hold a NaN or an infinity, leaving parameters and
optimizer moments as they were; the trainer stops the run after
``--max-nonfinite`` such steps in a row (a :class:`~jaxseq.train.TrainConfig`
setting: the trainer takes any optax transformation, this chain or another).

Schedules (``step`` counts updates from 0, ``W`` = warmup, ``S`` = total steps):

``constant``  lr, after a linear warmup from 0 over ``W`` steps
``cosine``    linear warmup to lr, then cosine decay to ``min_lr`` at step ``S``
              (nanoGPT's schedule)
``rsqrt``     linear warmup to lr, then ``lr sqrt(W / step)`` (the inverse
              square-root schedule of "Attention is all you need")
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

from jaxseq.config import Config, option
from jaxseq.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "rsqrt")
DEFAULT_LR = {"sgd": 1.0, "adam": 2e-3, "adamw": 2e-3}
NEVER = 2**31 - 1


@dataclass(frozen=True)
class OptimConfig(Config):
    """How parameters are updated."""

    optimizer: str = option("adam", "the update rule (giving it drops a model's own optimizer defaults)",
                            choices=OPTIMIZERS, governs=True)
    lr: float | None = option(None, "peak learning rate (default: 1.0 for sgd, 2e-3 for adam/adamw); may change "
                              "on --resume (a diverged run continues from its last good checkpoint)", above=0.0,
                              resumable=True)
    schedule: str = option("constant", "learning-rate schedule", choices=SCHEDULES)
    warmup: int = option(0, "linear warmup steps", minimum=0)
    min_lr: float = option(0.0, "final learning rate of the cosine schedule", minimum=0.0)
    momentum: float = option(0.0, "SGD momentum", minimum=0.0, below=1.0)
    beta1: float = option(0.9, "Adam beta1", minimum=0.0, below=1.0)
    beta2: float = option(0.999, "Adam beta2", minimum=0.0, below=1.0)
    weight_decay: float | None = option(None, "decoupled weight decay of adamw on matrices "
                                        "(default 0.01); not used by sgd/adam", minimum=0.0)
    clip: float = option(1.0, "clip gradients to this global L2 norm (0 = no clipping); may change on --resume",
                         minimum=0.0, resumable=True)

    @property
    def peak_lr(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    def check(self) -> None:
        if self.weight_decay is not None and self.optimizer != "adamw" and self.weight_decay != 0:
            raise ConfigError("--weight-decay is used by adamw only; add --optimizer adamw")


def schedule(config: OptimConfig, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the update count."""
    lr, warmup = config.peak_lr, config.warmup
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), config.min_lr)

    def fn(step):
        step = jnp.asarray(step, jnp.float32)
        ramp = jnp.minimum(1.0, (step + 1.0) / warmup) if warmup else jnp.float32(1.0)
        if config.schedule == "rsqrt" and warmup:
            return lr * ramp * jnp.sqrt(warmup / jnp.maximum(step + 1.0, float(warmup)))
        if config.schedule == "rsqrt":
            return lr / jnp.sqrt(step + 1.0)
        return lr * ramp
    return fn


def _decay_mask(params):
    """Weight decay on matrices (kernels, embeddings), not on biases or norms."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """``apply_if_finite(chain(clip_by_global_norm(clip), optimizer(schedule)))``.

    The clipping, with ``g`` every parameter's gradient concatenated::

        g <- min(1, clip / ||g||_2) g          (so ||g||_2 <= clip; none when clip = 0)
    """
    config.validate()
    lr = schedule(config, total_steps)
    if config.optimizer == "sgd":
        rule = optax.sgd(lr, momentum=config.momentum or None)
    elif config.optimizer == "adam":
        rule = optax.adam(lr, b1=config.beta1, b2=config.beta2)
    else:
        wd = 0.01 if config.weight_decay is None else config.weight_decay
        rule = optax.adamw(lr, b1=config.beta1, b2=config.beta2, weight_decay=wd, mask=_decay_mask)
    parts = ([optax.clip_by_global_norm(config.clip)] if config.clip > 0 else []) + [rule]
    # never let a non-finite update through; the trainer stops after max_nonfinite in a row
    return _standard_promotion(optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=NEVER))


def _standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Run optax under JAX's standard dtype promotion.

    optax's Adam bias correction raises a Python float to an int32 power,
    which strict promotion (on in jaxseq's test suite, to catch our own dtype
    slips) refuses; the rest of jaxseq stays strict.
    """
    def init(params):
        with jax.numpy_dtype_promotion("standard"):
            return tx.init(params)

    def update(updates, state, params=None):
        with jax.numpy_dtype_promotion("standard"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(init, update)


def nonfinite_count(opt_state) -> jax.Array:
    """Consecutive non-finite steps skipped so far: the ``notfinite_count`` of the first
    ``optax.apply_if_finite`` state found in ``opt_state``, or 0 when there is none
    (any other optax transformation trains too; its non-finite steps are not skipped)."""
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_finite_state)
             if _is_finite_state(s)]
    return found[0].notfinite_count if found else jnp.zeros((), jnp.int32)


def _is_finite_state(x) -> bool:
    return isinstance(x, optax.ApplyIfFiniteState)
