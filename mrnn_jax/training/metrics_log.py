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
from mrnn_jax.run_dir import RunDir

log = logging.getLogger("mrnn_jax")

# Row values that measure the wall clock: they differ between any two runs.
TIMING_KEYS = ("time", "tokens_per_second", "samples_per_second", "reward_share")


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
    pandas); writes nothing when not ``enabled`` (every process but the first).

    ``history`` holds every row of the run so far (those of the runs it resumes too): each
    checkpoint stores it, so that a resumed run rewrites the file from the checkpoint's copy
    whatever happened to the file (a cut line, a deleted file).
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = RunDir.at(workdir).metrics
        self.enabled = enabled
        self.history: list[dict] = []

    @property
    def rows(self) -> int:
        """Rows written by this run and the runs it resumes."""
        return len(self.history)

    def start(self, saved: list[dict] | int | None, step: int) -> None:
        """Makes the file hold the rows of the checkpoint a run resumes from: ``saved`` is
        that checkpoint's copy of them (or, from checkpoints older than the copy, their
        count; None: the rows up to ``step``); 0 or [] for a fresh run."""
        if isinstance(saved, list):
            kept = [dict(r) for r in saved]
            if self.enabled and read_rows(self.path)[: len(kept)] != kept:
                log.warning(
                    "%s: its rows are not those the checkpoint of step %d recorded (a line "
                    "cut or changed); rewritten from the checkpoint",
                    self.path,
                    step,
                )
        else:
            kept = self._kept_rows(saved, step)
        self.history = kept
        if self.enabled and (kept or os.path.exists(self.path)):
            self._rewrite()

    def _kept_rows(self, rows: int | None, step: int) -> list[dict]:
        if not self.enabled or (rows == 0 and not os.path.exists(self.path)):
            return []
        kept = read_rows(self.path)
        if rows is None:
            return [r for r in kept if r.get("step", 0) <= step]
        if len(kept) < rows:
            log.warning(
                "%s holds %d rows, the checkpoint of step %d expects %d; keeping them",
                self.path,
                len(kept),
                step,
                rows,
            )
        return kept[:rows]

    def _rewrite(self) -> None:
        text = "".join(json.dumps(r) + "\n" for r in self.history)
        files.write_text_atomic(self.path, text, "metrics log")

    def restore(self, expected: list[dict]) -> None:
        """Rewrites the file as ``expected`` (a finished run's rows) where its rows are not
        those (wall-clock values aside), with a warning; else leaves it as it is."""
        self.history = [dict(r) for r in expected]
        if not self.enabled:
            return
        found = read_rows(self.path)
        if [without_timing(r) for r in found] != [without_timing(r) for r in expected]:
            log.warning(
                "%s: %d of its %d rows are missing or changed (a line cut?); rewritten from "
                "the last checkpoint and results.json",
                self.path,
                sum(
                    1
                    for i, r in enumerate(expected)
                    if i >= len(found) or without_timing(found[i]) != without_timing(r)
                ),
                len(expected),
            )
            self._rewrite()

    def write(self, step: int, split: str, values: dict) -> None:
        """Records ``values`` for ``split`` at ``step``."""
        row = {"step": int(step), "split": split, "time": time.time()}
        row.update({k: float(v) for k, v in values.items()})
        self.history.append(row)
        if not self.enabled:
            return
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise MrnnError(f"{self.path}: cannot write the metrics log ({e.strerror})") from e


def without_timing(row: dict) -> dict:
    """A row without the values that measure the wall clock (:data:`TIMING_KEYS`)."""
    return {k: v for k, v in row.items() if k not in TIMING_KEYS}


def window_to_json(window: list[dict]) -> list[dict]:
    """The per-step metrics of a log window not yet written, as JSON (for a checkpoint)."""
    return [{k: float(v) for k, v in m.items()} for m in window]


def window_from_json(data: list[dict] | None) -> list[dict]:
    """:func:`window_to_json`'s output back as float32 values, as the training step gives
    them (so that the window's means are the same to the bit)."""
    return [{k: np.float32(v) for k, v in m.items()} for m in data or []]
