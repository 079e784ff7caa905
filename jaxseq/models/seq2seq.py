"""Encoder-decoder models for translation: the RNN encoder-decoder, Bahdanau attention, the Transformer.

All read a source ``x_1 .. x_S`` (ending with ``<eos>``) and, with teacher
forcing, the target shifted right ``<bos> y_1 .. y_{T-1}`` (``tgt_in``), and
return logits ``(B, T, V)`` for ``y_1 .. y_T`` (``tgt_out``); the trainer's
masked cross-entropy over the real target tokens is the loss.

Encoder (both models): embedding, then ``layers`` GRU layers (jaxseq.cells)
with dropout between layers, run with the source mask, so a padded step
leaves the state as it was and outputs zeros::

    h_t = GRU(e(x_t), h_{t-1})                  per layer; padding never changes a sentence's states
    C   = h_{S_b}                              top layer, at sentence b's true last step

``seq2seq`` decoder (Sutskever et al., 2014; D2L 10.7)::

    s_0 = the encoder's final states (every layer)
    s_t = GRU([e(y_{t-1}); C], s_{t-1})        the context C is fed at every step
    o_t = s_t W_o + b_o                         (B, V) logits

``bahdanau`` decoder (Bahdanau et al., 2015; D2L 11.4): the context depends on
the previous decoder state, so it is recomputed every step::

    alpha_t = softmax_S( a(s_{t-1}, h_1..h_S) )  masked to the source length
    c_t     = sum_j alpha_{t,j} h_j              (B, H)
    s_t     = GRU([e(y_{t-1}); c_t], s_{t-1})
    o_t     = s_t W_o + b_o

In the notes' form of the GRU (``--gru-reset before``) the decoder's first
layer is exactly::

    r_t  = sigma(W_yr y_{t-1} + W_sr s_{t-1} + W_cr c_t + b_r)
    z_t  = sigma(W_yz y_{t-1} + W_sz s_{t-1} + W_cz c_t + b_z)
    s~_t = tanh(W_ys y_{t-1} + W_ss (s_{t-1} * r_t) + W_cs c_t + b_s)
    s_t  = z_t * s_{t-1} + (1 - z_t) * s~_t

where ``W_y*`` and ``W_c*`` are the first ``E`` and the last ``H`` rows of the
cell's ``W_x*`` (it reads ``[e(y_{t-1}); c_t]``), ``W_s*`` its ``W_h*`` and
``b_*`` its ``b_*`` (``--gru-reset after`` puts the reset gate after the product,
``r_t * (W_ss s_{t-1} + b_ss)``, as cuDNN does). ``s_{t-1}`` is the top
layer's state, ``h_j`` the encoder's top-layer outputs and ``a`` the additive
(default) score, the scaled dot product or the notes' unscaled dot score
``s^T h`` of :mod:`jaxseq.attention` (where their equations are), whose weights get
dropout as in D2L (the additive score's key projection ``W_k h_j`` is taken once
per sentence, not at every step). The decoder is ONE step function (:class:`AttentionStep`):
training scans it over time (``nn.scan``), ``decode_step`` calls it once, so
training and decoding use the same equations.

The decoding contract (docs/DESIGN.md): ``decode_init({"src", "src_len"})`` encodes
the source into a state whose leaves all have a leading batch axis (beam
search reorders it), and ``decode_step(state, tokens (B,))`` returns
``(logits (B, V), state)``. A model with encoder-decoder attention sows its
weights ``(B, T, S)`` as the top-level intermediate ``"attention"``
(``model.apply(v, batch, mutable=["intermediates"])``) for inspection.

``transformer`` (Vaswani et al., 2017; D2L 11.7): an encoder stack over the
embedded source and a decoder stack over the embedded target (layers,
equations and the decode cache in :mod:`jaxseq.transformer`)::

    M   = Encoder(E_src[x] sqrt(d) + P)         (B, S, D)  self-attention masked to the source length
    Y   = Decoder(E_tgt[y_<t] sqrt(d) + P, M)  (B, T, D)  causal self-attention, cross-attention to M
    o_t = Y_t W_o + b_o                         (B, T, V)

Decoding runs the decoder one token per step over a key/value cache of
``max_len`` positions (the run's ``--max-len``; greedy and beam search
refuse a longer decode); the encoder's keys and values are projected once
per sentence. Every block sows its attention weights ``(B, H, Q, K)``;
:func:`attention_maps` collects them per layer and head, and
:func:`cross_attention` reads the encoder-decoder attention ``(B, T, S)`` of
any model (the Transformer's: the last block's, averaged over heads).

Another architecture joins by registering a :class:`~jaxseq.models.registry.ModelSpec`
(its config section, a build function, its capabilities) and, if it has
encoder-decoder attention (``cross_attention=True``), a ``sown_cross_attention``
static method that :func:`cross_attention` calls (the RNN models sow it as
the top-level ``"attention"``); the trainer, greedy and beam search, BLEU
and the CLI need nothing more.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq import attention, cells
from jaxseq.attention_layers import Projection
from jaxseq.config import Config, option
from jaxseq.errors import ConfigError
from jaxseq.flops import StepFlops, attention as attention_flops, matmul, transformer_block
from jaxseq.models.registry import ModelSpec, register
from jaxseq.models.recurrent import StackedRecurrent, apply_dense_2d
from jaxseq.transformer import Embedder, Stack, tensor_sizes

Array = jax.Array
ATTENTION_SCORES = ("additive", "dot", "dot-unscaled")
TIE_CHOICES = ("none", "output", "all")


@dataclass(frozen=True)
class TranslationModelConfig(Config):
    """Which translation model (a name in :mod:`jaxseq.models.registry`), and what every family shares."""

    model: str = option("bahdanau", "the model: an RNN encoder-decoder (seq2seq), one with Bahdanau "
                        "attention (bahdanau) or a Transformer (transformer)")
    layers: int = option(2, "GRU layers (RNN models) or Transformer blocks of the encoder and of the decoder",
                         minimum=1)
    dropout: float = option(0.2, "dropout between GRU layers and on attention weights; in the Transformer "
                            "also on embeddings and sublayer outputs", minimum=0.0, below=1.0)
    tie_embeddings: str = option("none", "transformer: output: the output projection is the target embedding "
                                 "(logits = y E^T, as in Vaswani et al.); all: also one embedding table for source and "
                                 "target (needs --joint-vocab); none: separate",
                                 choices=TIE_CHOICES)


@dataclass(frozen=True)
class Seq2SeqRNNConfig(Config):
    """The flags of the RNN encoder-decoders (seq2seq, bahdanau)."""

    embed: int = option(256, "embedding dimension of source and target words", minimum=1)
    hidden: int = option(256, "hidden units of each GRU layer, encoder and decoder", minimum=1)
    attention: str = option("additive", "attention scoring of the bahdanau model: additive "
                            "v^T tanh(W_s s + W_h h), dot (scaled, s^T h / sqrt(d)) or dot-unscaled (the "
                            "notes' s^T h)", choices=ATTENTION_SCORES)
    gru_reset: str = option("after", "the GRU's reset gate, encoder and decoder: before the recurrent product "
                            "(the notes' form) or after it (cuDNN's)", choices=tuple(cells.GRU_RESETS),
                            legacy="after")
    scan_unroll: int = option(0, "time steps per iteration of the recurrent lax.scan loops (0: the platform's "
                              "measured default, jaxseq.cells.UNROLL); same results for any value",
                              minimum=0, resumable=True, legacy=0)


# -- the encoder ---------------------------------------------------------------------------

class _GRUStack(nn.Module):
    """The sizes every part of the encoder-decoder shares."""

    vocab_size: int
    embed: int = 256
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    reset: str = "after"    # the GRU's form (jaxseq.cells.gated): before (the notes') or after
    dtype: Any = jnp.float32
    remat: bool = False     # recompute activations in the backward pass (TrainConfig.remat)
    unroll: int = 0         # the recurrent scans' unroll (--scan-unroll; 0: the platform's)


class GRUEncoder(_GRUStack):
    """Embedding + stacked GRU over the masked source.

    ``src`` ``(B, S)`` int32, ``src_len`` ``(B,)`` -> ``(carries, outputs)``:
    a tuple of per-layer final states ``(B, H)`` (each at the sentence's true
    last step) and the top layer's outputs ``(B, S, H)`` (zeros on padding).
    """

    @nn.compact
    def __call__(self, src: Array, src_len: Array, *, train: bool = False):
        x = nn.Embed(self.vocab_size, self.embed, name="embed")(src).astype(self.dtype)
        mask = cells.lengths_to_mask(src_len, src.shape[1])
        rnn = StackedRecurrent(cell="gru", reset=self.reset, hidden=self.hidden, layers=self.layers,
                               dropout=self.dropout, dtype=self.dtype, remat=self.remat,
                               unroll=self.unroll, name="rnn")
        return rnn(x, None, mask, train=train)


# -- the decoders ------------------------------------------------------------------------
# Each decoder: init_state(carries, outputs, src_len) -> state; __call__(tgt_in, state, train)
# -> (logits (B, T, V), attention (B, T, S) or None); step(state, tokens (B,)) -> (logits (B, V), state).

class _Decoder(_GRUStack):
    """A decoder's target embedding and output layer."""

    def setup(self):
        self.embedding = nn.Embed(self.vocab_size, self.embed, name="embed")
        self.out = nn.Dense(self.vocab_size, dtype=self.dtype, name="out")


