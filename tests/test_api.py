"""The plain-argument library API (mrnn_jax.api), each function called directly on the
committed tiny checkpoint; and the command line as a face over it (parsing and printing)."""

from __future__ import annotations

import ast
import json
import os

import numpy as np
import pytest
from PIL import Image

from mrnn_jax import api, losses
from mrnn_jax.data import shapes
from mrnn_jax.errors import MrnnError
from tests.conftest import REPO

CHECKPOINT = os.path.join(REPO, "tests", "data", "tiny_checkpoint")
SAMPLE = os.path.join(CHECKPOINT, "sample.png")


@pytest.fixture(scope="module")
def model():
    return api.load(CHECKPOINT)


@pytest.fixture(scope="module")
def expected() -> dict:
    with open(os.path.join(CHECKPOINT, "expected.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> dict:
    """Four shapes scenes (two in a sub-folder), an unreadable .jpg and a text file."""
    root = tmp_path_factory.mktemp("images")
    split = shapes.make_split("test", 4, seed=5)
    (root / "sub").mkdir()
    for i, image in enumerate(split.images):
        Image.fromarray(image).save(root / ("sub" if i % 2 else ".") / f"scene{i}.png")
    (root / "broken.jpg").write_bytes(b"not an image")
    (root / "notes.txt").write_text("not listed: no image suffix")
    return {"root": str(root), "split": split}


def test_caption_files_and_arrays_with_every_strategy(model, expected):
    (greedy,) = api.caption(model, [SAMPLE])
    assert greedy == [api.Caption(expected["caption"], pytest.approx(expected["caption_log_prob"]))]
    beams = api.caption(model, [SAMPLE, SAMPLE], strategy="beam", beam_size=4, num_return=3)
    assert len(beams) == 2 and beams[0] == beams[1] and len(beams[0]) == 3
    log_probs = [c.log_prob for c in beams[0]]
    assert log_probs == sorted(log_probs, reverse=True) and log_probs[0] >= greedy[0].log_prob
    pixels = model.load_images([SAMPLE])
    alone = api.caption(model, pixels, strategy="beam", beam_size=4, num_return=3)[0]
    # One image against two: other batch shapes, so the log-probabilities agree to float32
    # rounding (XLA does not promise bit-equal sums across shapes), the texts exactly.
    assert [c.text for c in alone] == [c.text for c in beams[0]]
    assert [c.log_prob for c in alone] == pytest.approx(log_probs, rel=1e-5, abs=1e-5)
    drawn = api.caption(model, [SAMPLE], strategy="sample", num_return=2, seed=3)
    assert drawn == api.caption(model, [SAMPLE], strategy="sample", num_return=2, seed=3)
    short = api.caption(model, [SAMPLE], max_words=3)[0][0]
    assert len(short.text.split()) <= 3
    with pytest.raises(MrnnError, match="cannot return 5 captions from 2 beams"):
        api.caption(model, [SAMPLE], strategy="beam", beam_size=2, num_return=5)
    with pytest.raises(MrnnError, match="no such file"):
        api.caption(model, ["missing.png"])


def test_score_is_the_sum_of_the_words_log_probabilities(model, expected):
    sentences = [expected["reference"], "a red circle", "the small blue bar is left of a square"]
    scores = api.score(model, [SAMPLE, SAMPLE], sentences)
    assert scores.shape == (3, 2)
    assert scores[0, 0] == pytest.approx(expected["reference_log_likelihood"], abs=1e-3)
    # The same numbers through the model's full forward pass (the training loss's path).
    words = [model.vocab.tokenize(s) for s in sentences]
    inputs, targets, mask = losses.shift_tokens(model.vocab.encode_batch(words, 16))
    pixels = model.load_images([SAMPLE] * 3)
    logits = model.model.apply({"params": model.params}, pixels, inputs)
    log_likelihood = -(losses.token_nll(logits, targets) * mask).sum(axis=1)
    np.testing.assert_allclose(scores[:, 0], log_likelihood, atol=1e-3)
    with pytest.raises(MrnnError, match="has no words"):
        api.score(model, [SAMPLE], ["?!"])


def test_image_paths_and_extraction_images(folder, tmp_path):
    paths = api.image_paths(folder["root"])
    assert [os.path.relpath(p, folder["root"]) for p in paths] == [
        "broken.jpg", "scene0.png", "scene2.png", "sub/scene1.png", "sub/scene3.png",
    ]  # fmt: skip
    names, files = api.extraction_images(images=folder["root"])
    assert files == paths and names[3] == "sub/scene1.png"
    with pytest.raises(MrnnError, match="no such folder"):
        api.image_paths(tmp_path / "nowhere")
    with pytest.raises(MrnnError, match="a folder of images or of a dataset"):
        api.extraction_images()
    with pytest.raises(MrnnError, match="--dataset needs --data-dir"):
        api.extraction_images(dataset="flickr8k")


def test_gallery_and_search(model, folder, tmp_path):
    gallery = api.load_gallery(model, folder=folder["root"])
    assert len(gallery) == 4 and gallery.paths == gallery.names
    assert len(gallery.skipped) == 1 and "broken.jpg: not a readable image" in gallery.skipped[0]
    query = folder["split"].records[2].captions[0]
    result = api.search(model, query + " zebra", gallery, top=3)
    scores = api.score(model, gallery.inputs, [query + " zebra"])[0]
    assert [m.index for m in result.matches] == list(np.argsort(-scores, kind="stable")[:3])
    assert [m.score for m in result.matches] == pytest.approx(sorted(scores)[::-1][:3])
    assert result.unknown_words == ["zebra"]
    assert len(api.search(model, query, gallery).matches) == 4
    listed = api.load_gallery(model, paths=gallery.paths[:2])
    assert np.array_equal(listed.inputs, gallery.inputs[:2])
    with pytest.raises(MrnnError, match="top must be at least 1"):
        api.search(model, query, gallery, top=0)
    with pytest.raises(MrnnError, match="4 images, more than the limit of 3"):
        api.load_gallery(model, paths=gallery.paths, max_images=3)
    with pytest.raises(MrnnError, match="a folder, a list of image files or a features file"):
        api.load_gallery(model)
    features = tmp_path / "f.npz"
    np.savez(features, features=np.zeros((2, 16), np.float32), filenames=np.array(["a", "b"]))
    with pytest.raises(MrnnError, match="reads images; search image files"):
        api.load_gallery(model, features=features)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MrnnError, match="no readable images"):
        api.load_gallery(model, folder=empty)


def test_retrieval_metrics_on_a_split(model, tmp_path):
    report = api.retrieval_metrics(
        model, "test", max_images=8, out=str(tmp_path), checkpoint=CHECKPOINT, progress=False
    )
    assert set(report.metrics) == {
        "image retrieval", "sentence retrieval", "sentence retrieval (raw)",
    }  # fmt: skip
    assert 0 <= report.metrics["image retrieval"]["R@1"] <= 100
    assert "| m-RNN (tiny_checkpoint) | image retrieval" in report.table
    assert "test split, 8 images, 40 sentences" in report.table
    for suffix in ("md", "json", "html"):
        assert os.path.isfile(tmp_path / f"retrieval_test.{suffix}")
    with open(tmp_path / "retrieval_test.json", encoding="utf-8") as f:
        written = json.load(f)
    assert written["checkpoint"] == CHECKPOINT and written["metrics"] == report.metrics
    with pytest.raises(MrnnError, match="--max-images must be at least 1"):
        api.retrieval_metrics(model, "test", max_images=0)


def test_evaluate_captioning_on_a_split(model, tmp_path):
    out = str(tmp_path / "eval.json")
    evaluation = api.evaluate_captioning(
        model, "test", strategy="beam", beam_size=2, max_images=4, json_path=out, progress=False
    )
    assert evaluation.num_images == 4 and evaluation.decoding.beam_size == 2
    assert evaluation.metrics["perplexity"] > 1 and "CIDEr-D" in evaluation.metrics
    with open(out, encoding="utf-8") as f:
        written = json.load(f)
    assert written["metrics"] == pytest.approx(evaluation.metrics)
    assert written["decoding"]["strategy"] == "beam" and written["num_images"] == 4


def test_use_data_points_the_run_at_other_paths():
    model = api.load(CHECKPOINT)
    api.use_data(model, data_dir="/data/elsewhere", features="/data/f.npz")
    assert model.config.dataset.data_dir == "/data/elsewhere"
    assert model.config.dataset.features == "/data/f.npz"


def test_the_command_line_only_parses_and_prints():
    """cli.py reaches the library through mrnn_jax.api (and the train / extract / serve
    entry points); it holds no numerics, file formats or model calls of its own."""
    with open(os.path.join(REPO, "mrnn_jax", "cli.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    allowed = {
        "__future__.annotations", "argparse", "logging", "os", "sys",
        "collections.abc.Sequence", "mrnn_jax.errors.MrnnError", "mrnn_jax.errors.WriteFailed",
        "mrnn_jax.api",
        "mrnn_jax.configs", "mrnn_jax.training.loop", "mrnn_jax.distributed",
        "mrnn_jax.distributed.is_primary", "mrnn_jax.encoders.extract_features", "mrnn_jax.server",
        "mrnn_jax.limits.Limits", "mrnn_jax.training.signals.Interrupted",
        "mrnn_jax.evaluation.captioning.PHRASE_ACCURACY", "mrnn_jax.compilation_cache",
        "mrnn_jax.logs",
    }  # fmt: skip
    assert imported <= allowed, sorted(imported - allowed)
