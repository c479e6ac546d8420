"""TensorBoard event files beside ``metrics.jsonl``, written with tensorboardX (no TensorFlow).

``tensorboard --logdir runs/`` then shows every run's scalars: ``train/loss``,
``train/perplexity``, ``train/learning_rate``, ``val/perplexity``, ``val/CIDEr-D``, ...

The events hold the same scalars as ``metrics.jsonl``, which a resumed run keeps equal to an
uninterrupted run's. So a run that starts (or resumes) writes one new event file that first
replays the rows of ``metrics.jsonl`` it continues, then removes the event files of the runs
before it: after any sequence of kills, TensorBoard shows each step once, as an
uninterrupted run logged it, from one file. (Events are buffered: a kill loses the last
seconds of them, and the next start writes them again from ``metrics.jsonl``.)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Mapping

from mrnn_jax.run_dir import RunDir

# Keys of a metrics.jsonl row that are not scalars.
ROW_KEYS = ("step", "split", "time")


def summary_writer_class() -> type:
    """tensorboardX's ``SummaryWriter``, imported without importing PyTorch.

    tensorboardX imports ``torch`` whenever it is installed (the project's dev environment
    has it, for the reference benchmarks) only to accept torch tensors; that import is about
    1.5 s of every training process's start. Scalars need none of it, so while tensorboardX
    loads, ``import torch`` fails and it falls back to NumPy. A process that has already
    imported torch (or tensorboardX) gets the module as it is.
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class TensorBoardLog:
    """Scalars as TensorBoard events in ``logdir``; writes nothing when not ``enabled``.

    :meth:`start` opens the run's event file, replaying the rows the run continues.
    """

    def __init__(self, logdir: str, enabled: bool = True):
        self.logdir = logdir
        self.enabled = enabled
        self._writer = None

    def start(self, rows: Iterable[Mapping] = ()) -> None:
        """Opens a new event file holding ``rows`` (``metrics.jsonl``'s rows that the run
        continues), then removes older event files (see the module's docstring)."""
        if not self.enabled:
            return
        before = RunDir.at(self.logdir).event_files()
        # A suffix of its own: a new file never reuses (and truncates) an old file's name.
        suffix = f".{os.getpid()}.{os.urandom(4).hex()}"
        writer = summary_writer_class()
        self._writer = writer(logdir=self.logdir, flush_secs=30, filename_suffix=suffix)
        for row in rows:
            values = {k: v for k, v in row.items() if k not in ROW_KEYS}
            self.write(row["step"], row["split"], values, walltime=row.get("time"))
        self._writer.flush()
        for path in before:  # the new file holds all they held that still counts
            with contextlib.suppress(OSError):
                os.remove(path)

    def write(
        self,
        step: int,
        prefix: str,
        values: Mapping[str, float | None],
        walltime: float | None = None,
    ) -> None:
        """Logs each value of ``values`` (NaN included, None skipped) as ``prefix/name``."""
        if self._writer is None:
            return
        for name, value in values.items():
            if value is not None:
                self._writer.add_scalar(
                    f"{prefix}/{name}", float(value), int(step), walltime=walltime
                )

    def flush(self) -> None:
        """Writes the buffered events to the file."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
