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
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from jaxseq import decode, metrics, parallel, train
from jaxseq.config import Config, option
from jaxseq.data import translation as tr
from jaxseq.data.dates import DatesConfig, tokenize_date
from jaxseq.data.text import read_text
from jaxseq.data.vocab import Vocab
from jaxseq.errors import ConfigError, DataError
from jaxseq.manifest import array_fingerprint
from jaxseq.models.seq2seq import Seq2SeqRNNConfig, TranslationModelConfig, attention_maps, cross_attention
from jaxseq.optim import OptimConfig
from jaxseq.tasks import runner
from jaxseq.tasks.runner import Echo, Run, warn, warn_unknown
from jaxseq.transformer import TransformerOptions
from jaxseq.workdir import Workdir, WorkdirLike

@dataclasses.dataclass(frozen=True)
class TranslateEvalConfig(Config):
    """How the trained model is scored at the end of training (and, by default, by evaluate)."""

    beam: int = option(4, "beam size of the final test evaluation (greedy is always reported too)", minimum=1)
    alpha: float = option(0.6, "GNMT length penalty of beam search: score = log P / ((5 + |Y|) / 6)^alpha "
                          "(0: raw log-probability)", minimum=0.0, flag="--length-penalty", aliases=("--alpha",))
    max_len_a: float = option(0.0, "longest output a x S + b tokens (fairseq's --max-len-a/b), S the batch's "
                              "padded source width; capped at the model's positions", minimum=0.0)
    max_len_b: int | None = option(None, "b of --max-len-a (default: the run's --max-len)", minimum=1)
    examples: int = option(4, "example translations to print at the end", minimum=0)


SRC, TGT = "src_vocab.json", "tgt_vocab.json"


def _data_fingerprint(data: tr.TranslationData) -> str:
    parts = [data.encoded(name) for name in ("train", "valid")]
    return array_fingerprint(*[a for e in parts for a in (e.src_ids, e.src_len, e.tgt_ids, e.tgt_len)])


def _load_data(run: Run, vocabs: dict[str, Vocab] | None = None) -> tr.TranslationData:
    vocabs = vocabs or {}
    return tr.load_translation(run.data, seed=run.train.seed, options=run.dates, src_vocab=vocabs.get(SRC),
                               tgt_vocab=vocabs.get(TGT))


# -- decoding many sentences ------------------------------------------------------------------

def _source_only(batch: dict) -> dict:
    return {"src": np.asarray(batch["src"]), "src_len": np.asarray(batch["src_len"])}


def output_limit(model, src_width: int, max_len: int, max_len_a: float = 0.0) -> int:
    """The longest output of a batch: ``floor(a S + b)`` (``S`` its padded source width, ``b = max_len``;
    fairseq's ``--max-len-a/b``, with ``S`` a bucket width so each width compiles once). With ``a > 0`` it
    is capped at the positions of a model with a decode cache (a ``b`` beyond them is refused by decode)."""
    limit = max(1, int(max_len_a * src_width + max_len))
    cap = getattr(model, "max_decode_len", None)
    return limit if cap is None or max_len_a == 0 else min(limit, max(cap, max_len))


def _decode(model, params, batch: dict, tgt_vocab: Vocab, *, max_len: int, beam: int = 1,
            alpha: float = 0.6, max_len_a: float = 0.0) -> decode.Decoded:
    """Greedy search (``beam == 1``) or beam search from ``<bos>`` to ``<eos>``, at most
    :func:`output_limit` tokens."""
    max_len = output_limit(model, np.shape(batch["src"])[1], max_len, max_len_a)
    if beam == 1:
        return decode.greedy_search(model, params, batch, bos=tgt_vocab.bos, eos=tgt_vocab.eos, max_len=max_len)
    return decode.beam_search(model, params, batch, bos=tgt_vocab.bos, eos=tgt_vocab.eos, max_len=max_len,
                              beam=beam, alpha=alpha)


