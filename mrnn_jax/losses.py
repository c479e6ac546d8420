"""The cost and the language-model metrics: masked per-word NLL, L2, corpus perplexity."""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from mrnn_jax.text.vocab import PAD_ID


def shift_tokens(tokens: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Splits encoded captions ``[B, T+1]`` into (inputs, targets, mask), each ``[B, T]``.

    Inputs start with the start token; targets are the next words, the end token included;
    the mask is 1 on every real target word and 0 on padding.
    """
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    return inputs, targets, (targets != PAD_ID).astype(jnp.float32)


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Negative log-likelihood in nats of each target word: ``[..., V], [...] -> [...]``.

    log-sum-exp(logits) minus the target's logit. Its gradient, softmax minus one-hot, is
    written out (:func:`_token_nll_backward`) so that the backward pass reads the logits
    once and writes their gradient once; left to autodiff, the log-softmax, its gradient
    and the scatter of the one-hot each make a pass over ``[..., V]``.
    """
    return _token_nll(logits.astype(jnp.float32), targets)


@jax.custom_vjp
def _token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    return _token_nll_forward(logits, targets)[0]


def _token_nll_forward(logits: jax.Array, targets: jax.Array):
    log_norm = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_norm - target_logit, (logits, log_norm, targets)


def _token_nll_backward(residuals, grad: jax.Array):
    logits, log_norm, targets = residuals
    one_hot = targets[..., None] == jnp.arange(logits.shape[-1], dtype=targets.dtype)
    softmax = jnp.exp(logits - log_norm[..., None])
    return (softmax - one_hot) * grad[..., None], None


_token_nll.defvjp(_token_nll_forward, _token_nll_backward)


def masked_nll_sums(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """Sum of the per-word NLL (nats) over real words, and their count."""
    # Over one [N, V] matrix: the logits' gradient then has one layout for all its uses.
    vocab = logits.shape[-1]
    nll = token_nll(logits.reshape(-1, vocab), targets.reshape(-1)) * mask.reshape(-1)
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
