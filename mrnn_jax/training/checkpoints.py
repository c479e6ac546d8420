"""Orbax checkpoints of a training run, and restoring parameters from a run's directory alone.

A work directory holds::

    config.json, vocab.json        the run's config and vocabulary (also inside each checkpoint)
    checkpoints/<step>/            latest checkpoints: params, train_state (optimiser state,
                                   step, RNG), meta (data order, best validation perplexity),
                                   config, vocab
    best/<step>/                   the checkpoint with the best validation perplexity so far:
                                   params, meta, config, vocab
    metrics.jsonl, results.json    logs and the final evaluation

Each checkpoint is self-contained: a fresh process restores a captioner from it with the
package alone (:func:`mrnn_jax.load`).

Every restore takes the newest step that reads back completely (every item, every byte of
every array, finite parameters). A damaged, partial or empty step is named in one warning and
moved aside to ``moved_aside/<checkpoints|best>-<step>`` (never deleted), and the next one down
is tried. Saves never leave a temporary folder behind, and an ``OSError`` (full disk,
permissions) becomes one :class:`MrnnError` line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mrnn_jax.errors import MrnnError, WriteFailed

log = logging.getLogger("mrnn_jax")
T = TypeVar("T")

FORMAT_VERSION = 1
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
ASIDE_DIR = "moved_aside"
TMP_MARK = ".orbax-checkpoint-tmp"
JSON_ITEMS = ("meta", "config", "vocab")
LATEST_ITEMS = ("params", "train_state", *JSON_ITEMS)
READ_ITEMS = ("params", "config", "vocab")  # what a captioner needs
# Errors of the file system that a save reports (orbax and TensorStore wrap them in their own).
_DISK_ERRORS = ("RESOURCE_EXHAUSTED", "No space left", "PERMISSION_DENIED", "Permission denied")


class UnusableCheckpoint(Exception):
    """A step that does not restore completely (damaged, partial, empty) or holds
    non-finite parameters; the message says why."""


# --- integrity ---------------------------------------------------------------------------


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _saved_tree(item_dir: str) -> Any:
    """The saved pytree's structure with each array's shape and dtype, or None where orbax
    gives no metadata (it gives none for a relative path: every path here is made absolute)."""
    metadata = ocp.StandardCheckpointer().metadata(os.path.abspath(item_dir))
    return getattr(getattr(metadata, "item_metadata", None), "tree", None)


def _array_tree(item_dir: str) -> Any:
    """The arrays of one saved pytree item, read in full onto the host as numpy arrays.

    Missing metadata is no proof of damage: the arrays are then restored as they were saved,
    and only a restore that fails counts as damage.
    """
    item_dir = os.path.abspath(item_dir)
    tree = _saved_tree(item_dir)
    with ocp.PyTreeCheckpointer() as checkpointer:
        if tree is None:
            with warnings.catch_warnings():  # "Sharding info not provided": read from file
                warnings.simplefilter("ignore", UserWarning)
                return jax.tree.map(np.asarray, checkpointer.restore(item_dir))
        args = jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
            tree,
            is_leaf=lambda x: hasattr(x, "shape"),
        )
        return checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(restore_args=args))


def _all_finite(tree: Any) -> bool:
    return all(
        bool(np.isfinite(x).all())
        for x in jax.tree.leaves(tree)
        if np.issubdtype(np.asarray(x).dtype, np.floating)
    )


@jax.jit
def _finite_flag(leaves: list) -> jax.Array:
    return jnp.stack([jnp.isfinite(x).all() for x in leaves]).all()


def _all_finite_on_device(tree: Any) -> bool:
    # One jitted program for the whole tree (compiled once per tree structure), not one small
    # eager program per leaf: a ResNet-50's 161 leaves took seconds at every save.
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return bool(np.asarray(_finite_flag(leaves))) if leaves else True


def verify_step(step_dir: str, items: Sequence[str]) -> dict:
    """Reads every item of the checkpoint in ``step_dir`` in full; returns its JSON items.

    Raises :class:`UnusableCheckpoint` saying what is wrong: an item missing or unreadable, a
    truncated array file, non-finite parameters.
    """
    if not os.path.isdir(step_dir):
        raise UnusableCheckpoint("not a folder")
    if not os.listdir(step_dir):
        raise UnusableCheckpoint("an empty folder")
    missing = [i for i in items if not os.path.isdir(os.path.join(step_dir, i))]
    if missing:
        raise UnusableCheckpoint(f"a partial step: no {', '.join(missing)}")
    found = {}
    try:
        for item in items:
            path = os.path.join(step_dir, item)
            if item in JSON_ITEMS:
                with open(os.path.join(path, "metadata"), encoding="utf-8") as f:
                    found[item] = json.load(f)
            else:
                found[item] = _array_tree(path)
    except Exception as e:  # orbax and TensorStore raise many types for damaged files
        _drop_orbax_leftovers()
        raise UnusableCheckpoint(_short(e)) from e
    if "params" in found and not _all_finite(found["params"]):
        raise UnusableCheckpoint("its parameters are not finite (the run diverged)")
    return {k: v for k, v in found.items() if k in JSON_ITEMS}


def move_aside(directory: str, step: int, reason: str, move: bool = True) -> None:
    """Warns (one line) that ``directory/<step>`` is unusable and moves it to
    ``moved_aside/`` beside ``directory`` (kept, never deleted); with ``move`` False, or
    where moving fails, only warns."""
    source = os.path.join(directory, str(step))
    where = "; left in place while a trainer holds the work directory"
    if move:
        base = os.path.join(os.path.dirname(directory), ASIDE_DIR)
        target = os.path.join(base, f"{os.path.basename(directory)}-{step}")
        suffix = 0
        while os.path.exists(target + (f".{suffix}" if suffix else "")):
            suffix += 1
        target += f".{suffix}" if suffix else ""
        try:
            os.makedirs(base, exist_ok=True)
            os.rename(source, target)
            where = f"; moved to {target}"
        except OSError as e:
            where = f"; left in place ({e.strerror})"
    log.warning("%s: checkpoint unusable (%s)%s; trying the next one down", source, reason, where)


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


def _digit_steps(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return sorted((int(d) for d in os.listdir(directory) if d.isdigit()), reverse=True)


# How many times a reader starts over when a running trainer replaces the step it reads.
MAX_REREADS = 50


def superseded(directory: str, step: int) -> bool:
    """Whether ``directory/<step>`` was replaced while it was read: a trainer's rotation
    deleted it, or saved a newer step (it deletes older ones only after a newer is saved)."""
    steps = _digit_steps(directory)
    return step not in steps or steps[0] > step


def newest_intact(
    directory: str, items: Sequence[str], move: bool = True
) -> tuple[int, dict] | None:
    """The newest step of ``directory`` whose ``items`` read back completely, with its JSON
    items; None when there is none. Unusable steps are warned about and moved aside (see
    :func:`move_aside`). A step that a running trainer replaces while it is read is not
    unusable: the search starts again from the newest step."""
    steps, rereads = _digit_steps(directory), 0
    while steps:
        step = steps.pop(0)
        try:
            return step, verify_step(os.path.join(directory, str(step)), items)
        except UnusableCheckpoint as e:
            if superseded(directory, step) and rereads < MAX_REREADS:
                rereads += 1
                steps = _digit_steps(directory)
                continue
            move_aside(directory, step, str(e), move)
    return None


def check_shapes(directory: str, step: int, abstract_params: Any) -> None:
    """Raises :class:`MrnnError` when the saved parameters' shapes are not those of the
    model that the checkpoint's own config and vocabulary describe."""
    try:
        saved = _saved_tree(os.path.join(directory, str(step), "params"))
    except Exception:  # unreadable metadata: the restore itself will say
        return
    if saved is None:
        return
    flat_saved = {
        jax.tree_util.keystr(k): tuple(v.shape)
        for k, v in jax.tree_util.tree_flatten_with_path(
            saved, is_leaf=lambda x: hasattr(x, "shape")
        )[0]
    }
    flat_model = {
        jax.tree_util.keystr(k): tuple(v.shape)
        for k, v in jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    }
    wrong = [
        f"{name} is {flat_saved.get(name)} in the checkpoint, {shape} for its config and vocabulary"
        for name, shape in flat_model.items()
        if flat_saved.get(name) != shape
    ]
    if wrong or set(flat_saved) - set(flat_model):
        detail = "; ".join(wrong[:3]) or "other parameter names"
        raise MrnnError(
            f"{os.path.join(directory, str(step))}: the parameters disagree with the "
            f"checkpoint's config and vocabulary ({detail}); was vocab or config edited?"
        )


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


