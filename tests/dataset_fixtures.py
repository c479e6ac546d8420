"""Small datasets written in the exact published formats (DESIGN.md section 2), for tests.

Each writer makes a folder laid out like the real download, with ``per_split`` images per
split and 5 captions each, and returns ``{split: [image ids]}``. ``write_features`` writes
the precomputed-features formats for any list of names.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

COLOURS = ("red", "blue", "green", "yellow", "black", "white")
THINGS = ("dog", "child", "man", "woman", "bicycle", "boat")
PLACES = ("on the grass", "in the water", "near a wall", "on a street", "in the snow")


TEMPLATES = (
    "A {colour} {thing} is {place} .",
    "The {thing} , {colour} , stands {place}",
    "a {colour} {thing} {place}",
    "There is a {colour} {thing} {place} .",
    "One {colour} {thing} waits {place} .",
)


def captions_for(index: int, count: int = 5) -> list[str]:
    """``count`` distinct captions of image ``index``, tokenised Flickr-style (deterministic)."""
    colour, thing = COLOURS[index % len(COLOURS)], THINGS[index % len(THINGS)]
    return [
        TEMPLATES[k % len(TEMPLATES)].format(
            colour=colour, thing=thing, place=PLACES[(index + k) % len(PLACES)]
        )
        for k in range(count)
    ]


def _split_names(
    make_name, per_split: int, splits=("train", "val", "test")
) -> dict[str, list[str]]:
    names, index = {}, 0
    for split in splits:
        names[split] = []
        for _ in range(per_split):
            names[split].append(make_name(index))
            index += 1
    return names


def _index(names: dict[str, list[str]]) -> dict[str, int]:
    return {name: i for i, name in enumerate(n for split in names.values() for n in split)}


def write_image(path: str, index: int, size: int = 32) -> None:
    """A small RGB JPEG whose colour depends on ``index``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def flickr8k_name(index: int) -> str:
    """A Flickr8K-style file name (``1000268201_693b08cb0e.jpg``)."""
    return f"{1000268201 + 7919 * index}_{(0x693B08CB0E + 104729 * index) % 16**10:010x}.jpg"


def flickr30k_name(index: int) -> str:
    """A Flickr30K-style file name (``1000092795.jpg``)."""
    return f"{1000092795 + 7919 * index}.jpg"


def token_lines(names: dict[str, list[str]]) -> list[str]:
    """Lines of a Flickr token file: ``<name>#<n><TAB><caption>``."""
    index = _index(names)
    return [
        f"{name}#{k}\t{caption}"
        for split in names.values()
        for name in split
        for k, caption in enumerate(captions_for(index[name]))
    ]


def write_flickr8k(
    root: str, per_split: int = 3, images: bool = False, karpathy: bool = False
) -> dict[str, list[str]]:
    """Flickr8K's original release: token file, three split lists, ``Flicker8k_Dataset/``.

    The token file ends with the real file's odd key ``2258277193_586949ec62.jpg.1``.
    """
    names = _split_names(flickr8k_name, per_split)
    os.makedirs(root, exist_ok=True)
    lines = token_lines(names)
    lines += [f"2258277193_586949ec62.jpg.1#{k}\tA dog runs ." for k in range(5)]
    with open(os.path.join(root, "Flickr8k.token.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    for split, file_name in (
        ("train", "Flickr_8k.trainImages.txt"),
        ("val", "Flickr_8k.devImages.txt"),
        ("test", "Flickr_8k.testImages.txt"),
    ):
        with open(os.path.join(root, file_name), "w", encoding="utf-8") as f:
            f.write("\n".join(names[split]) + "\n")
    if images:
        for name, i in _index(names).items():
            write_image(os.path.join(root, "Flicker8k_Dataset", name), i)
    if karpathy:
        write_karpathy_json(os.path.join(root, "dataset_flickr8k.json"), "flickr8k", names)
    return names


def write_flickr30k(
    root: str, per_split: int = 3, karpathy: bool = True, token_file: bool = True
) -> dict[str, list[str]]:
    """Flickr30K: ``results_20130124.token`` and (optionally) ``dataset_flickr30k.json``."""
    names = _split_names(flickr30k_name, per_split)
    os.makedirs(root, exist_ok=True)
    if token_file:
        with open(os.path.join(root, "results_20130124.token"), "w", encoding="utf-8") as f:
            f.write("\n".join(token_lines(names)) + "\n")
    if karpathy:
        write_karpathy_json(os.path.join(root, "dataset_flickr30k.json"), "flickr30k", names)
    return names


def write_karpathy_json(
    path: str, dataset: str, names: dict[str, list[str]], coco_folders: dict | None = None
) -> None:
    """Karpathy's ``dataset_<name>.json`` for ``names`` (``filepath``/``cocoid`` for coco)."""
    images, sentid = [], 0
    for imgid, (name, i) in enumerate(_index(names).items()):
        split = next(s for s, ns in names.items() if name in ns)
        sentences = []
        for raw in captions_for(i):
            tokens = [w for w in raw.lower().replace(",", " ").replace(".", " ").split()]
            sentences.append({"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        entry = {
            "filename": name,
            "imgid": imgid,
            "split": split,
            "sentids": [s["sentid"] for s in sentences],
            "sentences": sentences,
        }
        if dataset == "coco":
            entry["filepath"] = (coco_folders or {}).get(name, name.split("_")[1])
            entry["cocoid"] = int(name.rsplit("_", 1)[1].split(".")[0])
        images.append(entry)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"images": images, "dataset": dataset}, f)