class ContextDecoder(_Decoder):
    """The ``seq2seq`` decoder: a GRU fed ``[e(y_{t-1}); C]``, started from the encoder's states."""

    def setup(self):
        super().setup()
        self.rnn = StackedRecurrent(cell="gru", reset=self.reset, hidden=self.hidden, layers=self.layers,
                                    dropout=self.dropout, dtype=self.dtype, remat=self.remat,
                                    unroll=self.unroll, name="rnn")

    def init_state(self, carries, outputs: Array, src_len: Array) -> dict:
        return {"carry": tuple(carries), "context": carries[-1]}

    def _run(self, tokens: Array, state: dict, train: bool):
        x = self.embedding(tokens).astype(self.dtype)                               # (B, T, E)
        context = jnp.broadcast_to(state["context"][:, None, :],
                                   (x.shape[0], x.shape[1], state["context"].shape[-1]))
        carries, hs = self.rnn(jnp.concatenate([x, context.astype(self.dtype)], axis=-1), state["carry"],
                               train=train)
        return apply_dense_2d(self.out, hs), dict(state, carry=carries)

    def __call__(self, tokens: Array, state: dict, *, train: bool = False):
        logits, _ = self._run(tokens, state, train)
        return logits, None

    def step(self, state: dict, tokens: Array):
        logits, state = self._run(tokens[:, None], state, False)
        return logits[:, 0], state


