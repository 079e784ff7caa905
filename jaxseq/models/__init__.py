"""Models: Flax Linen modules that call the pure functions of jaxseq.

Every model keeps one contract (DESIGN.md):

* ``model.apply({"params": p}, batch, train=..., carry=..., rngs=...)`` returns
  ``(logits (B, T, V), carry)``; ``carry`` is the recurrent state after the
  batch (None for models without one). ``model.target_key`` names the batch
  entry the logits predict.
* ``model.apply(v, batch, method="decode_init")`` returns a decoding state and
  ``model.apply(v, state, tokens, method="decode_step")`` returns
  ``(logits (B, V), state)``; decode.py is written once against these two.
"""
