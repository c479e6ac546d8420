"""The cost and the language-model metrics: masked per-word NLL, L2, corpus perplexity."""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from mrnn_jax.vocab import PAD_ID


def shift_tokens(tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Splits encoded captions ``[B, T+1]`` into (inputs, targets, mask), each ``[B, T]``.

    Inputs start with the start token; targets are the next words, the end token included;
    the mask is 1 on every real target word and 0 on padding.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    return inputs, targets, (targets != PAD_ID).astype(jnp.float32)


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Negative log-likelihood in nats of each target word: ``[..., V], [...] -> [...]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def masked_nll_sums(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Sum of the per-word NLL (nats) over real words, and their count."""
    nll = token_nll(logits, targets) * mask
    return {"nll_sum": nll.sum(), "num_tokens": mask.sum()}


def l2_penalty(params: Mapping, skip: tuple[str, ...] = ()) -> jax.Array:
    """0.5 * sum of squares of every weight matrix and embedding (biases are not penalised),
    leaving out the top-level subtrees named in ``skip`` (e.g. a pretrained encoder)."""
    params = {k: v for k, v in params.items() if k not in skip}
    leaves = jax.tree_util.tree_leaves_with_path(params)
    total = jnp.zeros((), jnp.float32)
    for path, leaf in leaves:
        name = str(getattr(path[-1], "key", path[-1]))
        if name != "bias":
            total = total + 0.5 * jnp.sum(jnp.square(leaf.astype(jnp.float32)))
    return total


def perplexity(nll_sum: float, num_tokens: float) -> float:
    """Corpus-level per-word perplexity exp(total NLL in nats / number of words).

    Equal to 2 ** (-(1/N) sum log2 P(w)), the paper's definition.
    """
    if num_tokens <= 0:
        return float("nan")
    return math.exp(float(nll_sum) / float(num_tokens))