def coco_name(folder: str, image_id: int) -> str:
    """A COCO 2014 file name (``COCO_val2014_000000391895.jpg``)."""
    return f"COCO_{folder}_{image_id:012d}.jpg"


def write_coco(
    root: str, per_split: int = 3, karpathy: bool = True, official: bool = True
) -> dict[str, list[str]]:
    """COCO 2014: ``annotations/captions_{train,val}2014.json`` and/or ``dataset_coco.json``.

    Train images come from train2014; val, test and restval from val2014 (as in Karpathy's).
    """
    names = {
        "train": [coco_name("train2014", 9 + 10 * i) for i in range(per_split)],
        "restval": [coco_name("val2014", 42 + 10 * i) for i in range(per_split)],
        "val": [coco_name("val2014", 73 + 10 * i) for i in range(per_split)],
        "test": [coco_name("val2014", 74 + 10 * i) for i in range(per_split)],
    }
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    index = _index(names)
    if official:
        note_id = 1
        for folder in ("train2014", "val2014"):
            images, annotations = [], []
            for name, i in index.items():
                if folder not in name:
                    continue
                image_id = int(name.rsplit("_", 1)[1].split(".")[0])
                images.append(
                    {"id": image_id, "file_name": name, "width": 640, "height": 480, "license": 1}
                )
                for caption in captions_for(i):
                    annotations.append({"image_id": image_id, "id": note_id, "caption": caption})
                    note_id += 1
            data = {"info": {}, "licenses": [], "images": images, "annotations": annotations}
            path = os.path.join(root, "annotations", f"captions_{folder}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f)
    if karpathy:
        write_karpathy_json(os.path.join(root, "dataset_coco.json"), "coco", names)
    return names


def iapr_name(index: int) -> str:
    """An IAPR TC-12 image path as in ``<IMAGE>`` (``images/01/1000.jpg``)."""
    return f"images/{index % 3:02d}/{1000 + index}.jpg"


IAPR_RECORD = """<DOC>
<DOCNO>annotations/{folder}/{number}.eng</DOCNO>
<TITLE>{title}</TITLE>
<DESCRIPTION>{description}</DESCRIPTION>
<NOTES></NOTES>
<LOCATION>Quilotoa, Ecuador</LOCATION>
<DATE>April 2002</DATE>
<IMAGE>{image}</IMAGE>
<THUMBNAIL>thumbnails/{folder}/{number}.jpg</THUMBNAIL>
</DOC>
"""


def write_iapr(root: str, per_split: int = 3, lists: bool = True) -> dict[str, list[str]]:
    """IAPR TC-12: ``annotations_complete_eng/NN/NNNN.eng`` (Latin-1, as the release is),
    each description five clauses separated by ";"; with ``lists``, train.txt, val.txt and
    test.txt (one ``<IMAGE>`` path per line)."""
    names = _split_names(iapr_name, per_split)
    for name, i in _index(names).items():
        folder, number = name.split("/")[1], name.split("/")[2].split(".")[0]
        description = "; ".join(c.rstrip(" .") for c in captions_for(i)) + ";"
        text = IAPR_RECORD.format(
            folder=folder,
            number=number,
            title="Señora in Quilotoa",
            description=description,
            image=name,
        )
        path = os.path.join(root, "annotations_complete_eng", folder, f"{number}.eng")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="latin-1") as f:
            f.write(text)
    if lists:
        for split in ("train", "val", "test"):
            with open(os.path.join(root, f"{split}.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(names[split]) + "\n")
    return names


def write_folder(
    root: str, per_split: int = 3, fmt: str = "jsonl", images: bool = True, splits: bool = True
) -> dict[str, list[str]]:
    """A user's own folder: ``images/<n>.jpg`` and ``captions.jsonl`` or ``captions.csv``."""
    names = _split_names(lambda i: f"images/photo_{i:03d}.jpg", per_split)
    os.makedirs(root, exist_ok=True)
    rows = [
        (name, caption, split)
        for split, split_names in names.items()
        for name in split_names
        for caption in captions_for(_index(names)[name])
    ]
    if fmt == "jsonl":
        with open(os.path.join(root, "captions.jsonl"), "w", encoding="utf-8") as f:
            for name, caption, split in rows:
                item = {"image": name, "caption": caption}
                if splits:
                    item["split"] = split
                f.write(json.dumps(item) + "\n")
    else:
        import csv

        with open(os.path.join(root, "captions.csv"), "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption", "split"] if splits else ["image", "caption"])
            for name, caption, split in rows:
                writer.writerow([name, caption, split] if splits else [name, caption])
    if images:
        for name, i in _index(names).items():
            write_image(os.path.join(root, name), i)
    return names


def write_features(
    path: str,
    names: list[str],
    dim: int = 8,
    dtype=np.float16,
    provenance: dict | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Features for ``names`` as ``.npz`` (features, filenames[, provenance]) or ``.npy`` +
    ``.txt`` names (+ ``.json`` provenance), by ``path``'s suffix; returns the matrix."""
    features = np.random.default_rng(seed).normal(size=(len(names), dim)).astype(dtype)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if path.endswith(".npz"):
        arrays = {"features": features, "filenames": np.asarray(names)}
        if provenance is not None:
            arrays["provenance"] = np.asarray(json.dumps(provenance))
        np.savez(path, **arrays)
    else:
        np.save(path, features)
        with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
            f.write("\n".join(names) + "\n")
        if provenance is not None:
            with open(os.path.splitext(path)[0] + ".json", "w", encoding="utf-8") as f:
                json.dump(provenance, f)
    return features


def all_names(names: dict[str, list[str]]) -> list[str]:
    """Every image id of a writer's result, in split order."""
    return [name for split in names.values() for name in split]
