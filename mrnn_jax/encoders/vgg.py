"""VGG-16 (configuration D of Simonyan & Zisserman, 2015) up to its classifier, for inference.

The m-RNN paper's image feature is VGG-16's fc7 activation (4096-d, after ReLU). The layer
names are the contract of the weight converters in data_prep/weights/vgg16.py, which load the
published Keras (``vgg16_weights_tf_dim_ordering_tf_kernels.h5``) and torchvision weights.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# (output channels, number of 3x3 convolutions) of each block; a 2x2 max-pool ends each block.
BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

# Flattened width of each feature that VGG16 returns (for 224x224 inputs).
FEATURES = {"pool5": 25088, "fc6": 4096, "fc7": 4096, "logits": 1000}


class VGG16(nn.Module):
    """VGG-16 returning its intermediate features; no dropout (inference only).

    Parameters: ``conv1_1 .. conv5_3`` (3x3 ``nn.Conv``), ``fc6`` (25088 -> 4096, reading
    pool5 flattened in H, W, C order), ``fc7`` (4096 -> 4096) and ``fc8`` (4096 -> 1000).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """Normalised images ``[B, 224, 224, 3]`` (see the weights' preprocessing) -> features
        ``pool5`` ``[B, 7, 7, 512]``, ``fc6`` and ``fc7`` ``[B, 4096]`` (after ReLU) and
        ``logits`` ``[B, 1000]`` (fc8, before the softmax)."""
        x = jnp.asarray(x, jnp.float32)
        for block, (channels, convs) in enumerate(BLOCKS, start=1):
            for i in range(1, convs + 1):
                x = nn.relu(nn.Conv(channels, (3, 3), padding="SAME", name=f"conv{block}_{i}")(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        pool5 = x
        fc6 = nn.relu(nn.Dense(4096, name="fc6")(pool5.reshape((pool5.shape[0], -1))))
        fc7 = nn.relu(nn.Dense(4096, name="fc7")(fc6))
        logits = nn.Dense(1000, name="fc8")(fc7)
        return {"pool5": pool5, "fc6": fc6, "fc7": fc7, "logits": logits}
