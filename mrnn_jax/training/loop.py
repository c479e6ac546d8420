"""Training: ``train_and_evaluate(config, workdir)``, a pure ``train_step`` jitted over a mesh.

Sections, in the order the run goes through them: work directory, mesh, input, model and
optimiser, resume, update step, loop (logs, validation, checkpoints), final evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from mrnn_jax import configs, distributed, files, losses, sharding
from mrnn_jax.data import Dataset, load_dataset
from mrnn_jax.data.image_files import ImageFiles
from mrnn_jax.data.pipeline import (
    CaptionTable,
    batch_indices,
    batch_width,
    data_state,
    images_per_batch,
    train_batch,
)
from mrnn_jax.data.records import ImageRecord
from mrnn_jax.encoders.pretrained import ARCHITECTURES, load_pretrained, trainable_labels
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import evaluators
from mrnn_jax.evaluation.final import final_evaluation
from mrnn_jax.model import MRNN, make_model
from mrnn_jax.pages import run_page
from mrnn_jax.text.vocab import Vocabulary
from mrnn_jax.training import checkpoints, nonfinite, signals
from mrnn_jax.training import lock as workdir_lock
from mrnn_jax.training import metrics_log as metrics_log_lib
from mrnn_jax.training.early_stopping import BestSoFar
from mrnn_jax.training.selection import Selector
from mrnn_jax.training.tensorboard import TensorBoardLog

log = logging.getLogger("mrnn_jax")
RESULTS_FILE = "results.json"


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training: step, parameters, optimiser state, RNG key."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    def checkpoint_extras(self) -> dict:
        """What a checkpoint stores besides the parameters."""
        return {"step": self.step, "opt_state": self.opt_state, "rng": self.rng}


# --- model and optimiser -----------------------------------------------------------------


def make_schedule(train_config: ConfigDict) -> optax.Schedule:
    """Learning rate by step: linear warm-up to the peak, then cosine decay to a floor."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train_config.learning_rate,
        warmup_steps=max(1, train_config.warmup_steps),
        decay_steps=max(train_config.num_steps, train_config.warmup_steps + 1),
        end_value=train_config.learning_rate * train_config.final_learning_rate_fraction,
    )


def make_optimizer(
    train_config: ConfigDict,
    schedule: optax.Schedule | None = None,
    labels: Any = None,
    encoder_learning_rate: float = 0.0,
) -> optax.GradientTransformation:
    """Adam on ``schedule`` (default :func:`make_schedule`), after clipping by global norm.

    With ``labels`` (a pytree like the parameters: ``"mrnn"``, ``"encoder"`` or ``"frozen"``,
    see :func:`mrnn_jax.encoders.pretrained.trainable_labels`), frozen parameters never
    change and hold no optimiser state, and fine-tuned encoder layers follow the same
    schedule scaled to ``encoder_learning_rate``.
    """
    schedule = schedule or make_schedule(train_config)
    clip = optax.clip_by_global_norm(train_config.grad_clip_norm)
    if labels is None:
        return optax.chain(clip, optax.adam(schedule))
    ratio = encoder_learning_rate / train_config.learning_rate
    zero_frozen = {"mrnn": optax.identity(), "encoder": optax.identity()}
    return optax.chain(
        optax.multi_transform({**zero_frozen, "frozen": optax.set_to_zero()}, labels),
        clip,  # on the gradients that count only
        optax.multi_transform(
            {
                "mrnn": optax.adam(schedule),
                "encoder": optax.adam(lambda step: ratio * schedule(step)),
                "frozen": optax.set_to_zero(),
            },
            labels,
        ),
    )


def init_state(
    model: MRNN,
    tx: optax.GradientTransformation,
    seed: int,
    image: np.ndarray,
    tokens,
    encoder_params: Any = None,
) -> TrainState:
    """Fresh parameters and optimiser state from ``seed`` (pure); ``encoder_params`` (a
    pretrained CNN's) replace the encoder's random ones."""
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    params = model.init(init_rng, image, tokens)["params"]
    if encoder_params is not None:
        params = {**params, "image_encoder": {"backbone": encoder_params}}
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_rng
    )


