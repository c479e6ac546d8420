"""A trained captioner restored from a checkpoint directory alone: ``mrnn_jax.load(path)``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import numpy as np
from ml_collections import ConfigDict

from mrnn_jax import checkpoint_reader, configs, decode
from mrnn_jax.encoders import takes_pixels
from mrnn_jax.encoders.extractor import FeatureExtractor, from_provenance
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import captioning
from mrnn_jax.images import load_images
from mrnn_jax.model import MRNN, make_model
from mrnn_jax.text.vocab import Vocabulary


@dataclasses.dataclass
class Captioner:
    """A model, its parameters, vocabulary and config: everything needed to caption images.

    Attributes:
      model: the :class:`MRNN` module (pure; parameters are passed to it).
      params: the parameter pytree.
      vocab: the vocabulary the model was trained with.
      config: the training config.
      step: the training step the parameters come from.
      features: for a run trained on precomputed features, what the checkpoint records about
        them (path, rows, width, precision, provenance); else None.
      extractor: for such a run, the CNN that computed the features (given its weights
        file, see :func:`load`), which lets the run read image files; else None.
    """

    model: MRNN
    params: dict
    vocab: Vocabulary
    config: ConfigDict
    step: int
    features: dict | None = None
    extractor: FeatureExtractor | None = None

    @property
    def takes_pixels(self) -> bool:
        """Whether the model's own inputs are pixels (else precomputed feature vectors)."""
        return takes_pixels(self.config.encoder)

    @property
    def reads_image_files(self) -> bool:
        """Whether image files can be captioned: the model reads pixels, or a features-trained
        run has the CNN that made its features."""
        return self.takes_pixels or self.extractor is not None

    def load_images(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        """Image files as the model's encoder (or the run's feature extractor) expects them:
        uint8 ``[N, S, S, 3]``."""
        if self.extractor is not None:
            return self.extractor.load_images(paths)
        if not self.takes_pixels:
            raise MrnnError(self._needs_extractor())
        encoder = self.config.encoder
        return load_images(
            paths,
            int(encoder.image_size),
            encoder.get("resize", "center_crop"),
            float(encoder.get("crop_fraction") or 1.0),
        )

    def image_inputs(self, images: Sequence[str | os.PathLike] | np.ndarray) -> np.ndarray:
        """The model's inputs for image files (paths) or arrays: pixels for a model that reads
        them; for a features-trained run, feature rows as given, or the features its
        extractor computes of image files and uint8 images ``[N, S, S, 3]``."""
        if not isinstance(images, np.ndarray):
            images = self.load_images(list(images))
        if self.takes_pixels or images.ndim == 2:
            return images
        if self.extractor is None:
            raise MrnnError(self._needs_extractor())
        return self.extractor(images)

    def _needs_extractor(self) -> str:
        provenance = (self.features or {}).get("provenance") or {}
        if provenance.get("encoder") and provenance.get("weights"):
            weights = provenance["weights"]
            source = f"{weights.get('file_name', '?')}, SHA-256 {str(weights.get('sha256'))[:12]}"
            return (
                f"this run was trained on {provenance['encoder']} {provenance.get('feature', '')} "
                f"features; to read image files give the converted weights they were extracted "
                f"with (--encoder-weights FILE, or load(..., encoder_weights=FILE); converted "
                f"from {source}...)"
            )
        return (
            "this run was trained on precomputed features of unknown provenance; caption its "
            "images by extracting the same features first"
        )

    def generate(
        self,
        image_inputs: np.ndarray,
        options: decode.DecodeOptions,
        batch_size: int = 32,
    ) -> list[list[tuple[str, float]]]:
        """For each image input, up to ``options.num_return`` captions with log-probabilities,
        best first (:func:`~mrnn_jax.evaluation.captioning.generate_captions`, the one
        decode-to-text path). Images go through in padded batches of ``batch_size`` (or
        fewer, for a few images), so a new image count does not recompile."""
        image_inputs = np.asarray(image_inputs)
        batch_size = min(batch_size, 1 << max(len(image_inputs) - 1, 0).bit_length())
        return captioning.generate_captions(
            self.model, self.params, image_inputs, self.vocab, options, batch_size
        )


def load(
    path: str | os.PathLike,
    which: str = "best",
    compute_dtype: str | None = None,
    encoder_weights: str | os.PathLike | None = None,
) -> Captioner:
    """Restores a :class:`Captioner` from a directory written by ``mrnn train``.

    ``path`` is the run's work directory (``which`` = "best", the default, or "latest"), or
    one checkpoint step's directory. Needs nothing but this package: the config and the
    vocabulary are read from the checkpoint itself. ``compute_dtype`` ("float32" or
    "bfloat16") overrides the precision the model was trained with. For a run trained on
    features from ``mrnn extract-features``, ``encoder_weights`` (the converted weights file
    they were extracted with, checked against the SHA-256 their provenance records) lets the
    captioner read image files.
    """
    return checkpoint_reader.read_newest(
        os.fspath(path),
        which,
        lambda directory, step: _load_step(directory, step, compute_dtype, encoder_weights),
    )


def _load_step(
    directory: str,
    step: int,
    compute_dtype: str | None,
    encoder_weights: str | os.PathLike | None,
) -> Captioner:
    """The :class:`Captioner` of the checkpoint ``directory/<step>`` (see :func:`load`)."""
    path = os.path.join(directory, str(step))
    config = configs.from_json(checkpoint_reader.read_json_item(directory, step, "config"))
    if compute_dtype is not None:
        configs.apply_overrides(config, [f"model.compute_dtype={compute_dtype}"])
        configs.validate(config)
    vocab = Vocabulary.from_json(checkpoint_reader.read_json_item(directory, step, "vocab"))
    model = make_model(config.model, config.encoder, len(vocab))
    image_shape = (
        (1, config.encoder.image_size, config.encoder.image_size, 3)
        if takes_pixels(config.encoder)
        else (1, int(config.encoder.get("features_dim", 4096)))
    )
    image_dtype = np.uint8 if takes_pixels(config.encoder) else np.float32
    abstract = jax.eval_shape(
        lambda: model.init(
            jax.random.PRNGKey(0),
            np.zeros(image_shape, image_dtype),
            np.zeros((1, 2), np.int32),
        )["params"]
    )
    params = checkpoint_reader.restore_params(directory, step, abstract)
    features = None
    if not takes_pixels(config.encoder):
        features = (
            checkpoint_reader.read_json_item(directory, step, "meta")
            .get("data", {})
            .get("features")
        )
    extractor = None
    if encoder_weights is not None:
        if takes_pixels(config.encoder):
            raise MrnnError(
                f"{path}: the model reads images itself ({config.encoder.name}); "
                "--encoder-weights is for runs trained on precomputed features"
            )
        extractor = from_provenance(
            features, os.fspath(encoder_weights), int(config.encoder.features_dim)
        )
    return Captioner(
        model=model,
        params=params,
        vocab=vocab,
        config=config,
        step=step,
        features=features,
        extractor=extractor,
    )
