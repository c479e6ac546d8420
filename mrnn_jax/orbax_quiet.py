"""Orbax's and TensorStore's noise after a failed read or write, silenced at its source.

A failed checkpoint read or write reaches the caller as one exception, which the command line
reports in one line. Orbax's worker threads go on reporting the same failure (absl log
records, asyncio's "Task exception was never retrieved", TensorStore's callbacks into a closed
event loop): those reports alone are dropped here; every other exception still reaches the
previous hooks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator


def _loop_closed(value: object) -> bool:
    return isinstance(value, RuntimeError) and "Event loop is closed" in str(value)


def _orbax_leftover(report: object) -> bool:
    """Whether an unraisable-exception report is orbax's own abandoned work: the closed
    loop, or one of its coroutines collected unfinished after its failure reached us (a
    read of a step that a trainer deleted meanwhile, say)."""
    if _loop_closed(getattr(report, "exc_value", None)):
        return True
    code = getattr(getattr(report, "object", None), "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def filter_loop_closed() -> None:
    """Orbax runs each read and write in an event loop of its own; after a failed one,
    TensorStore's threads still call back into that closed loop and report "Event loop is
    closed" (as unraisable exceptions, thread exceptions or through ``sys.excepthook``).
    Those reports alone are dropped; every other exception still reaches the previous hook."""
    if getattr(sys.unraisablehook, "_mrnn_quiet", False):
        return
    previous_unraisable, previous_thread, previous_except = (
        sys.unraisablehook,
        threading.excepthook,
        sys.excepthook,
    )

    def unraisable(report) -> None:
        if not _orbax_leftover(report):
            previous_unraisable(report)

    def thread(args) -> None:
        if not _loop_closed(args.exc_value):
            previous_thread(args)

    def uncaught(kind, value, traceback) -> None:
        if not _loop_closed(value):
            previous_except(kind, value, traceback)

    unraisable._mrnn_quiet = True
    sys.unraisablehook, threading.excepthook, sys.excepthook = unraisable, thread, uncaught


def drop_leftovers() -> None:
    """After a failed read or write, the error has reached us: orbax's abandoned tasks'
    reports (asyncio's "Task exception was never retrieved", failed future callbacks, the
    closed loop) are dropped."""
    filter_loop_closed()
    for name in ("asyncio", "concurrent.futures"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def quiet(absl: bool = False) -> Iterator[None]:
    """One orbax read or write, whose failure reaches the caller as one exception (the command
    line reports it in one line). Orbax's threads report the same failure too (asyncio's "Task
    exception was never retrieved", TensorStore's callbacks into the closed loop), some of it
    before the exception reaches the caller: those reports are dropped from the start, and
    after a failure they stay dropped, since orbax's threads go on reporting until the process
    exits. With ``absl`` (writes: their threads log a failed write's traceback there), orbax's
    absl records are dropped too; a read's are left to the logging setup (``-v`` shows them)."""
    filter_loop_closed()
    names = ("asyncio", "concurrent.futures", *(("absl",) if absl else ()))
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    yield  # not reached again after a failure: the loggers stay silenced
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
