"""Language-model jobs: train (n-gram or neural), evaluate, generate."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import jax
import numpy as np

from jaxseq import config as config_lib
from jaxseq import decode, parallel, train
from jaxseq.checkpoint import tree_signature
from jaxseq.data import text as text_lib
from jaxseq.data.lm import LMBatches, LMDataConfig, eval_batches, load_corpus, tokens_from_config
from jaxseq.data.vocab import Vocab
from jaxseq.errors import ConfigError, DataError
from jaxseq.models.lm import LMModelConfig, build_lm
from jaxseq.ngram import NGramConfig, NGramLM
from jaxseq.optim import OptimConfig, make_optimizer
from jaxseq.tasks.common import (Echo, RunConfig, array_fingerprint, compute_dtype, count_params, echo_stdout,
                                 fit_in_workdir, load_vocab, manifest, restore_params, stopped_early, warn_unknown,
                                 write_results)
from jaxseq.workdir import Workdir

DEFAULT_STEPS = 2000
SECTIONS = {"data": LMDataConfig, "model": LMModelConfig, "ngram": NGramConfig,
            "optim": OptimConfig, "train": train.TrainConfig, "parallel": parallel.ParallelConfig}


@dataclasses.dataclass
class LMRun(RunConfig):
    """The configs of a language-model run."""

    TASK: ClassVar[str] = "lm"
    SECTIONS: ClassVar[dict[str, type]] = SECTIONS

    data: LMDataConfig
    model: LMModelConfig
    ngram: NGramConfig
    optim: OptimConfig
    train: train.TrainConfig
    parallel: parallel.ParallelConfig = dataclasses.field(default_factory=parallel.ParallelConfig)

    def validate(self) -> None:
        self.data.validate()
        self.model.validate()
        if self.model.model == "ngram":
            self.ngram.validate()
        else:
            self.optim.validate()
            self.train.validate()
            self.parallel.validate()


def _data_fingerprint(corpus) -> str:
    return array_fingerprint(corpus.train, corpus.valid)


def train_lm(run: LMRun, workdir: Workdir, *, resume: bool = False, given: dict | None = None,
             baseline: bool = True, fallback: bool = False, sample_length: int = 200,
             echo: Echo = echo_stdout) -> dict:
    """Train the language model of ``run`` into ``workdir``; returns the results."""
    run.validate()
    parallel.initialize(run.parallel)     # before anything touches a device
    config = workdir.plan(run.to_dict(), resume=resume, given=given)
    run = LMRun.from_dict(config, str(workdir.config_path))
    vocab = load_vocab(workdir) if resume else None
    corpus = load_corpus(run.data, vocab=vocab)        # refuses bad data before anything is written
    fingerprint = _data_fingerprint(corpus)
    echo(f"data: {corpus.source}, {len(corpus.train):,} training and {len(corpus.valid):,} validation "
         f"{run.data.tokens} tokens, vocabulary {len(corpus.vocab)}")
    if run.model.model != "ngram":
        _check_batches(run, corpus)
    workdir.save_config(config)
    if not resume and jax.process_index() == 0:
        corpus.vocab.save(workdir.file("vocab.json"))
    if run.model.model == "ngram":
        return _train_ngram(run, corpus, workdir, echo)
    return _train_neural(run, corpus, fingerprint, workdir, resume=resume, baseline=baseline, fallback=fallback,
                         sample_length=sample_length, echo=echo)


def _check_batches(run: LMRun, corpus) -> None:
    """Refuse data too short for one training batch or an evaluation, before compiling."""
    LMBatches(corpus.train, seq_len=run.data.seq_len, batch_size=run.data.batch_size)
    if len(corpus.valid) < 2:
        raise DataError(f"{corpus.source}: the validation split has {len(corpus.valid)} token(s); "
                        "raise --valid-fraction or give more text")


def _train_ngram(run: LMRun, corpus, workdir: Workdir, echo: Echo) -> dict:
    t0 = time.perf_counter()
    model = NGramLM.fit(corpus.train, len(corpus.vocab), run.ngram)
    fit_seconds = time.perf_counter() - t0
    valid = model.evaluate(corpus.valid)
    model.save(workdir.file("model.npz"))
    results = {"model": f"{run.ngram.order}-gram {run.ngram.smoothing}", "valid": valid,
               "train_seconds": fit_seconds, "train_tokens": int(corpus.train.size)}
    workdir.write_json("results.json", results)
    echo(f"{results['model']}: validation perplexity {valid['perplexity']:.3f} "
         f"({valid['nll']:.4f} nats/token over {valid['tokens']:,} tokens), fit in {fit_seconds:.2f}s")
    sample = model.sample(corpus.valid[:1], 120, np.random.default_rng(0))
    echo("sample: " + repr(text_lib.detokenize(corpus.vocab.decode(sample), run.data.tokens)))
    return results


def _trigram_baseline(corpus) -> dict:
    model = NGramLM.fit(corpus.train, len(corpus.vocab), NGramConfig(order=3, smoothing="kn"))
    return model.evaluate(corpus.valid)


def _train_neural(run: LMRun, corpus, fingerprint: str, workdir: Workdir, *, resume: bool,
                  baseline: bool, fallback: bool, sample_length: int, echo: Echo) -> dict:
    mesh = parallel.mesh_from_config(run.parallel)
    parallel.check_batch_size(run.data.batch_size, mesh)
    vocab_size = len(corpus.vocab)
    model = build_lm(run.model, vocab_size, dtype=compute_dtype(run.train), remat=run.train.remat,
                     seq_len=run.data.seq_len)
    batches = LMBatches(corpus.train, seq_len=run.data.seq_len, batch_size=run.data.batch_size,
                        sampling=run.data.sampling, seed=run.train.seed,
                        shard=(jax.process_index(), jax.process_count()))
    total_steps = run.train.total_steps(batches.batches_per_epoch, DEFAULT_STEPS)
    tx = make_optimizer(run.optim, total_steps)
    global_first = LMBatches(corpus.train, seq_len=run.data.seq_len, batch_size=run.data.batch_size,
                             sampling=run.data.sampling, seed=run.train.seed).batch(0, 0)
    sequential = run.data.sampling == "sequential"
    carry = model.initial_carry(run.data.batch_size) if sequential else None
    state = train.create_state(model, tx, global_first, run.train.seed, mesh, carry)
    valid = [parallel.local_rows(b) for b in
             eval_batches(corpus.valid, seq_len=run.data.seq_len, batch_size=run.data.batch_size)]
    eval_carry = (parallel.shard_tree_along_batch(model.initial_carry(run.data.batch_size), mesh)
                  if sequential else None)
    expected = manifest("lm", config_lib.to_dict(run.model), corpus.vocab.fingerprint(), state.params,
                        fingerprint)
    size = count_params(state.params)
    describe = lambda: (f"model: {run.model.model}, {size:,} parameters; {total_steps} steps of "
                        f"{run.data.batch_size} x {run.data.seq_len} tokens on {mesh.devices.size} device(s)")
    base = _trigram_baseline(corpus) if baseline else None
    result = fit_in_workdir(model, state, tx, batches, workdir=workdir, expected=expected, resume=resume,
                            fallback=fallback, total_steps=total_steps, train_config=run.train, optim=run.optim,
                            mesh=mesh, valid_batches=valid, eval_carry=eval_carry, describe=describe, echo=echo)
    step = int(jax.device_get(result.state.step))
    results = {"model": run.model.model, "step": step, "valid": result.valid, "train_seconds": result.seconds}
    if base is not None:
        results["trigram_kn_valid"] = base
    if stopped_early(result, results, echo):
        return results
    write_results(workdir, results, f"{run.model.model} language model")
    v = result.valid or {}
    line = f"{run.model.model}: validation perplexity {v.get('perplexity', float('nan')):.3f}"
    if base is not None:
        line += f" (trigram Kneser-Ney baseline: {base['perplexity']:.3f})"
    echo(line + f"; at step {step} after {result.seconds:.1f}s of training in this run")
    if sample_length > 0:
        prefix = corpus.valid[: min(10, len(corpus.valid))] if run.data.tokens == "char" else corpus.valid[:3]
        sample = decode.generate(model, result.state.params, prefix[None], sample_length,
                                 key=jax.random.PRNGKey(0), temperature=0.8)
        text = text_lib.detokenize(corpus.vocab.decode(np.concatenate([prefix, np.asarray(sample[0])])),
                                   run.data.tokens)
        echo("sample: " + repr(text))
    echo(f"work directory: {workdir}")
    return results


# -- using a trained run -------------------------------------------------------------------

def load_run(workdir: Workdir) -> tuple[LMRun, Vocab]:
    config = workdir.require("lm")
    return LMRun.from_dict(config, str(workdir.config_path)), load_vocab(workdir)


def _load_neural(run: LMRun, vocab: Vocab, workdir: Workdir) -> tuple[Any, Any]:
    model = build_lm(run.model, len(vocab), dtype=compute_dtype(run.train), seq_len=run.data.seq_len)
    tx = make_optimizer(run.optim, 1)
    b, t = run.data.batch_size, run.data.seq_len
    sample = {"inputs": np.zeros((b, t), np.int32), "targets": np.zeros((b, t), np.int32),
              "weights": np.ones((b, t), np.float32)}
    carry = model.initial_carry(b) if run.data.sampling == "sequential" else None
    abstract_params = jax.eval_shape(lambda: train.init_params(model, sample, 0))
    expected = {"task": "lm", "model": config_lib.to_dict(run.model), "vocab": vocab.fingerprint(),
                "params": tree_signature(abstract_params)}
    params, _ = restore_params(workdir, model, tx, sample, expected, carry)
    return model, params


def _encode_text(run: LMRun, vocab: Vocab, text: str, what: str) -> np.ndarray:
    tokens = tokens_from_config(run.data, text)
    warn_unknown(what, vocab.unknown(tokens))
    return vocab.encode(tokens)


def evaluate_lm(workdir: Workdir, data: str | None = None) -> dict:
    """Perplexity of the run's model on its validation split, or on the text file ``data``."""
    run, vocab = load_run(workdir)
    if data is None:
        ids = load_corpus(run.data, vocab=vocab).valid
        source = f"{run.data.data} (validation split)"
    else:
        ids = _encode_text(run, vocab, text_lib.read_text(data), data)
        source = data
    if len(ids) < 2:
        raise DataError(f"{source}: fewer than 2 tokens to score")
    if run.model.model == "ngram":
        result = NGramLM.load(workdir.file("model.npz")).evaluate(ids)
    else:
        model, params = _load_neural(run, vocab, workdir)
        mesh = parallel.make_mesh(1)
        batches = eval_batches(ids, seq_len=run.data.seq_len, batch_size=run.data.batch_size)
        carry = (parallel.shard_tree_along_batch(model.initial_carry(run.data.batch_size), mesh)
                 if run.data.sampling == "sequential" else None)
        result = train.evaluate(train.make_eval_step(model), params, batches, mesh, carry)
    return {"data": source, **result}


def generate_lm(workdir: Workdir, prefix: str, length: int, *, seed: int = 0, temperature: float = 1.0,
                top_k: int = 0) -> str:
    """``prefix`` followed by ``length`` sampled tokens, as text."""
    if length < 1:
        raise ConfigError(f"--length must be at least 1, got {length}")
    if temperature < 0:
        raise ConfigError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    run, vocab = load_run(workdir)
    ids = _encode_text(run, vocab, prefix, "prefix")
    if len(ids) == 0:
        raise DataError("--prefix is empty after preprocessing and tokenization; give some text")
    if run.model.model == "ngram":
        model = NGramLM.load(workdir.file("model.npz"))
        out = model.sample(ids, length, np.random.default_rng(seed), temperature=temperature or 1e-6)
    else:
        model, params = _load_neural(run, vocab, workdir)
        out = np.asarray(decode.generate(model, params, ids[None], length, key=jax.random.PRNGKey(seed),
                                         temperature=temperature, top_k=top_k))[0]
    return text_lib.detokenize(vocab.decode(np.concatenate([ids, out])), run.data.tokens)
