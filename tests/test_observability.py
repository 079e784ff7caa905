"""What a run tells about the hardware: MFU and FLOP rates, input stalls, profiler traces,
TensorBoard events, and `jaxseq inspect`.

One tiny GRU run is trained twice (with and without a profiler window) and
shared by the tests; `inspect` also reads it back (tests/test_flops.py
inspects a Transformer LM and the Bahdanau model from their flags).
"""

import glob
import gzip
import json
import shutil

import numpy as np
import pytest

import jaxseq
from jaxseq import cli
from jaxseq.metrics_log import MetricsLog

HIDDEN, STEPS, PEAK = 32, 6, 5e10
RUN = dict(model="gru", hidden=HIDDEN, seq_len=8, batch_size=8, steps=STEPS, log_every=2, eval_every=0,
           checkpoint_every=0, devices=1, baseline=False, sample_length=0, progress=False, peak_flops=PEAK)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("observed")
    corpus = root / "corpus.txt"
    corpus.write_text("the time machine, by h. g. wells: the time traveller was expounding a recondite "
                      "matter to us.\n" * 40, encoding="utf-8")
    plain = jaxseq.fit("lm", workdir=root / "plain", echo=None, data=str(corpus), **RUN)
    traced = jaxseq.fit("lm", workdir=root / "traced", echo=None, data=str(corpus), profile="2:5", **RUN)
    return {"plain": (root / "plain", plain), "traced": (root / "traced", traced)}


def _train_records(workdir):
    return [r for r in MetricsLog.read(workdir / "metrics.jsonl") if r["split"] == "train"]


def test_logs_carry_mfu_flops_and_input_stall(runs):
    workdir, _ = runs["plain"]
    records = _train_records(workdir)
    assert [r["step"] for r in records] == [2, 4, 6]
    vocab = len(json.loads((workdir / "vocab.json").read_text())["tokens"])
    # one-hot GRU: 3 recurrent products 2 H H and the output layer 2 H V per position, x3 for the backward pass
    per_token = 3 * (3 * 2 * HIDDEN * HIDDEN + 2 * HIDDEN * vocab)
    for r in records:
        assert r["flops_per_token"] == per_token
        # every position is a target token and there is one device: FLOP/s = FLOPs per token x tokens/s
        assert r["tflops_per_s"] * 1e12 == pytest.approx(per_token * r["tokens_per_s"], rel=1e-9)
        assert r["mfu"] == pytest.approx(r["tflops_per_s"] * 1e12 / PEAK, rel=1e-12)
        assert 0.0 <= r["data_wait_fraction"] <= 1.0


def test_profile_window_writes_an_annotated_trace_and_changes_nothing(runs):
    (plain, plain_results), (traced, traced_results) = runs["plain"], runs["traced"]
    assert not (plain / "profile").exists()
    assert glob.glob(str(traced / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    [perfetto] = glob.glob(str(traced / "profile" / "plugins" / "profile" / "*" / "perfetto_trace.json.gz"))
    events = json.load(gzip.open(perfetto))
    events = events["traceEvents"] if isinstance(events, dict) else events
    steps = sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train" and "args" in e)
    assert steps == [3, 4, 5]                     # --profile 2:5 traces updates 3 to 5, each annotated
    assert traced_results["valid"]["nll"] == plain_results["valid"]["nll"]
    assert [r["loss"] for r in _train_records(traced)] == [r["loss"] for r in _train_records(plain)]


def test_tensorboard_events_mirror_metrics_jsonl(runs, tmp_path):
    """Also after a resume: the points up to the restored step stay, those past it are purged."""
    pytest.importorskip("tensorboardX")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    shutil.copytree(runs["plain"][0], tmp_path / "run")
    workdir = tmp_path / "run"
    jaxseq.fit("lm", workdir=workdir, resume=True, echo=None, **{**RUN, "steps": STEPS + 2})
    assert [r["step"] for r in _train_records(workdir)] == [2, 4, 6, 8]
    events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    expected = {}
    for record in MetricsLog.read(workdir / "metrics.jsonl"):
        for key, value in record.items():
            if key not in ("step", "split"):
                expected.setdefault(f"{record['split']}/{key}", []).append((record["step"], value))
    assert {"train/mfu", "train/flops_per_token", "train/tflops_per_s", "train/data_wait_fraction",
            "valid/perplexity"} <= set(expected)
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        np.testing.assert_allclose([v for _, v in got], [v for _, v in points], rtol=1e-6, err_msg=tag)


@pytest.mark.parametrize("window", ["5:3", "abc", "2:2", "-1:4"])
def test_bad_profile_window_is_one_line(window, tmp_path, capsys):
    assert cli.main(["train", "lm", f"--profile={window}", "--workdir", tmp_path / "w"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("jaxseq: error: --profile") and "\n" not in err
    assert not (tmp_path / "w" / "config.json").exists()


# -- jaxseq inspect ------------------------------------------------------------------------

def _sections(text):
    return [line.strip("= ") for line in text.splitlines() if line.startswith("== ")]


ALL = ["parameters", "jaxpr of the train step", "optimized HLO", "cost", "memory"]


def test_inspect_a_gru_run(runs, tmp_path, capsys):
    workdir, _ = runs["plain"]
    out = tmp_path / "gru.txt"
    assert cli.main(["inspect", "--workdir", workdir, "--what", "all", "--out", out]) == 0
    text = out.read_text()
    assert _sections(text) == ALL
    vocab = len(json.loads((workdir / "vocab.json").read_text())["tokens"])
    h = HIDDEN
    # GRU: W_x* (V, H) and W_h* (H, H) and b_* per gate, b_hh; output layer (H, V) + V
    total = 3 * (vocab * h + h * h + h) + h + h * vocab + vocab
    assert f"total {total:,}".split() == next(line for line in text.splitlines() if line.startswith("total")).split()
    # the forward lax.scan and the hand-written backward scan (the custom_vjp, already differentiated),
    # each a while loop in the HLO
    assert text.count("scan[") == 2 and text.count(" while(") == 2
    assert "while loops        2" in text and "temporaries" in text and "XLA / analytic" in text
    assert "wrote all" in capsys.readouterr().out


def test_inspect_refuses_an_ngram_and_unknown_what(capsys, tmp_path):
    assert cli.main(["inspect", "lm", "--model", "ngram"]) == 1
    assert "count-based" in capsys.readouterr().err
    assert cli.main(["inspect", "lm", "--what", "everything"]) == 1
    assert capsys.readouterr().err.count("\n") == 1
