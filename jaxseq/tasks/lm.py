"""The language-model task: its data, batches and report; train, evaluate and generate through the runner."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping

import jax
import numpy as np

from jaxseq import decode, parallel, train
from jaxseq.data import shards, text as text_lib
from jaxseq.data import tokens as tokens_lib
from jaxseq.data.lm import EvalBatches, LMBatches, LMCorpus, LMDataConfig, load_corpus
from jaxseq.data.vocab import Vocab
from jaxseq.errors import ConfigError, DataError
from jaxseq.manifest import array_fingerprint
from jaxseq.models.lm import LMModelConfig, RNNConfig
from jaxseq.models.minrnn import MinRNNConfig
from jaxseq.models.transformer_lm import TransformerLMConfig
from jaxseq.ngram import NGramConfig, NGramLM
from jaxseq.optim import OptimConfig
from jaxseq.tasks import runner
from jaxseq.tasks.runner import Echo, Run
from jaxseq.workdir import Workdir, WorkdirLike


class LMTask(runner.Task):
    """Language modelling: predict each next token of a text (n-gram or neural)."""

    name = "lm"
    sections = {"data": LMDataConfig, "model": LMModelConfig, "rnn": RNNConfig, "minrnn": MinRNNConfig,
                "transformer": TransformerLMConfig, "ngram": NGramConfig, "optim": OptimConfig,
                "train": train.TrainConfig, "parallel": parallel.ParallelConfig}
    families = frozenset({"rnn", "minrnn", "transformer", "ngram"})
    vocab_files = ("vocab.json",)
    default_steps = 2000
    builtin_data = ("builtin",)

    def resolve(self, given: Mapping[str, Any] | None = None, **kwargs: Any) -> Run:
        """As :meth:`runner.Task.resolve`; with ``--data`` a prepared shard directory, the run's tokenization
        settings are the index's (a flag given with another value is refused: the shards are already cut)."""
        run = super().resolve(given, **kwargs)
        if not shards.is_prepared(run.data.data):
            return run
        given = dict(given or {})
        settings = {k: v for k, v in shards.tokenization(run.data.data).items()
                    if k in {f.name for f in dataclasses.fields(LMDataConfig)}}
        for name, value in settings.items():
            if name in given and given[name] != value:
                raise ConfigError(f"--{name.replace('_', '-')} {given[name]} differs from the tokenization of the "
                                  f"prepared shards {run.data.data} ({name.replace('_', '-')} {value}); leave the "
                                  "flag out, or run `jaxseq prepare` again with it")
        return Run(run.task, {**run.sections, "data": dataclasses.replace(run.data, **settings)})

    def load_data(self, run: Run, vocabs: dict[str, Vocab] | None) -> LMCorpus:
        return load_corpus(run.data, vocab=None if vocabs is None else vocabs["vocab.json"])

    def vocabs(self, data: LMCorpus) -> dict[str, Vocab]:
        return {"vocab.json": data.vocab}

    def describe_data(self, data: LMCorpus) -> str:
        return (f"{data.source}, {len(data.train):,} training and {len(data.valid):,} validation tokens, "
                f"vocabulary {len(data.vocab)}")

    def check_data(self, run: Run, data: LMCorpus) -> None:
        if not run.spec.neural:
            if data.sharded:
                raise ConfigError(f"--model {run.model.model} counts every token in memory; train it on a text "
                                  f"file, not on the prepared shards {data.source}")
            return
        LMBatches(data.train, seq_len=run.data.seq_len, batch_size=run.data.batch_size)   # refuses too little
        if len(data.valid) < 2:
            raise DataError(f"{data.source}: the validation split has {len(data.valid)} token(s); "
                            "raise --valid-fraction or give more text")

    def data_fingerprint(self, data: LMCorpus) -> str:
        return data.fingerprint or array_fingerprint(data.train, data.valid)

    def example_batch(self, run: Run) -> dict[str, np.ndarray]:
        b, t = run.data.batch_size, run.data.seq_len
        return {"inputs": np.zeros((b, t), np.int32), "targets": np.zeros((b, t), np.int32),
                "weights": np.ones((b, t), np.float32)}

    def train_batches(self, run: Run, data: LMCorpus, shard: tuple[int, int] | None = None) -> LMBatches:
        return LMBatches(data.train, seq_len=run.data.seq_len, batch_size=run.data.batch_size,
                         sampling=run.data.sampling, seed=run.train.seed, shard=shard or (0, 1))

    def valid_batches(self, run: Run, data: LMCorpus, shard: tuple[int, int] | None = None) -> list:
        return EvalBatches(data.valid, seq_len=run.data.seq_len, batch_size=run.data.batch_size,
                           each=parallel.local_rows)

    def initial_carry(self, run: Run, model) -> Any:
        """Sequential partitioning carries a recurrent model's state from batch to batch."""
        if run.data.sampling == "sequential" and run.spec.carries_state:
            return model.initial_carry(run.data.batch_size)
        return None

    def eval_carry(self, run: Run, model) -> Any:
        """Held-out text is read as ``B`` continuous streams (:func:`eval_batches`): with
        ``--eval-context stream`` a recurrent model carries its state from window to window
        whatever its training sampling; with ``window`` it starts every window from zero."""
        if eval_context(run) == "stream":
            return model.initial_carry(run.data.batch_size)
        return None

    def describe_steps(self, run: Run, batches, total_steps: int) -> str:
        return f"{total_steps} steps of {run.data.batch_size} x {run.data.seq_len} tokens"

    def before_training(self, run: Run, data: LMCorpus, options: dict, echo: Echo) -> dict:
        if not options.get("baseline", True):
            return {}
        if data.sharded:
            echo("trigram baseline skipped: it counts every training token in memory (prepared shards)")
            return {}
        trigram = NGramLM.fit(data.train, len(data.vocab), NGramConfig(order=3, smoothing="kn"))
        return {"trigram_kn_valid": trigram.evaluate(data.valid)}

    def report(self, run: Run, data: LMCorpus, model, params, results: dict, mesh, options: dict,
               echo: Echo) -> None:
        v = results.get("valid") or {}
        line = f"{run.model.model}: validation perplexity {v.get('perplexity', float('nan')):.3f}"
        if "trigram_kn_valid" in results:
            line += f" (trigram Kneser-Ney baseline: {results['trigram_kn_valid']['perplexity']:.3f})"
        echo(line)
        length = options.get("sample_length", 200)
        if length > 0:
            prefix = np.asarray(data.valid[: min(10, len(data.valid))] if run.data.tokens != "word" else
                                data.valid[:3], np.int32)
            sample = decode.generate(model, params, prefix[None], length, key=jax.random.PRNGKey(0),
                                     temperature=0.8)
            echo("sample: " + repr(_detokenize(run, data.vocab, np.concatenate([prefix, np.asarray(sample[0])]))))

    def fit_counts(self, run: Run, data: LMCorpus, workdir: Workdir, echo: Echo) -> dict:
        t0 = time.perf_counter()
        model = run.spec.fit(run, data.train, len(data.vocab))
        fit_seconds = time.perf_counter() - t0
        valid = model.evaluate(data.valid)
        model.save(workdir.file("model.npz"))
        results = {"model": f"{run.ngram.order}-gram {run.ngram.smoothing}", "valid": valid,
                   "train_seconds": fit_seconds, "train_tokens": int(data.train.size)}
        workdir.write_json("results.json", results)
        echo(f"{results['model']}: validation perplexity {valid['perplexity']:.3f} "
             f"({valid['nll']:.4f} nats/token over {valid['tokens']:,} tokens), fit in {fit_seconds:.2f}s")
        sample = model.sample(data.valid[:1], 120, np.random.default_rng(0))
        echo("sample: " + repr(_detokenize(run, data.vocab, sample)))
        return results


