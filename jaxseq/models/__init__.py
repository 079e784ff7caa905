"""Models: Flax Linen modules that call the pure functions of jaxseq.

Every model keeps one contract (docs/DESIGN.md):

* ``model.apply({"params": p}, batch, train=..., carry=..., rngs=...)`` returns
  ``(logits (B, T, V), carry)``; ``carry`` is the recurrent state after the
  batch (None for models without one). ``model.target_key`` names the batch
  entry the logits predict; a model with several objectives (BERT) declares
  ``model.objectives`` and returns a dict of logits (see jaxseq.train.objectives).
* ``model.apply(v, batch, method="decode_init")`` returns a decoding state and
  ``model.apply(v, state, tokens, method="decode_step")`` returns
  ``(logits (B, V), state)``; decode.py is written once against these two.

Each model registers a :class:`~jaxseq.models.registry.ModelSpec` next to
its code (its config sections, build function, defaults and capabilities);
``jaxseq.models.get(task, name)`` is how every other part finds it.
"""

from jaxseq.models.registry import ModelSpec, get, names, register, specs

__all__ = ["ModelSpec", "get", "names", "register", "specs"]
