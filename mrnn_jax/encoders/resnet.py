"""ResNet-50 in torchvision's layout (v1.5: the stride-2 on the 3x3 conv of a bottleneck), for
inference with frozen batch-norm statistics.

The weights come from torchvision's or timm's ``resnet50`` (see
``data_prep/weights/resnet50.py``). All arrays, batch-norm statistics included, are ordinary
``params`` (no ``batch_stats`` collection), so that freezing by parameter path covers them.

Parameter names: ``conv1``, ``bn1``, ``layer1_0`` .. ``layer4_2`` (bottlenecks, each with
``conv1, bn1, conv2, bn2, conv3, bn3`` and, on the first block of a layer,
``downsample_conv, downsample_bn``) and ``fc``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# Named outputs that are vectors, and their widths.
FEATURES = {"pooled": 2048, "logits": 1000}

# (blocks, bottleneck width, stride of the first block) of layer1 .. layer4.
STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))
EXPANSION = 4
BN_EPS = 1e-5


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics, as torchvision's ``FrozenBatchNorm2d``:
    ``y = (x - mean) / sqrt(var + eps) * scale + bias`` over the last (channel) axis.

    ``scale``, ``bias``, ``mean`` and ``var`` are all ``params``.
    """

    eps: float = BN_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises ``[..., C]`` with the stored per-channel statistics."""
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        mean = self.param("mean", nn.initializers.zeros, (channels,), jnp.float32)
        var = self.param("var", nn.initializers.ones, (channels,), jnp.float32)
        factor = scale * jax.lax.rsqrt(var + self.eps)
        return (x - mean) * factor + bias


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
    """A bias-free convolution with torch's symmetric padding ``kernel // 2``."""
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        name=name,
    )


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (v1.5): 1x1, 3x3 (strided), 1x1 x4 convs, residual add.

    Attributes:
      width: channels of the 1x1 and 3x3 convs; the block outputs ``4 * width``.
      stride: stride of the 3x3 conv (and of the downsample conv).
      downsample: whether the shortcut is a 1x1 conv + batch norm (first block of a layer).
    """

    width: int
    stride: int = 1
    downsample: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C]`` -> ``[B, H / stride, W / stride, 4 * width]``."""
        out = nn.relu(FrozenBatchNorm(name="bn1")(_conv(self.width, 1, 1, "conv1")(x)))
        out = nn.relu(FrozenBatchNorm(name="bn2")(_conv(self.width, 3, self.stride, "conv2")(out)))
        out = FrozenBatchNorm(name="bn3")(_conv(self.width * EXPANSION, 1, 1, "conv3")(out))
        identity = x
        if self.downsample:
            shortcut = _conv(self.width * EXPANSION, 1, self.stride, "downsample_conv")(x)
            identity = FrozenBatchNorm(name="downsample_bn")(shortcut)
        return nn.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 (torchvision layout, v1.5) in inference mode with frozen batch norm.

    Attributes:
      num_classes: outputs of the final ``fc`` layer (1000 for ImageNet weights).
    """

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """Normalised float images ``[B, H, W, 3]`` -> named outputs: ``layer1`` .. ``layer4``
        (NHWC maps), ``pooled`` ``[B, 2048]`` (global average of layer4), ``logits``.

        ``train`` is accepted for the encoder interface and ignored (always inference mode).
        """
        del train
        x = jnp.asarray(x, jnp.float32)
        x = nn.relu(FrozenBatchNorm(name="bn1")(_conv(64, 7, 2, "conv1")(x)))
        # max_pool pads with -inf, as torch's MaxPool2d does.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        outputs: dict[str, jax.Array] = {}
        for layer, (blocks, width, stride) in enumerate(STAGES, start=1):
            for block in range(blocks):
                x = Bottleneck(
                    width,
                    stride=stride if block == 0 else 1,
                    downsample=block == 0,
                    name=f"layer{layer}_{block}",
                )(x)
            outputs[f"layer{layer}"] = x
        pooled = jnp.mean(x, axis=(1, 2))
        outputs["pooled"] = pooled
        outputs["logits"] = nn.Dense(self.num_classes, name="fc")(pooled)
        return outputs
