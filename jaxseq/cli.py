"""The ``jaxseq`` command: a thin layer over the library.

    jaxseq train lm          [flags]    train a language model (n-gram, RNN, GRU, LSTM, ...)
    jaxseq train translate   [flags]    train a translation model
    jaxseq train mlm         [flags]    pretrain a BERT encoder (masked LM + next-sentence prediction)
    jaxseq train classify    [flags]    fine-tune a classifier (--init-from a mlm run) or train it from scratch
    jaxseq evaluate  --workdir DIR      perplexity / BLEU of a trained run (last line: JSON)
    jaxseq generate  --workdir DIR --prefix TEXT --length N
    jaxseq translate --workdir DIR [TEXT ... | --input FILE | --file IN.txt --out OUT.txt]
    jaxseq average   --workdir DIR --last K | --steps a,b,c    average checkpoints (--checkpoint averaged)
    jaxseq fill-mask --workdir DIR "the <mask> traveller" ...  [--top-k K]
    jaxseq classify  --workdir DIR TEXT ...                    labels with probabilities
    jaxseq inspect   --workdir DIR | lm|translate [flags]   what the train step compiles to (--what, --out)
    jaxseq stats     [--data PATH]      n-gram statistics and a Zipf plot
    jaxseq prepare   --data CORPUS --out DIR [tokenization flags]   token shards for `train lm --data DIR`
    jaxseq prepare   --verify DIR       hash every shard of DIR against its index
    jaxseq data list | fetch NAME

Every deliberate error ends with one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _configure_logging() -> None:
    """Keep library logs off the terminal: every failure jaxseq reports is its own one line.

    Orbax logs a failed background write at ERROR (with a traceback) before
    jaxseq turns it into one line, and TensorStore's callbacks then hit the
    closed asyncio loop of that write and print ``RuntimeError: Event loop is
    closed`` through ``sys.excepthook``; both are dropped here.
    """
    import logging
    for name in ("absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.FATAL)
    except ImportError:  # pragma: no cover
        pass
    previous = sys.excepthook

    def excepthook(kind, value, tb):
        if kind is RuntimeError and str(value) == "Event loop is closed":
            return
        previous(kind, value, tb)
    sys.excepthook = excepthook


# ----------------------------------------------------------------------------------------
# parsers
# ----------------------------------------------------------------------------------------

TASKS = ("lm", "translate", "mlm", "classify")


def _task(name: str):
    """The task object of ``jaxseq train NAME`` (imported on use: the parser is cheap to build)."""
    import importlib
    return importlib.import_module(f"jaxseq.tasks.{name}").TASK


def _add_task_flags(parser: argparse.ArgumentParser, task) -> None:
    """One flag per config field, grouped by section; a field several sections share gets one flag.

    ``--model`` lists the registry's models; each model-family section's
    title names the models that read it, and the help shows each model's
    own defaults where they differ (and those on the user's own data file).
    """
    from jaxseq.config import add_arguments
    from jaxseq.models import registry

    specs = registry.specs(task.name)
    seen: set[str] = set()
    for section, cls in task.sections.items():
        users = [s.name for s in specs if section in s.sections]
        title = f"{section} (--model {', '.join(users)})" if section in task.families else section
        overrides = {}
        for spec in specs:
            for field, value in spec.defaults.get(section, {}).items():
                overrides.setdefault(field, []).append(f"{spec.name} {value}")
            on_data = spec.data_defaults({"data": "FILE", "tokens": "bpe"}) if spec.data_defaults else {}
            for field, value in on_data.get(section, {}).items():      # the usual case: subwords, no length
                overrides.setdefault(field, []).append(f"{spec.name} with --data FILE {value}")
        extra = {"model": {"choices": registry.names(task.name)}} if section == "model" else {}
        about = ("; ".join(f"{s.name}: {s.description}" for s in specs) if section == "model" else None)
        add_arguments(parser.add_argument_group(title, about), cls, exclude=seen, per_model=overrides, extra=extra)
        seen |= {f.name for f in dataclasses.fields(cls)}


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", type=Path, default=None,
                        help="run directory (default: runs/<task>-<model>-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --workdir from its latest checkpoint")
    parser.add_argument("--restart", action="store_true",
                        help="start the run in --workdir again from step 0 with the flags given now, discarding "
                             "its checkpoints and logs (e.g. after a stop before the first checkpoint)")
    parser.add_argument("--fallback", action="store_true",
                        help="with --resume: if the latest checkpoint is refused, restore the newest good one")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="with --resume: accept training data whose contents changed since the run started")


class _Parser(argparse.ArgumentParser):
    """argparse with jaxseq's error form: one line on stderr, exit status 1."""

    def error(self, message: str):
        self.exit(1, f"jaxseq: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxseq", description="Sequence models in JAX/Flax.")
    parser.add_argument("--version", action="version", version=f"jaxseq {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model into a work directory")
    tasks = train.add_subparsers(dest="task", required=True, metavar="TASK")
    for name, help_text in (("lm", "language model"), ("translate", "translation (sequence to sequence) model"),
                            ("mlm", "BERT pretraining: masked LM and next-sentence prediction on sentence pairs"),
                            ("classify", "text or text-pair classifier on a BERT encoder (--init-from a mlm run)")):
        sub = tasks.add_parser(name, help=help_text)
        _add_task_flags(sub, _task(name))
        _add_run_flags(sub)
        if name == "lm":
            sub.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                             help="also report a trigram Kneser-Ney baseline on the same split")
            sub.add_argument("--sample", type=int, default=200, metavar="N",
                             help="print a sample of N tokens after training (0: none)")

    ev = commands.add_parser("evaluate", help="evaluate a trained run; prints JSON last")
    ev.add_argument("--workdir", type=Path, required=True)
    ev.add_argument("--data", default=None, help="a text file (LM, masked LM) or TSV pairs (translation) or "
                    "labels (classification) to evaluate on "
                    "(default: the run's validation split)")
    ev.add_argument("--beam", type=int, default=None, help="translation: beam size for BLEU (default: greedy)")
    ev.add_argument("--split", choices=("valid", "test"), default=None,
                    help="translation, without --data: score the run's held-out validation (default) or test pairs")
    _add_decoding_flags(ev, defaults_from_run=True)
    ev.add_argument("--eval-context", choices=("stream", "window"), default=None,
                    help="language models with a recurrent state: carry it through the text (stream) or reset "
                    "it every --seq-len tokens (window); default: the run's --eval-context (stream; a run saved before "
                    "the flag existed: as it was validated)")
    ev.add_argument("--allow-data-change", action="store_true",
                    help="score the run's validation split even though the data file changed since training")

    gen = commands.add_parser("generate", help="continue a prefix with a trained language model")
    gen.add_argument("--workdir", type=Path, required=True)
    gen.add_argument("--prefix", required=True)
    gen.add_argument("--length", type=int, default=100, help="tokens to generate")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")

    tl = commands.add_parser("translate", help="translate sentences with a trained model")
    tl.add_argument("--workdir", type=Path, required=True)
    tl.add_argument("text", nargs="*", help="sentences to translate")
    tl.add_argument("--input", type=Path, default=None, help="a file with one sentence per line")
    tl.add_argument("--file", type=Path, default=None, help="translate this file line for line (an empty line "
                    "gives an empty line), in batches with a progress bar; see --out")
    tl.add_argument("--out", type=Path, default=None, help="with --file: write the translations here "
                    "(default: standard output)")
    tl.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    tl.add_argument("--max-len", "--max-len-b", dest="max_len", type=int, default=None,
                    help="longest output, or b of --max-len-a (default: the run's --max-len)")
    _add_decoding_flags(tl, defaults_from_run=False)
    tl.add_argument("--show-attention", type=Path, default=None,
                    help="write the attention heatmap of the first sentence to this PNG (transformer: "
                         "cross-attention per layer and head, self-attention to PNG.encoder.png and "
                         "PNG.decoder.png)")

    avg = commands.add_parser("average", help="average the parameters of a run's last checkpoints into "
                              "checkpoints/averaged (evaluate/translate --checkpoint averaged)")
    avg.add_argument("--workdir", type=Path, required=True)
    avg.add_argument("--last", type=int, default=None, help="average the K newest complete checkpoints")
    avg.add_argument("--steps", default=None, help="average these steps (comma-separated: 1000,2000,3000)")

    fm = commands.add_parser("fill-mask", help="the most likely fillers of each <mask> with a masked-LM run")
    fm.add_argument("--workdir", type=Path, required=True)
    fm.add_argument("text", nargs="+", help='texts with the token to fill written <mask>: "the <mask> traveller"')
    fm.add_argument("--top-k", type=int, default=5, help="fillers to list per mask")

    cl = commands.add_parser("classify", help="labels with probabilities from a trained classifier")
    cl.add_argument("--workdir", type=Path, required=True)
    cl.add_argument("text", nargs="+", help="texts to classify (a pair: the two texts joined by a TAB)")

    _add_inspect(commands)

    stats = commands.add_parser("stats", help="corpus statistics: top n-grams and a Zipf plot")
    stats.add_argument("--data", default="builtin")
    stats.add_argument("--tokens", default="char", choices=("char", "word"))
    stats.add_argument("--preprocess", default="none", choices=("none", "d2l"))
    stats.add_argument("--top", type=int, default=10, help="how many n-grams of each order to list")
    stats.add_argument("--plot", type=Path, default=Path("zipf.png"), help="where to write the Zipf plot")

    _add_prepare(commands)

    data = commands.add_parser("data", help="built-in and registered datasets")
    data_cmds = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    data_cmds.add_parser("list", help="list the datasets")
    fetch = data_cmds.add_parser("fetch", help="download a dataset into the cache ($JAXSEQ_DATA)")
    fetch.add_argument("name")
    fetch.add_argument("--url", default=None, help="a mirror to download from (the checksum still applies)")
    fetch.add_argument("--force", action="store_true", help="download again even if cached")
    return parser


