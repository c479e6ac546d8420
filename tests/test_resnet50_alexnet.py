"""ResNet-50 and AlexNet ports against PyTorch references.

The references are built here from ``torch.nn`` layers with torchvision's parameter names and
layout (torchvision itself is not a dependency), given random weights (and, for ResNet-50,
random batch-norm statistics), saved as ``.pth`` and ``.safetensors`` and read back through
the same path a user's downloaded file takes: ``load_state_dict`` + ``from_torch``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
tnn = torch.nn

from data_prep.weights import alexnet as alexnet_weights  # noqa: E402
from data_prep.weights import resnet50 as resnet_weights  # noqa: E402
from data_prep.weights.torch_files import load_state_dict  # noqa: E402
from mrnn_jax.encoders import alexnet as alexnet_module  # noqa: E402
from mrnn_jax.encoders.alexnet import AlexNet, adaptive_avg_pool  # noqa: E402
from mrnn_jax.encoders.resnet import FEATURES as RESNET_FEATURES  # noqa: E402
from mrnn_jax.encoders.resnet import ResNet50  # noqa: E402
from mrnn_jax.encoders.weights import TORCHVISION  # noqa: E402
from mrnn_jax.errors import MrnnError  # noqa: E402

TOLERANCE = 1e-4
FORMATS = ("pth", "safetensors")


def relative_error(ours, reference) -> float:
    """``||ours - reference|| / ||reference||`` in float64."""
    ours = np.asarray(ours, np.float64)
    reference = np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


# --- PyTorch references with torchvision's names and layout ------------------------------


class TorchBottleneck(tnn.Module):
    """torchvision's ``Bottleneck`` (ResNet v1.5: the stride on conv2)."""

    expansion = 4

    def __init__(self, inplanes: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = tnn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.conv2 = tnn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(width)
        self.conv3 = tnn.Conv2d(width, out, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(out)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = tnn.Sequential(
                tnn.Conv2d(inplanes, out, 1, stride=stride, bias=False), tnn.BatchNorm2d(out)
            )

    def forward(self, x):
        """The residual block."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TorchResNet50(tnn.Module):
    """torchvision's ``resnet50()``, returning the pooled features and the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (blocks, width, stride) in enumerate(
            ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)), start=1
        ):
            layer = []
            for b in range(blocks):
                layer.append(TorchBottleneck(inplanes, width, stride if b == 0 else 1))
                inplanes = width * 4
            setattr(self, f"layer{i}", tnn.Sequential(*layer))
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(2048, 1000)

    def forward(self, x):
        """NCHW images -> ``{"pooled", "logits"}``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        pooled = torch.flatten(self.avgpool(x), 1)
        return {"pooled": pooled, "logits": self.fc(pooled)}


class TorchAlexNet(tnn.Module):
    """torchvision's ``alexnet()``, returning pool5, fc6, fc7 (after ReLU) and the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = tnn.Sequential(
            tnn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            tnn.ReLU(inplace=True),
            tnn.MaxPool2d(kernel_size=3, stride=2),
            tnn.Conv2d(64, 192, kernel_size=5, padding=2),
            tnn.ReLU(inplace=True),
            tnn.MaxPool2d(kernel_size=3, stride=2),
            tnn.Conv2d(192, 384, kernel_size=3, padding=1),
            tnn.ReLU(inplace=True),
            tnn.Conv2d(384, 256, kernel_size=3, padding=1),
            tnn.ReLU(inplace=True),
            tnn.Conv2d(256, 256, kernel_size=3, padding=1),
            tnn.ReLU(inplace=True),
            tnn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = tnn.AdaptiveAvgPool2d((6, 6))
        self.classifier = tnn.Sequential(
            tnn.Dropout(p=0.5),
            tnn.Linear(256 * 6 * 6, 4096),
            tnn.ReLU(inplace=True),
            tnn.Dropout(p=0.5),
            tnn.Linear(4096, 4096),
            tnn.ReLU(inplace=True),
            tnn.Linear(4096, 1000),
        )

    def forward(self, x):
        """NCHW images -> ``{"pool5" (NCHW), "fc6", "fc7", "logits"}``."""
        pool5 = self.avgpool(self.features(x))
        h = torch.flatten(pool5, 1)
        fc6 = self.classifier[2](self.classifier[1](self.classifier[0](h)))
        fc7 = self.classifier[5](self.classifier[4](self.classifier[3](fc6)))
        return {"pool5": pool5, "fc6": fc6, "fc7": fc7, "logits": self.classifier[6](fc7)}


