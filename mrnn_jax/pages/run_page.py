"""A results page: one self-contained HTML file showing, for each image, the generated
captions with their log-probabilities, the reference captions and a per-image score.

The page needs nothing but a browser: images are embedded as PNG data URIs (or linked by a
path relative to the page), the style sheet and the few lines of JavaScript that sort the
items by score are inline, and nothing is fetched from the network.

:func:`write_retrieval_html` writes a page of the same kind for image–sentence retrieval: the
R@K / rank table of each direction, then the top-k images retrieved for each sentence and the
top-k sentences retrieved for each image, the correct ones marked.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
import numbers
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mrnn_jax.files import write_text_atomic

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


@dataclasses.dataclass
class RetrievedImage:
    """One image retrieved for a sentence (see :class:`SentenceQuery`).

    Attributes:
      image_id: shown under the thumbnail and written to ``data-image-id``.
      score: the retrieval score (e.g. log P(S | I)); NaN or ``None`` shown as "n/a".
      correct: whether this is an image the sentence describes.
      image, image_path: the pixels to embed or a file to link, as for :class:`ReportItem`.
    """

    image_id: str | int
    score: float
    correct: bool
    image: np.ndarray | None = None
    image_path: str | None = None


@dataclasses.dataclass
class SentenceQuery:
    """Image retrieval: a sentence, its ground-truth image and the top-k images retrieved.

    Attributes:
      sentence: the query sentence.
      truth_image_id: the image the sentence belongs to.
      rank: 1-based rank of the first correct image among all images (may exceed k).
      retrieved: the top-k images, best first.
      truth_image, truth_image_path: the ground-truth image's pixels or file, if known.
    """

    sentence: str
    truth_image_id: str | int
    rank: int
    retrieved: list[RetrievedImage]
    truth_image: np.ndarray | None = None
    truth_image_path: str | None = None


@dataclasses.dataclass
class ImageQuery:
    """Sentence retrieval: an image and the top-k sentences retrieved for it.

    Attributes:
      image_id: the query image, shown and written to ``data-image-id``.
      rank: 1-based rank of the first correct sentence among all sentences (may exceed k).
      retrieved: the top-k ``(sentence, score, correct)``, best first.
      references: the image's own sentences.
      image, image_path: the pixels to embed or a file to link, as for :class:`ReportItem`.
    """

    image_id: str | int
    rank: int
    retrieved: list[tuple[str, float, bool]]
    references: list[str]
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
        *_page_start(title, _CSS),
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


def _page_start(title: str, css: str) -> list[str]:
    """The lines of a page up to and including ``<body>``: doctype, head, inline style."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>\n{css}</style>",
        "</head>",
        "<body>",
    ]


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
    return _image_html(item.image, item.image_path, item.image_id, page_dir)


def _image_html(
    image: np.ndarray | None,
    image_path: str | os.PathLike[str] | None,
    image_id: str | int,
    page_dir: str,
) -> str:
    """An ``<img class="thumb">`` of embedded pixels or of a file linked relative to the
    page's folder, or a placeholder when there is neither."""
    alt = html.escape(f"image {image_id}")
    if image is not None and image_path is not None:
        raise ValueError(f"item {image_id!r}: give either image or image_path, not both")
    if image is not None:
        src, size = _png_data_uri(image, image_id)
    elif image_path is not None:
        src, size = _relative_url(image_path, page_dir), _image_size(image_path)
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
    """Write the page through a temporary file in the same folder."""
    write_text_atomic(target, text, "results page")


# --- the retrieval page ------------------------------------------------------------------

RETRIEVAL_COLUMNS = ("R@1", "R@5", "R@10", "median rank", "mean rank")
"""Columns of the retrieval summary table, in order; other metrics found follow them."""

