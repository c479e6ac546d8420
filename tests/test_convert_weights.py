"""The user's whole path with published weights: a torchvision AlexNet file (.pth or
.safetensors) -> data_prep/convert_weights.py -> an image file through mrnn-jax's loading,
preprocessing and encoder gives the fc7 that PyTorch gives on the same pixels."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from mrnn_jax.encoders import make_encoder  # noqa: E402
from mrnn_jax.encoders.pretrained import load_pretrained  # noqa: E402
from mrnn_jax.encoders.weights import TORCHVISION, load_encoder_weights  # noqa: E402
from mrnn_jax.images import load_image  # noqa: E402
from tests import dataset_fixtures as fx  # noqa: E402
from tests.conftest import REPO, subprocess_env  # noqa: E402
from tests.test_resnet50_alexnet import TorchAlexNet  # noqa: E402


def convert(*args: str) -> subprocess.CompletedProcess:
    """Runs data_prep/convert_weights.py as a user would."""
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "data_prep", "convert_weights.py"), *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=600,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def alexnet_files(tmp_path_factory) -> tuple[TorchAlexNet, dict[str, str]]:
    """A random torchvision-layout AlexNet saved as .pth and .safetensors."""
    torch.manual_seed(0)
    model = TorchAlexNet().eval()
    folder = tmp_path_factory.mktemp("alexnet")
    files = {"pth": str(folder / "alexnet.pth"), "safetensors": str(folder / "alexnet.safetensors")}
    torch.save(model.state_dict(), files["pth"])
    safetensors_torch.save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, files["safetensors"]
    )
    return model, files


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_converted_alexnet_gives_torch_fc7_on_an_image_file(alexnet_files, tmp_path, fmt):
    model, files = alexnet_files
    out = str(tmp_path / "alexnet.msgpack")
    result = convert("--arch", "alexnet", "--source", files[fmt], "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "expects RGB images, resize 256 crop 224" in result.stdout
    _, meta = load_encoder_weights(out, "alexnet")
    with open(files[fmt], "rb") as f:
        assert meta["source"]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert meta["source"]["format"] == ("safetensors" if fmt == "safetensors" else "torch")

    weights = load_pretrained({"name": "alexnet", "weights": out})
    config, params = weights.encoder_config({"name": "alexnet", "weights": out}), weights.params
    image_path = str(tmp_path / "photo.jpg")
    fx.write_image(image_path, 3, size=300)
    pixels = load_image(image_path, config["image_size"], "center_crop", config["crop_fraction"])
    ours = make_encoder(config).apply({"params": {"backbone": params}}, pixels[None])
    # PyTorch on the same pixels with torchvision's normalisation (ToTensor + Normalize).
    x = (pixels.astype(np.float32) / 255.0 - np.array(TORCHVISION.mean, np.float32)) / np.array(
        TORCHVISION.std, np.float32
    )
    with torch.no_grad():
        reference = model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))["fc7"].numpy()
    error = np.linalg.norm(np.asarray(ours) - reference) / np.linalg.norm(reference)
    assert error <= 1e-4, error


def test_converter_refuses_wrong_architecture_and_unknown_files(alexnet_files, tmp_path):
    _, files = alexnet_files
    result = convert("--arch", "resnet50", "--source", files["safetensors"], "--out", "x")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "alexnet" in result.stderr and not os.path.exists("x")
    (tmp_path / "w.onnx").write_bytes(b"x")
    result = convert("--arch", "alexnet", "--source", str(tmp_path / "w.onnx"), "--out", "y")
    assert result.returncode == 2 and "unknown weights format" in result.stderr
    result = convert("--arch", "resnet50", "--source", str(tmp_path / "a.h5"), "--out", "z")
    assert result.returncode == 2 and "supported for vgg16 only" in result.stderr
