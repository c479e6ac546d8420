"""The TFDS builders of data_prep/tfds on small datasets in the published formats."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import shutil  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

tfds = pytest.importorskip("tensorflow_datasets")

from data_prep.tfds import build  # noqa: E402
from data_prep.tfds.mrnn_datasets import (  # noqa: E402
    BUILDERS,
    Flickr8kCaptions,
    Flickr30kCaptions,
    IaprTc12Captions,
)
from mrnn_jax.data.download import INSTRUCTIONS  # noqa: E402
from mrnn_jax.errors import MrnnError  # noqa: E402
from tests.dataset_fixtures import (  # noqa: E402
    all_names,
    captions_for,
    write_flickr8k,
    write_flickr30k,
    write_iapr,
    write_image,
)

PER_SPLIT = 3
SPLITS = {"train": PER_SPLIT, "validation": PER_SPLIT, "test": PER_SPLIT}
TFDS_SPLIT = {"train": "train", "val": "validation", "test": "test"}


def dummy_flickr8k(root: str) -> dict[str, list[str]]:
    """Flickr8K's release with 32x32 JPEGs in ``Flicker8k_Dataset/``."""
    return write_flickr8k(root, per_split=PER_SPLIT, images=True)


def dummy_flickr30k(root: str) -> dict[str, list[str]]:
    """Flickr30K's token file, Karpathy JSON and 32x32 JPEGs in ``flickr30k-images/``."""
    names = write_flickr30k(root, per_split=PER_SPLIT)
    for i, name in enumerate(all_names(names)):
        write_image(os.path.join(root, "flickr30k-images", name), i)
    return names


def dummy_iapr(root: str, lists: bool = True) -> dict[str, list[str]]:
    """IAPR TC-12's annotations, split lists and 32x32 JPEGs under ``images/``."""
    names = write_iapr(root, per_split=PER_SPLIT, lists=lists)
    for i, name in enumerate(all_names(names)):
        write_image(os.path.join(root, name), i)
    return names


class _GeneratedDummyData:
    """Writes the dummy data into a fresh folder before the TFDS test case looks for it."""

    WRITE = staticmethod(dummy_flickr8k)

    @classmethod
    def setUpClass(cls) -> None:
        cls.dummy_root = tempfile.mkdtemp(prefix=f"tfds_{cls.DATASET_CLASS.name}_")
        cls.WRITE(cls.dummy_root)
        cls.EXAMPLE_DIR = cls.dummy_root
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        super().tearDownClass()
        shutil.rmtree(cls.dummy_root, ignore_errors=True)


class Flickr8kCaptionsTest(_GeneratedDummyData, tfds.testing.DatasetBuilderTestCase):
    """TFDS's checks of the Flickr8K builder."""

    DATASET_CLASS = Flickr8kCaptions
    WRITE = staticmethod(dummy_flickr8k)
    SPLITS = SPLITS


class Flickr30kCaptionsTest(_GeneratedDummyData, tfds.testing.DatasetBuilderTestCase):
    """TFDS's checks of the Flickr30K builder."""

    DATASET_CLASS = Flickr30kCaptions
    WRITE = staticmethod(dummy_flickr30k)
    SPLITS = SPLITS


class IaprTc12CaptionsTest(_GeneratedDummyData, tfds.testing.DatasetBuilderTestCase):
    """TFDS's checks of the IAPR TC-12 builder."""

    DATASET_CLASS = IaprTc12Captions
    WRITE = staticmethod(dummy_iapr)
    SPLITS = SPLITS


def prepare(builder_class: type, manual_dir: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """``builder_class`` prepared from ``manual_dir`` into ``data_dir``."""
    builder = builder_class(data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP
        )
    )
    return builder


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, dict]:
    """``{image_id: example}`` of one split, as NumPy."""
    examples = tfds.as_numpy(builder.as_dataset(split=split))
    return {ex["image_id"].decode(): ex for ex in examples}


@pytest.mark.parametrize(
    "dataset, write, images",
    [
        ("flickr8k", dummy_flickr8k, "Flicker8k_Dataset"),
        ("flickr30k", dummy_flickr30k, "flickr30k-images"),
        ("iapr", dummy_iapr, ""),
    ],
)
def test_examples_hold_the_files_images_and_captions(tmp_path, dataset, write, images):
    """Each split holds its listed images, their bytes unchanged, and their raw captions."""
    manual = str(tmp_path / "manual")
    names = write(manual)
    builder = prepare(BUILDERS[dataset], manual, str(tmp_path / "tfds"))
    index = {name: i for i, name in enumerate(all_names(names))}
    for split, split_names in names.items():
        examples = read_split(builder, TFDS_SPLIT[split])
        assert sorted(examples) == sorted(split_names)
        for name, example in examples.items():
            expected = captions_for(index[name])
            if dataset == "iapr":  # sentences of the description, split on ";"
                expected = [caption.rstrip(" .") for caption in expected]
            assert [c.decode() for c in example["captions"]] == expected
            assert example["image"].shape == (32, 32, 3)
    raw = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()}).take(1)
    [example] = list(tfds.as_numpy(raw))
    with open(os.path.join(manual, images, example["image_id"].decode()), "rb") as f:
        assert example["image"] == f.read()


