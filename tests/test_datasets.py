"""The dataset readers on fixtures in the exact published formats: splits, captions, image
paths, real-file mess (encodings, line endings, odd keys), missing files, precomputed
features, and a vocabulary built from training captions only."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mrnn_jax.data import DataReport, ImageRecord, load_dataset, read_records
from mrnn_jax.data.download import INSTRUCTIONS
from mrnn_jax.data.records import make_records
from mrnn_jax.errors import MrnnError
from mrnn_jax.text.vocab import UNK_ID, build_vocab
from tests.dataset_fixtures import (
    all_names,
    captions_for,
    token_lines,
    write_coco,
    write_features,
    write_flickr8k,
    write_flickr30k,
    write_folder,
    write_iapr,
    write_karpathy_json,
)

SPLITS = ("train", "val", "test")
WORD = re.compile(r"^[^\W_]+(?:['-][^\W_]+)*$|^'[a-z]+$|^n't$")
ENCODER = {"name": "features", "features_dim": 8}
# A phrase of each dataset's download instructions that no other dataset's shares.
PHRASES = {
    "flickr8k": "forms.illinois.edu/sec/1713398",
    "flickr30k": "shannon.cs.illinois.edu/DenotationGraph",
    "coco": "annotations_trainval2014.zip",
    "iapr": "www.imageclef.org/photodata",
    "folder": "a header line image,caption[,split]",
}


# --- helpers -----------------------------------------------------------------------------


def config(root: Path | str, name: str = "", **extra: object) -> dict:
    """A dataset config with every reader key, for the dataset in ``root``."""
    base = {
        "name": name,
        "data_dir": str(root),
        "seed": 0,
        "karpathy_json": "",
        "train_list": "",
        "val_list": "",
        "test_list": "",
        "merge_restval": True,
        "captions_file": "",
        "features": "",
    }
    base.update(extra)
    return base


def read(name: str, root: Path | str, **extra: object) -> tuple[list[ImageRecord], DataReport]:
    """The records of dataset ``name`` in ``root`` and the report of what was skipped."""
    report = DataReport()
    return read_records(config(root, name, **extra), report), report


def splits_of(records: list[ImageRecord]) -> dict[str, set[str]]:
    """``{split: {image ids}}``."""
    out: dict[str, set[str]] = {}
    for record in records:
        out.setdefault(record.split, set()).add(record.image_id)
    return out


def check_records(
    records: list[ImageRecord], expected: dict[str, list[str]], path_of: dict[str, str]
) -> None:
    """Split membership as ``expected``, 5 captions of lower-case word tokens each, and
    ``file_path`` as ``path_of`` says."""
    assert splits_of(records) == {s: set(names) for s, names in expected.items()}
    assert len({r.image_id for r in records}) == len(records)
    for record in records:
        assert len(record.captions) == 5, record
        assert len(record.tokens) == 5, record
        for caption, tokens in zip(record.captions, record.tokens, strict=True):
            assert caption.strip() == caption and caption
            assert tokens, record
            for token in tokens:
                assert token == token.lower() and WORD.match(token), (token, record)
        assert record.file_path == path_of[record.image_id]


def in_folder(folder: Path | str, names: list[str]) -> dict[str, str]:
    """``{name: folder/name}``."""
    return {name: os.path.join(str(folder), name) for name in names}


def write_list(path: Path, names: list[str]) -> None:
    """A split list: one image name per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(names) + "\n", encoding="utf-8")