class CellStep(nn.Module):
    """One step of a recurrent cell (parameters as in :class:`Recurrent`): ``(carry, x) -> (carry, h)``."""

    cell: str = "gru"
    hidden: int = 256
    dtype: Any = jnp.float32
    reset: str = "after"

    @nn.compact
    def __call__(self, carry, x: Array):
        cell = cells.get_cell(self.cell, reset=self.reset)
        params = self.param("cell", lambda key: cell.init(key, x.shape[-1], self.hidden))
        params = jax.tree_util.tree_map(lambda p: p.astype(self.dtype), params)
        return cell.step(params, carry, x.astype(self.dtype))


class AttentionStep(nn.Module):
    """One step of the Bahdanau decoder, without the output layer.

    ``state``: ``{"carry": per-layer (B, H), "enc": (B, S, H), "keys": (B, S, H),
    "src_len": (B,)}`` (``keys``: :meth:`prepare` of ``enc``, taken once per
    sentence); ``x``: ``e(y_{t-1})`` ``(B, E)``. Returns ``(state, (s_t top
    layer (B, H), alpha_t (B, S)))``.
    """

    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    score: str = "additive"
    dtype: Any = jnp.float32
    reset: str = "after"

    def setup(self):
        if self.score == "additive":
            h = self.hidden
            self.score_params = self.param("attention", lambda key: attention.additive_init(key, h, h, h))
        self.cells = [CellStep("gru", self.hidden, self.dtype, self.reset, name=f"layer{i}")
                      for i in range(self.layers)]
        self.drop = nn.Dropout(self.dropout)

    def prepare(self, enc: Array) -> Array:
        """What the scores read of the encoder outputs at every step: ``W_k h_j`` (additive) or ``h_j`` (dot)."""
        return attention.additive_keys(self.score_params, enc) if self.score == "additive" else enc

    def _attend(self, state: dict, train: bool) -> tuple[Array, Array]:
        """``(c_t (B, 1, H), alpha_t (B, 1, S))`` for the query ``s_{t-1}``; dropout on the weights."""
        query = state["carry"][-1][:, None, :]                                      # s_{t-1}: (B, 1, H)
        if self.score == "dot":
            rng = self.make_rng("dropout") if train and self.dropout > 0 else None
            return attention.dot_product_attention(query, state["keys"], state["enc"], state["src_len"],
                                                   dropout_rate=self.dropout, dropout_rng=rng)
        if self.score == "dot-unscaled":                                            # s_{t-1}^T h_j
            scores = attention.dot_product_scores(query, state["keys"], scale=1.0)
        else:
            scores = attention.additive_scores_projected(self.score_params, query, state["keys"])
        weights = attention.masked_softmax(scores, state["src_len"])
        used = self.drop(weights, deterministic=not train) if self.dropout > 0 else weights
        return attention.attention_pool(used, state["enc"]), weights

    def __call__(self, state: dict, x: Array, *, train: bool = False):
        context, weights = self._attend(state, train)
        h = jnp.concatenate([x.astype(self.dtype), context[:, 0].astype(self.dtype)], axis=-1)
        carries = []
        for layer, cell in enumerate(self.cells):
            if layer > 0 and self.dropout > 0:
                h = self.drop(h, deterministic=not train)
            carry, h = cell(state["carry"][layer], h)
            carries.append(carry)
        return dict(state, carry=tuple(carries)), (h, weights[:, 0])


