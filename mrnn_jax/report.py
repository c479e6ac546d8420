"""A results page: one self-contained HTML file showing, for each image, the generated
captions with their log-probabilities, the reference captions and a per-image score.

The page needs nothing but a browser: images are embedded as PNG data URIs (or linked by a
path relative to the page), the style sheet and the few lines of JavaScript that sort the
items by score are inline, and nothing is fetched from the network.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import html
import io
import math
import numbers
import os
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mrnn_jax.errors import MrnnError

THUMB_WIDTH = 160
"""Displayed width of every image, in CSS pixels; smaller images are scaled up pixelated."""

MAX_EMBEDDED_SIDE = 2 * THUMB_WIDTH
"""Embedded images with a longer side are shrunk to this many pixels to keep the page small."""

SORT_ORDERS = ("original", "score-desc", "score-asc")
"""Values of the sort control. The page also reads ``#sort=<value>`` from its address (so a
sorted view can be bookmarked) and writes it there when the control changes."""


@dataclasses.dataclass
class ReportItem:
    """One image on the results page.

    Attributes:
      image_id: shown on the page and written to the item's ``data-image-id`` attribute.
      captions: generated captions with their log-probabilities, best first.
      references: the reference captions.
      score: the per-image score (e.g. CIDEr-D) the page sorts by; ``None`` if unknown.
      image: uint8 ``[H, W, 3]`` (or ``[H, W]`` grey) pixels to embed in the page.
      image_path: instead of ``image``, an image file to link (absolute, or relative to the
        current directory); the page refers to it relative to its own folder.
    """

    image_id: str | int
    captions: list[tuple[str, float]]
    references: list[str]
    score: float | None = None
    image: np.ndarray | None = None
    image_path: str | None = None


_CSS = """\
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; background: #fafafa; }
h1 { margin: 0 0 .75rem; font-size: 1.5rem; }
table.summary { border-collapse: collapse; margin-bottom: 1rem; }
table.summary th, table.summary td { border: 1px solid #ccc; padding: .25rem .75rem; }
table.summary th { text-align: left; background: #eee; font-weight: 600; }
table.summary td { text-align: right; font-variant-numeric: tabular-nums; }
.controls { margin-bottom: 1rem; }
.items { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr));
  gap: .75rem; }
.item { display: flex; gap: .75rem; background: #fff; border: 1px solid #ddd;
  border-radius: 6px; padding: .75rem; }