def _add_decoding_flags(parser, *, defaults_from_run: bool) -> None:
    """Translation decoding: length penalty, output length a x S + b, which checkpoint."""
    from jaxseq.tasks.runner import CHECKPOINT_CHOICES
    run_default = "the run's --length-penalty" if defaults_from_run else "0.6"
    parser.add_argument("--length-penalty", "--alpha", dest="alpha", type=float,
                        default=None if defaults_from_run else 0.6,
                        help=f"translation: GNMT length penalty of beam search, log P / ((5 + |Y|) / 6)^alpha "
                        f"(default: {run_default})")
    parser.add_argument("--max-len-a", type=float, default=None if defaults_from_run else 0.0,
                        help="translation: longest output a x S + b tokens, S the padded source width "
                        "(fairseq's convention; default: the run's, 0)")
    if defaults_from_run:
        parser.add_argument("--max-len-b", type=int, default=None, help="translation: b of --max-len-a "
                            "(default: the run's, its --max-len)")
    parser.add_argument("--checkpoint", default=None, metavar="|".join(CHECKPOINT_CHOICES) + "|STEP",
                        help="which checkpoint: latest (default), best (--keep-best), averaged (jaxseq "
                        "average) or a step number")


def _add_inspect(commands) -> None:
    """``jaxseq inspect --workdir W`` or ``jaxseq inspect lm|translate [training flags]``."""
    from jaxseq.inspection import WHAT

    def options(parser, given_below: bool) -> None:
        hidden = {"default": argparse.SUPPRESS} if given_below else {}
        parser.add_argument("--workdir", type=Path, help="a run's work directory (its saved config and "
                            "vocabularies) instead of training flags", **hidden)
        parser.add_argument("--what", choices=WHAT, help="what to print (default: all)", **hidden)
        parser.add_argument("--out", type=Path, help="write the report to this file", **hidden)
        parser.add_argument("--unroll-scans", action="store_true", help="trace every lax.scan unrolled, so "
                            "XLA's cost analysis counts every time step (it counts a loop body once); slow to "
                            "compile for long sequences", **hidden)

    insp = commands.add_parser("inspect", help="what a run's train step compiles to: jaxpr, optimized HLO, XLA "
                               "cost and memory analysis, parameters per module, analytic FLOPs (no training)")
    options(insp, False)
    insp.set_defaults(what="all")
    tasks = insp.add_subparsers(dest="task", metavar="TASK")
    for name in TASKS:
        sub = tasks.add_parser(name, help=f"the train step `jaxseq train {name}` would run with these flags")
        _add_task_flags(sub, _task(name))
        options(sub, True)


