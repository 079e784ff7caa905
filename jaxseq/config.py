"""Frozen-dataclass configs, the rules on their fields, and the argparse flags built from them.

Each configurable part of jaxseq declares a frozen dataclass next to its code.
Every field becomes a command-line flag (``seq_len`` -> ``--seq-len``), so every
hyperparameter is a flag and is saved with each run (``config.json``).

The rules of a field are declared once, on the field, with :func:`option`:

``help``       text for ``--help``
``choices``    allowed values
``minimum``    smallest allowed value (``value >= minimum``)
``above``      exclusive lower bound (``value > above``)
``below``      exclusive upper bound (``value < below``)
``maximum``    largest allowed value (``value <= maximum``)
``resumable``  the setting may change when a run is resumed (run length and logistics)
``excludes``   another field this one replaces when given (``--epochs`` clears ``--steps``)
``governs``    the section's other settings depend on this one: when the user gives it, a model's
               registered defaults for that section are not applied (``--optimizer``)
``flag``       the flag name, when it is not derived from the field name
``aliases``    further flag names accepted for the field (an older name kept working)

:func:`check_fields` checks every field of a config against them (``None`` is
allowed where the type is optional) and writes the flag's name in the error;
every config derives from :class:`Config`, whose ``validate()`` calls it
and then the config's own ``check()``: only the rules that tie several
fields together.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
import types
import typing
from typing import Any, Mapping, TypeVar

from jaxseq.errors import ConfigError

T = TypeVar("T")


def option(default: Any, help: str, *, choices: typing.Sequence[Any] | None = None, flag: str | None = None,
           minimum: float | None = None, above: float | None = None, below: float | None = None,
           maximum: float | None = None, resumable: bool = False, excludes: str | None = None,
           governs: bool = False, legacy: Any = dataclasses.MISSING, aliases: typing.Sequence[str] = ()) -> Any:
    """A dataclass field with its help, its rules and the metadata the CLI needs.

    ``legacy``: the value a saved config that predates the field meant (when
    it differs from today's default), filled in by :func:`from_dict`; a
    callable gets the saved section's dict and returns that value.
    """
    meta: dict[str, Any] = {"help": help, "resumable": resumable, "governs": governs}
    if aliases:
        meta["aliases"] = tuple(aliases)
    if legacy is not dataclasses.MISSING:
        meta["legacy"] = legacy
    for key, value in (("choices", None if choices is None else tuple(choices)), ("flag", flag), ("excludes", excludes),
                       ("minimum", minimum), ("above", above), ("below", below), ("maximum", maximum)):
        if value is not None:
            meta[key] = value
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def _number(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _range_text(meta: dict) -> str:
    """``at least 1``, ``in [0, 1)``, ``> 0`` ... from a field's bounds."""
    low = ("[", meta["minimum"]) if "minimum" in meta else ("(", meta["above"]) if "above" in meta else None
    high = ("]", meta["maximum"]) if "maximum" in meta else (")", meta["below"]) if "below" in meta else None
    if low and high:
        return f"lie in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f"be at least {_number(low[1])}" if low[0] == "[" else f"be greater than {_number(low[1])}"
    return f"be at most {_number(high[1])}" if high[0] == "]" else f"be less than {_number(high[1])}"


def _in_range(value: Any, meta: dict) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return (("minimum" not in meta or value >= meta["minimum"]) and ("above" not in meta or value > meta["above"])
            and ("maximum" not in meta or value <= meta["maximum"]) and ("below" not in meta or value < meta["below"]))


def check_fields(config: Any) -> None:
    """Raise ConfigError (naming the flag) for the first field that breaks its declared rules."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, meta = getattr(config, field.name), field.metadata
        scalar, optional = _base_type(hints[field.name])
        if value is None:
            if optional:
                continue
            raise ConfigError(f"{flag_name(field)} needs a value")
        if scalar in (int, float) and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise ConfigError(f"{flag_name(field)} must be a number, got {value!r}")
        if scalar is int and not float(value).is_integer():
            raise ConfigError(f"{flag_name(field)} must be an integer, got {value!r}")
        if "choices" in meta and value not in meta["choices"]:
            raise ConfigError(f"{flag_name(field)} must be one of {', '.join(map(str, meta['choices']))}, "
                              f"got {value!r}")
        if any(k in meta for k in ("minimum", "above", "below", "maximum")) and not _in_range(value, meta):
            raise ConfigError(f"{flag_name(field)} must {_range_text(meta)}, got {_number(value)}")


class Config:
    """Base of every config dataclass: ``validate()`` checks the fields' declared rules, then ``check()``.

    A subclass overrides :meth:`check` only for rules that tie several fields together.
    """

    def validate(self) -> None:
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Rules across fields (none by default)."""

    def check_run(self, run: Any) -> None:
        """Rules against the run's other sections (``Run.validate`` calls it; none by default), e.g.
        ``--attention-impl`` against ``--dtype`` and ``--dropout``."""


def plain(value: Any, scalar: type) -> Any:
    """``value`` as the plain Python type of its field: ``128.0`` -> ``128`` for an int field, NumPy
    scalars -> Python numbers (what ``config.json`` can hold); anything else unchanged."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if scalar is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if scalar is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def field_types(cls: type) -> dict[str, type]:
    """Each field's scalar type (``int`` for ``int | None``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name])[0] for f in dataclasses.fields(cls)}


def field_metadata(cls: type, name: str) -> Mapping[str, Any]:
    """The :func:`option` metadata of field ``name`` of the dataclass ``cls``."""
    return {f.name: f for f in dataclasses.fields(cls)}[name].metadata


def resumable_flags(classes: typing.Iterable[type]) -> list[str]:
    """The flags of ``classes`` that a resume may change (for documentation and errors)."""
    return sorted({flag_name(f) for cls in classes for f in dataclasses.fields(cls) if f.metadata.get("resumable")})


def _base_type(tp: Any) -> tuple[type, bool]:
    """Return (scalar type, optional?) for ``int``, ``float | None``, ``str`` ..."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_optional(scalar: type):
    def parse(text: str):
        if text.lower() in ("none", "null", ""):
            return None
        return scalar(text)
    parse.__name__ = scalar.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                  exclude: typing.Iterable[str] = (), per_model: dict[str, list[str]] | None = None,
                  extra: dict[str, dict[str, Any]] | None = None) -> None:
    """Add one flag per field of the dataclass ``cls`` (except the fields named in ``exclude``).

    Defaults are the dataclass's; ``per_model`` lists, by field, the models
    whose registered defaults differ (shown in ``--help``); ``extra`` adds
    argparse keywords by field. ``bool`` fields become ``--flag/--no-flag``
    switches. Only flags the user gives appear in the parsed namespace (the
    attribute is the field name), so an explicit flag can always be told
    from a default.
    """
    hints = typing.get_type_hints(cls)
    per_model, extra = per_model or {}, extra or {}
    own = set(vars(cls).get("__annotations__", {}))
    fields = sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)   # inherited options last
    for field in fields:
        if field.name in exclude:
            continue
        scalar, optional = _base_type(hints[field.name])
        shown = f"default: {field.default}"
        if field.name in per_model:
            shown += "; " + ", ".join(per_model[field.name])
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS,
                                  "help": f"{field.metadata.get('help', '')} ({shown})"}
        if scalar is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _parse_optional(scalar) if optional else scalar
            if "choices" in field.metadata:
                kwargs["choices"] = field.metadata["choices"]
            kwargs["metavar"] = field.name.upper()
        kwargs.update(extra.get(field.name, {}))
        parser.add_argument(flag_name(field), *field.metadata.get("aliases", ()), **kwargs)


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from the flags the user gave (others keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    given.update(overrides)
    return cls(**given)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
    """Rebuild a config saved by :func:`to_dict`; unknown keys are an error.

    A field the saved config lacks takes its ``legacy`` value (what configs
    written before the field existed meant), else its default.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown {cls.__name__} field(s) {', '.join(unknown)}; "
                          "was it written by another jaxseq version?")
    legacy = {f.name: f.metadata["legacy"](data) if callable(f.metadata["legacy"]) else f.metadata["legacy"]
              for f in dataclasses.fields(cls) if "legacy" in f.metadata and f.name not in data}
    return cls(**{**legacy, **data})


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