def decode_batches(model, params, batches: Sequence[dict], count: int, tgt_vocab: Vocab, *, max_len: int,
                   beam: int = 1, alpha: float = 0.6, max_len_a: float = 0.0) -> list[str]:
    """Translations (space-joined words) of every pair in ``batches``, in split order (by ``index``)."""
    out = [""] * count
    for batch in batches:
        result = _decode(model, params, _source_only(batch), tgt_vocab, max_len=max_len, beam=beam, alpha=alpha,
                         max_len_a=max_len_a)
        rows = np.asarray(result.tokens).tolist()       # one read-back per batch
        for index, row in zip(np.asarray(batch["index"]).tolist(), rows):
            if index >= 0:
                out[index] = tr.decode_target(row, tgt_vocab)
    return out


def references(pairs: Sequence[tr.Pair]) -> list[str]:
    return [" ".join(p.tgt) for p in pairs]


def score_translations(hypotheses: Sequence[str], refs: Sequence[str], suffix: str = "") -> dict[str, float]:
    """``{"bleu": corpus BLEU (0-100), "chrf": corpus chrF (0-100), "exact": fraction exactly right}``
    (keys get ``suffix``)."""
    return {f"bleu{suffix}": metrics.corpus_bleu(hypotheses, refs),
            f"chrf{suffix}": metrics.corpus_chrf(hypotheses, refs),
            f"exact{suffix}": metrics.exact_match(hypotheses, refs)}


def _lengths(run: Run) -> dict:
    """The output-length settings of ``run`` as :func:`decode_batches` takes them."""
    b = run.data.max_len if run.eval.max_len_b is None else run.eval.max_len_b
    return {"max_len": b, "max_len_a": run.eval.max_len_a}


def _final_scores(model, params, data: tr.TranslationData, split: str, run: Run, mesh,
                  echo: Echo) -> dict:
    """BLEU and exact match of greedy and beam search on ``split`` (and its loss, for the test split)."""
    pairs, refs = data.split(split), references(data.split(split))
    batches = data.eval_batches(split)
    greedy = decode_batches(model, params, batches, len(pairs), data.tgt_vocab, **_lengths(run))
    scores = {"pairs": len(pairs), **score_translations(greedy, refs)}
    shown = f"{split} BLEU {scores['bleu']:.2f} greedy"
    if run.eval.beam > 1:
        beamed = decode_batches(model, params, batches, len(pairs), data.tgt_vocab, beam=run.eval.beam,
                                alpha=run.eval.alpha, **_lengths(run))
        scores.update(score_translations(beamed, refs, "_beam"), beam=run.eval.beam, alpha=run.eval.alpha)
        shown += f", {scores['bleu_beam']:.2f} beam {run.eval.beam}"
    shown += f"; chrF {scores['chrf']:.2f} greedy" + (f", {scores['chrf_beam']:.2f} beam" if run.eval.beam > 1
                                                       else "")
    if split == "test":
        shard = (jax.process_index(), jax.process_count())
        loss = train.evaluate(train.make_eval_step(model), params, data.eval_batches(split, shard=shard), mesh)
        scores.update(loss=loss["nll"], perplexity=loss["perplexity"])
    echo(f"{run.model.model}: {shown} (exact match {100 * scores['exact']:.1f}%) over {len(pairs)} pairs")
    for src, hyp, ref in list(zip(pairs, greedy, refs))[:run.eval.examples]:
        echo(f"  {' '.join(src.src)} => {hyp}   [reference: {ref}; BLEU-2 {metrics.bleu(hyp, ref, 2):.3f}]")
    return scores


# -- the task ---------------------------------------------------------------------------------

