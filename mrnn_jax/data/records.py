"""The record type every dataset reader produces."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image and its reference captions.

    Attributes:
      image_id: a stable identifier, unique within the dataset (a file name for real data).
      split: ``train``, ``val``, ``test`` or another split name (``novel`` for ``shapes``).
      captions: the raw reference captions as the source gives them.
      tokens: each caption tokenised with :func:`mrnn_jax.vocab.tokenize`, same order.
      file_path: where the image lies on disk, or ``None`` when pixels are held in memory
        (the built-in ``shapes`` dataset) or only precomputed features exist.
    """

    image_id: str
    split: str
    captions: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...]
    file_path: str | None = None
