"""Datasets: one record type for every source, and the batching that feeds training.

``load_dataset`` reads a dataset named in the config (its files in their published formats),
attaches each split's image inputs (precomputed features, or pixels for encoders that read
images), and reports what it skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from mrnn_jax.configs.choices import DATASETS
from mrnn_jax.data import coco, flickr, folder, iapr, shapes
from mrnn_jax.data.download import FEATURES, instructions
from mrnn_jax.data.features import RowSubset, align, load_features
from mrnn_jax.data.image_files import ImageFiles, present_files
from mrnn_jax.data.pipeline import CaptionTable, SplitData, eval_batches, train_batch
from mrnn_jax.data.records import DataReport, ImageRecord
from mrnn_jax.encoders import takes_pixels
from mrnn_jax.errors import MrnnError

log = logging.getLogger("mrnn_jax")


@dataclasses.dataclass
class Dataset:
    """Every split of a dataset, what reading it skipped, and where its features came from."""

    name: str
    splits: dict[str, SplitData]
    report: DataReport
    features: dict | None = None

    def summary(self) -> dict:
        """Images and captions per split, and the skip counts (for the run summary)."""
        return {
            "dataset": self.name,
            "splits": {
                name: {
                    "images": len(split.records),
                    "captions": sum(len(r.captions) for r in split.records),
                }
                for name, split in self.splits.items()
            },
            "skipped": self.report.summary(),
            "features": self.features,
        }


#: dataset name -> reader of its published format (every name of
#: :data:`~mrnn_jax.configs.choices.DATASETS` but the built-in shapes).
READERS: dict[str, Callable[[Mapping, DataReport], list[ImageRecord]]] = {
    "flickr8k": flickr.read_flickr8k,
    "flickr30k": flickr.read_flickr30k,
    "coco": coco.read_coco,
    "iapr": iapr.read_iapr,
    "folder": folder.read_folder,
}


def read_records(dataset_config: Mapping, report: DataReport) -> list[ImageRecord]:
    """The records of a real dataset, read from ``dataset.data_dir`` in its own format."""
    name = dataset_config["name"]
    data_dir = dataset_config.get("data_dir", "")
    if not data_dir:
        raise MrnnError(
            f"dataset {name!r} needs its folder: set DATA_DIR= (make) or --data-dir (mrnn).\n"
            f"{instructions(name)}"
        )
    if not os.path.isdir(data_dir):
        raise MrnnError(
            f"{data_dir}: no such data folder for dataset {name!r}.\n{instructions(name)}"
        )
    return READERS[name](dataset_config, report)


def _shapes(dataset_config: Mapping, encoder_config: Mapping) -> Dataset:
    image_size = int(encoder_config.get("image_size", 64))
    splits = shapes.load_shapes(
        dict(dataset_config["shapes_sizes"]), seed=dataset_config["seed"], image_size=image_size
    )
    return Dataset(
        name="shapes",
        splits={
            split: SplitData(records=data.records, inputs=data.images, scenes=data.scenes)
            for split, data in splits.items()
        },
        report=DataReport(),
    )


def _image_files(
    records: list[ImageRecord], encoder_config: Mapping, on_bad_image: str, report: DataReport
):
    size = int(encoder_config.get("image_size") or 224)
    return ImageFiles(
        paths=[r.file_path for r in records],
        size=size,
        resize=encoder_config.get("resize", "center_crop"),
        crop_fraction=float(encoder_config.get("crop_fraction") or 1.0),
        on_bad_image=on_bad_image,
        report=report,
    )


def load_dataset(
    dataset_config: Mapping, encoder_config: Mapping, splits: Iterable[str] | None = None
) -> Dataset:
    """The dataset named in ``dataset_config``: its splits (all, or those in ``splits``) with
    their image inputs, and the report of what reading skipped (logged as warnings).

    With ``dataset.features`` set, inputs are rows of that (memory-mapped) file matched to the
    images by file name, and the images need not be on disk. Without it, an encoder that
    reads pixels gets the images from disk, decoded batch by batch (missing or empty files
    are dropped and counted, or an error, as ``dataset.on_bad_image`` says); the
    ``features`` encoder needs the file.
    """
    name = dataset_config["name"]
    if name == "shapes":
        return _shapes(dataset_config, encoder_config)
    if name not in DATASETS:
        raise MrnnError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    features_path = dataset_config.get("features", "")
    if not features_path and not takes_pixels(encoder_config):
        raise MrnnError(
            f"dataset {name!r} with encoder 'features' needs precomputed image features: set "
            f"FEATURES= (make) or --features (mrnn).\n{FEATURES}\n(Or compute them with mrnn "
            f"extract-features; or run a pretrained CNN on the images in the model: "
            f"make train ... ENCODER=vgg16|resnet50|alexnet WEIGHTS=FILE, i.e. "
            f"encoder.name=... encoder.weights=FILE, FILE from data_prep/convert_weights.py.)"
        )
    report = DataReport()
    records = read_records(dataset_config, report)
    wanted = set(splits) if splits is not None else None
    by_split: dict[str, list[ImageRecord]] = {}
    for record in records:
        if wanted is None or record.split in wanted:
            by_split.setdefault(record.split, []).append(record)
    for split in sorted(wanted or ()):
        if split not in by_split:
            found = sorted({r.split for r in records})
            raise MrnnError(f"dataset {name!r} has no images in split {split!r} (has {found})")
    info = None
    if features_path and takes_pixels(encoder_config):
        raise MrnnError(
            f"encoder {encoder_config['name']!r} reads the images; precomputed features "
            f"({features_path}) are for encoder.name=features"
        )
    if features_path:
        feature_file = load_features(features_path, dataset_config.get("features_names") or None)
        expected = int(encoder_config.get("features_dim", feature_file.dim))
        if not takes_pixels(encoder_config) and feature_file.dim != expected:
            raise MrnnError(
                f"{features_path}: {feature_file.dim}-d features, the config expects {expected}; "
                f"add encoder.features_dim={feature_file.dim}"
            )
        info = feature_file.info()
        split_data = {
            split: SplitData(
                records=rs,
                inputs=RowSubset(feature_file.features, align(rs, feature_file, split)),
            )
            for split, rs in by_split.items()
        }
    else:
        on_bad = dataset_config.get("on_bad_image", "skip")
        split_data = {}
        for split, rs in by_split.items():
            rs = present_files(rs, on_bad, report, split)
            split_data[split] = SplitData(
                records=rs, inputs=_image_files(rs, encoder_config, on_bad, report)
            )
    report.log(name, dataset_config.get("data_dir", ""))
    return Dataset(name=name, splits=split_data, report=report, features=info)


def load_split(
    dataset_config: Mapping, encoder_config: Mapping, split: str, max_images: int | None = None
) -> SplitData:
    """One split of a dataset, optionally only its first ``max_images`` images."""
    dataset = load_dataset(
        dataset_config, encoder_config, None if dataset_config["name"] == "shapes" else [split]
    )
    if split not in dataset.splits:
        raise MrnnError(
            f"dataset {dataset_config['name']!r} has no split {split!r}: {sorted(dataset.splits)}"
        )
    data = dataset.splits[split]
    if max_images is not None:
        data = SplitData(
            records=data.records[:max_images],
            inputs=np.asarray(data.inputs[:max_images]),
            scenes=None if data.scenes is None else data.scenes[:max_images],
        )
    return data


__all__ = [
    "DATASETS",
    "CaptionTable",
    "DataReport",
    "Dataset",
    "ImageRecord",
    "SplitData",
    "eval_batches",
    "load_dataset",
    "load_split",
    "read_records",
    "train_batch",
]
