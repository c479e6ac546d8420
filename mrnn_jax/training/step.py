"""The update step: parameters and optimiser state, and a pure ``train_step`` jitted over a mesh.

``train_step(state, batch) -> (state, metrics)`` takes the mean NLL per word plus the L2
penalty, clips the gradients, applies Adam on a warm-up + cosine schedule and skips (keeps
the old state) any update whose loss or gradient norm is not finite. ``jit_train_step``
shards the batch on the mesh's ``data`` axis and replicates the state; a 1-device mesh is the
single-device case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from mrnn_jax import losses, sharding
from mrnn_jax.model import MRNN


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
        new_state, finite, grad_norm = apply_gradients(state, tx, loss, grads)
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


def apply_gradients(
    state: TrainState, tx: optax.GradientTransformation, loss: jax.Array, grads: Any
) -> tuple[TrainState, jax.Array, jax.Array]:
    """``(new_state, finite, grad_norm)``: ``state`` after one optimiser update by ``grads``
    (the step counted), unless ``loss`` or the gradient norm is not finite, which leaves the
    parameters and optimiser state as they were (the non-finite guard; see
    :mod:`mrnn_jax.training.nonfinite` for what the run then does)."""
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (params, opt_state),
        (state.params, state.opt_state),
    )
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, finite, grad_norm


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
