"""Translation jobs: train an encoder-decoder into a work directory, evaluate it (BLEU), translate.

A run's work directory holds ``config.json``, ``src_vocab.json``,
``tgt_vocab.json``, ``metrics.jsonl`` (training loss; validation loss,
greedy BLEU and exact match), ``checkpoints/`` (whose manifest carries both
vocabulary fingerprints), ``results.json`` (validation, and test BLEU with
greedy and beam search) and ``curve.png``.

BLEU is sacrebleu's corpus BLEU on the space-joined tokens (see
:mod:`jaxseq.metrics`); references are the whole normalised target
sentences, even where ``--max-len`` cut them for training.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar, Sequence

import jax
import numpy as np

from jaxseq import config as config_lib
from jaxseq import decode, metrics, parallel, train
from jaxseq.checkpoint import tree_signature
from jaxseq.config import option
from jaxseq.data import translation as tr
from jaxseq.data.dates import DatesConfig, tokenize_date
from jaxseq.data.text import read_text
from jaxseq.data.vocab import Vocab
from jaxseq.errors import ConfigError, DataError
from jaxseq.models.seq2seq import (TransformerEncoderDecoder, TranslationModelConfig, attention_maps,
                                   build_translation_model, cross_attention, has_attention)
from jaxseq.optim import OptimConfig, make_optimizer
from jaxseq.tasks.common import (Echo, RunConfig, array_fingerprint, compute_dtype, count_params, echo_stdout,
                                 fit_in_workdir, load_vocab, manifest, restore_params, stopped_early, warn,
                                 warn_unknown, write_results)
from jaxseq.workdir import Workdir

DEFAULT_STEPS = 300


@dataclasses.dataclass(frozen=True)
class TranslateEvalConfig:
    """How the trained model is scored at the end of training."""

    beam: int = option(4, "beam size of the final test evaluation (greedy is always reported too)")
    alpha: float = option(0.6, "length normalisation of beam search: score = log P / ((5 + len) / 6)^alpha")
    examples: int = option(4, "example translations to print at the end")

    def validate(self) -> None:
        if self.beam < 1:
            raise ConfigError(f"--beam must be at least 1, got {self.beam}")
        if not self.alpha >= 0:
            raise ConfigError(f"--alpha must be >= 0, got {self.alpha}")
        if self.examples < 0:
            raise ConfigError(f"--examples must be >= 0, got {self.examples}")


SECTIONS = {"data": tr.TranslationDataConfig, "dates": DatesConfig, "model": TranslationModelConfig,
            "eval": TranslateEvalConfig, "optim": OptimConfig, "train": train.TrainConfig,
            "parallel": parallel.ParallelConfig}


@dataclasses.dataclass
class TranslateRun(RunConfig):
    """The configs of a translation run."""

    TASK: ClassVar[str] = "translate"
    SECTIONS: ClassVar[dict[str, type]] = SECTIONS

    data: tr.TranslationDataConfig = dataclasses.field(default_factory=tr.TranslationDataConfig)
    dates: DatesConfig = dataclasses.field(default_factory=DatesConfig)
    model: TranslationModelConfig = dataclasses.field(default_factory=TranslationModelConfig)
    eval: TranslateEvalConfig = dataclasses.field(default_factory=TranslateEvalConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: train.TrainConfig = dataclasses.field(default_factory=train.TrainConfig)
    parallel: parallel.ParallelConfig = dataclasses.field(default_factory=parallel.ParallelConfig)

    def validate(self) -> None:
        self.data.validate()
        if self.data.data == "dates":
            self.dates.validate()
        self.model.validate()
        self.eval.validate()
        self.optim.validate()
        self.train.validate()
        self.parallel.validate()


def _vocab_fingerprints(src: Vocab, tgt: Vocab) -> dict[str, str]:
    return {"src": src.fingerprint(), "tgt": tgt.fingerprint()}


def _data_fingerprint(data: tr.TranslationData) -> str:
    parts = [data.encoded(name) for name in ("train", "valid")]
    return array_fingerprint(*[a for e in parts for a in (e.src_ids, e.src_len, e.tgt_ids, e.tgt_len)])


def _load_data(run: TranslateRun, vocabs: tuple[Vocab, Vocab] | None = None) -> tr.TranslationData:
    src, tgt = vocabs if vocabs is not None else (None, None)
    return tr.load_translation(run.data, seed=run.train.seed, options=run.dates, src_vocab=src, tgt_vocab=tgt)


# -- decoding many sentences ------------------------------------------------------------------

def _source_only(batch: dict) -> dict:
    return {"src": np.asarray(batch["src"]), "src_len": np.asarray(batch["src_len"])}


def _decode(model, params, batch: dict, tgt_vocab: Vocab, *, max_len: int, beam: int = 1,
            alpha: float = 0.6) -> decode.Decoded:
    """Greedy search (``beam == 1``) or beam search from ``<bos>`` to ``<eos>``."""
    if beam == 1:
        return decode.greedy_search(model, params, batch, bos=tgt_vocab.bos, eos=tgt_vocab.eos, max_len=max_len)
    return decode.beam_search(model, params, batch, bos=tgt_vocab.bos, eos=tgt_vocab.eos, max_len=max_len,
                              beam=beam, alpha=alpha)


def decode_batches(model, params, batches: Sequence[dict], count: int, tgt_vocab: Vocab, *, max_len: int,
                   beam: int = 1, alpha: float = 0.6) -> list[str]:
    """Translations (space-joined words) of every pair in ``batches``, in split order (by ``index``)."""
    out = [""] * count
    for batch in batches:
        result = _decode(model, params, _source_only(batch), tgt_vocab, max_len=max_len, beam=beam, alpha=alpha)
        rows = np.asarray(result.tokens).tolist()       # one read-back per batch
        for index, row in zip(np.asarray(batch["index"]).tolist(), rows):
            if index >= 0:
                out[index] = tr.decode_target(row, tgt_vocab)
    return out


def references(pairs: Sequence[tr.Pair]) -> list[str]:
    return [" ".join(p.tgt) for p in pairs]


def score_translations(hypotheses: Sequence[str], refs: Sequence[str], suffix: str = "") -> dict[str, float]:
    """``{"bleu": corpus BLEU (0-100), "exact": fraction exactly right}`` (keys get ``suffix``)."""
    return {f"bleu{suffix}": metrics.corpus_bleu(hypotheses, refs),
            f"exact{suffix}": metrics.exact_match(hypotheses, refs)}


def _final_scores(model, params, data: tr.TranslationData, split: str, run: TranslateRun, mesh,
                  echo: Echo) -> dict:
    """BLEU and exact match of greedy and beam search on ``split`` (and its loss, for the test split)."""
    pairs, refs, max_len = data.split(split), references(data.split(split)), run.data.max_len
    batches = data.eval_batches(split)
    greedy = decode_batches(model, params, batches, len(pairs), data.tgt_vocab, max_len=max_len)
    scores = {"pairs": len(pairs), **score_translations(greedy, refs)}
    shown = f"{split} BLEU {scores['bleu']:.2f} greedy"
    if run.eval.beam > 1:
        beamed = decode_batches(model, params, batches, len(pairs), data.tgt_vocab, max_len=max_len,
                                beam=run.eval.beam, alpha=run.eval.alpha)
        scores.update(score_translations(beamed, refs, "_beam"), beam=run.eval.beam, alpha=run.eval.alpha)
        shown += f", {scores['bleu_beam']:.2f} beam {run.eval.beam}"
    if split == "test":
        shard = (jax.process_index(), jax.process_count())
        loss = train.evaluate(train.make_eval_step(model), params, data.eval_batches(split, shard=shard), mesh)
        scores.update(loss=loss["nll"], perplexity=loss["perplexity"])
    echo(f"{run.model.model}: {shown} (exact match {100 * scores['exact']:.1f}%) over {len(pairs)} pairs")
    for src, hyp, ref in list(zip(pairs, greedy, refs))[:run.eval.examples]:
        echo(f"  {' '.join(src.src)} => {hyp}   [reference: {ref}; BLEU-2 {metrics.bleu(hyp, ref, 2):.3f}]")
    return scores


# -- training ---------------------------------------------------------------------------------

def train_translate(run: TranslateRun, workdir: Workdir, *, resume: bool = False, given: dict | None = None,
                    fallback: bool = False, echo: Echo = echo_stdout) -> dict:
    """Train the translation model of ``run`` into ``workdir``; returns the results."""
    run.validate()
    parallel.initialize(run.parallel)     # before anything touches a device
    config = workdir.plan(run.to_dict(), resume=resume, given=given)
    run = TranslateRun.from_dict(config, str(workdir.config_path))
    vocabs = (load_vocab(workdir, "src_vocab.json"), load_vocab(workdir, "tgt_vocab.json")) if resume else None
    data = _load_data(run, vocabs)                    # refuses bad data before anything is written
    echo(f"data: {data.summary()}")
    workdir.save_config(config)
    if not resume and jax.process_index() == 0:
        data.src_vocab.save(workdir.file("src_vocab.json"))
        data.tgt_vocab.save(workdir.file("tgt_vocab.json"))

    mesh = parallel.mesh_from_config(run.parallel)
    parallel.check_batch_size(run.data.batch_size, mesh)
    model = build_translation_model(run.model, len(data.src_vocab), len(data.tgt_vocab),
                                    dtype=compute_dtype(run.train), remat=run.train.remat, max_len=run.data.max_len)
    shard = (jax.process_index(), jax.process_count())
    batches = data.train_batches(seed=run.train.seed, shard=shard)
    total_steps = run.train.total_steps(batches.batches_per_epoch, DEFAULT_STEPS)
    tx = make_optimizer(run.optim, total_steps)
    state = train.create_state(model, tx, data.train_batches(seed=run.train.seed).batch(0, 0), run.train.seed, mesh)
    expected = manifest("translate", config_lib.to_dict(run.model),
                        _vocab_fingerprints(data.src_vocab, data.tgt_vocab), state.params, _data_fingerprint(data))
    valid_global = data.eval_batches("valid")
    refs_valid = references(data.valid)
    max_len = run.data.max_len

    def extra_eval(params) -> dict:
        hyps = decode_batches(model, params, valid_global, len(data.valid), data.tgt_vocab, max_len=max_len)
        return score_translations(hyps, refs_valid)

    size = count_params(state.params)
    describe = lambda: (f"model: {run.model.model}, {size:,} parameters; {total_steps} steps of "
                        f"{run.data.batch_size} pairs ({batches.batches_per_epoch} per epoch) on "
                        f"{mesh.devices.size} device(s)")
    result = fit_in_workdir(model, state, tx, batches, workdir=workdir, expected=expected, resume=resume,
                            fallback=fallback, total_steps=total_steps, train_config=run.train, optim=run.optim,
                            mesh=mesh, valid_batches=data.eval_batches("valid", shard=shard) or None,
                            describe=describe, echo=echo, extra_eval=extra_eval if data.valid else None)
    step = int(jax.device_get(result.state.step))
    results = {"model": run.model.model, "step": step, "valid": result.valid, "train_seconds": result.seconds}
    if stopped_early(result, results, echo):
        return results

    split = "test" if data.test else "valid"
    if data.split(split):
        scores = _final_scores(model, result.state.params, data, split, run, mesh, echo)
        if split == "test":
            results["test"] = scores
        else:                                 # no test split: the final scores go with the validation ones
            results["valid"] = dict(results["valid"] or {}, **scores)
    echo(f"{run.model.model}: at step {step} after {result.seconds:.1f}s of training in this run")
    write_results(workdir, results, f"{run.model.model} translation")
    echo(f"work directory: {workdir}")
    return results


# -- using a trained run ------------------------------------------------------------------------

def load_run(workdir: Workdir) -> tuple[TranslateRun, Vocab, Vocab]:
    config = workdir.require("translate")
    run = TranslateRun.from_dict(config, str(workdir.config_path))
    return run, load_vocab(workdir, "src_vocab.json"), load_vocab(workdir, "tgt_vocab.json")


def load_model(workdir: Workdir) -> tuple[TranslateRun, Vocab, Vocab, Any, Any]:
    """``(run, src_vocab, tgt_vocab, model, params)`` of the latest checkpoint in ``workdir``."""
    run, src_vocab, tgt_vocab = load_run(workdir)
    return (run, src_vocab, tgt_vocab) + _restore_model(workdir, run, src_vocab, tgt_vocab)


def _restore_model(workdir: Workdir, run: TranslateRun, src_vocab: Vocab, tgt_vocab: Vocab) -> tuple[Any, Any]:
    tr.check_vocab(src_vocab, "source")
    tr.check_vocab(tgt_vocab, "target")
    model = build_translation_model(run.model, len(src_vocab), len(tgt_vocab), dtype=compute_dtype(run.train),
                                    max_len=run.data.max_len)
    tx = make_optimizer(run.optim, 1)
    b, w = run.data.batch_size, tr.bucket_widths(run.data.max_len, run.data.buckets)[0]
    sample = {"src": np.zeros((b, w), np.int32), "src_len": np.ones((b,), np.int32),
              "tgt_in": np.zeros((b, w), np.int32), "tgt_out": np.zeros((b, w), np.int32),
              "weights": np.ones((b, w), np.float32)}
    abstract_params = jax.eval_shape(lambda: train.init_params(model, sample, 0))
    expected = {"task": "translate", "model": config_lib.to_dict(run.model),
                "vocab": _vocab_fingerprints(src_vocab, tgt_vocab), "params": tree_signature(abstract_params)}
    params, _ = restore_params(workdir, model, tx, sample, expected)
    return model, params


def evaluate_translate(workdir: Workdir, data: str | None = None, *, beam: int | None = None,
                       alpha: float | None = None) -> dict:
    """Loss, corpus BLEU and exact match of the run's model on ``data`` (TSV pairs) or its validation split.

    Decoding is greedy unless ``beam`` > 1 (then beam search with ``alpha``,
    default the run's ``--alpha``).
    """
    beam = 1 if beam is None else beam
    run, src_vocab, tgt_vocab = load_run(workdir)
    alpha = run.eval.alpha if alpha is None else alpha
    decode.check_decode_args(run.data.max_len, beam, alpha)
    if data is None:
        pairs = _load_data(run, (src_vocab, tgt_vocab)).valid
        source = f"{run.data.data} (validation split)"
        if not pairs:
            raise DataError(f"{workdir}: the run has no validation split (--valid-fraction 0); give --data PAIRS.tsv")
    else:
        raw, source = tr.pair_bytes(data, run.dates)
        pairs = list(tr.iter_pairs(raw, source, preprocess=run.data.preprocess))
        warn_unknown(source, src_vocab.unknown(t for p in pairs for t in p.src), "the source vocabulary")
    model, params = _restore_model(workdir, run, src_vocab, tgt_vocab)
    encoded = tr.encode_pairs(pairs, src_vocab, tgt_vocab, run.data.max_len)
    widths = tr.bucket_widths(run.data.max_len, run.data.buckets)
    batches = tr.eval_batches(encoded, batch_size=run.data.batch_size, widths=widths)
    loss = train.evaluate(train.make_eval_step(model), params, batches, parallel.make_mesh(1))
    hyps = decode_batches(model, params, batches, len(pairs), tgt_vocab, max_len=run.data.max_len, beam=beam,
                          alpha=alpha)
    return {"data": source, "pairs": len(pairs), "loss": loss["nll"], "perplexity": loss["perplexity"],
            "tokens": loss["tokens"], "beam": beam, **score_translations(hyps, references(pairs))}


def _read_sentences(texts: Sequence[str], input_file: str | os.PathLike | None) -> list[tuple[str, str]]:
    """``(where, sentence)`` pairs from the arguments or a file (one sentence a line)."""
    if input_file is not None and texts:
        raise ConfigError("give sentences as arguments or with --input FILE, not both")
    if input_file is None:
        if not texts:
            raise ConfigError("nothing to translate: give sentences as arguments or --input FILE")
        items = [(f"sentence {i}", t) for i, t in enumerate(texts, start=1)]
    else:
        lines = read_text(input_file).split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        items = [(f"{input_file}:{i}", line.rstrip("\r")) for i, line in enumerate(lines, start=1)]
    for where, text in items:
        if not text.strip():
            raise DataError(f"{where}: empty sentence; give one sentence per line")
    return items


def translate_texts(workdir: Workdir, texts: Sequence[str], *, input_file: str | os.PathLike | None = None,
                    beam: int = 1, alpha: float = 0.6, max_len: int | None = None,
                    show_attention: str | os.PathLike | None = None) -> list[str]:
    """One translation per sentence (words unknown to the source vocabulary become ``<unk>``, with a warning).

    Sentences are normalised and tokenised as the run's training data was
    (for the ``dates`` task: cut into words, digits and punctuation, so
    ``"Friday, November 27, 2026"`` can be given as written).

    ``show_attention`` writes the attention heatmap of the first sentence
    (models with attention only).
    """
    run, src_vocab, tgt_vocab = load_run(workdir)
    max_len = run.data.max_len if max_len is None else max_len
    decode.check_decode_args(max_len, beam, alpha)
    if show_attention is not None and not has_attention(run.model):
        raise ConfigError(f"--show-attention: the run in {workdir} is a {run.model.model} model, which has no "
                          "attention; use a bahdanau or transformer run")
    items = _read_sentences(texts, input_file)
    encodings = []
    for where, text in items:
        if _is_dates(run):              # cut "November 27, 2026" as the task does: "november 2 7 , 2 0 2 6"
            text = " ".join(tokenize_date(text, run.dates.dates_numbers))
        enc = tr.encode_source(text, src_vocab, preprocess=run.data.preprocess, max_len=run.data.max_len)
        warn_unknown(where, enc.unknown, "the source vocabulary")
        if enc.truncated:
            warn(f"{where}: longer than the run's --max-len {run.data.max_len}; cut to its first "
                 f"{run.data.max_len} tokens")
        encodings.append(enc)
    model, params = _restore_model(workdir, run, src_vocab, tgt_vocab)
    widths = tr.bucket_widths(run.data.max_len, run.data.buckets)
    out: list[str] = []
    first_tokens = None
    for start in range(0, len(encodings), run.data.batch_size):
        chunk = encodings[start:start + run.data.batch_size]
        batch = tr.source_batch(chunk, pad=src_vocab.pad, widths=widths)
        result = _decode(model, params, batch, tgt_vocab, max_len=max_len, beam=beam, alpha=alpha)
        rows = np.asarray(result.tokens).tolist()
        lengths = np.asarray(result.lengths).tolist()
        if first_tokens is None:
            first_tokens = rows[0][:lengths[0]]
        out.extend(tr.decode_target(row, tgt_vocab) for row in rows)
    if show_attention is not None:
        _attention_plot(model, params, encodings[0], first_tokens, src_vocab, tgt_vocab, Path(show_attention))
    return out


def _is_dates(run: TranslateRun) -> bool:
    return run.data.data == "dates" and not Path(run.data.data).exists()


def _sown_attention(model, params, batch: dict) -> dict:
    _, state = model.apply({"params": params}, batch, train=False, mutable=["intermediates"])
    return state.get("intermediates", {})


def attention_weights(model, params, batch: dict) -> np.ndarray:
    """The encoder-decoder attention ``(B, T, S)`` of a teacher-forced pass over ``batch`` (float32).

    (The Transformer's: its last block's cross-attention averaged over heads.)
    """
    sown = _sown_attention(model, params, batch)
    if not sown:
        raise ConfigError("this model sows no attention weights")
    return np.asarray(cross_attention(model, sown), np.float32)


def _attention_plot(model, params, source: tr.SourceEncoding, output: list[int], src_vocab: Vocab,
                    tgt_vocab: Vocab, path: Path) -> None:
    """Heatmap of the decoder's attention while it wrote ``output`` (its own translation).

    A Transformer gets grids of every layer and head: cross-attention at
    ``path``, and the encoder's and decoder's self-attention beside it
    (``path.encoder.png``, ``path.decoder.png``).
    """
    tgt_in = np.array([[tgt_vocab.bos] + output[:-1]], np.int32)
    batch = {"src": source.ids[None].astype(np.int32), "src_len": np.array([len(source.ids)], np.int32),
             "tgt_in": tgt_in}
    from jaxseq import plots
    src_tokens, tgt_tokens = src_vocab.decode(source.ids), tgt_vocab.decode(output)
    title = "attention: " + " ".join(source.tokens)
    if isinstance(model, TransformerEncoderDecoder):
        maps = {k: np.asarray(v[:, 0], np.float32) for k, v in attention_maps(
            _sown_attention(model, params, batch)).items()}
        plots.attention_grid(maps["cross"], src_tokens, tgt_tokens, path, title="cross-" + title)
        plots.attention_grid(maps["encoder"], src_tokens, src_tokens, f"{path}.encoder.png",
                             title="encoder self-" + title)
        fed = tgt_vocab.decode(tgt_in[0])
        plots.attention_grid(maps["decoder"], fed, fed, f"{path}.decoder.png", title="decoder self-" + title)
        return
    weights = attention_weights(model, params, batch)[0]
    plots.attention_heatmap(weights, src_tokens, tgt_tokens, path, title=title)
