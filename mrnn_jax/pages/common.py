"""What the pages share: the jinja2 templates (``templates/*.html.j2``, autoescaped), the
filters that format values, image thumbnails (embedded PNGs or links relative to the page)
and the atomic write.

Every page is one self-contained HTML file: images are embedded as PNG data URIs (or linked
by a path relative to the page), style sheets and scripts are inline, and nothing is fetched
from the network.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import math
import numbers
import os
import urllib.parse
from pathlib import Path

import jinja2
import numpy as np
from PIL import Image

from mrnn_jax.files import write_text_atomic

THUMB_WIDTH = 160
"""Displayed width of every image, in CSS pixels; smaller images are scaled up pixelated."""

MAX_EMBEDDED_SIDE = 2 * THUMB_WIDTH
"""Embedded images with a longer side are shrunk to this many pixels to keep the page small."""


@functools.cache
def environment() -> jinja2.Environment:
    """The templates of ``mrnn_jax/pages/templates``: every ``{{ value }}`` HTML-escaped;
    block tags take their own line out of the page."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mrnn_jax.pages", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(value=format_value, number=format_number, attr_number=attr_number)
    return env


def render(template: str, **context: object) -> str:
    """The page ``templates/<template>`` rendered with ``context``."""
    return environment().get_template(template).render(**context)


def write_page(target: str, text: str, what: str) -> None:
    """Write a page through a temporary file in the same folder (see
    :func:`mrnn_jax.files.write_text_atomic`): readers never see half a page."""
    write_text_atomic(target, text, what)


# --- values ------------------------------------------------------------------------------


def is_missing(value: object) -> bool:
    return value is None or (isinstance(value, numbers.Real) and math.isnan(float(value)))


def format_number(value: float | None, digits: int = 4) -> str:
    """Integers as they are, other numbers to ``digits`` decimals, None/NaN as n/a."""
    if is_missing(value):
        return "n/a"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def format_value(value: float | str | None) -> str:
    """How a metric value is shown: numbers to 4 decimals, text as is, None/NaN as n/a."""
    if isinstance(value, str):
        return value
    return format_number(value)


def attr_number(value: float | None) -> str:
    """A number for a ``data-`` attribute that both ``float()`` and JavaScript's
    ``parseFloat`` read back exactly; empty for a missing value."""
    if is_missing(value):
        return ""
    number = float(value)
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


# --- images ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Thumb:
    """An ``<img class="thumb">`` (the template macro ``thumb`` draws it); ``width`` and
    ``height`` are ``None`` when the image's size is unknown."""

    src: str
    alt: str
    css_class: str
    width: int | None = None
    height: int | None = None


def thumbnail(
    image: np.ndarray | None,
    image_path: str | os.PathLike[str] | None,
    image_id: str | int,
    page_dir: str,
) -> Thumb | None:
    """The thumbnail of embedded pixels or of a file linked relative to the page's folder,
    or ``None`` (a "no image" placeholder) when there is neither.

    Raises ``ValueError`` when both are given or the pixels are not uint8 ``[H, W, 3]`` /
    ``[H, W]``."""
    alt = f"image {image_id}"
    if image is not None and image_path is not None:
        raise ValueError(f"item {image_id!r}: give either image or image_path, not both")
    if image is not None:
        src, size = _png_data_uri(image, image_id)
    elif image_path is not None:
        src, size = _relative_url(image_path, page_dir), _image_size(image_path)
    else:
        return None
    if size is None:
        return Thumb(src, alt, "thumb")
    width, height = size
    css_class = "thumb pixelated" if width < THUMB_WIDTH else "thumb"
    return Thumb(src, alt, css_class, THUMB_WIDTH, max(1, round(THUMB_WIDTH * height / width)))


def _png_data_uri(image: np.ndarray, image_id: str | int) -> tuple[str, tuple[int, int]]:
    """A ``data:image/png;base64,`` URI of the pixels, and the encoded (width, height)."""
    pixels = np.asarray(image)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if (
        pixels.dtype != np.uint8
        or pixels.ndim not in (2, 3)
        or (pixels.ndim == 3 and pixels.shape[2] != 3)
        or 0 in pixels.shape
    ):
        raise ValueError(
            f"item {image_id!r}: image must be uint8 pixels of shape [H, W, 3] or [H, W], "
            f"got {pixels.dtype} {pixels.shape}"
        )
    pil = Image.fromarray(np.ascontiguousarray(pixels))
    if max(pil.size) > MAX_EMBEDDED_SIDE:
        pil.thumbnail((MAX_EMBEDDED_SIDE, MAX_EMBEDDED_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", optimize=True)
    return png_data_uri(buffer.getvalue()), pil.size


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _relative_url(image_path: str | os.PathLike[str], page_dir: str) -> str:
    """The URL of ``image_path`` relative to the page's folder (percent-encoded)."""
    absolute = os.path.abspath(os.fspath(image_path))
    try:
        relative = os.path.relpath(absolute, page_dir)
    except ValueError:  # another drive on Windows: no relative path exists
        return Path(absolute).as_uri()
    return urllib.parse.quote(Path(relative).as_posix())


def _image_size(image_path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(width, height) of an image file from its header, or ``None`` if it cannot be read."""
    try:
        with Image.open(image_path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
