"""Datasets: one record type for every source, and the batching that feeds training."""

from __future__ import annotations

from collections.abc import Mapping

from mrnn_jax.data.pipeline import CaptionTable, SplitData, eval_batches, train_batch
from mrnn_jax.data.records import ImageRecord
from mrnn_jax.errors import MrnnError

DATASETS = ("shapes",)


def load_dataset(dataset_config: Mapping, encoder_config: Mapping) -> dict[str, SplitData]:
    """Every split of the dataset named in ``dataset_config``, keyed by split name."""
    name = dataset_config["name"]
    if name == "shapes":
        from mrnn_jax.data import shapes

        image_size = int(encoder_config.get("image_size", 64))
        splits = shapes.load_shapes(
            dict(dataset_config["shapes_sizes"]), seed=dataset_config["seed"], image_size=image_size
        )
        return {
            split: SplitData(records=data.records, inputs=data.images, scenes=data.scenes)
            for split, data in splits.items()
        }
    raise MrnnError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def load_split(
    dataset_config: Mapping, encoder_config: Mapping, split: str, max_images: int | None = None
) -> SplitData:
    """One split of a dataset, optionally only its first ``max_images`` images."""
    splits = load_dataset(dataset_config, encoder_config)
    if split not in splits:
        raise MrnnError(
            f"dataset {dataset_config['name']!r} has no split {split!r}: {sorted(splits)}"
        )
    data = splits[split]
    if max_images is not None:
        data = SplitData(
            records=data.records[:max_images],
            inputs=data.inputs[:max_images],
            scenes=None if data.scenes is None else data.scenes[:max_images],
        )
    return data


__all__ = [
    "CaptionTable",
    "ImageRecord",
    "SplitData",
    "eval_batches",
    "load_dataset",
    "load_split",
    "train_batch",
]