# --- fixtures: each model built, run and saved once ---------------------------------------


@dataclass
class Reference:
    """A PyTorch reference model, its outputs on ``images`` and its saved weight files."""

    model: tnn.Module
    images: np.ndarray  # NHWC float32
    outputs: dict[str, np.ndarray]
    files: dict[str, str]  # format -> path
    state_dict: dict[str, np.ndarray]  # as load_state_dict reads the .pth


@pytest.fixture(scope="module", autouse=True)
def _torch_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _reference(model: tnn.Module, directory, seed: int, size: int = 224) -> Reference:
    model.eval()
    images = np.random.default_rng(seed).standard_normal((2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        outputs = model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    outputs = {k: v.numpy() for k, v in outputs.items()}
    state = model.state_dict()
    files = {
        "pth": str(directory / "model.pth"),
        "safetensors": str(directory / "model.safetensors"),
    }
    torch.save(state, files["pth"])
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, files["safetensors"])
    return Reference(model, images, outputs, files, load_state_dict(files["pth"]))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> Reference:
    """TorchResNet50 with torchvision's init, random batch-norm affine and statistics."""
    torch.manual_seed(0)
    model = TorchResNet50()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, tnn.Conv2d):
                tnn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, tnn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(1234)
    return _reference(model, tmp_path_factory.mktemp("resnet50"), seed=1)


@pytest.fixture(scope="module")
def alexnet(tmp_path_factory) -> Reference:
    """TorchAlexNet with PyTorch's default random init."""
    torch.manual_seed(1)
    return _reference(TorchAlexNet(), tmp_path_factory.mktemp("alexnet"), seed=2)


@pytest.fixture(scope="module")
def resnet_apply() -> Callable:
    """Jitted ResNet50 forward."""
    return jax.jit(ResNet50().apply)


@pytest.fixture(scope="module")
def alexnet_apply() -> Callable:
    """Jitted AlexNet forward."""
    return jax.jit(AlexNet().apply)


# --- the references really have torchvision's layout --------------------------------------


def test_references_have_torchvision_layout(resnet: Reference, alexnet: Reference) -> None:
    """Parameter counts and state-dict sizes of torchvision's resnet50 and alexnet."""
    assert sum(p.numel() for p in resnet.model.parameters()) == 25_557_032
    assert len(resnet.model.state_dict()) == 320  # 161 parameters + 53 BN x 3 buffers
    assert sum(p.numel() for p in alexnet.model.parameters()) == 61_100_840
    assert sorted(alexnet.model.state_dict()) == sorted(
        f"{m}.{p}"
        for m in ("features.0", "features.3", "features.6", "features.8", "features.10")
        + ("classifier.1", "classifier.4", "classifier.6")
        for p in ("weight", "bias")
    )
    assert "layer2.0.downsample.0.weight" in resnet.state_dict
    assert resnet.model.layer2[0].conv2.stride == (2, 2)  # v1.5
    assert resnet.model.layer2[0].conv1.stride == (1, 1)