def _loop_closed(value: object) -> bool:
    return isinstance(value, RuntimeError) and "Event loop is closed" in str(value)


def _filter_loop_closed() -> None:
    """Orbax runs each write in an event loop of its own; after a failed read or write,
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
        if not _loop_closed(report.exc_value):
            previous_unraisable(report)

    def thread(args) -> None:
        if not _loop_closed(args.exc_value):
            previous_thread(args)

    def uncaught(kind, value, traceback) -> None:
        if not _loop_closed(value):
            previous_except(kind, value, traceback)

    unraisable._mrnn_quiet = True
    sys.unraisablehook, threading.excepthook, sys.excepthook = unraisable, thread, uncaught


def _drop_orbax_leftovers() -> None:
    """After a failed read or write, the error has reached us: orbax's abandoned tasks'
    reports (asyncio's "Task exception was never retrieved", failed future callbacks, the
    closed loop) are dropped."""
    _filter_loop_closed()
    for name in ("asyncio", "concurrent.futures"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax's own logging (absl) of a failed write silenced: the error is raised to us,
    and the command line reports it in one line. After a failure it stays silenced, since
    orbax's worker threads go on logging the same error until the process exits."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


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
    return _short(error)


def _manager(directory: str, max_to_keep: int | None, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
        cleanup_tmp_directories=not read_only,  # remove what a killed save left behind
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
        had_steps = bool(_digit_steps(directory))
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
        for later in _digit_steps(best_dir):
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
        _filter_loop_closed()  # before the write: its threads report as it fails
        try:
            with _quiet_orbax():  # its worker threads log a failed write's traceback
                self._save(manager, step, params, train_state, meta, config, vocab, best)
        except Exception as e:
            _drop_orbax_leftovers()
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
        _drop_orbax_leftovers()
        with contextlib.suppress(Exception):
            self.close()
        _remove_temporary_settled([str(self.latest.directory), str(self.best.directory)])


def find_checkpoint(path: str, which: str = "best") -> tuple[str, int]:
    """The manager directory and step to restore from ``path``: its newest step that reads
    back completely (unusable ones are warned about and moved aside, unless a running trainer
    holds the work directory).

    ``path`` is a work directory (``which`` = "best" or "latest"), a ``checkpoints/`` or
    ``best/`` directory (its newest step), or one step's directory.
    """
    from mrnn_jax.training import lock as workdir_lock

    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise MrnnError(f"{path}: no such checkpoint directory")
    if which not in ("best", "latest"):
        raise MrnnError(f"which={which!r}: choose 'best' or 'latest'")
    if os.path.isdir(os.path.join(path, "params")) and os.path.basename(path).isdigit():
        try:
            verify_step(path, READ_ITEMS)
        except UnusableCheckpoint as e:
            raise MrnnError(f"{path}: checkpoint unusable ({e})") from None
        return os.path.dirname(path), int(os.path.basename(path))
    if _digit_steps(path):  # a checkpoints/ or best/ folder
        run, candidates = os.path.dirname(path), [os.path.basename(path)]
    else:
        run, candidates = path, [BEST_DIR, LATEST_DIR] if which == "best" else [LATEST_DIR]
    move = not workdir_lock.held_by_live_trainer(run)
    seen: list[int] = []  # the steps of the candidates tried before
    for sub in candidates:
        directory = os.path.join(run, sub)
        steps = _digit_steps(directory)
        found = newest_intact(directory, READ_ITEMS, move=move)
        if found is not None:
            step = found[0]
            if sub != candidates[0]:
                first = os.path.join(run, candidates[0])
                if seen:
                    log.warning(
                        "%s: step %d is damaged (see above); using the latest checkpoint (step %d)",
                        first,
                        seen[0],
                        step,
                    )
                else:
                    log.warning("%s has no best checkpoint; using the latest (step %d)", run, step)
            return directory, step
        seen += steps
    if seen or _digit_steps(os.path.join(run, candidates[-1])):
        raise MrnnError(
            f"{path}: no intact checkpoint in {' or '.join(c + '/' for c in candidates)} "
            "(see the warnings above)"
        )
    raise MrnnError(
        f"{path}: no checkpoint found (expected a work directory written by 'mrnn train', "
        f"with {BEST_DIR}/ or {LATEST_DIR}/ inside)"
    )


def read_newest(path: str, which: str, read: Callable[[str, int], T]) -> T:
    """``read(directory, step)`` of the checkpoint :func:`find_checkpoint` names. Where a
    running trainer replaces that step while it is read (its rotation deletes old steps),
    the newest intact step is found and read again."""
    for attempt in range(MAX_REREADS + 1):
        directory, step = find_checkpoint(path, which)
        try:
            return read(directory, step)
        except Exception:
            if attempt == MAX_REREADS or not superseded(directory, step):
                raise
            log.debug("%s/%d was replaced while it was read; reading the newest", directory, step)
    raise AssertionError("unreachable")


def read_json_item(directory: str, step: int, item: str) -> dict:
    """One JSON item (``config``, ``vocab`` or ``meta``) of a checkpoint."""
    restored = _manager(directory, None, read_only=True).restore(
        step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()})
    )
    return restored[item]


def restore_params(directory: str, step: int, abstract_params: Any) -> Any:
    """The parameters of the checkpoint at ``step``, placed as ``abstract_params``' shardings
    say (on the default device where they give none)."""
    check_shapes(directory, step, abstract_params)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=getattr(x, "sharding", None) or device
        ),
        abstract_params,
    )
    restored = _manager(directory, None, read_only=True).restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target))
    )
    return restored["params"]
