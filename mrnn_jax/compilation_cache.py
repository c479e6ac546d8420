"""A persistent cache of compiled XLA programs, shared by the ``mrnn`` processes of a machine.

Compiling the train step, the evaluators and the decoders takes most of a short command's
time (on the tiny test config, 21 of 27 seconds). With ``MRNN_COMPILATION_CACHE=DIR`` set, a
resumed run, a second ``mrnn caption`` or ``mrnn evaluate`` on the same checkpoint, or a rerun
after preemption loads its compiled programs from DIR instead. It is JAX's own persistent
compilation cache: an entry's key covers the program, the compiler options, the device kind
and the jax/jaxlib versions, so a cached program is the one XLA would compile and results do
not change. It is off unless asked for, because JAX writes an entry in place: a process killed
while writing one leaves a damaged entry that JAX warns about (and compiles anew) each time it
is needed, until the directory is deleted. A ``JAX_COMPILATION_CACHE_DIR`` the user set is
left as it is.
"""

from __future__ import annotations

import logging
import os

import jax

ENV = "MRNN_COMPILATION_CACHE"
OFF = ("off", "0", "none", "false")

log = logging.getLogger(__name__)


def enable(directory: str | None = None) -> str | None:
    """Turns on the persistent compilation cache in ``directory`` (default:
    ``$MRNN_COMPILATION_CACHE``) for this process, before its first compile; returns the
    directory in use, or None when none is asked for or it cannot be written (then programs
    are compiled as usual)."""
    directory = directory or os.environ.get(ENV, "")
    if not directory or directory.strip().lower() in OFF:
        return None
    if jax.config.jax_compilation_cache_dir:  # the user's own JAX_COMPILATION_CACHE_DIR
        return jax.config.jax_compilation_cache_dir
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        log.warning("no compilation cache: %s", error)
        return None
    if not os.access(directory, os.W_OK):
        log.warning("no compilation cache: %s is not writable", directory)
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    # Every program, however quick to compile: a short command compiles about a hundred small
    # ones, and loading them is what makes the second run fast.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
