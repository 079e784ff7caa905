"""One runner for every task: resolve the configs, train (or resume), restore, evaluate.

A task (:class:`Task`) supplies only what differs between tasks: its config
sections, how it loads data and builds vocabularies, its batches, its data
fingerprint, extra evaluation (BLEU) and its report. Everything else is
written once, here:

``resolve``   flags -> a :class:`Run`: dataclass defaults, then the model's
              registered defaults (and, on the user's own data, its
              ``data_defaults``), then the flags the user gave
``train``     plan the work directory, load and check the data (nothing is
              written before), save config and vocabularies, build the model
              from the registry, fit with checkpoints (restoring on resume),
              write ``results.json`` and the learning curve
``load``      the model, parameters, vocabularies and run of a work directory
              (read-only: a reader never writes, and reads the newest
              complete checkpoint, also while a trainer writes)

A checkpoint's :class:`~jaxseq.manifest.Manifest` is built in one place
(:func:`manifest`) for saving and for restoring.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, Callable, ClassVar, Mapping

import jax
import numpy as np

from jaxseq import config as config_lib
from jaxseq import hardware, parallel
from jaxseq import train as trainer
from jaxseq.checkpoint import Checkpointer, checkpoint_steps
from jaxseq.data.subword import tokenizer_file
from jaxseq.data.text import warn
from jaxseq.data.vocab import Vocab
from jaxseq.errors import CheckpointError, ConfigError
from jaxseq.manifest import Manifest, tree_signature
from jaxseq.models import registry
from jaxseq.models.registry import ModelSpec
from jaxseq.optim import make_optimizer
from jaxseq.workdir import Workdir, WorkdirLike

Echo = Callable[[str], None]


def echo_stdout(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def warn_unknown(what: str, unknown, where: str = "the vocabulary") -> None:
    """Warn that ``unknown`` token types became ``<unk>`` (nothing if there are none)."""
    unknown = list(unknown)
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        warn(f"{what}: {len(unknown)} token type(s) not in {where} become <unk>: {shown}")


def count_params(params: Any) -> int:
    return sum(x.size for x in jax.tree_util.tree_leaves(params))


# -- runs ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Run:
    """The resolved configs of one run: ``run.data``, ``run.model``, ``run.train`` ... (one per section).

    Only the model-family sections the model reads are present (a GRU run
    has ``rnn``, not ``transformer``); ``config.json`` is :meth:`to_dict`.
    """

    task: str
    sections: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"this {self.__dict__.get('task')} run has no {name!r} section")

    @property
    def spec(self) -> ModelSpec:
        return registry.get(self.task, self.model.model)

    def to_dict(self) -> dict:
        return {"task": self.task, **{name: config_lib.to_dict(c) for name, c in self.sections.items()}}

    def validate(self) -> None:
        for section in self.sections.values():
            section.validate()
        for section in self.sections.values():      # rules across sections (e.g. --attention-impl vs --dtype)
            section.check_run(self)


class Task(abc.ABC):
    """What one task supplies to the runner (LM and translation are two).

    ``sections``: every config section the task can have, name -> class;
    ``families``: those that belong to a model family (kept only when the
    chosen model reads them); ``vocab_files``: the vocabularies it saves.
    """

    name: ClassVar[str]
    sections: ClassVar[dict[str, type]]
    families: ClassVar[frozenset[str]]
    vocab_files: ClassVar[tuple[str, ...]]
    default_steps: ClassVar[int]
    builtin_data: ClassVar[tuple[str, ...]] = ()     # data names that are never files
    scores_params: ClassVar[bool] = False             # report() scores the parameters it is given (--average-last)

    # -- configs --------------------------------------------------------------------------
    def resolve(self, given: Mapping[str, Any] | None = None, *, warn_unused: bool = True,
                validate: bool = True) -> Run:
        """A :class:`Run` from flags ``given`` by field name (``{"hidden": 128, "lr": 1e-3}``).

        Each field takes the flag's value if given, else the model's
        registered default, else the dataclass default; a flag declared
        ``governs`` (``--optimizer``) drops the model's defaults of its
        section. A given flag that the chosen model does not read is reported
        (not silently dropped). ``validate=False`` for flags that only amend
        a saved run (``--resume``): the merged config is validated instead.
        """
        given = dict(given or {})
        known = {f.name for cls in self.sections.values() for f in dataclasses.fields(cls)}
        strange = sorted(set(given) - known)
        if strange:
            raise ConfigError(f"unknown {self.name} setting(s) {', '.join(strange)}; see `jaxseq train {self.name} "
                              "--help` (a flag --seq-len is the setting seq_len)")
        model_cls = self.sections["model"]
        name = given.get("model", model_cls.model)
        spec = registry.get(self.name, name)
        on_data = spec.data_defaults(given) if spec.data_defaults and self.user_data(given) else {}
        sections = {}
        for section, cls in self.sections.items():
            if section in self.families and section not in spec.sections:
                continue
            types = config_lib.field_types(cls)
            mine = {k: config_lib.plain(v, types[k]) for k, v in given.items() if k in types}
            governed = any(config_lib.field_metadata(cls, k).get("governs") for k in mine)
            defaults = {} if governed else {**spec.defaults.get(section, {}), **on_data.get(section, {})}
            sections[section] = cls(**{**defaults, **mine})
        used = {f.name for c in sections.values() for f in dataclasses.fields(c)}
        unused = sorted(k for k in given if k not in used)
        if unused and warn_unused:
            flags = ", ".join("--" + k.replace("_", "-") for k in unused)
            warn(f"--model {name} does not use {flags}; ignored")
        run = Run(self.name, sections)
        if validate:
            run.validate()
        return run

    def user_data(self, given: Mapping[str, Any]) -> bool:
        """Whether flags ``given`` train on the user's own data (then the model's ``data_defaults`` apply)."""
        return "data" in given and given["data"] not in self.builtin_data

    def run_from_dict(self, data: dict, where: str) -> Run:
        """The run a ``config.json`` describes (written by :meth:`Run.to_dict`)."""
        if data.get("task") != self.name:
            raise CheckpointError(f"{where}: holds a {data.get('task')} run, not {self.name}")
        sections = {name: config_lib.from_dict(cls, data[name], where=where)
                    for name, cls in self.sections.items() if name in data}
        missing = sorted(set(self.sections) - set(sections) - set(self.families))
        if missing or "model" not in sections:
            raise CheckpointError(f"{where}: no {', '.join(missing or ['model'])} section; it was written by "
                                  "another jaxseq version")
        run = Run(self.name, sections)
        for family in run.spec.sections:
            sections.setdefault(family, self.sections[family]())
        return run

    # -- what each task supplies ----------------------------------------------------------
    @abc.abstractmethod
    def load_data(self, run: Run, vocabs: dict[str, Vocab] | None) -> Any:
        """The data of ``run`` (vocabularies built, or the saved ones); refuses bad data."""

    @abc.abstractmethod
    def vocabs(self, data: Any) -> dict[str, Vocab]:
        """The vocabularies of ``data`` by file name (``vocab_files``)."""

    def check_vocabs(self, vocabs: dict[str, Vocab]) -> None:
        """Refuse vocabularies the task cannot use (e.g. without the specials it needs)."""

    @abc.abstractmethod
    def describe_data(self, data: Any) -> str:
        """One line on the data: its source, sizes and vocabularies."""

    def check_data(self, run: Run, data: Any) -> None:
        """Refuse data too small for the run, before anything is compiled."""

    @abc.abstractmethod
    def data_fingerprint(self, data: Any) -> str:
        """A hash of the token ids read for training and validation (the manifest's ``data``)."""

    def vocab_sizes(self, vocabs: dict[str, Vocab]) -> tuple[int, ...]:
        return tuple(len(vocabs[name]) for name in self.vocab_files)

    @abc.abstractmethod
    def example_batch(self, run: Run) -> dict[str, np.ndarray]:
        """A batch of the training shape (for shapes only)."""

    @abc.abstractmethod
    def train_batches(self, run: Run, data: Any, shard: tuple[int, int] | None = None):
        """The resumable training batch iterator (``shard``: this process's rows of each global batch)."""

    @abc.abstractmethod
    def valid_batches(self, run: Run, data: Any, shard: tuple[int, int] | None = None) -> list | None:
        """The validation batches (None when there is no validation split)."""

    def initial_params(self, run: Run, params: Any, echo: Echo) -> Any:
        """The parameters a new run starts from, given freshly initialised ``params`` (default: those;
        fine-tuning loads pretrained weights here, refusing a mismatch). Not called on resume."""
        return params

    def initial_carry(self, run: Run, model) -> Any:
        """The recurrent state threaded between training batches, or None."""
        return None

    def eval_carry(self, run: Run, model) -> Any:
        """The recurrent state threaded between validation batches, or None (default: as in training)."""
        return self.initial_carry(run, model)

    def extra_eval(self, run: Run, data: Any, model) -> Callable[[Any], dict] | None:
        """Metrics computed at each validation besides the loss (e.g. BLEU), or None."""
        return None

    def describe_steps(self, run: Run, batches, total_steps: int) -> str:
        return f"{total_steps} steps of {run.data.batch_size}"

    def before_training(self, run: Run, data: Any, options: dict, echo: Echo) -> dict:
        """Work done before fitting whose results go into ``results.json`` (e.g. a baseline)."""
        return {}

    def report(self, run: Run, data: Any, model, params, results: dict, mesh, options: dict,
               echo: Echo) -> None:
        """Final scores and samples after training; updates ``results`` in place."""

    def fit_counts(self, run: Run, data: Any, workdir: Workdir, echo: Echo) -> dict:
        """Train a count-based model (``spec.neural`` False); returns the results."""
        raise ConfigError(f"the {self.name} task has no count-based models")


def check_tensor(run: Run) -> None:
    """Refuse a ``--tensor`` the model cannot split (:func:`jaxseq.parallel.check_tensor`)."""
    spec = run.spec
    sizes = spec.tensor_sizes(run) if spec.tensor_sizes is not None else None
    parallel.check_tensor(run.parallel.tensor, sizes, spec.name)


# -- manifests -----------------------------------------------------------------------------

def manifest(run: Run, vocabs: dict[str, Vocab], params: Any, data: str | None) -> Manifest:
    """The manifest of a checkpoint of ``run`` (``params`` may be abstract shapes)."""
    model = {name: config_lib.to_dict(run.sections[name]) for name in ("model",) + run.spec.sections}
    vocab = {k: fp for name, v in vocabs.items() for k, fp in v.fingerprints(name).items()}
    return Manifest(task=run.task, model=model, vocab=vocab, params=tree_signature(params), data=data)


# -- training -------------------------------------------------------------------------------

def _saved_vocabs(task: Task, workdir: Workdir) -> dict[str, Vocab]:
    out = {}
    for name in task.vocab_files:
        path = workdir.file(name)
        if not path.exists():
            raise CheckpointError(f"{path}: missing; the work directory is incomplete")
        out[name] = Vocab.load(path)
    task.check_vocabs(out)
    return out


def train(task: Task, run: Run, workdir: WorkdirLike, *, resume: bool = False, restart: bool = False,
          given: Mapping[str, Any] | None = None, fallback: bool = False, allow_data_change: bool = False,
          echo: Echo = echo_stdout, **options: Any) -> dict:
    """Train ``run`` into ``workdir`` (or continue it with ``resume``); returns the results.

    The work directory is claimed and locked for the whole run (one writer;
    a foreign directory is refused before anything is written). ``restart``
    starts the run in ``workdir`` again from step 0 with ``run``'s settings,
    discarding the old run's own files once the new data has been checked.
    ``given``: the flags given now by field name (on resume they must agree
    with the saved run, except the resumable ones, which update it).
    ``options``: the task's own report options (e.g. the LM's ``baseline``).
    """
    workdir = Workdir.of(workdir)
    if resume and restart:
        raise ConfigError("give --resume (continue the run) or --restart (start it again), not both")
    if not (resume or restart):
        run.validate()
    # a data file is saved by its absolute path: readers may run from another directory
    run = Run(run.task, dict(run.sections, data=dataclasses.replace(
        run.data, data=absolute_data(run.data.data, task.builtin_data))))
    given = dict(given or {})
    if "data" in given:
        given["data"] = absolute_data(given["data"], task.builtin_data)
    parallel.initialize(run.parallel)     # before anything touches a device
    with workdir.lock():
        config = workdir.plan(run.to_dict(), resume=resume, restart=restart, given=given, sections=task.sections)
        run = task.run_from_dict(config, str(workdir.config_path))
        run.validate()
        check_tensor(run)
        if run.train.average_last and not task.scores_params:
            raise ConfigError(f"--average-last is for translation runs (their report scores the average); for a "
                              f"{task.name} run use `jaxseq average --workdir W --last K`")
        vocabs = _saved_vocabs(task, workdir) if resume else None
        data = task.load_data(run, vocabs)            # refuses bad data before anything is written
        echo(f"data: {task.describe_data(data)}")
        task.check_data(run, data)
        if restart:
            workdir.discard_run(task.vocab_files + tuple(tokenizer_file(n) for n in task.vocab_files))
        save_config = lambda: workdir.save_config(config)
        if not (resume and run.spec.neural):
            save_config()
        vocabs = task.vocabs(data)
        if not resume and jax.process_index() == 0:
            for name, vocab in vocabs.items():
                vocab.save(workdir.file(name))
        if not run.spec.neural:
            return task.fit_counts(run, data, workdir, echo)
        return _train_neural(task, run, data, vocabs, workdir, resume=resume, fallback=fallback,
                             allow_data_change=allow_data_change, echo=echo, options=options,
                             restored=save_config if resume else None)


def _train_neural(task: Task, run: Run, data: Any, vocabs: dict[str, Vocab], workdir: Workdir, *, resume: bool,
                  fallback: bool, allow_data_change: bool, echo: Echo, options: dict,
                  restored: Callable[[], None] | None = None) -> dict:
    spec = run.spec
    mesh = parallel.mesh_from_config(run.parallel)
    parallel.check_batch_size(run.data.batch_size, mesh)
    model = spec.build(run, task.vocab_sizes(vocabs))
    batches = task.train_batches(run, data, shard=(jax.process_index(), jax.process_count()))
    total_steps = run.train.total_steps(batches.batches_per_epoch, spec.steps or task.default_steps)
    tx = make_optimizer(run.optim, total_steps)
    state = trainer.create_state(model, tx, task.train_batches(run, data).batch(0, 0), run.train.seed, mesh,
                                 task.initial_carry(run, model),
                                 transform_params=None if resume else lambda p: task.initial_params(run, p, echo))
    eval_carry = task.eval_carry(run, model)          # its own buffers: the train step donates the state's
    eval_carry = None if eval_carry is None else parallel.shard_tree_along_batch(eval_carry, mesh)
    fingerprint = task.data_fingerprint(data)
    expected = manifest(run, vocabs, state.params, None if allow_data_change else fingerprint)
    before = task.before_training(run, data, options, echo)

    checkpointer = Checkpointer(workdir.checkpoints, keep=run.train.keep, keep_best=run.train.keep_best,
                                async_save=run.train.async_checkpoint)
    metrics_log = trainer.MetricsLog(workdir.metrics, jax.process_index() == 0, events=workdir.file("tensorboard"))
    sizes = task.vocab_sizes(vocabs)
    step_flops = (lambda shapes: spec.flops(run, sizes, shapes)) if spec.flops else None
    peak, source = hardware.peak_flops(run.train.dtype, run.train.peak_flops)
    try:
        if resume:
            if checkpointer.latest_step() is None:
                raise CheckpointError(f"{workdir.checkpoints}: no checkpoint to resume from yet; start the run "
                                      "again in place with --restart")
            state, data_state, step = checkpointer.restore(trainer.abstract_state(state), expected,
                                                           fallback=fallback, warn=warn)
            batches.set_state(data_state)
            if restored is not None:
                restored()                  # the amended config.json, now that the checkpoint fits
            metrics_log.truncate_after(step, warn=warn)
            echo(f"resumed from step {step}")
        expected = dataclasses.replace(expected, data=fingerprint)    # what the checkpoints from now on hold
        echo(f"model: {spec.name}, {count_params(state.params):,} parameters; "
             f"{task.describe_steps(run, batches, total_steps)} on {mesh.devices.size} device(s); "
             f"MFU against {peak / 1e12:.4g} TFLOP/s per device ({source})")
        shard = (jax.process_index(), jax.process_count())
        result = trainer.fit(model, state, tx, batches, total_steps=total_steps, config=run.train, mesh=mesh,
                             valid_batches=task.valid_batches(run, data, shard=shard), eval_carry=eval_carry,
                             checkpointer=checkpointer, manifest=expected.to_dict(), metrics_log=metrics_log,
                             extra_eval=task.extra_eval(run, data, model), echo=echo, flops=step_flops,
                             peak_flops=peak, profile_dir=workdir.file("profile"))
    finally:
        checkpointer.close()
        metrics_log.close()

    step = int(jax.device_get(result.state.step))
    results = {"model": spec.name, "step": step, "valid": result.valid, "train_seconds": result.seconds, **before}
    if result.stopped_early:
        results["stopped_early"] = True               # by --patience
    if result.interrupted is not None:
        results["interrupted"] = int(result.interrupted)
        echo(f"stopped by signal {result.interrupted} at step {step}; checkpoint saved; continue with --resume")
        return results
    task.report(run, data, model, result.state.params, results, mesh, options, echo)
    if run.train.average_last > 1:
        _report_average(task, run, data, vocabs, workdir, model, results, mesh, options, echo)
    echo(f"{spec.name}: at step {step} after {result.seconds:.1f}s of training in this run")
    write_results(workdir, results, f"{spec.name} {task.name}")
    echo(f"work directory: {workdir}")
    return results


def _report_average(task: Task, run: Run, data: Any, vocabs: dict[str, Vocab], workdir: Workdir, model,
                    results: dict, mesh, options: dict, echo: Echo) -> None:
    """``--average-last K``: average the last K complete checkpoints (fewer if the run saved fewer; none
    with one) into ``checkpoints/averaged`` and report its scores as ``results["averaged"]``."""
    from jaxseq.averaging import write_average

    available = checkpoint_steps(workdir.checkpoints, complete_only=True)
    if len(available) < 2 or jax.process_count() > 1:
        return
    average = write_average(workdir, task, run, vocabs, last=min(run.train.average_last, len(available)))
    echo(f"averaged the parameters of steps {', '.join(map(str, average['steps']))} (--average-last "
         f"{run.train.average_last}) into {average['path']}")
    scores: dict = {"steps": average["steps"], "valid": None}
    task.report(run, data, model, average["params"], scores, mesh, options, lambda line: echo(f"averaged: {line}"))
    results["averaged"] = {k: v for k, v in scores.items() if v is not None}


def write_results(workdir: Workdir, results: dict, title: str) -> None:
    """``results.json`` and the learning curve ``curve.png`` (process 0 only)."""
    if jax.process_index() != 0:
        return
    workdir.write_json("results.json", results)
    from jaxseq import plots
    plots.learning_curve(workdir.metrics, workdir.file("curve.png"), title=title)


# -- using a trained run ---------------------------------------------------------------------

@dataclasses.dataclass
class Loaded:
    """A trained run: its task, configs, vocabularies, model and parameters (``params`` None for n-grams)."""

    task: Task
    run: Run
    vocabs: dict[str, Vocab]
    model: Any
    params: Any
    step: int | None
    workdir: Workdir


def load_run(workdir: WorkdirLike, task: Task) -> tuple[Run, dict[str, Vocab]]:
    """The run and vocabularies of ``workdir``, which must hold a ``task`` run."""
    workdir = Workdir.of(workdir)
    if not workdir.path.exists():
        raise CheckpointError(f"{workdir.path}: no such work directory; train a model there first")
    run = task.run_from_dict(workdir.config(), str(workdir.config_path))
    return run, _saved_vocabs(task, workdir)


CHECKPOINT_CHOICES = ("latest", "best", "averaged")
_KEPT = {"best": ("best", "train with --keep-best"),
         "averaged": ("averaged", "write one with `jaxseq average --workdir W --last K`")}


def checkpoint_location(workdir: Workdir, checkpoint: str | None) -> tuple[Any, int | None]:
    """``(directory, step or None)`` of ``--checkpoint``: latest (default: the newest complete step),
    best (``checkpoints/best``, kept by ``--keep-best``), averaged (``checkpoints/averaged``, written by
    ``jaxseq average``) or a step number."""
    if checkpoint in (None, "latest"):
        return workdir.checkpoints, None
    if checkpoint in _KEPT:
        folder, how = _KEPT[checkpoint]
        directory = workdir.checkpoints / folder
        if not directory.is_dir():
            raise CheckpointError(f"{directory}: no {checkpoint} checkpoint in this run; {how}")
        return directory, None
    if str(checkpoint).isdigit():
        steps = checkpoint_steps(workdir.checkpoints, complete_only=True)
        if int(checkpoint) not in steps:
            raise CheckpointError(f"{workdir.checkpoints}: no complete checkpoint at step {checkpoint}; the run "
                                  f"has {', '.join(map(str, steps)) or 'none'}")
        return workdir.checkpoints, int(checkpoint)
    raise ConfigError(f"--checkpoint must be one of {', '.join(CHECKPOINT_CHOICES)} or a step number, "
                      f"got {checkpoint!r}")


def abstract_run_state(task: Task, run: Run, vocabs: dict[str, Vocab]) -> tuple[Any, Any]:
    """``(model, abstract TrainState)`` of a saved run on one device (shapes only; nothing computed)."""
    model = run.spec.build(run, task.vocab_sizes(vocabs))
    tx = make_optimizer(run.optim, 1)
    return model, trainer.state_shapes(model, tx, task.example_batch(run), 0, parallel.make_mesh(1),
                                       task.initial_carry(run, model))


def load(workdir: WorkdirLike, task: Task, *, data_fingerprint: str | None = None,
         checkpoint: str | None = None) -> Loaded:
    """The newest complete checkpoint of ``workdir`` (read-only), or its n-gram model.

    ``data_fingerprint``: also refuse a checkpoint trained on other data.
    ``checkpoint``: which one (:func:`checkpoint_location`; default the newest).
    """
    workdir = Workdir.of(workdir)
    run, vocabs = load_run(workdir, task)
    spec = run.spec
    if not spec.neural:
        return Loaded(task, run, vocabs, spec.load(workdir.file("model.npz")), None, None, workdir)
    directory, step = checkpoint_location(workdir, checkpoint)
    model, abstract = abstract_run_state(task, run, vocabs)
    expected = manifest(run, vocabs, abstract.params, data_fingerprint)
    ckpt = Checkpointer(directory, read_only=True)
    try:
        state, _, step = ckpt.restore(abstract, expected, step=step)
    finally:
        ckpt.close()
    return Loaded(task, run, vocabs, model, state.params, step, workdir)


def absolute_data(spec: str, names: tuple[str, ...]) -> str:
    """``spec`` as an absolute path when it names an existing file (not one of the built-in ``names``)."""
    if spec not in names and os.path.exists(spec):
        return os.path.abspath(spec)
    return spec