class TranslateTask(runner.Task):
    """Translation: sentence pairs, an encoder-decoder, BLEU of greedy and beam search."""

    name = "translate"
    sections = {"data": tr.TranslationDataConfig, "dates": DatesConfig, "model": TranslationModelConfig,
                "rnn": Seq2SeqRNNConfig, "transformer": TransformerOptions, "eval": TranslateEvalConfig,
                "optim": OptimConfig, "train": train.TrainConfig, "parallel": parallel.ParallelConfig}
    families = frozenset({"rnn", "transformer"})
    vocab_files = (SRC, TGT)
    default_steps = 300
    builtin_data = ()
    scores_params = True

    def user_data(self, given: Mapping[str, Any]) -> bool:
        """A data file or a registered dataset (fra-eng), not the generated dates task."""
        return given.get("data", "dates") != "dates"

    def load_data(self, run: Run, vocabs: dict[str, Vocab] | None) -> tr.TranslationData:
        return _load_data(run, vocabs)

    def vocabs(self, data: tr.TranslationData) -> dict[str, Vocab]:
        return {SRC: data.src_vocab, TGT: data.tgt_vocab}

    def check_vocabs(self, vocabs: dict[str, Vocab]) -> None:
        tr.check_vocab(vocabs[SRC], "source")
        tr.check_vocab(vocabs[TGT], "target")

    def describe_data(self, data: tr.TranslationData) -> str:
        return data.summary()

    def data_fingerprint(self, data: tr.TranslationData) -> str:
        return _data_fingerprint(data)

    def check_data(self, run: Run, data: tr.TranslationData) -> None:
        if run.data.batch_tokens is not None:     # the budget on every device, before anything is written
            tr.token_rows(run.data.batch_tokens, data.widths, _devices(run))
        tie = run.model.tie_embeddings
        if tie != "none" and not run.spec.decode_cache:
            raise ConfigError(f"--tie-embeddings {tie} is for the transformer model (the RNN decoders' output "
                              f"layer reads the hidden state, not an embedding); drop it for --model "
                              f"{run.model.model}")
        if tie == "all" and data.src_vocab.fingerprint() != data.tgt_vocab.fingerprint():
            raise ConfigError(f"--tie-embeddings all shares one embedding table between the languages, but their "
                              f"vocabularies differ (source {len(data.src_vocab)} / target {len(data.tgt_vocab)} "
                              "tokens); give them one with --joint-vocab or use --tie-embeddings output")

    def example_batch(self, run: Run) -> dict[str, np.ndarray]:
        widths = tr.bucket_widths(run.data.max_len, run.data.buckets)
        b, w = run.data.batch_size, widths[0]
        if run.data.batch_tokens is not None:     # the widest bucket's shape
            w = widths[-1]
            b = tr.token_rows(run.data.batch_tokens, widths, _devices(run))[w]
        return {"src": np.zeros((b, w), np.int32), "src_len": np.ones((b,), np.int32),
                "tgt_in": np.zeros((b, w), np.int32), "tgt_out": np.zeros((b, w), np.int32),
                "weights": np.ones((b, w), np.float32)}

    def train_batches(self, run: Run, data: tr.TranslationData, shard: tuple[int, int] | None = None):
        return data.train_batches(seed=run.train.seed, shard=shard or (0, 1), devices=_devices(run))

    def valid_batches(self, run: Run, data: tr.TranslationData, shard: tuple[int, int] | None = None):
        return data.eval_batches("valid", shard=shard or (0, 1)) or None

    def describe_steps(self, run: Run, batches, total_steps: int) -> str:
        if isinstance(batches, tr.TokenBatches):
            shapes = ", ".join(f"{rows}x{w}" for rows, w in batches.shapes)
            return (f"{total_steps} steps of at most {run.data.batch_tokens} tokens ({batches.batches_per_epoch} "
                    f"per epoch; pairs x width {shapes}; non-padding {batches.nonpad_fraction:.1%} of the "
                    "batch tokens)")
        return f"{total_steps} steps of {run.data.batch_size} pairs ({batches.batches_per_epoch} per epoch)"

    def extra_eval(self, run: Run, data: tr.TranslationData, model):
        if not data.valid:
            return None
        valid, refs = data.eval_batches("valid"), references(data.valid)

        def bleu(params) -> dict:
            hyps = decode_batches(model, params, valid, len(data.valid), data.tgt_vocab, **_lengths(run))
            return score_translations(hyps, refs)
        return bleu

    def report(self, run: Run, data: tr.TranslationData, model, params, results: dict, mesh, options: dict,
               echo: Echo) -> None:
        split = "test" if data.test else "valid"
        if not data.split(split):
            return
        scores = _final_scores(model, params, data, split, run, mesh, echo)
        if split == "test":
            results["test"] = scores
        else:                                 # no test split: the final scores go with the validation ones
            results["valid"] = dict(results["valid"] or {}, **scores)