# --- update step -------------------------------------------------------------------------


def make_train_step(
    model: MRNN,
    tx: optax.GradientTransformation,
    l2_weight: float,
    l2_skip: tuple[str, ...] = (),
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """A pure ``train_step(state, batch) -> (state, metrics)`` (not yet jitted).

    The loss is the mean NLL per word over the global batch plus ``l2_weight`` times the L2
    penalty (of every parameter but the top-level subtrees in ``l2_skip``). Metrics are
    sums, so that they add up across steps into corpus values. A step whose loss or gradient
    norm is not finite changes nothing but the step (metric ``finite`` is then False).
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        dropout_rng = jax.random.fold_in(state.rng, state.step)
        inputs, targets, mask = losses.shift_tokens(batch["tokens"])

        def loss_fn(params):
            logits = model.apply(
                {"params": params},
                batch["image"],
                inputs,
                train=True,
                rngs={"dropout": dropout_rng},
            )
            sums = losses.masked_nll_sums(logits, targets, mask)
            nll = sums["nll_sum"] / jnp.maximum(sums["num_tokens"], 1.0)
            l2 = losses.l2_penalty(params, l2_skip)
            return nll + l2_weight * l2, (sums, l2)

        (loss, (sums, l2)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # The non-finite guard: a NaN or Inf loss or gradient leaves parameters and optimiser
        # state as they were (see mrnn_jax.training.nonfinite for what the run then does).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(finite, new, old),
            (params, opt_state),
            (state.params, state.opt_state),
        )
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        step_metrics = {
            "loss": loss,
            "nll_sum": sums["nll_sum"],
            "num_tokens": sums["num_tokens"],
            "grad_norm": grad_norm,
            "l2": l2,
            "finite": finite,
        }
        return new_state, step_metrics

    return train_step


def jit_train_step(train_step: Callable, mesh) -> Callable:
    """``train_step`` jitted over ``mesh``: state replicated, batch split on ``data``."""
    replicated = sharding.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(replicated, sharding.data_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )


def jit_device_data_step(train_step: Callable, mesh) -> Callable:
    """``train_step`` fed from a training set held on the devices: ``step(state, data,
    indices, width=None)`` gathers the batch (``data["inputs"][indices["images"]]``,
    ``data["tokens"][indices["rows"], :width]``, all positions without ``width``) on device,
    so the host only sends the batch's row numbers."""
    replicated, split = sharding.replicated(mesh), sharding.data_sharding(mesh)

    def device_step(
        state: TrainState, data: dict, indices: dict, width: int | None = None
    ) -> tuple[TrainState, dict]:
        batch = {
            "image": data["inputs"][indices["images"]],
            "tokens": data["tokens"][indices["rows"], :width],
        }
        return train_step(state, jax.lax.with_sharding_constraint(batch, split))

    return jax.jit(
        device_step,
        in_shardings=(replicated, replicated, split),
        out_shardings=(replicated, replicated),
        static_argnums=(3,),
        donate_argnums=(0,),
    )


def bucket_widths(config: ConfigDict) -> tuple[int, ...]:
    """The length buckets' padded widths in token positions (``train.length_buckets`` are in
    words; start and end tokens add two); empty without buckets."""
    return tuple(int(words) + 2 for words in config.train.get("length_buckets", ()))


# --- work directory ----------------------------------------------------------------------


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


def build_vocab(train_records, min_count: int) -> Vocabulary:
    """The vocabulary of the training captions (never the validation or test ones)."""
    return Vocabulary.build([t for r in train_records for t in r.tokens], min_count=min_count)


# --- the run -----------------------------------------------------------------------------


def train_and_evaluate(
    config: ConfigDict,
    workdir: str,
    *,
    num_devices: int | None = None,
    progress: bool = True,
) -> dict:
    """Trains (resuming from ``workdir`` when it holds a checkpoint) and evaluates.

    The loop runs the evaluators ``config.evaluators`` lists when they are due and keeps the
    checkpoint that is best by ``train.select_by``. Returns the final evaluation of that
    checkpoint (per split: perplexity and caption metrics; what it was selected by), also
    written to ``workdir/results.json``; the run's curves go to TensorBoard event files and
    ``workdir/run_page.html``.
    """
    started = time.time()
    # Resolved once, here: orbax, the lock, the logs and the final evaluation's reader all
    # see one absolute path, whatever the caller's spelling and working directory.
    workdir = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
    tc = config.train

    # Mesh and work directory.
    mesh = sharding.make_mesh(num_devices)
    sharding.check_batch_size(tc.batch_size, mesh)
    if tc.batch_size % tc.captions_per_image:
        raise MrnnError(
            f"train.batch_size={tc.batch_size} is not a multiple of "
            f"train.captions_per_image={tc.captions_per_image}"
        )
    sharding.check_batch_size(
        tc.batch_size // tc.captions_per_image, mesh, "train.batch_size / train.captions_per_image"
    )
    # Pretrained encoder weights (they also say how to preprocess the images) and the data:
    # read and checked before anything is written.
    encoder_params = None
    if config.encoder.name in ARCHITECTURES:
        weights = load_pretrained(config.encoder)
        config.encoder.update(weights.encoder_config(config.encoder))  # the saved config: whole
        encoder_params = weights.params
        log.info("encoder: %s from %s", config.encoder.name, weights.meta["source"]["file_name"])
    selector = Selector.from_config(tc)
    evaluators.check_config(config.evaluators)
    evaluators.check_scorers(config)
    evaluators.check_selection(config.evaluators, selector.metric)
    wanted = {"train", "val", *config.eval.splits, *evaluators.split_names(config.evaluators)}
    needed = None if config.dataset.name == "shapes" else wanted
    dataset = load_dataset(config.dataset, config.encoder, needed)
    for split in sorted(wanted):
        if split not in dataset.splits:
            raise MrnnError(
                f"dataset {config.dataset.name!r} has no split {split!r} (has "
                f"{sorted(dataset.splits)}); training needs train and val, eval.splits "
                f"names {list(config.eval.splits)}, and the evaluators read "
                f"{sorted(evaluators.split_names(config.evaluators))}"
            )
    check_one_batch(dataset.splits["train"].records, tc)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise MrnnError(f"{workdir}: cannot create the work directory ({e.strerror})") from e
    # One trainer per work directory (process 0 holds the lock for all of a run's processes);
    # then SIGINT / SIGTERM save before they stop the run.
    with (
        workdir_lock.locked(workdir, enabled=distributed.is_primary()),
        signals.handle_signals() as stop,
    ):
        ckpts = checkpoints.RunCheckpoints(workdir, max_to_keep=tc.max_checkpoints)
        tensorboard = TensorBoardLog(workdir, enabled=distributed.is_primary())
        try:
            results = _train_and_evaluate(
                config,
                workdir,
                mesh,
                ckpts,
                dataset,
                encoder_params,
                progress,
                started,
                selector,
                tensorboard,
                stop,
            )
        except BaseException:
            ckpts.close_quietly()
            raise
        finally:
            tensorboard.close()
        ckpts.close()
        return results


def _train_and_evaluate(
    config: ConfigDict,
    workdir: str,
    mesh: Mesh,
    ckpts: checkpoints.RunCheckpoints,
    dataset: Dataset,
    encoder_params: Any,
    progress: bool,
    started: float,
    selector: Selector,
    tensorboard: TensorBoardLog,
    stop: signals.StopRequest | None = None,
) -> dict:
    """The run after the checks: resume or start, train, evaluate (see train_and_evaluate)."""
    stop = stop or signals.StopRequest()
    tc = config.train
    latest = ckpts.latest_step()
    config_json = configs.to_json(config)
    if latest is not None:
        check_resume(workdir, ckpts.read_item(latest, "config"), config_json)
        check_same_data(workdir, ckpts.read_item(latest, "meta").get("data"), dataset.summary())
    primary = distributed.is_primary()  # the one process that writes logs and results
    if primary:
        files.write_json_atomic(os.path.join(workdir, "config.json"), config_json)

    # Input.
    splits = dataset.splits
    if latest is not None:
        vocab = Vocabulary.from_json(ckpts.read_item(latest, "vocab"))
    else:
        vocab = build_vocab(splits["train"].records, config.dataset.min_count)
    if primary:
        vocab.save(os.path.join(workdir, "vocab.json"))
    max_words = config.dataset.max_words
    train_table = CaptionTable.build(splits["train"].records, vocab, max_words)
    train_inputs = splits["train"].inputs
    log.info(
        "data: %d training captions of %d images, vocabulary %d words, %d device(s)",
        len(train_table),
        len(splits["train"].records),
        len(vocab),
        mesh.size,
    )

    data_summary = dataset.summary()

    # Model and optimiser.
    model = make_model(config.model, config.encoder, len(vocab))
    schedule = make_schedule(tc)
    pretrained = config.encoder.name in ARCHITECTURES
    first_image, first_tokens = train_inputs[:1], train_table.tokens[:1, :-1]
    labels = None
    if pretrained:
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), first_image, first_tokens)
        labels = trainable_labels(shapes["params"], config.encoder)
    tx = make_optimizer(tc, schedule, labels, config.encoder.get("learning_rate", 0.0))
    state = init_state(model, tx, tc.seed, first_image, first_tokens, encoder_params)
    state = sharding.replicate(state, mesh)

    # Resume.
    vocab_json = vocab.to_json()
    # The scalar that picks the best checkpoint (train.select_by) also stops the run after
    # train.patience evaluations without improving it.
    best_value, best_scalars = selector.worst, {}
    watch = BestSoFar.start(selector.mode, tc.get("patience", 0))
    if latest is not None:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        params, extras, meta = ckpts.restore(latest, abstract.params, abstract.checkpoint_extras())
        state = TrainState(params=params, **extras)
        best_value, best_scalars = _resumed_best(meta, selector)
        watch = _resumed_watch(watch, meta, selector, best_value, latest)
        log.info("resumed from %s at step %d", os.path.join(workdir, "checkpoints"), latest)
    resumed = meta if latest is not None else {}
    # metrics.jsonl: the rows of the restored step (none, for a fresh run).
    metrics_log = metrics_log_lib.MetricsLog(workdir, enabled=primary)
    results_path = os.path.join(workdir, RESULTS_FILE)
    if latest is not None and (latest >= tc.num_steps or watch.should_stop):
        finished = _finished(workdir, latest, results_path)
        if finished is not None:
            _complete_finished_run(workdir, finished, resumed, metrics_log, config)
            return finished
    if latest is None:
        metrics_log.start([], 0)
    else:
        metrics_log.start(resumed.get("metrics_log", resumed.get("metrics_rows")), latest)
    tensorboard.start(metrics_log.history)  # TensorBoard: the same rows, in a new file
    guard = nonfinite.NonFiniteGuard.from_config(tc, resumed.get("nonfinite"))

    # Loop.
    # The L2 penalty is the m-RNN's: a pretrained encoder's weights are not pulled to zero.
    l2_skip = ("image_encoder",) if pretrained else ()
    pure_step = make_train_step(model, tx, tc.l2_weight, l2_skip)
    widths = bucket_widths(config)
    device_data = None
    if tc.get("device_data", False):
        if isinstance(train_inputs, ImageFiles):
            raise MrnnError(
                "train.device_data=True holds the training set on the devices: it needs "
                "precomputed features (or an in-memory dataset such as shapes), not image files"
            )
        device_data = sharding.replicate(
            {"inputs": np.asarray(train_inputs), "tokens": train_table.tokens}, mesh
        )
        train_step = jit_device_data_step(pure_step, mesh)
        log.info("training set held on the devices (%d captions)", len(train_table))
    else:
        train_step = jit_train_step(pure_step, mesh)
    run_evaluators = evaluators.build_evaluators(config, model, vocab, splits, mesh)
    step = int(sharding.to_host(state.step))
    window: list[dict] = metrics_log_lib.window_from_json(resumed.get("log_window"))
    pending: list[jax.Array] = []  # the last steps' finite flags, not yet read by the guard
    last_saved = latest
    window_start = time.time()
    bar = tqdm(
        total=tc.num_steps,
        initial=step,
        disable=not progress or not primary,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    stop.defer(True)  # from here a first SIGINT / SIGTERM finishes the step, saves, stops
    while step < tc.num_steps and not watch.should_stop:
        if device_data is not None:
            indices = batch_indices(
                train_table, step, tc.batch_size, tc.seed, tc.captions_per_image, widths=widths
            )
            width = batch_width(
                train_table, step, tc.batch_size, tc.seed, tc.captions_per_image, widths
            )
            state, step_metrics = train_step(
                state, device_data, sharding.shard_batch(indices, mesh), width
            )
        else:
            batch = train_batch(
                train_table,
                train_inputs,
                step,
                tc.batch_size,
                tc.seed,
                tc.captions_per_image,
                process_index=jax.process_index(),  # each process reads only its own part
                process_count=jax.process_count(),
                widths=widths,
            )
            state, step_metrics = train_step(state, sharding.shard_local_batch(batch, mesh))
        window.append(step_metrics)
        step += 1
        bar.update(1)
        last = step == tc.num_steps
        pending.append(step_metrics["finite"])
        stopping = signals.agreed(stop, step % tc.log_every == 0)
        every = (tc.log_every, tc.eval_every, tc.checkpoint_every)
        if last or stopping or any(step % n == 0 for n in every):
            # The host is about to read the state: first the non-finite guard.
            guard.check(_step_flags(sharding.to_host(pending), step), last_saved)
            pending = []
        if step % tc.log_every == 0 or last:
            summary = _summarise(sharding.to_host(window), time.time() - window_start)
            summary["learning_rate"] = float(schedule(step))
            metrics_log.write(step, "train", summary)
            tensorboard.write(step, "train", summary)
            bar.set_postfix(
                loss=f"{summary['loss']:.3f}",
                ppl=f"{summary['perplexity']:.2f}",
                tok_s=f"{summary['tokens_per_second']:.0f}",
            )
            window, window_start = [], time.time()
        paused = time.time()
        is_best = False
        scalars = _run_due_evaluators(run_evaluators, state.params, step, last)
        for prefix, values in _by_prefix(scalars).items():
            metrics_log.write(step, prefix, values)
            tensorboard.write(step, prefix, values)
        if scalars:
            value = _selection_value(selector, scalars, step)
            if primary:
                bar.write(f"step {step}: " + _describe(scalars))
            if value is not None and not math.isfinite(value):
                log.warning("step %d: %s is not finite", step, selector.metric)
            if value is not None:
                # Parameters whose update was just skipped as non-finite are not saved, so
                # they cannot be the best: that evaluation counts as no improvement.
                watch = watch.observe(step, math.nan if guard.in_a_row else value)
                if watch.improved:
                    best_value, best_scalars, is_best = value, scalars, True
        early_stop = watch.should_stop
        save = step % tc.checkpoint_every == 0 or last or is_best or stopping or early_stop
        if save and guard.in_a_row:  # these parameters just gave a non-finite loss
            log.warning("step %d: no checkpoint (its update was skipped as non-finite)", step)
        elif save:
            meta = {
                "step": step,
                "data_state": data_state(train_table, step, tc.batch_size, tc.captions_per_image),
                "selected_by": selector.metric,
                "best_value": _json_number(best_value),
                "best_scalars": best_scalars,
                "best_so_far": watch.to_json(),
                "data": data_summary,
                # What a resumed run needs to write the same metrics.jsonl as an uninterrupted one.
                "metrics_rows": metrics_log.rows,
                "metrics_log": metrics_log.history,
                "log_window": metrics_log_lib.window_to_json(sharding.to_host(window)),
                "nonfinite": guard.to_json(),
            }
            if is_best:
                ckpts.save(step, state.params, None, meta, config_json, vocab_json, best=True)
            ckpts.save(step, state.params, state.checkpoint_extras(), meta, config_json, vocab_json)
            last_saved = step
        if stopping:
            bar.close()
            saved = os.path.join(workdir, checkpoints.LATEST_DIR, str(last_saved))
            raise signals.Interrupted(
                stop.signum,
                f"stopped by {stop.name()} after step {step}; "
                + (f"checkpoint in {saved}" if last_saved is not None else "no checkpoint yet")
                + "; run the same command to resume",
            )
        window_start += time.time() - paused  # tokens per second count training time only
        if early_stop:
            _log_early_stop(bar if primary else None, watch, selector, step)
    stop.defer(False)  # nothing left to save: a signal stops the final evaluation at once
    bar.close()
    if stop.requested:  # came during the last step's evaluation or save, after the check
        raise signals.Interrupted(
            stop.signum,
            f"stopped by {stop.name()} after step {step}; checkpoint in "
            f"{os.path.join(workdir, checkpoints.LATEST_DIR, str(last_saved))}; run the same "
            "command to finish the final evaluation",
        )

    # Final evaluation, on the best checkpoint.
    best_dir, best_step = checkpoints.find_checkpoint(workdir, "best")
    if not best_dir.endswith(checkpoints.BEST_DIR):
        log.warning("no finite %s: evaluating the latest checkpoint", selector.metric)
    params = checkpoints.restore_params(best_dir, best_step, _abstract(state.params))
    results = {
        "best_step": best_step,
        "selected_by": {**selector.describe(), "value": _json_number(best_value)},
        "best_scalars": best_scalars,
        "best_val_perplexity": best_scalars.get("val/perplexity"),
        "stopped_early": watch.should_stop,
        "data": dataset.summary(),  # again: images found broken while training count too
        "splits": {},
    }
    for split, values, examples in final_evaluation(config, model, params, vocab, splits, mesh):
        results["splits"][split] = values
        results.setdefault("examples", {})[split] = examples
        finite = {k: v for k, v in values.items() if v is not None}
        metrics_log.write(best_step, split, finite)
        tensorboard.write(best_step, split, finite)
    tensorboard.close()  # every event on disk before the run counts as finished
    results["wall_time_seconds"] = time.time() - started
    if primary:
        # results.json last: its presence means the run has finished (see _finished).
        run_page.write_run_report(workdir, results)
        files.write_json_atomic(results_path, results)
    return results


def check_one_batch(records: list[ImageRecord], train_config: ConfigDict) -> None:
    """Raises :class:`MrnnError` when the training split cannot fill one batch."""
    per_batch = images_per_batch(train_config.batch_size, train_config.captions_per_image)
    captioned = sum(1 for record in records if record.tokens)
    if captioned < per_batch:
        raise MrnnError(
            f"the training split has {captioned} images with captions, fewer than one "
            f"batch needs ({per_batch}: train.batch_size={train_config.batch_size} / "
            f"train.captions_per_image={train_config.captions_per_image}); lower train.batch_size"
        )


def _finished(workdir: str, step: int, results_path: str) -> dict | None:
    """The results of a run that already ran to its last step; None where there are none
    (missing, unreadable, or not a run's results: the final evaluation then runs again)."""
    try:
        with open(results_path, encoding="utf-8") as f:
            results = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); evaluating again", results_path, e)
        return None
    if not (
        isinstance(results, dict)
        and isinstance(results.get("splits"), dict)
        and all(isinstance(v, dict) for v in results["splits"].values())
        and isinstance(results.get("best_step"), int)
        and isinstance(results.get("selected_by"), dict)
    ):
        log.warning("%s: not the results of a run; evaluating again", results_path)
        return None
    log.info(
        "%s: finished at step %d already; nothing to do (results: %s; raise train.num_steps "
        "to train on, or delete results.json to evaluate again)",
        workdir,
        step,
        results_path,
    )
    return results


