"""MS COCO 2014 captions: Karpathy's ``dataset_coco.json`` when present (the split papers
report on), else the official ``captions_train2014.json`` / ``captions_val2014.json`` with
val2014 split deterministically (warned)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from mrnn_jax.data.karpathy import find_karpathy_json, read_karpathy
from mrnn_jax.data.records import Caption, DataReport, ImageRecord, make_records
from mrnn_jax.data.splits import fallback_split
from mrnn_jax.data.text import find_first, read_json
from mrnn_jax.errors import MrnnError

# Karpathy's sizes for the val2014 images: 5,000 val, 5,000 test, the rest restval.
VAL2014_SIZES = {"val": 5000, "test": 5000, "train": 30504}


def read_captions_json(path: str) -> tuple[dict[str, list[Caption]], dict[str, str]]:
    """``(captions by file name, folder by file name)`` of an official ``captions_*.json``."""
    data = read_json(path)
    if not isinstance(data, dict) or not {"images", "annotations"} <= set(data):
        raise MrnnError(f"{path}: not a COCO captions file (expected 'images' and 'annotations')")
    folder = os.path.basename(path).removeprefix("captions_").removesuffix(".json")
    names: dict[object, str] = {}
    for number, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise MrnnError(f"{path}: images[{number}] needs 'id' and 'file_name'")
        names[image["id"]] = str(image["file_name"])
    captions: dict[str, list[Caption]] = {name: [] for name in names.values()}
    for number, note in enumerate(data["annotations"]):
        where = f"{path}: annotations[{number}]"
        if not isinstance(note, dict) or "image_id" not in note or "caption" not in note:
            raise MrnnError(f"{where}: needs 'image_id' and 'caption'")
        if note["image_id"] not in names:
            raise MrnnError(f"{where}: image_id {note['image_id']} is not in 'images'")
        captions[names[note["image_id"]]].append((str(note["caption"]), where))
    return captions, {name: folder for name in captions}


def read_coco(config: Mapping, report: DataReport) -> list[ImageRecord]:
    """COCO 2014 records (image ids are file names such as ``COCO_val2014_000000391895.jpg``)."""
    data_dir = config["data_dir"]
    merge = bool(config.get("merge_restval", True))
    karpathy = find_karpathy_json(config, data_dir, "coco")
    if karpathy:
        return read_karpathy(karpathy, data_dir, report, merge)
    notes = os.path.join(data_dir, "annotations")
    train, train_dirs = read_captions_json(
        find_first("coco", [os.path.join(notes, "captions_train2014.json")])
    )
    val, val_dirs = read_captions_json(
        find_first("coco", [os.path.join(notes, "captions_val2014.json")])
    )
    split_of = {name: "train" for name in train}
    held_out = fallback_split(
        val,
        VAL2014_SIZES,
        int(config.get("seed", 0)),
        "coco",
        "no dataset_coco.json (results are not comparable with published ones)",
    )
    for name, split in held_out.items():
        split_of[name] = split if split != "train" or merge else "restval"
    folders = {**train_dirs, **val_dirs}
    return make_records(
        {**train, **val},
        split_of,
        lambda name: os.path.join(data_dir, folders[name], name),
        report,
    )
