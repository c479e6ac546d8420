"""Converted encoder weights: one msgpack file holding the Flax variables of an encoder and
the metadata a user should never have to know (architecture, source file and its hash, the
preprocessing the source weights expect).

File layout (``flax.serialization.msgpack_serialize`` of a dict)::

    {"format": "mrnn-encoder-weights", "format_version": 1,
     "meta": {"architecture": "vgg16" | "resnet50" | "alexnet",
              "source": {"path", "file_name", "sha256", "format"},
              "preprocessing": {...see Preprocessing...}},
     "variables": {"params": {...}}}   (ResNet-50 batch-norm statistics are params too)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import serialization

from mrnn_jax.errors import MrnnError
from mrnn_jax.files import write_bytes_atomic

FORMAT = "mrnn-encoder-weights"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What the source weights expect of an image.

    Attributes:
      channels: ``RGB`` (torchvision, timm) or ``BGR`` (Caffe, Keras' VGG-16).
      scale: pixels are divided by this first (255 for torchvision's 0..1 inputs, 1 for Caffe).
      mean, std: per-channel, in ``channels`` order, after scaling: ``(x / scale - mean) / std``.
      resize: the shorter side is resized to this, then ...
      crop: ... the centre ``crop`` x ``crop`` square is cut out.
    """

    channels: str = "RGB"
    scale: float = 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize: int = 256
    crop: int = 224

    def to_json(self) -> dict:
        """Plain JSON data."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Preprocessing:
        """The inverse of :meth:`to_json`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise MrnnError(f"unknown preprocessing fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def normalise(self, images):
        """uint8 RGB images ``[B, H, W, 3]`` (already resized and cropped) -> network input.

        Works on NumPy and JAX arrays (in a jitted function too)."""
        x = images.astype(np.float32)
        if self.channels == "BGR":
            x = x[..., ::-1]
        x = x / np.float32(self.scale)
        return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


# torchvision's ImageNet models: RGB in 0..1, ImageNet mean and std, resize 256, crop 224.
TORCHVISION = Preprocessing()
# Caffe / Keras VGG-16 ("caffe" mode): BGR in 0..255 minus the ImageNet mean, no std.
CAFFE = Preprocessing(
    channels="BGR", scale=1.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)
)


def file_sha256(path: str) -> str:
    """The SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_info(path: str, fmt: str) -> dict:
    """The ``meta["source"]`` record of a weights file a user converted."""
    return {
        "path": os.path.abspath(path),
        "file_name": os.path.basename(path),
        "sha256": file_sha256(path),
        "format": fmt,
    }


def save_encoder_weights(
    path: str,
    architecture: str,
    variables: Mapping[str, Any],
    source: Mapping[str, Any],
    preprocessing: Preprocessing,
) -> None:
    """Writes converted weights and their metadata to ``path`` (atomically)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "meta": {
            "architecture": architecture,
            "source": dict(source),
            "preprocessing": preprocessing.to_json(),
        },
        "variables": _to_numpy(variables),
    }
    write_bytes_atomic(path, serialization.msgpack_serialize(payload))


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {str(k): _to_numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def load_encoder_weights(path: str, architecture: str | None = None) -> tuple[dict, dict]:
    """``(variables, meta)`` of a converted weights file.

    Raises :class:`MrnnError` naming the file when it is missing, truncated or not such a
    file, or when it holds another architecture than ``architecture``.
    """
    if not os.path.isfile(path):
        raise MrnnError(f"{path}: no such encoder weights file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        payload = serialization.msgpack_restore(data)
    except Exception as error:  # msgpack raises several types for damaged data
        raise MrnnError(
            f"{path}: not a readable converted weights file (truncated or damaged: {error}); "
            "convert the original weights again with data_prep/convert_weights.py"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MrnnError(
            f"{path}: not a converted encoder weights file; convert the original weights with "
            "data_prep/convert_weights.py"
        )
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise MrnnError(
            f"{path}: written by a newer mrnn-jax (format {payload['format_version']}); upgrade"
        )
    meta = payload["meta"]
    if architecture is not None and meta.get("architecture") != architecture:
        raise MrnnError(
            f"{path}: holds {meta.get('architecture')!r} weights, expected {architecture!r}"
        )
    return payload["variables"], meta


def check_variables(path: str, loaded: Mapping, expected: Mapping) -> None:
    """Raises :class:`MrnnError` listing missing or extra entries and wrong shapes of
    ``loaded`` against ``expected`` (both nested dicts of arrays or shape structs)."""
    flat_loaded, flat_expected = _flatten(loaded), _flatten(expected)
    missing = sorted(set(flat_expected) - set(flat_loaded))
    extra = sorted(set(flat_loaded) - set(flat_expected))
    shapes = [
        f"{key}: {tuple(flat_loaded[key].shape)} (expected {tuple(flat_expected[key].shape)})"
        for key in sorted(set(flat_loaded) & set(flat_expected))
        if tuple(flat_loaded[key].shape) != tuple(flat_expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing[:10])}")
    if extra:
        problems.append(f"unexpected {len(extra)}: {', '.join(extra[:10])}")
    if shapes:
        problems.append(f"wrong shapes: {'; '.join(shapes[:10])}")
    if problems:
        raise MrnnError(f"{path}: weights do not fit the architecture ({' | '.join(problems)})")


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat
