"""The classification task: a BERT encoder with a head on ``<cls>``, fine-tuned from a masked-LM run or trained
from scratch; evaluate (accuracy, macro-F1) and classify.

``--init-from W`` (a ``jaxseq train mlm`` work directory) takes W's
vocabulary, tokenization (``--tokens --preprocess --seq-len``) and encoder
shape (``--layers`` and the ``bert`` flags) as the defaults of flags not
given, and loads every encoder parameter (and the pooler, where NSP trained
one) from W's newest checkpoint before training; a parameter whose shape
differs is refused by name. Without it the same model starts from random
weights: the baseline that shows what pretraining gives.

Inputs are ``<cls> a <sep>`` or ``<cls> a <sep> b <sep>`` with segments, as
in pretraining (:func:`jaxseq.data.mlm.pack_pair`). Validation reports the
loss, ``accuracy`` and ``macro_f1`` (the unweighted mean over classes of
``F1 = 2 TP / (2 TP + FP + FN)``, over the classes present in the gold
labels or the predictions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxseq import parallel, train
from jaxseq.config import Config, option
from jaxseq.data import labels as labels_lib
from jaxseq.data import mlm as mlm_data
from jaxseq.data import text as text_lib
from jaxseq.data import tokens as tokens_lib
from jaxseq.data.epochs import EpochBatches, fold_rng, shard_rows
from jaxseq.data.vocab import UNK, Vocab
from jaxseq.errors import CheckpointError, ConfigError, DataError
from jaxseq.manifest import array_fingerprint
from jaxseq.models.bert import BertConfig
from jaxseq.optim import OptimConfig
from jaxseq.tasks import runner
from jaxseq.tasks.mlm import MLMModelConfig
from jaxseq.tasks.runner import Echo, Run
from jaxseq.workdir import Workdir, WorkdirLike

VOCAB, LABELS = "vocab.json", "labels.json"
# what --init-from takes from the pretraining run for flags not given: section -> fields
INHERITED = {"model": ("layers", "dropout"), "data": ("tokens", "vocab_size", "preprocess", "seq_len"),
             "bert": ("d_model", "heads", "ffn", "ffn_activation", "norm", "positional", "segments")}


@dataclass(frozen=True)
class ClassifyDataConfig(Config):
    """The labelled texts, their tokenization and batches, and the pretrained encoder to start from."""

    data: str = option("builtin", "a TSV file of label<TAB>text or label<TAB>a<TAB>b lines, or 'builtin' (a "
                       "generated word-order task on the built-in corpus)")
    valid: str | None = option(None, "a TSV file to validate on (default: a held-out --valid-fraction of --data)")
    init_from: str | None = option(None, "a `jaxseq train mlm` work directory whose encoder weights, vocabulary "
                                   "and tokenization this run starts from (default: train from scratch)")
    tokens: str = option("word", "token level: characters, words, or subwords trained on the training texts (bpe, "
                         "wordpiece; with --init-from: the pretraining run's)", choices=tokens_lib.TOKEN_CHOICES)
    vocab_size: int | None = option(None, tokens_lib.VOCAB_SIZE_HELP, minimum=1)
    preprocess: str = option("d2l", "text preprocessing", choices=text_lib.PREPROCESS_CHOICES)
    valid_fraction: float = option(0.2, "fraction of --data held out (after a fixed shuffle) when no --valid is given",
                                   above=0.0, below=1.0)
    min_freq: int = option(1, "without --init-from: tokens seen fewer times become <unk>", minimum=1)
    seq_len: int = option(64, "positions per input (longer texts are cut)", minimum=4)
    batch_size: int = option(32, "examples per batch (the global batch, over all devices and hosts)", minimum=1)

    def check(self) -> None:
        tokens_lib.check_vocab_size(self.tokens, self.vocab_size)


@dataclass
class Encoded:
    """Examples as model inputs: ``tokens``, ``segments`` ``(N, T)``, ``valid_len``, ``labels`` ``(N,)``."""

    tokens: np.ndarray
    segments: np.ndarray
    valid_len: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, index) -> dict[str, np.ndarray]:
        return {"tokens": self.tokens[index], "segments": self.segments[index], "valid_len": self.valid_len[index],
                "labels": self.labels[index], "weights": np.ones(len(self.labels[index]), np.float32)}


@dataclass
class ClassifyData:
    train: Encoded
    valid: Encoded
    vocab: Vocab
    labels: Vocab
    source: str


def _tokens(config, text: str) -> list[str]:
    return mlm_data.sentence_tokens(config, text)


def encode_examples(examples: list[labels_lib.Example], config, vocab: Vocab, labels: Vocab | None,
                    source: str) -> Encoded:
    """``<cls> a <sep> [b <sep>]`` per example (``labels`` None: every label 0, for classifying)."""
    sp = mlm_data.Specials(vocab)
    n, t = len(examples), config.seq_len
    out = Encoded(np.zeros((n, t), np.int32), np.zeros((n, t), np.int32), np.zeros(n, np.int32),
                  np.zeros(n, np.int32))
    texts = [_tokens(config, s) for ex in examples for s in (ex.a, ex.b) if s is not None]
    ids = iter(mlm_data.encode_sentences(vocab, texts))
    for i, ex in enumerate(examples):
        a = next(ids)
        b = None if ex.b is None else next(ids)
        out.tokens[i], out.segments[i], out.valid_len[i] = mlm_data.pack_pair(a, b, t, sp)
        if labels is not None:
            index = labels.index(ex.label)
            if index is None or index == labels.unk:
                raise DataError(f"{source}:{ex.line}: label {ex.label!r} is not among the training labels "
                                f"({', '.join(labels.idx_to_token[1:])})")
            out.labels[i] = index - 1
    return out


def _read(spec: str, seed: int) -> tuple[list[labels_lib.Example], str]:
    if spec == "builtin":
        return labels_lib.builtin_examples(seed), "builtin (word order)"
    return labels_lib.read_labelled(spec), spec


def load_classify_data(config: ClassifyDataConfig, vocabs: dict[str, Vocab] | None = None) -> ClassifyData:
    """Read and split the labelled texts; the vocabulary is the pretraining run's (``--init-from``), the
    saved one (``vocabs``) or built on the training texts; labels are the training labels, sorted."""
    config.validate()
    examples, source = _read(config.data, 0)
    if config.valid is None:
        order = fold_rng(0, 11).permutation(len(examples))
        n_valid = int(round(len(examples) * config.valid_fraction))
        if n_valid < 1 or n_valid >= len(examples):
            raise DataError(f"{source}: {len(examples)} example(s) cannot be split into training and validation "
                            f"with --valid-fraction {config.valid_fraction}; give more lines or --valid FILE")
        train_ex = [examples[i] for i in order[:len(examples) - n_valid]]
        valid_ex, valid_source = [examples[i] for i in order[len(examples) - n_valid:]], source
    else:
        train_ex = examples
        valid_ex, valid_source = labels_lib.read_labelled(config.valid), config.valid
    if vocabs is not None:
        vocab, labels = vocabs[VOCAB], vocabs[LABELS]
        mlm_data.check_tokenizer(vocab, config.tokens, "the run's vocab.json")
    else:
        if config.init_from is not None:
            vocab = runner.load_run(config.init_from, _mlm_task())[1][VOCAB]
            mlm_data.check_tokenizer(vocab, config.tokens, f"--init-from {config.init_from}")
        else:
            vocab = mlm_data.build_vocab(config, [_tokens(config, s) for ex in train_ex for s in (ex.a, ex.b)
                                                  if s is not None], source)
        labels = Vocab([UNK] + sorted({ex.label for ex in train_ex}))
        if len(labels) < 3:
            raise DataError(f"{source}: the training examples have one label ({labels.idx_to_token[1]!r}); "
                            "a classifier needs at least two")
    return ClassifyData(encode_examples(train_ex, config, vocab, labels, source),
                        encode_examples(valid_ex, config, vocab, labels, valid_source), vocab, labels, source)


def _mlm_task():
    from jaxseq.tasks import mlm
    return mlm.TASK


def _init_run(path: str) -> Run:
    """The masked-LM run in ``path``; any other work directory is refused in one line."""
    wd = Workdir(path)
    task = wd.require_any()
    if task != _mlm_task().name:
        raise CheckpointError(f"--init-from {path}: holds a {task} run, not a masked-LM run; give the work directory "
                              "of a `jaxseq train mlm` run")
    return runner.load_run(wd, _mlm_task())[0]


class ClassifyBatches(EpochBatches):
    """Training batches: every example once per epoch in an order from ``fold_rng(seed, epoch)``."""

    def __init__(self, data: Encoded, batch_size: int, *, seed: int = 0, shard: tuple[int, int] = (0, 1)):
        super().__init__()
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rows = shard_rows(batch_size, shard)
        if self.batches_per_epoch < 1:
            raise DataError(f"the training split has {len(data)} examples, too few for one batch of {batch_size}; "
                            "lower --batch-size or give more examples")

    @property
    def batches_per_epoch(self) -> int:
        return len(self.data) // self.batch_size

    def layout(self, epoch: int) -> np.ndarray:
        order = fold_rng(self.seed, epoch).permutation(len(self.data))
        return order[: self.batches_per_epoch * self.batch_size].reshape(-1, self.batch_size)

    def batch(self, epoch: int, index: int, layout: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if layout is None:
            layout = self.layout(epoch)
        return self.data.rows(layout[index][self.rows])


def eval_batches(data: Encoded, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Every example once, the last batch padded with rows of weight 0 (one shape, one compile)."""
    n = len(data)
    total = -(-n // batch_size) * batch_size
    index = np.concatenate([np.arange(n), np.zeros(total - n, np.int64)])
    rows = data.rows(index)
    rows["weights"][n:] = 0.0
    return [{k: v[s:s + batch_size] for k, v in rows.items()} for s in range(0, total, batch_size)]


def classification_scores(gold: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """``accuracy`` and ``macro_f1`` (module docstring) of integer labels."""
    gold, predicted = np.asarray(gold), np.asarray(predicted)
    f1 = []
    for c in np.union1d(gold, predicted):
        tp = np.sum((predicted == c) & (gold == c))
        fp = np.sum((predicted == c) & (gold != c))
        fn = np.sum((predicted != c) & (gold == c))
        f1.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(gold == predicted)), "macro_f1": float(np.mean(f1))}