def _complete_finished_run(
    workdir: str,
    results: dict,
    meta: dict,
    metrics_log: metrics_log_lib.MetricsLog,
    config: ConfigDict,
) -> None:
    """Puts back what a finished run promises and has lost: ``metrics.jsonl``'s rows (from
    the last checkpoint's copy and the final evaluation in ``results``) and ``run_page.html``."""
    if not distributed.is_primary():
        return
    saved = meta.get("metrics_log")
    if isinstance(saved, list):
        written = os.path.getmtime(os.path.join(workdir, RESULTS_FILE))
        final = [
            {
                "step": results["best_step"],
                "split": split,
                "time": written,
                **{k: float(v) for k, v in values.items() if v is not None},
            }
            for split in config.eval.splits  # the order they were logged in
            for values in [results["splits"].get(split)]
            if values is not None
        ]
        metrics_log.restore([*saved, *final])
    if not os.path.exists(os.path.join(workdir, run_page.RUN_REPORT)):
        log.info("%s: writing the missing report", workdir)
        run_page.write_run_report(workdir, results)


def _step_flags(flags: list, step: int) -> list[tuple[int, bool]]:
    """``(step, finite)`` of the steps up to ``step`` whose finite flags are ``flags``."""
    first = step - len(flags) + 1
    return [(first + i, bool(f)) for i, f in enumerate(flags)]