_RETRIEVAL_CSS = """\
nav.sections { margin-bottom: 1rem; }
nav.sections a { margin-right: 1rem; }
section.queries { margin-top: 1.5rem; }
section.queries > h2 { font-size: 1.2rem; margin: 0 0 .5rem; }
.count { color: #777; font-size: .9rem; margin: 0 0 .5rem; }
.query-list { display: flex; flex-direction: column; gap: .75rem; }
.query { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .75rem; }
.query-sentence { font-weight: 600; margin: 0 0 .25rem; }
.rank { margin: 0 0 .5rem; color: #555; }
.rank-value { font-weight: 600; color: #222; }
.image-row { display: flex; gap: 1rem; align-items: flex-start; }
.image-row figure, .image-query > figure { margin: 0; flex: 0 0 160px; text-align: center; }
.truth { flex: 0 0 auto; }
.truth .thumb, .truth .no-image { outline: 3px dashed #888; outline-offset: 2px; }
ol.retrieved-images { display: flex; flex-wrap: wrap; gap: .5rem; list-style: none;
  margin: 0; padding: 0; }
ol.retrieved-images li { border: 4px solid transparent; border-radius: 4px; padding: 2px; }
ol.retrieved-images li.correct { border-color: #2a8c2a; background: #e9f6e9; }
.image-query { display: flex; gap: .75rem; }
.text h3 { font-size: .8rem; text-transform: uppercase; color: #777; margin: .5rem 0 .25rem; }
ol.retrieved-sentences li { padding: .1rem .25rem; border-left: 4px solid transparent; }
ol.retrieved-sentences li.correct { border-left-color: #2a8c2a; background: #e9f6e9; }
.mark { color: #1f7a1f; font-weight: 700; }
"""

_SENTENCE_SECTION = ("images-for-a-sentence", "Images for a sentence")
_IMAGE_SECTION = ("sentences-for-an-image", "Sentences for an image")


def write_retrieval_html(
    path: str | os.PathLike[str],
    *,
    title: str,
    summary: Mapping[str, Mapping[str, float | str | None]] | None,
    sentence_queries: Sequence[SentenceQuery],
    image_queries: Sequence[ImageQuery],
) -> None:
    """Write a self-contained HTML page of image–sentence retrieval results to ``path``.

    The page shows ``title``; a table with one row per direction of ``summary`` (as returned
    by :func:`mrnn_jax.evaluation.retrieval.retrieval_metrics`:
    ``{"image retrieval": {"R@1": ...}}``) and the columns :data:`RETRIEVAL_COLUMNS` (missing
    values shown as "n/a"); the section
    "Images for a sentence" with, for each of ``sentence_queries``, the sentence, its rank,
    the ground-truth image and the retrieved images with their scores; and the section
    "Sentences for an image" with, for each of ``image_queries``, the image, its rank, the
    retrieved sentences with their scores and the references. Correct retrievals get the class
    ``correct``, a green frame and a check mark.

    Queries are ``<article class="query sentence-query" data-rank=...>`` and ``<article
    class="query image-query" data-image-id=... data-rank=...>``; retrieved entries have the
    class ``retrieved`` and a ``data-score``. Images are shown and embedded as by
    :func:`write_html`, and the file is written atomically in the same way.

    Raises ``ValueError`` for a bad image (as :func:`write_html`) or a rank that is not a
    positive integer, before anything is written, and :class:`MrnnError` when the file
    cannot be written.
    """
    target = os.fspath(path)
    page_dir = os.path.dirname(os.path.abspath(target))
    text = _render_retrieval_page(
        title=title,
        summary=summary,
        sentence_queries=sentence_queries,
        image_queries=image_queries,
        page_dir=page_dir,
    )
    _write_atomic(target, text)


