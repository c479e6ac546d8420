"""Pretrained CNNs as the m-RNN's image encoder: VGG-16 (fc7, the ICLR paper's feature),
ResNet-50 (pooled) and AlexNet (fc7, the 2014 paper's), with their published weights
converted by ``data_prep/convert_weights.py``.

The encoder takes uint8 RGB images already resized and cropped as the weights expect (see
:meth:`PretrainedEncoder.image_loading`) and applies the rest of the preprocessing (channel
order, scale, mean, std) inside the jitted model. Frozen, its output is a constant to the
optimiser (no gradient flows into the CNN); fine-tuned from a layer on, that layer and those
after it train with their own learning rate (see :func:`trainable_labels`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mrnn_jax.configs.choices import ARCHITECTURES
from mrnn_jax.encoders import alexnet, resnet, vgg
from mrnn_jax.encoders.weights import Preprocessing, check_variables, load_encoder_weights
from mrnn_jax.errors import MrnnError


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A ported CNN: its module, default feature, and its layers in forward order."""

    module: type[nn.Module]
    feature: str
    layers: tuple[str, ...]
    features: Mapping[str, int]


def _architectures() -> dict[str, Architecture]:
    vgg_layers = tuple(
        f"conv{block}_{i}"
        for block, count in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
        for i in range(1, count + 1)
    ) + ("fc6", "fc7", "fc8")
    resnet_layers = (
        ("conv1", "bn1")
        + tuple(
            f"layer{layer}_{block}"
            for layer, blocks in ((1, 3), (2, 4), (3, 6), (4, 3))
            for block in range(blocks)
        )
        + ("fc",)
    )
    alexnet_layers = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    return {
        "vgg16": Architecture(vgg.VGG16, "fc7", vgg_layers, vgg.FEATURES),
        "resnet50": Architecture(resnet.ResNet50, "pooled", resnet_layers, resnet.FEATURES),
        "alexnet": Architecture(alexnet.AlexNet, "fc7", alexnet_layers, alexnet.FEATURES),
    }


def architecture(name: str) -> Architecture:
    """The ported CNN called ``name`` (``vgg16``, ``resnet50``, ``alexnet``)."""
    if name not in ARCHITECTURES:
        raise MrnnError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return _architectures()[name]


class PretrainedEncoder(nn.Module):
    """A pretrained CNN's named feature (e.g. VGG-16 fc7) of uint8 RGB images.

    Attributes:
      architecture: ``vgg16``, ``resnet50`` or ``alexnet``.
      feature: which named output is the feature vector (``""``: the architecture's default).
      channels, scale, mean, std: the normalisation the weights expect (see
        :class:`~mrnn_jax.encoders.weights.Preprocessing`).
      frozen: no gradient flows into the CNN (the usual setting).
    """

    architecture: str
    feature: str = ""
    channels: str = "RGB"
    scale: float = 255.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    frozen: bool = True

    @property
    def feature_name(self) -> str:
        """The output used as the feature vector."""
        return self.feature or architecture(self.architecture).feature

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """uint8 images ``[B, S, S, 3]`` -> features ``[B, D]`` (float32)."""
        del train  # inference mode always: frozen batch norm, no dropout
        spec = architecture(self.architecture)
        preprocessing = Preprocessing(
            channels=self.channels, scale=self.scale, mean=tuple(self.mean), std=tuple(self.std)
        )
        x = preprocessing.normalise(jnp.asarray(images))
        outputs = spec.module(name="backbone")(x)
        if self.feature_name not in outputs:
            raise MrnnError(
                f"{self.architecture} has no feature {self.feature_name!r}; "
                f"choose from {', '.join(outputs)}"
            )
        features = outputs[self.feature_name].reshape(images.shape[0], -1).astype(jnp.float32)
        return jax.lax.stop_gradient(features) if self.frozen else features


def trainable_labels(params: Mapping, encoder_config: Mapping) -> dict:
    """A label per parameter for ``optax.multi_transform``: ``"mrnn"`` for the m-RNN's own,
    ``"encoder"`` for the CNN layers fine-tuned (from ``encoder.fine_tune_from`` on, up to
    the feature's layer; batch-norm statistics never), ``"frozen"`` for the rest."""
    name = encoder_config.get("name", "features")

    def label_all(tree: Mapping, label: str) -> dict:
        return {
            k: label_all(v, label) if isinstance(v, Mapping) else label for k, v in tree.items()
        }

    labels = {
        k: label_all(v, "mrnn") if isinstance(v, Mapping) else "mrnn" for k, v in params.items()
    }
    if name not in ARCHITECTURES or "image_encoder" not in params:
        return labels
    spec = architecture(name)
    backbone = params["image_encoder"]["backbone"]
    chosen = trainable_layers(spec, encoder_config)

    def label_layer(layer: str, tree: Mapping) -> dict:
        out = {}
        for key, value in tree.items():
            if isinstance(value, Mapping):
                out[key] = label_layer(layer, value)
            else:
                out[key] = "encoder" if layer in chosen and key not in ("mean", "var") else "frozen"
        return out

    labels["image_encoder"] = {
        "backbone": {layer: label_layer(layer, tree) for layer, tree in backbone.items()}
    }
    return labels