.item figure { margin: 0; flex: 0 0 160px; text-align: center; }
.thumb { width: 160px; height: auto; display: block; background: #eee; }
.thumb.pixelated { image-rendering: pixelated; }
.no-image { width: 160px; height: 160px; display: flex; align-items: center;
  justify-content: center; background: #eee; color: #888; }
figcaption { font-size: .8rem; color: #555; margin-top: .25rem; overflow-wrap: anywhere; }
.text { flex: 1; min-width: 0; }
.text h2 { font-size: .8rem; text-transform: uppercase; color: #777; margin: .5rem 0 .25rem; }
.text h2:first-child { margin-top: 0; }
.text ol, .text ul { margin: 0; padding-left: 1.25rem; }
.text li { margin: .1rem 0; }
.caption { font-weight: 600; }
.logprob, .empty { color: #777; font-size: .85rem; }
.logprob { white-space: nowrap; }
.score { font-variant-numeric: tabular-nums; }
"""

_SORT_SCRIPT = """\
(function () {
  "use strict";
  var grid = document.getElementById("items");
  var select = document.getElementById("sort-order");
  var items = Array.prototype.slice.call(grid.querySelectorAll(".item"));
  function index(el) { return parseInt(el.getAttribute("data-index"), 10); }
  function score(el) {
    var s = el.getAttribute("data-score");
    return s === "" ? NaN : parseFloat(s);
  }
  function sortItems(order) {
    var sorted = items.slice();
    if (order === "score-asc" || order === "score-desc") {
      var sign = order === "score-asc" ? 1 : -1;
      sorted.sort(function (a, b) {
        var x = score(a), y = score(b);
        if (isNaN(x) !== isNaN(y)) { return isNaN(x) ? 1 : -1; }  // no score: last
        var d = isNaN(x) || x === y ? 0 : sign * (x < y ? -1 : 1);
        return d || index(a) - index(b);
      });
    } else {
      sorted.sort(function (a, b) { return index(a) - index(b); });
    }
    sorted.forEach(function (el) { grid.appendChild(el); });
  }
  var match = /^#sort=([a-z-]+)$/.exec(window.location.hash);
  if (match && select.querySelector('option[value="' + match[1] + '"]')) {
    select.value = match[1];
  }
  sortItems(select.value);
  select.addEventListener("change", function () {
    sortItems(select.value);
    if (window.history && window.history.replaceState) {
      try { window.history.replaceState(null, "", "#sort=" + select.value); } catch (e) {}
    }
  });
})();
"""


def write_html(
    path: str | os.PathLike[str],
    items: Sequence[ReportItem],
    *,
    title: str,
    summary: Mapping[str, float | str | None] | None = None,
    score_name: str = "CIDEr-D",
) -> None:
    """Write a self-contained HTML results page for ``items`` to ``path``.

    The page shows ``title``, a table of the corpus metrics in ``summary`` (``None`` shown as
    "n/a"), a control that sorts the items by score (descending, ascending) or restores the
    given order, then one card per item with its image, generated captions with their
    log-probabilities, references and ``score_name`` score. Items without a score sort last.
    Images are shown :data:`THUMB_WIDTH` pixels wide; embedded ones with a side longer than
    :data:`MAX_EMBEDDED_SIDE` are shrunk to it first.
    The file is replaced atomically: readers never see a half-written page, and on failure
    no new file is left behind. Parent directories are created if needed.

    Raises ``ValueError`` for an item whose ``image`` is not uint8 ``[H, W, 3]`` / ``[H, W]``
    pixels or that sets both ``image`` and ``image_path``, and :class:`MrnnError` when the
    file cannot be written.
    """
    target = os.fspath(path)
    page_dir = os.path.dirname(os.path.abspath(target))
    text = _render_page(
        items, title=title, summary=summary, score_name=score_name, page_dir=page_dir
    )
    _write_atomic(target, text)


def _render_page(
    items: Sequence[ReportItem],
    *,
    title: str,
    summary: Mapping[str, float | str | None] | None,
    score_name: str,
    page_dir: str,
) -> str:
    esc = html.escape
    cards = [_render_item(i, item, score_name, page_dir) for i, item in enumerate(items)]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>\n{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{esc(title)}</h1>",
    ]
    if summary:
        parts.append('<table class="summary">')
        for name, value in summary.items():
            parts.append(
                f'<tr><th scope="row">{esc(str(name))}</th>'
                f'<td data-metric="{esc(str(name))}">{esc(_format_value(value))}</td></tr>'
            )
        parts.append("</table>")
    parts += [
        "</header>",
        '<div class="controls">',
        '<label for="sort-order">Sort by</label>',
        '<select id="sort-order" autocomplete="off">',
        *(
            f'<option value="{order}"{" selected" if order == "original" else ""}>'
            f"{esc(label)}</option>"
            for order, label in zip(
                SORT_ORDERS,
                ("original order", f"{score_name}, highest first", f"{score_name}, lowest first"),
                strict=True,
            )
        ),
        "</select>",
        f'<span class="count">{len(cards)} image{"" if len(cards) == 1 else "s"}</span>',
        "</div>",
        '<main id="items" class="items">',
        *cards,
        "</main>",
        f"<script>\n{_SORT_SCRIPT}</script>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def _render_item(index: int, item: ReportItem, score_name: str, page_dir: str) -> str:
    esc = html.escape
    image_id = str(item.image_id)
    captions = "\n".join(
        f'<li><span class="caption">{esc(str(text))}</span> '
        f'<span class="logprob" data-logprob="{esc(_attr_number(logprob))}">'
        f"(log p {esc(_format_number(logprob, 3))})</span></li>"
        for text, logprob in item.captions
    )
    references = "\n".join(f'<li class="reference">{esc(str(r))}</li>' for r in item.references)
    none = '<p class="empty">none</p>'
    return "\n".join(
        [
            f'<article class="item" data-index="{index}" data-image-id="{esc(image_id)}" '
            f'data-score="{esc(_attr_number(item.score))}">',
            f"<figure>{_render_image(item, page_dir)}",
            f"<figcaption>{esc(image_id)}</figcaption></figure>",
            '<div class="text">',
            f'<p class="score">{esc(score_name)}: '
            f'<span class="score-value">{esc(_format_value(item.score))}</span></p>',
            "<h2>Generated</h2>",
            f'<ol class="captions">\n{captions}\n</ol>' if item.captions else none,
            "<h2>References</h2>",
            f'<ul class="references">\n{references}\n</ul>' if item.references else none,
            "</div>",
            "</article>",
        ]
    )


def _render_image(item: ReportItem, page_dir: str) -> str:
    """The ``<img class="thumb">`` of an item, or a placeholder when it has no image."""
    alt = html.escape(f"image {item.image_id}")
    if item.image is not None and item.image_path is not None:
        raise ValueError(f"item {item.image_id!r}: give either image or image_path, not both")
    if item.image is not None:
        src, size = _png_data_uri(item.image, item.image_id)
    elif item.image_path is not None:
        src, size = _relative_url(item.image_path, page_dir), _image_size(item.image_path)
    else:
        return '<div class="no-image">no image</div>'
    attrs = ""
    css_class = "thumb"
    if size is not None:
        width, height = size
        attrs = f' width="{THUMB_WIDTH}" height="{max(1, round(THUMB_WIDTH * height / width))}"'
        if width < THUMB_WIDTH:
            css_class += " pixelated"
    return f'<img class="{css_class}" src="{html.escape(src)}" alt="{alt}"{attrs}>'


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
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"data:image/png;base64,{encoded}", pil.size


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


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, numbers.Real) and math.isnan(float(value)))


def _format_number(value: float, digits: int = 4) -> str:
    if _is_missing(value):
        return "n/a"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def _format_value(value: float | str | None) -> str:
    """How a metric value is shown: numbers to 4 decimals, text as is, None/NaN as n/a."""
    if isinstance(value, str):
        return value
    return _format_number(value)


def _attr_number(value: float | None) -> str:
    """A number for a ``data-`` attribute that both ``float()`` and JavaScript's
    ``parseFloat`` read back exactly; empty for a missing value."""
    if _is_missing(value):
        return ""
    number = float(value)
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    return repr(number)


def _write_atomic(target: str, text: str) -> None:
    """Write ``text`` to ``target`` through a temporary file in the same folder."""
    directory = os.path.dirname(os.path.abspath(target))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp"
        )
    except OSError as e:
        raise MrnnError(f"{target}: cannot write the results page ({e.strerror or e})") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise MrnnError(f"{target}: cannot write the results page ({e.strerror or e})") from e
        raise