TASK = TranslateTask()


def _devices(run: Run) -> int:
    """The devices a global batch is split over (``--devices``, default all)."""
    return run.parallel.devices or jax.device_count()


def resolve(given: Mapping[str, Any] | None = None, **flags: Any) -> Run:
    """A translation run from flags by field name (``resolve(model="transformer", d_model=128)``)."""
    return TASK.resolve({**(given or {}), **flags})


def build_translation_model(model: str, src_vocab_size: int, tgt_vocab_size: int, **flags: Any):
    """The Linen module of translation model ``model`` (a registry name) with the given flags."""
    run = TASK.resolve({"model": model, **flags})
    return run.spec.build(run, (src_vocab_size, tgt_vocab_size))


def train_translate(run: Run, workdir: WorkdirLike, *, resume: bool = False, given: Mapping[str, Any] | None = None,
                    fallback: bool = False, allow_data_change: bool = False, echo: Echo = runner.echo_stdout) -> dict:
    """Train the translation model of ``run`` into ``workdir``; returns the results."""
    workdir = Workdir.of(workdir)
    return runner.train(TASK, run, workdir, resume=resume, given=given, fallback=fallback,
                        allow_data_change=allow_data_change, echo=echo)


# -- using a trained run ------------------------------------------------------------------------

def evaluate_translate(workdir: WorkdirLike, data: str | None = None, *, beam: int | None = None,
                       alpha: float | None = None, max_len_a: float | None = None, max_len_b: int | None = None,
                       checkpoint: str | None = None, split: str = "valid", allow_data_change: bool = False) -> dict:
    """Loss, corpus BLEU, chrF and exact match of the run's model on ``data`` (TSV pairs) or its ``split``
    (``valid`` or ``test``: the run's own held-out pairs).

    Decoding is greedy unless ``beam`` > 1 (then beam search with length
    penalty ``alpha``, default the run's ``--length-penalty``); outputs are at
    most ``max_len_a * S + max_len_b`` tokens (defaults: the run's).
    ``checkpoint``: latest (default), best, averaged or a step number.
    """
    workdir = Workdir.of(workdir)
    beam = 1 if beam is None else beam
    run, vocabs = runner.load_run(workdir, TASK)
    src_vocab, tgt_vocab = vocabs[SRC], vocabs[TGT]
    alpha = run.eval.alpha if alpha is None else alpha
    lengths = _lengths(run)
    lengths = {"max_len": lengths["max_len"] if max_len_b is None else max_len_b,
               "max_len_a": lengths["max_len_a"] if max_len_a is None else max_len_a}
    decode.check_decode_args(lengths["max_len"], beam, alpha)
    if lengths["max_len_a"] < 0:
        raise ConfigError(f"--max-len-a must be >= 0, got {lengths['max_len_a']}")
    fingerprint = None
    if data is None:
        loaded_data = _load_data(run, vocabs)
        if split not in ("valid", "test"):
            raise ConfigError(f"--split must be valid or test, got {split!r}")
        name = {"valid": "validation", "test": "test"}[split]
        pairs, source = loaded_data.split(split), f"{run.data.data} ({name} split)"
        if not pairs:
            raise DataError(f"{workdir}: the run has no {name} split (--{split}-fraction 0); give --data PAIRS.tsv")
        fingerprint = None if allow_data_change else _data_fingerprint(loaded_data)
    else:
        raw, source = tr.pair_bytes(data, run.dates)
        skipped, cut = [], []
        pairs = list(tr.iter_pairs(raw, source, preprocess=run.data.preprocess, on_bad_line=run.data.on_bad_line,
                                   skipped=skipped, first_two=cut))
        if skipped:
            warn(f"{source}: {tr.summarize_skipped(skipped)}")
        if cut:
            warn(tr.first_two_warning(cut, source))
        warn_unknown(source, src_vocab.unknown(t for p in pairs for t in p.src), "the source vocabulary")
    loaded = runner.load(workdir, TASK, data_fingerprint=fingerprint, checkpoint=checkpoint)
    model, params = loaded.model, loaded.params
    encoded = tr.encode_pairs(pairs, src_vocab, tgt_vocab, run.data.max_len)
    widths = tr.bucket_widths(run.data.max_len, run.data.buckets)
    batches = tr.eval_batches(encoded, batch_size=run.data.batch_size, widths=widths)
    loss = train.evaluate(train.make_eval_step(model), params, batches, parallel.make_mesh(1))
    hyps = decode_batches(model, params, batches, len(pairs), tgt_vocab, beam=beam, alpha=alpha, **lengths)
    return {"data": source, "pairs": len(pairs), "loss": loss["nll"], "perplexity": loss["perplexity"],
            "tokens": loss["tokens"], "beam": beam, "alpha": alpha, "step": loaded.step,
            "checkpoint": checkpoint or "latest", **score_translations(hyps, references(pairs))}


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