def _add_prepare(commands) -> None:
    """``jaxseq prepare --data CORPUS --out DIR`` with `train lm`'s tokenization flags, or ``--verify DIR``."""
    from jaxseq.config import add_arguments
    from jaxseq.data.lm import LMDataConfig
    from jaxseq.data.prepare import PrepareConfig
    from jaxseq.data.shards import TRAINING_ONLY

    prep = commands.add_parser("prepare", help="tokenize a corpus (file, directory or glob) once, in several "
                               "processes, into memory-mappable token shards for `train lm --data DIR`")
    prep.add_argument("--data", help="the corpus: a text file, a directory of text files, a glob (quoted) or "
                      "a registered dataset")
    prep.add_argument("--out", type=Path, help="the shard directory to write (new, empty or an earlier "
                      "`jaxseq prepare` output)")
    prep.add_argument("--verify", type=Path, default=None, metavar="DIR",
                      help="instead: check every shard of DIR against its index, hashing every byte")
    add_arguments(prep.add_argument_group("tokenization (as `jaxseq train lm`)"), LMDataConfig,
                  exclude=TRAINING_ONLY)
    add_arguments(prep.add_argument_group("prepare"), PrepareConfig)


def _version() -> str:
    from jaxseq import __version__
    return __version__


# ----------------------------------------------------------------------------------------
# commands
# ----------------------------------------------------------------------------------------