def _run_due_evaluators(
    run_evaluators: list[evaluators.Evaluator], params: Any, step: int, last: bool
) -> dict[str, float]:
    """Runs the evaluators due after ``step``; returns their scalars as ``prefix/name``."""
    scalars = {}
    for evaluator in evaluators.due(run_evaluators, step, last):
        for name, value in evaluator.run(params).scalars.items():
            scalars[f"{evaluator.prefix}/{name}"] = float(value)
    return scalars


def _by_prefix(scalars: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"val/perplexity": x}`` as ``{"val": {"perplexity": x}}`` (one log row per prefix)."""
    grouped: dict[str, dict[str, float]] = {}
    for key, value in scalars.items():
        prefix, name = key.split("/", 1)
        grouped.setdefault(prefix, {})[name] = value
    return grouped


def _selection_value(selector: Selector, scalars: dict[str, float], step: int) -> float | None:
    """The selection scalar of this step's evaluations (None when its evaluator did not run);
    an evaluator that ran under its prefix without that name is a config error."""
    value = selector.read(scalars)
    if value is None and any(k.startswith(selector.prefix + "/") for k in scalars):
        logged = sorted(k for k in scalars if k.startswith(selector.prefix + "/"))
        raise MrnnError(
            f"train.select_by={selector.metric!r} was not logged at step {step}; the "
            f"evaluators logged {', '.join(logged)}"
        )
    return value


def _describe(scalars: dict[str, float]) -> str:
    """A short progress line of evaluation scalars."""
    return ", ".join(f"{k} {v:.4g}" for k, v in scalars.items())


def _resumed_best(meta: dict, selector: Selector) -> tuple[float, dict]:
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


def _json_number(value: float) -> float | None:
    """``value``, or None where JSON has no number for it (infinities, NaN)."""
    return value if math.isfinite(value) else None


def _log_early_stop(bar: tqdm | None, watch: BestSoFar, selector: Selector, step: int) -> None:
    """Says that the run stops early, and why."""
    message = (
        f"step {step}: no better {selector.metric} in {watch.stale} evaluations (best "
        f"{watch.best:.4g} at step {watch.best_step}): stopping early (train.patience)"
    )
    log.info(message)
    if bar is not None:
        bar.write(message)


def _resumed_watch(
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


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree of arrays (a restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _summarise(window: list[dict], seconds: float) -> dict:
    """Mean loss and gradient norm, corpus perplexity and tokens per second of a window."""
    nll = sum(float(m["nll_sum"]) for m in window)
    tokens = sum(float(m["num_tokens"]) for m in window)
    return {
        "loss": float(np.mean([m["loss"] for m in window])),
        "perplexity": losses.perplexity(nll, tokens),
        "grad_norm": float(np.mean([m["grad_norm"] for m in window])),
        "tokens_per_second": tokens / max(seconds, 1e-9),
    }