def make_predict_fn(model):
    """The jit-compiled ``(params, batch) -> probabilities (B, C)``."""
    def predict(params, batch):
        logits, _ = model.apply({"params": params}, batch, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return jax.jit(predict)


def _scores(predict, params, batches: list[dict]) -> dict[str, float]:
    probs = np.concatenate(jax.device_get([predict(params, b) for b in batches]))
    weights = np.concatenate([b["weights"] for b in batches]) > 0
    gold = np.concatenate([b["labels"] for b in batches])[weights]
    return classification_scores(gold, probs[weights].argmax(axis=-1))


def _named(tree: Any) -> dict[str, Any]:
    """Leaves of a parameter tree by their ``a/b/c`` names."""
    return {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _transferred(params: Any, pretrained: Any, where: str) -> list[str]:
    """The names of ``params``' leaves taken from ``pretrained``: the ``encoder`` (and the ``pooler``, if
    pretrained has one); a missing or differently shaped one is a CheckpointError naming it. Works on
    arrays or shapes (``jax.ShapeDtypeStruct``)."""
    ours, theirs = _named(params), _named(pretrained)
    has_pooler = any(n.startswith("pooler/") for n in theirs)
    names = [n for n in ours if n.startswith("encoder/") or (has_pooler and n.startswith("pooler/"))]
    for n in names:
        if n not in theirs:
            raise CheckpointError(f"--init-from {where}: the pretrained encoder has no parameter {n}; "
                                  "it was trained with other --layers or model flags")
        there, here = tuple(theirs[n].shape), tuple(ours[n].shape)
        if there != here:
            hint = (" (the vocabularies differ)" if n == "encoder/token/embedding"
                    else "; leave the flag out to take the pretrained value")
            raise CheckpointError(f"--init-from {where}: parameter {n} has shape {there} there and {here} here{hint}")
    return names


def _transfer(params: Any, pretrained: Any, where: str) -> tuple[Any, int]:
    """``params`` with the leaves :func:`_transferred` names replaced by ``pretrained``'s."""
    names = set(_transferred(params, pretrained, where))
    theirs = _named(pretrained)
    leaves = []
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
        n = "/".join(str(getattr(k, "key", k)) for k in path)
        leaves.append(jnp.asarray(theirs[n], value.dtype) if n in names else value)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves), len(names)


def _shapes(task, run: Run, vocabs: dict[str, Vocab]) -> Any:
    """The parameter shapes of ``run``'s model (nothing computed)."""
    model = run.spec.build(run, task.vocab_sizes(vocabs))
    batch = task.example_batch(run)
    return jax.eval_shape(lambda: train.init_params(model, batch, 0))


class ClassifyTask(runner.Task):
    """Text (pair) classification with a BERT encoder, pretrained (``--init-from``) or not."""

    name = "classify"
    sections = {"data": ClassifyDataConfig, "model": MLMModelConfig, "bert": BertConfig, "optim": OptimConfig,
                "train": train.TrainConfig, "parallel": parallel.ParallelConfig}
    families = frozenset({"bert"})
    vocab_files = (VOCAB, LABELS)
    default_steps = 500
    builtin_data = ("builtin",)

    def resolve(self, given: Mapping[str, Any] | None = None, *, warn_unused: bool = True,
                validate: bool = True) -> Run:
        """As :meth:`runner.Task.resolve`; with ``init_from`` the pretraining run's encoder shape and
        tokenization are the defaults of the flags not given (:data:`INHERITED`)."""
        given = dict(given or {})
        for key in ("init_from", "valid"):          # saved by absolute path: readers may run elsewhere
            if given.get(key) is not None:
                given[key] = runner.absolute_data(str(given[key]), ())
        if given.get("init_from") is not None:
            pre = _init_run(str(given["init_from"]))
            for f in ("tokens", "vocab_size"):         # the pretrained vocabulary is taken as it is
                if f in given and given[f] != getattr(pre.data, f):
                    flag = "--" + f.replace("_", "-")
                    raise ConfigError(f"--init-from {given['init_from']}: pretrained with {flag} "
                                      f"{getattr(pre.data, f)}, this run asks for {flag} {given[f]}; leave {flag} "
                                      "out to take the pretrained tokenizer")
            for section, fields in INHERITED.items():
                for f in fields:
                    if f not in given and section in pre.sections:
                        given[f] = getattr(pre.sections[section], f)
        return super().resolve(given, warn_unused=warn_unused, validate=validate)

    def load_data(self, run: Run, vocabs: dict[str, Vocab] | None) -> ClassifyData:
        if vocabs is None and run.data.init_from is not None:
            _init_run(run.data.init_from)
        return load_classify_data(run.data, vocabs)

    def vocabs(self, data: ClassifyData) -> dict[str, Vocab]:
        return {VOCAB: data.vocab, LABELS: data.labels}

    def check_vocabs(self, vocabs: dict[str, Vocab]) -> None:
        mlm_data.Specials(vocabs[VOCAB])

    def vocab_sizes(self, vocabs: dict[str, Vocab]) -> tuple[int, ...]:
        return len(vocabs[VOCAB]), len(vocabs[LABELS]) - 1          # labels.json holds <unk> first

    def describe_data(self, data: ClassifyData) -> str:
        return (f"{data.source}, {len(data.train):,} training and {len(data.valid):,} validation examples, "
                f"{len(data.labels) - 1} labels ({', '.join(data.labels.idx_to_token[1:6])}"
                f"{' ...' if len(data.labels) > 6 else ''}), vocabulary {len(data.vocab)}")

    def check_data(self, run: Run, data: ClassifyData) -> None:
        """Too few examples, or an ``--init-from`` encoder that does not fit, is refused before anything is written."""
        ClassifyBatches(data.train, run.data.batch_size)
        if run.data.init_from is not None:
            mlm_task = _mlm_task()
            pre_run, pre_vocabs = runner.load_run(run.data.init_from, mlm_task)
            _transferred(_shapes(self, run, self.vocabs(data)), _shapes(mlm_task, pre_run, pre_vocabs),
                         run.data.init_from)

    def data_fingerprint(self, data: ClassifyData) -> str:
        return array_fingerprint(*[getattr(e, k) for e in (data.train, data.valid)
                                   for k in ("tokens", "segments", "valid_len", "labels")])

    def example_batch(self, run: Run) -> dict[str, np.ndarray]:
        b, t = run.data.batch_size, run.data.seq_len
        return {"tokens": np.zeros((b, t), np.int32), "segments": np.zeros((b, t), np.int32),
                "valid_len": np.full((b,), t, np.int32), "labels": np.zeros((b,), np.int32),
                "weights": np.ones((b,), np.float32)}

    def train_batches(self, run: Run, data: ClassifyData, shard=None) -> ClassifyBatches:
        return ClassifyBatches(data.train, run.data.batch_size, seed=run.train.seed, shard=shard or (0, 1))

    def valid_batches(self, run: Run, data: ClassifyData, shard=None) -> list:
        return [parallel.local_rows(b) for b in eval_batches(data.valid, run.data.batch_size)]

    def extra_eval(self, run: Run, data: ClassifyData, model):
        batches, predict = eval_batches(data.valid, run.data.batch_size), make_predict_fn(model)
        return lambda params: _scores(predict, params, batches)

    def initial_params(self, run: Run, params: Any, echo: Echo) -> Any:
        if run.data.init_from is None:
            return params
        from jaxseq.tasks import mlm
        _init_run(run.data.init_from)
        loaded = runner.load(run.data.init_from, mlm.TASK)
        params, count = _transfer(params, loaded.params, run.data.init_from)
        echo(f"initialised {count} encoder parameter arrays from {run.data.init_from} (step {loaded.step})")
        return params

    def before_training(self, run: Run, data: ClassifyData, options: dict, echo: Echo) -> dict:
        counts = np.bincount(data.train.labels, minlength=len(data.labels) - 1)
        majority = int(counts.argmax())
        return {"baseline": {"majority_label": data.labels.idx_to_token[majority + 1],
                             **classification_scores(data.valid.labels, np.full(len(data.valid), majority))},
                "init_from": run.data.init_from}

    def report(self, run: Run, data: ClassifyData, model, params, results: dict, mesh, options: dict,
               echo: Echo) -> None:
        v, base = results.get("valid") or {}, results.get("baseline", {})
        start = f"fine-tuned from {run.data.init_from}" if run.data.init_from else "trained from scratch"
        echo(f"{run.model.model} ({start}): validation accuracy {v.get('accuracy', float('nan')):.4f}, macro-F1 "
             f"{v.get('macro_f1', float('nan')):.4f} (majority label: accuracy {base.get('accuracy', float('nan')):.4f})")


TASK = ClassifyTask()


# -- the jobs ----------------------------------------------------------------------------------

def resolve(given: Mapping[str, Any] | None = None, **flags: Any) -> Run:
    """A classification run from flags by field name (``resolve(init_from="runs/bert", steps=300)``)."""
    return TASK.resolve({**(given or {}), **flags})


def evaluate_classify(workdir: WorkdirLike, data: str | None = None, *, allow_data_change: bool = False) -> dict:
    """Loss, accuracy and macro-F1 of the run's classifier on its validation split or the TSV file ``data``."""
    workdir = Workdir.of(workdir)
    run, vocabs = runner.load_run(workdir, TASK)
    fingerprint = None
    if data is None:
        loaded_data = load_classify_data(run.data, vocabs)
        encoded, source = loaded_data.valid, f"{run.data.valid or run.data.data} (validation split)"
        fingerprint = None if allow_data_change else TASK.data_fingerprint(loaded_data)
    else:
        encoded = encode_examples(labels_lib.read_labelled(data), run.data, vocabs[VOCAB], vocabs[LABELS], data)
        source = data
    loaded = runner.load(workdir, TASK, data_fingerprint=fingerprint)
    batches = eval_batches(encoded, run.data.batch_size)
    mesh = parallel.make_mesh(1)
    scores = train.evaluate(train.make_eval_step(loaded.model), loaded.params, batches, mesh)
    return {"data": source, "step": loaded.step, "loss": scores["nll"], "examples": scores["tokens"],
            **_scores(make_predict_fn(loaded.model), loaded.params, batches)}


def classify_texts(workdir: WorkdirLike, texts: list[str]) -> list[list[tuple[str, float]]]:
    """Each text's labels with probabilities, most likely first (a pair: its two texts joined by a tab)."""
    if not texts:
        raise DataError("give a text to classify")
    loaded = runner.load(Workdir.of(workdir), TASK)
    vocab, labels = loaded.vocabs[VOCAB], loaded.vocabs[LABELS]
    examples = []
    for i, text in enumerate(texts, 1):
        parts = text.split("\t")
        if len(parts) > 2 or not all(p.strip() for p in parts):
            raise DataError(f"text {i}: give one text, or a pair as two non-empty texts joined by one tab")
        examples.append(labels_lib.Example("", parts[0], parts[1] if len(parts) == 2 else None, i))
    encoded = encode_examples(examples, loaded.run.data, vocab, None, "text")
    batch = {k: v for k, v in encoded.rows(np.arange(len(encoded))).items()}
    probs = np.asarray(make_predict_fn(loaded.model)(loaded.params, batch))
    names = labels.idx_to_token[1:]
    return [[(names[j], float(row[j])) for j in np.argsort(-row, kind="stable")] for row in probs]
