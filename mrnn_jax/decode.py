"""Caption generation from the model's recurrent step and multimodal head.

Every decoder is a pure jitted function of ``(params, image_inputs)`` batched over images, built
on :meth:`MRNN.recur_step` and :meth:`MRNN.head`: the image projection V_I I is computed once
per image, then each step runs the recurrent layer and the head.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mrnn_jax.model import MRNN
from mrnn_jax.vocab import END_ID, PAD_ID, START_ID


def word_choices(log_probs: jax.Array) -> jax.Array:
    """Log-probabilities with the tokens that are never generated (padding, start) removed.

    Scores keep the model's full distribution; only the choice among words is restricted.
    """
    banned = jnp.zeros(log_probs.shape[-1], bool).at[jnp.array([PAD_ID, START_ID])].set(True)
    return jnp.where(banned, -jnp.inf, log_probs)


@functools.partial(jax.jit, static_argnames=("model", "max_words"))
def greedy(
    model: MRNN, params: dict, image_inputs: jax.Array, max_words: int
) -> tuple[jax.Array, jax.Array]:
    """Most probable word at each step, for a batch of images.

    Returns ``(tokens [B, max_words + 1], log_prob [B])``: at most ``max_words`` words, then
    the end token if the model chose it, then padding; and the log-probability of the emitted
    tokens (end token included when emitted). A caption that has not ended after
    ``max_words`` words is cut there.
    """
    batch = image_inputs.shape[0]
    image_projection = model.apply(params, image_inputs, method=MRNN.project_image)
    r0 = model.apply(params, batch, method=MRNN.initial_carry)

    def step(carry, t):
        r_prev, previous, done, log_prob = carry
        w, r = model.apply(params, r_prev, previous, method=MRNN.recur_step)
        logits = model.apply(params, w, r, image_projection, method=MRNN.head)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
        word = jnp.argmax(word_choices(log_probs), axis=-1).astype(jnp.int32)
        # After max_words words only the end token may still be emitted.
        done = done | ((t == max_words) & (word != END_ID))
        chosen = jnp.take_along_axis(log_probs, word[:, None], axis=-1)[:, 0]
        log_prob = log_prob + jnp.where(done, 0.0, chosen)
        emitted = jnp.where(done, PAD_ID, word)
        done = done | (word == END_ID)
        return (r, word, done, log_prob), emitted

    start = jnp.full((batch,), START_ID, jnp.int32)
    init = (r0, start, jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.float32))
    steps = jnp.arange(max_words + 1)
    (_, _, _, log_prob), tokens = jax.lax.scan(step, init, steps)
    return jnp.swapaxes(tokens, 0, 1), log_prob
