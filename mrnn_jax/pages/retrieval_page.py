"""The retrieval page (``mrnn retrieve``, experiments/run_retrieval.py): example queries in
both directions, written from a retrieval evaluator's ranks
(:func:`mrnn_jax.api.retrieval_metrics` computes them), rendered with
``templates/retrieval.html.j2``."""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Mapping, Sequence

import numpy as np

from mrnn_jax.evaluation import retrieval
from mrnn_jax.pages import common


def write_page(path, model, records, inputs, table, scores, log_prior, results, count: int) -> None:
    """The HTML page of example queries in both directions, top 5 each (the metrics' P(S)
    and tie rule)."""
    pixels = model.takes_pixels
    prior = retrieval.log_sentence_prior(scores) if log_prior is None else log_prior
    correct_all = table.image_index[:, None] == np.arange(len(records))[None, :]
    image_ranks = retrieval.first_correct_ranks((scores - prior[:, None]).T, correct_all.T)
    sentence_ranks = retrieval.first_correct_ranks(scores, correct_all)
    image_queries, sentence_queries = [], []
    step = max(1, len(records) // max(count, 1))
    for image in range(0, len(records), step)[:count]:
        ranked = np.argsort(-(scores[:, image] - prior), kind="stable")
        correct = table.image_index == image
        rank = int(image_ranks[image])
        image_queries.append(
            ImageQuery(
                image_id=records[image].image_id,
                rank=rank,
                retrieved=[
                    (
                        " ".join(model.vocab.decode(table.tokens[s])),
                        float(scores[s, image] - prior[s]),
                        bool(correct[s]),
                    )
                    for s in ranked[:5]
                ],
                references=list(records[image].captions),
                image=inputs[image] if pixels else None,
                image_path=None if pixels else records[image].file_path,
            )
        )
    step = max(1, len(table) // max(count, 1))
    for sentence in range(0, len(table), step)[:count]:
        truth = int(table.image_index[sentence])
        ranked = np.argsort(-scores[sentence], kind="stable")
        sentence_queries.append(
            SentenceQuery(
                sentence=" ".join(model.vocab.decode(table.tokens[sentence])),
                truth_image_id=records[truth].image_id,
                rank=int(sentence_ranks[sentence]),
                retrieved=[
                    RetrievedImage(
                        image_id=records[i].image_id,
                        score=float(scores[sentence, i]),
                        correct=bool(i == truth),
                        image=inputs[i] if pixels else None,
                        image_path=None if pixels else records[i].file_path,
                    )
                    for i in ranked[:5]
                ],
                truth_image=inputs[truth] if pixels else None,
            )
        )
    write_retrieval_html(
        path,
        title="m-RNN image-sentence retrieval",
        summary=results,
        sentence_queries=sentence_queries,
        image_queries=image_queries,
    )


# --- the retrieval page: rendering (templates/retrieval.html.j2) -------------------------

RETRIEVAL_COLUMNS = ("R@1", "R@5", "R@10", "median rank", "mean rank")
"""Columns of the retrieval summary table, in order; other metrics found follow them."""

_SECTIONS = (
    ("images-for-a-sentence", "Images for a sentence"),
    ("sentences-for-an-image", "Sentences for an image"),
)


@dataclasses.dataclass
class RetrievedImage:
    """One image retrieved for a sentence (see :class:`SentenceQuery`).

    Attributes:
      image_id: shown under the thumbnail and written to ``data-image-id``.
      score: the retrieval score (e.g. log P(S | I)); NaN or ``None`` shown as "n/a".
      correct: whether this is an image the sentence describes.
      image, image_path: the pixels to embed or a file to link, as for
        :class:`mrnn_jax.pages.captions_page.ReportItem`.
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
      image, image_path: the pixels to embed or a file to link, as for
        :class:`mrnn_jax.pages.captions_page.ReportItem`.
    """

    image_id: str | int
    rank: int
    retrieved: list[tuple[str, float, bool]]
    references: list[str]
    image: np.ndarray | None = None
    image_path: str | None = None


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
    :func:`mrnn_jax.pages.captions_page.write_html`, and the file is written atomically in
    the same way.

    Raises ``ValueError`` for a bad image (as ``write_html``) or a rank that is not a
    positive integer, before anything is written, and :class:`MrnnError` when the file
    cannot be written.
    """
    target = os.fspath(path)
    page_dir = os.path.dirname(os.path.abspath(target))
    summary = summary or {}
    columns = _summary_columns(summary)
    text = common.render(
        "retrieval.html.j2",
        title=title,
        columns=columns,
        summary=[
            (str(direction), _summary_cells(metrics, columns))
            for direction, metrics in summary.items()
        ],
        sections=_SECTIONS,
        sentence_queries=[_sentence_query(i, q, page_dir) for i, q in enumerate(sentence_queries)],
        image_queries=[_image_query(q, page_dir) for q in image_queries],
    )
    common.write_page(target, text, "results page")


def _summary_columns(summary: Mapping[str, Mapping[str, float | str | None]]) -> list[str]:
    """:data:`RETRIEVAL_COLUMNS`, then the other metrics in the order found."""
    columns = list(RETRIEVAL_COLUMNS)
    for metrics in summary.values():
        columns += [str(name) for name in metrics if str(name) not in columns]
    return columns


def _summary_cells(
    metrics: Mapping[str, float | str | None], columns: list[str]
) -> list[tuple[str, str, str]]:
    """One direction's ``(metric, data-value, shown)`` per column."""
    values = {str(name): value for name, value in metrics.items()}
    cells = []
    for column in columns:
        value = values.get(column)
        attr = value if isinstance(value, str) else common.attr_number(value)
        cells.append((column, attr, _format_retrieval_value(column, value)))
    return cells


def _format_retrieval_value(metric: str, value: float | str | None) -> str:
    """R@K (percent) to one decimal, ranks as short as exact (``3``, ``12.5``)."""
    if isinstance(value, str):
        return value
    if common.is_missing(value):
        return "n/a"
    if metric.startswith("R@"):
        return f"{float(value):.1f}"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return f"{float(value):g}"


def _check_rank(rank: object, what: str) -> int:
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
        raise ValueError(f"{what}: rank must be a positive integer (1-based), got {rank!r}")
    return int(rank)


def _sentence_query(index: int, query: SentenceQuery, page_dir: str) -> dict:
    """What the template shows of a sentence query; raises ``ValueError`` for a bad rank
    or image."""
    rank = _check_rank(query.rank, f"sentence query {index}")
    truth = common.thumbnail(
        query.truth_image, query.truth_image_path, query.truth_image_id, page_dir
    )
    return {
        "sentence": str(query.sentence),
        "truth_image_id": str(query.truth_image_id),
        "rank": rank,
        "truth": truth,
        "retrieved": [
            {
                "position": position,
                "image_id": str(hit.image_id),
                "score": hit.score,
                "correct": bool(hit.correct),
                "thumb": common.thumbnail(hit.image, hit.image_path, hit.image_id, page_dir),
            }
            for position, hit in enumerate(query.retrieved, start=1)
        ],
    }


def _image_query(query: ImageQuery, page_dir: str) -> dict:
    """What the template shows of an image query; raises ``ValueError`` for a bad rank or
    image."""
    rank = _check_rank(query.rank, f"image query {query.image_id!r}")
    return {
        "image_id": str(query.image_id),
        "rank": rank,
        "thumb": common.thumbnail(query.image, query.image_path, query.image_id, page_dir),
        "retrieved": [
            {"position": position, "sentence": str(sentence), "score": score, "correct": bool(c)}
            for position, (sentence, score, c) in enumerate(query.retrieved, start=1)
        ],
        "references": [str(r) for r in query.references],
    }