def trainable_layers(spec: Architecture, encoder_config: Mapping) -> set[str]:
    """The CNN layers that train: from ``fine_tune_from`` up to the feature's own layer."""
    start = encoder_config.get("fine_tune_from", "")
    if not start:
        return set()
    layers = list(spec.layers)
    first = next((i for i, layer in enumerate(layers) if layer.startswith(start)), None)
    if first is None:
        raise MrnnError(
            f"encoder.fine_tune_from={start!r}: not a layer of {encoder_config['name']} "
            f"({', '.join(layers)})"
        )
    chosen = set(layers[first : feature_layer(spec, encoder_config) + 1])
    if not chosen:
        raise MrnnError(
            f"encoder.fine_tune_from={start!r} comes after the feature's layer: nothing would "
            "train; choose an earlier layer, or '' to keep the CNN frozen"
        )
    return chosen


def feature_layer(spec: Architecture, encoder_config: Mapping) -> int:
    """Index in ``spec.layers`` of the last layer the chosen feature depends on."""
    feature = encoder_config.get("feature", "") or spec.feature
    layers = list(spec.layers)
    if feature in layers:
        return layers.index(feature)
    if feature == "logits":
        return len(layers) - 1
    prefix = {"pooled": "layer4", "pool5": "conv5"}.get(feature, feature)
    matching = [i for i, layer in enumerate(layers) if layer.startswith(prefix)]
    if not matching:
        raise MrnnError(f"encoder.feature={feature!r} is not a feature of this architecture")
    return matching[-1]


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """A converted weights file, read and checked against its architecture.

    Attributes:
      params: the CNN's parameters (the ``backbone`` of :class:`PretrainedEncoder`).
      meta: the file's metadata (architecture, source file and its SHA-256, preprocessing).
      settings: the encoder config values the file implies: ``image_size``,
        ``crop_fraction``, ``pixel_order``, ``pixel_scale``, ``pixel_mean``, ``pixel_std``
        and the chosen feature's ``features_dim``.
    """

    params: dict
    meta: dict
    settings: dict

    def encoder_config(self, encoder_config: Mapping) -> dict:
        """``encoder_config`` completed with these settings: values the config sets win, except
        ``features_dim``, which the architecture's feature decides."""
        merged = dict(encoder_config)
        for key, value in self.settings.items():
            if key == "features_dim" or not merged.get(key):
                merged[key] = value
        return merged


def load_pretrained(encoder_config: Mapping) -> PretrainedWeights:
    """The converted weights file ``encoder.weights`` of the architecture ``encoder.name``,
    checked against it, with the preprocessing and feature width it implies (see
    :class:`PretrainedWeights`; ``encoder_config`` is not changed)."""
    name = encoder_config["name"]
    path = encoder_config.get("weights", "")
    if not path:
        raise MrnnError(
            f"encoder.name={name} needs encoder.weights=FILE: the published weights converted "
            f"with python data_prep/convert_weights.py --arch {name} --source <downloaded file>"
        )
    variables, meta = load_encoder_weights(path, architecture=name)
    spec = architecture(name)
    expected = jax.eval_shape(
        spec.module().init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3), jnp.float32)
    )
    check_variables(path, variables, expected)
    prep = Preprocessing.from_json(meta["preprocessing"])
    feature = encoder_config.get("feature", "") or spec.feature
    if feature not in spec.features:
        raise MrnnError(f"encoder.feature={feature!r}: {name} offers {', '.join(spec.features)}")
    settings = {
        "image_size": prep.crop,
        "crop_fraction": prep.crop / prep.resize,
        "pixel_order": prep.channels,
        "pixel_scale": prep.scale,
        "pixel_mean": tuple(prep.mean),
        "pixel_std": tuple(prep.std),
        "features_dim": int(spec.features[feature]),
    }
    return PretrainedWeights(params=variables["params"], meta=meta, settings=settings)