def _train_spec(args):
    """The registry spec of the model ``jaxseq train`` will train (``--model``, or a resumed run's config)."""
    from jaxseq.errors import JaxseqError
    from jaxseq.models import registry
    from jaxseq.workdir import Workdir

    model = getattr(args, "model", None)
    if model is None and args.resume and args.workdir is not None:
        try:
            model = Workdir(args.workdir).config()["model"]["model"]
        except (JaxseqError, KeyError, TypeError):
            return None                   # the job itself reports what is wrong with the work directory
    try:
        return registry.get(args.task, model or _task(args.task).sections["model"].model)
    except JaxseqError:
        return None


def _given(args, task) -> dict:
    """The config flags given on the command line, by field name."""
    import dataclasses
    names = {f.name for cls in task.sections.values() for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def _cmd_train(args) -> int:
    from jaxseq.tasks import runner
    from jaxseq.workdir import Workdir, default_workdir

    task = _task(args.task)
    given = _given(args, task)
    run = task.resolve(given, warn_unused=not args.resume, validate=not (args.resume or args.restart))
    workdir = Workdir(args.workdir or default_workdir(task.name, run.model.model))
    options = {"baseline": args.baseline, "sample_length": args.sample} if task.name == "lm" else {}
    results = runner.train(task, run, workdir, resume=args.resume, restart=args.restart, given=given,
                           fallback=args.fallback,
                           allow_data_change=args.allow_data_change, **options)
    return 128 + results["interrupted"] if results.get("interrupted") else 0


def _cmd_inspect(args) -> int:
    from jaxseq import inspection
    from jaxseq.errors import ConfigError
    from jaxseq.tasks import runner
    from jaxseq.workdir import Workdir

    if args.task is None and args.workdir is None:
        raise ConfigError("jaxseq inspect: give --workdir DIR, or a task and its flags (jaxseq inspect lm --model gru)")
    task = _task(args.task or Workdir(args.workdir).require_any())
    given = _given(args, task)
    if args.workdir is not None:
        if given:
            raise ConfigError("jaxseq inspect: give --workdir or training flags, not both")
        run, vocabs = runner.load_run(args.workdir, task)
    else:
        run = task.resolve(given)
        inspection.require_train_step(run)         # before the data is read
        vocabs = task.vocabs(task.load_data(run, None))
    text = inspection.report(inspection.step_program(task, run, task.vocab_sizes(vocabs)), args.what,
                             unroll_scans=args.unroll_scans)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.what} of the {run.spec.name} train step to {args.out}")
    return 0


# the evaluate flags each task reads (besides --workdir, --data, --allow-data-change); any other given is refused
_EVALUATE_FLAGS = {"lm": ("--eval-context",),
                   "translate": ("--beam", "--length-penalty", "--max-len-a", "--max-len-b", "--checkpoint", "--split"),
                   "mlm": (), "classify": ()}
_TASK_WORDS = {"lm": "language-model", "translate": "translation", "mlm": "masked-LM", "classify": "classifier"}


