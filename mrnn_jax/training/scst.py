"""Self-critical sequence training (SCST): the m-RNN fine-tuned for the CIDEr-D of its captions.

Rennie et al. (CVPR 2017, arXiv 1612.00563) with the baseline of Luo (arXiv 2003.09971,
"new self-critical"): for each image of the batch, ``samples`` captions are drawn from the
model; each is rewarded by its CIDEr-D (optionally mixed with BLEU-4) against the image's
training references, minus a baseline (the mean reward of the image's other samples, or its
greedy caption's); the loss is REINFORCE's,

    loss = - sum_i (reward_i - baseline_i) * log p(caption_i) / (words and end tokens),

plus the L2 penalty and an optional entropy bonus. One jitted step (:func:`make_scst_step`)
does it all on device: V_I I once per image, the samples drawn by the decoding loop
(:func:`mrnn_jax.decode.decode_by_choice`, one ``lax.scan``), the reward on the host through a
``jax.pure_callback`` in the middle (:class:`HostReward`, a few milliseconds), and the gradient
of the sampled words' log-likelihood back through the same scan: the log-probabilities of the
sampled words are those of teacher-forcing them (tested), with no second forward pass. Then the
update of :func:`mrnn_jax.training.step.apply_gradients` (clipping, Adam, the non-finite guard).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ml_collections import ConfigDict

from mrnn_jax import decode, losses
from mrnn_jax.evaluation.rewards import CaptionRewards
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import END_ID, PAD_ID, Vocabulary
from mrnn_jax.training.step import TrainState, apply_gradients


@dataclasses.dataclass(frozen=True)
class ScstOptions:
    """``train.scst`` (see the commented default config)."""

    samples: int = 5
    baseline: str = "mean"
    reward: tuple[str, ...] = ("CIDEr-D",)
    reward_weights: tuple[float, ...] = (1.0,)
    learning_rate: float = 5e-5
    max_words: int = 16
    entropy_weight: float = 0.0

    @classmethod
    def from_config(cls, train_config: ConfigDict) -> ScstOptions:
        """The options of a (checked) config's ``train.scst``."""
        s = train_config.scst
        return cls(
            samples=int(s.samples),
            baseline=str(s.baseline),
            reward=tuple(s.reward),
            reward_weights=tuple(float(w) for w in s.reward_weights),
            learning_rate=float(s.learning_rate),
            max_words=int(s.max_words),
            entropy_weight=float(s.entropy_weight),
        )


def references(records: Sequence[Any]) -> list[list[str]]:
    """Each training image's reference captions as space-joined tokens (the reward's
    references and, all together, its document frequencies)."""
    return [[" ".join(caption) for caption in record.tokens] for record in records]


