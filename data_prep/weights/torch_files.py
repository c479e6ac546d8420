"""Reading PyTorch weight files as NumPy: ``.pth`` / ``.pt`` (``torch.save``; needs torch)
and ``.safetensors`` (needs only the safetensors package)."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from mrnn_jax.errors import MrnnError

# Wrappers that training scripts put around a state dict (timm, Lightning, DDP checkpoints).
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """``{parameter name: float32 array}`` of a PyTorch checkpoint or safetensors file.

    Unwraps ``{"state_dict": ...}``-style checkpoints and strips DataParallel's ``module.``
    prefix. Raises :class:`MrnnError` naming the file when it is missing, truncated or
    damaged, not a state dict, or when torch is needed but not installed.
    """
    if not os.path.isfile(path):
        raise MrnnError(f"{path}: no such weights file")
    if os.path.getsize(path) == 0:
        raise MrnnError(f"{path}: empty file (an interrupted download?)")
    state = _read_safetensors(path) if path.endswith(".safetensors") else _read_torch(path)
    for key in WRAPPER_KEYS:
        if key in state and isinstance(state[key], dict):
            state = state[key]
            break
    arrays = {}
    for name, value in state.items():
        if not hasattr(value, "shape"):
            continue  # e.g. a step counter stored beside the weights
        name = name.removeprefix("module.")
        if hasattr(value, "detach"):  # a tensor inside a wrapper, possibly bfloat16
            value = value.detach().float().numpy()
        arrays[name] = np.asarray(value, dtype=np.float32)
    if not arrays:
        raise MrnnError(f"{path}: holds no weight tensors")
    return arrays


def _read_safetensors(path: str) -> dict:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise MrnnError(
            "reading .safetensors needs the safetensors package: pip install -e '.[convert]'"
        ) from None
    try:
        return dict(load_file(path))
    except Exception as error:  # safetensors raises its own error types for damaged headers
        raise MrnnError(f"{path}: not a readable safetensors file (truncated? {error})") from None


def _read_torch(path: str) -> dict:
    try:
        import torch
    except ImportError:
        raise MrnnError(
            f"{path}: reading a .pth file needs PyTorch (pip install torch); or convert it to "
            ".safetensors where torch is installed"
        ) from None
    if not zipfile.is_zipfile(path):
        raise MrnnError(
            f"{path}: not a torch.save zip archive (truncated or damaged; legacy pre-1.6 "
            "files must be re-saved with a current PyTorch)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged archives
        raise MrnnError(f"{path}: cannot read the PyTorch file ({error})") from None
    if not isinstance(state, dict):
        raise MrnnError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return {
        k: (v.detach().float().numpy() if hasattr(v, "detach") else v) for k, v in state.items()
    }
