"""Encoder-decoder models for translation: the RNN encoder-decoder and Bahdanau attention.

Both read a source ``x_1 .. x_S`` (ending with ``<eos>``) and, with teacher
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
    s_t     = GRU([e(y_{t-1}); c_t], s_{t-1})    i.e. r_t = sigma(W_yr y_{t-1} + W_sr s_{t-1} + W_cr c_t + b_r), ...
    o_t     = s_t W_o + b_o

with ``s_{t-1}`` the top layer's state, ``h_j`` the encoder's top-layer
outputs and ``a`` the additive (default) or scaled dot-product score of
:mod:`jaxseq.attention` (where their equations are), whose weights get
dropout as in D2L. The decoder is ONE step function (:class:`AttentionStep`):
training scans it over time (``nn.scan``), ``decode_step`` calls it once, so
training and decoding use the same equations.

The decoding contract (DESIGN.md): ``decode_init({"src", "src_len"})`` encodes
the source into a state whose leaves all have a leading batch axis (beam
search reorders it), and ``decode_step(state, tokens (B,))`` returns
``(logits (B, V), state)``. A model with encoder-decoder attention sows its
weights ``(B, T, S)`` as the top-level intermediate ``"attention"``
(``model.apply(v, batch, mutable=["intermediates"])``) for inspection.

Another architecture (the Transformer) joins by adding its name to
``TRANSLATION_MODELS``, a branch in :func:`build_translation_model` (plus
its fields in :class:`TranslationModelConfig`) and, if it has
encoder-decoder attention, the sown ``"attention"`` (see :func:`has_attention`);
the trainer, greedy and beam search, BLEU and the CLI need nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseq import cells
from jaxseq.config import option
from jaxseq.errors import ConfigError
from jaxseq.models.recurrent import StackedRecurrent, apply_dense_2d

Array = jax.Array
TRANSLATION_MODELS = ("seq2seq", "bahdanau")
ATTENTION_SCORES = ("additive", "dot")


@dataclass(frozen=True)
class TranslationModelConfig:
    """Architecture of a translation model."""

    model: str = option("bahdanau", "the model: an RNN encoder-decoder (seq2seq) or one with Bahdanau "
                        "attention (bahdanau)", choices=TRANSLATION_MODELS)
    embed: int = option(256, "embedding dimension of source and target words")
    hidden: int = option(256, "hidden units of each GRU layer (encoder and decoder)")
    layers: int = option(2, "GRU layers of the encoder and of the decoder")
    dropout: float = option(0.2, "dropout between GRU layers (and on attention weights)")
    attention: str = option("additive", "attention scoring of the bahdanau model: additive or scaled "
                            "dot product", choices=ATTENTION_SCORES)

    def validate(self) -> None:
        if self.model not in TRANSLATION_MODELS:
            raise ConfigError(f"--model must be one of {', '.join(TRANSLATION_MODELS)}, got {self.model!r}")
        if self.attention not in ATTENTION_SCORES:
            raise ConfigError(f"--attention must be one of {', '.join(ATTENTION_SCORES)}, got {self.attention!r}")
        for name in ("embed", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must lie in [0, 1), got {self.dropout}")


# -- the encoder ---------------------------------------------------------------------------

class _GRUStack(nn.Module):
    """The sizes every part of the encoder-decoder shares."""

    vocab_size: int
    embed: int = 256
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    dtype: Any = jnp.float32
    remat: bool = False     # recompute activations in the backward pass (TrainConfig.remat)


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
        rnn = StackedRecurrent(cell="gru", hidden=self.hidden, layers=self.layers, dropout=self.dropout,
                               dtype=self.dtype, remat=self.remat, name="rnn")
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
        self.rnn = StackedRecurrent(cell="gru", hidden=self.hidden, layers=self.layers, dropout=self.dropout,
                                    dtype=self.dtype, remat=self.remat, name="rnn")

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

    @nn.compact
    def __call__(self, carry, x: Array):
        cell = cells.get_cell(self.cell)
        params = self.param("cell", lambda key: cell.init(key, x.shape[-1], self.hidden))
        params = jax.tree_util.tree_map(lambda p: p.astype(self.dtype), params)
        return cell.step(params, carry, x.astype(self.dtype))


class AttentionStep(nn.Module):
    """One step of the Bahdanau decoder, without the output layer.

    ``state``: ``{"carry": per-layer (B, H), "enc": (B, S, H), "src_len": (B,)}``;
    ``x``: ``e(y_{t-1})`` ``(B, E)``. Returns ``(state, (s_t top layer (B, H),
    alpha_t (B, S)))``.
    """

    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    score: str = "additive"
    dtype: Any = jnp.float32

    def setup(self):
        from jaxseq import attention

        if self.score == "additive":
            self.attention = attention.AdditiveAttention(self.hidden, self.dropout, name="attention")
        else:
            self.attention = attention.DotProductAttention(self.dropout, name="attention")
        self.cells = [CellStep("gru", self.hidden, self.dtype, name=f"layer{i}") for i in range(self.layers)]
        self.drop = nn.Dropout(self.dropout)

    def __call__(self, state: dict, x: Array, *, train: bool = False):
        query = state["carry"][-1][:, None, :]                                      # s_{t-1}: (B, 1, H)
        context, weights = self.attention(query, state["enc"], state["enc"], state["src_len"], train=train)
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
        self.cell = AttentionStep(self.hidden, self.layers, self.dropout, self.score, self.dtype, name="step")

    def init_state(self, carries, outputs: Array, src_len: Array) -> dict:
        return {"carry": tuple(carries), "enc": outputs, "src_len": src_len}

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

    ``attention=None`` is the ``seq2seq`` model; ``"additive"`` or ``"dot"``
    the ``bahdanau`` model with that scoring.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    embed: int = 256
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.0
    attention: str | None = None
    dtype: Any = jnp.float32
    remat: bool = False

    target_key: ClassVar[str] = "tgt_out"
    recurrent: ClassVar[bool] = False      # no carry between batches: each batch starts from its source

    def setup(self):
        sizes = dict(embed=self.embed, hidden=self.hidden, layers=self.layers, dropout=self.dropout,
                     dtype=self.dtype, remat=self.remat)
        self.encoder = GRUEncoder(self.src_vocab_size, **sizes, name="encoder")
        if self.attention is None:
            self.decoder = ContextDecoder(self.tgt_vocab_size, **sizes, name="decoder")
        else:
            self.decoder = AttentionDecoder(self.tgt_vocab_size, **sizes, score=self.attention, name="decoder")

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


def build_translation_model(config: TranslationModelConfig, src_vocab_size: int, tgt_vocab_size: int,
                            dtype: Any = jnp.float32, remat: bool = False) -> nn.Module:
    """The Linen module for ``config`` (``config.model`` picks the architecture).

    ``dtype`` is the compute dtype and ``remat`` recomputes activations in
    the backward pass (the trainer's ``--dtype`` and ``--remat``).
    """
    config.validate()
    if config.model in ("seq2seq", "bahdanau"):
        return RNNEncoderDecoder(src_vocab_size, tgt_vocab_size, embed=config.embed, hidden=config.hidden,
                                 layers=config.layers, dropout=config.dropout,
                                 attention=config.attention if config.model == "bahdanau" else None, dtype=dtype,
                                 remat=remat)
    raise ConfigError(f"--model {config.model} is not a translation model")


def has_attention(config: TranslationModelConfig) -> bool:
    """Whether the model sows encoder-decoder attention weights ``"attention"`` ``(B, T, S)``."""
    return config.model != "seq2seq"
