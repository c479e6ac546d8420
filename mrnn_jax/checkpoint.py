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
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from mrnn_jax.errors import MrnnError

log = logging.getLogger("mrnn_jax")

FORMAT_VERSION = 1
LATEST_DIR = "checkpoints"
BEST_DIR = "best"


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
        self.latest = _manager(os.path.join(workdir, LATEST_DIR), max_to_keep)
        self.best = _manager(os.path.join(workdir, BEST_DIR), 1)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or None."""
        return self.latest.latest_step()

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


def find_checkpoint(path: str, which: str = "best") -> tuple[str, int]:
    """The manager directory and step to restore from ``path``.

    ``path`` is a work directory (``which`` = "best" or "latest"), a ``checkpoints/`` or
    ``best/`` directory (its newest step), or one step's directory.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise MrnnError(f"{path}: no such checkpoint directory")
    if which not in ("best", "latest"):
        raise MrnnError(f"which={which!r}: choose 'best' or 'latest'")
    if os.path.isdir(os.path.join(path, "params")) and os.path.basename(path).isdigit():
        return os.path.dirname(path), int(os.path.basename(path))
    candidates = [BEST_DIR, LATEST_DIR] if which == "best" else [LATEST_DIR]
    for sub in candidates:
        directory = os.path.join(path, sub)
        if os.path.isdir(directory):
            step = _manager(directory, None, read_only=True).latest_step()
            if step is not None:
                if sub != candidates[0]:
                    log.warning("%s has no best checkpoint; using the latest (step %d)", path, step)
                return directory, step
    steps = [d for d in os.listdir(path) if d.isdigit()]
    if steps:
        step = _manager(path, None, read_only=True).latest_step()
        if step is not None:
            return path, step
    raise MrnnError(
        f"{path}: no checkpoint found (expected a work directory written by 'mrnn train', "
        f"with {BEST_DIR}/ or {LATEST_DIR}/ inside)"
    )


def read_json_item(directory: str, step: int, item: str) -> dict:
    """One JSON item (``config``, ``vocab`` or ``meta``) of a checkpoint."""
    restored = _manager(directory, None, read_only=True).restore(
        step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()})
    )
    return restored[item]


def restore_params(directory: str, step: int, abstract_params: Any) -> Any:
    """The parameters of the checkpoint at ``step``, placed as ``abstract_params``' shardings
    say (on the default device where they give none)."""
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
