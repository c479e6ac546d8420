"""The captions page: one self-contained HTML file showing, for each image, the generated
captions with their log-probabilities, the reference captions and a per-image score
(``templates/captions.html.j2``).

The page needs nothing but a browser: images are embedded as PNG data URIs (or linked by a
path relative to the page), the style sheet and the few lines of JavaScript that sort the
items by score are inline, and nothing is fetched from the network.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import numpy as np

from mrnn_jax.pages import common
from mrnn_jax.pages.common import MAX_EMBEDDED_SIDE, THUMB_WIDTH

__all__ = ["MAX_EMBEDDED_SIDE", "SORT_ORDERS", "THUMB_WIDTH", "ReportItem", "write_html"]

SORT_ORDERS = ("original", "score-desc", "score-asc")
"""Values of the sort control. The page also reads ``#sort=<value>`` from its address (so a
sorted view can be bookmarked) and writes it there when the control changes."""


@dataclasses.dataclass
class ReportItem:
    """One image on the captions page.

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
    cards = [
        {
            "image_id": str(item.image_id),
            "score": item.score,
            "thumb": common.thumbnail(item.image, item.image_path, item.image_id, page_dir),
            "captions": [(str(text), logprob) for text, logprob in item.captions],
            "references": [str(r) for r in item.references],
        }
        for item in items
    ]
    labels = ("original order", f"{score_name}, highest first", f"{score_name}, lowest first")
    text = common.render(
        "captions.html.j2",
        title=title,
        summary=[(str(name), value) for name, value in (summary or {}).items()],
        sort_options=list(zip(SORT_ORDERS, labels, strict=True)),
        items=cards,
        score_name=score_name,
    )
    common.write_page(target, text, "results page")
