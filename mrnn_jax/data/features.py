"""Precomputed image features on disk: an ``.npz`` with ``features`` and ``filenames``, or an
``.npy`` matrix with a names list (one file name per line) beside it.

``.npy`` files are memory-mapped (a COCO-sized 4096-d float16 file is 1 GB; only the rows of a
batch are read), ``.npz`` files are read into memory. Either may say where the features came
from: an array ``provenance`` (a JSON string) in the ``.npz``, or a ``<stem>.json`` beside the
file; that record is kept in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import numpy as np

from mrnn_jax.data.records import ImageRecord
from mrnn_jax.errors import MrnnError

NAN_CHECK_ROWS = 8192  # rows checked at a time, so a memory-mapped file is read in pieces


@dataclasses.dataclass(frozen=True)
class FeatureFile:
    """Feature rows ``[N, D]`` (float16 or float32, possibly memory-mapped) and their names."""

    path: str
    names: list[str]
    features: np.ndarray
    provenance: dict

    @property
    def dim(self) -> int:
        """Width D of each feature vector."""
        return int(self.features.shape[1])

    @functools.cached_property
    def name_index(self) -> dict[str, int]:
        """Row of each name, relative path and file name (-1 where two rows share one), built
        once for every split's alignment."""
        index: dict[str, int] = {}
        for row, name in enumerate(self.names):
            for key in _keys(name):
                index[key] = row if index.get(key, row) == row else -1
        return index

    def info(self) -> dict:
        """What a checkpoint records about these features."""
        return {
            "path": os.path.abspath(self.path),
            "rows": len(self.names),
            "dim": self.dim,
            "dtype": str(self.features.dtype),
            "provenance": self.provenance,
        }


@dataclasses.dataclass(frozen=True)
class RowSubset:
    """Rows ``rows`` of a (memory-mapped) matrix, indexed like an array of those rows.

    Indexing with an integer, an integer array or a slice reads just those rows into memory
    (in the file's dtype, float16 or float32).
    """

    base: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.base.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.base.dtype

    def __getitem__(self, index) -> np.ndarray:
        if np.ndim(index) == 0 and not isinstance(index, slice):
            return np.asarray(self.base[int(self.rows[index])])
        return np.asarray(self.base[np.asarray(self.rows[index])])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def _text(value) -> str:
    """A string array element as text (``S``-dtype arrays hold bytes: decoded, not repr'd)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _provenance(path: str, data) -> dict:
    sidecar = os.path.splitext(path)[0] + ".json"
    text = None
    if data is not None and "provenance" in data.files:
        text = _text(data["provenance"][()])
    elif os.path.isfile(sidecar):
        with open(sidecar, encoding="utf-8-sig") as f:
            text = f.read()
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise MrnnError(f"{path}: its provenance record is not valid JSON ({error.msg})") from None
    return value if isinstance(value, dict) else {"provenance": value}


def load_features(path: str, names_path: str | None = None) -> FeatureFile:
    """The features of an ``.npz`` or an ``.npy`` + names file (see the module docstring).

    For ``.npy``, the names come from ``names_path`` or, by default, the same path with a
    ``.txt`` suffix. Raises :class:`MrnnError` naming the file for a missing file, missing
    keys, a count mismatch, duplicate names or rows that are not finite (NaN or infinite).
    """
    if not os.path.isfile(path):
        raise MrnnError(f"{path}: no such features file")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as data:
                missing = {"features", "filenames"} - set(data.files)
                if missing:
                    raise MrnnError(f"{path}: missing arrays {sorted(missing)} (has {data.files})")
                features, names = data["features"], [_text(n) for n in data["filenames"]]
                provenance = _provenance(path, data)
        elif path.endswith(".npy"):
            features = np.load(path, mmap_mode="r", allow_pickle=False)
            names_path = names_path or os.path.splitext(path)[0] + ".txt"
            if not os.path.isfile(names_path):
                raise MrnnError(
                    f"{path}: needs a names list, one file name per line ({names_path})"
                )
            with open(names_path, encoding="utf-8-sig") as f:
                names = [line.strip() for line in f if line.strip()]
            provenance = _provenance(path, None)
        else:
            raise MrnnError(f"{path}: expected a .npz or .npy features file")
    except (OSError, ValueError, EOFError) as error:
        raise MrnnError(f"{path}: unreadable features file ({error})") from None
    if features.ndim != 2:
        raise MrnnError(f"{path}: features must be a matrix [N, D], got shape {features.shape}")
    if not np.issubdtype(features.dtype, np.floating):
        raise MrnnError(f"{path}: features must be floats, got {features.dtype}")
    if len(names) != len(features):
        raise MrnnError(f"{path}: {len(features)} feature rows but {len(names)} file names")
    if len(set(names)) != len(names):
        seen: set[str] = set()
        twice = [n for n in names if n in seen or seen.add(n)]
        raise MrnnError(f"{path}: duplicate file names, e.g. {twice[:5]}")
    for start in range(0, len(features), NAN_CHECK_ROWS):
        chunk = np.asarray(features[start : start + NAN_CHECK_ROWS])
        bad = np.flatnonzero(~np.isfinite(chunk).all(axis=1))
        if bad.size:
            rows = [f"row {start + i} ({names[start + i]})" for i in bad[:5]]
            raise MrnnError(f"{path}: feature rows with NaN or infinite values: {', '.join(rows)}")
    if features.dtype not in (np.float16, np.float32):
        features = features.astype(np.float32)
    return FeatureFile(path=path, names=names, features=features, provenance=provenance)


def _keys(name: str) -> list[str]:
    name = name.replace("\\", "/")
    return list(dict.fromkeys([name, name.lstrip("./"), os.path.basename(name)]))


def align(records: Sequence[ImageRecord], features: FeatureFile, split: str = "") -> np.ndarray:
    """The feature row of each record, matched by image id, relative path or file name.

    Raises :class:`MrnnError` listing the first images the file has no features for.
    """
    index = features.name_index
    rows = np.empty(len(records), np.int64)
    missing = []
    for i, record in enumerate(records):
        keys = [record.image_id, *_keys(record.image_id)]
        if record.file_path:
            keys += _keys(record.file_path)
        found = next((index[k] for k in keys if index.get(k, -1) >= 0), None)
        if found is None:
            missing.append(record.image_id)
        else:
            rows[i] = found
    if missing:
        where = f" of split {split!r}" if split else ""
        raise MrnnError(
            f"{features.path}: no features for {len(missing)} of {len(records)} images{where}, "
            f"first: {', '.join(missing[:5])}"
        )
    return rows
