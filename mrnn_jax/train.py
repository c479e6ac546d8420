"""Training: ``train_and_evaluate(config, workdir)``, a pure ``train_step`` jitted over a mesh.

Sections, in the order the run goes through them: work directory, mesh, input, model and
optimiser, resume, update step, loop (logs, validation, checkpoints), final evaluation.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict
from tqdm.auto import tqdm

from mrnn_jax import checkpoint, configs, evaluate, metrics, sharding
from mrnn_jax.data import load_dataset
from mrnn_jax.data.pipeline import CaptionTable, data_state, train_batch
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

    def train_part(self) -> dict:
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


def make_optimizer(train_config: ConfigDict) -> optax.GradientTransformation:
    """Adam on the schedule of :func:`make_schedule`, after clipping by global gradient norm."""
    return optax.chain(
        optax.clip_by_global_norm(train_config.grad_clip_norm),
        optax.adam(make_schedule(train_config)),
    )


def example_inputs(encoder_config: ConfigDict, image_inputs: np.ndarray, max_words: int):
    """A one-example (image input, tokens) pair with the shapes training uses, for ``init``."""
    return image_inputs[:1], np.zeros((1, max_words + 1), np.int32)


def init_state(
    model: MRNN, tx: optax.GradientTransformation, seed: int, image: np.ndarray, tokens
) -> TrainState:
    """Fresh parameters and optimiser state from ``seed`` (pure)."""
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    params = model.init(init_rng, image, tokens)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=train_rng
    )


# --- update step -------------------------------------------------------------------------


def make_train_step(
    model: MRNN, tx: optax.GradientTransformation, l2_weight: float
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """A pure ``train_step(state, batch) -> (state, metrics)`` (not yet jitted).

    The loss is the mean NLL per word over the global batch plus ``l2_weight`` times the L2
    penalty. Metrics are sums, so that they add up across steps into corpus values.
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
            l2 = metrics.l2_penalty(params)
            return nll + l2_weight * l2, (sums, l2)

        (loss, (sums, l2)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        step_metrics = {
            "loss": loss,
            "nll_sum": sums["nll_sum"],
            "num_tokens": sums["num_tokens"],
            "grad_norm": optax.global_norm(grads),
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


# --- work directory ----------------------------------------------------------------------


def prepare_workdir(workdir: str, config: ConfigDict) -> None:
    """Creates ``workdir`` or checks that its saved config describes the same model."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    new = configs.to_json(config)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        clash = configs.model_differences(saved, new)
        if clash:
            raise MrnnError(
                f"{workdir} holds a checkpoint of a different model ({'; '.join(clash)}); "
                "use a new --workdir, or the original config"
            )
        for change in configs.other_differences(saved, new):
            log.info("resuming with a changed setting: %s", change)
    checkpoint.write_json_atomic(path, new)


def load_or_build_vocab(workdir: str, train_records, min_count: int) -> Vocabulary:
    """The run's vocabulary: the saved one when resuming, else built from training captions."""
    path = os.path.join(workdir, "vocab.json")
    if os.path.exists(path):
        return Vocabulary.load(path)
    vocab = Vocabulary.build([t for r in train_records for t in r.tokens], min_count=min_count)
    vocab.save(path)
    return vocab


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (easy to plot with pandas)."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")

    def write(self, step: int, split: str, values: dict) -> None:
        """Records ``values`` for ``split`` at ``step``."""
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

    # Work directory and mesh.
    prepare_workdir(workdir, config)
    mesh = sharding.make_mesh(num_devices)
    sharding.check_batch_size(tc.batch_size, mesh)

    # Input.
    splits = load_dataset(config.dataset, config.encoder)
    if "train" not in splits or "val" not in splits:
        raise MrnnError(f"dataset {config.dataset.name!r} needs train and val splits")
    vocab = load_or_build_vocab(workdir, splits["train"].records, config.dataset.min_count)
    max_words = config.dataset.max_words
    train_table = CaptionTable.build(splits["train"].records, vocab, max_words)
    val_table = CaptionTable.build(splits["val"].records, vocab, max_words)
    train_inputs = splits["train"].inputs
    log.info(
        "data: %d training captions of %d images, vocabulary %d words, %d device(s)",
        len(train_table),
        len(splits["train"].records),
        len(vocab),
        mesh.size,
    )

    # Model and optimiser.
    model = make_model(config.model, config.encoder, len(vocab))
    tx = make_optimizer(tc)
    schedule = make_schedule(tc)
    example = example_inputs(config.encoder, train_inputs, max_words)
    state = init_state(model, tx, tc.seed, *example)
    state = sharding.replicate(state, mesh)

    # Resume.
    ckpts = checkpoint.RunCheckpoints(workdir, max_to_keep=tc.max_checkpoints)
    config_json, vocab_json = configs.to_json(config), vocab.to_json()
    best_val = float("inf")
    latest = ckpts.latest_step()
    if latest is not None:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        params, train_part, meta = ckpts.restore(latest, abstract.params, abstract.train_part())
        state = TrainState(params=params, **train_part)
        best_val = float(meta.get("best_val_perplexity", float("inf")))
        log.info("resumed from %s at step %d", os.path.join(workdir, "checkpoints"), latest)

    # Loop.
    train_step = jit_train_step(make_train_step(model, tx, tc.l2_weight), mesh)
    metrics_log = MetricsLog(workdir)
    step = int(jax.device_get(state.step))
    window: list[dict] = []
    window_start = time.time()
    bar = tqdm(
        total=tc.num_steps,
        initial=step,
        disable=not progress,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    while step < tc.num_steps:
        batch = train_batch(train_table, train_inputs, step, tc.batch_size, tc.seed)
        state, step_metrics = train_step(state, sharding.shard_batch(batch, mesh))
        window.append(step_metrics)
        step += 1
        bar.update(1)
        last = step == tc.num_steps
        if step % tc.log_every == 0 or last:
            summary = _summarise(jax.device_get(window), time.time() - window_start)
            summary["learning_rate"] = float(schedule(step))
            metrics_log.write(step, "train", summary)
            bar.set_postfix(
                loss=f"{summary['loss']:.3f}",
                ppl=f"{summary['perplexity']:.2f}",
                tok_s=f"{summary['tokens_per_second']:.0f}",
            )
            window, window_start = [], time.time()
        is_best = False
        if step % tc.eval_every == 0 or last:
            val = evaluate.split_perplexity(
                model, state.params, val_table, splits["val"].inputs, config.eval.batch_size, mesh
            )
            metrics_log.write(step, "val", val)
            bar.write(f"step {step}: validation perplexity {val['perplexity']:.3f}")
            if val["perplexity"] < best_val:
                best_val, is_best = val["perplexity"], True
        if step % tc.checkpoint_every == 0 or last or is_best:
            meta = {
                "step": step,
                "data_state": data_state(train_table, step, tc.batch_size),
                "best_val_perplexity": best_val,
            }
            if is_best:
                ckpts.save(step, state.params, None, meta, config_json, vocab_json, best=True)
            ckpts.save(step, state.params, state.train_part(), meta, config_json, vocab_json)
    bar.close()
    ckpts.close()

    # Final evaluation, on the best checkpoint.
    best_dir, best_step = checkpoint.find_checkpoint(workdir, "best")
    params = checkpoint.restore_params(best_dir, best_step, state.params)
    params = sharding.replicate(params, mesh)
    results = {"best_step": best_step, "best_val_perplexity": best_val, "splits": {}}
    for split in config.eval.splits:
        if split not in splits:
            raise MrnnError(f"eval.splits names {split!r}; the dataset has {sorted(splits)}")
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
    checkpoint.write_json_atomic(os.path.join(workdir, "results.json"), results)
    return results


def _summarise(window: list[dict], seconds: float) -> dict:
    nll = sum(float(m["nll_sum"]) for m in window)
    tokens = sum(float(m["num_tokens"]) for m in window)
    return {
        "loss": float(np.mean([m["loss"] for m in window])),
        "perplexity": metrics.perplexity(nll, tokens),
        "grad_norm": float(np.mean([m["grad_norm"] for m in window])),
        "tokens_per_second": tokens / max(seconds, 1e-9),
    }
