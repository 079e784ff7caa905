"""The high-level Python entry points: train a task with flags as keywords, load a trained run.

    import jaxseq
    results = jaxseq.fit("lm", model="gru", hidden=128, steps=200, workdir="runs/api")
    print(results["valid"]["perplexity"])
    run = jaxseq.load("runs/api")
    print(run.generate("The ", 40), run.log_prob("The class"))

Keywords are the command line's flags by field name (``--seq-len`` ->
``seq_len``); unset ones take the model's registered defaults, as on the
command line, and every setting is saved in the run's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any, Callable

from jaxseq.errors import ConfigError
from jaxseq.tasks import runner
from jaxseq.workdir import Workdir, default_workdir

TASKS = ("lm", "translate", "mlm", "classify")


def _task(name: str) -> runner.Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return importlib.import_module(f"jaxseq.tasks.{name}").TASK


def fit(task: str, *, workdir: str | os.PathLike | None = None, resume: bool = False, restart: bool = False,
        fallback: bool = False, allow_data_change: bool = False,
        echo: Callable[[str], None] | None = runner.echo_stdout, **flags: Any) -> dict:
    """Train a ``task`` (``"lm"``, ``"translate"``, ``"mlm"`` or ``"classify"``) model into ``workdir``; returns ``results.json``'s dict.

    ``flags`` are the CLI's flags by field name (``model="lstm",
    hidden=128, steps=500``); ``resume``, ``restart``, ``fallback`` and
    ``allow_data_change`` are the CLI's switches of those names. LM runs
    also take ``baseline`` and ``sample_length``.
    """
    job = _task(task)
    options = {k: flags.pop(k) for k in ("baseline", "sample_length") if k in flags and job.name == "lm"}
    run = job.resolve(flags, warn_unused=not resume, validate=not (resume or restart))
    path = Path(workdir) if workdir is not None else default_workdir(job.name, run.model.model)
    return runner.train(job, run, Workdir(path), resume=resume, restart=restart, given=flags, fallback=fallback,
                        allow_data_change=allow_data_change, echo=echo or (lambda m: None), **options)


@dataclasses.dataclass
class Trained:
    """A trained run, loaded read-only: its configs, vocabularies, model and parameters.

    ``model`` is the Linen module (or the fitted n-gram model, with
    ``params`` None); ``run.data``, ``run.model``, ``run.train`` ... are the
    saved configs.
    """

    loaded: runner.Loaded

    @property
    def run(self) -> runner.Run:
        return self.loaded.run

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def params(self) -> Any:
        return self.loaded.params

    @property
    def vocab(self):
        """The vocabulary (a translation run: the target vocabulary; ``vocabs`` has both)."""
        return self.loaded.vocabs[self.loaded.task.vocab_files[-1]]

    @property
    def vocabs(self) -> dict:
        return self.loaded.vocabs

    @property
    def step(self) -> int | None:
        return self.loaded.step

    def _lm_only(self, what: str) -> None:
        if self.run.task != "lm":
            raise ConfigError(f"{what} needs a language-model run; {self.loaded.workdir} holds a {self.run.task} run")

    def log_prob(self, text: str) -> float:
        """``log P(x_2 .. x_N | x_1)`` in nats: the sum of the model's next-token log-probabilities over ``text``.

        The first token is given (not scored); unknown tokens become ``<unk>``.
        Scored in windows of the run's ``--seq-len`` with the state carried
        (recurrent models) or restarted per window.
        """
        self._lm_only("log_prob")
        from jaxseq.tasks import lm
        result = lm.score_ids(self.loaded, lm.encode_text(self.run, self.vocab, text, "text"))
        return -result["nll"] * result["tokens"]

    def generate(self, prefix: str, length: int, *, seed: int = 0, temperature: float = 1.0,
                 top_k: int = 0) -> str:
        """``prefix`` and ``length`` sampled tokens, as text (``temperature`` 0: greedy)."""
        self._lm_only("generate")
        from jaxseq.tasks import lm
        return lm.sample_text(self.loaded, prefix, length, seed=seed, temperature=temperature, top_k=top_k)

    def translate(self, sentences: list[str], *, beam: int = 1, alpha: float = 0.6) -> list[str]:
        """One translation per sentence (greedy, or beam search with ``beam`` > 1)."""
        if self.run.task != "translate":
            raise ConfigError(f"translate needs a translation run; {self.loaded.workdir} holds a {self.run.task} run")
        from jaxseq.tasks import translate
        return translate.translate_loaded(self.loaded, sentences, beam=beam, alpha=alpha)


def load(workdir: str | os.PathLike) -> Trained:
    """The run in ``workdir``, read-only (safe while a trainer writes there)."""
    wd = Workdir(workdir)
    return Trained(runner.load(wd, _task(wd.require_any())))


__all__ = ["fit", "load", "Trained"]
