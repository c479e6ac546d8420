"""Flickr8K and Flickr30K: the ``<name>.jpg#<n><TAB>caption`` token files, with the split
from Flickr8K's list files, Karpathy's JSON, user lists, or a deterministic fallback."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from mrnn_jax.data.karpathy import find_karpathy_json, read_karpathy, read_karpathy_split
from mrnn_jax.data.records import Caption, DataReport, ImageRecord, make_records
from mrnn_jax.data.splits import fallback_split, list_files, read_split_lists
from mrnn_jax.data.text import find_first, read_lines
from mrnn_jax.errors import MrnnError

# "<image>#<n>", then a tab (or, in hand-edited files, spaces), then the caption.
TOKEN_LINE = re.compile(r"^(?P<image>\S+?)#(?P<index>\d+)(?:\s+(?P<caption>.*))?$")

FLICKR8K_LISTS = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
FLICKR30K_SIZES = {"val": 1014, "test": 1000, "train": 29000}  # Karpathy's split


def read_token_file(path: str, report: DataReport) -> dict[str, list[Caption]]:
    """``{image file name: [(caption, "file:line"), ...]}`` from a Flickr token file.

    A line that is not ``<name>#<n> caption`` is an error naming the file and line; keys
    such as Flickr8K's ``2258277193_586949ec62.jpg.1`` are read as written (they match no
    image, so they are counted as captions of images in no split).
    """
    captions: dict[str, list[Caption]] = {}
    for number, line in read_lines(path, report):
        match = TOKEN_LINE.match(line)
        if match is None:
            raise MrnnError(
                f"{path}:{number}: expected '<image>.jpg#<n><TAB><caption>', got {line[:80]!r}"
            )
        image = match["image"]
        if image not in captions and not image.lower().endswith((".jpg", ".jpeg", ".png")):
            report.note("odd image keys in the token file", f"{path}:{number} ({image})")
        captions.setdefault(image, []).append((match["caption"] or "", f"{path}:{number}"))
    if not captions:
        raise MrnnError(f"{path}: holds no captions")
    return captions


def _images_dir(data_dir: str, names: tuple[str, ...]) -> str:
    for name in names:
        if os.path.isdir(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    return os.path.join(data_dir, names[0])


def read_flickr8k(config: Mapping, report: DataReport) -> list[ImageRecord]:
    """Flickr8K from its original files (token file and three split lists) or, when the token
    file is absent, from ``dataset_flickr8k.json``."""
    data_dir = config["data_dir"]
    images = _images_dir(data_dir, ("Flicker8k_Dataset", "Flickr8k_Dataset"))
    text_dirs = [data_dir, os.path.join(data_dir, "Flickr8k_text")]
    token_paths = [os.path.join(d, "Flickr8k.token.txt") for d in text_dirs]
    karpathy = find_karpathy_json(config, data_dir, "flickr8k")
    merge = bool(config.get("merge_restval", True))
    if not any(os.path.isfile(p) for p in token_paths) and karpathy:
        return read_karpathy(karpathy, images, report, merge)
    token_path = find_first("flickr8k", token_paths)
    text_dir = os.path.dirname(token_path)
    captions = read_token_file(token_path, report)
    lists = list_files(config, data_dir)
    if lists:
        split_of = read_split_lists(lists, "flickr8k", report)
    elif karpathy and not all(
        os.path.isfile(os.path.join(text_dir, name)) for name in FLICKR8K_LISTS.values()
    ):
        split_of = read_karpathy_split(karpathy, merge)
    else:
        lists = {split: os.path.join(text_dir, name) for split, name in FLICKR8K_LISTS.items()}
        split_of = read_split_lists(lists, "flickr8k", report)
    return make_records(captions, split_of, lambda name: os.path.join(images, name), report)


def read_flickr30k(config: Mapping, report: DataReport) -> list[ImageRecord]:
    """Flickr30K: captions from ``results_20130124.token`` (else from the Karpathy JSON), the
    split from the Karpathy JSON, user lists, or a deterministic fallback (warned)."""
    data_dir = config["data_dir"]
    images = _images_dir(data_dir, ("flickr30k-images",))
    token_paths = [
        os.path.join(data_dir, "results_20130124.token"),
        os.path.join(data_dir, "flickr30k", "results_20130124.token"),
    ]
    karpathy = find_karpathy_json(config, data_dir, "flickr30k")
    merge = bool(config.get("merge_restval", True))
    if not any(os.path.isfile(p) for p in token_paths) and karpathy:
        return read_karpathy(karpathy, images, report, merge)
    captions = read_token_file(find_first("flickr30k", token_paths), report)
    lists = list_files(config, data_dir)
    if lists:
        split_of = read_split_lists(lists, "flickr30k", report)
    elif karpathy:
        split_of = read_karpathy_split(karpathy, merge)
    else:
        real = [name for name in captions if name.lower().endswith((".jpg", ".jpeg", ".png"))]
        split_of = fallback_split(
            real,
            FLICKR30K_SIZES,
            int(config.get("seed", 0)),
            "flickr30k",
            "no dataset_flickr30k.json and no split lists (results are not comparable with "
            "published ones)",
        )
    return make_records(captions, split_of, lambda name: os.path.join(images, name), report)
