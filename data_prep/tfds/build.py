"""Prepares a TFDS dataset (Flickr8K, Flickr30K or IAPR TC-12) from its manually downloaded
files.

    python -m data_prep.tfds.build flickr8k --manual-dir ~/data/flickr8k --data-dir ~/tfds

Afterwards ``tfds.load("flickr8k_captions", data_dir=...)`` reads it. MS COCO needs no
preparation here: ``tfds.load("coco_captions")`` downloads COCO 2014 with Karpathy's splits.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

DATASETS = ("flickr8k", "flickr30k", "iapr")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line arguments (``--help`` lists them)."""
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.tfds.build",
        description=(
            "Prepare a TFDS dataset from its manually downloaded files (see data_prep/README.md)."
            " COCO needs no preparation: use TFDS's own coco_captions."
        ),
    )
    parser.add_argument("dataset", choices=DATASETS, help="which dataset to prepare")
    parser.add_argument(
        "--manual-dir",
        required=True,
        help="the folder holding the downloaded files, laid out as the dataset's instructions say",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="where TFDS writes the prepared dataset (default: TFDS's, ~/tensorflow_datasets)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Prepares the dataset named in ``argv``; returns the exit status."""
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow_datasets as tfds

    from data_prep.tfds.mrnn_datasets import BUILDERS
    from mrnn_jax.errors import MrnnError

    data_dir = os.path.expanduser(args.data_dir) if args.data_dir else None
    manual_dir = os.path.abspath(os.path.expanduser(args.manual_dir))
    builder = BUILDERS[args.dataset](data_dir=data_dir)
    config = tfds.download.DownloadConfig(
        manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP
    )
    try:
        builder.download_and_prepare(download_config=config)
    except (MrnnError, AssertionError) as error:  # missing files; TFDS: missing manual dir
        print(f"data_prep.tfds.build: error: {error}", file=sys.stderr)
        return 2
    splits = ", ".join(
        f"{name} {split.num_examples}" for name, split in sorted(builder.info.splits.items())
    )
    print(f"{builder.name} {builder.version} in {builder.data_dir}: {splits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
