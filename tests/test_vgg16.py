"""VGG-16 (mrnn_jax/encoders/vgg.py) against two independent references, each given the same
random weights through the file formats and converters (data_prep/weights/vgg16.py) that a
user's downloaded weights go through: Keras' own ``keras.applications.VGG16`` (``.h5``, as
written by Keras 1, 2 and 3) and a ``torch.nn`` VGG-16 with torchvision's layout (``.pth``,
``.safetensors``). Then the clear errors for files that are not VGG-16's full weights."""

from __future__ import annotations

import collections
import os

os.environ["KERAS_BACKEND"] = "jax"  # before Keras is imported: run it on JAX, not TensorFlow

import h5py
import jax
import numpy as np
import pytest

from data_prep.weights import vgg16
from data_prep.weights.torch_files import load_state_dict
from mrnn_jax.encoders.vgg import FEATURES, VGG16
from mrnn_jax.errors import MrnnError

# Keras' own variables warn under NumPy 2 when set_weights/get_weights copy them.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
TOLERANCE = 1e-4  # relative L2 error, float32
apply = jax.jit(VGG16().apply)


def relative_error(ours, reference) -> float:
    """``||ours - reference|| / ||reference||``, computed in float64."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def half_copy(source, target) -> str:
    """Writes the first half of file ``source`` to ``target`` (an interrupted download)."""
    with open(source, "rb") as f:
        data = f.read(os.path.getsize(source) // 2)
    with open(target, "wb") as f:
        f.write(data)
    return str(target)


def write_h5(path, layers: dict[str, list[np.ndarray]], style: str) -> str:
    """Writes ``{layer: [kernel, bias]}`` (``[]`` for layers without weights) as an ``.h5``
    weights file of an older Keras: ``keras1`` (the 2016 release: ``block1_conv1_W_1:0``
    datasets in the layer's group; the top layers spelled ``fc1_W:0``) or ``keras2``
    (``model.save``: a ``model_weights`` group, ``block1_conv1/kernel:0`` nested one level)."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if style == "keras2" else f
        root.attrs["layer_names"] = np.array([name.encode() for name in layers], dtype="S")
        for layer, arrays in layers.items():
            if style == "keras1":
                suffix = "" if layer in vgg16.KERAS_TOP else "_1"
                names = [f"{layer}_W{suffix}:0", f"{layer}_b{suffix}:0"]
            else:
                names = [f"{layer}/kernel:0", f"{layer}/bias:0"]
            names = names[: len(arrays)]
            group = root.create_group(layer)
            group.attrs["weight_names"] = np.array([name.encode() for name in names], dtype="S")
            for name, array in zip(names, arrays, strict=True):
                group.create_dataset(name, data=array)
    return str(path)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Two already normalised input images ``[2, 224, 224, 3]`` (NHWC)."""
    return np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)


def he_weights(rng: np.random.Generator, kernel_shape: tuple[int, ...]) -> list[np.ndarray]:
    """A random kernel that keeps activations near unit scale through ReLUs, and a random bias
    (so that a bias or kernel left out or misplaced shows in the output)."""
    fan_in = int(np.prod(kernel_shape[:-1]))
    kernel = rng.standard_normal(kernel_shape, np.float32) * np.float32(np.sqrt(2 / fan_in))
    return [kernel, rng.normal(0, 0.1, kernel_shape[-1:]).astype(np.float32)]


@pytest.fixture(scope="module")
def keras_vgg(tmp_path_factory, images):
    """``(weights .h5 written by Keras 3's legacy writer, {layer: [kernel, bias]}, reference
    outputs for ``images``)`` of ``keras.applications.VGG16`` with random weights."""
    keras = pytest.importorskip("keras")
    from keras.src.legacy.saving import legacy_h5_format

    assert keras.backend.backend() == "jax", "Keras was imported before KERAS_BACKEND was set"
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None)
    rng = np.random.default_rng(1)
    weights = {}
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(he_weights(rng, tuple(layer.kernel.shape)))
        weights[layer.name] = layer.get_weights()
    path = str(tmp_path_factory.mktemp("keras") / "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    with h5py.File(path, "w") as f:  # what model.save_weights wrote before Keras 3
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    model.get_layer("predictions").activation = keras.activations.linear  # logits, no softmax
    names = ("block5_pool", "fc2", "predictions")
    reference = keras.Model(model.input, [model.get_layer(name).output for name in names])
    return path, weights, reference.predict(images, batch_size=2, verbose=0)


@pytest.fixture(scope="module")
def keras_variables(keras_vgg) -> dict:
    """The Keras 3 file converted by ``from_keras_h5``."""
    return vgg16.from_keras_h5(keras_vgg[0])


def test_matches_keras_vgg16(keras_vgg, keras_variables, images):
    path, _, (pool5, fc7, logits) = keras_vgg
    with h5py.File(path) as f:  # Keras 3's names: no ":0"
        assert list(f["fc2"].attrs["weight_names"]) == ["fc2/kernel", "fc2/bias"]
    ours = apply(keras_variables, images)
    assert {name: value.reshape(2, -1).shape[1] for name, value in ours.items()} == FEATURES
    errors = {
        "pool5": relative_error(ours["pool5"], pool5),
        "fc7": relative_error(ours["fc7"], fc7),
        "logits": relative_error(ours["logits"], logits),
    }
    print(f"relative L2 error against Keras: {errors}")
    assert max(errors.values()) <= TOLERANCE, errors
    assert 0.1 < np.mean(fc7 > 0) < 0.9  # ReLU features, neither dead nor linear


@pytest.mark.parametrize("style", ["keras1", "keras2"])
def test_older_keras_files_convert_alike(keras_vgg, keras_variables, style, tmp_path):
    _, weights, _ = keras_vgg
    path = write_h5(tmp_path / "vgg16.h5", weights, style)
    variables = vgg16.from_keras_h5(path)
    assert jax.tree.structure(variables) == jax.tree.structure(keras_variables)
    for ours, theirs in zip(
        jax.tree.leaves(variables), jax.tree.leaves(keras_variables), strict=True
    ):
        np.testing.assert_array_equal(ours, theirs)


def test_keras_preprocessing_matches_keras():
    keras = pytest.importorskip("keras")
    rgb = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    expected = keras.applications.vgg16.preprocess_input(rgb.astype(np.float32))
    ours = vgg16.PREPROCESSING["keras_h5"].normalise(rgb)
    np.testing.assert_allclose(ours, np.asarray(expected), rtol=0, atol=1e-4)


# torchvision's configuration "D": output channels of each 3x3 conv, "M" for a 2x2 max-pool.
TORCHVISION_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"] + [512, 512, 512, "M"] * 2


@pytest.fixture(scope="module")
def torch_vgg(tmp_path_factory, images):
    """``({".pth": path, ".safetensors": path}, state dict as NumPy, reference fc7 and logits
    for ``images``)`` of a ``torch.nn`` VGG-16 with torchvision's layout and random weights."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    nn = torch.nn
    torch.set_num_threads(2)
    torch.manual_seed(0)
    features, channels_in = [], 3
    for item in TORCHVISION_D:
        if item == "M":
            features.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            features += [nn.Conv2d(channels_in, item, 3, padding=1), nn.ReLU(inplace=True)]
            channels_in = item
    classifier = [nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout()]
    classifier += [nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000)]
    model = nn.Sequential(
        collections.OrderedDict(
            features=nn.Sequential(*features),
            avgpool=nn.AdaptiveAvgPool2d((7, 7)),
            flatten=nn.Flatten(1),
            classifier=nn.Sequential(*classifier),
        )
    ).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                module.weight.normal_(0, (2 / module.weight[0].numel()) ** 0.5)
                module.bias.normal_(0, 0.1)
        pooled = model.flatten(
            model.avgpool(model.features(torch.from_numpy(images).permute(0, 3, 1, 2)))
        )
        fc7 = model.classifier[:5](pooled)  # Linear, ReLU, Dropout, Linear, ReLU
        logits = model.classifier[5:](fc7)
    folder = tmp_path_factory.mktemp("torch")
    paths = {".pth": str(folder / "vgg16.pth"), ".safetensors": str(folder / "vgg16.safetensors")}
    torch.save(model.state_dict(), paths[".pth"])
    save_file(model.state_dict(), paths[".safetensors"])
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    return paths, state, (fc7.numpy(), logits.numpy())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_matches_torch_vgg16(torch_vgg, images, suffix):
    paths, _, (fc7, logits) = torch_vgg
    ours = apply(vgg16.from_torch(load_state_dict(paths[suffix]), source=paths[suffix]), images)
    errors = {
        "fc7": relative_error(ours["fc7"], fc7),
        "logits": relative_error(ours["logits"], logits),
    }
    print(f"relative L2 error against torch ({suffix}): {errors}")
    assert max(errors.values()) <= TOLERANCE, errors
    assert 0.1 < np.mean(fc7 > 0) < 0.9


