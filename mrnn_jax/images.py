"""Loading user images as fixed-size RGB arrays.

Every place that accepts an image from a user goes through :func:`load_image`, so odd
files behave the same everywhere: EXIF orientation is applied, every PIL mode becomes
8-bit RGB (transparent pixels are composited onto a WHITE background), and unreadable
files raise :class:`ImageError` with a one-line message naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mrnn_jax.errors import MrnnError

RESIZE_MODES: tuple[str, ...] = ("center_crop", "squash")

_WHITE = (255, 255, 255)
# Modes whose alpha channel is composited onto white after conversion to RGBA.
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})


class ImageError(MrnnError):
    """An image file that cannot be used: missing, empty, not an image, or corrupt."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Return ``image`` as an 8-bit ``"RGB"`` image (the same object if already RGB
    without transparency).

    Handles every mode PIL reads: bilevel ``1``, grey ``L``, palette ``P``, ``CMYK``,
    ``YCbCr``, ``LAB``, ``HSV``, 16-bit grey ``I;16*`` (scaled by 1/257, so 65535 -> 255),
    32-bit ``I`` (treated as 16-bit when its values lie in 0..65535, otherwise stretched
    from its min..max to 0..255) and float ``F`` (values in 0..1 are scaled by 255,
    values in 0..255 are kept, anything else is stretched from min..max; NaN -> 0).
    Images with an alpha channel or a transparency key (``RGBA``, ``LA``, ``PA``,
    premultiplied ``RGBa`` / ``La``, and ``P`` / ``L`` / ``RGB`` with ``transparency``)
    are composited onto a white background. Raises :class:`ImageError` for a mode PIL
    cannot convert.
    """
    mode = image.mode
    has_transparency = "transparency" in image.info
    if mode == "RGB" and not has_transparency:
        return image
    if mode == "La":
        image, mode = image.convert("LA"), "LA"
    if mode in _ALPHA_MODES or (has_transparency and mode in ("P", "L", "RGB", "1")):
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_array_to_rgb(np.asarray(image).astype(np.float64) / 257.0)
    if mode == "I":
        values = np.asarray(image).astype(np.float64)
        if values.size and values.min() >= 0 and values.max() <= 65535:
            return _grey_array_to_rgb(values / 257.0)
        return _grey_array_to_rgb(_stretch(values))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0)
        finite = values[np.isfinite(values)]
        if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1):
            values = values * 255.0
        elif not (finite.min() >= 0 and finite.max() <= 255):
            values = _stretch(values)
        return _grey_array_to_rgb(values)
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"unsupported image mode {mode!r} ({e})") from e


def _stretch(values: np.ndarray) -> np.ndarray:
    """Linearly map the finite range of ``values`` onto 0..255 (constant -> 0)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) * (255.0 / (high - low))


def _grey_array_to_rgb(values: np.ndarray) -> Image.Image:
    """Round and clip a 2-D grey array in 0..255 and return it as an RGB image."""
    grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(grey)).convert("RGB")


def _check_args(size: int, resize: str) -> None:
    """Raise MrnnError for a bad output size or an unknown resize mode."""
    if resize not in RESIZE_MODES:
        raise MrnnError(
            f"unknown resize mode {resize!r}; expected one of {', '.join(RESIZE_MODES)}"
        )
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise MrnnError(f"image size must be an integer >= 1, got {size!r}")


def _resize(image: Image.Image, size: int, resize: str, crop_fraction: float = 1.0) -> Image.Image:
    """Resize an RGB image to ``size`` x ``size`` with the given mode."""
    width, height = image.size
    if resize == "squash":
        return image.resize((size, size), Image.Resampling.BICUBIC)
    # center_crop: scaling the shorter side to `size / crop_fraction` and cutting the central
    # size x size square is the same as resampling the central min(w, h) * crop_fraction
    # square of the source to size x size; doing it in one step avoids a huge intermediate
    # for very elongated images.
    side = min(width, height) * crop_fraction
    left = (width - side) / 2.0
    top = (height - side) / 2.0
    return image.resize(
        (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
    )


def load_image(
    path: str | os.PathLike[str],
    size: int,
    resize: str = "center_crop",
    crop_fraction: float = 1.0,
) -> np.ndarray:
    """Load an image file as a uint8 RGB array of shape ``[size, size, 3]``.

    EXIF orientation is applied, the image is converted to RGB with :func:`to_rgb`
    (alpha composited onto white) and resized with bicubic, antialiased resampling:
    ``"center_crop"`` scales the shorter side to ``size / crop_fraction`` and keeps the
    central ``size`` square (the ImageNet convention: 256 then 224 is ``crop_fraction``
    0.875); ``"squash"`` resizes straight to ``size`` x ``size``, ignoring the aspect
    ratio. Multi-frame files (GIF, TIFF) use their first frame.

    Raises :class:`ImageError` (message starting with the path) for a missing, empty,
    unreadable, non-image, truncated or corrupt file, and :class:`MrnnError` for an
    unknown ``resize`` mode or a bad ``size``.
    """
    _check_args(size, resize)
    name = os.fspath(path)
    try:
        if os.path.isdir(name):
            raise ImageError(f"{name}: is a directory, not an image file")
        if os.path.getsize(name) == 0:
            raise ImageError(f"{name}: empty file (0 bytes)")
        with Image.open(name) as img:
            try:
                img.load()
            except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
                raise ImageError(f"{name}: truncated or corrupt image ({e})") from e
            image = _apply_exif_orientation(img, name)
            rgb = to_rgb(image)
            out = _resize(rgb, int(size), resize, crop_fraction)
    except FileNotFoundError as e:
        raise ImageError(f"{name}: no such file") from e
    except PermissionError as e:
        raise ImageError(f"{name}: cannot read (permission denied)") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not a readable image (unrecognised image format)") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large ({e})") from e
    except ImageError as e:
        if str(e).startswith(name):
            raise
        raise ImageError(f"{name}: {e}") from e
    except OSError as e:
        raise ImageError(f"{name}: cannot read ({e.strerror or e})") from e
    array = np.array(out, dtype=np.uint8)
    if array.shape != (size, size, 3):  # defensive: PIL should never do otherwise
        raise ImageError(f"{name}: unexpected decoded shape {array.shape}")
    return array


def _apply_exif_orientation(image: Image.Image, name: str) -> Image.Image:
    """Return ``image`` turned upright according to its EXIF orientation tag.

    Broken EXIF metadata is not fatal: the image is used as stored, with a warning.
    """
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:  # malformed EXIF comes in many exception types
        warnings.warn(
            f"{name}: ignoring unreadable EXIF orientation ({e})", RuntimeWarning, stacklevel=3
        )
        return image


def load_images(
    paths: Sequence[str | os.PathLike[str]],
    size: int,
    resize: str = "center_crop",
    crop_fraction: float = 1.0,
) -> np.ndarray:
    """Load several images with :func:`load_image`; returns uint8 ``[N, size, size, 3]``.

    An empty ``paths`` gives an array of shape ``[0, size, size, 3]``.
    """
    _check_args(size, resize)
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = load_image(path, size, resize, crop_fraction)
    return out
