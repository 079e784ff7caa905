"""The decoder-only Transformer language model (GPT-style; layers in :mod:`jaxseq.transformer`).

Each position sees itself and the positions before it: the embedded
tokens ``X_0`` go through ``N`` causal decoder blocks without cross-attention
(both in :mod:`jaxseq.transformer`), then::

    O = X_N W_out + b_out                           (B, T, V) logits of x_{t+1}

The model reads at most ``context`` positions (the length of the learned
position table and of the decode cache); training windows longer than that
are refused with a :class:`~jaxseq.errors.ConfigError`.

Decoding keeps a key/value cache per block. ``decode_init`` processes the
whole prefix in one call (prefill) and ``decode_step`` one token per call;
the logits equal those of the full forward pass. Generation longer than the
context is *handled* by a sliding window: when the cache is full, the last
``context // 2`` tokens are re-encoded at positions ``0 .. context // 2 - 1``
(one prefill call) and decoding goes on, so each token is predicted from
between ``context // 2`` and ``context`` previous tokens. (nanoGPT instead
crops to exactly ``context`` tokens and recomputes all of them every step.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq.attention_layers import Projection
from jaxseq.config import option
from jaxseq.errors import ConfigError
from jaxseq.flops import StepFlops, attention, matmul, transformer_block
from jaxseq.models.registry import ModelSpec, register
from jaxseq.transformer import Embedder, Stack, TransformerOptions, tensor_sizes

Array = jax.Array


@dataclass(frozen=True)
class TransformerLMConfig(TransformerOptions):
    """The Transformer language model's flags: the shared Transformer options and its context."""

    context: int | None = option(None, "the most positions it reads (decode cache, learned positions; "
                                 "default --seq-len); longer generation slides a window", minimum=1)