class AttentionDecoder(_Decoder):
    """The ``bahdanau`` decoder: :class:`AttentionStep` scanned over time, then the output layer."""

    score: str = "additive"

    def setup(self):
        super().setup()
        self.cell = AttentionStep(self.hidden, self.layers, self.dropout, self.score, self.dtype, self.reset,
                                  name="step")

    def init_state(self, carries, outputs: Array, src_len: Array) -> dict:
        return {"carry": tuple(carries), "enc": outputs, "keys": self.cell.prepare(outputs), "src_len": src_len}

    def __call__(self, tokens: Array, state: dict, *, train: bool = False):
        x = self.embedding(tokens).astype(self.dtype)                               # (B, T, E)
        body = lambda step, s, x_t: step(s, x_t, train=train)
        if self.remat:      # keep only the carries; recompute each step's activations in the backward pass
            body = nn.remat(body)
        scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False, "dropout": True},
                       in_axes=1, out_axes=1)
        _, (hs, weights) = scan(self.cell, state, x)                                # (B, T, H), (B, T, S)
        return apply_dense_2d(self.out, hs), weights

    def step(self, state: dict, tokens: Array):
        state, (h, _) = self.cell(state, self.embedding(tokens).astype(self.dtype), train=False)
        return self.out(h), state


# -- the whole model ---------------------------------------------------------------------

