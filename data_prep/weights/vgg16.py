"""Converting published VGG-16 weights into the Flax variables of
:class:`mrnn_jax.encoders.vgg.VGG16`.

Sources: Keras' ``vgg16_weights_tf_dim_ordering_tf_kernels.h5`` (written by Keras 1, 2 or 3;
their weight names differ) and torchvision's ``vgg16`` state dict (``.pth`` or ``.safetensors``,
read with :func:`data_prep.weights.torch_files.load_state_dict`).

Usage::

    from data_prep.weights import torch_files, vgg16
    variables = vgg16.from_keras_h5(path)  # PREPROCESSING["keras_h5"]
    variables = vgg16.from_torch(torch_files.load_state_dict(path), source=path)  # ["torch"]
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mrnn_jax.encoders.vgg import BLOCKS, VGG16
from mrnn_jax.encoders.weights import CAFFE, TORCHVISION, check_variables
from mrnn_jax.errors import MrnnError

ARCHITECTURE = "vgg16"
# The preprocessing each source's weights expect.
PREPROCESSING = {"keras_h5": CAFFE, "torch": TORCHVISION}

CONVS = tuple(f"conv{b}_{i}" for b, (_, n) in enumerate(BLOCKS, start=1) for i in range(1, n + 1))
# Indices of the Conv2d layers in torchvision's ``vgg16().features``.
TORCH_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
# Source layer name -> VGG16 layer name.
KERAS_LAYERS = {
    **{f"block{c[4]}_conv{c[6]}": c for c in CONVS},
    "fc1": "fc6",
    "fc2": "fc7",
    "predictions": "fc8",
}
TORCH_LAYERS = {
    **{f"features.{i}": c for i, c in zip(TORCH_CONVS, CONVS, strict=True)},
    "classifier.0": "fc6",
    "classifier.3": "fc7",
    "classifier.6": "fc8",
}
KERAS_TOP = ("fc1", "fc2", "predictions")
POOL5 = (7, 7, 512)  # H, W, C of the feature map that fc6 reads


def expected_variables() -> dict:
    """Shapes (``jax.ShapeDtypeStruct``) of the Flax variables of :class:`VGG16`."""
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    return jax.eval_shape(VGG16().init, jax.random.key(0), images)


def from_keras_h5(path: str) -> dict:
    """The ``{"params": ...}`` of :class:`VGG16` from a Keras VGG-16 ``.h5`` weights file.

    Raises :class:`MrnnError` naming the file when it is missing, truncated or damaged, has no
    top layers (a ``_notop`` file), is Theano-ordered, or does not hold VGG-16's weights.
    """
    _check_file(path)
    name = os.path.basename(path)
    if "th_dim_ordering" in name or "th_kernels" in name:
        raise MrnnError(_theano_message(path))
    try:
        import h5py
    except ImportError:
        raise MrnnError("reading .h5 files needs h5py: pip install -e '.[convert]'") from None
    try:
        with h5py.File(path, "r") as f:
            root = f.get("model_weights", f)  # a whole model saved by model.save
            layers = _read_keras_layers(root, h5py)
    except Exception as error:  # h5py raises OSError, KeyError, ... for damaged files
        raise MrnnError(
            f"{path}: not a readable Keras .h5 weights file (truncated or damaged? {error})"
        ) from None
    loaded = {}
    for layer, weights in layers.items():
        for weight_name, array in weights.items():
            key = f"{layer}/{_keras_role(weight_name)}"
            if key in loaded:
                raise MrnnError(f"{path}: layer {layer} holds two weights named like {key}")
            loaded[key] = array
    for layer, ours in KERAS_LAYERS.items():
        kernel = loaded.get(f"{layer}/kernel")
        if ours in CONVS and kernel is not None and kernel.ndim == 4 and kernel.shape[:2] != (3, 3):
            raise MrnnError(_theano_message(path, f"{layer} kernel {kernel.shape}"))
    if any(layer.startswith("block") for layer in layers) and not set(KERAS_TOP) & set(layers):
        raise MrnnError(
            f"{path}: the file has no top layers (fc1, fc2, predictions; an include_top=False "
            "'_notop' file?); the fc7 features need the full "
            "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
        )
    params = expected_variables()["params"]
    expected = {
        f"{layer}/{role}": shape
        for layer, ours in KERAS_LAYERS.items()
        for role, shape in params[ours].items()
    }
    check_variables(path, loaded, expected)
    return {
        "params": {
            ours: {role: loaded[f"{layer}/{role}"] for role in ("kernel", "bias")}
            for layer, ours in KERAS_LAYERS.items()
        }
    }


def from_torch(state_dict: Mapping[str, np.ndarray], source: str = "state dict") -> dict:
    """The ``{"params": ...}`` of :class:`VGG16` from torchvision's ``vgg16`` state dict (as
    :func:`data_prep.weights.torch_files.load_state_dict` returns it).

    Raises :class:`MrnnError` naming ``source`` (the file) and listing the missing and
    unexpected keys and wrong shapes when the state dict is not VGG-16's.
    """
    params = expected_variables()["params"]
    expected = {}
    for prefix, ours in TORCH_LAYERS.items():
        shape = params[ours]["kernel"].shape
        # [kh, kw, in, out] -> Conv2d's [out, in, kh, kw]; [in, out] -> Linear's [out, in]
        shape = (shape[3], shape[2], *shape[:2]) if len(shape) == 4 else shape[::-1]
        expected[f"{prefix}.weight"] = jax.ShapeDtypeStruct(shape, jnp.float32)
        expected[f"{prefix}.bias"] = params[ours]["bias"]
    check_variables(source, state_dict, expected)
    converted = {}
    for prefix, ours in TORCH_LAYERS.items():
        weight = np.asarray(state_dict[f"{prefix}.weight"], np.float32)
        # Conv2d [out, in, kh, kw] -> [kh, kw, in, out]; Linear [out, in] -> [in, out].
        kernel = weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else weight.T
        bias = np.asarray(state_dict[f"{prefix}.bias"], np.float32)
        converted[ours] = {"kernel": np.ascontiguousarray(kernel), "bias": bias}
    # torchvision flattens pool5 in C, H, W order; VGG16's fc6 reads it in H, W, C order.
    height, width, channels = POOL5
    fc6 = converted["fc6"]["kernel"].reshape(channels, height, width, -1)
    converted["fc6"]["kernel"] = np.ascontiguousarray(
        fc6.transpose(1, 2, 0, 3).reshape(height * width * channels, -1)
    )
    return {"params": converted}


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise MrnnError(f"{path}: no such weights file")
    if os.path.getsize(path) == 0:
        raise MrnnError(f"{path}: empty file (an interrupted download?)")


def _read_keras_layers(root, h5py) -> dict[str, dict[str, np.ndarray]]:
    """``{layer name: {weight name: array}}`` of the layers that hold weights."""
    layers = {}
    for layer, group in root.items():
        if not isinstance(group, h5py.Group):
            continue
        if "weight_names" in group.attrs:
            names = [_text(n) for n in group.attrs["weight_names"]]
        else:  # no index: every dataset below the layer's group
            names = _dataset_paths(group, h5py)
        # Keras 2 and 3 names hold a "/" ("fc1/kernel:0"): h5py then nests a group per part.
        if names:
            layers[layer] = {n: np.asarray(group[n], dtype=np.float32) for n in names}
    return layers


def _text(name: bytes | str) -> str:
    return name.decode("utf8") if isinstance(name, bytes) else str(name)


def _dataset_paths(group, h5py) -> list[str]:
    paths = []
    group.visititems(
        lambda path, obj: paths.append(path) if isinstance(obj, h5py.Dataset) else None
    )
    return paths


def _keras_role(weight_name: str) -> str:
    """``kernel`` or ``bias`` for the weight names of all Keras versions: ``block1_conv1_W_1:0``
    (Keras 1), ``block1_conv1/kernel:0`` (Keras 2), ``block1_conv1/kernel`` (Keras 3)."""
    leaf = re.sub(r"_\d+$", "", weight_name.rsplit("/", 1)[-1].split(":")[0])
    if leaf == "kernel" or leaf == "W" or leaf.endswith("_W"):
        return "kernel"
    if leaf == "bias" or leaf == "b" or leaf.endswith("_b"):
        return "bias"
    return weight_name


def _theano_message(path: str, detail: str = "") -> str:
    found = f" ({detail}, i.e. [out, in, 3, 3])" if detail else ""
    return (
        f"{path}: Theano-ordered VGG-16 weights (th_dim_ordering){found} are not supported; "
        "use vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    )