def _cmd_evaluate(args) -> int:
    from jaxseq.errors import ConfigError
    from jaxseq.workdir import Workdir

    workdir = Workdir(args.workdir)
    task = workdir.require_any()
    given = {"--eval-context": args.eval_context, "--beam": args.beam, "--length-penalty": args.alpha,
             "--max-len-a": args.max_len_a, "--max-len-b": args.max_len_b, "--checkpoint": args.checkpoint,
             "--split": args.split}
    unread = [flag for flag, value in given.items() if value is not None and flag not in _EVALUATE_FLAGS[task]]
    if unread:
        readers = sorted({_TASK_WORDS[t] for f in unread for t, flags in _EVALUATE_FLAGS.items() if f in flags})
        raise ConfigError(f"{', '.join(unread)}: for {' and '.join(readers)} runs; this is a {_TASK_WORDS[task]} run")
    if task == "lm":
        from jaxseq.tasks import lm
        result = lm.evaluate_lm(workdir, args.data, allow_data_change=args.allow_data_change,
                                context=args.eval_context)
    elif task == "mlm":
        from jaxseq.tasks import mlm
        result = mlm.evaluate_mlm(workdir, args.data, allow_data_change=args.allow_data_change)
    elif task == "classify":
        from jaxseq.tasks import classify
        result = classify.evaluate_classify(workdir, args.data, allow_data_change=args.allow_data_change)
    else:
        from jaxseq.tasks import translate
        if args.split is not None and args.data is not None:
            raise ConfigError("--split picks one of the run's own splits; give it or --data, not both")
        result = translate.evaluate_translate(workdir, args.data, beam=args.beam, alpha=args.alpha,
                                              max_len_a=args.max_len_a, max_len_b=args.max_len_b,
                                              checkpoint=args.checkpoint, split=args.split or "valid",
                                              allow_data_change=args.allow_data_change)
    print(json.dumps(result, sort_keys=True))
    return 0


def _cmd_generate(args) -> int:
    from jaxseq.tasks import lm
    from jaxseq.workdir import Workdir

    print(lm.generate_lm(Workdir(args.workdir), args.prefix, args.length, seed=args.seed,
                         temperature=args.temperature, top_k=args.top_k))
    return 0


def _cmd_translate(args) -> int:
    from jaxseq.tasks import translate
    from jaxseq.workdir import Workdir

    if args.file is not None:
        from jaxseq.errors import ConfigError
        if args.text or args.input is not None or args.show_attention is not None:
            raise ConfigError("--file translates a whole file; give no sentences, --input or --show-attention "
                              "with it")
        lines = translate.translate_file(Workdir(args.workdir), args.file, args.out, beam=args.beam,
                                         alpha=args.alpha, max_len=args.max_len, max_len_a=args.max_len_a,
                                         checkpoint=args.checkpoint)
        if args.out is None:
            sys.stdout.write("".join(line + "\n" for line in lines))
        else:
            print(f"translated {len(lines)} lines of {args.file} into {args.out}", file=sys.stderr)
        return 0
    if args.out is not None:
        from jaxseq.errors import ConfigError
        raise ConfigError("--out goes with --file IN.txt")
    for line in translate.translate_texts(Workdir(args.workdir), args.text, input_file=args.input,
                                          beam=args.beam, alpha=args.alpha, max_len=args.max_len,
                                          max_len_a=args.max_len_a, checkpoint=args.checkpoint,
                                          show_attention=args.show_attention):
        print(line)
    return 0


def _cmd_average(args) -> int:
    from jaxseq.averaging import average_checkpoints, parse_steps

    steps = None if args.steps is None else parse_steps(args.steps)
    average_checkpoints(args.workdir, last=args.last, steps=steps)
    return 0


def _shown(token: str) -> str:
    """A filler as printed: as it is, or quoted when it is empty or holds white space (a subword)."""
    return token if token and not any(c.isspace() for c in token) else repr(token)


def _cmd_fill_mask(args) -> int:
    from jaxseq.tasks import mlm
    from jaxseq.workdir import Workdir

    for filled in mlm.fill_mask(Workdir(args.workdir), args.text, top_k=args.top_k):
        print(filled.best())
        for i, choices in enumerate(filled.choices, 1):
            print(f"  <mask> {i}: " + ", ".join(f"{_shown(token)} {p:.4f}" for token, p in choices))
    return 0


