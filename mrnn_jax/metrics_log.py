"""``metrics.jsonl``: one JSON object per line, kept equal to an uninterrupted run's on resume.

Each checkpoint records how many rows the log held when it was written (``metrics_rows``) and
the training steps logged since the last train row (``log_window``). A resumed run cuts the
file back to that many rows (atomically: a rewritten copy renamed into place) and continues
the window, so after any sequence of kills the file holds the rows an uninterrupted run
writes, in the same order, with the same values (``time`` and ``tokens_per_second`` measure
the wall clock and differ).
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from mrnn_jax import files
from mrnn_jax.errors import MrnnError

log = logging.getLogger("mrnn_jax")

METRICS_FILE = "metrics.jsonl"
# Row values that measure the wall clock: they differ between any two runs.
TIMING_KEYS = ("time", "tokens_per_second")


def read_rows(path: str) -> list[dict]:
    """The complete rows of a metrics file (a last line cut short by a kill is left out)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class MetricsLog:
    """Appends one JSON object per line to ``workdir/metrics.jsonl`` (easy to plot with
    pandas); writes nothing when not ``enabled`` (every process but the first)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, METRICS_FILE)
        self.enabled = enabled
        self.rows = 0  # rows written by this run and the runs it resumes

    def start(self, rows: int | None, step: int) -> None:
        """Cuts the file back to its first ``rows`` rows, those of the checkpoint a run
        resumes from (0 for a fresh run). Older checkpoints that did not record the count
        (``rows`` None) keep the rows up to ``step``."""
        if not self.enabled or (rows == 0 and not os.path.exists(self.path)):
            self.rows = rows or 0
            return
        kept = read_rows(self.path)
        if rows is None:
            kept = [r for r in kept if r.get("step", 0) <= step]
        elif len(kept) < rows:
            log.warning(
                "%s holds %d rows, the checkpoint of step %d expects %d; keeping them",
                self.path,
                len(kept),
                step,
                rows,
            )
        else:
            kept = kept[:rows]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        files.write_text_atomic(self.path, text, "metrics log")
        self.rows = len(kept)

    def write(self, step: int, split: str, values: dict) -> None:
        """Records ``values`` for ``split`` at ``step``."""
        self.rows += 1
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, "time": time.time()}
        row.update({k: float(v) for k, v in values.items()})
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise MrnnError(f"{self.path}: cannot write the metrics log ({e.strerror})") from e


def window_to_json(window: list[dict]) -> list[dict]:
    """The per-step metrics of a log window not yet written, as JSON (for a checkpoint)."""
    return [{k: float(v) for k, v in m.items()} for m in window]


def window_from_json(data: list[dict] | None) -> list[dict]:
    """:func:`window_to_json`'s output back as float32 values, as the training step gives
    them (so that the window's means are the same to the bit)."""
    return [{k: np.float32(v) for k, v in m.items()} for m in data or []]
