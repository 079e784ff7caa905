"""Decoding written once against every model's ``decode_init`` / ``decode_step``.

Sampling from a language model, for logits ``o`` over the vocabulary::

    P(x_{t+1} = v | x_<=t) = softmax(o / tau)_v         (temperature tau > 0)
    top-k: keep the k largest logits, renormalise over them
    tau = 0: greedy, x_{t+1} = argmax_v o_v

The whole loop runs on the device as one ``lax.scan`` (one compile per
prefix shape and length), not as a Python loop around a jitted step.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def sample_logits(key: Array, logits: Array, temperature: float | Array = 1.0, top_k: int = 0) -> Array:
    """Draw one token per row of ``logits`` ``(B, V)``; ``temperature == 0`` is greedy."""
    logits = logits.astype(jnp.float32)
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    temperature = jnp.asarray(temperature, jnp.float32)
    greedy = jnp.argmax(logits, axis=-1)
    drawn = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6), axis=-1)
    return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "length", "top_k"))
def _generate(model: nn.Module, params: Any, prefix: Array, key: Array, temperature: Array,
              length: int, top_k: int) -> Array:
    variables = {"params": params}
    state = model.apply(variables, {"inputs": prefix[:, :-1]}, method="decode_init")

    def body(carry, step_key):
        state, token = carry
        logits, state = model.apply(variables, state, token, method="decode_step")
        token = sample_logits(step_key, logits, temperature, top_k)
        return (state, token), token

    _, tokens = jax.lax.scan(body, (state, prefix[:, -1]), jax.random.split(key, length))
    return tokens.T


def generate(model: nn.Module, params: Any, prefix: Array, length: int, *, key: Array,
             temperature: float = 1.0, top_k: int = 0) -> Array:
    """Continue ``prefix`` ``(B, P)`` (P >= 1) by ``length`` tokens -> ``(B, length)``.

    The state is warmed up on ``prefix[:, :-1]`` (RNN: the hidden state;
    Transformer: the key/value cache, in one prefill call), then each step
    feeds the last token and samples the next.
    """
    prefix = jnp.asarray(prefix, jnp.int32)
    if prefix.ndim != 2 or prefix.shape[1] < 1:
        raise ValueError("prefix must be (B, P) with P >= 1")
    return _generate(model, params, prefix, key, jnp.float32(temperature), length, top_k)
