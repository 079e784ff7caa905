"""Decoding written once against every model's ``decode_init`` / ``decode_step``.

Sampling from a language model, for logits ``o`` over the vocabulary::

    P(x_{t+1} = v | x_<=t) = softmax(o / tau)_v         (temperature tau > 0)
    top-k: keep the k largest logits, renormalise over them
    tau = 0: greedy, x_{t+1} = argmax_v o_v

Translation (conditional generation from ``<bos>`` until ``<eos>``)::

    greedy:  y_t = argmax_v log P(v | y_<t, x)
    beam:    keep the K best prefixes by score(y) = log P(y | x) / lp(|y|),
             lp(L) = ((5 + L) / 6)^alpha                 (GNMT's length penalty)

``|y|`` counts the ``<eos>``. GNMT's penalty (Wu et al., 2016) rather than
D2L's ``L^alpha``: it is 1 at ``L = 1`` and grows more slowly, so ``alpha``
(0.6 by default; 0 = raw log-probability) trades length against likelihood
gently; D2L's rule would divide a one-word output by 1 and a ten-word one by
5.6 at alpha 0.75.

Beam search, step ``t``: every live beam proposes its ``V`` continuations
with the score above; a finished beam proposes only itself, unchanged (so
finished and live hypotheses compete in one beam, and with ``K = 1`` this is
exactly greedy decoding); the ``K`` best of the ``K V`` proposals form the
next beam, and the model state (any pytree with a leading batch axis) is
reordered to match with ``jnp.take``. The best finished hypothesis ever seen
is remembered, so one pushed out of the beam later is not lost. A row stops
when all its beams are finished or no live beam can still beat its best
finished one (for ``alpha >= 0`` a live beam's score is at most
``log P / lp(max_len)``); the loop stops when every row has. Beams still live
at ``max_len`` are candidates too (truncated outputs, as greedy gives). With
``K`` at least the number of live prefixes (all ``V^t`` on a tiny
vocabulary) nothing is pruned and the result is the best of all sequences.

Every loop runs on the device, as one ``lax.scan`` (sampling) or
``lax.while_loop`` (greedy, beam: stopping when every row is done), compiled
once per model, input shape and length, not as a Python loop around a jitted
step.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


MAX_SAMPLE_LENGTH = 10_000_000


def check_sample_args(length: int, temperature: float, top_k: int) -> None:
    """ConfigError (one line naming the CLI flag) unless ``1 <= length <= 10_000_000``,
    ``temperature`` is a finite number ``>= 0`` (0: greedy) and ``top_k`` a whole number ``>= 0`` (0: all)."""
    from jaxseq.errors import ConfigError

    def whole(x) -> int | None:
        if isinstance(x, bool):
            return None
        try:
            return operator.index(x)
        except TypeError:
            return None

    n = whole(length)
    if n is None or not 1 <= n <= MAX_SAMPLE_LENGTH:
        raise ConfigError(f"--length must be at least 1 and at most {MAX_SAMPLE_LENGTH:_}, got {length!r}")
    try:
        t = None if isinstance(temperature, bool) else float(temperature)
    except (TypeError, ValueError):
        t = None
    if t is None or not (math.isfinite(t) and t >= 0):
        raise ConfigError(f"--temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    k = whole(top_k)
    if k is None or k < 0:
        raise ConfigError(f"--top-k must be a whole number >= 0 (0: all tokens), got {top_k!r}")


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
    feeds the last token and samples the next. Refuses a length outside
    ``1 .. 10_000_000``, a NaN, infinite or negative ``temperature`` and a
    negative ``top_k`` (:func:`check_sample_args`).
    """
    check_sample_args(length, temperature, top_k)
    prefix = jnp.asarray(prefix, jnp.int32)
    if prefix.ndim != 2 or prefix.shape[1] < 1:
        raise ValueError("prefix must be (B, P) with P >= 1")
    return _generate(model, params, prefix, key, jnp.float32(temperature), length, top_k)


# -- translation: greedy and beam search ------------------------------------------------

class Decoded(NamedTuple):
    """The output of :func:`greedy_search` / :func:`beam_search` for a batch of ``B`` inputs."""

    tokens: Array      # (B, L) int32: the output, <eos>-filled after its first <eos>
    lengths: Array     # (B,) int32: tokens up to and including the first <eos> (L if none)
    log_probs: Array   # (B,) float32: log P(y | x), summed over those tokens
    scores: Array      # (B,) float32: log_probs / lp(lengths), the beam's ranking score


