"""Feature extraction (mrnn extract-features): the features format training reads, with
provenance; bad images skipped and counted or an error; killed and restarted, the same
arrays and names as an uninterrupted run, and never a half-written output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from mrnn_jax import configs
from mrnn_jax.data import load_dataset
from mrnn_jax.data.features import load_features
from tests import dataset_fixtures as fx
from tests.conftest import REPO, run_mrnn, subprocess_env
from tests.test_pretrained import random_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """Random ResNet-50 weights in the converted format."""
    path = str(tmp_path_factory.mktemp("weights") / "resnet50.msgpack")
    random_weights(path)
    return path


def _bad_images(folder: str) -> None:
    """A truncated JPEG, a zero-byte file and a CMYK, a 16-bit and an RGBA image."""
    os.makedirs(folder, exist_ok=True)
    fx.write_image(os.path.join(folder, "good.jpg"), 1, size=48)
    with open(os.path.join(folder, "good.jpg"), "rb") as f:
        data = f.read()
    with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 3])
    open(os.path.join(folder, "empty.jpg"), "wb").close()
    Image.new("CMYK", (40, 30), (10, 200, 30, 0)).save(os.path.join(folder, "cmyk.jpg"))
    Image.fromarray(np.full((20, 50), 40000, np.uint16)).save(os.path.join(folder, "deep.png"))
    Image.new("RGBA", (30, 30), (255, 0, 0, 128)).save(os.path.join(folder, "alpha.png"))


@pytest.mark.slow
def test_extract_a_folder_skipping_bad_images(weights, tmp_path):
    folder = str(tmp_path / "images")
    _bad_images(folder)
    out = str(tmp_path / "features.npz")
    result = run_mrnn(
        "extract-features", "--encoder", "resnet50", "--weights", weights,
        "--images", folder, "--out", out, "--batch-size", "4", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 images, 2 skipped" in result.stdout and "images/s" in result.stdout
    assert "truncated.jpg" in result.stderr and "empty.jpg" in result.stderr
    loaded = load_features(out)
    assert sorted(loaded.names) == ["alpha.png", "cmyk.jpg", "deep.png", "good.jpg"]
    assert loaded.features.shape == (4, 2048) and loaded.features.dtype == np.float16
    assert loaded.provenance["encoder"] == "resnet50"
    assert loaded.provenance["feature"] == "pooled"
    assert loaded.provenance["weights"]["file_name"] == "x.pth"
    assert loaded.provenance["preprocessing"]["channels"] == "RGB"
    assert loaded.provenance["skipped_images"] == 2
    assert not os.path.exists(out + ".partial")

    result = run_mrnn(
        "extract-features", "--encoder", "resnet50", "--weights", weights, "--images", folder,
        "--out", str(tmp_path / "strict.npz"), "--on-bad-image", "error", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "empty.jpg: empty file" in result.stderr or "truncated.jpg" in result.stderr
    assert not os.path.exists(tmp_path / "strict.npz")


@pytest.mark.slow
def test_extract_a_dataset_then_train_on_the_features(weights, tmp_path):
    data_dir = str(tmp_path / "flickr8k")
    names = fx.write_flickr8k(data_dir, per_split=3, images=True)
    out = str(tmp_path / "resnet.npy")
    result = run_mrnn(
        "extract-features", "--encoder", "resnet50", "--weights", weights, "--dataset",
        "flickr8k", "--data-dir", data_dir, "--out", out, "--dtype", "float32", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(out[:-4] + ".txt") and os.path.isfile(out[:-4] + ".json")
    config = configs.load_config(
        "flickr8k",
        [f"dataset.data_dir={data_dir}", f"dataset.features={out}", "encoder.features_dim=2048"],
    )
    dataset = load_dataset(config.dataset, config.encoder)
    assert dataset.features["provenance"]["encoder"] == "resnet50"
    assert [r.image_id for r in dataset.splits["test"].records] == names["test"]
    assert dataset.splits["test"].inputs.shape == (3, 2048)


RESUMABLE = """
import sys
from mrnn_jax.encoders import extract_features
paths = sys.argv[3:]
names = [p.rsplit("/", 1)[1] for p in paths]
config = {"name": "resnet50", "weights": sys.argv[1]}
extract_features.extract_features(config, names, paths, sys.argv[2], batch_size=2, progress=False)
"""


def _extract(
    weights: str, out: str, paths: list[str], env: dict[str, str] | None = None
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RESUMABLE, weights, out, *paths],
        env=env or subprocess_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_killed_extraction_resumes_to_the_uninterrupted_result(
    weights, tmp_path, private_compilation_cache
):
    env = private_compilation_cache
    folder = tmp_path / "many"
    paths = []
    for i in range(40):  # 16 images a chunk (batch 2 x 8): three chunks
        paths.append(str(folder / f"{i:03d}.jpg"))
        fx.write_image(paths[-1], i, size=40)
    reference = str(tmp_path / "reference.npz")
    assert _extract(weights, reference, paths, env).wait(timeout=600) == 0

    out = str(tmp_path / "resumed.npz")
    process = _extract(weights, out, paths, env)
    first_chunk = os.path.join(out + ".partial", "chunk_000000.npz")
    deadline = time.time() + 300
    while not os.path.isfile(first_chunk) and process.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    assert process.poll() is None, "finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(out)  # nothing half-written
    with open(os.path.join(out + ".partial", "job.json"), encoding="utf-8") as f:
        assert json.load(f)["batch_size"] == 2
    assert _extract(weights, out, paths, env).wait(timeout=600) == 0
    a, b = load_features(reference), load_features(out)
    assert a.names == b.names == [os.path.basename(p) for p in paths]
    np.testing.assert_array_equal(a.features, b.features)
    assert not os.path.exists(out + ".partial")
