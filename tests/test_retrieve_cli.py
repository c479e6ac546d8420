"""``mrnn retrieve`` / experiments/run_retrieval.py, ``mrnn search``, and features files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mrnn_jax.data import shapes
from mrnn_jax.data.features import load_features
from mrnn_jax.errors import MrnnError
from tests.conftest import REPO, run_mrnn, subprocess_env


def test_retrieve_writes_metrics_table_and_page(tiny_run, tmp_path):
    out, path = str(tmp_path / "out"), str(tmp_path / "metrics.json")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "experiments", "run_retrieval.py"),
            "--checkpoint",
            tiny_run,
            "--split",
            "test",
            "--json",
            path,
            "--out",
            out,
            "--no-progress",
            "--sentence-tile",
            "8",
            "--image-tile",
            "4",
            "--html-queries",
            "3",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert data["num_images"] == 16 and data["num_sentences"] == 80
    for direction in ("image retrieval", "sentence retrieval", "sentence retrieval (raw)"):
        values = data["metrics"][direction]
        assert set(values) == {"R@1", "R@5", "R@10", "median rank", "mean rank"}
        assert 0 <= values["R@1"] <= values["R@5"] <= values["R@10"] <= 100
    assert "| sentence retrieval, P(S\\|I) / P(S) |" in result.stdout
    with open(os.path.join(out, "retrieval_test.html"), encoding="utf-8") as f:
        page = f.read()
    assert page.count('class="query sentence-query"') == 3
    assert page.count('class="query image-query"') == 3


def test_retrieve_coco_folds_and_training_prior(tiny_run):
    result = run_mrnn(
        "retrieve",
        "--checkpoint",
        tiny_run,
        "--split",
        "val",
        "--coco-1k",
        "--prior-images",
        "10",
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "COCO 1K folds" in result.stdout and "P(S) over 10 training images" in result.stdout


def test_search_ranks_a_folder_and_skips_unreadable_files(tiny_run, tmp_path):
    split = shapes.make_split("test", 4, seed=2)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i, image in enumerate(split.images):
        Image.fromarray(image).save(folder / ("sub" if i % 2 else ".") / f"scene{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    result = run_mrnn(
        "search",
        "--checkpoint",
        tiny_run,
        "--images",
        str(folder),
        "--top",
        "3",
        split.records[0].captions[0],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    scores = [float(line.split("\t")[0]) for line in lines]
    assert scores == sorted(scores, reverse=True)
    assert all(line.split("\t")[1].endswith(".png") for line in lines)
    assert "skipped 1 unreadable image(s)" in result.stderr


def test_search_with_features_on_a_pixel_checkpoint_is_refused(tiny_run, tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, features=np.zeros((2, 4), np.float32), filenames=np.array(["a", "b"]))
    result = run_mrnn("search", "--checkpoint", tiny_run, "--features", str(path), "a circle")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "reads images; search image files, not a features file" in result.stderr


def test_features_files(tmp_path):
    features = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.savez(tmp_path / "f.npz", features=features, filenames=np.array(["a.jpg", "b.jpg", "c.jpg"]))
    loaded = load_features(str(tmp_path / "f.npz"))
    assert loaded.names == ["a.jpg", "b.jpg", "c.jpg"] and loaded.features.dtype == np.float32
    np.testing.assert_array_equal(loaded.features, features)

    np.save(tmp_path / "g.npy", features.astype(np.float16))
    (tmp_path / "g.txt").write_text("\ufeffa.jpg\nb.jpg\r\nc.jpg\n", encoding="utf-8")
    mapped = load_features(str(tmp_path / "g.npy"))
    assert mapped.names == ["a.jpg", "b.jpg", "c.jpg"]
    assert isinstance(mapped.features, np.memmap) and mapped.features.dtype == np.float16

    bad = features.copy()
    bad[1, 2] = np.nan
    np.savez(tmp_path / "nan.npz", features=bad, filenames=np.array(["a", "b", "c"]))
    with pytest.raises(MrnnError, match=r"nan.npz: feature rows with NaN or inf.*: row 1 \(b\)"):
        load_features(str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "short.npz", features=features, filenames=np.array(["a", "b"]))
    with pytest.raises(MrnnError, match="3 feature rows but 2 file names"):
        load_features(str(tmp_path / "short.npz"))
    np.savez(tmp_path / "keys.npz", feats=features)
    with pytest.raises(MrnnError, match="missing arrays"):
        load_features(str(tmp_path / "keys.npz"))
    with pytest.raises(MrnnError, match="no such features file"):
        load_features(str(tmp_path / "absent.npz"))
