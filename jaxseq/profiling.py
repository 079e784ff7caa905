"""``--profile START:STOP``: a ``jax.profiler`` trace of a window of training steps.

The trace covers the train-step calls that take the run from step ``START``
to step ``STOP`` (``10:15`` traces updates 11 to 15), each annotated with
``jax.profiler.StepTraceAnnotation("train", step_num=s)`` so XProf's step
views split the trace by step. It is written under ``<workdir>/profile/``
(``plugins/profile/<time>/``: the ``.xplane.pb`` that TensorBoard's profile
plugin / XProf read, and ``perfetto_trace.json.gz`` for ui.perfetto.dev).
``--profile-host`` adds Python function tracing to the host trace.

The window costs one device sync, at its end (so the trace holds the
window's device work); nothing changes outside it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ContextManager

import jax

from jaxseq.errors import ConfigError


def parse_window(text: str) -> tuple[int, int]:
    """``"START:STOP"`` -> ``(START, STOP)`` with ``0 <= START < STOP``; else a one-line ConfigError."""
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, stop = int(parts[0]), int(parts[1])
    except ValueError:
        raise ConfigError(f"--profile must be START:STOP (two step numbers, e.g. 10:15), got {text!r}") from None
    if not 0 <= start < stop:
        raise ConfigError(f"--profile START:STOP needs 0 <= START < STOP, got {text!r}")
    return start, stop


class StepProfiler:
    """Starts and stops the trace around the window's steps; annotates each step in it.

    ``before(step)`` is called with the number of steps done before a call,
    ``after(step, state)`` with the number done after it.
    """

    def __init__(self, window: str | None, log_dir: Path | None, host: bool = False):
        self.window = parse_window(window) if window and log_dir is not None else None
        self.log_dir, self.host = log_dir, host
        self.active = False

    def before(self, step: int) -> None:
        if self.window and not self.active and self.window[0] <= step < self.window[1]:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            options = jax.profiler.ProfileOptions()
            options.python_tracer_level = 1 if self.host else 0     # Python function calls
            options.host_tracer_level = 3 if self.host else 2       # host events: verbose / XLA's own
            jax.profiler.start_trace(str(self.log_dir), create_perfetto_trace=True, profiler_options=options)
            self.active = True

    def annotate(self, step: int) -> ContextManager:
        """The annotation of the call that makes update ``step + 1`` (nothing outside the window)."""
        if not self.active:
            return contextlib.nullcontext()
        return jax.profiler.StepTraceAnnotation("train", step_num=step + 1)

    def after(self, step: int, state: Any) -> None:
        if self.active and step >= self.window[1]:
            self.stop(state)

    def stop(self, state: Any) -> None:
        """End the trace (if one runs) once ``state``'s computation has finished."""
        if self.active:
            self.active = False
            self.window = None
            try:
                jax.block_until_ready(state)    # may raise: a failed step, or buffers donated to the next
            except Exception:                   # noqa: BLE001 - the trace must end whatever the state
                pass
            finally:
                jax.profiler.stop_trace()