TASK = LMTask()


def eval_context(run: Run) -> str:
    """The context a run's model is scored with: ``stream`` (a recurrent state carried through the
    held-out text, or a count model's n-1 tokens), or ``window`` (``--seq-len`` tokens, state reset)."""
    if not run.spec.neural:
        return "stream"
    return run.data.eval_context if run.spec.carries_state else "window"


def _detokenize(run: Run, vocab: Vocab, ids) -> str:
    return tokens_lib.decode(vocab, ids, run.data.tokens)


def encode_text(run: Run, vocab: Vocab, text: str, what: str) -> np.ndarray:
    text = text_lib.preprocess(text, run.data.preprocess)
    runner.warn_unknown(what, tokens_lib.unknown(vocab, text, run.data.tokens))
    return tokens_lib.encode(vocab, text, run.data.tokens)


# -- the jobs ----------------------------------------------------------------------------------

def resolve(given: Mapping[str, Any] | None = None, **flags: Any) -> Run:
    """A language-model run from flags by field name (``resolve(model="lstm", hidden=128)``)."""
    return TASK.resolve({**(given or {}), **flags})


def build_lm(model: str, vocab_size: int, **flags: Any):
    """The Linen module of language model ``model`` (a registry name) with the given flags.

    ``build_lm("gru", 65, hidden=128)``; unset flags take the model's
    registered defaults. Count-based models are fitted, not built.
    """
    run = TASK.resolve({"model": model, **flags})
    if not run.spec.neural:
        raise DataError(f"--model {model} is count-based; fit it with jaxseq.ngram.NGramLM")
    return run.spec.build(run, (vocab_size,))


def train_lm(run: Run, workdir: WorkdirLike, *, resume: bool = False, given: Mapping[str, Any] | None = None,
             baseline: bool = True, fallback: bool = False, allow_data_change: bool = False,
             sample_length: int = 200, echo: Echo = runner.echo_stdout) -> dict:
    """Train the language model of ``run`` into ``workdir``; returns the results."""
    workdir = Workdir.of(workdir)
    return runner.train(TASK, run, workdir, resume=resume, given=given, fallback=fallback,
                        allow_data_change=allow_data_change, echo=echo, baseline=baseline,
                        sample_length=sample_length)