def test_torch_reference_sees_the_fc6_input_order(torch_vgg, images):
    """fc6 kept in torch's (C, H, W) input order (a plain transpose) misses the reference."""
    _, state, (fc7, _) = torch_vgg
    variables = vgg16.from_torch(state)
    variables["params"]["fc6"]["kernel"] = state["classifier.0.weight"].T
    assert relative_error(apply(variables, images)["fc7"], fc7) > 0.1


def test_notop_file_is_refused(keras_vgg, tmp_path):
    notop = {k: v for k, v in keras_vgg[1].items() if k not in vgg16.KERAS_TOP}
    path = write_h5(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", notop, "keras1")
    with pytest.raises(MrnnError, match="no top layers") as error:
        vgg16.from_keras_h5(path)
    assert path in str(error.value)


def test_theano_ordered_file_is_refused(tmp_path):
    layer = [np.zeros((64, 3, 3, 3), np.float32), np.zeros(64, np.float32)]  # [out, in, 3, 3]
    path = write_h5(tmp_path / "vgg16.h5", {"block1_conv1": layer}, "keras1")
    with pytest.raises(MrnnError, match=r"Theano.*block1_conv1 kernel \(64, 3, 3, 3\)"):
        vgg16.from_keras_h5(path)
    layer[0] = layer[0].transpose(2, 3, 1, 0)  # shaped right, but by its name Theano's
    path = write_h5(
        tmp_path / "vgg16_weights_th_dim_ordering_th_kernels.h5", {"block1_conv1": layer}, "keras1"
    )
    with pytest.raises(MrnnError, match="Theano") as error:
        vgg16.from_keras_h5(path)
    assert path in str(error.value)


def test_other_architecture_lists_missing_and_unexpected_keys(tmp_path):
    resnet = {
        "conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
        "bn1.weight": np.zeros(64, np.float32),
        "fc.weight": np.zeros((1000, 2048), np.float32),
        "fc.bias": np.zeros(1000, np.float32),
    }
    with pytest.raises(MrnnError) as error:
        vgg16.from_torch(resnet, source="resnet50.pth")
    message = str(error.value)
    assert message.startswith("resnet50.pth: ")
    assert "missing 32: classifier.0.bias" in message and "features.0.weight" in message
    assert "unexpected 4: bn1.weight, conv1.weight, fc.bias, fc.weight" in message
    path = write_h5(tmp_path / "resnet50.h5", {"conv1_conv": [resnet["conv1.weight"].T]}, "keras2")
    with pytest.raises(MrnnError, match=r"missing 32: .*unexpected 1: conv1_conv/kernel") as error:
        vgg16.from_keras_h5(path)
    assert path in str(error.value)


def test_wrong_shape_names_the_key(torch_vgg):
    state = dict(torch_vgg[1], **{"classifier.3.weight": np.zeros((4096, 2048), np.float32)})
    with pytest.raises(
        MrnnError, match=r"classifier\.3\.weight: \(4096, 2048\) \(expected \(4096, 4096\)\)"
    ):
        vgg16.from_torch(state, source="vgg16.pth")


def load(path: str) -> dict:
    """Converts any of the supported weight files, as a user's command would."""
    if path.endswith(".h5"):
        return vgg16.from_keras_h5(path)
    return vgg16.from_torch(load_state_dict(path), source=path)


@pytest.mark.parametrize("suffix", [".h5", ".pth", ".safetensors"])
def test_truncated_file_is_named(request, suffix, tmp_path):
    if suffix == ".h5":
        source = request.getfixturevalue("keras_vgg")[0]
    else:
        source = request.getfixturevalue("torch_vgg")[0][suffix]
    path = half_copy(source, tmp_path / f"vgg16{suffix}")
    with pytest.raises(MrnnError, match="truncated") as error:
        load(path)
    assert path in str(error.value)


@pytest.mark.parametrize("suffix", [".h5", ".pth", ".safetensors"])
def test_empty_or_missing_file_is_named(suffix, tmp_path):
    path = str(tmp_path / f"vgg16{suffix}")
    with pytest.raises(MrnnError, match="no such") as error:
        load(path)
    assert path in str(error.value)
    open(path, "wb").close()
    with pytest.raises(MrnnError, match="empty file") as error:
        load(path)
    assert path in str(error.value)