# --- numerical equivalence ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_resnet50_matches_torch(resnet: Reference, resnet_apply: Callable, fmt: str) -> None:
    """Pooled features and logits from converted .pth / .safetensors weights match torch."""
    path = resnet.files[fmt]
    variables = resnet_weights.from_torch(load_state_dict(path), source=path)
    assert set(variables) == {"params"}
    outputs = resnet_apply(variables, jnp.asarray(resnet.images))
    pooled_error = relative_error(outputs["pooled"], resnet.outputs["pooled"])
    logits_error = relative_error(outputs["logits"], resnet.outputs["logits"])
    print(f"resnet50 {fmt}: pooled rel. error {pooled_error:.2e}, logits {logits_error:.2e}")
    assert pooled_error <= TOLERANCE
    assert logits_error <= TOLERANCE
    assert outputs["pooled"].shape == (2, RESNET_FEATURES["pooled"])
    shapes = {f"layer{i}": outputs[f"layer{i}"].shape for i in range(1, 5)}
    assert shapes == {
        "layer1": (2, 56, 56, 256),
        "layer2": (2, 28, 28, 512),
        "layer3": (2, 14, 14, 1024),
        "layer4": (2, 7, 7, 2048),
    }
    np.testing.assert_allclose(
        outputs["pooled"], outputs["layer4"].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_alexnet_matches_torch(alexnet: Reference, alexnet_apply: Callable, fmt: str) -> None:
    """fc7 (and pool5, fc6, logits) from converted .pth / .safetensors weights match torch."""
    path = alexnet.files[fmt]
    variables = alexnet_weights.from_torch(load_state_dict(path), source=path)
    assert set(variables) == {"params"}
    outputs = alexnet_apply(variables, jnp.asarray(alexnet.images))
    errors = {
        "pool5": relative_error(outputs["pool5"], alexnet.outputs["pool5"].transpose(0, 2, 3, 1)),
        **{k: relative_error(outputs[k], alexnet.outputs[k]) for k in ("fc6", "fc7", "logits")},
    }
    print(f"alexnet {fmt}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOLERANCE
    # The references are not degenerate: fc7 is neither all zero nor all positive.
    fc7 = alexnet.outputs["fc7"]
    assert 0.05 < np.mean(fc7 > 0) < 0.95
    assert {k: v.shape[1:] for k, v in outputs.items()} == {
        "pool5": (6, 6, 256),
        "fc6": (4096,),
        "fc7": (4096,),
        "logits": (1000,),
    }
    assert outputs["pool5"][0].size == alexnet_module.FEATURES["pool5"]


def test_comparison_detects_a_wrong_conversion(
    resnet: Reference, alexnet: Reference, resnet_apply: Callable, alexnet_apply: Callable
) -> None:
    """A kernel flipped in one deep ResNet block, or fc6 left in torch's C, H, W input order,
    makes the error far exceed the tolerance: the comparisons above are sensitive."""
    variables = resnet_weights.from_torch(resnet.state_dict)
    block = variables["params"]["layer3_4"]["conv2"]
    block["kernel"] = block["kernel"][::-1]
    outputs = resnet_apply(variables, jnp.asarray(resnet.images))
    assert relative_error(outputs["pooled"], resnet.outputs["pooled"]) > 100 * TOLERANCE

    variables = alexnet_weights.from_torch(alexnet.state_dict)
    variables["params"]["fc6"]["kernel"] = alexnet.state_dict["classifier.1.weight"].T
    outputs = alexnet_apply(variables, jnp.asarray(alexnet.images))
    assert relative_error(outputs["fc7"], alexnet.outputs["fc7"]) > 100 * TOLERANCE


@pytest.mark.parametrize(
    "height, width", [(5, 5), (6, 6), (8, 8), (13, 13), (7, 11), (1, 3), (20, 6)]
)
def test_adaptive_avg_pool_matches_torch(height: int, width: int) -> None:
    """torch's adaptive bins, overlapping ones (5 -> 6, 7 -> 6) included."""
    x = np.random.default_rng(height * 100 + width).standard_normal((2, height, width, 4))
    x = x.astype(np.float32)
    ours = adaptive_avg_pool(jnp.asarray(x), 6)
    reference = torch.nn.functional.adaptive_avg_pool2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), (6, 6)
    )
    np.testing.assert_allclose(ours, reference.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


def test_alexnet_other_input_size(alexnet: Reference) -> None:
    """A 192x192 input (5x5 before the adaptive pool) matches torch too."""
    images = np.random.default_rng(3).standard_normal((1, 192, 192, 3)).astype(np.float32)
    with torch.no_grad():
        reference = alexnet.model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    outputs = AlexNet().apply(alexnet_weights.from_torch(alexnet.state_dict), images)
    assert relative_error(outputs["fc7"], reference["fc7"].numpy()) <= TOLERANCE


# --- the parameter contract -----------------------------------------------------------------


def test_parameter_names() -> None:
    """Everything in "params" (batch-norm statistics too), with the documented names."""
    variables = resnet_weights.expected_variables()
    assert set(variables) == {"params"}
    params = variables["params"]
    blocks = [f"layer{i}_{b}" for i, n in ((1, 3), (2, 4), (3, 6), (4, 3)) for b in range(n)]
    assert set(params) == {"conv1", "bn1", "fc", *blocks}
    assert set(params["bn1"]) == {"scale", "bias", "mean", "var"}
    assert set(params["layer2_0"]) == {
        "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv", "downsample_bn"
    }  # fmt: skip
    assert set(params["layer2_1"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3"}
    assert set(params["layer1_0"]["conv1"]) == {"kernel"}  # no bias
    assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)
    alex = alexnet_weights.expected_variables()
    assert set(alex) == {"params"}
    assert set(alex["params"]) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"}
    assert alex["params"]["fc6"]["kernel"].shape == (9216, 4096)
    assert resnet_weights.PREPROCESSING == TORCHVISION == alexnet_weights.PREPROCESSING


def test_frozen_batch_norm_uses_its_statistics(resnet: Reference) -> None:
    """The converted batch-norm arrays are torch's weight, bias, running mean and variance."""
    params = resnet_weights.from_torch(resnet.state_dict)["params"]
    bn = params["layer3_2"]["bn2"]
    for ours, theirs in (
        ("scale", "weight"),
        ("bias", "bias"),
        ("mean", "running_mean"),
        ("var", "running_var"),
    ):
        np.testing.assert_array_equal(bn[ours], resnet.state_dict[f"layer3.2.bn2.{theirs}"])
    np.testing.assert_array_equal(
        params["layer4_0"]["downsample_bn"]["var"],
        resnet.state_dict["layer4.0.downsample.1.running_var"],
    )


# --- bad input ---------------------------------------------------------------------------------


def test_missing_extra_and_misshapen_entries_are_listed(resnet: Reference) -> None:
    """A missing key, an unexpected key and a wrong shape are all named, with the source."""
    state = dict(resnet.state_dict)
    del state["layer2.0.conv2.weight"]
    state["layer4.0.extra.weight"] = np.zeros((3,), np.float32)
    state["fc.weight"] = np.zeros((10, 2048), np.float32)
    with pytest.raises(MrnnError) as error:
        resnet_weights.from_torch(state, source="bad.pth")
    message = str(error.value)
    assert "bad.pth" in message
    assert "missing 1: layer2.0.conv2.weight" in message
    assert "unexpected 1: layer4.0.extra.weight" in message
    assert "fc.weight: (10, 2048) (expected (1000, 2048))" in message


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda s: s.pop("classifier.6.bias"), "missing 1: classifier.6.bias"),
        (lambda s: s.update({"classifier.7.weight": np.ones(2)}), "unexpected 1: classifier.7"),
        (
            lambda s: s.update({"features.3.weight": np.ones((192, 64, 3, 3))}),
            "features.3.weight: (192, 64, 3, 3) (expected (192, 64, 5, 5))",
        ),
    ],
)
def test_alexnet_bad_entries_are_listed(alexnet: Reference, change, expected: str) -> None:
    """Each kind of problem in an AlexNet state dict is named."""
    state = dict(alexnet.state_dict)
    change(state)
    with pytest.raises(MrnnError, match="alex.pth") as error:
        alexnet_weights.from_torch(state, source="alex.pth")
    assert expected in str(error.value)


