"""IAPR TC-12: ``annotations_complete_eng/NN/NNNN.eng`` records, each description split into
sentences on ";" (as the m-RNN papers do); the split from list files, else a deterministic
split of the papers' sizes (warned)."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping

from mrnn_jax.data.records import Caption, DataReport, ImageRecord, make_records
from mrnn_jax.data.splits import fallback_split, list_files, read_split_lists
from mrnn_jax.data.text import read_text, require
from mrnn_jax.errors import MrnnError

ANNOTATIONS = "annotations_complete_eng"
# The m-RNN papers' split: 17,665 training and 1,962 test images. Validation (for early
# stopping and model choice) is carved from the training images: our choice, 1,000 of them.
SIZES = {"val": 1000, "test": 1962, "train": 16665}


def _field(text: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.DOTALL | re.IGNORECASE)
    return None if match is None else match.group(1).strip()


def image_key(path: str) -> str:
    """The canonical ``images/NN/NNNN.jpg`` form of an image path (list files vary)."""
    key = path.strip().replace("\\", "/").lstrip("./")
    if not key.startswith("images/"):
        key = "images/" + key
    if not os.path.splitext(key)[1]:
        key += ".jpg"
    return key


def read_annotations(data_dir: str, report: DataReport) -> dict[str, list[Caption]]:
    """``{images/NN/NNNN.jpg: [(sentence, where), ...]}`` from every ``.eng`` file."""
    root = require(os.path.join(data_dir, ANNOTATIONS), "iapr", "folder")
    paths = sorted(glob.glob(os.path.join(root, "**", "*.eng"), recursive=True))
    if not paths:
        raise MrnnError(f"{root}: holds no .eng annotation files")
    captions: dict[str, list[Caption]] = {}
    for path in paths:
        text = read_text(path, report)
        image, description = _field(text, "IMAGE"), _field(text, "DESCRIPTION")
        if image is None:
            raise MrnnError(f"{path}: no <IMAGE> field")
        if description is None:
            report.note("annotations without <DESCRIPTION> (skipped)", path)
            continue
        sentences = [s.strip() for s in description.split(";")]
        pairs = captions.setdefault(image_key(image), [])
        pairs.extend((s, f"{path}: sentence {i + 1}") for i, s in enumerate(sentences) if s)
    return captions


def read_iapr(config: Mapping, report: DataReport) -> list[ImageRecord]:
    """IAPR TC-12 records; image ids are paths such as ``images/01/1000.jpg``."""
    data_dir = config["data_dir"]
    captions = read_annotations(data_dir, report)
    lists = list_files(config, data_dir)
    seed = int(config.get("seed", 0))
    if {"train", "test"} <= set(lists):
        split_of = read_split_lists(lists, "iapr", report, normalise=image_key)
        if "val" not in lists:
            train = [name for name, split in split_of.items() if split == "train"]
            carved = fallback_split(
                train,
                {"val": SIZES["val"], "train": SIZES["train"]},
                seed,
                "iapr",
                "no val_list given: validation images carved from the training list",
            )
            split_of.update(carved)
    elif lists:
        raise MrnnError("iapr: give both dataset.train_list and dataset.test_list (or neither)")
    else:
        split_of = fallback_split(
            captions,
            SIZES,
            seed,
            "iapr",
            "no split lists (dataset.train_list, test_list); results are not comparable with "
            "published ones",
        )
    return make_records(captions, split_of, lambda name: os.path.join(data_dir, name), report)