class RNNEncoderDecoder(nn.Module):
    """GRU encoder + ``seq2seq`` or ``bahdanau`` decoder behind the model contract.

    ``attention=None`` is the ``seq2seq`` model; ``"additive"``, ``"dot"`` or ``"dot-unscaled"``
    the ``bahdanau`` model with that scoring.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    embed: int = 256
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    attention: str | None = None
    reset: str = "after"
    dtype: Any = jnp.float32
    remat: bool = False
    unroll: int = 0

    target_key: ClassVar[str] = "tgt_out"

    def setup(self):
        sizes = dict(embed=self.embed, hidden=self.hidden, layers=self.layers, dropout=self.dropout,
                     reset=self.reset, dtype=self.dtype, remat=self.remat, unroll=self.unroll)
        self.encoder = GRUEncoder(self.src_vocab_size, **sizes, name="encoder")
        if self.attention is None:
            self.decoder = ContextDecoder(self.tgt_vocab_size, **sizes, name="decoder")
        else:
            self.decoder = AttentionDecoder(self.tgt_vocab_size, **sizes, score=self.attention, name="decoder")

    @staticmethod
    def sown_cross_attention(intermediates: dict) -> Array:
        """The ``(B, T, S)`` decoder attention this model sowed as ``"attention"``."""
        return intermediates["attention"][0]

    def encode(self, batch: dict[str, Array], *, train: bool = False) -> dict:
        """The decoder's initial state for ``batch["src"]`` ``(B, S)`` and ``batch["src_len"]`` ``(B,)``."""
        src_len = jnp.asarray(batch["src_len"], jnp.int32)
        carries, outputs = self.encoder(batch["src"], src_len, train=train)
        return self.decoder.init_state(carries, outputs, src_len)

    def __call__(self, batch: dict[str, Array], *, train: bool = False, carry=None):
        """Teacher forcing: ``batch["tgt_in"]`` ``(B, T)`` -> ``(logits (B, T, V), None)``."""
        logits, weights = self.decoder(batch["tgt_in"], self.encode(batch, train=train), train=train)
        if weights is not None:
            self.sow("intermediates", "attention", weights)
        return logits, None

    def decode_init(self, batch: dict[str, Array]) -> dict:
        return self.encode(batch, train=False)

    def decode_step(self, state: dict, tokens: Array):
        """``tokens`` ``(B,)`` -> ``(logits (B, V), state)``."""
        return self.decoder.step(state, tokens)