def test_iapr_without_lists_gets_a_deterministic_split(tmp_path):
    """Without train.txt / test.txt every image is kept, in a split of the papers' shares."""
    manual = str(tmp_path / "manual")
    names = dummy_iapr(manual, lists=False)
    builder = prepare(IaprTc12Captions, manual, str(tmp_path / "tfds"))
    counts = {name: split.num_examples for name, split in builder.info.splits.items()}
    assert counts == {"train": 7, "validation": 1, "test": 1}
    seen = set()
    for split in counts:
        seen.update(read_split(builder, split))
    assert seen == set(all_names(names))


def test_iapr_with_only_one_list_is_an_error(tmp_path):
    """A train.txt without test.txt is refused rather than silently ignored."""
    manual = tmp_path / "manual"
    dummy_iapr(str(manual))
    os.remove(manual / "test.txt")
    with pytest.raises(MrnnError, match="both train.txt and test.txt"):
        prepare(IaprTc12Captions, str(manual), str(tmp_path / "tfds"))


@pytest.mark.parametrize("dataset", sorted(BUILDERS))
def test_manual_download_instructions_are_the_librarys(dataset):
    """The builders tell users what the library's missing-file errors tell them."""
    shown = BUILDERS[dataset].MANUAL_DOWNLOAD_INSTRUCTIONS
    assert shown == INSTRUCTIONS[dataset]


def test_missing_manual_dir_says_where_to_get_the_data(tmp_path):
    """A manual directory that does not exist: TFDS's error, with the download instructions."""
    with pytest.raises(AssertionError, match="does not exist") as error:
        prepare(Flickr8kCaptions, str(tmp_path / "missing"), str(tmp_path / "tfds"))
    assert INSTRUCTIONS["flickr8k"] in str(error.value)


def test_manual_dir_without_the_files_says_where_to_get_the_data(tmp_path):
    """A manual directory without the token file: the reader's error, naming the file."""
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "unrelated.txt").write_text("not flickr\n")
    with pytest.raises(MrnnError, match="Flickr8k.token.txt") as error:
        prepare(Flickr8kCaptions, str(manual), str(tmp_path / "tfds"))
    assert INSTRUCTIONS["flickr8k"] in str(error.value)


def test_missing_images_are_an_error(tmp_path):
    """An image of a split that is not on disk stops the build, naming it."""
    manual = tmp_path / "manual"
    names = dummy_flickr8k(str(manual))
    gone = names["test"][1]
    os.remove(manual / "Flicker8k_Dataset" / gone)
    with pytest.raises(MrnnError, match=f"1 of 9 images are missing.*{gone}"):
        prepare(Flickr8kCaptions, str(manual), str(tmp_path / "tfds"))


def test_build_command_prepares_a_loadable_dataset(tmp_path, capsys):
    """``python -m data_prep.tfds.build`` writes a dataset ``tfds.load`` reads back."""
    manual, out = str(tmp_path / "manual"), str(tmp_path / "tfds")
    dummy_flickr30k(manual)
    assert build.main(["flickr30k", "--manual-dir", manual, "--data-dir", out]) == 0
    assert "flickr30k_captions 1.0.0" in capsys.readouterr().out
    loaded = tfds.load("flickr30k_captions", data_dir=out, split="validation")
    assert len(list(loaded)) == PER_SPLIT


def test_build_command_reports_a_missing_manual_dir(tmp_path, capsys):
    """A wrong ``--manual-dir`` is a one-line error and status 2, with the instructions."""
    status = build.main(
        ["iapr", "--manual-dir", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path)]
    )
    assert status == 2
    assert INSTRUCTIONS["iapr"] in capsys.readouterr().err


def test_build_command_help(capsys):
    """``--help`` names the datasets and the two folders."""
    with pytest.raises(SystemExit) as exit_info:
        build.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("flickr8k", "flickr30k", "iapr", "--manual-dir", "--data-dir"):
        assert word in text
