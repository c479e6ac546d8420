"""TensorBoard event files beside ``metrics.jsonl``, written with tensorboardX (no TensorFlow).

``tensorboard --logdir runs/`` then shows every run's scalars: ``train/loss``,
``train/perplexity``, ``train/learning_rate``, ``val/perplexity``, ``val/CIDEr-D``, ...
"""

from __future__ import annotations

from collections.abc import Mapping


class TensorBoardLog:
    """Scalars as TensorBoard events in ``logdir``; writes nothing when not ``enabled``.

    ``resume_step`` (the step a resumed run continues after) makes TensorBoard drop the
    events a killed run had logged after that step, so the curves are those of one run.
    """

    def __init__(self, logdir: str, enabled: bool = True, resume_step: int | None = None):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(logdir=logdir, purge_step=purge, flush_secs=30)

    def write(self, step: int, prefix: str, values: Mapping[str, float]) -> None:
        """Logs each value of ``values`` (NaN included) as the scalar ``prefix/name``."""
        if self._writer is None:
            return
        for name, value in values.items():
            if value is not None:
                self._writer.add_scalar(f"{prefix}/{name}", float(value), int(step))

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
