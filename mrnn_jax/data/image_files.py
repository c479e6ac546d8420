"""Images on disk as the input of an encoder that reads pixels: decoded batch by batch (in a
few threads), never all held in memory, with a policy for files that cannot be decoded."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import threading
from collections.abc import Sequence

import numpy as np

from mrnn_jax.data.records import DataReport, ImageRecord
from mrnn_jax.errors import MrnnError
from mrnn_jax.images import ImageError, load_image

log = logging.getLogger("mrnn_jax")

DECODE_THREADS = 4  # PIL decodes and resizes outside the GIL
GREY = 128  # what replaces an image found broken mid-run (policy "skip")


def present_files(
    records: Sequence[ImageRecord], on_bad_image: str, report: DataReport, split: str
) -> list[ImageRecord]:
    """``records`` whose image file exists and is not empty.

    The others are dropped and counted (``on_bad_image="skip"``) or raise an error listing
    the first few (``"error"``). Only a file-system check: decoding happens batch by batch.
    """
    kept, bad = [], []
    for record in records:
        path = record.file_path
        if path and os.path.isfile(path) and os.path.getsize(path) > 0:
            kept.append(record)
        else:
            bad.append(f"{path or record.image_id}")
    if bad and on_bad_image == "error":
        raise MrnnError(
            f"{len(bad)} of {len(records)} images of split {split!r} are missing or empty "
            f"files, first: {', '.join(bad[:5])} (dataset.on_bad_image=skip drops them)"
        )
    for path in bad:
        report.note("images missing or empty on disk (skipped)", path)
    return kept


@dataclasses.dataclass
class ImageFiles:
    """Image files indexed like an array ``[N, size, size, 3]`` of uint8 RGB pixels.

    ``files[rows]`` decodes just those images (resized and centre-cropped as the encoder
    expects). A file that cannot be decoded raises :class:`MrnnError` naming it
    (``on_bad_image="error"``) or is replaced by a grey image and counted (``"skip"``).
    """

    paths: list[str]
    size: int
    resize: str = "center_crop"
    crop_fraction: float = 1.0
    on_bad_image: str = "skip"
    report: DataReport = dataclasses.field(default_factory=DataReport)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._bad: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.paths), self.size, self.size, 3)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def _load(self, path: str) -> np.ndarray:
        try:
            return load_image(path, self.size, self.resize, self.crop_fraction)
        except ImageError as error:
            if self.on_bad_image == "error":
                raise MrnnError(f"{error} (dataset.on_bad_image=skip replaces it)") from None
            with self._lock:
                if path not in self._bad:
                    self._bad.add(path)
                    self.report.note("images that could not be decoded (grey used)", path)
                    log.warning("%s; using a grey image instead", error)
            return np.full((self.size, self.size, 3), GREY, np.uint8)

    def __getitem__(self, index) -> np.ndarray:
        if np.ndim(index) == 0 and not isinstance(index, slice):
            return self[[index]][0]
        rows = np.atleast_1d(np.arange(len(self.paths))[index])
        out = np.empty((len(rows), self.size, self.size, 3), np.uint8)
        with concurrent.futures.ThreadPoolExecutor(DECODE_THREADS) as pool:
            for i, image in enumerate(pool.map(self._load, [self.paths[r] for r in rows])):
                out[i] = image
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)
