"""Frozen-dataclass configs and the argparse flags built from them.

Each configurable part of jaxseq declares a frozen dataclass next to its code.
Every field becomes a command-line flag (``seq_len`` -> ``--seq-len``), so every
hyperparameter is a flag and is saved with each run (``config.json``).

Field metadata understood here:

``help``     text for ``--help``
``choices``  allowed values
``flag``     the flag name, when it is not derived from the field name
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

from jaxseq.errors import ConfigError

T = TypeVar("T")


def option(default: Any, help: str, *, choices: typing.Sequence[Any] | None = None,
           flag: str | None = None) -> Any:
    """A dataclass field with the metadata the CLI needs."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if flag is not None:
        meta["flag"] = flag
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


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
                  exclude: typing.Iterable[str] = (), defaults: dict[str, Any] | None = None) -> None:
    """Add one flag per field of the dataclass ``cls``.

    Defaults are taken from the dataclass (or ``defaults``); ``bool`` fields
    become ``--flag/--no-flag`` switches. The parsed attribute is the field name.
    """
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    own = set(vars(cls).get("__annotations__", {}))
    fields = sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)   # inherited options last
    for field in fields:
        if field.name in exclude:
            continue
        default = defaults.get(field.name, field.default)
        scalar, optional = _base_type(hints[field.name])
        kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS,
                                  "help": f"{field.metadata.get('help', '')} (default: {default})"}
        if scalar is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _parse_optional(scalar) if optional else scalar
            if "choices" in field.metadata:
                kwargs["choices"] = field.metadata["choices"]
            kwargs["metavar"] = field.name.upper()
        parser.add_argument(flag_name(field), **kwargs)


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from the flags the user gave (others keep their defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    given.update(overrides)
    return cls(**given)


def given_flags(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """Only the fields of ``cls`` that appear on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
    """Rebuild a config saved by :func:`to_dict`; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown {cls.__name__} field(s) {', '.join(unknown)}; "
                          "was it written by another jaxseq version?")
    return cls(**data)


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False)
