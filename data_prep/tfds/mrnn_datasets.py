"""TFDS builders for the captioning datasets TFDS does not ship: Flickr8K, Flickr30K and
IAPR TC-12.

Each reads the files of the published release from TFDS's manual download directory with the
library's own reader (:mod:`mrnn_jax.data.flickr`, :mod:`mrnn_jax.data.iapr`), so the images,
captions and splits are exactly the ones training reads from the raw files. Examples are
``{"image", "image_id", "captions"}``; splits are ``train``, ``validation`` and ``test``.

The manual directory must be on the local file system (the readers use plain file access).
MS COCO needs no builder here: TFDS's own ``coco_captions`` holds COCO 2014 with Karpathy's
splits.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator

import tensorflow_datasets as tfds
from etils import epath

from mrnn_jax.data.download import INSTRUCTIONS
from mrnn_jax.data.flickr import read_flickr8k, read_flickr30k
from mrnn_jax.data.iapr import read_iapr
from mrnn_jax.data.records import DataReport, ImageRecord
from mrnn_jax.errors import MrnnError

# The library's split names -> TFDS's.
TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}
MISSING_EXAMPLES = 5


def reader_config(data_dir: str, **overrides: object) -> dict:
    """The dataset config the library's readers take, for the files in ``data_dir``."""
    config = {
        "data_dir": data_dir,
        "seed": 0,
        "karpathy_json": "",
        "train_list": "",
        "val_list": "",
        "test_list": "",
        "merge_restval": True,
    }
    config.update(overrides)
    return config


class _CaptionsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One image and its reference captions per example, read by a library reader."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DATASET = ""  # the library's name of the dataset (a key of INSTRUCTIONS)
    HOMEPAGE = ""
    CITATION = ""

    @abc.abstractmethod
    def _read(self, manual_dir: epath.Path, report: DataReport) -> list[ImageRecord]:
        """The dataset's records, read from the files in ``manual_dir``."""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(self.__doc__ or "").strip(),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(),
                    "image_id": tfds.features.Text(),
                    "captions": tfds.features.Sequence(tfds.features.Text()),
                }
            ),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        report = DataReport()
        records = self._read(epath.Path(dl_manager.manual_dir), report)
        report.log(self.name)
        _check_images(records, self.DATASET)
        by_split: dict[str, list[ImageRecord]] = {}
        for record in records:
            by_split.setdefault(TFDS_SPLITS.get(record.split, record.split), []).append(record)
        return {split: self._generate_examples(recs) for split, recs in by_split.items()}

    def _generate_examples(self, records: list[ImageRecord]) -> Iterator[tuple[str, dict]]:
        for record in records:
            yield (
                record.image_id,
                {
                    "image": record.file_path,
                    "image_id": record.image_id,
                    "captions": list(record.captions),
                },
            )


def _check_images(records: list[ImageRecord], dataset: str) -> None:
    """Raises an error naming the missing images, if any record's image is not on disk."""
    missing = [
        record.file_path or record.image_id
        for record in records
        if record.file_path is None or not epath.Path(record.file_path).exists()
    ]
    if missing:
        examples = ", ".join(missing[:MISSING_EXAMPLES])
        raise MrnnError(
            f"{dataset}: {len(missing)} of {len(records)} images are missing (e.g. {examples}); "
            f"the TFDS dataset needs every image.\n{INSTRUCTIONS[dataset]}"
        )


class Flickr8kCaptions(_CaptionsBuilder):
    """Flickr8K: 8,091 Flickr images with 5 captions each; the official 6,000 / 1,000 / 1,000
    split."""

    DATASET = "flickr8k"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS["flickr8k"]
    HOMEPAGE = "https://hockenmaier.cs.illinois.edu/8k-pictures.html"
    CITATION = """\
@article{hodosh2013framing,
  title={Framing Image Description as a Ranking Task: Data, Models and Evaluation Metrics},
  author={Hodosh, Micah and Young, Peter and Hockenmaier, Julia},
  journal={Journal of Artificial Intelligence Research},
  volume={47},
  pages={853--899},
  year={2013}
}"""

    def _read(self, manual_dir: epath.Path, report: DataReport) -> list[ImageRecord]:
        return read_flickr8k(reader_config(str(manual_dir)), report)


class Flickr30kCaptions(_CaptionsBuilder):
    """Flickr30K: 31,783 Flickr images with 5 captions each; Karpathy's 29,000 / 1,014 / 1,000
    split (from dataset_flickr30k.json)."""

    DATASET = "flickr30k"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS["flickr30k"]
    HOMEPAGE = "https://shannon.cs.illinois.edu/DenotationGraph/"
    CITATION = """\
@article{young2014image,
  title={From image descriptions to visual denotations: New similarity metrics for semantic
         inference over event descriptions},
  author={Young, Peter and Lai, Alice and Hodosh, Micah and Hockenmaier, Julia},
  journal={Transactions of the Association for Computational Linguistics},
  volume={2},
  pages={67--78},
  year={2014}
}"""

    def _read(self, manual_dir: epath.Path, report: DataReport) -> list[ImageRecord]:
        return read_flickr30k(reader_config(str(manual_dir)), report)


class IaprTc12Captions(_CaptionsBuilder):
    """IAPR TC-12: 20,000 photographs, each description split into sentences on ";".

    The split comes from ``train.txt``, ``test.txt`` and optionally ``val.txt`` in the manual
    directory (one image path per line, as in <IMAGE>, e.g. images/01/1000.jpg); without them
    it is a deterministic split of the m-RNN papers' sizes (results are then not comparable
    with published ones).
    """

    DATASET = "iapr"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS["iapr"]
    HOMEPAGE = "https://www.imageclef.org/photodata"
    CITATION = """\
@inproceedings{grubinger2006iapr,
  title={The IAPR TC-12 Benchmark: A New Evaluation Resource for Visual Information Systems},
  author={Grubinger, Michael and Clough, Paul and M{\\"u}ller, Henning and Deselaers, Thomas},
  booktitle={International Workshop OntoImage},
  pages={13--23},
  year={2006}
}"""

    def _read(self, manual_dir: epath.Path, report: DataReport) -> list[ImageRecord]:
        lists = {
            split: str(manual_dir / f"{split}.txt")
            for split in ("train", "val", "test")
            if (manual_dir / f"{split}.txt").exists()
        }
        if lists and not {"train", "test"} <= set(lists):
            found = ", ".join(f"{split}.txt" for split in lists)
            raise MrnnError(
                f"{manual_dir}: holds {found}; give both train.txt and test.txt (val.txt is "
                "optional), or none of them for a deterministic split"
            )
        overrides = {f"{split}_list": path for split, path in lists.items()}
        return read_iapr(reader_config(str(manual_dir), **overrides), report)


BUILDERS: dict[str, type[_CaptionsBuilder]] = {
    "flickr8k": Flickr8kCaptions,
    "flickr30k": Flickr30kCaptions,
    "iapr": IaprTc12Captions,
}
