"""A small convolutional encoder, trained jointly with the m-RNN (the paper's end-to-end setting).

Used for the built-in ``shapes`` dataset, where no pretrained CNN can be downloaded. Its last
layer is fully connected over the whole final feature map, so that the feature vector keeps
where things are (captions speak of "left of" and "above").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class SmallCNN(nn.Module):
    """3x3 convolutions with ReLU and 2x2 max-pooling, then one fully connected layer.

    Attributes:
      channels: output channels of each conv block; each block halves the resolution.
      features_dim: width of the output feature vector I.
    """

    channels: tuple[int, ...] = (16, 32, 64, 64)
    features_dim: int = 256

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Images ``[B, H, W, 3]`` (uint8 or floats in 0..255) -> features ``[B, D]``."""
        del train
        x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
        for i, channels in enumerate(self.channels):
            x = nn.relu(nn.Conv(channels, (3, 3), name=f"conv{i}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        return nn.relu(nn.Dense(self.features_dim, name="fc")(x))