def _encode_sentences(run: Run, src_vocab: Vocab, items: Sequence[tuple[str, str]]) -> list[tr.SourceEncoding]:
    """Each ``(where, sentence)`` normalised and tokenised as the run's training data was."""
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
    return encodings


def _translate(loaded: runner.Loaded, encodings: list[tr.SourceEncoding], *, beam: int, alpha: float,
               max_len: int, max_len_a: float = 0.0, progress=None) -> tuple[list[str], list[int]]:
    """The translations of ``encodings`` (in their order) and the first one's output token ids.

    Sentences are decoded in batches of ``--batch-size`` sorted by length (so
    little padding and few compiled widths); ``progress(n)`` is told of each
    batch's ``n`` sentences.
    """
    run, src_vocab, tgt_vocab = loaded.run, loaded.vocabs[SRC], loaded.vocabs[TGT]
    widths = tr.bucket_widths(run.data.max_len, run.data.buckets)
    out: list[str] = [""] * len(encodings)
    first_tokens: list[int] = []
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
    for start in range(0, len(order), run.data.batch_size):
        chunk = order[start:start + run.data.batch_size]
        batch = tr.source_batch([encodings[i] for i in chunk], pad=src_vocab.pad, widths=widths)
        result = _decode(loaded.model, loaded.params, batch, tgt_vocab, max_len=max_len, beam=beam, alpha=alpha,
                         max_len_a=max_len_a)
        rows = np.asarray(result.tokens).tolist()
        lengths = np.asarray(result.lengths).tolist()
        for i, row, length in zip(chunk, rows, lengths):
            out[i] = tr.decode_target(row, tgt_vocab)
            if i == 0:
                first_tokens = row[:length]
        if progress is not None:
            progress(len(chunk))
    return out, first_tokens


def translate_loaded(loaded: runner.Loaded, sentences: Sequence[str], *, beam: int = 1, alpha: float = 0.6,
                     max_len: int | None = None) -> list[str]:
    """One translation per sentence with a loaded run (see :func:`translate_texts`)."""
    max_len = loaded.run.data.max_len if max_len is None else max_len
    decode.check_decode_args(max_len, beam, alpha)
    items = _read_sentences(sentences, None)
    encodings = _encode_sentences(loaded.run, loaded.vocabs[SRC], items)
    return _translate(loaded, encodings, beam=beam, alpha=alpha, max_len=max_len)[0]