def _render_retrieval_page(
    *,
    title: str,
    summary: Mapping[str, Mapping[str, float | str | None]] | None,
    sentence_queries: Sequence[SentenceQuery],
    image_queries: Sequence[ImageQuery],
    page_dir: str,
) -> str:
    esc = html.escape
    sentence_cards = [
        _render_sentence_query(i, q, page_dir) for i, q in enumerate(sentence_queries)
    ]
    image_cards = [_render_image_query(i, q, page_dir) for i, q in enumerate(image_queries)]
    parts = [
        *_page_start(title, _CSS + _RETRIEVAL_CSS),
        "<header>",
        f"<h1>{esc(title)}</h1>",
    ]
    if summary:
        parts.append(_render_retrieval_summary(summary))
    parts += [
        '<nav class="sections">',
        *(
            f'<a href="#{anchor}">{esc(name)}</a>'
            for anchor, name in (_SENTENCE_SECTION, _IMAGE_SECTION)
        ),
        "</nav>",
        "</header>",
        "<main>",
        _render_section(_SENTENCE_SECTION, "sentence-queries", sentence_cards, "sentence"),
        _render_section(_IMAGE_SECTION, "image-queries", image_cards, "image"),
        "</main>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(parts)


def _render_retrieval_summary(summary: Mapping[str, Mapping[str, float | str | None]]) -> str:
    """The summary table: one row per direction, one column per metric."""
    esc = html.escape
    columns = list(RETRIEVAL_COLUMNS)
    for metrics in summary.values():
        columns += [str(name) for name in metrics if str(name) not in columns]
    lines = [
        '<table class="summary retrieval-summary">',
        '<thead><tr><th scope="col">direction</th>'
        + "".join(f'<th scope="col">{esc(c)}</th>' for c in columns)
        + "</tr></thead>",
        "<tbody>",
    ]
    for direction, metrics in summary.items():
        values = {str(name): value for name, value in metrics.items()}
        cells = "".join(
            f'<td data-metric="{esc(c)}" data-value="{esc(_attr_value(values.get(c)))}">'
            f"{esc(_format_retrieval_value(c, values.get(c)))}</td>"
            for c in columns
        )
        lines.append(
            f'<tr data-direction="{esc(str(direction))}">'
            f'<th scope="row">{esc(str(direction))}</th>{cells}</tr>'
        )
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _format_retrieval_value(metric: str, value: float | str | None) -> str:
    """R@K (percent) to one decimal, ranks as short as exact (``3``, ``12.5``)."""
    if isinstance(value, str):
        return value
    if _is_missing(value):
        return "n/a"
    if metric.startswith("R@"):
        return f"{float(value):.1f}"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return f"{float(value):g}"


def _attr_value(value: float | str | None) -> str:
    return value if isinstance(value, str) else _attr_number(value)


def _render_section(section: tuple[str, str], css_class: str, cards: list[str], noun: str) -> str:
    anchor, heading = section
    count = f"{len(cards)} {noun}{'' if len(cards) == 1 else 's'}"
    if cards:
        body = '<div class="query-list">\n' + "\n".join(cards) + "\n</div>"
    else:
        body = '<p class="empty">none</p>'
    return "\n".join(
        [
            f'<section id="{anchor}" class="queries {css_class}">',
            f"<h2>{html.escape(heading)}</h2>",
            f'<p class="count">{count}</p>',
            body,
            "</section>",
        ]
    )


def _check_rank(rank: object, what: str) -> int:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"{what}: rank must be a positive integer (1-based), got {rank!r}")
    return int(rank)


def _render_rank(rank: int, shown: int, noun: str) -> str:
    note = "" if rank <= shown else f" (not among the top {shown} shown)"
    return (
        f'<p class="rank">first correct {noun} at rank '
        f'<span class="rank-value">{rank}</span>{html.escape(note)}</p>'
    )


def _retrieved_attrs(correct: bool, position: int, score: float | None) -> str:
    css_class = "retrieved correct" if correct else "retrieved"
    return (
        f'class="{css_class}" data-position="{position}" '
        f'data-score="{html.escape(_attr_number(score))}"'
    )


_MARK = '<span class="mark" title="correct">\u2713</span>'


def _render_sentence_query(index: int, query: SentenceQuery, page_dir: str) -> str:
    esc = html.escape
    what = f"sentence query {index}"
    rank = _check_rank(query.rank, what)
    truth_id = str(query.truth_image_id)
    truth = _image_html(query.truth_image, query.truth_image_path, query.truth_image_id, page_dir)
    entries = []
    for position, hit in enumerate(query.retrieved, start=1):
        correct = bool(hit.correct)
        image_id = str(hit.image_id)
        entries.append(
            f"<li {_retrieved_attrs(correct, position, hit.score)} "
            f'data-image-id="{esc(image_id)}">'
            f"<figure>{_image_html(hit.image, hit.image_path, hit.image_id, page_dir)}"
            f'<figcaption>{position}. {esc(image_id)} <span class="logprob">'
            f"({esc(_format_number(hit.score, 3))})</span>"
            f"{' ' + _MARK if correct else ''}</figcaption></figure></li>"
        )
    retrieved = (
        '<ol class="retrieved-images">\n' + "\n".join(entries) + "\n</ol>"
        if entries
        else '<p class="empty">none retrieved</p>'
    )
    return "\n".join(
        [
            f'<article class="query sentence-query" data-index="{index}" data-rank="{rank}" '
            f'data-truth-image-id="{esc(truth_id)}">',
            f'<p class="query-sentence">{esc(str(query.sentence))}</p>',
            _render_rank(rank, len(query.retrieved), "image"),
            '<div class="image-row">',
            f'<figure class="truth">{truth}',
            f"<figcaption>ground truth: {esc(truth_id)}</figcaption></figure>",
            retrieved,
            "</div>",
            "</article>",
        ]
    )