def score_ids(loaded: runner.Loaded, ids: np.ndarray, context: str | None = None) -> dict:
    """``{"nll", "perplexity", "tokens", "eval_context"}`` of a loaded run's model on the token stream ``ids``.

    ``context`` (``stream`` or ``window``; default: the run's ``--eval-context``)
    says whether a recurrent model carries its state through ``ids``.
    """
    if len(ids) < 2:
        raise DataError("fewer than 2 tokens to score")
    run = loaded.run
    if context is not None:
        run = runner.Run(run.task, {**run.sections, "data": dataclasses.replace(run.data, eval_context=context)})
        run.data.validate()
    if loaded.params is None:
        return {**loaded.model.evaluate(ids), "eval_context": eval_context(run)}
    mesh = parallel.make_mesh(1)
    batches = EvalBatches(ids, seq_len=run.data.seq_len, batch_size=run.data.batch_size)
    carry = TASK.eval_carry(run, loaded.model)
    carry = None if carry is None else parallel.shard_tree_along_batch(carry, mesh)
    scores = train.evaluate(train.make_eval_step(loaded.model), loaded.params, batches, mesh, carry)
    return {**scores, "eval_context": eval_context(run)}


def evaluate_lm(workdir: WorkdirLike, data: str | None = None, *, allow_data_change: bool = False,
                context: str | None = None) -> dict:
    """Perplexity of the run's model on its validation split, or on the text file ``data``.

    Scoring the validation split reads the run's data again and refuses it
    if its contents changed since training (unless ``allow_data_change``).
    ``context``: ``stream`` or ``window`` (see :func:`score_ids`).
    """
    workdir = Workdir.of(workdir)
    run, vocabs = runner.load_run(workdir, TASK)
    vocab = vocabs["vocab.json"]
    fingerprint = None
    if data is None:
        corpus = load_corpus(run.data, vocab=vocab)
        ids, source = corpus.valid, f"{run.data.data} (validation split)"
        fingerprint = None if allow_data_change else TASK.data_fingerprint(corpus)
    else:
        ids, source = encode_text(run, vocab, text_lib.read_text(data), data), data
    if len(ids) < 2:
        raise DataError(f"{source}: fewer than 2 tokens to score")
    scores = score_ids(runner.load(workdir, TASK, data_fingerprint=fingerprint), ids, context)
    return {"data": source, **scores, **per_char(run, vocab, ids, scores)}


def per_char(run: Run, vocab: Vocab, ids: np.ndarray, scores: dict) -> dict:
    """``{"chars", "bits_per_char"}``: the scored text's total NLL in bits over its characters.

    Perplexity per token is not comparable across tokenizations (a subword
    token spells several characters); bits per character is:
    ``bpc = nll * tokens / (chars * ln 2)``, where ``nll`` is the mean NLL in
    nats of the ``tokens`` scored targets ``ids[1:]`` and ``chars`` is the
    number of characters they spell, ``len(text(ids)) - len(text(ids[:1]))``
    (the first token is context, never scored). With ``--tokens char`` this
    is ``nll / ln 2``; with ``word`` the text is the words joined by single spaces.
    """
    chars = len(tokens_lib.decode(vocab, ids, run.data.tokens)) - len(tokens_lib.decode(vocab, ids[:1],
                                                                                          run.data.tokens))
    if chars < 1:
        return {"chars": chars}
    return {"chars": chars, "bits_per_char": float(scores["nll"]) * int(scores["tokens"]) / (chars * np.log(2))}


def sample_text(loaded: runner.Loaded, prefix: str, length: int, *, seed: int = 0, temperature: float = 1.0,
                top_k: int = 0) -> str:
    """``prefix`` followed by ``length`` tokens sampled from a loaded run's model, as text."""
    decode.check_sample_args(length=length, temperature=temperature, top_k=top_k)
    vocab = loaded.vocabs["vocab.json"]
    ids = encode_text(loaded.run, vocab, prefix, "prefix")
    if len(ids) == 0:
        raise DataError("--prefix is empty after preprocessing and tokenization; give some text")
    if loaded.params is None:
        out = loaded.model.sample(ids, length, np.random.default_rng(seed), temperature=temperature,
                                  top_k=top_k)
    else:
        out = np.asarray(decode.generate(loaded.model, loaded.params, ids[None], length,
                                         key=jax.random.PRNGKey(seed), temperature=temperature, top_k=top_k))[0]
    return _detokenize(loaded.run, vocab, np.concatenate([ids, out]))


def generate_lm(workdir: WorkdirLike, prefix: str, length: int, *, seed: int = 0, temperature: float = 1.0,
                top_k: int = 0) -> str:
    """``prefix`` followed by ``length`` sampled tokens, as text."""
    workdir = Workdir.of(workdir)
    decode.check_sample_args(length=length, temperature=temperature, top_k=top_k)
    return sample_text(runner.load(workdir, TASK), prefix, length, seed=seed, temperature=temperature,
                       top_k=top_k)