class TransformerEncoderDecoder(nn.Module):
    """The ``transformer`` translation model (module docstring) behind the model contract.

    ``max_len`` bounds both sides: the longest source, and the positions of
    the decode cache (a decode of at most ``max_len`` tokens). The decode
    state is ``{"cache": per-block caches, "src_len": (B,), "index": (B,)}``,
    every leaf batch-major.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    max_len: int
    d_model: int = 256
    num_heads: int = 4
    num_layers: int = 2
    ffn: int = 1024
    dropout: float = 0.0
    positional: str = "sinusoidal"
    norm: str = "post"
    activation: str = "relu"
    scan_layers: bool = False
    remat: bool = False
    attention_impl: str = "jaxseq"
    tie: str = "none"
    dtype: Any = jnp.float32

    target_key: ClassVar[str] = "tgt_out"

    def setup(self):
        embed = lambda vocab, name: Embedder(vocab, self.d_model, self.max_len, self.positional, self.dropout,
                                             self.dtype, name=name)
        stack = lambda name, **kw: Stack(self.num_layers, self.d_model, self.num_heads, self.ffn,
                                         dropout=self.dropout, norm=self.norm, activation=self.activation,
                                         scan_layers=self.scan_layers, remat=self.remat, sow_weights=True,
                                         attention_impl=self.attention_impl, dtype=self.dtype, name=name, **kw)
        if self.tie not in TIE_CHOICES:
            raise ConfigError(f"--tie-embeddings must be one of {', '.join(TIE_CHOICES)}, got {self.tie!r}")
        if self.tie == "all":
            if self.src_vocab_size != self.tgt_vocab_size:
                raise ConfigError(f"--tie-embeddings all needs one joint vocabulary, but the source has "
                                  f"{self.src_vocab_size} tokens and the target {self.tgt_vocab_size}")
            self.src_embedder = self.tgt_embedder = embed(self.tgt_vocab_size, "embedder")
        else:
            self.src_embedder, self.tgt_embedder = embed(self.src_vocab_size, "src_embedder"), embed(
                self.tgt_vocab_size, "tgt_embedder")
        self.encoder = stack("encoder")
        self.decoder = stack("decoder", decoder=True, cross_attention=True)
        if self.tie == "none":
            self.out = Projection(self.tgt_vocab_size, dtype=self.dtype, name="out")

    def _logits(self, y: Array) -> Array:
        """``(..., D)`` -> ``(..., V)``: the output projection, or (tied) ``y E^T``, ``E`` the target embedding
        table, as in "Attention is all you need" (the input side reads ``E[x] sqrt(D)``).

        ``E`` is initialised with standard deviation ``1/sqrt(D)``, so ``y E^T`` starts with logits of unit
        scale. (The Flax wmt example divides by ``sqrt(D)`` because its table starts at standard deviation 1
        and its input is not scaled; with this table that division starts the logits 16x too small at
        ``D = 256`` and training crawls: validation perplexity 6,822 against 168 untied after 120 steps on
        fra-eng.)"""
        if self.tie == "none":
            return self.out(y)
        return self.tgt_embedder.attend(y)

    @staticmethod
    def sown_cross_attention(intermediates: dict) -> Array:
        """The last block's cross-attention averaged over heads, ``(B, T, S)``."""
        return attention_maps(intermediates)["cross"][-1].mean(axis=1)

    @property
    def max_decode_len(self) -> int:
        """The most tokens a decode can write (the cache's positions; :func:`jaxseq.decode.check_decode_length`)."""
        return self.max_len

    def encode(self, batch: dict[str, Array], *, train: bool = False) -> tuple[Array, Array]:
        """``M`` ``(B, S, D)`` and ``src_len`` ``(B,)`` of ``batch["src"]`` ``(B, S)``, ``batch["src_len"]``."""
        src_len = jnp.asarray(batch["src_len"], jnp.int32)
        memory = self.encoder(self.src_embedder(batch["src"], train=train), valid_lens=src_len, train=train)
        return memory, src_len

    def __call__(self, batch: dict[str, Array], *, train: bool = False, carry=None):
        """Teacher forcing: ``batch["tgt_in"]`` ``(B, T)`` -> ``(logits (B, T, V), None)``."""
        memory, src_len = self.encode(batch, train=train)
        y = self.decoder(self.tgt_embedder(batch["tgt_in"], train=train), memory=memory, memory_valid_lens=src_len,
                         train=train)
        return self._logits(y), None

    def decode_init(self, batch: dict[str, Array]) -> dict[str, Any]:
        memory, src_len = self.encode(batch)
        b = memory.shape[0]
        return {"cache": self.decoder.init_cache(b, self.max_len, memory), "src_len": src_len,
                "index": jnp.zeros((b,), jnp.int32)}

    def decode_step(self, state: dict[str, Any], tokens: Array) -> tuple[Array, dict[str, Any]]:
        """``tokens`` ``(B,)`` at position ``state["index"]`` -> ``(logits (B, V), state)``."""
        x = self.tgt_embedder(tokens[:, None], state["index"][:, None])
        y, cache = self.decoder.decode(x, state["cache"], state["src_len"])
        return self._logits(y[:, 0]), dict(state, cache=cache, index=state["index"] + 1)


def attention_maps(intermediates: dict) -> dict[str, Array]:
    """The attention weights a :class:`TransformerEncoderDecoder` sowed, per kind, ``(L, B, H, Q, K)``.

    ``intermediates``: the ``"intermediates"`` collection of an ``apply(...,
    mutable=["intermediates"])``. Kinds: ``encoder`` (self-attention over the
    source), ``decoder`` (causal self-attention), ``cross`` (decoder over the
    source); layer order as in the stack (a scanned stack is split along its
    layer axis).
    """
    kinds = {"encoder": ("encoder", "attention_weights"), "decoder": ("decoder", "self_attention_weights"),
             "cross": ("decoder", "cross_attention_weights")}
    out = {}
    for kind, (stack, name) in kinds.items():
        blocks = intermediates.get(stack, {})
        if "blocks" in blocks:                    # nn.scan: one entry, layers on the leading axis
            out[kind] = blocks["blocks"][name][0]
        else:
            layers = sorted(blocks, key=lambda k: int(k.rsplit("_", 1)[1]))
            out[kind] = jnp.stack([blocks[k][name][0] for k in layers])
    return out


