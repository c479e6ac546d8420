"""A work directory of ``mrnn train``: the one place that names every file and folder in it.

::

    config.json, vocab.json   the run's config and vocabulary (also inside each checkpoint)
    checkpoints/<step>/       the latest checkpoints (params, train_state, meta, config, vocab)
    best/<step>/              the checkpoint best by ``train.select_by`` (params, meta, ...)
    moved_aside/              damaged steps, set aside (never deleted)
    metrics.jsonl             one row per logged step and split (kept exact on resume)
    events.out.tfevents.*     TensorBoard's copy of metrics.jsonl (one file)
    results.json              the final evaluation; written last: the run has finished
    report.html               the run's page: curves, results, example captions
    lock                      the trainer that holds the directory (host, pid, start)

A :class:`RunDir` holds the directory's absolute path, resolved once from however the user
spelled it (``runs/shapes``, ``~/runs/x``): orbax, the lock, the logs and every reader then
see the same path whatever the working directory. Readers (``mrnn caption``, the API) use it
as well as the trainer, so it depends on nothing else in the package.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
ASIDE_DIR = "moved_aside"
METRICS_FILE = "metrics.jsonl"
EVENTS_PREFIX = "events.out.tfevents."
RESULTS_FILE = "results.json"
REPORT_FILE = "report.html"
LOCK_FILE = "lock"


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The paths of one work directory (``path`` is absolute)."""

    path: str

    @classmethod
    def at(cls, workdir: str | os.PathLike[str]) -> RunDir:
        """The work directory ``workdir`` (relative to the current directory, ``~`` expanded)."""
        return cls(os.path.abspath(os.path.expanduser(os.fspath(workdir))))

    def file(self, name: str) -> str:
        """The path of ``name`` inside the work directory."""
        return os.path.join(self.path, name)

    @property
    def config(self) -> str:
        return self.file(CONFIG_FILE)

    @property
    def vocab(self) -> str:
        return self.file(VOCAB_FILE)

    @property
    def latest(self) -> str:
        return self.file(LATEST_DIR)

    @property
    def best(self) -> str:
        return self.file(BEST_DIR)

    @property
    def moved_aside(self) -> str:
        return self.file(ASIDE_DIR)

    @property
    def metrics(self) -> str:
        return self.file(METRICS_FILE)

    @property
    def results(self) -> str:
        return self.file(RESULTS_FILE)

    @property
    def report(self) -> str:
        return self.file(REPORT_FILE)

    @property
    def lock(self) -> str:
        return self.file(LOCK_FILE)

    def step(self, step: int, which: str = LATEST_DIR) -> str:
        """The folder of checkpoint ``step`` in ``checkpoints/`` (or ``best/``)."""
        return os.path.join(self.file(which), str(step))

    def event_files(self) -> list[str]:
        """The TensorBoard event files of the run."""
        if not os.path.isdir(self.path):
            return []
        names = sorted(n for n in os.listdir(self.path) if n.startswith(EVENTS_PREFIX))
        return [self.file(n) for n in names]

    def lock_holder(self) -> dict | None:
        """The record in the lock file of the trainer holding the directory, or None when it
        is free (a missing, empty or unreadable file)."""
        try:
            with open(self.lock, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            return None
        return record if isinstance(record, dict) else None

    def held_by_live_trainer(self) -> bool:
        """Whether a trainer other than this process that may still be running holds the
        directory (a reader's check; it takes no lock itself). A record written on another
        host cannot be checked, and counts as held."""
        record = self.lock_holder()
        if record is None:
            return False
        if record.get("host") != socket.gethostname():
            return True
        return record.get("pid") != os.getpid() and process_alive(int(record.get("pid", -1)))


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
