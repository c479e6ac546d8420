"""Pretrained encoders in the m-RNN: the converted-weights file format, which layers train,
and the training loop with a frozen or fine-tuned ResNet-50 on images from disk."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mrnn_jax import checkpoint_reader, configs
from mrnn_jax.encoders import make_encoder
from mrnn_jax.encoders.pretrained import architecture, load_pretrained, trainable_labels
from mrnn_jax.encoders.weights import (
    CAFFE,
    TORCHVISION,
    Preprocessing,
    load_encoder_weights,
    save_encoder_weights,
)
from mrnn_jax.errors import MrnnError
from mrnn_jax.training import loop
from tests import dataset_fixtures as fx
from tests.conftest import NO_METEOR


def random_weights(path: str, arch: str = "resnet50", seed: int = 0) -> dict:
    """A converted-weights file of random parameters (what convert_weights.py writes)."""
    spec = architecture(arch)
    variables = spec.module().init(jax.random.PRNGKey(seed), jnp.zeros((1, 64, 64, 3)))
    params = jax.tree.map(np.asarray, variables["params"])
    source = {"path": "/downloads/x.pth", "file_name": "x.pth", "sha256": "ab" * 32}
    save_encoder_weights(path, arch, {"params": params}, source, TORCHVISION)
    return params


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory) -> tuple[str, dict]:
    """Random ResNet-50 weights in the converted format."""
    path = str(tmp_path_factory.mktemp("weights") / "resnet50.msgpack")
    return path, random_weights(path)


def test_weights_file_round_trip_and_bad_files(resnet_weights, tmp_path):
    path, params = resnet_weights
    variables, meta = load_encoder_weights(path, "resnet50")
    assert meta["architecture"] == "resnet50" and meta["source"]["file_name"] == "x.pth"
    assert Preprocessing.from_json(meta["preprocessing"]) == TORCHVISION
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"], params["conv1"]["kernel"])
    with pytest.raises(MrnnError, match="holds 'resnet50' weights, expected 'vgg16'"):
        load_encoder_weights(path, "vgg16")
    truncated = tmp_path / "cut.msgpack"
    with open(path, "rb") as f:
        truncated.write_bytes(f.read()[: os.path.getsize(path) // 2])
    with pytest.raises(MrnnError, match="cut.msgpack: not a readable converted weights file"):
        load_encoder_weights(str(truncated))
    (tmp_path / "other.msgpack").write_bytes(b"\x81\xa1a\x01")  # a valid msgpack {"a": 1}
    with pytest.raises(MrnnError, match="not a converted encoder weights file"):
        load_encoder_weights(str(tmp_path / "other.msgpack"))
    with pytest.raises(MrnnError, match="no such encoder weights file"):
        load_encoder_weights(str(tmp_path / "absent.msgpack"))


def test_preprocessing_matches_the_sources_conventions():
    pixels = np.array([[[[255, 128, 0]]]], np.uint8)
    torch_style = TORCHVISION.normalise(pixels)[0, 0, 0]
    expected = (np.array([1.0, 128 / 255, 0.0]) - np.array(TORCHVISION.mean)) / np.array(
        TORCHVISION.std
    )
    np.testing.assert_allclose(torch_style, expected, rtol=1e-6)
    caffe = CAFFE.normalise(pixels)[0, 0, 0]  # BGR minus the BGR mean, no scaling
    np.testing.assert_allclose(caffe, [0 - 103.939, 128 - 116.779, 255 - 123.68], rtol=1e-6)


def _labels(config_overrides: dict) -> dict:
    spec = architecture("resnet50")
    backbone = jax.eval_shape(spec.module().init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    params = {"image_encoder": {"backbone": backbone["params"]}, "softmax": {"kernel": 0}}
    return trainable_labels(params, {"name": "resnet50", **config_overrides})


def test_frozen_encoder_trains_only_the_mrnn():
    labels = _labels({})
    assert labels["softmax"]["kernel"] == "mrnn"
    leaves = jax.tree.leaves(labels["image_encoder"])
    assert leaves and set(leaves) == {"frozen"}


def test_fine_tuning_from_a_layer_trains_it_and_later_ones_but_never_bn_statistics():
    labels = _labels({"fine_tune_from": "layer4"})["image_encoder"]["backbone"]
    assert set(jax.tree.leaves(labels["layer3_5"])) == {"frozen"}
    block = labels["layer4_2"]
    assert block["conv1"]["kernel"] == "encoder" and block["bn1"]["scale"] == "encoder"
    assert block["bn1"]["mean"] == "frozen" and block["bn1"]["var"] == "frozen"
    assert set(jax.tree.leaves(labels["fc"])) == {"frozen"}  # after the pooled feature
    with pytest.raises(MrnnError, match="not a layer of resnet50"):
        _labels({"fine_tune_from": "layer9"})
    with pytest.raises(MrnnError, match="comes after the feature's layer"):
        _labels({"fine_tune_from": "fc"})  # after the pooled feature: nothing would train


def test_load_pretrained_returns_the_preprocessing_of_the_file(resnet_weights):
    config = configs.load_config("default", ["encoder.name=resnet50"])
    config.encoder.weights = resnet_weights[0]
    before = configs.to_json(config)
    weights = load_pretrained(config.encoder)
    assert configs.to_json(config) == before  # the config is read, never written into
    encoder_config = weights.encoder_config(config.encoder)
    assert encoder_config["image_size"] == 224 and encoder_config["crop_fraction"] == 224 / 256
    assert encoder_config["pixel_order"] == "RGB" and encoder_config["features_dim"] == 2048
    assert tuple(encoder_config["pixel_mean"]) == TORCHVISION.mean
    assert "conv1" in weights.params and weights.meta["architecture"] == "resnet50"
    encoder = make_encoder(encoder_config)
    assert encoder.frozen and encoder.feature_name == "pooled"
    # Values the config sets win over the file's, except the feature's width.
    config.encoder.image_size = 160
    assert weights.encoder_config(config.encoder)["image_size"] == 160
    config.encoder.weights = ""
    with pytest.raises(MrnnError, match="needs encoder.weights=FILE"):
        load_pretrained(config.encoder)


def _train(tmp_path, weights: str, *extra: str) -> tuple[str, dict]:
    data_dir = str(tmp_path / "photos")
    if not os.path.isdir(data_dir):
        fx.write_folder(data_dir, per_split=4)
    workdir = str(tmp_path / f"run{len(os.listdir(tmp_path))}")
    config = configs.load_config(
        "folder",
        [
            f"dataset.data_dir={data_dir}",
            "dataset.min_count=1",
            "encoder.name=resnet50",
            f"encoder.weights={weights}",
            "encoder.image_size=64",  # ResNet-50 pools globally: small images keep it fast
            "model.embed_dim=8",
            "model.word_dim=8",
            "model.multimodal_dim=16",
            "train.batch_size=4",
            "train.num_steps=2",
            "train.eval_every=2",
            "train.checkpoint_every=2",
            "train.warmup_steps=1",
            "train.learning_rate=0.01",
            "eval.batch_size=4",
            NO_METEOR,
            *extra,
        ],
    )
    results = loop.train_and_evaluate(config, workdir, progress=False)
    directory, step = checkpoint_reader.find_checkpoint(workdir, "latest")
    manager = ocp.CheckpointManager(directory)
    restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore()))
    manager.close()
    return workdir, {"results": results, "params": restored["params"]}


@pytest.mark.slow
def _assert_frozen(run: dict, original: dict) -> None:
    """A frozen CNN is exactly the converted weights after training."""
    backbone = run["params"]["image_encoder"]["backbone"]
    np.testing.assert_array_equal(backbone["conv1"]["kernel"], original["conv1"]["kernel"])
    np.testing.assert_array_equal(
        backbone["layer4_2"]["conv1"]["kernel"], original["layer4_2"]["conv1"]["kernel"]
    )
    assert np.isfinite(run["results"]["splits"]["test"]["perplexity"])


def test_training_with_a_fine_tuned_resnet50(resnet_weights, tmp_path):
    """Layer 4 on trains; what comes before it, and the batch-norm statistics, do not.
    (Training with the CNN frozen: the bad-images test below.)"""
    path, original = resnet_weights
    _, tuned = _train(tmp_path, path, "encoder.fine_tune_from=layer4", "encoder.learning_rate=0.01")
    backbone = tuned["params"]["image_encoder"]["backbone"]
    before, after = original["layer4_2"]["conv1"]["kernel"], backbone["layer4_2"]["conv1"]["kernel"]
    assert np.abs(after - before).max() > 0  # layer 4 trained
    np.testing.assert_array_equal(
        backbone["layer3_5"]["conv1"]["kernel"], original["layer3_5"]["conv1"]["kernel"]
    )
    np.testing.assert_array_equal(
        backbone["layer4_2"]["bn1"]["mean"], original["layer4_2"]["bn1"]["mean"]
    )


def _spoil_images(data_dir: str) -> None:
    """Real-file mess in a folder dataset: a truncated JPEG (train), a zero-byte file (val),
    a grey-scale, an EXIF-rotated, a tiny and a huge image (test)."""
    from PIL import Image

    truncated = os.path.join(data_dir, "images/photo_000.jpg")
    with open(truncated, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 3])
    open(os.path.join(data_dir, "images/photo_004.jpg"), "wb").close()
    Image.new("L", (50, 40), 90).save(os.path.join(data_dir, "images/photo_008.jpg"))
    rotated = Image.new("RGB", (60, 30), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(os.path.join(data_dir, "images/photo_009.jpg"), exif=exif.tobytes())
    Image.new("RGB", (1, 1), (0, 0, 255)).save(os.path.join(data_dir, "images/photo_010.jpg"))
    Image.new("RGB", (4000, 3000), (0, 255, 0)).save(os.path.join(data_dir, "images/photo_011.jpg"))


@pytest.mark.slow
def test_bad_images_inside_a_dataset_are_counted_not_fatal(resnet_weights, tmp_path):
    fx.write_folder(str(tmp_path / "photos"), per_split=4)
    _spoil_images(str(tmp_path / "photos"))
    _, run = _train(tmp_path, resnet_weights[0])
    _assert_frozen(run, resnet_weights[1])
    skipped = run["results"]["data"]["skipped"]
    assert skipped["images missing or empty on disk (skipped)"]["count"] == 1
    assert skipped["images missing or empty on disk (skipped)"]["examples"][0].endswith(
        "photo_004.jpg"
    )
    broken = skipped["images that could not be decoded (grey used)"]
    assert broken["count"] == 1 and broken["examples"][0].endswith("photo_000.jpg")
    assert run["results"]["data"]["splits"]["val"]["images"] == 3
    assert run["results"]["splits"]["test"]["num_images"] == 4  # grey, rotated, tiny, huge

    with pytest.raises(MrnnError, match=r"photo_004.jpg \(dataset.on_bad_image=skip drops"):
        _train(tmp_path, resnet_weights[0], "dataset.on_bad_image=error")
