"""torchvision ``alexnet`` state dicts -> Flax variables of
:class:`mrnn_jax.encoders.alexnet.AlexNet`.

torch flattens pool5 in C, H, W order before ``classifier.1`` (fc6); the Flax model flattens
NHWC maps in H, W, C order, so fc6's input axis is permuted here.

Usage::

    from data_prep.weights import alexnet, torch_files
    variables = alexnet.from_torch(torch_files.load_state_dict(path), source=path)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from data_prep.weights.resnet50 import KINDS, Kind, Layout, convert_state_dict
from mrnn_jax.encoders.alexnet import CONVS, POOL5_SIZE, AlexNet
from mrnn_jax.encoders.weights import TORCHVISION

ARCHITECTURE = "alexnet"
PREPROCESSING = TORCHVISION

# Flax layer -> torch module in torchvision's AlexNet.
TORCH_MODULES = {
    "conv1": "features.0",
    "conv2": "features.3",
    "conv3": "features.6",
    "conv4": "features.8",
    "conv5": "features.10",
    "fc6": "classifier.1",
    "fc7": "classifier.4",
    "fc8": "classifier.6",
}
POOL5_CHANNELS = CONVS[-1][1]


def _fc6_to_flax(weight: np.ndarray) -> np.ndarray:
    """torch fc6 weight ``[out, C*H*W]`` -> Flax kernel ``[H*W*C, out]``."""
    out = weight.shape[0]
    weight = weight.reshape(out, POOL5_CHANNELS, POOL5_SIZE, POOL5_SIZE)
    return weight.transpose(2, 3, 1, 0).reshape(-1, out)


def expected_variables() -> dict:
    """Shapes (``jax.ShapeDtypeStruct``) of the Flax variables of :class:`AlexNet`."""
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    return jax.eval_shape(AlexNet().init, jax.random.PRNGKey(0), images)


def torch_layout(params: Mapping) -> Layout:
    """``{torch name: (Flax path, kind)}`` for the parameters ``params`` of an AlexNet."""
    layout: Layout = {}
    for layer, module in TORCH_MODULES.items():
        for leaf in params[layer]:
            if leaf == "bias":
                kind = "vector"
            elif layer == "fc6":
                kind = "fc6"
            else:
                kind = "conv" if layer.startswith("conv") else "linear"
            torch_leaf = "weight" if leaf == "kernel" else leaf
            layout[f"{module}.{torch_leaf}"] = ((layer, leaf), kind)
    unmapped = set(params) - set(TORCH_MODULES)
    assert not unmapped, f"AlexNet layers without a torch name: {unmapped}"
    return layout


def from_torch(state_dict: Mapping[str, Any], source: str = "state dict") -> dict:
    """Flax variables ``{"params": ...}`` of :class:`AlexNet` from a torchvision ``alexnet``
    state dict (names as ``torch_files.load_state_dict`` returns them).

    Raises :class:`MrnnError` naming ``source`` when the state dict is of another network or
    has missing or unexpected entries or wrong shapes.
    """
    return convert_state_dict(
        state_dict,
        source,
        ARCHITECTURE,
        expected_variables(),
        torch_layout,
        {**KINDS, "fc6": Kind(KINDS["linear"].torch_shape, _fc6_to_flax)},
    )
