"""The analytic FLOP count of each model family (ModelSpec.flops) against XLA's cost analysis.

Both count the same train step, built as the runner builds it
(:func:`jaxseq.inspection.step_program`); for the Transformer LM and the
Bahdanau model the numbers are read from ``jaxseq inspect --what all``'s
report, which these tests thus also check. Where XLA's count differs by
construction, the test compensates explicitly:

* XLA counts every elementwise op (activations, softmax, layer norm, the loss,
  the optimizer update); the analytic count has matrix products only. So
  ``analytic <= XLA <= (1 + TOL) analytic`` on shapes where the products
  dominate (widths 128-256, 64-128 positions, SGD without clipping).
* XLA counts a ``while`` loop's body once whatever its trip count: the
  families that scan over time (GRU, the RNN encoder-decoders) are compiled
  inside :func:`jaxseq.flops.unrolled_scans` (every ``lax.scan`` unrolled;
  ``jaxseq inspect --unroll-scans``), and
  the test first shows that the looped program's count falls short by the
  steps it skipped. Unrolled, XLA also drops the products of the last
  backward step that only the initial state's (unused) gradient needs.
* A dense kernel computes causal attention's masked half, which the count
  (MaxText's convention) leaves out: ``3 x masked`` is added back.
* Under SPMD XLA counts one device's program: these run on one device.
"""

import jax
import pytest

from jaxseq import cli, flops
from jaxseq.inspection import step_program
from jaxseq.models import registry
from jaxseq.tasks import lm, mlm, translate

TOL = 0.10
COMMON = {"devices": 1, "optimizer": "sgd", "clip": 0.0}


def _program(task, flags, vocab_sizes):
    return step_program(task, task.resolve({**COMMON, **flags}, warn_unused=False), vocab_sizes)


def _xla_flops(program) -> float:
    return flops.xla_cost(program.lower().compile())["flops"]


def _agree(analytic: float, xla: float) -> None:
    assert analytic <= xla <= (1 + TOL) * analytic, xla / analytic


def _check(program, xla: float, skipped: float = 0.0) -> None:
    analytic = program.analytic()
    _agree(analytic.train + 3 * analytic.masked - skipped, xla)


def _inspect(capsys, *argv) -> tuple[str, dict[str, float]]:
    """``jaxseq inspect ... --what all`` on one device with SGD and no clipping -> (report, its counts)."""
    assert cli.main(["inspect", *argv, "--devices", "1", "--optimizer", "sgd", "--clip", "0", "--what", "all"]) == 0
    text = capsys.readouterr().out
    assert [line.strip("= ") for line in text.splitlines() if line.startswith("== ")] == [
        "parameters", "jaxpr of the train step", "optimized HLO", "cost", "memory"]
    counts = {}
    for label in ("flops", "train step", "causal mask"):
        line = next((line.strip() for line in text.splitlines() if line.strip().startswith(label + "  ")), None)
        if line is not None:
            counts[label] = float(line[len(label):].split()[0].replace(",", ""))
    return text, counts


def test_gru_lm_counts_every_time_step():
    flags = {"model": "gru", "hidden": 256, "embedding": 64, "batch_size": 16, "seq_len": 4}
    looped = _xla_flops(_program(lm.TASK, flags, (64,)))
    with flops.unrolled_scans():
        program = _program(lm.TASK, flags, (64,))
        unrolled = _xla_flops(program)
    products = 3 * flops.matmul(16, 256, 256)        # one step's recurrent products, 3 gates x 2 B H H
    # the initial state's gradient dH_0 = sum_g dA^h_g W_hg^T is never used (H_0 is no parameter):
    # unrolled, XLA drops those products of the last backward step
    _check(program, unrolled, skipped=products)
    # looped, the forward and the backward body are counted once each instead of 4 and (unrolled) 3 times
    assert unrolled - looped == pytest.approx((3 + 2) * products, rel=TOL)


