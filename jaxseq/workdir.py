"""A run's working directory: everything needed to resume, evaluate or decode.

    WORKDIR/
      config.json     every setting of the run (task, data, model, optimizer, training)
      vocab.json      the vocabulary (translation: src_vocab.json and tgt_vocab.json)
      metrics.jsonl   one JSON object per log line (step, split, loss, perplexity, ...)
      checkpoints/    Orbax checkpoints (neural models)
      model.npz       the n-gram model
      results.json    the final validation results
      curve.png       the learning curve
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from jaxseq.config import dumps, field_metadata, resumable_flags
from jaxseq.errors import CheckpointError, ConfigError


def _is_writer() -> bool:
    """Only process 0 of a multi-host run writes the shared files."""
    import jax
    return jax.process_index() == 0


def merge_resumed(saved: dict, given: dict[str, Any], sections: dict[str, type]) -> dict:
    """``saved`` (a config.json) updated with the flags ``given`` now, by field name.

    A flag whose field is declared ``resumable`` (see :func:`jaxseq.config.option`)
    replaces the saved value (and clears the field its ``excludes`` names:
    ``--epochs`` replaces ``--steps``); any other flag must equal it.
    """
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for name, value in given.items():
        homes = [s for s, cls in sections.items() if s in merged and name in {f.name for f in fields(cls)}]
        flag = "--" + name.replace("_", "-")
        if not homes:
            raise ConfigError(f"{flag} is not a setting of the run being resumed (a "
                              f"{saved.get('model', {}).get('model')} model); drop the flag")
        for section in homes:
            old, meta = merged[section].get(name), field_metadata(sections[section], name)
            if meta.get("resumable"):
                merged[section][name] = value
                if meta.get("excludes") and value is not None:
                    merged[section][meta["excludes"]] = None
            elif old != value:
                raise ConfigError(f"{flag} {value} differs from the run being resumed ({old}); only "
                                  f"{', '.join(resumable_flags(sections.values()))} may change on --resume; "
                                  "drop the flag or use a new --workdir")
    return merged


def default_workdir(task: str, model: str) -> Path:
    return Path("runs") / f"{task}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


class Workdir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    # -- paths ----------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.file("config.json")

    @property
    def checkpoints(self) -> Path:
        return self.file("checkpoints")

    @property
    def metrics(self) -> Path:
        return self.file("metrics.jsonl")

    # -- reading and writing ----------------------------------------------------
    def exists(self) -> bool:
        return self.config_path.exists()

    def write_json(self, name: str, data: Any) -> None:
        """Write atomically (a temporary file renamed into place), on process 0 only."""
        if not _is_writer():
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.path)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(dumps(data) + "\n")
        os.replace(tmp, self.file(name))

    def read_json(self, name: str) -> Any:
        path = self.file(name)
        if not path.exists():
            raise CheckpointError(f"{path}: missing; is {self.path} a jaxseq work directory?")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: damaged ({err}); the run cannot be read") from None

    def config(self) -> dict:
        config = self.read_json("config.json")
        if not isinstance(config, dict) or "task" not in config:
            raise CheckpointError(f"{self.config_path}: not a jaxseq run configuration")
        return config

    def require_any(self) -> str:
        """The task of the run in this directory."""
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such work directory; train a model there first")
        return self.config()["task"]

    def require(self, task: str) -> dict:
        """The run's config, which must be of ``task``."""
        if not self.path.exists():
            raise CheckpointError(f"{self.path}: no such work directory; train a model there first")
        config = self.config()
        if config["task"] != task:
            raise CheckpointError(f"{self.path}: holds a {config['task']} run, not {task}; "
                                  "pick the right --workdir")
        return config

    def plan(self, config: dict, *, resume: bool, given: dict[str, Any] | None = None,
             sections: dict[str, type] | None = None) -> dict:
        """The config a new or resumed run will use; checks, but writes nothing.

        A new run refuses a directory that already holds one. On ``resume``
        the saved config wins; the flags given now (``given``, by field name)
        must agree with it except those declared ``resumable`` on their field
        (run length and logistics), which are updated. ``sections`` maps
        each section name of the config to its dataclass. Write the result
        with :meth:`save_config` once the data and model have been checked,
        so a refused run leaves nothing behind.
        """
        if not resume:
            if _is_writer() and self.exists():
                old = self.config()
                raise CheckpointError(
                    f"{self.path}: already holds a {old['task']} run (model {old.get('model', {}).get('model')}); "
                    "add --resume to continue it, --restart to start it again, or choose a new --workdir")
            return config
        if not self.exists():
            raise CheckpointError(f"{self.path}: nothing to resume (no config.json); train without --resume first")
        saved = self.config()
        if saved["task"] != config["task"]:
            raise CheckpointError(f"{self.path}: holds a {saved['task']} run, not {config['task']}")
        return merge_resumed(saved, given or {}, sections or {})

    def save_config(self, config: dict) -> None:
        self.write_json("config.json", config)
