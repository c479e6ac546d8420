"""A run trained on features from ``mrnn extract-features`` captions and searches image files
given the converted weights the features came from: the same CNN, preprocessing and stored
precision, hence the same caption as its extracted feature row; other weights are refused."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mrnn_jax import api
from mrnn_jax.data.features import load_features
from mrnn_jax.encoders import extract_features
from mrnn_jax.encoders.extractor import from_provenance
from mrnn_jax.encoders.weights import TORCHVISION, load_encoder_weights, save_encoder_weights
from mrnn_jax.errors import MrnnError
from tests import dataset_fixtures as fx
from tests.conftest import NO_METEOR, run_mrnn
from tests.test_pretrained import random_weights

TINY = [
    "--no-progress", "dataset.min_count=1", "encoder.features_dim=4096", "model.embed_dim=8",
    "model.word_dim=8", "model.multimodal_dim=16", "train.batch_size=2", "train.num_steps=6",
    "train.warmup_steps=1", "train.eval_every=3", "train.checkpoint_every=3",
    "train.log_every=3", "eval.batch_size=4", "eval.max_decode_words=8", NO_METEOR,
]  # fmt: skip


@pytest.fixture(scope="module")
def features_run(tmp_path_factory) -> dict:
    """A folder dataset, AlexNet fc7 features extracted from it (random weights), and a tiny
    run trained on those features by the real command."""
    root = tmp_path_factory.mktemp("features_run")
    data_dir = str(root / "photos")
    fx.write_folder(data_dir, per_split=2)
    weights = str(root / "alexnet.msgpack")
    random_weights(weights, "alexnet")
    names, paths = api.extraction_images(images=data_dir)
    features = str(root / "fc7.npz")
    extract_features.extract_features(
        {"name": "alexnet", "weights": weights, "feature": "", "fine_tune_from": ""},
        names,
        paths,
        features,
        batch_size=4,
        progress=False,
    )
    workdir = str(root / "run")
    trained = run_mrnn(
        "train", "--config", "folder", "--workdir", workdir, "--data-dir", data_dir,
        "--features", features, *TINY,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    return {
        "workdir": workdir,
        "weights": weights,
        "features": features,
        "names": names,
        "paths": paths,
        "root": root,
    }


@pytest.mark.slow
def test_image_files_caption_as_their_extracted_feature_rows(features_run):
    model = api.load(features_run["workdir"], encoder_weights=features_run["weights"])
    assert model.reads_image_files and not model.takes_pixels
    assert model.features["provenance"]["encoder"] == "alexnet"
    extracted = load_features(features_run["features"])
    rows = np.asarray(extracted.features, np.float32)
    paths = features_run["paths"]
    # The CNN reproduces the stored features (float16, as extracted).
    computed = model.image_inputs(paths)
    np.testing.assert_allclose(computed, rows, rtol=2e-3, atol=2e-3)
    for strategy in ({"strategy": "greedy"}, {"strategy": "beam", "beam_size": 3, "num_return": 2}):
        from_files = api.caption(model, paths, **strategy)
        from_rows = api.caption(model, rows, **strategy)
        assert [[c.text for c in r] for r in from_files] == [[c.text for c in r] for r in from_rows]
        for file_row, feature_row in zip(from_files, from_rows, strict=True):
            np.testing.assert_allclose(
                [c.log_prob for c in file_row], [c.log_prob for c in feature_row], atol=1e-3
            )
    # Search of the image folder ranks as search of the extracted features does.
    by_files = api.search(model, "a photo", api.load_gallery(model, paths=paths))
    by_rows = api.search(
        model, "a photo", api.load_gallery(model, features=features_run["features"])
    )
    assert [os.path.basename(m.name) for m in by_files.matches] == [
        os.path.basename(m.name) for m in by_rows.matches
    ]


@pytest.mark.slow
def test_the_command_captions_a_file_given_the_weights(features_run):
    run, weights, path = features_run["workdir"], features_run["weights"], features_run["paths"][0]
    model = api.load(run, encoder_weights=weights)
    row = load_features(features_run["features"]).features[0][None].astype(np.float32)
    expected = api.caption(model, row)[0][0]
    result = run_mrnn("caption", "--checkpoint", run, "--encoder-weights", weights, path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == f"{path}\t{expected.text}\t(log p = {expected.log_prob:.3f})\n"

    # Without the weights, the error says which file the run needs.
    with pytest.raises(MrnnError, match="trained on alexnet fc7 features") as error:
        api.caption(api.load(run), [path])
    assert "--encoder-weights FILE" in str(error)
    assert "converted from x.pth, SHA-256 abababababab..." in str(error)


def test_weights_other_than_the_features_came_from_are_refused(features_run, tmp_path):
    variables, meta = load_encoder_weights(features_run["weights"], "alexnet")
    other = str(tmp_path / "other.msgpack")
    source = {**meta["source"], "file_name": "other.pth", "sha256": "cd" * 32}
    save_encoder_weights(other, "alexnet", variables, source, TORCHVISION)
    with pytest.raises(MrnnError, match="converted from other.pth .*features came from x.pth"):
        api.load(features_run["workdir"], encoder_weights=other)
    mislabelled = str(tmp_path / "vgg16.msgpack")
    save_encoder_weights(mislabelled, "vgg16", variables, meta["source"], TORCHVISION)
    with pytest.raises(MrnnError, match="holds 'vgg16' weights, expected 'alexnet'"):
        api.load(features_run["workdir"], encoder_weights=mislabelled)
    # Features without provenance (made elsewhere) cannot say which CNN made them.
    with pytest.raises(MrnnError, match="carry no provenance from 'mrnn extract-features'"):
        from_provenance({"path": "vsepp.npz", "provenance": {}}, features_run["weights"], 4096)


@pytest.mark.slow
def test_the_server_captions_uploads_for_a_features_run(features_run):
    from fastapi.testclient import TestClient

    from mrnn_jax import server

    model = api.load(features_run["workdir"], encoder_weights=features_run["weights"])
    gallery = api.load_gallery(model, features=features_run["features"])
    rows = np.asarray(load_features(features_run["features"]).features, np.float32)
    path = features_run["paths"][1]
    expected = api.caption(model, rows[1:2], strategy="beam", beam_size=3, num_return=3)[0]
    with TestClient(server.create_app(model, gallery)) as client:
        with open(path, "rb") as f:
            answer = client.post("/api/caption", files={"image": ("photo.jpg", f)}).json()
        assert [c["text"] for c in answer["captions"]] == [c.text for c in expected]
        found = client.post("/api/search", json={"sentence": "a photo", "top": 3}).json()
        assert [r["thumbnail"] for r in found["results"]] == [None] * 3  # names and scores
        assert [r["name"] for r in found["results"]] == [
            m.name for m in api.search(model, "a photo", gallery, top=3).matches
        ]