class HostReward:
    """The reward of sampled token ids, on the host: ``(tokens [N, L], images [N]) ->
    (reward [N], seconds)``, each row scored against the references of its training image.

    Built once per run (the references' document frequencies with it); called from inside
    the jitted step through ``jax.pure_callback``.
    """

    def __init__(
        self,
        vocab: Vocabulary,
        image_references: Sequence[Sequence[str]],
        metrics: Sequence[str] = ("CIDEr-D",),
        weights: Sequence[float] = (1.0,),
    ):
        self.scorer = CaptionRewards(
            image_references, metrics=metrics, weights=weights, vocabulary=vocab.words
        )

    def __call__(self, tokens: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        scores = self.scorer.score(np.asarray(tokens), np.asarray(images))
        seconds = time.perf_counter() - started
        return np.asarray(scores, np.float32), np.asarray(seconds, np.float32)


def _reward_on_host(
    reward: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    tokens: jax.Array,
    images: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``reward(tokens, images)`` called from jitted code (the whole arrays, on one host)."""
    shapes = (
        jax.ShapeDtypeStruct((tokens.shape[0],), jnp.float32),
        jax.ShapeDtypeStruct((), jnp.float32),
    )
    return jax.pure_callback(reward, shapes, jax.lax.stop_gradient(tokens), images)


def baselines(rewards: jax.Array, samples: int, greedy_rewards: jax.Array | None) -> jax.Array:
    """Each sample's baseline: the mean reward of its image's other samples (rows ``samples
    * i ... samples * i + samples - 1`` are image ``i``'s), or its image's greedy reward."""
    if greedy_rewards is not None:
        return jnp.repeat(greedy_rewards, samples)
    per_image = rewards.reshape(-1, samples)
    others = (per_image.sum(axis=1, keepdims=True) - per_image) / (samples - 1)
    return others.reshape(-1)


def make_scst_step(
    model: MRNN,
    tx: optax.GradientTransformation,
    options: ScstOptions,
    reward: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    l2_weight: float,
    l2_skip: tuple[str, ...] = (),
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """A pure ``scst_step(state, batch) -> (state, metrics)`` (not yet jitted).

    ``batch`` holds ``image [B, ...]`` and ``image_index [B]`` (each image's row in the
    training split, whose references ``reward`` scores against). The samples of step ``s``
    are drawn from ``state.rng`` folded with ``s`` (a resumed run draws the same ones); the
    model runs without dropout, as it decodes. Metrics are sums over the step's ``B *
    samples`` captions (``reward_sum``, ``reward_baseline_sum``, ``num_samples``, the sampled
    words' ``nll_sum``, ``num_tokens`` (end tokens included) and ``num_words``, and with an
    entropy bonus ``entropy_sum``), with ``loss``, ``grad_norm``,
    ``l2``, ``finite`` and ``reward_seconds`` (host time in the reward).
    """
    n = options.samples
    banned = decode.banned_tokens(allow_unk=False)
    with_entropy = options.entropy_weight > 0

    def scst_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        images, image_index = batch["image"], batch["image_index"]
        rows = images.shape[0] * n
        row_images = jnp.repeat(image_index, n)
        sample_rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 1)

        def decode_rows(params: Any, choose: Callable, count: int, per_image: int) -> tuple:
            variables = {"params": params}
            projection = model.apply(variables, images, method=MRNN.project_image)  # once
            projection = jnp.repeat(projection, per_image, axis=0)
            r0 = model.apply(variables, count, method=MRNN.initial_carry)
            step_fn = decode.mrnn_step_fn(model, variables, projection, normalise=False)
            return decode.decode_by_choice(
                step_fn, r0, count, options.max_words, choose, banned, with_entropy, logits=True
            )

        greedy_rewards, greedy_seconds = None, jnp.zeros((), jnp.float32)
        if options.baseline == "greedy":
            argmax = lambda log_probs, t: jnp.argmax(log_probs, axis=-1)
            frozen = jax.lax.stop_gradient(state.params)
            greedy_tokens = decode_rows(frozen, argmax, images.shape[0], 1)[0]
            greedy_rewards, greedy_seconds = _reward_on_host(reward, greedy_tokens, image_index)

        def loss_fn(params: Any) -> tuple[jax.Array, dict]:
            choose = decode.sampling_choice(sample_rng, jnp.arange(rows))
            tokens, log_prob, *entropy = decode_rows(params, choose, rows, n)
            rewards, seconds = _reward_on_host(reward, tokens, row_images)
            baseline = baselines(rewards, n, greedy_rewards)
            advantage = jax.lax.stop_gradient(rewards - baseline)
            num_tokens = jnp.sum(tokens != PAD_ID).astype(jnp.float32)
            num_words = jnp.sum((tokens != PAD_ID) & (tokens != END_ID)).astype(jnp.float32)
            per_token = 1.0 / jnp.maximum(num_tokens, 1.0)
            entropy_sum = entropy[0].sum() if with_entropy else jnp.zeros((), jnp.float32)
            l2 = losses.l2_penalty(params, l2_skip)
            loss = (
                -jnp.sum(advantage * log_prob) * per_token
                - options.entropy_weight * entropy_sum * per_token
                + l2_weight * l2
            )
            aux = {
                "reward_sum": rewards.sum(),
                "reward_baseline_sum": baseline.sum(),
                "num_samples": jnp.asarray(rows, jnp.float32),
                "nll_sum": -log_prob.sum(),
                "num_tokens": num_tokens,
                "num_words": num_words,
                "reward_seconds": seconds + greedy_seconds,
                "l2": l2,
            }
            if with_entropy:
                aux["entropy_sum"] = entropy_sum
            return loss, aux

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state, finite, grad_norm = apply_gradients(state, tx, loss, grads)
        aux = jax.tree.map(jax.lax.stop_gradient, aux)
        return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite, **aux}

    return scst_step


def summarise(window: list[dict], seconds: float) -> dict:
    """The ``train`` row of SCST steps: mean loss and gradient norm, mean reward and
    baseline per caption, the sampled words' perplexity and entropy per word, samples per
    second and the reward's share of the time."""
    total = lambda key: sum(float(m[key]) for m in window)
    samples, tokens = max(total("num_samples"), 1.0), max(total("num_tokens"), 1.0)
    row = {
        "loss": float(np.mean([float(m["loss"]) for m in window])),
        "reward": total("reward_sum") / samples,
        "reward_baseline": total("reward_baseline_sum") / samples,
        "sample_perplexity": losses.perplexity(total("nll_sum"), tokens),
        "sample_words": total("num_words") / samples,
        "grad_norm": float(np.mean([float(m["grad_norm"]) for m in window])),
        "samples_per_second": samples / max(seconds, 1e-9),
        "reward_share": total("reward_seconds") / max(seconds, 1e-9),
    }
    if "entropy_sum" in window[0]:
        row["entropy"] = total("entropy_sum") / tokens
    return row
