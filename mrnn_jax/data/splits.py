"""Train / val / test splits: from list files, or a deterministic fallback with a warning."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from mrnn_jax.data.records import DataReport
from mrnn_jax.data.text import read_lines, require, resolve

log = logging.getLogger("mrnn_jax")


def list_files(config: Mapping, data_dir: str) -> dict[str, str]:
    """``{split: path}`` of the config's ``train_list`` / ``val_list`` / ``test_list`` that
    are set, resolved against ``data_dir``."""
    return {
        split: resolve(data_dir, config[f"{split}_list"])
        for split in ("train", "val", "test")
        if config.get(f"{split}_list", "")
    }


def read_split_lists(
    lists: Mapping[str, str],
    dataset: str,
    report: DataReport,
    normalise: Callable[[str], str] = lambda name: name,
) -> dict[str, str]:
    """``{image: split}`` from list files (``{split: path}``, one image name per line).

    An image listed twice is counted and kept in its first split.
    """
    split_of: dict[str, str] = {}
    for split, path in lists.items():
        require(path, dataset)
        for number, line in read_lines(path, report):
            name = normalise(line)
            if name in split_of:
                report.note(
                    "images listed twice in the split lists (first kept)", f"{path}:{number}"
                )
                continue
            split_of[name] = split
    return split_of


def fallback_split(
    image_ids: Iterable[str], sizes: Mapping[str, int], seed: int, dataset: str, why: str
) -> dict[str, str]:
    """A deterministic split of the sorted ``image_ids``, shuffled with ``seed``.

    ``sizes`` are the published split sizes (``train`` last takes the rest). When the dataset
    has another number of images, every split but train is scaled in proportion (at least one
    image each). Logs a warning: results on it are not comparable with published ones.
    """
    ids = sorted(set(image_ids))
    total = sum(sizes.values())
    counts = {}
    for split, size in sizes.items():
        if split == "train":
            continue
        counts[split] = size if len(ids) == total else max(1, round(len(ids) * size / total))
    if sum(counts.values()) >= len(ids):
        counts = {split: 0 for split in counts}
    order = np.random.default_rng(seed).permutation(len(ids))
    split_of: dict[str, str] = {}
    position = 0
    for split in [s for s in sizes if s != "train"]:
        for i in order[position : position + counts[split]]:
            split_of[ids[i]] = split
        position += counts[split]
    for i in order[position:]:
        split_of[ids[i]] = "train"
    log.warning(
        "%s: %s; using a deterministic split (seed %d): %s",
        dataset,
        why,
        seed,
        ", ".join(f"{s} {sum(v == s for v in split_of.values())}" for s in sizes),
    )
    return {image: split_of[image] for image in ids}
