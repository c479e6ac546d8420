"""Image encoders: the CNN that turns an image into the m-RNN's feature vector I."""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrnn_jax.configs.choices import ARCHITECTURES, ENCODERS
from mrnn_jax.encoders.pretrained import PretrainedEncoder
from mrnn_jax.encoders.small_cnn import SmallCNN


class PrecomputedFeatures(nn.Module):
    """The encoder for inputs that are feature vectors already (e.g. VGG-16 fc7 on disk)."""

    @nn.compact
    def __call__(self, features: jax.Array, train: bool = False) -> jax.Array:
        """Returns the features as float32, unchanged."""
        del train
        return jnp.asarray(features, jnp.float32)


def make_encoder(config: Mapping) -> nn.Module:
    """The encoder module named by ``config["name"]``, built from the config's other fields."""
    fields = dict(config)
    name = fields.pop("name", "features")
    fields.pop("image_size", None)  # used by the input pipeline, not by the module
    fields.pop("resize", None)
    if name == "features":
        return PrecomputedFeatures()
    if name in ARCHITECTURES:
        return PretrainedEncoder(
            architecture=name,
            feature=fields.get("feature", ""),
            channels=fields.get("pixel_order") or "RGB",
            scale=float(fields.get("pixel_scale") or 255.0),
            mean=tuple(fields.get("pixel_mean") or (0.485, 0.456, 0.406)),
            std=tuple(fields.get("pixel_std") or (0.229, 0.224, 0.225)),
            frozen=not fields.get("fine_tune_from", ""),
        )
    if name == "small_cnn":
        own = {"channels", "features_dim"}
        return SmallCNN(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in own}
        )
    raise ValueError(f"unknown encoder {name!r}; choose from {ENCODERS}")


def takes_pixels(config: Mapping) -> bool:
    """Whether the encoder named in ``config`` reads images (rather than feature vectors)."""
    return config.get("name", "features") != "features"