class TransformerLM(nn.Module):
    """A decoder-only Transformer language model; the model contract of :mod:`jaxseq.models`.

    The decode state is ``{"cache": per-block caches, "tokens": (B, context)
    int32 (the tokens in the cache), "index": (B,) int32 (how many)}``; every
    leaf is batch-major. All rows share one index (one prefix length).
    """

    vocab_size: int
    context: int
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 2
    ffn: int | None = None
    dropout: float = 0.0
    positional: str = "sinusoidal"
    norm: str = "post"
    activation: str = "relu"
    scan_layers: bool = False
    remat: bool = False
    causal_block: int = 64
    attention_impl: str = "jaxseq"
    dtype: Any = jnp.float32

    target_key: ClassVar[str] = "targets"

    def setup(self):
        self.embedder = Embedder(self.vocab_size, self.d_model, self.context, self.positional, self.dropout,
                                 self.dtype, name="embedder")
        self.stack = Stack(self.num_layers, self.d_model, self.num_heads, self.ffn or 4 * self.d_model,
                           decoder=True, dropout=self.dropout, norm=self.norm, activation=self.activation,
                           scan_layers=self.scan_layers, remat=self.remat, causal_block=self.causal_block,
                           attention_impl=self.attention_impl, dtype=self.dtype, name="stack")
        self.out = Projection(self.vocab_size, dtype=self.dtype, name="out")

    def initial_carry(self, batch_size: int) -> None:
        """No state is carried between batches."""
        return None

    def __call__(self, batch: dict[str, Array], *, train: bool = False, carry=None):
        """``batch["inputs"]`` ``(B, T)``, ``T <= context`` -> ``(logits (B, T, V), None)``."""
        x = self.embedder(batch["inputs"], train=train)
        return self.out(self.stack(x, train=train)), None

    def _extend(self, tokens: Array, cache: Any, index: Array) -> tuple[Array, Any]:
        """Run ``tokens`` ``(B, P)`` at positions ``index ..`` through the cached stack -> ``(X_N, cache)``."""
        positions = index[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
        return self.stack.decode(self.embedder(tokens, positions), cache)

    def _prefill(self, tokens: Array) -> dict[str, Any]:
        """A fresh state holding ``tokens`` ``(B, P)``, ``P <= context``."""
        b, p = tokens.shape
        index = jnp.zeros((b,), jnp.int32)
        cache = self.stack.init_cache(b, self.context)
        if p:
            _, cache = self._extend(tokens, cache, index)
        buffer = jnp.zeros((b, self.context), jnp.int32).at[:, :p].set(tokens.astype(jnp.int32))
        return {"cache": cache, "tokens": buffer, "index": index + p}

    def decode_init(self, batch: dict[str, Array]) -> dict[str, Any]:
        """The state after reading ``batch["inputs"]`` ``(B, P)`` in one call (``P`` may be 0;
        a prefix longer than ``context`` keeps its last ``context`` tokens)."""
        return self._prefill(batch["inputs"][:, -self.context:])

    def _slide(self, state: dict[str, Any]) -> dict[str, Any]:
        """The full cache re-encoded from its last ``context // 2`` tokens, at positions ``0 ..``."""
        return self._prefill(state["tokens"][:, self.context - self.context // 2:])

    def decode_step(self, state: dict[str, Any], tokens: Array) -> tuple[Array, dict[str, Any]]:
        """``tokens`` ``(B,)`` -> ``(logits (B, V) of the next token, state)``; slides the window
        first when the cache is full (module docstring)."""
        full = state["index"][0] >= self.context
        state = nn.cond(full, lambda mdl, s: mdl._slide(s), lambda mdl, s: s, self, state)
        index = state["index"]
        x, cache = self._extend(tokens[:, None], state["cache"], index)
        rows = jnp.arange(tokens.shape[0])
        buffer = state["tokens"].at[rows, index].set(tokens.astype(jnp.int32))
        return self.out(x[:, 0]), {"cache": cache, "tokens": buffer, "index": index + 1}


def _build(run, vocab_sizes: tuple[int, ...]) -> TransformerLM:
    options, seq_len = run.transformer, run.data.seq_len
    context = options.context or seq_len
    if seq_len > context:
        raise ConfigError(f"--seq-len {seq_len} is longer than --context {context}; raise --context")
    return TransformerLM(vocab_size=vocab_sizes[0], context=context, num_layers=run.model.layers,
                         dropout=run.model.dropout, positional=options.positional, remat=run.train.remat,
                         dtype=run.train.compute_dtype,
                         **options.stack_options(run.train.compute_dtype, run.model.dropout))


def _flops(run, vocab_sizes: tuple[int, ...], shapes) -> StepFlops:
    """Forward FLOPs (conventions of :mod:`jaxseq.flops`), ``L`` blocks over ``N = B T`` positions::

        L (4 (2 N D D) + 2 (2 N D F) + 4 B T T D / 2)  + 2 N D V     causal attention at half
    """
    b, t = shapes["inputs"]
    o = run.transformer
    counted, masked = attention(b, t, t, o.d_model, causal=True, block=TransformerLM.causal_block)
    layers = run.model.layers
    forward = layers * (transformer_block(b * t, o.d_model, o.ffn or 4 * o.d_model) + counted)
    return StepFlops(forward + matmul(b * t, o.d_model, vocab_sizes[0]), b * t, masked=layers * masked)


# nanoGPT's CPU configuration for character Shakespeare (experiments/nanogpt_shakespeare.sh)
register(ModelSpec(
    task="lm", name="transformer", description="decoder-only (GPT-style) Transformer", sections=("transformer",),
    build=_build, flops=_flops, decode_cache=True, tuned_allocator=True, tensor_sizes=tensor_sizes,
    defaults={"model": {"layers": 4, "dropout": 0.0},
              "transformer": {"d_model": 128, "heads": 4, "norm": "pre", "positional": "learned",
                              "ffn_activation": "gelu"},
              "data": {"seq_len": 64, "batch_size": 12},
              "optim": {"optimizer": "adamw", "lr": 1e-3, "schedule": "cosine", "warmup": 100, "min_lr": 1e-4,
                        "weight_decay": 0.1, "beta2": 0.99}}))
