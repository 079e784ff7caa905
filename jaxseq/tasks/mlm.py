"""The masked-LM task (BERT pretraining): its data, batches, validation scores; evaluate and fill-mask.

Validation reports the masked LM's loss (``nll``, per predicted token, and
its ``perplexity``), ``mlm_accuracy`` (top-1 at the masked positions),
``nsp_loss`` and ``nsp_accuracy``, on held-out pairs whose next sentences
and masks are fixed by ``--valid-seed`` (:mod:`jaxseq.data.mlm`). Before
training the results record two baselines on the same held-out inputs: the
accuracy of always predicting the most frequent training token, and of
always answering the more frequent NSP label.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import losses, parallel, train
from jaxseq.config import Config, option
from jaxseq.data import corpora
from jaxseq.data import mlm as data_lib
from jaxseq.data.subword import SubwordVocab
from jaxseq.data.vocab import Vocab
from jaxseq.errors import DataError
from jaxseq.manifest import array_fingerprint
from jaxseq.models.bert import BertConfig
from jaxseq.optim import OptimConfig
from jaxseq.tasks import runner
from jaxseq.tasks.runner import Echo, Run
from jaxseq.workdir import Workdir, WorkdirLike

VOCAB = "vocab.json"


@dataclass(frozen=True)
class MLMModelConfig(Config):
    """Which encoder model, and its depth and dropout."""

    model: str = option("bert", "the model")
    layers: int = option(2, "Transformer encoder blocks", minimum=1)
    dropout: float = option(0.1, "dropout on embeddings, attention weights and sublayer outputs",
                            minimum=0.0, below=1.0)


def _fingerprint(data: data_lib.MLMCorpus) -> str:
    arrays = []
    for split in (data.train, data.valid):
        arrays += [np.concatenate(split.sentences).astype(np.int32),
                   np.array([len(s) for s in split.sentences], np.int32), split.pairs.astype(np.int32)]
    return array_fingerprint(*arrays)


class MLMTask(runner.Task):
    """BERT pretraining: masked LM and next-sentence prediction on sentence pairs."""

    name = "mlm"
    sections = {"data": data_lib.MLMDataConfig, "model": MLMModelConfig, "bert": BertConfig, "optim": OptimConfig,
                "train": train.TrainConfig, "parallel": parallel.ParallelConfig}
    families = frozenset({"bert"})
    vocab_files = (VOCAB,)
    default_steps = 2000
    builtin_data = ("builtin",)

    def load_data(self, run: Run, vocabs: dict[str, Vocab] | None) -> data_lib.MLMCorpus:
        return data_lib.load_mlm_corpus(run.data, vocab=None if vocabs is None else vocabs[VOCAB])

    def vocabs(self, data: data_lib.MLMCorpus) -> dict[str, Vocab]:
        return {VOCAB: data.vocab}

    def check_vocabs(self, vocabs: dict[str, Vocab]) -> None:
        data_lib.Specials(vocabs[VOCAB])

    def describe_data(self, data: data_lib.MLMCorpus) -> str:
        return (f"{data.source}, {len(data.train.pairs):,} training and {len(data.valid.pairs):,} validation "
                f"sentence pairs ({data.train.tokens:,} and {data.valid.tokens:,} tokens), vocabulary {len(data.vocab)}")

    def check_data(self, run: Run, data: data_lib.MLMCorpus) -> None:
        data_lib.MLMBatches(data.train, data.vocab, run.data)       # refuses too few pairs

    def data_fingerprint(self, data: data_lib.MLMCorpus) -> str:
        return _fingerprint(data)

    def example_batch(self, run: Run) -> dict[str, np.ndarray]:
        b, t, p = run.data.batch_size, run.data.seq_len, run.data.predictions
        return {"tokens": np.zeros((b, t), np.int32), "segments": np.zeros((b, t), np.int32),
                "valid_len": np.full((b,), t, np.int32), "mlm_positions": np.zeros((b, p), np.int32),
                "mlm_targets": np.zeros((b, p), np.int32), "mlm_weights": np.ones((b, p), np.float32),
                "nsp_labels": np.zeros((b,), np.int32), "nsp_weights": np.ones((b,), np.float32)}

    def train_batches(self, run: Run, data: data_lib.MLMCorpus, shard=None) -> data_lib.MLMBatches:
        return data_lib.MLMBatches(data.train, data.vocab, run.data, seed=run.train.seed, shard=shard or (0, 1))

    def valid_batches(self, run: Run, data: data_lib.MLMCorpus, shard=None) -> list:
        return [parallel.local_rows(b) for b in data_lib.eval_batches(data.valid, data.vocab, run.data)]

    def extra_eval(self, run: Run, data: data_lib.MLMCorpus, model):
        batches = data_lib.eval_batches(data.valid, data.vocab, run.data)
        score = make_score_fn(model)

        def scores(params) -> dict:
            out = mlm_scores(score, params, batches)
            return {k: out[k] for k in ("mlm_accuracy", "nsp_loss", "nsp_accuracy") if k in out}
        return scores

    def describe_steps(self, run: Run, batches, total_steps: int) -> str:
        return (f"{total_steps} steps of {run.data.batch_size} pairs x {run.data.seq_len} positions "
                f"({batches.batches_per_epoch} per epoch)")

    def before_training(self, run: Run, data: data_lib.MLMCorpus, options: dict, echo: Echo) -> dict:
        return {"baseline": baselines(data, run.data)}

    def report(self, run: Run, data: data_lib.MLMCorpus, model, params, results: dict, mesh, options: dict,
               echo: Echo) -> None:
        v, base = results.get("valid") or {}, results.get("baseline", {})
        line = (f"{run.model.model}: validation MLM loss {v.get('nll', float('nan')):.4f}, MLM accuracy "
                f"{v.get('mlm_accuracy', float('nan')):.4f} (most frequent token: "
                f"{base.get('mlm_accuracy_most_frequent', float('nan')):.4f})")
        if run.data.nsp:
            line += (f", NSP accuracy {v.get('nsp_accuracy', float('nan')):.4f} (majority label: "
                     f"{base.get('nsp_accuracy_majority', float('nan')):.4f})")
        echo(line)


TASK = MLMTask()


def baselines(data: data_lib.MLMCorpus, config: data_lib.MLMDataConfig) -> dict:
    """Accuracy on the held-out inputs of always predicting the most frequent training token (at the
    masked positions) and of always answering the more frequent NSP label."""
    counts = collections.Counter(np.concatenate(data.train.sentences).tolist())
    top = counts.most_common(1)[0][0]
    batches = data_lib.eval_batches(data.valid, data.vocab, config)
    w = np.concatenate([b["mlm_weights"].ravel() for b in batches])
    t = np.concatenate([b["mlm_targets"].ravel() for b in batches])
    out = {"mlm_accuracy_most_frequent": float((w * (t == top)).sum() / w.sum()),
           "most_frequent_token": data.vocab.idx_to_token[top]}
    if config.nsp:
        nw = np.concatenate([b["nsp_weights"] for b in batches])
        nl = np.concatenate([b["nsp_labels"] for b in batches])
        share = float((nw * nl).sum() / nw.sum())
        out["nsp_accuracy_majority"] = max(share, 1.0 - share)
    return out


def make_score_fn(model):
    """The jit-compiled ``(params, batch) -> sums``: masked-LM NLL, hits and count; NSP NLL, hits and count."""

    def score(params, batch):
        out, _ = model.apply({"params": params}, batch, train=False)
        sums = {}
        for name, target_key, weight_key in train.objectives(model):
            logits, targets, w = out[name], batch[target_key], batch[weight_key].astype(jnp.float32)
            nll, count = losses.weighted_cross_entropy(logits, targets, w)
            hits = (w * (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)).sum()
            sums.update({f"{name}_nll": nll, f"{name}_count": count, f"{name}_hits": hits})
        return sums
    return jax.jit(score)


def mlm_scores(score, params, batches: list[dict]) -> dict:
    """``{"nll", "perplexity", "mlm_accuracy", "tokens", "nsp_loss", "nsp_accuracy", "pairs"}`` over ``batches``
    (sums in float64 on the host)."""
    totals: dict[str, float] = collections.defaultdict(float)
    for sums in jax.device_get([score(params, b) for b in batches]):
        for k, v in sums.items():
            totals[k] += float(np.float64(v))
    n = max(totals["mlm_count"], 1.0)
    out = {"nll": totals["mlm_nll"] / n, "perplexity": float(np.exp(min(totals["mlm_nll"] / n, 700))),
           "mlm_accuracy": totals["mlm_hits"] / n, "tokens": int(totals["mlm_count"])}
    if "nsp_count" in totals:
        m = max(totals["nsp_count"], 1.0)
        out.update(nsp_loss=totals["nsp_nll"] / m, nsp_accuracy=totals["nsp_hits"] / m,
                   pairs=int(totals["nsp_count"]))
    return out


# -- the jobs ----------------------------------------------------------------------------------

def resolve(given: Mapping[str, Any] | None = None, **flags: Any) -> Run:
    """A masked-LM run from flags by field name (``resolve(d_model=128, steps=500)``)."""
    return TASK.resolve({**(given or {}), **flags})


def evaluate_mlm(workdir: WorkdirLike, data: str | None = None, *, allow_data_change: bool = False) -> dict:
    """Masked-LM loss and accuracy and NSP accuracy of the run's model on its held-out pairs, or on the
    held-out pairs of the text file ``data`` (all of its paragraphs; masks fixed by the run's
    ``--valid-seed``)."""
    workdir = Workdir.of(workdir)
    run, vocabs = runner.load_run(workdir, TASK)
    vocab = vocabs[VOCAB]
    fingerprint = None
    if data is None:
        corpus = data_lib.load_mlm_corpus(run.data, vocab=vocab)
        split, source = corpus.valid, f"{run.data.data} (validation split)"
        fingerprint = None if allow_data_change else TASK.data_fingerprint(corpus)
    else:
        split, source = text_split(run, vocab, data), data
    loaded = runner.load(workdir, TASK, data_fingerprint=fingerprint)
    batches = data_lib.eval_batches(split, vocab, run.data)
    return {"data": source, "step": loaded.step, **mlm_scores(make_score_fn(loaded.model), loaded.params, batches)}


def text_split(run: Run, vocab: Vocab, path: str) -> data_lib.SentenceSplit:
    """Every paragraph of the text file ``path`` as one split (for evaluation); no pair is a DataError."""
    text, source = corpora.load_text(path)
    paragraphs = [[data_lib.sentence_tokens(run.data, s) for s in para]
                  for para in data_lib.split_sentences(text, run.data.sentences)]
    runner.warn_unknown(source, vocab.unknown(t for p in paragraphs for s in p for t in s))
    split = data_lib._split(paragraphs, vocab)
    if not len(split.pairs):
        raise DataError(f"{source}: no paragraph with two consecutive sentences, so no sentence pairs; give text "
                        "with several sentences per paragraph (paragraphs are split at blank lines)")
    return split


def encode_masked_text(run: Run, vocab: Vocab, text: str) -> tuple[np.ndarray, np.ndarray]:
    """``<cls> text <sep>`` with each ``<mask>`` of ``text`` as the mask id -> ``(ids (n,), mask positions)``.

    The text is split at the literal ``<mask>``; the pieces between go
    through the run's tokenization, so a typed ``<mask>`` is the mask id while
    the tokenizer alone never makes one. Subwords: a sentence was encoded in
    training as its first word, then `` " " + word`` for each next word
    (byte-level BPE/WordPiece carry the space on the following piece), so the
    words of the pieces are encoded the same way: the first word of the text
    without a space, every later word with one, except a word glued to the
    mask (``trav<mask>``, ``<mask>ler``) which continues it. "the <mask>
    traveller" is thus ``encode("the") + [<mask>] + encode(" traveller")``;
    the mask stands for one subword (a word-initial one carries its space,
    which :func:`fill_mask_loaded` strips when it shows the filler). A text
    without ``<mask>`` or longer than ``--seq-len`` is a one-line DataError.
    """
    pieces = text.split(data_lib.MASK)
    if len(pieces) < 2:
        raise DataError(f"no {data_lib.MASK} in {text!r}; write the token to fill as {data_lib.MASK}, e.g. "
                        f"\"the {data_lib.MASK} traveller\"")
    sp = data_lib.Specials(vocab)
    ids, positions = [sp.cls], []
    subword = isinstance(vocab, SubwordVocab)
    for i, piece in enumerate(pieces):
        tokens = data_lib.sentence_tokens(run.data, piece)
        if subword and tokens:
            glued = i > 0 and not piece[:1].isspace()           # "<mask>ler": the word continues the mask
            first = "" if (i == 0 and len(ids) == 1) or glued else " "
            ids.extend(vocab.encode_text(first + " ".join(tokens)).tolist())
        else:
            runner.warn_unknown(repr(text), vocab.unknown(tokens))
            ids.extend(data_lib.encode_text_tokens(vocab, tokens).tolist())
        if i < len(pieces) - 1:
            positions.append(len(ids))
            ids.append(sp.mask)
    ids.append(sp.sep)
    if len(ids) > run.data.seq_len:
        raise DataError(f"{text!r} is {len(ids)} tokens with <cls> and <sep>, longer than the model's --seq-len "
                        f"{run.data.seq_len}; shorten it")
    return np.asarray(ids, np.int32), np.asarray(positions, np.int32)


@dataclass
class Filled:
    """The ``top_k`` fillers of each mask of one text: ``choices[i]`` is ``[(token, probability), ...]``."""

    text: str
    choices: list[list[tuple[str, float]]]

    def best(self) -> str:
        """The text with each mask replaced by its most likely filler."""
        pieces = self.text.split(data_lib.MASK)
        out = pieces[0]
        for piece, choice in zip(pieces[1:], self.choices):
            out += choice[0][0] + piece
        return out


def fill_mask_loaded(loaded: runner.Loaded, texts: list[str], top_k: int = 5) -> list[Filled]:
    """The ``top_k`` fillers of every ``<mask>`` of each text, with their probabilities."""
    if top_k < 1:
        raise DataError(f"--top-k must be at least 1, got {top_k}")
    run, vocab = loaded.run, loaded.vocabs[VOCAB]
    sp = data_lib.Specials(vocab)
    ordinary = np.zeros(len(vocab), bool)
    ordinary[sp.ordinary] = True
    mlm_logits = jax.jit(lambda params, batch: loaded.model.apply({"params": params}, batch)[0]["mlm"])
    results = []
    for text in texts:
        ids, positions = encode_masked_text(run, vocab, text)
        t = len(ids)
        batch = {"tokens": ids[None], "segments": np.zeros((1, t), np.int32), "valid_len": np.array([t], np.int32),
                 "mlm_positions": positions[None]}
        logits = np.asarray(mlm_logits(loaded.params, batch)[0], np.float64)
        logits[:, ~ordinary] = -np.inf            # a filler is a real token, never <pad> <cls> <sep> <mask> <unk>
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        choices = []
        for row in probs:
            best = np.argsort(-row, kind="stable")[:top_k]
            choices.append([(_filler(vocab, i), float(row[i])) for i in best])
        results.append(Filled(text, choices))
    return results


def _filler(vocab: Vocab, index: int) -> str:
    """The text of a filler id: the token, or a subword's bytes decoded with its leading space stripped
    (the user's text already has the space before ``<mask>``)."""
    if isinstance(vocab, SubwordVocab):
        return vocab.decode_text([index]).lstrip(" ")
    return vocab.idx_to_token[index]


def fill_mask(workdir: WorkdirLike, texts: list[str], top_k: int = 5) -> list[Filled]:
    """:func:`fill_mask_loaded` on the newest checkpoint of ``workdir``."""
    if not texts:
        raise DataError(f"give a text with {data_lib.MASK}, e.g. jaxseq fill-mask --workdir W "
                        f"\"the {data_lib.MASK} traveller\"")
    return fill_mask_loaded(runner.load(Workdir.of(workdir), TASK), texts, top_k)
