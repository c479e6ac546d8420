"""Precomputed image features on disk: an ``.npz`` with ``features`` and ``filenames``, or an
``.npy`` matrix with a names list (one file name per line) beside it."""

from __future__ import annotations

import os

import numpy as np

from mrnn_jax.errors import MrnnError


def load_features(path: str, names_path: str | None = None) -> tuple[list[str], np.ndarray]:
    """``(file names, features [N, D] float32)`` from an ``.npz`` or an ``.npy`` + names file.

    For ``.npy``, the names come from ``names_path`` or, by default, the same path with a
    ``.txt`` suffix. Raises :class:`MrnnError` naming the file for a missing file, missing
    keys, a count mismatch, duplicate names or rows that are not finite.
    """
    if not os.path.isfile(path):
        raise MrnnError(f"{path}: no such features file")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as data:
                missing = {"features", "filenames"} - set(data.files)
                if missing:
                    raise MrnnError(f"{path}: missing arrays {sorted(missing)} (has {data.files})")
                features, names = data["features"], [str(n) for n in data["filenames"]]
        elif path.endswith(".npy"):
            features = np.load(path, allow_pickle=False)
            names_path = names_path or os.path.splitext(path)[0] + ".txt"
            if not os.path.isfile(names_path):
                raise MrnnError(
                    f"{path}: needs a names list, one file name per line ({names_path})"
                )
            with open(names_path, encoding="utf-8-sig") as f:
                names = [line.strip() for line in f if line.strip()]
        else:
            raise MrnnError(f"{path}: expected a .npz or .npy features file")
    except (OSError, ValueError) as error:
        raise MrnnError(f"{path}: unreadable features file ({error})") from None
    if features.ndim != 2:
        raise MrnnError(f"{path}: features must be a matrix [N, D], got shape {features.shape}")
    if len(names) != len(features):
        raise MrnnError(f"{path}: {len(features)} feature rows but {len(names)} file names")
    if len(set(names)) != len(names):
        raise MrnnError(f"{path}: duplicate file names")
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if bad.size:
        raise MrnnError(f"{path}: rows that are not finite, first: {[names[i] for i in bad[:5]]}")
    return names, features.astype(np.float32)
