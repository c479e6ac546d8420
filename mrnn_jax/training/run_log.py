"""A run's scalars: ``metrics.jsonl`` and TensorBoard behind one ``write(step, prefix, scalars)``.

``metrics.jsonl`` is the record (kept equal to an uninterrupted run's on resume, see
:mod:`mrnn_jax.training.metrics_log`); TensorBoard's event file is rebuilt from it at every
start (see :mod:`mrnn_jax.training.tensorboard`).
"""

from __future__ import annotations

from collections.abc import Mapping

from mrnn_jax.run_dir import RunDir
from mrnn_jax.training.metrics_log import MetricsLog
from mrnn_jax.training.tensorboard import TensorBoardLog


class RunLog:
    """The logs of the run in ``run``; only the process that is ``enabled`` writes files."""

    def __init__(self, run: RunDir, enabled: bool = True):
        self.metrics = MetricsLog(run.path, enabled=enabled)
        self.tensorboard = TensorBoardLog(run.path, enabled=enabled)

    @property
    def history(self) -> list[dict]:
        """Every row so far, those of the runs this one resumes included."""
        return self.metrics.history

    @property
    def rows(self) -> int:
        """How many rows :attr:`history` holds."""
        return self.metrics.rows

    def start(self, saved: list[dict] | int | None, step: int) -> None:
        """Continues the rows of the checkpoint at ``step`` (``saved``: its copy of them, see
        :meth:`MetricsLog.start`), and opens TensorBoard with the same rows."""
        self.metrics.start(saved, step)
        self.tensorboard.start(self.metrics.history)

    def write(self, step: int, prefix: str, scalars: Mapping[str, float | None]) -> None:
        """Logs ``scalars`` (None values left out) as ``prefix/name`` at ``step``."""
        values = {k: v for k, v in scalars.items() if v is not None}
        self.metrics.write(step, prefix, values)
        self.tensorboard.write(step, prefix, values)

    def restore(self, expected: list[dict]) -> None:
        """Puts back a finished run's rows where ``metrics.jsonl`` lost some."""
        self.metrics.restore(expected)

    def close(self) -> None:
        """Flushes and closes TensorBoard's file (``metrics.jsonl`` is synced row by row)."""
        self.tensorboard.close()
