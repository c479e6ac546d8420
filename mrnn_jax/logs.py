"""Logging for every command and notebook: the project's lines in one format, once each.

:func:`setup` is called first by every command (the ``mrnn`` subcommands and the
``experiments/`` scripts) and may be called by a notebook or any program using the API:

- the project's own lines (the ``mrnn_jax`` logger) go to standard error as
  ``HH:MM:SS message``, written so that they do not break a progress bar;
- the libraries' notes that say nothing to a user are silenced at their source, by the
  levels of their loggers: orbax's (it logs through absl: "Metadata file does not exist",
  and its managers' notes on their options) and the C++
  INFO lines of XLA and TensorFlow (``TF_CPP_MIN_LOG_LEVEL``, read at their first line);
  their errors still show, as ``HH:MM:SS LEVEL logger: message``;
- ``verbose=True`` (``-v`` / ``--verbose`` on every command) brings the libraries' logs
  back, down to INFO, and the project's DEBUG lines.

:func:`warn_once` logs a warning once per process for one identity (a dataset's skip
summary, say, however many times the dataset is read).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Hashable

from tqdm import tqdm

PROJECT = "mrnn_jax"
# Python loggers of libraries whose notes a user does not need (orbax logs through absl).
LIBRARIES = ("absl", "orbax")
PROJECT_FORMAT = "%(asctime)s %(message)s"
LIBRARY_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TIME_FORMAT = "%H:%M:%S"

_said: set[Hashable] = set()


class _TqdmHandler(logging.StreamHandler):
    """A standard-error handler that clears and redraws progress bars around its lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # as logging.StreamHandler does
            self.handleError(record)


def _handler(fmt: str) -> logging.Handler:
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, TIME_FORMAT))
    handler._mrnn = True  # ours, replaced by the next setup()
    return handler


def _stock(handler: logging.Handler) -> bool:
    """Whether ``handler`` is ours or the bare one ``logging.basicConfig()`` installs (absl
    calls it on its first log line when the root logger has no handler)."""
    if getattr(handler, "_mrnn", False):
        return True
    formatter = handler.formatter
    return (
        type(handler) is logging.StreamHandler
        and formatter is not None
        and formatter._fmt == logging.BASIC_FORMAT
    )


def setup(verbose: bool = False) -> None:
    """Sets up logging for a command or a notebook: the project's lines in one format,
    the libraries' chatter silenced unless ``verbose`` (their errors always shown)."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # C++ INFO lines of XLA / TF
    project = logging.getLogger(PROJECT)
    project.handlers[:] = [_handler(PROJECT_FORMAT)]
    project.setLevel(logging.DEBUG if verbose else logging.INFO)
    project.propagate = False

    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not _stock(h)]
    if not root.handlers:  # a program's (or pytest's) own handlers are kept
        root.addHandler(_handler(LIBRARY_FORMAT))
    library_level = logging.INFO if verbose else logging.ERROR
    if verbose and root.level > logging.INFO:
        root.setLevel(logging.INFO)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(library_level)
    try:
        from absl import logging as absl_logging
    except ImportError:  # orbax brings absl; without it there is nothing to silence
        return
    absl_logging.set_verbosity("info" if verbose else "error")


def add_argument(parser: argparse.ArgumentParser) -> None:
    """Adds ``-v`` / ``--verbose`` (the libraries' logs back) to a command's options."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show the libraries' logs (orbax, absl, XLA)",
    )


def warn_once(identity: Hashable, message: str, *args: object) -> None:
    """Logs ``message % args`` as a warning of the project's logger, unless this process
    has already logged it for ``identity``."""
    key = (identity, message % args if args else message)
    if key in _said:
        return
    _said.add(key)
    logging.getLogger(PROJECT).warning(message, *args)
