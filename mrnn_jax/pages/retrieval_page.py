"""Retrieval on a split (``mrnn retrieve``, experiments/run_retrieval.py): score, report,
write files."""

from __future__ import annotations

import dataclasses
import numbers
import os
import platform
import time
from collections.abc import Mapping, Sequence

import numpy as np

from mrnn_jax import sharding
from mrnn_jax.captioner import Captioner
from mrnn_jax.data import load_dataset
from mrnn_jax.data.pipeline import CaptionTable
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import retrieval
from mrnn_jax.files import write_json_atomic, write_text_atomic
from mrnn_jax.pages import common


@dataclasses.dataclass(frozen=True)
class RetrievalReport:
    """Retrieval on a split: the metrics (per direction and ranking, R@1/5/10, median and
    mean rank), the paper-style Markdown table with a line on the setting, and the JSON
    record written to files."""

    metrics: dict
    table: str
    payload: dict


def run(
    model: Captioner,
    split: str = "test",
    *,
    max_images: int | None = None,
    prior_images: int | None = None,
    coco_1k: bool = False,
    sentence_tile: int = 16,
    image_tile: int = 32,
    json_path: str | None = None,
    out: str | None = None,
    html_queries: int = 10,
    checkpoint: str = "",
    progress: bool = True,
) -> RetrievalReport:
    """Retrieval metrics of ``model`` on a split of its dataset (see ``mrnn retrieve
    --help``): printed as the paper's table, returned, and written as JSON to ``json_path``
    and as JSON, Markdown and an HTML page of ``html_queries`` example queries per direction
    into the folder ``out`` (default: ``json_path``'s folder; with neither, nothing is
    written). ``checkpoint`` (the run's path) names the model in the table and the JSON."""
    started = time.time()
    for option, value in (("max_images", max_images), ("prior_images", prior_images)):
        if value is not None and value < 1:
            raise MrnnError(f"--{option.replace('_', '-')} must be at least 1")
    wanted = [split, *(["train"] if prior_images else [])]
    splits = load_dataset(model.config.dataset, model.config.encoder, wanted).splits
    if split not in splits:
        raise MrnnError(f"dataset has no split {split!r}: {sorted(splits)}")
    data = splits[split]
    count = len(data.records) if max_images is None else max_images
    captioned = [i for i, record in enumerate(data.records[:count]) if record.tokens]
    records = [data.records[i] for i in captioned]
    inputs = data.inputs[:count][captioned]
    if not records:
        raise MrnnError(f"split {split!r} has no captioned images")
    table = CaptionTable.build_uncut(records, model.vocab, model.config.dataset.max_words)
    prior = None
    if prior_images:
        train = splits["train"].inputs
        rng = np.random.default_rng(0)
        prior = train[np.sort(rng.choice(len(train), min(prior_images, len(train)), False))]
    params = {"params": model.params}
    results, scores, log_prior = retrieval.evaluate_retrieval(
        model.model,
        params,
        table.tokens,
        table.image_index,
        inputs,
        prior_inputs=prior,
        fold_size=1000 if coco_1k else None,
        sentence_tile=sentence_tile,
        image_tile=image_tile,
        progress=progress,
        mesh=sharding.make_mesh(),
    )
    name = f"m-RNN ({os.path.basename(os.path.abspath(checkpoint))})" if checkpoint else "m-RNN"
    markdown = retrieval.markdown_table(name, results)
    details = (
        f"{split} split, {len(records)} images, {len(table)} sentences"
        f"{', COCO 1K folds' if coco_1k else ''}; P(S) over "
        f"{f'{len(prior)} training images' if prior is not None else 'the split images'}; "
        f"{platform.machine()} with {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
        f"{time.time() - started:.0f} s"
    )
    payload = {
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
        "step": model.step,
        "split": split,
        "num_images": len(records),
        "num_sentences": len(table),
        "coco_1k": bool(coco_1k),
        "prior_images": None if prior is None else len(prior),
        "metrics": results,
        "tie_rule": "a wrong item scoring as high as the first correct one ranks ahead of it",
    }
    if json_path:
        write_json_atomic(json_path, payload)
    out = out or (os.path.dirname(os.path.abspath(json_path)) if json_path else None)
    if out:
        os.makedirs(out, exist_ok=True)
        write_text_atomic(os.path.join(out, f"retrieval_{split}.md"), f"{markdown}\n\n{details}\n")
        write_json_atomic(os.path.join(out, f"retrieval_{split}.json"), payload)
        _write_page(
            os.path.join(out, f"retrieval_{split}.html"),
            model,
            records,
            inputs,
            table,
            scores,
            log_prior,
            results,
            html_queries,
        )
    return RetrievalReport(metrics=results, table=f"{markdown}\n\n{details}", payload=payload)


def _write_page(
    path, model, records, inputs, table, scores, log_prior, results, count: int
) -> None:
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
