"""Finding and reading the checkpoints of a work directory: what readers (a captioner, the
API, ``mrnn caption``) and the trainer's resume share.

Each checkpoint is self-contained: a fresh process restores a captioner from it with the
package alone (:func:`mrnn_jax.load`). Every restore takes the newest step that reads back
completely (every item, every byte of every array, finite parameters). A damaged, partial or
empty step is named in one warning and moved aside to ``moved_aside/<checkpoints|best>-<step>``
(never deleted; left in place while a live trainer holds the directory), and the next one down
is tried. A step that a running trainer replaces while it is read is read again, newest first.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from mrnn_jax import orbax_quiet
from mrnn_jax.errors import MrnnError
from mrnn_jax.run_dir import ASIDE_DIR, BEST_DIR, LATEST_DIR, RunDir

log = logging.getLogger("mrnn_jax")

T = TypeVar("T")

JSON_ITEMS = ("meta", "config", "vocab")

LATEST_ITEMS = ("params", "train_state", *JSON_ITEMS)

READ_ITEMS = ("params", "config", "vocab")  # what a captioner needs


class UnusableCheckpoint(Exception):
    """A step that does not restore completely (damaged, partial, empty) or holds
    non-finite parameters; the message says why."""


def short_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _saved_tree(item_dir: str) -> Any:
    """The saved pytree's structure with each array's shape and dtype, or None where orbax
    gives no metadata (it gives none for a relative path: every path here is made absolute)."""
    with orbax_quiet.quiet(), ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(os.path.abspath(item_dir))
    return getattr(getattr(metadata, "item_metadata", None), "tree", None)


def _array_tree(item_dir: str) -> Any:
    """The arrays of one saved pytree item, read in full onto the host as numpy arrays.

    Missing metadata is no proof of damage: the arrays are then restored as they were saved,
    and only a restore that fails counts as damage.
    """
    item_dir = os.path.abspath(item_dir)
    tree = _saved_tree(item_dir)
    with orbax_quiet.quiet(), ocp.PyTreeCheckpointer() as checkpointer:
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
            found[item] = _json_item(path) if item in JSON_ITEMS else _array_tree(path)
    except Exception as e:  # orbax and TensorStore raise many types for damaged files
        raise UnusableCheckpoint(short_error(e)) from e
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


def digit_steps(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return sorted((int(d) for d in os.listdir(directory) if d.isdigit()), reverse=True)


# How many times a reader starts over when a running trainer replaces the step it reads.
MAX_REREADS = 50


def superseded(directory: str, step: int) -> bool:
    """Whether ``directory/<step>`` was replaced while it was read: a trainer's rotation
    deleted it, or saved a newer step (it deletes older ones only after a newer is saved)."""
    steps = digit_steps(directory)
    return step not in steps or steps[0] > step


def newest_intact(
    directory: str, items: Sequence[str], move: bool = True
) -> tuple[int, dict] | None:
    """The newest step of ``directory`` whose ``items`` read back completely, with its JSON
    items; None when there is none. Unusable steps are warned about and moved aside (see
    :func:`move_aside`). A step that a running trainer replaces while it is read is not
    unusable: the search starts again from the newest step."""
    steps, rereads = digit_steps(directory), 0
    while steps:
        step = steps.pop(0)
        try:
            return step, verify_step(os.path.join(directory, str(step)), items)
        except UnusableCheckpoint as e:
            if superseded(directory, step) and rereads < MAX_REREADS:
                rereads += 1
                steps = digit_steps(directory)
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


def find_checkpoint(path: str, which: str = "best") -> tuple[str, int]:
    """The manager directory and step to restore from ``path``: its newest step that reads
    back completely (unusable ones are warned about and moved aside, unless a running trainer
    holds the work directory).

    ``path`` is a work directory (``which`` = "best" or "latest"), a ``checkpoints/`` or
    ``best/`` directory (its newest step), or one step's directory.
    """
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
    if digit_steps(path):  # a checkpoints/ or best/ folder
        run, candidates = os.path.dirname(path), [os.path.basename(path)]
    else:
        run, candidates = path, [BEST_DIR, LATEST_DIR] if which == "best" else [LATEST_DIR]
    move = not RunDir(run).held_by_live_trainer()
    seen: list[int] = []  # the steps of the candidates tried before
    for sub in candidates:
        directory = os.path.join(run, sub)
        steps = digit_steps(directory)
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
    if seen or digit_steps(os.path.join(run, candidates[-1])):
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
    running trainer saves or deletes steps of that directory while it is read (its rotation
    deletes old steps), the newest intact step is found and read again."""
    for attempt in range(MAX_REREADS + 1):
        directory, step = find_checkpoint(path, which)
        before = digit_steps(directory)
        try:
            return read(directory, step)
        except Exception:
            moved = superseded(directory, step) or digit_steps(directory) != before
            if attempt == MAX_REREADS or not moved:
                raise
            log.debug("%s changed while step %d was read; reading the newest", directory, step)
    raise AssertionError("unreachable")


def read_json_item(directory: str, step: int, item: str) -> dict:
    """One JSON item (``config``, ``vocab`` or ``meta``) of a checkpoint. Only that step's
    files are opened: never its neighbours, which a running trainer may be deleting."""
    return _json_item(os.path.join(directory, str(step), item))


def _json_item(item_dir: str) -> dict:
    with open(os.path.join(item_dir, "metadata"), encoding="utf-8") as f:
        return json.load(f)


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
    item_dir = os.path.abspath(os.path.join(directory, str(step), "params"))
    with orbax_quiet.quiet(), ocp.StandardCheckpointer() as checkpointer:  # this step alone
        return checkpointer.restore(item_dir, target)