def cross_attention(model: nn.Module, intermediates: dict) -> Array:
    """The encoder-decoder attention ``(B, T, S)`` a model sowed (each model's ``sown_cross_attention``;
    the Transformer's: last block, mean of heads)."""
    return type(model).sown_cross_attention(intermediates)


def _build_rnn(attention: bool, run, vocab_sizes: tuple[int, int]) -> RNNEncoderDecoder:
    rnn = run.rnn
    return RNNEncoderDecoder(*vocab_sizes, embed=rnn.embed, hidden=rnn.hidden, layers=run.model.layers,
                             dropout=run.model.dropout, attention=rnn.attention if attention else None,
                             reset=rnn.gru_reset, dtype=run.train.compute_dtype, remat=run.train.remat,
                             unroll=rnn.scan_unroll)


def _build_transformer(run, vocab_sizes: tuple[int, int]) -> TransformerEncoderDecoder:
    options = run.transformer
    return TransformerEncoderDecoder(*vocab_sizes, run.data.max_len, num_layers=run.model.layers,
                                     dropout=run.model.dropout, positional=options.positional,
                                     tie=run.model.tie_embeddings, remat=run.train.remat,
                                     dtype=run.train.compute_dtype,
                                     **options.stack_options(run.train.compute_dtype, run.model.dropout))


def _gru_stack_flops(n: int, first: int, hidden: int, layers: int) -> float:
    """Forward FLOPs of ``layers`` GRU layers over ``N`` positions: ``3 (2 N I H + 2 N H H)`` each."""
    return sum(3 * (matmul(n, first if layer == 0 else hidden, hidden) + matmul(n, hidden, hidden))
               for layer in range(layers))


def _rnn_flops(with_attention: bool, run, vocab_sizes: tuple[int, int], shapes) -> StepFlops:
    """Forward FLOPs (conventions of :mod:`jaxseq.flops`), source ``(B, S)``, target ``(B, T)``::

        encoder:    GRU stack over B S positions, input E
        decoder:    GRU stack over B T positions, input E + H ([e(y); context])
        additive:   2 B S H H (keys, once) + 2 B T H H (queries) + 2 B T S H (w_v) + 2 B T S H (pooling)
        dot:        4 B T S H (scores and pooling)
        output:     2 B T H V
    """
    (b, s), (_, t) = shapes["src"], shapes["tgt_in"]
    e, h, layers = run.rnn.embed, run.rnn.hidden, run.model.layers
    forward = _gru_stack_flops(b * s, e, h, layers) + _gru_stack_flops(b * t, e + h, h, layers)
    if with_attention and run.rnn.attention == "additive":
        forward += matmul(b * s, h, h) + matmul(b * t, h, h) + matmul(b * t * s, h, 1) + matmul(b * t, s, h)
    elif with_attention:
        forward += attention_flops(b, t, s, h)[0]
    return StepFlops(forward + matmul(b * t, h, vocab_sizes[1]), b * t)


