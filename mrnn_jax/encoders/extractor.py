"""The CNN that computed a features-trained run's features, rebuilt from their provenance.

Features written by ``mrnn extract-features`` carry a provenance record (encoder, feature,
the converted weights' source file and its SHA-256, the pixel preprocessing, the stored
precision), and a run trained on them keeps that record in its checkpoint. Given the same
converted weights file, :func:`from_provenance` rebuilds the extraction: the same image
loading, the same network, the same rounding to the stored precision, so that a new photo
reaches the m-RNN as its feature row would have.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from mrnn_jax.configs.choices import ARCHITECTURES
from mrnn_jax.encoders import make_encoder
from mrnn_jax.encoders.pretrained import load_pretrained
from mrnn_jax.errors import MrnnError
from mrnn_jax.images import load_images


@dataclasses.dataclass
class FeatureExtractor:
    """A pretrained CNN that maps image files or uint8 images to a run's feature vectors.

    Attributes:
      encoder_config: the extraction's encoder settings (``name``, ``feature``,
        ``image_size``, ``crop_fraction``, ``pixel_order``, ``pixel_scale``, ``pixel_mean``,
        ``pixel_std``), as :func:`mrnn_jax.encoders.make_encoder` reads them.
      params: the CNN's parameters.
      dtype: the precision the features were stored in (``float16`` or ``float32``); computed
        features are rounded to it, as the extracted ones were.
      features_dim: the width of a feature vector.
    """

    encoder_config: dict
    params: dict
    dtype: str
    features_dim: int

    @property
    def image_size(self) -> int:
        """Side of the square image the CNN reads."""
        return int(self.encoder_config["image_size"])

    def load_images(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Image files loaded as the extraction loaded them: uint8 ``[N, S, S, 3]``."""
        return load_images(
            paths,
            self.image_size,
            "center_crop",
            float(self.encoder_config["crop_fraction"]),
        )

    @functools.cached_property
    def _apply(self):
        encoder = make_encoder(self.encoder_config)
        return jax.jit(
            lambda params, images: encoder.apply({"params": {"backbone": params}}, images)
        )

    def __call__(self, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Features ``[N, D]`` (float32 holding the stored precision's values) of uint8 images
        ``[N, S, S, 3]``, in padded batches so that a new image count does not recompile."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise MrnnError(
                f"images of shape {images.shape}: the encoder reads uint8 "
                f"[N, {self.image_size}, {self.image_size}, 3]"
            )
        batch_size = min(batch_size, 1 << max(len(images) - 1, 0).bit_length())
        out = np.zeros((len(images), self.features_dim), np.float32)
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            count = len(batch)
            if count < batch_size:  # a fixed shape: pad, then drop the padding
                batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - count, axis=0)])
            features = np.asarray(jax.device_get(self._apply(self.params, batch)))[:count]
            out[start : start + count] = features.astype(self.dtype).astype(np.float32)
        return out


def from_provenance(
    features_info: Mapping | None, weights_path: str, features_dim: int
) -> FeatureExtractor:
    """The extractor described by a checkpoint's features record (``meta["data"]
    ["features"]``: path, dtype, provenance), with the CNN from ``weights_path``.

    Raises :class:`MrnnError` when the features have no ``mrnn extract-features`` provenance,
    when the weights file is not the one the features came from (architecture, source
    SHA-256 or preprocessing differ), or when the feature width is not the model's.
    """
    provenance = dict((features_info or {}).get("provenance") or {})
    name = provenance.get("encoder")
    if name not in ARCHITECTURES or "weights" not in provenance:
        where = (features_info or {}).get("path", "its features file")
        raise MrnnError(
            f"the run's features ({where}) carry no provenance from 'mrnn extract-features', "
            "so the CNN that made them is unknown; caption its images by extracting the same "
            "features first"
        )
    weights = load_pretrained(
        {"name": name, "weights": weights_path, "feature": provenance.get("feature", "")}
    )
    expected_sha = provenance["weights"].get("sha256")
    given = weights.meta.get("source", {})
    if not expected_sha or given.get("sha256") != expected_sha:
        raise MrnnError(
            f"{weights_path}: converted from {given.get('file_name', '?')} (SHA-256 "
            f"{str(given.get('sha256'))[:12]}...), but the run's features came from "
            f"{provenance['weights'].get('file_name', '?')} (SHA-256 {str(expected_sha)[:12]}...); "
            "pass the weights file the features were extracted with"
        )
    if provenance.get("preprocessing") not in (None, weights.meta.get("preprocessing")):
        raise MrnnError(
            f"{weights_path}: its preprocessing {weights.meta.get('preprocessing')} is not the "
            f"one the features were extracted with ({provenance['preprocessing']})"
        )
    config = weights.encoder_config(
        {
            "name": name,
            "feature": provenance.get("feature", ""),
            "image_size": provenance.get("image_size", 0),
            "crop_fraction": provenance.get("crop_fraction", 0.0),
        }
    )
    if int(config["features_dim"]) != int(features_dim):
        raise MrnnError(
            f"{weights_path}: {name} {provenance.get('feature')} features are "
            f"{config['features_dim']}-d, the model takes {features_dim}-d"
        )
    dtype = (features_info or {}).get("dtype") or provenance.get("dtype") or "float32"
    return FeatureExtractor(
        encoder_config=config,
        params=weights.params,
        dtype=str(dtype),
        features_dim=int(features_dim),
    )