def length_penalty(length: Array, alpha: float) -> Array:
    """``lp(L) = ((5 + L) / 6)^alpha`` (see the module docstring) as float32."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** jnp.asarray(alpha, jnp.float32)


def _batch_size(batch: Any) -> int:
    return jax.tree_util.tree_leaves(batch)[0].shape[0]


@functools.partial(jax.jit, static_argnames=("model", "bos", "eos", "max_len"))
def _greedy(model: nn.Module, params: Any, batch: Any, alpha: Array, bos: int, eos: int, max_len: int):
    variables = {"params": params}
    state = model.apply(variables, batch, method="decode_init")
    b = _batch_size(batch)

    def cond(carry):
        t, _, _, _, done, _, _ = carry
        return (t < max_len) & ~jnp.all(done)

    def body(carry):
        t, state, prev, tokens, done, lengths, logp = carry
        logits, state = model.apply(variables, state, prev, method="decode_step")
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        token = jnp.where(done, eos, jnp.argmax(lp, axis=-1).astype(jnp.int32))
        picked = jnp.take_along_axis(lp, token[:, None], axis=-1)[:, 0]
        tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, t))
        logp = logp + jnp.where(done, 0.0, picked)
        lengths = lengths + (~done).astype(jnp.int32)
        return t + 1, state, token, tokens, done | (token == eos), lengths, logp

    init = (jnp.int32(0), state, jnp.full((b,), bos, jnp.int32), jnp.full((b, max_len), eos, jnp.int32),
            jnp.zeros((b,), bool), jnp.zeros((b,), jnp.int32), jnp.zeros((b,), jnp.float32))
    _, _, _, tokens, _, lengths, logp = jax.lax.while_loop(cond, body, init)
    return Decoded(tokens, lengths, logp, logp / length_penalty(lengths, alpha))


def check_decode_args(max_len: int, beam: int = 1, alpha: float = 0.0) -> None:
    """ConfigError (naming the CLI flag) for a length below 1, a beam below 1 or a negative alpha."""
    from jaxseq.errors import ConfigError
    if max_len < 1:
        raise ConfigError(f"--max-len must be at least 1, got {max_len}")
    if beam < 1:
        raise ConfigError(f"--beam must be at least 1, got {beam}")
    if not alpha >= 0:
        raise ConfigError(f"--length-penalty (--alpha) must be >= 0, got {alpha}")


def check_decode_length(model: nn.Module, max_len: int) -> None:
    """ConfigError when ``max_len`` exceeds the positions a model can decode into
    (``model.max_decode_len``, for models with a fixed-size decode cache)."""
    from jaxseq.errors import ConfigError
    limit = getattr(model, "max_decode_len", None)
    if limit is not None and max_len > limit:
        raise ConfigError(f"--max-len {max_len}: the model has {limit} positions to decode into (its training "
                          f"--max-len); give at most {limit}")


def greedy_search(model: nn.Module, params: Any, batch: Any, *, bos: int, eos: int, max_len: int,
                  alpha: float = 0.0) -> Decoded:
    """Greedy decoding of ``batch`` (what ``model.decode_init`` takes, e.g. ``{"src", "src_len"}``).

    Starts every row at ``bos`` and stops a row at ``eos`` or after
    ``max_len`` tokens. ``alpha`` only sets :attr:`Decoded.scores`.
    """
    check_decode_args(max_len, 1, alpha)
    check_decode_length(model, max_len)
    return _greedy(model, params, batch, jnp.float32(alpha), bos, eos, max_len)


def _reorder(tree: Any, index: Array) -> Any:
    """Rows ``index`` of every leaf of ``tree`` (leading batch axis)."""
    return jax.tree_util.tree_map(lambda x: jnp.take(x, index, axis=0), tree)


@functools.partial(jax.jit, static_argnames=("model", "bos", "eos", "max_len", "beam"))
def _beam(model: nn.Module, params: Any, batch: Any, alpha: Array, bos: int, eos: int, max_len: int,
          beam: int):
    variables = {"params": params}
    k = beam
    b = _batch_size(batch)
    state = _reorder(model.apply(variables, batch, method="decode_init"), jnp.repeat(jnp.arange(b), k))
    neg = jnp.float32(-jnp.inf)
    rows = jnp.arange(b)[:, None] * k                                     # (B, 1)
    final_lp = length_penalty(max_len, alpha)

    def cond(c):
        return (c["t"] < max_len) & ~jnp.all(c["done"])

    def body(c):
        t = c["t"]
        logits, state = model.apply(variables, c["state"], c["prev"], method="decode_step")
        v = logits.shape[-1]
        lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, v)
        stay = jnp.where(jnp.arange(v) == eos, 0.0, neg)                     # a finished beam stays as it is
        lp = jnp.where(c["finished"][..., None], stay.reshape(1, 1, v), lp)
        cand_logp = (c["logp"][..., None] + lp).reshape(b, k * v)
        cand_len = jnp.where(c["finished"], c["lengths"], t + 1)           # (B, K)
        cand_score = cand_logp / jnp.repeat(length_penalty(cand_len, alpha), v, axis=1)
        score, index = jax.lax.top_k(cand_score, k)                         # (B, K)
        parent, token = index // v, (index % v).astype(jnp.int32)
        was_finished = jnp.take_along_axis(c["finished"], parent, axis=1)
        finished = was_finished | (token == eos)
        seqs = jnp.take_along_axis(c["seqs"], parent[..., None], axis=1)
        written = jnp.where(was_finished, eos, token)
        seqs = jax.lax.dynamic_update_slice(seqs, written[..., None], (0, 0, t))
        logp = jnp.take_along_axis(cand_logp, index, axis=1)
        lengths = jnp.take_along_axis(cand_len, parent, axis=1)
        # remember the best finished hypothesis
        fin_score = jnp.where(finished, score, neg)
        j = jnp.argmax(fin_score, axis=1)
        new_best = jnp.take_along_axis(fin_score, j[:, None], axis=1)[:, 0]
        better = new_best > c["best_score"]
        pick = lambda x, old: jnp.where(better.reshape((b,) + (1,) * (old.ndim - 1)),
                                        jnp.take_along_axis(x, j.reshape((b, 1) + (1,) * (x.ndim - 2)),
                                                            axis=1)[:, 0], old)
        best = {"best_score": jnp.maximum(new_best, c["best_score"]),
                "best_seq": pick(seqs, c["best_seq"]), "best_logp": pick(logp, c["best_logp"]),
                "best_len": pick(lengths, c["best_len"])}
        bound = jnp.max(jnp.where(finished, neg, logp), axis=1) / final_lp
        done = jnp.all(finished, axis=1) | (best["best_score"] >= bound)
        return dict(t=t + 1, state=_reorder(state, (rows + parent).reshape(-1)), prev=written.reshape(-1),
                    seqs=seqs, logp=logp, lengths=lengths, finished=finished, done=done, **best)

    init = dict(t=jnp.int32(0), state=state, prev=jnp.full((b * k,), bos, jnp.int32),
                seqs=jnp.full((b, k, max_len), eos, jnp.int32),
                logp=jnp.where(jnp.arange(k) == 0, 0.0, neg)[None, :].repeat(b, axis=0).astype(jnp.float32),
                lengths=jnp.zeros((b, k), jnp.int32), finished=jnp.zeros((b, k), bool),
                done=jnp.zeros((b,), bool), best_score=jnp.full((b,), neg), best_logp=jnp.full((b,), neg),
                best_seq=jnp.full((b, max_len), eos, jnp.int32), best_len=jnp.zeros((b,), jnp.int32))
    c = jax.lax.while_loop(cond, body, init)
    # beams still live when the loop ends are candidates too (truncated at max_len)
    live_score = c["logp"] / length_penalty(c["lengths"], alpha)
    j = jnp.argmax(live_score, axis=1)
    take = lambda x: jnp.take_along_axis(x, j.reshape((b, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]
    use_live = take(live_score) > c["best_score"]
    choose = lambda live, best: jnp.where(use_live.reshape((b,) + (1,) * (best.ndim - 1)), live, best)
    return Decoded(choose(take(c["seqs"]), c["best_seq"]), choose(take(c["lengths"]), c["best_len"]),
                   choose(take(c["logp"]), c["best_logp"]), jnp.maximum(take(live_score), c["best_score"]))


def beam_search(model: nn.Module, params: Any, batch: Any, *, bos: int, eos: int, max_len: int,
                beam: int = 4, alpha: float = 0.6) -> Decoded:
    """Batched beam search of width ``beam`` (see the module docstring); ``beam=1`` is greedy.

    ``batch`` is what ``model.decode_init`` takes; the state it returns is
    repeated ``beam`` times along the batch axis and reordered every step,
    so it must be a pytree whose leaves all have a leading batch axis.
    """
    check_decode_args(max_len, beam, alpha)
    check_decode_length(model, max_len)
    return _beam(model, params, batch, jnp.float32(alpha), bos, eos, max_len, beam)