def translate_texts(workdir: WorkdirLike, texts: Sequence[str], *, input_file: str | os.PathLike | None = None,
                    beam: int = 1, alpha: float = 0.6, max_len: int | None = None, max_len_a: float = 0.0,
                    checkpoint: str | None = None, show_attention: str | os.PathLike | None = None) -> list[str]:
    """One translation per sentence (words unknown to the source vocabulary become ``<unk>``, with a warning).

    Sentences are normalised and tokenised as the run's training data was
    (for the ``dates`` task: cut into words, digits and punctuation, so
    ``"Friday, November 27, 2026"`` can be given as written).

    ``show_attention`` writes the attention heatmap of the first sentence
    (models with attention only).
    """
    workdir = Workdir.of(workdir)
    run, vocabs = runner.load_run(workdir, TASK)
    max_len = run.data.max_len if max_len is None else max_len
    decode.check_decode_args(max_len, beam, alpha)
    if show_attention is not None and not run.spec.cross_attention:
        raise ConfigError(f"--show-attention: the run in {workdir} is a {run.model.model} model, which has no "
                          "attention; use a model with encoder-decoder attention")
    encodings = _encode_sentences(run, vocabs[SRC], _read_sentences(texts, input_file))
    loaded = runner.load(workdir, TASK, checkpoint=checkpoint)
    out, first_tokens = _translate(loaded, encodings, beam=beam, alpha=alpha, max_len=max_len, max_len_a=max_len_a)
    if show_attention is not None:
        _attention_plot(run, loaded.model, loaded.params, encodings[0], first_tokens, vocabs[SRC], vocabs[TGT],
                        Path(show_attention))
    return out


def file_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a text file as written (the last line's newline ends it; ``\\r\\n`` accepted)."""
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def translate_file(workdir: WorkdirLike, path: str | os.PathLike, out: str | os.PathLike | None = None, *,
                   beam: int = 1, alpha: float = 0.6, max_len: int | None = None, max_len_a: float = 0.0,
                   checkpoint: str | None = None, progress: bool = True) -> list[str]:
    """Translate every line of ``path`` into the same line of ``out`` (or return them when ``out`` is None).

    Line for line: an empty (or blank) line gives an empty line, so nothing
    shifts. Sentences are decoded in length-sorted batches of the run's
    ``--batch-size``, with a progress bar on stderr.
    """
    from tqdm.auto import tqdm

    workdir = Workdir.of(workdir)
    run, vocabs = runner.load_run(workdir, TASK)
    max_len = run.data.max_len if max_len is None else max_len
    decode.check_decode_args(max_len, beam, alpha)
    lines = file_lines(path)
    items = [(i, (f"{path}:{i + 1}", line)) for i, line in enumerate(lines) if line.strip()]
    encodings = _encode_sentences(run, vocabs[SRC], [item for _, item in items])
    loaded = runner.load(workdir, TASK, checkpoint=checkpoint)
    with tqdm(total=len(encodings), disable=not progress, file=sys.stderr, unit="sentence", leave=False) as bar:
        translated, _ = _translate(loaded, encodings, beam=beam, alpha=alpha, max_len=max_len,
                                   max_len_a=max_len_a, progress=bar.update)
    result = [""] * len(lines)
    for (i, _), text in zip(items, translated):
        result[i] = text
    if out is not None:
        Path(out).write_text("".join(line + "\n" for line in result), encoding="utf-8")
    return result


def _is_dates(run: Run) -> bool:
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


def _attention_plot(run: Run, model, params, source: tr.SourceEncoding, output: list[int], src_vocab: Vocab,
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
    if run.spec.layered_attention:
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
