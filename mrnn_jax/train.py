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

from mrnn_jax import checkpoint, configs, distributed, evaluate, files, metrics, sharding
from mrnn_jax.data import Dataset, load_dataset
from mrnn_jax.data.image_files import ImageFiles
from mrnn_jax.data.pipeline import (
    CaptionTable,
    batch_indices,
    batch_width,
    data_state,
    train_batch,
)
from mrnn_jax.early_stopping import BestSoFar
from mrnn_jax.encoders.pretrained import ARCHITECTURES, load_pretrained, trainable_labels
from mrnn_jax.errors import MrnnError
from mrnn_jax.model import MRNN, make_model
from mrnn_jax.vocab import Vocabulary

log = logging.getLogger("mrnn_jax")


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
    sums, so that they add up across steps into corpus values.
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        dropout_rng = jax.random.fold_in(state.rng, state.step)
        inputs, targets, mask = metrics.shift_tokens(batch["tokens"])

        def loss_fn(params):
            logits = model.apply(
                {"params": params},
                batch["image"],
                inputs,
                train=True,
                rngs={"dropout": dropout_rng},
            )
            sums = metrics.masked_nll_sums(logits, targets, mask)
            nll = sums["nll_sum"] / jnp.maximum(sums["num_tokens"], 1.0)
            l2 = metrics.l2_penalty(params, l2_skip)
            return nll + l2_weight * l2, (sums, l2)

        (loss, (sums, l2)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        step_metrics = {
            "loss": loss,
            "nll_sum": sums["nll_sum"],
            "num_tokens": sums["num_tokens"],
            "grad_norm": optax.tree.norm(grads),
            "l2": l2,
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


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (easy to plot with pandas);
    writes nothing when not ``enabled`` (every process but the first)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled

    def write(self, step: int, split: str, values: dict) -> None:
        """Records ``values`` for ``split`` at ``step``."""
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, "time": time.time()}
        row.update({k: float(v) for k, v in values.items()})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


# --- the run -----------------------------------------------------------------------------


def train_and_evaluate(
    config: ConfigDict,
    workdir: str,
    *,
    num_devices: int | None = None,
    progress: bool = True,
) -> dict:
    """Trains (resuming from ``workdir`` when it holds a checkpoint) and evaluates.

    Returns the final evaluation: per split, perplexity and caption metrics, from the
    checkpoint with the best validation perplexity. Also written to ``workdir/results.json``.
    """
    started = time.time()
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
        encoder_params, encoder_meta = load_pretrained(config.encoder)
        log.info("encoder: %s from %s", config.encoder.name, encoder_meta["source"]["file_name"])
    needed = None if config.dataset.name == "shapes" else {"train", "val", *config.eval.splits}
    dataset = load_dataset(config.dataset, config.encoder, needed)
    for split in ("train", "val", *config.eval.splits):
        if split not in dataset.splits:
            raise MrnnError(
                f"dataset {config.dataset.name!r} has no split {split!r} (has "
                f"{sorted(dataset.splits)}); training needs train and val, and eval.splits "
                f"names {list(config.eval.splits)}"
            )
    os.makedirs(workdir, exist_ok=True)
    ckpts = checkpoint.RunCheckpoints(workdir, max_to_keep=tc.max_checkpoints)
    try:
        return _train_and_evaluate(
            config, workdir, mesh, ckpts, dataset, encoder_params, progress, started
        )
    finally:
        ckpts.close()


def _train_and_evaluate(
    config: ConfigDict,
    workdir: str,
    mesh: Mesh,
    ckpts: checkpoint.RunCheckpoints,
    dataset: Dataset,
    encoder_params: Any,
    progress: bool,
    started: float,
) -> dict:
    """The run after the checks: resume or start, train, evaluate (see train_and_evaluate)."""
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
    val_table = CaptionTable.build_uncut(splits["val"].records, vocab, max_words)
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
    # The scalar that picks the best checkpoint, and stops the run after train.patience
    # evaluations without improving: the validation perplexity.
    watch = BestSoFar.start("min", tc.get("patience", 0))
    if latest is not None:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        params, extras, meta = ckpts.restore(latest, abstract.params, abstract.checkpoint_extras())
        state = TrainState(params=params, **extras)
        watch = watch.resumed(
            meta.get("best_so_far")
            or {"best": meta.get("best_val_perplexity", math.inf), "best_step": -1, "stale": 0}
        )
        log.info("resumed from %s at step %d", os.path.join(workdir, "checkpoints"), latest)

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
    metrics_log = MetricsLog(workdir, enabled=primary)
    step = int(sharding.to_host(state.step))
    window: list[dict] = []
    window_start = time.time()
    bar = tqdm(
        total=tc.num_steps,
        initial=step,
        disable=not progress or not primary,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
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
        if step % tc.log_every == 0 or last:
            summary = _summarise(sharding.to_host(window), time.time() - window_start)
            summary["learning_rate"] = float(schedule(step))
            metrics_log.write(step, "train", summary)
            bar.set_postfix(
                loss=f"{summary['loss']:.3f}",
                ppl=f"{summary['perplexity']:.2f}",
                tok_s=f"{summary['tokens_per_second']:.0f}",
            )
            window, window_start = [], time.time()
        paused = time.time()
        is_best = False
        if step % tc.eval_every == 0 or last:
            val = evaluate.split_perplexity(
                model, state.params, val_table, splits["val"].inputs, config.eval.batch_size, mesh
            )
            metrics_log.write(step, "val", val)
            if primary:
                bar.write(f"step {step}: validation perplexity {val['perplexity']:.3f}")
            if not math.isfinite(val["perplexity"]):
                log.warning("step %d: validation perplexity is not finite", step)
            watch = watch.observe(step, val["perplexity"])
            is_best = watch.improved
        stop = watch.should_stop
        if step % tc.checkpoint_every == 0 or last or is_best or stop:
            meta = {
                "step": step,
                "data_state": data_state(train_table, step, tc.batch_size, tc.captions_per_image),
                "best_val_perplexity": watch.best,
                "best_so_far": watch.to_json(),
                "data": data_summary,
            }
            if is_best:
                ckpts.save(step, state.params, None, meta, config_json, vocab_json, best=True)
            ckpts.save(step, state.params, state.checkpoint_extras(), meta, config_json, vocab_json)
        window_start += time.time() - paused  # tokens per second count training time only
        if stop:
            _log_early_stop(bar if primary else None, watch, step)
    bar.close()

    # Final evaluation, on the best checkpoint.
    best_dir, best_step = checkpoint.find_checkpoint(workdir, "best")
    if not best_dir.endswith(checkpoint.BEST_DIR):
        log.warning("no finite validation perplexity: evaluating the latest checkpoint")
    params = checkpoint.restore_params(best_dir, best_step, _abstract(state.params))
    results = {
        "best_step": best_step,
        "best_val_perplexity": watch.best,
        "data": dataset.summary(),  # again: images found broken while training count too
        "splits": {},
    }
    for split in config.eval.splits:
        values, captions = evaluate.evaluate_split(
            model,
            params,
            splits[split],
            vocab,
            max_words=max_words,
            decode_words=config.eval.max_decode_words,
            batch_size=config.eval.batch_size,
            mesh=mesh,
        )
        results["splits"][split] = values
        results.setdefault("examples", {})[split] = [
            {"image_id": r.image_id, "caption": c, "references": list(r.captions)}
            for r, c in zip(splits[split].records[:10], captions[:10], strict=True)
        ]
        metrics_log.write(best_step, split, values)
    results["wall_time_seconds"] = time.time() - started
    if primary:
        files.write_json_atomic(os.path.join(workdir, "results.json"), results)
    return results


def _log_early_stop(bar: tqdm | None, watch: BestSoFar, step: int) -> None:
    """Says that the run stops early, and why."""
    message = (
        f"step {step}: no better validation perplexity in {watch.stale} evaluations (best "
        f"{watch.best:.3f} at step {watch.best_step}): stopping early (train.patience)"
    )
    log.info(message)
    if bar is not None:
        bar.write(message)


def _abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree of arrays (a restore target)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _summarise(window: list[dict], seconds: float) -> dict:
    """Mean loss and gradient norm, corpus perplexity and tokens per second of a window."""
    nll = sum(float(m["nll_sum"]) for m in window)
    tokens = sum(float(m["num_tokens"]) for m in window)
    return {
        "loss": float(np.mean([m["loss"] for m in window])),
        "perplexity": metrics.perplexity(nll, tokens),
        "grad_norm": float(np.mean([m["grad_norm"] for m in window])),
        "tokens_per_second": tokens / max(seconds, 1e-9),
    }
