"""The model registry: what each model is and what it can do.

A model is registered once, next to its code, as a :class:`ModelSpec`: its
name within a task, the config sections of its family (besides the task's
common ``model`` section), a build function, defaults that train well, and
its capabilities. Tasks, the runner and the CLI ask a spec's capabilities;
they never compare model names or classes.

Capabilities:

``neural``             trained by the one trainer (else count-based: ``fit``)
``carries_state``      a recurrent state can be carried between batches
                       (``--sampling sequential``; ``initial_carry``)
``cross_attention``    sows encoder-decoder attention weights (heatmaps)
``layered_attention``  sows every layer's and head's attention (grids)
``decode_cache``       decodes with a key/value cache of bounded length
``tuned_allocator``    trains faster with :func:`jaxseq.keep_freed_memory`
``tensor_sizes``       the sizes tensor parallelism splits, ``tensor_sizes(run)``
                       -> ``{"--heads": H, "--ffn": F}`` (``--tensor`` must divide
                       each); None: the model has no tensor-parallel axes
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from jaxseq.errors import ConfigError

# the modules that register models, imported on first use of the registry
_MODULES = ("jaxseq.models.ngram_lm", "jaxseq.models.lm", "jaxseq.models.minrnn", "jaxseq.models.transformer_lm",
            "jaxseq.models.seq2seq", "jaxseq.models.bert")


@dataclass(frozen=True)
class ModelSpec:
    """One model of one task.

    ``build(run, vocab_sizes)`` returns the Linen module (``run`` is the
    task's :class:`jaxseq.tasks.runner.Run`); a count-based model has
    ``fit(run, train_ids, vocab_size)`` and ``load(path)`` instead.
    ``defaults`` maps a config section to the field values this model
    trains well with (they replace the dataclass defaults; a flag the user
    gives always wins); ``steps`` is the run length when neither ``--steps``
    nor ``--epochs`` is given. ``data_defaults(given)`` returns more defaults
    (section -> field -> value) for a run on the user's own data (a file, not
    a built-in task), given the flags the user gave by field name: the
    settings a real corpus needs (batch by tokens, hold out counts, train to
    the time limit) that would be wrong for a built-in toy task. They sit
    between ``defaults`` and the flags. ``flops(run, vocab_sizes, shapes)`` is the
    analytic FLOP count of one training step on a batch whose entries have
    ``shapes`` (a :class:`jaxseq.flops.StepFlops`; conventions in
    :mod:`jaxseq.flops`), None for a count-based model.
    """

    task: str
    name: str
    description: str
    sections: tuple[str, ...] = ()
    build: Callable[..., Any] | None = None
    fit: Callable[..., Any] | None = None
    load: Callable[..., Any] | None = None
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    steps: int | None = None
    data_defaults: Callable[[Mapping[str, Any]], Mapping[str, Mapping[str, Any]]] | None = None
    flops: Callable[..., Any] | None = None
    neural: bool = True
    carries_state: bool = False
    cross_attention: bool = False
    layered_attention: bool = False
    decode_cache: bool = False
    tuned_allocator: bool = False
    tensor_sizes: Callable[[Any], dict[str, int]] | None = None


_REGISTRY: dict[tuple[str, str], ModelSpec] = {}
_loaded = False


def register(spec: ModelSpec) -> ModelSpec:
    key = (spec.task, spec.name)
    if key in _REGISTRY and _REGISTRY[key] != spec:
        raise ValueError(f"model {spec.name!r} of task {spec.task!r} is registered twice")
    _REGISTRY[key] = spec
    return spec


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in _MODULES:
            importlib.import_module(module)
        _loaded = True


def names(task: str) -> tuple[str, ...]:
    """The models of ``task``, in registration order."""
    _load()
    return tuple(name for (t, name) in _REGISTRY if t == task)


def get(task: str, name: str) -> ModelSpec:
    """The spec of model ``name`` of ``task``; an unknown name is a one-line ConfigError."""
    _load()
    try:
        return _REGISTRY[(task, name)]
    except KeyError:
        raise ConfigError(f"--model must be one of {', '.join(names(task))} for {task}, got {name!r}") from None


def specs(task: str) -> tuple[ModelSpec, ...]:
    return tuple(get(task, name) for name in names(task))