def _transformer_flops(run, vocab_sizes: tuple[int, int], shapes) -> StepFlops:
    """Forward FLOPs (conventions of :mod:`jaxseq.flops`), ``L`` blocks each side::

        encoder block:  dense layers over B S positions + 4 B S S D (self-attention)
        decoder block:  dense layers over B T + 4 B T T D / 2 (causal) + cross-attention:
                        2 (2 B T D D) (Q, output) + 2 (2 B S D D) (K, V) + 4 B T S D
        output:         2 B T D V
    """
    (b, s), (_, t) = shapes["src"], shapes["tgt_in"]
    o, layers = run.transformer, run.model.layers
    d, f = o.d_model, o.ffn or 4 * o.d_model
    causal, masked = attention_flops(b, t, t, d, causal=True, block=Stack.causal_block)
    cross = 2 * matmul(b * t, d, d) + 2 * matmul(b * s, d, d) + attention_flops(b, t, s, d)[0]
    encoder = transformer_block(b * s, d, f) + attention_flops(b, s, s, d)[0]
    decoder = transformer_block(b * t, d, f) + causal + cross
    return StepFlops(layers * (encoder + decoder) + matmul(b * t, d, vocab_sizes[1]), b * t,
                     masked=layers * masked)


register(ModelSpec(task="translate", name="seq2seq", description="GRU encoder-decoder, context from the encoder",
                   sections=("rnn",), build=functools.partial(_build_rnn, False),
                   flops=functools.partial(_rnn_flops, False)))
register(ModelSpec(task="translate", name="bahdanau", description="GRU encoder-decoder with Bahdanau attention",
                   sections=("rnn",), build=functools.partial(_build_rnn, True), cross_attention=True,
                   flops=functools.partial(_rnn_flops, True)))


def transformer_data_defaults(given: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The translation Transformer's defaults on the user's own pairs (``given``: the flags given).

    A real corpus is trained as fairseq and the Flax wmt example train it: batches of about 4,096 tokens
    bucketed by length (unless ``--batch-size`` is given), sentences up to 32 tokens, dropout 0.1, Adam with
    the inverse square-root schedule (peak 2e-3 after 500 warmup steps, so it needs no run length), the
    average of the last 3 checkpoints (every 200 steps: the last ~400 steps; averaging 5 checkpoints 250
    apart lost 1.7 BLEU after 1,700 steps, the last 2-3 gained 0.6) reported beside the last one; at most 1,000
    validation and 5,000 test pairs held out (unless a fraction is given). With subwords (``--tokens
    bpe|wordpiece``) one joint vocabulary and one embedding table for source, target and output
    (``--tie-embeddings all``) unless ``--no-joint-vocab``. The length: until ``--time-limit`` (at most
    100 epochs) if one is given, else 10 epochs, unless ``--steps``/``--epochs``.
    """
    data: dict[str, Any] = {"max_len": 32, "buckets": "step4"}
    if "batch_size" not in given:
        data["batch_tokens"] = 4096
    if "valid_fraction" not in given:
        data["valid_max"] = 1000
    if "test_fraction" not in given:
        data["test_max"] = 5000
    model: dict[str, Any] = {"dropout": 0.1}
    if given.get("tokens", "word") != "word" and given.get("joint_vocab", True):
        data["joint_vocab"] = True
        model["tie_embeddings"] = "all"
    train: dict[str, Any] = {"checkpoint_every": 200, "keep": 3, "average_last": 3}
    if "steps" not in given and "epochs" not in given:
        train["epochs"] = 100 if given.get("time_limit") else 10
    return {"data": data, "model": model, "train": train,
            "optim": {"schedule": "rsqrt", "lr": 2e-3, "warmup": 500}}


# experiments/fra_eng_transformer.sh's settings (22-25 BLEU on held-out fra-eng pairs); on a real corpus
# transformer_data_defaults (experiments/README.md, "Translation at full scale")
register(ModelSpec(
    task="translate", name="transformer", description="Transformer encoder-decoder (Vaswani et al., 2017)",
    sections=("transformer",), build=_build_transformer, flops=_transformer_flops, cross_attention=True,
    layered_attention=True, tensor_sizes=tensor_sizes,
    decode_cache=True, tuned_allocator=True, steps=900, data_defaults=transformer_data_defaults,
    defaults={"model": {"layers": 2, "dropout": 0.2},
              "transformer": {"d_model": 256, "heads": 4, "ffn": 1024},
              "train": {"label_smoothing": 0.1},
              "optim": {"optimizer": "adam", "lr": 1e-3, "warmup": 200}}))