@pytest.mark.parametrize("model", ["rnn", "lstm"])
def test_rnn_and_lstm_lm(model):
    """The GRU's siblings: one and four gates per step (unrolled, as the GRU above)."""
    flags = {"model": model, "hidden": 128, "embedding": 32, "batch_size": 16, "seq_len": 3}
    with flops.unrolled_scans():
        program = _program(lm.TASK, flags, (64,))
        gates = {"rnn": 1, "lstm": 4}[model]
        _check(program, _xla_flops(program), skipped=gates * flops.matmul(16, 128, 128))


def test_seq2seq_translation():
    """The RNN encoder-decoder without attention (the Bahdanau model is checked through inspect below)."""
    flags = {"model": "seq2seq", "embed": 32, "hidden": 128, "layers": 1, "batch_size": 16, "max_len": 3,
             "dropout": 0.0}
    with flops.unrolled_scans():
        program = _program(translate.TASK, flags, (64, 64))
        _check(program, _xla_flops(program), skipped=3 * flops.matmul(16, 128, 128))


@pytest.mark.parametrize("model", ["mingru", "minlstm"])
def test_minrnn_lm(model):
    program = _program(lm.TASK, {"model": model, "hidden": 128, "layers": 1, "mlp_ratio": 2, "expansion": 1.5,
                                 "batch_size": 32, "seq_len": 4}, (64,))
    _check(program, _xla_flops(program))


def test_transformer_lm_counts_causal_attention_at_half(capsys):
    text, counts = _inspect(capsys, "lm", "--model", "transformer", "--d-model", "128", "--heads", "4",
                            "--layers", "2", "--batch-size", "8", "--seq-len", "16")
    # 16 positions fit one causal block: the kernel computes the whole T x T square, half of it masked,
    # forward and backward (x3)
    layers, full = 2, 4 * 8 * 16 * 16 * 128
    assert counts["causal mask"] == 3 * layers * full / 2
    _agree(counts["train step"] + counts["causal mask"], counts["flops"])
    assert "stack/block_0/self_attention/query" in text and "memory analysis" in text


def test_bahdanau_translation_counts_every_decoder_step(capsys):
    text, counts = _inspect(capsys, "translate", "--model", "bahdanau", "--embed", "64", "--hidden", "128",
                            "--layers", "1", "--batch-size", "16", "--max-len", "3", "--dropout", "0",
                            "--unroll-scans")
    _agree(counts["train step"], counts["flops"])
    assert "decoder/step/attention" in text and "every lax.scan unrolled" in text


def test_transformer_translation():
    program = _program(translate.TASK, {"model": "transformer", "d_model": 128, "heads": 4, "ffn": 256,
                                        "layers": 1, "batch_size": 16, "max_len": 8, "dropout": 0.0}, (64, 64))
    _check(program, _xla_flops(program))


def test_every_neural_model_has_a_count_and_the_ngram_none():
    for task in ("lm", "translate", "mlm", "classify"):
        for spec in registry.specs(task):
            assert (spec.flops is None) == (not spec.neural), spec.name


def test_attention_blocks_skip_the_upper_blocks():
    full = 4.0 * 2 * 128 * 128 * 32
    counted, masked = flops.attention(2, 128, 128, 32, causal=True, block=64)
    assert counted == full / 2
    # blocks of 64 rows: block 0 scores 64 keys, block 1 all 128 -> 3/4 of the square computed
    assert counted + masked == pytest.approx(full * 3 / 4)
    assert flops.attention(2, 16, 16, 32, causal=True, block=64) == (full / 128, full / 128)


def test_xla_cost_is_a_dict():
    compiled = jax.jit(lambda a, b: a @ b).lower(jax.numpy.ones((4, 8)), jax.numpy.ones((8, 2))).compile()
    assert flops.xla_cost(compiled)["flops"] == flops.matmul(4, 8, 2)


def test_bert_pretraining_counts_full_attention_and_the_masked_slots_only():
    """BERT: non-causal attention over all T x T, the output layer on the P masked slots (and NSP)."""
    flags = {"d_model": 128, "heads": 2, "ffn": 256, "layers": 2, "batch_size": 8, "seq_len": 64, "dropout": 0.0}
    program = _program(mlm.TASK, flags, (256,))
    assert program.analytic().masked == 0.0
    _check(program, _xla_flops(program))
