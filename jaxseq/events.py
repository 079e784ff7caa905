"""TensorBoard event files that mirror ``metrics.jsonl`` (with the optional extra ``jaxseq[tensorboard]``).

``metrics.jsonl`` stays the record (:mod:`jaxseq.metrics_log`); each record
written there is also written here, every number in it as the scalar
``<split>/<key>`` at its ``step`` (``train/loss``, ``train/mfu``,
``valid/perplexity`` ...), through tensorboardX's ``SummaryWriter``. A
resumed run starts its file with a purge at the restored step, so
TensorBoard drops the old run's points after it (as the resume drops them
from ``metrics.jsonl``); a restarted run purges from step 0.
"""

from __future__ import annotations

import numbers
from pathlib import Path


def available() -> bool:
    import importlib.util
    return importlib.util.find_spec("tensorboardX") is not None


class EventWriter:
    """Writes records as scalars into ``log_dir`` (a TensorBoard run directory)."""

    def __init__(self, log_dir: Path, purge_step: int = 0):
        from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def write(self, record: dict) -> None:
        step, split = int(record["step"]), record.get("split", "train")
        for key, value in record.items():
            if key in ("step", "split") or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            self.writer.add_scalar(f"{split}/{key}", float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
