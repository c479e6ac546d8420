"""The m-RNN of Mao et al. (2014) as a Flax Linen module with pure ``init`` / ``apply``.

Per time step t (DESIGN.md section 1)::

    e1(t) = E[w(t)]                                   word embedding I   (embed_dim, 128)
    w(t)  = f(W_e e1(t) + b_e)                        word embedding II  (word_dim, 256)
    r(t)  = f_r(U_r r(t-1) + w(t))                    recurrent          (word_dim, 256)
    m(t)  = g(V_w w(t) + V_r r(t) + V_I I + b_m)      multimodal         (multimodal_dim, 512)
    P(w(t+1) | w(1..t), I) = softmax(W_o m(t) + b_o)  softmax            (vocab_size)

with f = f_r = ReLU and g(x) = 1.7159 tanh(2x/3). The module is split where the image
enters, so that training, decoding and retrieval share the same functions:

* :meth:`MRNN.words` runs the image-free part (both embeddings and the recurrent layer) over
  whole captions with ``jax.lax.scan``; :meth:`MRNN.recur_step` is one step of it for decoding.
* :meth:`MRNN.project_image` computes V_I I once per image (running the image encoder first
  when the model is trained end to end on pixels).
* :meth:`MRNN.head` maps ``(w, r, image_projection)`` to next-word logits; it broadcasts, so
  the same call serves a whole scanned sequence, one decoding step, or a (sentence, image) grid.

Call any of them with ``model.apply(params, ..., method=MRNN.<name>)``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrnn_jax.configs.choices import COMPUTE_DTYPES
from mrnn_jax.encoders import PrecomputedFeatures, make_encoder


def scaled_tanh(x: jax.Array) -> jax.Array:
    """LeCun's scaled hyperbolic tangent 1.7159 tanh(2x/3), the paper's multimodal g(x)."""
    return 1.7159 * jnp.tanh(2.0 * x / 3.0)


#: name -> function; the names are :data:`mrnn_jax.configs.choices.ACTIVATIONS`.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "scaled_tanh": scaled_tanh,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called ``name`` (one of :data:`ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}"
        ) from None


def dense_layer(compute_dtype: str) -> Callable[..., nn.Dense]:
    """``nn.Dense`` computing in ``compute_dtype`` with float32 parameters and outputs.

    For ``bfloat16``, inputs and kernel are rounded to bfloat16 and the product accumulates
    in float32 (``preferred_element_type``), as mixed-precision training does on GPUs/TPUs.
    """
    if compute_dtype == "float32":
        return nn.Dense
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype={compute_dtype!r}: choose from {COMPUTE_DTYPES}")
    dtype = jnp.dtype(compute_dtype)

    def dot_general(lhs, rhs, *args, **kwargs):
        kwargs["preferred_element_type"] = jnp.float32
        return jax.lax.dot_general(lhs.astype(dtype), rhs.astype(dtype), *args, **kwargs)

    return functools.partial(nn.Dense, dot_general=dot_general)


class MRNN(nn.Module):
    """The multimodal recurrent neural network.

    Attributes:
      vocab_size: softmax width, reserved tokens included.
      embed_dim: word embedding I width (paper: 128).
      word_dim: word embedding II width, which is also the recurrent layer's width, since
        r(t-1) is mapped into w(t)'s space and added to it (paper: 256).
      multimodal_dim: multimodal layer width (paper: 512).
      word_activation: f in word embedding II (paper: ReLU).
      recurrent_activation: f_r in the recurrent layer (paper: ReLU).
      multimodal_activation: g in the multimodal layer (paper: scaled tanh).
      dropout_rate: dropout on the multimodal layer's output during training (not in the paper).
      zero_image: multiply the image input by zero (the image-blind language-model baseline).
      image_encoder: the module that turns the image input into the feature vector I (a
        CNN on pixels, or :class:`~mrnn_jax.encoders.PrecomputedFeatures` when the inputs
        are feature vectors already); see :func:`mrnn_jax.encoders.make_encoder`.
      compute_dtype: ``float32``, or ``bfloat16`` for the dense layers' matrix products
        (mixed precision): inputs and weights are rounded to bfloat16, products accumulate
        and come out in float32; parameters, the recurrence and the loss stay float32.
    """

    vocab_size: int
    embed_dim: int = 128
    word_dim: int = 256
    multimodal_dim: int = 512
    word_activation: str = "relu"
    recurrent_activation: str = "relu"
    multimodal_activation: str = "scaled_tanh"
    dropout_rate: float = 0.0
    zero_image: bool = False
    image_encoder: nn.Module = dataclasses.field(default_factory=PrecomputedFeatures)
    compute_dtype: str = "float32"

    def setup(self) -> None:
        self.embedding = nn.Embed(
            self.vocab_size, self.embed_dim, embedding_init=nn.initializers.normal(0.1)
        )
        dense = dense_layer(self.compute_dtype)
        self.word_dense = dense(self.word_dim, name="word_dense")
        self.recurrent_kernel = self.param(
            "recurrent_kernel", nn.initializers.orthogonal(), (self.word_dim, self.word_dim)
        )
        self.multimodal_word = dense(self.multimodal_dim, name="multimodal_word")
        self.multimodal_recurrent = dense(
            self.multimodal_dim, use_bias=False, name="multimodal_recurrent"
        )
        self.multimodal_image = dense(self.multimodal_dim, use_bias=False, name="multimodal_image")
        self.softmax = dense(self.vocab_size, name="softmax")
        self.dropout = nn.Dropout(self.dropout_rate)

    # --- the image-free part -------------------------------------------------------------
    def embed(self, tokens: jax.Array) -> jax.Array:
        """Word embedding II w(t) for token ids of any shape ``[...]`` -> ``[..., word_dim]``."""
        return activation(self.word_activation)(self.word_dense(self.embedding(tokens)))

    def words(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The image-free part over captions: token ids ``[B, T]`` -> ``(w, r)``, each ``[B,T,D]``.

        r(0) is zero, so position 0 (the start token) gives r = f_r(w).
        """
        w = self.embed(tokens)
        f_r = activation(self.recurrent_activation)
        kernel = self.recurrent_kernel

        def step(r_prev: jax.Array, w_t: jax.Array) -> tuple[jax.Array, jax.Array]:
            r_t = f_r(r_prev @ kernel + w_t)
            return r_t, r_t

        r0 = jnp.zeros((tokens.shape[0], self.word_dim), w.dtype)
        _, r = jax.lax.scan(step, r0, jnp.swapaxes(w, 0, 1))
        return w, jnp.swapaxes(r, 0, 1)

    def recur_step(self, r_prev: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step of the image-free part: ``(r(t-1) [B, D], w_ids [B])`` -> ``(w(t), r(t))``."""
        w = self.embed(tokens)
        r = activation(self.recurrent_activation)(r_prev @ self.recurrent_kernel + w)
        return w, r

    def initial_carry(self, batch_size: int) -> jax.Array:
        """r(0): the recurrent state before the start token."""
        return jnp.zeros((batch_size, self.word_dim), jnp.float32)

    # --- the image -----------------------------------------------------------------------
    def image_features(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Image features I ``[B, image_dim]`` from pixels (or precomputed features, unchanged)."""
        features = self.image_encoder(images, train=train)
        if self.zero_image:
            features = jnp.zeros_like(features)
        return features

    def project_image(self, images: jax.Array, train: bool = False) -> jax.Array:
        """V_I I ``[B, multimodal_dim]``, computed once per image."""
        return self.multimodal_image(self.image_features(images, train=train))

    # --- the multimodal head -------------------------------------------------------------
    def head(
        self, w: jax.Array, r: jax.Array, image_projection: jax.Array, train: bool = False
    ) -> jax.Array:
        """Next-word logits ``[..., vocab_size]`` from w, r ``[..., D]`` and V_I I ``[..., M]``.

        The three inputs broadcast against each other: pass ``image_projection[:, None]`` for
        a ``[B, T]`` sequence, or a ``[S, 1, ...]`` / ``[1, I, ...]`` pair for a score grid.
        """
        return self.multimodal_output(self.multimodal_words(w, r), image_projection, train=train)

    def multimodal_words(self, w: jax.Array, r: jax.Array) -> jax.Array:
        """The image-free half of the head's pre-activation, V_w w + V_r r + b_m ``[..., M]``.

        Retrieval computes it once per sentence and reuses it for every image.
        """
        return self.multimodal_word(w) + self.multimodal_recurrent(r)

    def multimodal_output(
        self, words_part: jax.Array, image_projection: jax.Array, train: bool = False
    ) -> jax.Array:
        """Logits from :meth:`multimodal_words`' output and V_I I (broadcasting)."""
        m = activation(self.multimodal_activation)(words_part + image_projection)
        m = self.dropout(m, deterministic=not train)
        # One [N, M] x [M, V] product over every position: a 2-D product's gradient needs
        # no transposed copy of the [N, V] logits' gradient (XLA makes one for [B, T, V]).
        logits = self.softmax(m.reshape(-1, m.shape[-1]))
        return logits.reshape(*m.shape[:-1], self.vocab_size)

    def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = False) -> jax.Array:
        """Logits ``[B, T, vocab_size]`` for the word after each of ``tokens [B, T]``.

        ``images`` has ``B`` rows, or ``B / K`` rows when each image has ``K`` consecutive
        captions in ``tokens`` (its projection is then computed once and used K times).
        """
        w, r = self.words(tokens)
        image_projection = self.project_image(images, train=train)
        captions_per_image, remainder = divmod(tokens.shape[0], images.shape[0])
        if remainder:
            raise ValueError(
                f"{tokens.shape[0]} captions do not split over {images.shape[0]} images"
            )
        if captions_per_image > 1:
            image_projection = jnp.repeat(image_projection, captions_per_image, axis=0)
        return self.head(w, r, image_projection[:, None, :], train=train)


def make_model(model_config: dict, encoder_config: dict, vocab_size: int) -> MRNN:
    """Builds the :class:`MRNN` described by a config's ``model`` and ``encoder`` sections."""
    return MRNN(
        vocab_size=vocab_size, image_encoder=make_encoder(encoder_config), **dict(model_config)
    )