def _cmd_classify(args) -> int:
    from jaxseq.tasks import classify
    from jaxseq.workdir import Workdir

    for text, ranked in zip(args.text, classify.classify_texts(Workdir(args.workdir), args.text)):
        print(", ".join(f"{label} {p:.4f}" for label, p in ranked) + "\t" + text.replace("\t", " | "))
    return 0


def _cmd_stats(args) -> int:
    from jaxseq import ngram, plots
    from jaxseq.data import corpora, text as text_lib
    from jaxseq.data.vocab import UNK, Vocab

    text, source = corpora.load_text(args.data)
    tokens = text_lib.tokenize(text_lib.preprocess(text, args.preprocess), args.tokens)
    vocab = Vocab.build(tokens, reserved_tokens=(UNK,))
    ids = vocab.encode(tokens)
    joiner = "" if args.tokens == "char" else " "
    print(f"{source}: {len(tokens):,} {args.tokens} tokens, {len(vocab) - 1:,} distinct")
    for n, name in ((1, "unigrams"), (2, "bigrams"), (3, "trigrams")):
        print(f"top {name}:")
        for gram, count in ngram.top_ngrams(ids, n, args.top):
            print(f"  {count:>9,}  {joiner.join(vocab.decode(gram))!r}")
    plots.zipf_plot(ids, args.plot, title=f"Zipf's law: {source} ({args.tokens} tokens)")
    print(f"wrote {args.plot}")
    return 0


def _cmd_prepare(args) -> int:
    from jaxseq.config import from_args
    from jaxseq.data import prepare
    from jaxseq.errors import ConfigError

    if args.verify is not None:
        if args.data is not None or args.out is not None:
            raise ConfigError("jaxseq prepare: give --verify DIR alone, or --data CORPUS --out DIR")
        prepare.verify(args.verify)
        return 0
    if args.data is None or args.out is None:
        raise ConfigError("jaxseq prepare: give --data CORPUS and --out DIR (or --verify DIR)")
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(prepare.LMDataConfig)}
             and k != "data"}
    prepare.prepare(args.data, args.out, prepare.data_config(given), from_args(prepare.PrepareConfig, args))
    return 0


def _cmd_data(args) -> int:
    from jaxseq.data import corpora

    if args.data_command == "list":
        print(f"{'builtin':<16} text   (no download) the Python language reference shipped with CPython")
        for extra_name, description in corpora.generated_tasks().items():
            print(f"{extra_name:<16} pairs  (generated)   {description}")
        for d in corpora.REGISTRY.values():
            cached = "cached" if corpora.dataset_path(d.name).exists() else "not fetched"
            print(f"{d.name:<16} {d.kind:<6} ({cached:<11}) {d.description}")
        return 0
    path = corpora.fetch(args.name, url=args.url, force=args.force)
    print(path)
    return 0


def main(argv: list | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else [str(a) for a in argv])
    except SystemExit as stop:            # --help, --version (0) and usage errors (1, one line)
        return int(stop.code or 0)
    _configure_logging()
    from jaxseq.errors import JaxseqError

    handlers = {"inspect": _cmd_inspect, "evaluate": _cmd_evaluate, "generate": _cmd_generate,
                "translate": _cmd_translate, "fill-mask": _cmd_fill_mask, "classify": _cmd_classify,
                "stats": _cmd_stats, "data": _cmd_data, "prepare": _cmd_prepare, "average": _cmd_average}
    try:
        if args.command == "train":
            spec = _train_spec(args)
            if spec is not None and spec.tuned_allocator:
                from jaxseq.memory import keep_freed_memory
                keep_freed_memory()         # before XLA starts its threads (memory.py)
            return _cmd_train(args)
        return handlers[args.command](args)
    except JaxseqError as err:
        print(f"jaxseq: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jaxseq: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"jaxseq: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1


def entry() -> None:
    """The ``jaxseq`` program: :func:`main`, then exit with its status.

    After a failure has been reported (its one line is on stderr), the rest
    of stderr is closed: background threads of a failed checkpoint write
    (TensorStore's callbacks into Orbax's closed event loop) can otherwise
    print tracebacks while the interpreter shuts down.
    """
    code = main()
    if code:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