@pytest.fixture
def warnings_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` attached straight to the ``mrnn_jax`` logger (the command line may have
    turned its propagation off in this process)."""
    logger = logging.getLogger("mrnn_jax")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="mrnn_jax")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


def warnings_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every warning logged by ``mrnn_jax`` so far, one per line."""
    return "\n".join(
        r.getMessage()
        for r in caplog.records
        if r.name == "mrnn_jax" and r.levelno >= logging.WARNING
    )


# --- 1. each reader on its published format ----------------------------------------------


def test_flickr8k_original_files(tmp_path: Path, warnings_log) -> None:
    """Token file + three split lists; the odd ``.jpg.1`` key is counted, not an image."""
    names = write_flickr8k(str(tmp_path))
    records, report = read("flickr8k", tmp_path)
    check_records(records, names, in_folder(tmp_path / "Flicker8k_Dataset", all_names(names)))
    assert [r.split for r in records] == ["train"] * 3 + ["val"] * 3 + ["test"] * 3
    assert report.counts["odd image keys in the token file"] == 1
    assert report.counts["captions of images in no split (skipped)"] == 5
    assert not any(r.image_id.endswith(".jpg.1") for r in records)
    assert "deterministic split" not in warnings_text(warnings_log)


def test_flickr8k_text_subfolder(tmp_path: Path) -> None:
    """The text files may sit in ``Flickr8k_text/`` (as in the zip)."""
    names = write_flickr8k(str(tmp_path / "Flickr8k_text"))
    records, _ = read("flickr8k", tmp_path)
    check_records(records, names, in_folder(tmp_path / "Flicker8k_Dataset", all_names(names)))


def test_flickr8k_karpathy_json_only(tmp_path: Path) -> None:
    """``dataset_flickr8k.json`` alone: captions and split from the JSON."""
    names = write_flickr8k(str(tmp_path), karpathy=True)
    for name in (
        "Flickr8k.token.txt",
        "Flickr_8k.trainImages.txt",
        "Flickr_8k.devImages.txt",
        "Flickr_8k.testImages.txt",
    ):
        (tmp_path / name).unlink()
    records, report = read("flickr8k", tmp_path)
    check_records(records, names, in_folder(tmp_path / "Flicker8k_Dataset", all_names(names)))
    assert not report.counts


def _rewrite_karpathy_captions(path: Path, text: str) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    for image in data["images"]:
        for k, sentence in enumerate(image["sentences"]):
            sentence["raw"] = f"{text} number {k}"
            sentence["tokens"] = sentence["raw"].split()
    path.write_text(json.dumps(data), encoding="utf-8")


def test_flickr30k_token_file_and_karpathy_json(tmp_path: Path, warnings_log) -> None:
    """Captions from ``results_20130124.token``, the split from ``dataset_flickr30k.json``."""
    names = write_flickr30k(str(tmp_path))
    # The JSON's split differs from the writer's order, and its captions from the token file.
    moved = {"train": names["test"], "val": names["val"], "test": names["train"]}
    write_karpathy_json(str(tmp_path / "dataset_flickr30k.json"), "flickr30k", moved)
    _rewrite_karpathy_captions(tmp_path / "dataset_flickr30k.json", "json only caption")
    records, _ = read("flickr30k", tmp_path)
    check_records(records, moved, in_folder(tmp_path / "flickr30k-images", all_names(names)))
    index = {name: i for i, name in enumerate(all_names(names))}
    for record in records:
        assert list(record.captions) == captions_for(index[record.image_id])
    assert "deterministic split" not in warnings_text(warnings_log)


def test_flickr30k_karpathy_json_only(tmp_path: Path) -> None:
    """``dataset_flickr30k.json`` alone holds captions and split."""
    names = write_flickr30k(str(tmp_path), token_file=False)
    records, _ = read("flickr30k", tmp_path)
    check_records(records, names, in_folder(tmp_path / "flickr30k-images", all_names(names)))


def test_flickr30k_token_file_and_split_lists(tmp_path: Path, warnings_log) -> None:
    """``dataset.train_list`` / ``val_list`` / ``test_list`` (relative to the data folder)."""
    names = write_flickr30k(str(tmp_path), karpathy=False)
    moved = {"train": names["val"], "val": names["test"], "test": names["train"]}
    for split in SPLITS:
        write_list(tmp_path / "lists" / f"{split}.txt", moved[split])
    records, _ = read(
        "flickr30k",
        tmp_path,
        train_list="lists/train.txt",
        val_list="lists/val.txt",
        test_list=str(tmp_path / "lists" / "test.txt"),
    )
    check_records(records, moved, in_folder(tmp_path / "flickr30k-images", all_names(names)))
    assert "deterministic split" not in warnings_text(warnings_log)


def test_flickr30k_token_file_alone_falls_back_deterministically(
    tmp_path: Path, warnings_log
) -> None:
    """Without JSON or lists: a seeded split of the sorted images, warned, the same twice;
    another seed gives another split."""
    names = write_flickr30k(str(tmp_path), per_split=26, karpathy=False)
    first, _ = read("flickr30k", tmp_path)
    assert "flickr30k" in warnings_text(warnings_log)
    assert "deterministic split (seed 0)" in warnings_text(warnings_log)
    second, _ = read("flickr30k", tmp_path)
    assert [(r.image_id, r.split) for r in first] == [(r.image_id, r.split) for r in second]
    found = splits_of(first)
    assert set(found) == set(SPLITS)
    assert {len(found[s]) for s in ("val", "test")} == {3}
    assert set().union(*found.values()) == set(all_names(names))
    check_records(
        first,
        {s: sorted(found[s]) for s in found},
        in_folder(tmp_path / "flickr30k-images", all_names(names)),
    )
    other, _ = read("flickr30k", tmp_path, seed=1)
    assert splits_of(other) != found


def _coco_paths(root: Path, names: dict[str, list[str]]) -> dict[str, str]:
    return {
        name: str(root / ("val2014" if "_val2014_" in name else "train2014") / name)
        for name in all_names(names)
    }


def test_coco_karpathy_json_merges_restval(tmp_path: Path) -> None:
    """``dataset_coco.json``: restval joins train by default; ``merge_restval=False`` keeps
    it as its own split; images lie in ``DATA_DIR/<filepath>/<filename>``."""
    names = write_coco(str(tmp_path), official=False)
    records, _ = read("coco", tmp_path)
    merged = {
        "train": names["train"] + names["restval"],
        "val": names["val"],
        "test": names["test"],
    }
    check_records(records, merged, _coco_paths(tmp_path, names))
    assert all(
        r.file_path.startswith(str(tmp_path / "val2014"))
        for r in records
        if r.split in ("val", "test")
    )
    kept, _ = read("coco", tmp_path, merge_restval=False)
    check_records(kept, names, _coco_paths(tmp_path, names))


def test_coco_official_captions_fall_back_on_val2014(tmp_path: Path, warnings_log) -> None:
    """``captions_{train,val}2014.json`` only: train2014 is train, val2014 is split
    deterministically into val / test / rest (warned)."""
    names = write_coco(str(tmp_path), per_split=8, karpathy=False)
    records, _ = read("coco", tmp_path)
    assert "coco" in warnings_text(warnings_log)
    assert "deterministic split" in warnings_text(warnings_log)
    found = splits_of(records)
    val2014 = set(names["val"] + names["test"] + names["restval"])
    assert set(names["train"]) <= found["train"]
    assert len(found["val"]) == len(found["test"]) == 3
    assert found["val"] | found["test"] <= val2014
    assert set().union(*found.values()) == set(all_names(names))
    check_records(records, {s: sorted(v) for s, v in found.items()}, _coco_paths(tmp_path, names))
    again, _ = read("coco", tmp_path)
    assert splits_of(again) == found
    kept, _ = read("coco", tmp_path, merge_restval=False)
    restval = splits_of(kept)["restval"]
    assert restval == found["train"] - set(names["train"]) and len(restval) == 18
    assert splits_of(kept)["train"] == set(names["train"])


def _iapr_paths(root: Path, names: dict[str, list[str]]) -> dict[str, str]:
    return {name: str(root / name) for name in all_names(names)}


def test_iapr_with_split_lists(tmp_path: Path) -> None:
    """``.eng`` records (Latin-1) split into sentences on ";", split from three lists."""
    names = write_iapr(str(tmp_path))
    records, report = read(
        "iapr", tmp_path, train_list="train.txt", val_list="val.txt", test_list="test.txt"
    )
    check_records(records, names, _iapr_paths(tmp_path, names))
    assert re.fullmatch(re.escape(str(tmp_path)) + r"/images/\d\d/\d{4}\.jpg", records[0].file_path)
    assert report.counts["files read as Latin-1"] == 9
    index = {name: i for i, name in enumerate(all_names(names))}
    for record in records:
        assert list(record.captions) == [
            c.rstrip(" .") for c in captions_for(index[record.image_id])
        ]


def test_iapr_without_lists_falls_back(tmp_path: Path, warnings_log) -> None:
    """No lists: a deterministic split of the papers' proportions, warned."""
    names = write_iapr(str(tmp_path), per_split=17, lists=False)
    records, _ = read("iapr", tmp_path)
    assert "iapr" in warnings_text(warnings_log)
    assert "deterministic split" in warnings_text(warnings_log)
    found = splits_of(records)
    assert set(found) == set(SPLITS) and len(found["val"]) >= 3 and len(found["test"]) >= 3
    check_records(records, {s: sorted(v) for s, v in found.items()}, _iapr_paths(tmp_path, names))
    again, _ = read("iapr", tmp_path)
    assert splits_of(again) == found


def test_iapr_train_and_test_lists_carve_val_from_train(tmp_path: Path, warnings_log) -> None:
    """Train and test lists only: val is carved from the training list (warned), test kept."""
    names = write_iapr(str(tmp_path), per_split=45)
    records, _ = read("iapr", tmp_path, train_list="train.txt", test_list="test.txt")
    assert "carved from the training list" in warnings_text(warnings_log)
    found = splits_of(records)
    assert found["test"] == set(names["test"])
    assert found["val"] and found["val"] <= set(names["train"])
    assert found["train"] | found["val"] == set(names["train"])
    assert not found["train"] & found["val"]
    assert len(found["val"]) == 3
    listed = {s: sorted(v) for s, v in found.items()}
    check_records(
        records, listed, _iapr_paths(tmp_path, {"train": names["train"], "test": names["test"]})
    )


def test_iapr_one_list_alone_is_an_error(tmp_path: Path) -> None:
    """A train list without a test list is a config error, not a silent fallback."""
    write_iapr(str(tmp_path))
    with pytest.raises(MrnnError, match="train_list and dataset.test_list"):
        read("iapr", tmp_path, train_list="train.txt")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_folder_with_split_column(tmp_path: Path, fmt: str) -> None:
    """A user's folder: ``captions.jsonl`` or ``captions.csv`` with a split column."""
    names = write_folder(str(tmp_path), fmt=fmt, images=False)
    records, report = read("folder", tmp_path)
    check_records(records, names, _iapr_paths(tmp_path, names))
    assert not report.counts


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_folder_without_split_column_falls_back(tmp_path: Path, fmt: str, warnings_log) -> None:
    """No split column: 90 / 5 / 5 deterministic split, warned."""
    names = write_folder(str(tmp_path), per_split=17, fmt=fmt, images=False, splits=False)
    records, _ = read("folder", tmp_path)
    assert "51 images have no split" in warnings_text(warnings_log)
    found = splits_of(records)
    assert set(found) == set(SPLITS) and len(found["val"]) == len(found["test"]) == 3
    check_records(records, {s: sorted(v) for s, v in found.items()}, _iapr_paths(tmp_path, names))
    again, _ = read("folder", tmp_path)
    assert splits_of(again) == found


def test_folder_captions_file_option(tmp_path: Path) -> None:
    """``dataset.captions_file`` names another captions file (relative to the folder)."""
    names = write_folder(str(tmp_path), fmt="csv", images=False)
    (tmp_path / "captions.csv").rename(tmp_path / "mine.csv")
    records, _ = read("folder", tmp_path, captions_file="mine.csv")
    check_records(records, names, _iapr_paths(tmp_path, names))


# --- 2. real-file mess -------------------------------------------------------------------


def flickr8k_with_tokens(root: Path, data: bytes) -> dict[str, list[str]]:
    """The Flickr8K fixture with its token file replaced by ``data``."""
    names = write_flickr8k(str(root))
    (root / "Flickr8k.token.txt").write_bytes(data)
    return names


def clean_lines(names: dict[str, list[str]]) -> list[str]:
    """The fixture's token lines (no odd key)."""
    return token_lines(names)


def by_id(records: list[ImageRecord]) -> dict[str, ImageRecord]:
    """``{image id: record}``."""
    return {r.image_id: r for r in records}


def test_utf8_bom_first_key_parsed(tmp_path: Path) -> None:
    """A UTF-8 byte order mark does not hide the first line's image."""
    names = write_flickr8k(str(tmp_path))
    lines = clean_lines(names)
    flickr8k_with_tokens(tmp_path, b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    records, report = read("flickr8k", tmp_path)
    first = names["train"][0]
    assert lines[0].startswith(first + "#0")
    assert len(by_id(records)[first].captions) == 5
    assert by_id(records)[first].captions[0] == captions_for(0)[0]
    check_records(records, names, in_folder(tmp_path / "Flicker8k_Dataset", all_names(names)))
    assert not report.counts


def test_bom_on_a_latin1_first_line(tmp_path: Path) -> None:
    """A BOM before a first line that is itself Latin-1 (a file pieced together): the BOM
    goes, the key is parsed and the line is decoded as Latin-1."""
    names = write_flickr8k(str(tmp_path))
    lines = [line.encode("utf-8") for line in clean_lines(names)]
    first = names["train"][0]
    lines[0] = f"{first}#0\tA man in a café .".encode("latin-1")
    flickr8k_with_tokens(tmp_path, b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    records, report = read("flickr8k", tmp_path)
    assert by_id(records)[first].captions[0] == "A man in a café ."
    assert len(by_id(records)[first].captions) == 5
    assert report.counts["lines read as Latin-1"] == 1
    assert "captions of images in no split (skipped)" not in report.counts


def test_csv_with_bom_and_latin1_rows(tmp_path: Path) -> None:
    """A CSV with a BOM and Latin-1 rows: the header is still found, the file counted."""
    rows = ["image,caption,split"]
    names = {s: [f"{s}_{i}.jpg" for i in range(3)] for s in SPLITS}
    for i, name in enumerate(all_names(names)):
        split = next(s for s in SPLITS if name in names[s])
        rows += [f"{name},{c.replace(',', '')} café,{split}" for c in captions_for(i)]
    data = "\n".join(rows).encode("latin-1")
    (tmp_path / "captions.csv").write_bytes(b"\xef\xbb\xbf" + data)
    records, report = read("folder", tmp_path)
    check_records(records, names, _iapr_paths(tmp_path, names))
    assert records[0].tokens[0][-1] == "café"
    assert report.counts["files read as Latin-1"] == 1


def test_empty_token_file(tmp_path: Path) -> None:
    """A token file with nothing but blank lines is an error naming it."""
    flickr8k_with_tokens(tmp_path, b"\r\n  \r\n")
    with pytest.raises(MrnnError, match=re.escape(f"{tmp_path / 'Flickr8k.token.txt'}: holds no")):
        read("flickr8k", tmp_path)


def test_latin1_line_decoded_and_counted(tmp_path: Path) -> None:
    """One Latin-1 line in a UTF-8 file is read right and counted."""
    names = write_flickr8k(str(tmp_path))
    lines = [line.encode("utf-8") for line in clean_lines(names)]
    image = names["val"][1]
    number = next(i for i, line in enumerate(lines) if line.startswith(f"{image}#2".encode()))
    lines[number] = f"{image}#2\tA man drinks coffee in a café .".encode("latin-1")
    lines[0] = lines[0] + " über".encode()  # UTF-8 non-ASCII stays UTF-8
    flickr8k_with_tokens(tmp_path, b"\n".join(lines) + b"\n")
    records, report = read("flickr8k", tmp_path)
    record = by_id(records)[image]
    assert record.captions[2] == "A man drinks coffee in a café ."
    assert record.tokens[2] == ("a", "man", "drinks", "coffee", "in", "a", "café")
    assert by_id(records)[names["train"][0]].tokens[0][-1] == "über"
    assert report.counts["lines read as Latin-1"] == 1
    path = str(tmp_path / "Flickr8k.token.txt")
    assert report.examples["lines read as Latin-1"] == [f"{path}:{number + 1}"]


def test_windows_line_endings(tmp_path: Path) -> None:
    """CRLF token file and split lists read exactly like LF ones."""
    names = write_flickr8k(str(tmp_path))
    flickr8k_with_tokens(tmp_path, ("\r\n".join(clean_lines(names)) + "\r\n").encode())
    for name in ("Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt"):
        path = tmp_path / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    records, report = read("flickr8k", tmp_path)
    check_records(records, names, in_folder(tmp_path / "Flicker8k_Dataset", all_names(names)))
    assert not any("\r" in c for r in records for c in r.captions)
    assert not report.counts


def test_stray_spaces_and_tabs(tmp_path: Path) -> None:
    """Spaces and tabs around keys, captions and list entries are dropped."""
    names = write_flickr8k(str(tmp_path))
    lines = [f" \t{line.replace(chr(9), ' ' + chr(9) + '  ')}  \t " for line in clean_lines(names)]
    lines.insert(4, "   \t  ")  # a blank line
    flickr8k_with_tokens(tmp_path, "\n".join(lines).encode())
    train = tmp_path / "Flickr_8k.trainImages.txt"
    train.write_text("".join(f"  {n}\t \n" for n in names["train"]), encoding="utf-8")
    records, report = read("flickr8k", tmp_path)
    check_records(records, names, in_folder(tmp_path / "Flicker8k_Dataset", all_names(names)))
    assert by_id(records)[names["train"][0]].captions[0] == captions_for(0)[0]
    assert not report.counts


def test_empty_and_punctuation_only_captions_skipped(tmp_path: Path) -> None:
    """``name#2<TAB>`` alone and ``name#3<TAB>. , !`` are skipped and counted."""
    names = write_flickr8k(str(tmp_path))
    image = names["test"][0]
    lines = clean_lines(names)
    lines = [f"{image}#2\t" if line.startswith(f"{image}#2") else line for line in lines]
    lines = [f"{image}#3\t. , !" if line.startswith(f"{image}#3") else line for line in lines]
    flickr8k_with_tokens(tmp_path, ("\n".join(lines) + "\n").encode())
    records, report = read("flickr8k", tmp_path)
    record = by_id(records)[image]
    assert len(record.captions) == 3
    assert record.captions == tuple(c for k, c in enumerate(captions_for(6)) if k not in (2, 3))
    assert report.counts["empty captions (skipped)"] == 1
    assert report.counts["captions without a word (skipped)"] == 1
    path = str(tmp_path / "Flickr8k.token.txt")
    number = lines.index(f"{image}#3\t. , !") + 1
    assert report.examples["captions without a word (skipped)"] == [f"{path}:{number}"]


def test_odd_key_counted_not_an_image(tmp_path: Path) -> None:
    """Flickr8K's ``2258277193_586949ec62.jpg.1`` key: counted, no record, no crash."""
    names = write_flickr8k(str(tmp_path))
    records, report = read("flickr8k", tmp_path)
    assert "2258277193_586949ec62.jpg.1" not in by_id(records)
    assert report.counts["odd image keys in the token file"] == 1
    assert "2258277193_586949ec62.jpg.1" in report.examples["odd image keys in the token file"][0]
    assert len(records) == len(all_names(names))


def test_split_and_captions_disagree(tmp_path: Path) -> None:
    """An image listed in a split without captions, and captions of an unlisted image:
    both skipped and counted."""
    names = write_flickr8k(str(tmp_path))
    lost = names["val"][2]
    lines = [line for line in clean_lines(names) if not line.startswith(lost)]
    lines += [f"9999999999_0123456789.jpg#{k}\tA cat sleeps on a mat ." for k in range(5)]
    flickr8k_with_tokens(tmp_path, ("\n".join(lines) + "\n").encode())
    records, report = read("flickr8k", tmp_path)
    assert lost not in by_id(records)
    assert "9999999999_0123456789.jpg" not in by_id(records)
    assert report.counts["images of a split without captions (skipped)"] == 1
    assert report.examples["images of a split without captions (skipped)"] == [f"{lost} (val)"]
    assert report.counts["captions of images in no split (skipped)"] == 5
    assert len(records) == 8


def test_duplicate_captions_counted_one_kept(tmp_path: Path) -> None:
    """The same caption twice for an image (up to case and spacing) is kept once."""
    names = write_flickr8k(str(tmp_path))
    image = names["train"][1]
    lines = clean_lines(names)
    caption = captions_for(1)[0]
    lines.append(f"{image}#5\t{caption}")
    lines.append(f"{image}#6\t  {caption.upper()}  ")
    flickr8k_with_tokens(tmp_path, ("\n".join(lines) + "\n").encode())
    records, report = read("flickr8k", tmp_path)
    record = by_id(records)[image]
    assert record.captions == tuple(captions_for(1))
    assert report.counts["duplicate captions of an image (skipped)"] == 2


def test_malformed_token_line_names_file_and_line(tmp_path: Path) -> None:
    """A line that is not ``<name>#<n><TAB>caption`` is an error at ``file:line``."""
    names = write_flickr8k(str(tmp_path))
    lines = clean_lines(names)
    lines.insert(6, "this line has no image key at all")
    flickr8k_with_tokens(tmp_path, ("\n".join(lines) + "\n").encode())
    path = str(tmp_path / "Flickr8k.token.txt")
    with pytest.raises(MrnnError, match=re.escape(f"{path}:7:")):
        read("flickr8k", tmp_path)


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    """Broken Karpathy and COCO JSON: the error names the file, line and column."""
    write_flickr30k(str(tmp_path / "f30k"), token_file=False)
    path = tmp_path / "f30k" / "dataset_flickr30k.json"
    path.write_text('{\n"images": [\n{"filename": "a.jpg",, }\n]}\n', encoding="utf-8")
    with pytest.raises(MrnnError, match=re.escape(f"{path}:3:")):
        read("flickr30k", tmp_path / "f30k")
    write_coco(str(tmp_path / "coco"), karpathy=False)
    path = tmp_path / "coco" / "annotations" / "captions_val2014.json"
    path.write_text('{"images": [],\n\n "annotations": [}', encoding="utf-8")
    with pytest.raises(MrnnError, match=re.escape(f"{path}:3:")):
        read("coco", tmp_path / "coco")


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    """A broken line of ``captions.jsonl`` is an error at ``file:line``."""
    write_folder(str(tmp_path), images=False)
    path = tmp_path / "captions.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[3] = '{"image": "images/photo_000.jpg", "caption": '
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(MrnnError, match=re.escape(f"{path}:4:")):
        read("folder", tmp_path)


def test_csv_row_with_too_few_columns(tmp_path: Path) -> None:
    """A CSV row shorter than the header is an error at ``file:line``."""
    write_folder(str(tmp_path), fmt="csv", images=False)
    path = tmp_path / "captions.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[5] = "images/photo_001.jpg"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(MrnnError, match=re.escape(f"{path}:6:") + ".*1 columns"):
        read("folder", tmp_path)


def test_csv_with_bom_crlf_and_quoted_commas(tmp_path: Path) -> None:
    """A spreadsheet's CSV: BOM, CRLF, a quoted caption with commas and a line break."""
    path = tmp_path / "captions.csv"
    rows = ["Image,Caption,Split"]
    names = {s: [f"pics/{s}_{i}.jpg" for i in range(3)] for s in SPLITS}
    for i, name in enumerate(all_names(names)):
        split = next(s for s in SPLITS if name in names[s])
        for k, caption in enumerate(captions_for(i)):
            text = f'"{caption}, really,\r\nyes"' if k == 0 else caption.replace(",", "")
            rows.append(f" {name} ,{text},{split}")
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(rows).encode() + b"\r\n")
    records, report = read("folder", tmp_path)
    check_records(records, names, _iapr_paths(tmp_path, names))
    assert records[0].captions[0] == captions_for(0)[0] + ", really, yes"
    assert not report.counts


# --- 3. missing things -------------------------------------------------------------------


def assert_instructions(error: pytest.ExceptionInfo, name: str, path: Path | str) -> None:
    """The error names ``path`` and carries ``name``'s download instructions."""
    message = str(error.value)
    assert str(path) in message
    assert PHRASES[name] in message
    assert INSTRUCTIONS[name] in message


@pytest.mark.parametrize("name", list(PHRASES))
def test_missing_data_folder(tmp_path: Path, name: str) -> None:
    """A data folder that does not exist."""
    missing = tmp_path / "nowhere"
    with pytest.raises(MrnnError) as error:
        read(name, missing)
    assert_instructions(error, name, missing)
    assert "no such data folder" in str(error.value)


@pytest.mark.parametrize("name", list(PHRASES))
def test_missing_data_dir_setting(name: str) -> None:
    """``dataset.data_dir`` left empty."""
    with pytest.raises(MrnnError, match="DATA_DIR") as error:
        read(name, "")
    assert_instructions(error, name, "")


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("flickr8k", "Flickr8k.token.txt"),
        ("flickr30k", "results_20130124.token"),
        ("coco", os.path.join("annotations", "captions_train2014.json")),
        ("iapr", "annotations_complete_eng"),
        ("folder", "captions.jsonl"),
    ],
)
def test_missing_captions_file(tmp_path: Path, name: str, missing: str) -> None:
    """An empty data folder: the error names the captions file the reader wants first."""
    with pytest.raises(MrnnError) as error:
        read(name, tmp_path)
    assert_instructions(error, name, tmp_path / missing)


def test_missing_coco_val_captions(tmp_path: Path) -> None:
    """``captions_train2014.json`` without ``captions_val2014.json``."""
    write_coco(str(tmp_path), karpathy=False)
    (tmp_path / "annotations" / "captions_val2014.json").unlink()
    with pytest.raises(MrnnError) as error:
        read("coco", tmp_path)
    assert_instructions(error, "coco", tmp_path / "annotations" / "captions_val2014.json")


def test_missing_flickr8k_split_list(tmp_path: Path) -> None:
    """Flickr8K's dev list removed (and no Karpathy JSON to fall back on)."""
    write_flickr8k(str(tmp_path))
    (tmp_path / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(MrnnError) as error:
        read("flickr8k", tmp_path)
    assert_instructions(error, "flickr8k", tmp_path / "Flickr_8k.devImages.txt")


def test_flickr8k_lists_missing_but_karpathy_json_present(tmp_path: Path) -> None:
    """Token file and Karpathy JSON without the lists: the JSON gives the split."""
    names = write_flickr8k(str(tmp_path), karpathy=True)
    (tmp_path / "Flickr_8k.devImages.txt").unlink()
    records, _ = read("flickr8k", tmp_path)
    check_records(records, names, in_folder(tmp_path / "Flicker8k_Dataset", all_names(names)))


@pytest.mark.parametrize(
    ("name", "key"),
    [("flickr30k", "val_list"), ("iapr", "test_list"), ("flickr8k", "train_list")],
)
def test_missing_user_split_list(tmp_path: Path, name: str, key: str) -> None:
    """A split list named in the config that does not exist."""
    {"flickr30k": write_flickr30k, "iapr": write_iapr, "flickr8k": write_flickr8k}[name](
        str(tmp_path)
    )
    lists = {"train_list": "train.txt", "test_list": "test.txt"}
    for split in SPLITS:
        write_list(tmp_path / f"{split}.txt", [])
    lists[key] = "nope.txt"
    with pytest.raises(MrnnError) as error:
        read(name, tmp_path, **lists)
    assert_instructions(error, name, tmp_path / "nope.txt")


@pytest.mark.parametrize("name", ["flickr30k", "coco"])
def test_missing_karpathy_json_named_in_config(tmp_path: Path, name: str) -> None:
    """``dataset.karpathy_json`` names a file that does not exist."""
    (write_flickr30k if name == "flickr30k" else write_coco)(str(tmp_path), karpathy=False)
    with pytest.raises(MrnnError) as error:
        read(name, tmp_path, karpathy_json="split.json")
    assert_instructions(error, name, tmp_path / "split.json")


def test_missing_captions_file_named_in_config(tmp_path: Path) -> None:
    """``dataset.captions_file`` that does not exist."""
    with pytest.raises(MrnnError) as error:
        read("folder", tmp_path, captions_file="mine.csv")
    assert_instructions(error, "folder", tmp_path / "mine.csv")


def test_load_dataset_missing_folder(tmp_path: Path) -> None:
    """Through ``load_dataset``: the missing folder is reported before any features file."""
    with pytest.raises(MrnnError) as error:
        load_dataset(
            config(tmp_path / "nowhere", "flickr8k", features=str(tmp_path / "f.npz")), ENCODER
        )
    assert_instructions(error, "flickr8k", tmp_path / "nowhere")


def test_features_encoder_needs_features_file(tmp_path: Path) -> None:
    """A real dataset with encoder ``features`` and no ``dataset.features``."""
    write_flickr8k(str(tmp_path))
    with pytest.raises(MrnnError, match="FEATURES") as error:
        load_dataset(config(tmp_path, "flickr8k"), {"name": "features"})
    assert "precomputed image features" in str(error.value)
    assert ".npz" in str(error.value)


# --- 4. precomputed features -------------------------------------------------------------


def _expected_rows(dataset, names: list[str], matrix: np.ndarray) -> None:
    row_of = {name: i for i, name in enumerate(names)}
    for split in dataset.splits.values():
        inputs = np.asarray(split.inputs)
        assert inputs.shape == (len(split.records), matrix.shape[1])
        for i, record in enumerate(split.records):
            np.testing.assert_array_equal(inputs[i], matrix[row_of[record.image_id]])


def test_features_npz_matched_by_file_name(tmp_path: Path) -> None:
    """``.npz`` rows in another order (plus unrelated rows) are matched by file name."""
    names = write_flickr8k(str(tmp_path))
    order = all_names(names)[::-1] + ["unrelated.jpg"]
    provenance = {"model": "vgg16", "layer": "fc7"}
    matrix = write_features(str(tmp_path / "f.npz"), order, provenance=provenance)
    dataset = load_dataset(config(tmp_path, "flickr8k", features=str(tmp_path / "f.npz")), ENCODER)
    assert set(dataset.splits) == set(SPLITS)
    _expected_rows(dataset, order, matrix)
    assert dataset.features["provenance"] == provenance
    assert dataset.features["rows"] == 10 and dataset.features["dim"] == 8


def test_features_npy_memory_mapped(tmp_path: Path) -> None:
    """``.npy`` + names ``.txt`` (paths, not bare names) is memory-mapped, not copied; the
    ``.json`` sidecar is its provenance."""
    names = write_flickr8k(str(tmp_path))
    order = [f"Flicker8k_Dataset/{n}" for n in sorted(all_names(names))]
    provenance = {"model": "resnet", "note": "sidecar"}
    matrix = write_features(str(tmp_path / "f.npy"), order, provenance=provenance)
    dataset = load_dataset(
        config(tmp_path, "flickr8k", features=str(tmp_path / "f.npy")), ENCODER, splits=["val"]
    )
    assert list(dataset.splits) == ["val"]
    inputs = dataset.splits["val"].inputs
    assert isinstance(inputs.base, np.memmap)
    row_of = {name.split("/")[1]: i for i, name in enumerate(order)}
    for i, record in enumerate(dataset.splits["val"].records):
        np.testing.assert_array_equal(np.asarray(inputs)[i], matrix[row_of[record.image_id]])
    assert dataset.features["provenance"] == provenance


def test_features_npz_with_byte_string_names(tmp_path: Path) -> None:
    """``filenames`` and ``provenance`` stored as byte strings (``S`` dtype, common in older
    feature dumps) are decoded, not matched as ``"b'...'"``."""
    names = write_flickr8k(str(tmp_path))
    order = all_names(names)
    matrix = np.arange(len(order) * 8, dtype=np.float32).reshape(len(order), 8)
    provenance = {"model": "googlenet"}
    np.savez(
        tmp_path / "f.npz",
        features=matrix,
        filenames=np.asarray([n.encode() for n in order]),
        provenance=np.asarray(json.dumps(provenance).encode()),
    )
    dataset = load_dataset(config(tmp_path, "flickr8k", features=str(tmp_path / "f.npz")), ENCODER)
    _expected_rows(dataset, order, matrix)
    assert dataset.features["provenance"] == provenance


def test_features_not_covering_a_split(tmp_path: Path) -> None:
    """Names missing from the features file: the count and the first missing names."""
    names = write_flickr8k(str(tmp_path))
    kept = [n for n in all_names(names) if n not in names["test"][1:]]
    write_features(str(tmp_path / "f.npz"), kept)
    with pytest.raises(MrnnError) as error:
        load_dataset(config(tmp_path, "flickr8k", features=str(tmp_path / "f.npz")), ENCODER)
    message = str(error.value)
    assert str(tmp_path / "f.npz") in message
    assert "2 of 3 images of split 'test'" in message
    assert all(name in message for name in names["test"][1:])
    assert names["test"][0] not in message


def test_features_nan_row(tmp_path: Path) -> None:
    """A NaN row is an error naming the row and its image."""
    names = write_flickr8k(str(tmp_path))
    order = all_names(names)
    matrix = write_features(str(tmp_path / "f.npy"), order)
    matrix[4, 3] = np.nan
    np.save(tmp_path / "f.npy", matrix)
    with pytest.raises(MrnnError, match=re.escape(f"row 4 ({order[4]})")) as error:
        load_dataset(config(tmp_path, "flickr8k", features=str(tmp_path / "f.npy")), ENCODER)
    assert str(tmp_path / "f.npy") in str(error.value)


def test_features_wrong_dim(tmp_path: Path) -> None:
    """Features of another width than ``encoder.features_dim``: the hint says what to set."""
    names = write_flickr8k(str(tmp_path))
    write_features(str(tmp_path / "f.npz"), all_names(names), dim=12)
    with pytest.raises(MrnnError, match="add encoder.features_dim=12") as error:
        load_dataset(config(tmp_path, "flickr8k", features=str(tmp_path / "f.npz")), ENCODER)
    assert "12-d features, the config expects 8" in str(error.value)


def test_summary_holds_skip_counts(tmp_path: Path) -> None:
    """``Dataset.summary()`` gives per-split sizes and what reading skipped."""
    names = write_flickr8k(str(tmp_path))
    token = tmp_path / "Flickr8k.token.txt"
    token.write_bytes(token.read_bytes() + f"{names['val'][0]}#5\t. . .\n".encode())
    write_features(str(tmp_path / "f.npz"), all_names(names))
    dataset = load_dataset(config(tmp_path, "flickr8k", features=str(tmp_path / "f.npz")), ENCODER)
    summary = dataset.summary()
    assert summary["splits"]["train"] == {"images": 3, "captions": 15}
    skipped = summary["skipped"]
    assert skipped["odd image keys in the token file"]["count"] == 1
    assert skipped["captions of images in no split (skipped)"]["count"] == 5
    assert skipped["captions without a word (skipped)"]["count"] == 1
    assert skipped["captions without a word (skipped)"]["examples"] == [f"{token}:51"]
    json.dumps(summary)  # goes into the run summary as is


# --- 5. vocabulary -----------------------------------------------------------------------


def test_vocabulary_from_training_captions_only(tmp_path: Path) -> None:
    """A word seen only in test captions maps to the unknown id."""
    names = write_flickr8k(str(tmp_path))
    token = tmp_path / "Flickr8k.token.txt"
    test_image = names["test"][0]
    text = token.read_text(encoding="utf-8").replace(
        f"{test_image}#1\t", f"{test_image}#1\tA zebra grazes beside "
    )
    token.write_text(text, encoding="utf-8")
    records, _ = read("flickr8k", tmp_path)
    assert "zebra" in by_id(records)[test_image].tokens[1]
    train = [r for r in records if r.split == "train"]
    vocab = build_vocab(train, min_count=1)
    assert "zebra" not in vocab and vocab.id_of("zebra") == UNK_ID
    assert "grazes" not in vocab
    for record in train:
        for tokens in record.tokens:
            assert all(vocab.id_of(t) != UNK_ID for t in tokens)
    ids = vocab.encode(by_id(records)[test_image].tokens[1], max_words=20)
    assert UNK_ID in ids
    assert vocab.id_of("dog") != UNK_ID  # a training word


def test_make_records_keeps_split_order() -> None:
    """Records come out train, val, test, in each split's list order."""
    captions = {n: [(f"a {n} here", f"x:{i}")] for i, n in enumerate("abcdef")}
    split_of = {"f": "test", "a": "val", "e": "train", "b": "train", "c": "test", "d": "val"}
    records = make_records(captions, split_of, lambda n: None, DataReport())
    assert [r.image_id for r in records] == ["e", "b", "a", "d", "f", "c"]