def _render_image_query(index: int, query: ImageQuery, page_dir: str) -> str:
    esc = html.escape
    what = f"image query {query.image_id!r}"
    rank = _check_rank(query.rank, what)
    image_id = str(query.image_id)
    entries = []
    for position, (sentence, score, correct) in enumerate(query.retrieved, start=1):
        correct = bool(correct)
        entries.append(
            f"<li {_retrieved_attrs(correct, position, score)}>"
            f'<span class="sentence">{esc(str(sentence))}</span> '
            f'<span class="logprob">({esc(_format_number(score, 3))})</span>'
            f"{' ' + _MARK if correct else ''}</li>"
        )
    references = "\n".join(f'<li class="reference">{esc(str(r))}</li>' for r in query.references)
    none = '<p class="empty">none</p>'
    return "\n".join(
        [
            f'<article class="query image-query" data-index="{index}" '
            f'data-image-id="{esc(image_id)}" data-rank="{rank}">',
            f"<figure>{_image_html(query.image, query.image_path, query.image_id, page_dir)}",
            f"<figcaption>{esc(image_id)}</figcaption></figure>",
            '<div class="text">',
            _render_rank(rank, len(query.retrieved), "sentence"),
            "<h3>Retrieved</h3>",
            '<ol class="retrieved-sentences">\n' + "\n".join(entries) + "\n</ol>"
            if entries
            else none,
            "<h3>References</h3>",
            f'<ul class="references">\n{references}\n</ul>' if query.references else none,
            "</div>",
            "</article>",
        ]
    )


# --- the training run's page -------------------------------------------------------------

RUN_REPORT = "report.html"
"""The training run's page, in its work directory."""

# Scalars not worth a curve: counts, and NLL (perplexity carries it).
_NOT_PLOTTED = ("num_words", "num_images", "nll_per_word", "tokens_per_second", "grad_norm")


def read_metrics(path: str | os.PathLike[str]) -> list[dict]:
    """The rows of a ``metrics.jsonl``, one per (split, step): a step logged twice (a run
    resumed from an earlier checkpoint) keeps its last row. A torn last line is skipped."""
    import json

    rows: dict[tuple[str, int], dict] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "step" in row and "split" in row:
                    rows[(str(row["split"]), int(row["step"]))] = row
    except FileNotFoundError:
        return []
    return sorted(rows.values(), key=lambda r: (int(r["step"]), str(r["split"])))


def curve_panels(rows: Sequence[Mapping], skip_splits: Sequence[str] = ()) -> dict[str, dict]:
    """The curves to draw, as ``{panel title: {line label: ([steps], [values])}}``.

    Panels: training loss; perplexity of training and of every evaluator prefix; the
    learning rate; then one per other evaluator scalar, scalars that differ only by a
    trailing n-gram order or K (``BLEU-1..4``, ``image R@1/5/10``) sharing a panel. Splits
    in ``skip_splits`` (the final evaluation's single points) are left out.
    """
    import re

    panels: dict[str, dict[str, tuple[list, list]]] = {}

    def add(panel: str, label: str, step: int, value: object) -> None:
        if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
            return
        steps, values = panels.setdefault(panel, {}).setdefault(label, ([], []))
        steps.append(step)
        values.append(float(value))

    for row in rows:
        split, step = str(row["split"]), int(row["step"])
        if split in skip_splits:
            continue
        for name, value in row.items():
            if name in ("step", "split", "time") or name in _NOT_PLOTTED:
                continue
            if split == "train" and name == "loss":
                add("loss", "train", step, value)
            elif name == "perplexity":
                add("perplexity", split, step, value)
            elif name == "learning_rate":
                add("learning rate", split, step, value)
            else:
                panel = re.sub(r"(-\d|@\d+)$", "", name)
                panel = re.sub(r"-$", "", panel)
                add(f"{split}/{panel}", name, step, value)
    first = ("loss", "perplexity", "learning rate")
    ordered = {p: panels[p] for p in first if p in panels}
    ordered.update({p: v for p, v in panels.items() if p not in first})
    return ordered


