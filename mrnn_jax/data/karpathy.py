"""Karpathy's split JSON (``dataset_flickr8k.json``, ``dataset_flickr30k.json``,
``dataset_coco.json``): ``{"images": [{"filename", "split", "sentences": [{"raw", "tokens"}],
"filepath" (coco), ...}]}``, the split most captioning and retrieval papers report on."""

from __future__ import annotations

import os
from collections.abc import Mapping

from mrnn_jax.data.records import Caption, DataReport, ImageRecord, make_records
from mrnn_jax.data.text import find_first, read_json, resolve
from mrnn_jax.errors import MrnnError

SPLITS = ("train", "val", "test", "restval")


def find_karpathy_json(config: Mapping, data_dir: str, dataset: str) -> str | None:
    """``dataset.karpathy_json`` (which must exist) or ``DATA_DIR/dataset_<name>.json`` if
    present, else None."""
    path = config.get("karpathy_json", "")
    if path:
        return find_first(dataset, [resolve(data_dir, path)])
    default = os.path.join(data_dir, f"dataset_{dataset}.json")
    return default if os.path.isfile(default) else None


def _entries(path: str, report: DataReport, merge_restval: bool):
    """``(where, file name, split, image entry)`` of each image of a split file, validated."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise MrnnError(f"{path}: not a Karpathy split file (expected an object with 'images')")
    if not data["images"]:
        raise MrnnError(f"{path}: the split file lists no images")
    seen: set[str] = set()
    for number, image in enumerate(data["images"]):
        where = f"{path}: images[{number}]"
        if not isinstance(image, dict) or "filename" not in image or "split" not in image:
            raise MrnnError(f"{where}: needs 'filename', 'split' and 'sentences'")
        name, split = str(image["filename"]), str(image["split"])
        if split not in SPLITS:
            raise MrnnError(f"{where}: unknown split {split!r} (expected one of {SPLITS})")
        if name in seen:
            report.note("images listed twice in the split file (first kept)", where)
            continue
        seen.add(name)
        yield where, name, "train" if split == "restval" and merge_restval else split, image


def read_karpathy_split(path: str, merge_restval: bool = True) -> dict[str, str]:
    """``{file name: split}`` of a Karpathy split file (for captions read from elsewhere)."""
    return {name: split for _, name, split, _ in _entries(path, DataReport(), merge_restval)}


def read_karpathy(
    path: str,
    images_dir: str,
    report: DataReport,
    merge_restval: bool = True,
) -> list[ImageRecord]:
    """Records of a Karpathy split file; ``restval`` joins ``train`` when ``merge_restval``.

    Captions are the ``raw`` sentences, tokenised like every other dataset (the file's own
    ``tokens`` are used only where ``raw`` is missing). Image paths are ``images_dir /
    filepath / filename`` (``filepath`` is given for COCO only).
    """
    captions: dict[str, list[Caption]] = {}
    split_of: dict[str, str] = {}
    folders: dict[str, str] = {}
    for where, name, split, image in _entries(path, report, merge_restval):
        split_of[name] = split
        folders[name] = str(image.get("filepath", ""))
        pairs = captions.setdefault(name, [])
        for k, sentence in enumerate(image.get("sentences", [])):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if raw is None and isinstance(sentence, dict):
                raw = " ".join(sentence.get("tokens", []))
            pairs.append((str(raw or ""), f"{where}.sentences[{k}]"))
    return make_records(
        captions,
        split_of,
        lambda name: os.path.join(images_dir, folders[name], name),
        report,
    )
