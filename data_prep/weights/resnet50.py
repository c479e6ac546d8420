"""torchvision / timm ``resnet50`` state dicts -> Flax variables of
:class:`mrnn_jax.encoders.resnet.ResNet50`.

Also holds the name-mapping driver shared with the AlexNet converter
(:func:`convert_state_dict`) and the guess of which network a state dict belongs to
(:func:`guess_architecture`), used to say "this is an AlexNet file" rather than list 300
missing names.

Usage::

    from data_prep.weights import resnet50, torch_files
    variables = resnet50.from_torch(torch_files.load_state_dict(path), source=path)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mrnn_jax.encoders.resnet import STAGES, ResNet50
from mrnn_jax.encoders.weights import TORCHVISION, check_variables
from mrnn_jax.errors import MrnnError

ARCHITECTURE = "resnet50"
PREPROCESSING = TORCHVISION


class Kind(NamedTuple):
    """How a kind of Flax parameter is stored in torch."""

    torch_shape: Callable[[tuple[int, ...]], tuple[int, ...]]  # of a Flax shape
    to_flax: Callable[[np.ndarray], np.ndarray]  # Flax array of a torch array


KINDS: dict[str, Kind] = {
    # Flax [kh, kw, in, out] <- torch [out, in, kh, kw]
    "conv": Kind(lambda s: (s[3], s[2], s[0], s[1]), lambda a: a.transpose(2, 3, 1, 0)),
    # Flax [in, out] <- torch [out, in]
    "linear": Kind(lambda s: (s[1], s[0]), lambda a: a.T),
    "vector": Kind(tuple, lambda a: a),
}

# Layout of one torch parameter: (Flax path inside "params", kind).
Layout = dict[str, tuple[tuple[str, ...], str]]

_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def expected_variables() -> dict:
    """Shapes (``jax.ShapeDtypeStruct``) of the Flax variables of :class:`ResNet50`."""
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    return jax.eval_shape(ResNet50().init, jax.random.PRNGKey(0), images)


def torch_layout(params: Mapping) -> Layout:
    """``{torch name: (Flax path, kind)}`` for the parameters ``params`` of a ResNet50."""
    layout: Layout = {}
    for path, _ in _leaves(params):
        *modules, leaf = path
        torch_modules = []
        for module in modules:
            match = re.fullmatch(r"layer(\d)_(\d+)", module)
            if match:
                torch_modules += [f"layer{match[1]}", match[2]]
            elif module == "downsample_conv":
                torch_modules += ["downsample", "0"]
            elif module == "downsample_bn":
                torch_modules += ["downsample", "1"]
            else:
                torch_modules.append(module)
        if leaf == "kernel":
            kind, torch_leaf = ("linear" if modules == ["fc"] else "conv"), "weight"
        elif leaf == "bias" and modules == ["fc"]:
            kind, torch_leaf = "vector", "bias"
        else:
            kind, torch_leaf = "vector", _BN_NAMES[leaf]
        layout[".".join([*torch_modules, torch_leaf])] = (tuple(path), kind)
    return layout


def from_torch(state_dict: Mapping[str, Any], source: str = "state dict") -> dict:
    """Flax variables ``{"params": ...}`` of :class:`ResNet50` from a torchvision or timm
    ``resnet50`` state dict (names as ``torch_files.load_state_dict`` returns them).

    Raises :class:`MrnnError` naming ``source`` when the state dict is of another network or
    has missing or unexpected entries or wrong shapes.
    """
    return convert_state_dict(
        state_dict, source, ARCHITECTURE, expected_variables(), torch_layout, KINDS
    )


def convert_state_dict(
    state_dict: Mapping[str, Any],
    source: str,
    architecture: str,
    expected: Mapping,
    layout_of: Callable[[Mapping], Layout],
    kinds: Mapping[str, Kind],
) -> dict:
    """Flax variables ``{"params": ...}`` shaped as ``expected`` from a torch state dict,
    each torch entry placed and transformed as ``layout_of(expected["params"])`` and
    ``kinds`` say. ``num_batches_tracked`` counters are ignored.

    Raises :class:`MrnnError` naming ``source``: for a state dict of another network, and
    listing missing or unexpected torch names and wrong shapes.
    """
    state = {
        name: value
        for name, value in state_dict.items()
        if not name.endswith("num_batches_tracked")
    }
    layout = layout_of(expected["params"])
    guessed = guess_architecture(state)
    if guessed is not None and guessed != architecture:
        raise MrnnError(
            f"{source}: holds {guessed} weights, not {architecture} (wrong file, or the "
            "wrong architecture chosen for it)"
        )
    known = len(set(state) & set(layout))
    if known < len(layout) // 2:
        sample = ", ".join(sorted(state)[:5])
        raise MrnnError(
            f"{source}: not a torchvision/timm {architecture} state dict (only {known} of its "
            f"{len(layout)} parameter names found; the file has e.g. {sample})"
        )
    torch_shapes = {
        name: jax.ShapeDtypeStruct(
            kinds[kind].torch_shape(_get(expected["params"], path).shape), np.float32
        )
        for name, (path, kind) in layout.items()
    }
    check_variables(source, state, torch_shapes)
    params: dict = {}
    for name, (path, kind) in layout.items():
        array = np.ascontiguousarray(kinds[kind].to_flax(np.asarray(state[name], np.float32)))
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = array
    variables = {"params": params}
    check_variables(source, variables, expected)
    return variables


def guess_architecture(names: Iterable[str]) -> str | None:
    """Which torchvision-style network a state dict with these parameter names is, if known:
    ``alexnet``, ``vgg16``/``vgg``, ``resnet18/34`` (basic blocks), ``resnet50``,
    ``resnet101``, ``resnet152``; None otherwise."""
    names = set(names)
    if "features.0.weight" in names:
        if "classifier.1.weight" in names:
            return "alexnet"
        if "classifier.0.weight" in names:
            return "vgg16" if "features.28.weight" in names and len(names) == 32 else "vgg"
    if "layer1.0.conv1.weight" in names:
        if "layer1.0.conv3.weight" not in names:
            return "resnet18/34"
        layer3 = {int(m[1]) for n in names if (m := re.match(r"layer3\.(\d+)\.", n))}
        blocks = max(layer3, default=-1) + 1
        return {STAGES[2][0]: "resnet50", 23: "resnet101", 36: "resnet152"}.get(blocks)
    return None


def _leaves(tree: Mapping, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out += _leaves(value, (*prefix, key))
        else:
            out.append(((*prefix, key), value))
    return out


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree
