"""End to end on real-format fixtures: ``make train DATASET=flickr8k DATA_DIR=... FEATURES=...``
trains, checkpoints (recording where the features came from) and ``mrnn evaluate`` scores the
test split; a missing FEATURES or data folder stops before anything is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mrnn_jax import checkpoint_reader
from tests import dataset_fixtures as fx
from tests.conftest import NO_METEOR, REPO, run_mrnn, subprocess_env

TINY = (
    "--no-progress dataset.min_count=1 encoder.features_dim=8 model.embed_dim=8 "
    "model.word_dim=8 model.multimodal_dim=16 train.batch_size=2 train.num_steps=4 "
    "train.eval_every=2 train.checkpoint_every=2 train.log_every=2 eval.batch_size=4 " + NO_METEOR
)


def make_train(*variables: str) -> subprocess.CompletedProcess:
    """``make train VARIABLES...`` with this interpreter's environment."""
    return subprocess.run(
        [
            "make",
            "--no-print-directory",
            "train",
            f"BIN={os.path.dirname(sys.executable)}",
            *variables,
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=600,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def flickr8k(tmp_path_factory) -> dict:
    """A Flickr8K fixture (original files) with provenance-stamped float16 .npy features."""
    root = tmp_path_factory.mktemp("flickr8k")
    names = fx.write_flickr8k(str(root / "Flickr8k"), per_split=4)
    features = str(root / "fc7.npy")
    fx.write_features(features, fx.all_names(names), dim=8, provenance={"encoder": "vgg16"})
    return {"data_dir": str(root / "Flickr8k"), "features": features, "root": root}


@pytest.mark.slow
def test_make_train_flickr8k_then_evaluate(flickr8k):
    workdir = str(flickr8k["root"] / "run")
    result = make_train(
        "DATASET=flickr8k",
        f"DATA_DIR={flickr8k['data_dir']}",
        f"FEATURES={flickr8k['features']}",
        f"WORKDIR={workdir}",
        f"ARGS={TINY}",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # The skip counts of the real-file mess appear in the run summary.
    assert "data: 5 captions of images in no split (skipped)" in result.stdout
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    assert results["data"]["splits"]["train"] == {"images": 4, "captions": 20}
    assert results["splits"]["test"]["perplexity"] > 1.0
    # The checkpoint records where the features came from.
    directory, step = checkpoint_reader.find_checkpoint(workdir, "best")
    meta = checkpoint_reader.read_json_item(directory, step, "meta")
    assert meta["data"]["features"]["provenance"] == {"encoder": "vgg16"}
    assert meta["data"]["features"]["dtype"] == "float16"

    out = str(flickr8k["root"] / "eval.json")
    evaluated = run_mrnn(
        "evaluate", "--checkpoint", workdir, "--split", "test", "--json", out, "--no-progress"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    with open(out, encoding="utf-8") as f:
        metrics = json.load(f)
    assert metrics["num_images"] == 4 and metrics["metrics"]["BLEU-1"] is not None
    assert abs(metrics["metrics"]["perplexity"] - results["splits"]["test"]["perplexity"]) < 1e-3


def test_missing_features_or_folder_stops_before_any_work(flickr8k, tmp_path):
    workdir = tmp_path / "run"
    result = make_train(
        "DATASET=flickr8k", f"DATA_DIR={flickr8k['data_dir']}", f"WORKDIR={workdir}", f"ARGS={TINY}"
    )
    assert result.returncode != 0
    assert "needs precomputed image features: set FEATURES=" in result.stderr
    assert "Traceback" not in result.stderr and not workdir.exists()

    result = make_train(
        "DATASET=flickr30k",
        f"DATA_DIR={tmp_path / 'nowhere'}",
        f"FEATURES={flickr8k['features']}",
        f"WORKDIR={workdir}",
        f"ARGS={TINY}",
    )
    assert result.returncode != 0 and not workdir.exists()
    assert f"{tmp_path / 'nowhere'}: no such data folder for dataset 'flickr30k'" in result.stderr
    assert "https://shannon.cs.illinois.edu/DenotationGraph/" in result.stderr


@pytest.mark.slow
def test_resuming_on_other_features_is_refused(flickr8k):
    workdir = str(flickr8k["root"] / "resume")
    first = make_train(
        "DATASET=flickr8k", f"DATA_DIR={flickr8k['data_dir']}",
        f"FEATURES={flickr8k['features']}", f"WORKDIR={workdir}", f"ARGS={TINY}",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    other = str(flickr8k["root"] / "alexnet.npy")
    with open(flickr8k["features"][:-4] + ".txt", encoding="utf-8") as f:
        names = f.read().split()
    fx.write_features(other, names, dim=8, provenance={"encoder": "alexnet"}, seed=1)
    again = make_train(
        "DATASET=flickr8k", f"DATA_DIR={flickr8k['data_dir']}", f"FEATURES={other}",
        f"WORKDIR={workdir}", f"ARGS={TINY} train.num_steps=6",
    )  # fmt: skip
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert "trained on other data" in again.stderr and "features provenance" in again.stderr