def training_curves_png(rows: Sequence[Mapping], skip_splits: Sequence[str] = ()) -> bytes:
    """The run's training curves (:func:`curve_panels`) drawn with matplotlib, as PNG bytes;
    perplexity on a log scale. A run with nothing logged yet gives a one-line notice."""
    from matplotlib.figure import Figure

    panels = curve_panels(rows, skip_splits)
    columns = 3
    count = max(len(panels), 1)
    lines = -(-count // columns)
    figure = Figure(figsize=(4.2 * columns, 3.0 * lines), dpi=100, layout="constrained")
    if not panels:
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, "nothing logged yet", ha="center", va="center")
        axes.set_axis_off()
    for index, (title, curves) in enumerate(panels.items()):
        axes = figure.add_subplot(lines, columns, index + 1)
        for label, (steps, values) in curves.items():
            axes.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=label)
        if title == "perplexity":
            from matplotlib.ticker import ScalarFormatter

            axes.set_yscale("log")
            axes.yaxis.set_major_formatter(ScalarFormatter())
            axes.yaxis.set_minor_formatter(ScalarFormatter())
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("step", fontsize=8)
        axes.tick_params(labelsize=8)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_run_report(workdir: str | os.PathLike[str], results: Mapping) -> str:
    """Writes ``workdir/report.html``: what the best checkpoint was selected by, the final
    evaluation of each split, the training curves (:func:`training_curves_png`, from
    ``workdir/metrics.jsonl``) and example captions. Returns the page's path."""
    esc = html.escape
    workdir = os.fspath(workdir)
    rows = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    splits = dict(results.get("splits", {}))
    png = training_curves_png(rows, skip_splits=tuple(splits))
    selected = results.get("selected_by", {})
    title = f"m-RNN training run: {os.path.basename(os.path.abspath(workdir))}"
    parts = [*_page_start(title, _CSS + _RUN_CSS), f"<h1>{esc(title)}</h1>"]
    parts.append(
        '<p class="selection">Best checkpoint: step '
        f'<b data-best-step="{esc(str(results.get("best_step")))}">'
        f"{esc(str(results.get('best_step')))}</b>, selected by "
        f'<b data-selected-by="{esc(str(selected.get("metric")))}">'
        f"{esc(str(selected.get('metric')))}</b> ({esc(str(selected.get('mode')))}imised) = "
        f"{esc(_format_value(selected.get('value')))}.</p>"
    )
    first = ("num_images", "perplexity", "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR")
    first += ("ROUGE-L", "CIDEr-D")
    found = dict.fromkeys(k for values in splits.values() for k in values)
    names = [n for n in first if n in found] + [n for n in found if n not in first]
    if splits:
        parts.append('<table class="summary results"><tr><th>split</th>')
        parts += [f"<th>{esc(n)}</th>" for n in names]
        parts.append("</tr>")
        for split, values in splits.items():
            cells = "".join(f"<td>{esc(_format_value(values.get(n)))}</td>" for n in names)
            parts.append(f'<tr><th scope="row">{esc(split)}</th>{cells}</tr>')
        parts.append("</table>")
    data_uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    parts += [
        "<h2>Training curves</h2>",
        f'<img id="curves" class="curves" alt="training curves" src="{data_uri}">',
        '<p class="note">Also in TensorBoard: <code>tensorboard --logdir '
        f"{esc(workdir)}</code>; every value is in <code>metrics.jsonl</code>.</p>",
    ]
    for split, examples in results.get("examples", {}).items():
        parts.append(f"<h2>Examples: {esc(split)}</h2><table class='examples'>")
        parts.append("<tr><th>image</th><th>generated</th><th>references</th></tr>")
        for example in examples:
            refs = "<br>".join(esc(str(r)) for r in example.get("references", []))
            parts.append(
                f"<tr><td>{esc(str(example.get('image_id')))}</td>"
                f"<td class='caption'>{esc(str(example.get('caption')))}</td><td>{refs}</td></tr>"
            )
        parts.append("</table>")
    parts += ["</body>", "</html>", ""]
    path = os.path.join(workdir, RUN_REPORT)
    write_text_atomic(path, "\n".join(parts), "run report")
    return path


_RUN_CSS = """\
img.curves { max-width: 100%; background: #fff; border: 1px solid #ddd; }
table.examples { border-collapse: collapse; }
table.examples td, table.examples th { border: 1px solid #ddd; padding: .25rem .5rem;
  vertical-align: top; text-align: left; }
.note { color: #555; font-size: .9rem; }
"""
