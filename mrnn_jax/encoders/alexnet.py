"""AlexNet in torchvision's layout (the one-tower variant of "One weird trick"), for inference.

The weights come from torchvision's ``alexnet`` (see ``data_prep/weights/alexnet.py``).
Parameter names: ``conv1`` .. ``conv5``, ``fc6``, ``fc7``, ``fc8``. ``fc6`` reads pool5
flattened in H, W, C order (a plain NHWC reshape); the weight conversion permutes torch's
C, H, W order to match.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# Named outputs that are vectors (pool5 flattened), and their widths.
FEATURES = {"pool5": 9216, "fc6": 4096, "fc7": 4096, "logits": 1000}

POOL5_SIZE = 6

# (name, output channels, kernel, stride, padding, max-pool after) of the five convs.
CONVS = (
    ("conv1", 64, 11, 4, 2, True),
    ("conv2", 192, 5, 1, 2, True),
    ("conv3", 384, 3, 1, 1, False),
    ("conv4", 256, 3, 1, 1, False),
    ("conv5", 256, 3, 1, 1, True),
)


def adaptive_avg_pool(x: jax.Array, output_size: int) -> jax.Array:
    """torch's ``AdaptiveAvgPool2d(output_size)`` on NHWC maps: ``[B, H, W, C]`` ->
    ``[B, output_size, output_size, C]``.

    Output cell ``i`` averages input rows ``floor(i * H / n)`` .. ``ceil((i + 1) * H / n) - 1``
    (and likewise for columns), as torch does; bins overlap when ``H`` is not a multiple.
    """

    def bins(size: int) -> list[tuple[int, int]]:
        return [
            (i * size // output_size, -(-(i + 1) * size // output_size)) for i in range(output_size)
        ]

    height, width = x.shape[1], x.shape[2]
    if height == output_size and width == output_size:
        return x
    rows = [
        jnp.stack([x[:, r0:r1, c0:c1, :].mean(axis=(1, 2)) for c0, c1 in bins(width)], axis=1)
        for r0, r1 in bins(height)
    ]
    return jnp.stack(rows, axis=1)


class AlexNet(nn.Module):
    """torchvision's AlexNet: five convs with ReLU (max-pools after 1, 2 and 5), an adaptive
    average pool to 6x6, then fc6, fc7 (each with ReLU) and fc8.

    Attributes:
      num_classes: outputs of ``fc8`` (1000 for ImageNet weights).
      dropout_rate: dropout before fc6 and fc7 when called with ``train=True`` (torchvision
        trains with 0.5; 0 keeps the network deterministic, as a frozen encoder should be).
    """

    num_classes: int = 1000
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """Normalised float images ``[B, H, W, 3]`` -> named outputs: ``pool5``
        ``[B, 6, 6, 256]``, ``fc6`` and ``fc7`` (after ReLU, ``[B, 4096]``) and ``logits``."""
        x = jnp.asarray(x, jnp.float32)
        for name, channels, kernel, stride, pad, pool in CONVS:
            x = nn.Conv(
                channels,
                (kernel, kernel),
                strides=(stride, stride),
                padding=((pad, pad), (pad, pad)),
                name=name,
            )(x)
            x = nn.relu(x)
            if pool:
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        pool5 = adaptive_avg_pool(x, POOL5_SIZE)
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        h = pool5.reshape((pool5.shape[0], -1))  # H, W, C order
        fc6 = nn.relu(nn.Dense(4096, name="fc6")(dropout(h)))
        fc7 = nn.relu(nn.Dense(4096, name="fc7")(dropout(fc6)))
        logits = nn.Dense(self.num_classes, name="fc8")(fc7)
        return {"pool5": pool5, "fc6": fc6, "fc7": fc7, "logits": logits}
