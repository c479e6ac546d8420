"""A user's own data: a folder of images and a captions file, JSON lines
(``{"image": ..., "caption": ..., "split": ...}``) or CSV (``image,caption[,split]``)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping

from mrnn_jax.data.records import Caption, DataReport, ImageRecord, make_records
from mrnn_jax.data.splits import fallback_split
from mrnn_jax.data.text import find_first, read_lines, read_text, resolve
from mrnn_jax.errors import MrnnError

CAPTION_FILES = ("captions.jsonl", "captions.csv")
SPLITS = ("train", "val", "test")
# Images without a split: 90% train, 5% val, 5% test (our choice).
FALLBACK_SHARES = {"val": 5, "test": 5, "train": 90}

Row = tuple[str, str, str, str]  # (image, caption, split or "", "file:line")


def _jsonl_rows(path: str, report: DataReport) -> list[Row]:
    rows = []
    for number, line in read_lines(path, report):
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise MrnnError(f"{where}: not valid JSON ({error.msg})") from None
        if not isinstance(item, dict) or "image" not in item:
            raise MrnnError(f'{where}: expected {{"image": ..., "caption": ...}}')
        texts = item.get("captions", [item["caption"]] if "caption" in item else None)
        if not isinstance(texts, list):
            raise MrnnError(f"{where}: needs 'caption' (a string) or 'captions' (a list)")
        for text in texts:
            rows.append((str(item["image"]), str(text), str(item.get("split", "")), where))
    return rows


def _csv_rows(path: str, report: DataReport) -> list[Row]:
    text = read_text(path, report)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in next(reader, [])]
    if "image" not in header or "caption" not in header:
        raise MrnnError(f"{path}:1: the header must name the columns image,caption[,split]")
    image, caption = header.index("image"), header.index("caption")
    split = header.index("split") if "split" in header else None
    rows = []
    for values in reader:
        where = f"{path}:{reader.line_num}"
        if not any(v.strip() for v in values):
            continue
        if len(values) < len(header):
            raise MrnnError(f"{where}: {len(values)} columns, the header has {len(header)}")
        rows.append(
            (
                values[image].strip(),
                values[caption],
                values[split].strip() if split is not None else "",
                where,
            )
        )
    return rows


def read_folder(config: Mapping, report: DataReport) -> list[ImageRecord]:
    """Records of a captions file; image paths are relative to the data folder."""
    data_dir = config["data_dir"]
    given = config.get("captions_file", "")
    candidates = (
        [resolve(data_dir, given)] if given else [os.path.join(data_dir, n) for n in CAPTION_FILES]
    )
    path = find_first("folder", candidates)
    rows = _csv_rows(path, report) if path.endswith(".csv") else _jsonl_rows(path, report)
    captions: dict[str, list[Caption]] = {}
    split_of: dict[str, str] = {}
    unsplit = []
    for image, caption, split, where in rows:
        image = image.replace("\\", "/")
        if split and split not in SPLITS:
            raise MrnnError(f"{where}: unknown split {split!r} (use {', '.join(SPLITS)})")
        if split and split_of.get(image, split) != split:
            raise MrnnError(f"{where}: {image} is in split {split_of[image]!r} already")
        captions.setdefault(image, []).append((caption, where))
        if split:
            split_of[image] = split
        elif image not in split_of:
            unsplit.append(image)
    unsplit = [image for image in dict.fromkeys(unsplit) if image not in split_of]
    if unsplit:
        split_of.update(
            fallback_split(
                unsplit,
                FALLBACK_SHARES,
                int(config.get("seed", 0)),
                "folder",
                f"{len(unsplit)} images have no split in {path}",
            )
        )
    return make_records(captions, split_of, lambda name: os.path.join(data_dir, name), report)
