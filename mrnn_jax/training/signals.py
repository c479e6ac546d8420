"""SIGINT and SIGTERM: finish the current training step, save a checkpoint, then exit.

SIGTERM is what SLURM, Kubernetes and TPU preemption send before they kill a job; Ctrl-C
sends SIGINT. While training, the first signal only sets a flag that the loop reads after each
step: it saves a checkpoint and raises :class:`Interrupted`, which the command line turns into
one line and exit status 128 + the signal's number (130 for SIGINT, 143 for SIGTERM). A second
signal (or a first one outside the training loop, when there is nothing to save) stops at
once. Rerunning the same command resumes from the saved step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped on a signal; ``signum`` is the signal's number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class StopRequest:
    """Set by the first SIGINT or SIGTERM while :meth:`deferring` is on."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._defer = False

    @property
    def requested(self) -> bool:
        """Whether a signal asked the run to stop."""
        return self.signum is not None

    def name(self) -> str:
        """The signal's name (SIGINT, SIGTERM)."""
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum: int, frame) -> None:
        if self._defer and self.signum is None:
            self.signum = signum
            return
        self.signum = signum
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signum, f"stopped by {signal.Signals(signum).name}")

    def defer(self, on: bool) -> None:
        """While on, a first signal only sets the flag (the training loop saves and stops)."""
        self._defer = on


def agreed(request: StopRequest, can_sync: bool) -> bool:
    """Whether to stop now. One process reads its own flag; many processes stop together,
    at a step where ``can_sync`` (a log step: one tiny all-gather), when any of them was
    signalled."""
    if jax.process_count() == 1:
        return request.requested
    if not can_sync:
        return False
    flags = multihost_utils.process_allgather(np.int32(request.requested))
    return bool(np.max(flags))


@contextlib.contextmanager
def handle_signals() -> Iterator[StopRequest]:
    """Installs the SIGINT / SIGTERM handlers for the block (in the main thread only; in any
    other thread the signals keep their old handlers and the flag is never set)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, request._handle)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
