"""Each paper row's command (experiments/run_paper_row.py) dry-runs on a real-format fixture:
train two steps with the row's paper-sized config, evaluate, retrieve, compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import dataset_fixtures as fx
from tests.conftest import NO_METEOR, REPO, subprocess_env

# METEOR's Java process runs in the first row only (about 10 s a start); the others score
# BLEU, ROUGE-L and CIDEr-D (no row reports a METEOR figure).
WRITERS = {
    "flickr8k_alexnet": (fx.write_flickr8k, []),
    "flickr30k_alexnet": (fx.write_flickr30k, [NO_METEOR]),
    "flickr30k_vgg16": (fx.write_flickr30k, [NO_METEOR]),
    "coco_vgg16": (fx.write_coco, [NO_METEOR]),
    "iapr_alexnet": (
        fx.write_iapr,
        [
            "dataset.train_list=train.txt",
            "dataset.val_list=val.txt",
            "dataset.test_list=test.txt",
            NO_METEOR,
        ],
    ),
}


def test_every_row_has_a_fixture_and_reported_numbers():
    rows = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "experiments", "paper_rows")))
    assert sorted(WRITERS) == [r for r in rows if not r.startswith("_")]


@pytest.mark.slow
@pytest.mark.parametrize("row", sorted(WRITERS))
def test_row_dry_runs_on_fixture(row, tmp_path):
    writer, overrides = WRITERS[row]
    data_dir = str(tmp_path / "data")
    names = writer(data_dir, per_split=4)
    features = str(tmp_path / "fc7.npy")
    fx.write_features(features, fx.all_names(names), dim=4096)  # AlexNet / VGG-16 fc7 width
    workdir = str(tmp_path / "run")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "run_paper_row.py"), row]
        + ["--data-dir", data_dir, "--features", features, "--workdir", workdir]
        + ["--dry-run", "--no-progress", *overrides],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=600,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with open(os.path.join(workdir, "paper", "comparison.json"), encoding="utf-8") as f:
        comparison = json.load(f)
    assert comparison["dry_run"] and comparison["rows"]
    for entry in comparison["rows"]:
        assert entry["ours"] is not None, entry  # every reported number was measured
    tables = {entry["table"] for entry in comparison["rows"]}
    assert ("image retrieval" in tables) == (row != "iapr_alexnet")
    assert f"## {row}" in result.stdout
