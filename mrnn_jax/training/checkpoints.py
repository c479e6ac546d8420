"""Saving a training run's checkpoints: the latest steps (rotated) and the best one.

Saves never leave a temporary folder behind, never write non-finite parameters, and an
``OSError`` (full disk, permissions) becomes one :class:`~mrnn_jax.errors.WriteFailed` line.
Finding and reading checkpoints is :mod:`mrnn_jax.checkpoint_reader`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mrnn_jax import orbax_quiet
from mrnn_jax.checkpoint_reader import (
    LATEST_ITEMS,
    check_shapes,
    digit_steps,
    newest_intact,
    short_error,
)
from mrnn_jax.errors import MrnnError, WriteFailed
from mrnn_jax.run_dir import ASIDE_DIR, BEST_DIR, LATEST_DIR

log = logging.getLogger("mrnn_jax")

FORMAT_VERSION = 1

TMP_MARK = ".orbax-checkpoint-tmp"

# Errors of the file system that a save reports (orbax and TensorStore wrap them in their own).
_DISK_ERRORS = ("RESOURCE_EXHAUSTED", "No space left", "PERMISSION_DENIED", "Permission denied")


@jax.jit
def _finite_flag(leaves: list) -> jax.Array:
    return jnp.stack([jnp.isfinite(x).all() for x in leaves]).all()


def _all_finite_on_device(tree: Any) -> bool:
    # One jitted program for the whole tree (compiled once per tree structure), not one small
    # eager program per leaf: a ResNet-50's 161 leaves took seconds at every save.
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return bool(np.asarray(_finite_flag(leaves))) if leaves else True


def _set_aside_quietly(directory: str, step: int) -> None:
    """Moves a best checkpoint of a step the resumed run has not reached yet out of the way
    (it recomputes it: the same values after a kill, others after a changed setting)."""
    base = os.path.join(os.path.dirname(directory), ASIDE_DIR)
    target = os.path.join(base, f"{os.path.basename(directory)}-{step}.ahead")
    with contextlib.suppress(OSError):
        os.makedirs(base, exist_ok=True)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.rename(os.path.join(directory, str(step)), target)
        log.info("%s/%d: set aside until the run reaches step %d again", directory, step, step)


def remove_temporary(directory: str) -> None:
    """Deletes what an unfinished save left in ``directory`` (orbax's temporary folders)."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if TMP_MARK in name:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _remove_temporary_settled(directories: list[str], timeout: float = 10.0) -> None:
    """:func:`remove_temporary` until nothing new appears: after a failed write, orbax's
    worker threads may still be creating (and failing in) their temporary folders."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2 and time.monotonic() < deadline:
        found = any(
            TMP_MARK in name for d in directories if os.path.isdir(d) for name in os.listdir(d)
        )
        for d in directories:
            remove_temporary(d)
        quiet = 0 if found else quiet + 1
        time.sleep(0.2)


def _disk_error(error: BaseException) -> bool:
    chain = [error]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
        if len(chain) > 8:
            break
    return any(
        isinstance(e, OSError) or any(mark in str(e) for mark in _DISK_ERRORS) for e in chain
    )


def _cause(error: BaseException) -> str:
    for e in [error, error.__cause__, error.__context__]:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    text = str(error)
    for mark, cause in (
        ("No space left", "No space left on device"),
        ("RESOURCE_EXHAUSTED", "No space left on device"),
        ("Permission denied", "Permission denied"),
        ("PERMISSION_DENIED", "Permission denied"),
    ):
        if mark in text:
            return cause
    return short_error(error)


def _manager(directory: str, max_to_keep: int) -> ocp.CheckpointManager:
    """The synchronous orbax manager that saves, rotates and resumes one checkpoint folder."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=True,  # remove what a killed save left behind
    )
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class RunCheckpoints:
    """The latest and best checkpoint managers of one work directory."""

    def __init__(self, workdir: str, max_to_keep: int = 2):
        self.workdir = workdir
        try:
            self.latest = _manager(os.path.join(workdir, LATEST_DIR), max_to_keep)
            self.best = _manager(os.path.join(workdir, BEST_DIR), 1)
        except OSError as e:
            raise MrnnError(f"{workdir}: cannot create the checkpoint folders ({_cause(e)})") from e

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint that restores completely, or None. Unusable
        steps are moved aside (one warning each), and so are best checkpoints of later steps,
        which the resumed run recomputes."""
        directory = os.path.join(self.workdir, LATEST_DIR)
        had_steps = bool(digit_steps(directory))
        primary = jax.process_index() == 0  # one process moves unusable steps aside
        found = newest_intact(directory, LATEST_ITEMS, move=primary)
        self.latest.reload()
        if found is None and had_steps:
            raise MrnnError(
                f"{directory}: no intact checkpoint (every step was moved to "
                f"{os.path.join(self.workdir, ASIDE_DIR)}); run the command again to start "
                "over from step 0, or use a new --workdir"
            )
        step = None if found is None else found[0]
        best_dir = os.path.join(self.workdir, BEST_DIR)
        for later in digit_steps(best_dir):
            if (step is None or later > step) and primary:
                _set_aside_quietly(best_dir, later)
        self.best.reload()
        return step

    def save(
        self,
        step: int,
        params: Any,
        train_state: Any,
        meta: dict,
        config: dict,
        vocab: dict,
        *,
        best: bool = False,
    ) -> None:
        """Writes a checkpoint at ``step`` to ``checkpoints/``, or to ``best/`` when ``best``.

        A step already saved there is left as it is: a resumed run recomputes the same values
        bit for bit, so it may reach a step that a killed run had saved already.
        """
        manager = self.best if best else self.latest
        if step in manager.all_steps():
            return
        if not _all_finite_on_device(params):
            raise MrnnError(
                f"step {step}: the parameters are not finite; not saving them over the last "
                "finite checkpoint"
            )
        try:
            with orbax_quiet.quiet(absl=True):  # its threads report a failed write
                self._save(manager, step, params, train_state, meta, config, vocab, best)
        except Exception as e:
            if not _disk_error(e):
                raise
            with contextlib.suppress(Exception):  # let its other writes fail before cleaning up
                manager.wait_until_finished()
            _remove_temporary_settled([str(manager.directory)])
            raise WriteFailed(
                f"{os.path.join(str(manager.directory), str(step))}: cannot save the checkpoint "
                f"({_cause(e)}); nothing half-written is left, and the run resumes from the last "
                "saved step"
            ) from None

    def _save(self, manager, step, params, train_state, meta, config, vocab, best) -> None:
        meta = {**meta, "format_version": FORMAT_VERSION}
        common = {
            "params": ocp.args.StandardSave(params),
            "meta": ocp.args.JsonSave(meta),
            "config": ocp.args.JsonSave(config),
            "vocab": ocp.args.JsonSave(vocab),
        }
        if best:
            self.best.save(step, args=ocp.args.Composite(**common), force=True)
        else:
            self.latest.save(
                step,
                args=ocp.args.Composite(train_state=ocp.args.StandardSave(train_state), **common),
                force=True,
            )

    def read_item(self, step: int, item: str) -> dict:
        """A JSON item (``config``, ``vocab``, ``meta``) of the latest-checkpoint at ``step``."""
        restored = self.latest.restore(
            step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()})
        )
        return restored[item]

    def restore(self, step: int, abstract_params: Any, abstract_train_state: Any) -> tuple:
        """Restores ``(params, train_state, meta)`` of the latest-checkpoint at ``step``."""
        check_shapes(str(self.latest.directory), step, abstract_params)
        restored = self.latest.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params),
                train_state=ocp.args.StandardRestore(abstract_train_state),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["params"], restored["train_state"], restored["meta"]

    def close(self) -> None:
        """Waits for pending writes and releases the managers."""
        self.latest.close()
        self.best.close()

    def close_quietly(self) -> None:
        """:meth:`close` on the way out of a failed run: errors of pending writes are not
        raised, and what they left half-written is removed."""
        logging.getLogger("absl").setLevel(logging.CRITICAL)  # orbax's threads' last words
        orbax_quiet.drop_leftovers()
        with contextlib.suppress(Exception):
            self.close()
        _remove_temporary_settled([str(self.latest.directory), str(self.best.directory)])