def test_wrong_architecture(resnet: Reference, alexnet: Reference) -> None:
    """Each converter names the network a state dict of the other one holds."""
    with pytest.raises(MrnnError, match=r"a\.pth: holds alexnet weights, not resnet50"):
        resnet_weights.from_torch(alexnet.state_dict, source="a.pth")
    with pytest.raises(MrnnError, match=r"r\.pth: holds resnet50 weights, not alexnet"):
        alexnet_weights.from_torch(resnet.state_dict, source="r.pth")
    basic = {k: v for k, v in resnet.state_dict.items() if ".conv3." not in k}
    with pytest.raises(MrnnError, match="resnet18/34"):
        resnet_weights.from_torch(basic, source="r18.pth")
    with pytest.raises(MrnnError, match=r"x\.pth: not a torchvision/timm resnet50 state dict"):
        resnet_weights.from_torch({"encoder.weight": np.ones(3)}, source="x.pth")


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_file(resnet: Reference, tmp_path, fmt: str) -> None:
    """A file cut in half (an interrupted download) fails naming the file."""
    with open(resnet.files[fmt], "rb") as f:
        data = f.read()
    path = str(tmp_path / f"half.{fmt}")
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(MrnnError, match=f"half.{fmt}"):
        load_state_dict(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_empty_file(tmp_path, fmt: str) -> None:
    """An empty file fails naming the file."""
    path = tmp_path / f"empty.{fmt}"
    path.write_bytes(b"")
    with pytest.raises(MrnnError, match=f"empty.{fmt}: empty file"):
        load_state_dict(str(path))


def test_wrapped_checkpoint_with_module_prefix(resnet: Reference, tmp_path) -> None:
    """A ``{"state_dict": {"module.<name>": ...}}`` training checkpoint converts like the
    plain state dict."""
    wrapped = {
        "epoch": 90,
        "state_dict": {f"module.{k}": v for k, v in resnet.model.state_dict().items()},
    }
    path = str(tmp_path / "checkpoint.pth")
    torch.save(wrapped, path)
    ours = resnet_weights.from_torch(load_state_dict(path), source=path)
    plain = resnet_weights.from_torch(resnet.state_dict)
    assert jax.tree.structure(ours) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)
