"""What a run carries from step to step, what its checkpoints keep of it, and resuming it.

A checkpoint's ``meta`` item holds everything a resumed run needs to continue exactly as an
uninterrupted one: the best value so far and the early-stopping count, the non-finite guard,
the logging window not yet written and ``metrics.jsonl``'s rows. A run may only resume under
the same model and data (:func:`check_resume`, :func:`check_same_data`). A run that has
finished (``results.json`` holds a run's results) is not trained again; what it has lost
since (``metrics.jsonl`` rows, ``report.html``) is put back (:func:`complete_finished_run`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any

from ml_collections import ConfigDict

from mrnn_jax import configs, sharding
from mrnn_jax.data.pipeline import CaptionTable, data_state
from mrnn_jax.errors import MrnnError
from mrnn_jax.pages import run_page
from mrnn_jax.run_dir import RunDir
from mrnn_jax.training.early_stopping import BestSoFar
from mrnn_jax.training.metrics_log import window_from_json, window_to_json
from mrnn_jax.training.nonfinite import NonFiniteGuard
from mrnn_jax.training.run_log import RunLog
from mrnn_jax.training.selection import Selector
from mrnn_jax.training.step import TrainState

log = logging.getLogger("mrnn_jax")


@dataclasses.dataclass
class Progress:
    """A run's state between steps: the training state and what the loop decides with.

    Attributes:
      state: step, parameters, optimiser state, RNG key.
      step: ``state.step`` on the host.
      best_value, best_scalars: the best ``train.select_by`` value so far, and the scalars
        of its evaluation.
      watch: the early-stopping count (``train.patience``).
      guard: the non-finite guard's count of skipped updates.
      window: the per-step metrics since the last ``train`` row.
      last_saved: the newest saved step (None before the first save).
    """

    state: TrainState
    step: int
    best_value: float
    best_scalars: dict
    watch: BestSoFar
    guard: NonFiniteGuard
    window: list[dict]
    last_saved: int | None


def progress(
    state: TrainState, meta: dict, selector: Selector, train_config: ConfigDict, latest: int | None
) -> Progress:
    """The progress of a run starting from ``state``: fresh, or that of the checkpoint at
    step ``latest`` whose ``meta`` is given."""
    watch = BestSoFar.start(selector.mode, train_config.get("patience", 0))
    best_value, best_scalars = selector.worst, {}
    if latest is not None:
        best_value, best_scalars = resumed_best(meta, selector)
        watch = resumed_watch(watch, meta, selector, best_value, latest)
    return Progress(
        state=state,
        step=int(sharding.to_host(state.step)),
        best_value=best_value,
        best_scalars=best_scalars,
        watch=watch,
        guard=NonFiniteGuard.from_config(train_config, meta.get("nonfinite")),
        window=window_from_json(meta.get("log_window")),
        last_saved=latest,
    )


def checkpoint_meta(
    p: Progress,
    table: CaptionTable,
    train_config: ConfigDict,
    selector: Selector,
    data_summary: dict,
    logs: RunLog,
) -> dict:
    """The ``meta`` item of a checkpoint of ``p`` (what :func:`progress` reads back)."""
    tc = train_config
    return {
        "step": p.step,
        "data_state": data_state(table, p.step, tc.batch_size, tc.captions_per_image),
        "selected_by": selector.metric,
        "best_value": json_number(p.best_value),
        "best_scalars": p.best_scalars,
        "best_so_far": p.watch.to_json(),
        "data": data_summary,
        # What a resumed run needs to write the same metrics.jsonl as an uninterrupted one.
        "metrics_rows": logs.rows,
        "metrics_log": logs.history,
        "log_window": window_to_json(sharding.to_host(p.window)),
        "nonfinite": p.guard.to_json(),
    }


def saved_rows(meta: dict) -> list[dict] | int | None:
    """The ``metrics.jsonl`` rows a checkpoint's ``meta`` recorded (their count only, in
    checkpoints older than the copy; None in older still)."""
    return meta.get("metrics_log", meta.get("metrics_rows"))


def check_resume(workdir: str, saved: dict, new: dict) -> None:
    """Refuses to resume a checkpoint under a config that changes the model or the data;
    logs every other (schedule) change."""
    clash = configs.resume_conflicts(saved, new)
    if clash:
        raise MrnnError(
            f"{workdir} holds a checkpoint of a different model or data ({'; '.join(clash)}); "
            "use a new --workdir, or the original values"
        )
    for change in configs.other_differences(saved, new):
        log.info("resuming with a changed setting: %s", change)


def check_same_data(workdir: str, saved: dict | None, now: dict) -> None:
    """Refuses to resume on other data: other training or validation images, or other
    features (count, width, precision, provenance), even where the paths are the same."""
    if not saved:
        return
    clash = []
    for split in ("train", "val"):
        before, after = saved.get("splits", {}).get(split), now["splits"].get(split)
        if before and after and before != after:
            clash.append(f"split {split}: {before} in the checkpoint, {after} now")
    before, after = saved.get("features") or {}, now.get("features") or {}
    for key in ("rows", "dim", "dtype", "provenance"):
        if before.get(key) != after.get(key):
            clash.append(
                f"features {key}: {before.get(key)!r} in the checkpoint, {after.get(key)!r} now"
            )
    if clash:
        raise MrnnError(
            f"{workdir} holds a checkpoint trained on other data ({'; '.join(clash)}); use a "
            "new --workdir, or the original data"
        )


def resumed_best(meta: dict, selector: Selector) -> tuple[float, dict]:
    """The best value so far and its scalars, from a checkpoint's metadata. A checkpoint
    from before ``train.select_by`` existed was selected by validation perplexity; one
    selected by another scalar than now starts the selection afresh."""
    selected_by = meta.get("selected_by", "val/perplexity")
    if selected_by != selector.metric:
        log.info(
            "the best checkpoint was selected by %s, now by %s: selection starts afresh",
            selected_by,
            selector.metric,
        )
        return selector.worst, {}
    if "best_value" in meta:
        value = meta["best_value"]
        return (selector.worst if value is None else float(value)), dict(
            meta.get("best_scalars") or {}
        )
    old = float(meta.get("best_val_perplexity", selector.worst))
    return old, ({"val/perplexity": old} if math.isfinite(old) else {})


def resumed_watch(
    watch: BestSoFar, meta: dict, selector: Selector, best_value: float, step: int
) -> BestSoFar:
    """The early-stopping watch of a resumed run: the checkpoint's, when it watched the same
    scalar; else one that starts from the best value so far."""
    saved = meta.get("best_so_far")
    if saved is not None and meta.get("selected_by", "val/perplexity") == selector.metric:
        return watch.resumed(saved)
    if math.isfinite(best_value):
        return watch.resumed({"best": best_value, "best_step": step, "stale": 0})
    return watch


def json_number(value: float) -> float | None:
    """``value``, or None where JSON has no number for it (infinities, NaN)."""
    return value if math.isfinite(value) else None


def finished_results(run: RunDir, step: int) -> dict | None:
    """The results of a run that already ran to its last step (``step``); None where there
    are none (missing, unreadable, or not a run's results: the final evaluation then runs
    again)."""
    try:
        with open(run.results, encoding="utf-8") as f:
            results = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); evaluating again", run.results, e)
        return None
    if not (
        isinstance(results, dict)
        and isinstance(results.get("splits"), dict)
        and all(isinstance(v, dict) for v in results["splits"].values())
        and isinstance(results.get("best_step"), int)
        and isinstance(results.get("selected_by"), dict)
    ):
        log.warning("%s: not the results of a run; evaluating again", run.results)
        return None
    log.info(
        "%s: finished at step %d already; nothing to do (results: %s; raise train.num_steps "
        "to train on, or delete results.json to evaluate again)",
        run.path,
        step,
        run.results,
    )
    return results


def complete_finished_run(
    run: RunDir, results: dict, meta: dict, logs: RunLog, eval_splits: Any
) -> None:
    """Puts back what a finished run promises and has lost: ``metrics.jsonl``'s rows (from
    the last checkpoint's copy and the final evaluation in ``results``, whose splits were
    logged in the order ``eval_splits``) and ``report.html``."""
    saved = meta.get("metrics_log")
    if isinstance(saved, list):
        written = os.path.getmtime(run.results)
        final = [
            {
                "step": results["best_step"],
                "split": split,
                "time": written,
                **{k: float(v) for k, v in values.items() if v is not None},
            }
            for split in eval_splits
            for values in [results["splits"].get(split)]
            if values is not None
        ]
        logs.restore([*saved, *final])
    if not os.path.exists(run.report):
        log.info("%s: writing the missing report", run.path)
        run_page.write_run_report(run.path, results)
