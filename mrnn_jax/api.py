"""The library's plain-argument API: what the ``mrnn`` command, ``mrnn serve`` and the
quick-start notebook all call.

    from mrnn_jax import api
    model = api.load("runs/shapes")
    api.caption(model, ["photo.jpg"], strategy="beam", beam_size=5, num_return=3)
    gallery = api.load_gallery(model, folder="my_photos")
    api.search(model, "a red circle above a blue square", gallery, top=5)
    api.score(model, ["photo.jpg"], ["a red circle", "a blue square"])
    api.retrieval_metrics(model, "test")
    api.evaluate_captioning(model, "test", strategy="beam", beam_size=3)

Decoding keywords (``strategy``, ``beam_size``, ``num_return``, ``max_words``, ...) are the
fields of :class:`DecodeOptions`, declared once in :mod:`mrnn_jax.decode`; split evaluations
are drivers over the evaluators of :mod:`mrnn_jax.evaluation.evaluators`.

Images are given as file paths or arrays: uint8 pixels ``[N, S, S, 3]``, or for a run trained
on precomputed features, feature rows ``[N, D]`` (pixels too, when the run was loaded with
the CNN's weights: ``load(..., encoder_weights=FILE)``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from mrnn_jax import configs, decode, sharding
from mrnn_jax.captioner import Captioner, load
from mrnn_jax.data import DataReport, load_dataset, read_records
from mrnn_jax.data.features import load_features
from mrnn_jax.decode import DecodeOptions
from mrnn_jax.decode import flags as decoding_flags
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import captioning, evaluators, retrieval
from mrnn_jax.files import write_json_atomic, write_text_atomic
from mrnn_jax.images import ImageError
from mrnn_jax.pages import retrieval_page

log = logging.getLogger("mrnn_jax")

__all__ = [
    "Caption",
    "CaptionEvaluation",
    "DecodeOptions",
    "Gallery",
    "Match",
    "SearchResult",
    "caption",
    "evaluate_captioning",
    "extraction_images",
    "image_paths",
    "load",
    "decode_options",
    "decoding_flags",
    "load_gallery",
    "RetrievalReport",
    "retrieval_metrics",
    "score",
    "search",
    "split_context",
    "use_data",
]

GALLERY_CHUNK = 64  # images decoded (and, for a features run, encoded) at a time

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

Images = Sequence[str | os.PathLike] | np.ndarray


class Caption(NamedTuple):
    """A generated caption and its log-probability (nats, end token included)."""

    text: str
    log_prob: float


def decode_options(model: Captioner, **decoding: Any) -> DecodeOptions:
    """The :class:`~mrnn_jax.decode.DecodeOptions` that ``decoding`` (any of its fields as
    keywords) names: greedy by default, at most the run's ``eval.max_decode_words`` words
    unless ``max_words`` says otherwise (None also means the run's)."""
    decode.check_names(decoding)
    return DecodeOptions.from_mapping(decoding, max_words=model.config.eval.max_decode_words)


def caption(
    model: Captioner, images: Images, *, batch_size: int = 32, **decoding: Any
) -> list[list[Caption]]:
    """For each image, up to ``num_return`` captions with their log-probabilities, best first.

    ``decoding`` is any of :class:`~mrnn_jax.decode.DecodeOptions`' fields: ``strategy`` is
    ``greedy`` (one caption, the default), ``beam`` (``beam_size`` beams, GNMT
    ``length_penalty``) or ``sample`` (``num_return`` draws at ``temperature`` from
    ``seed``). ``max_words`` defaults to the run's caption length. ``<unk>`` is never chosen
    unless ``allow_unk``.
    """
    options = decode_options(model, **decoding)
    results = model.generate(model.image_inputs(images), options, batch_size=batch_size)
    return [[Caption(text, log_prob) for text, log_prob in row] for row in results]


def image_paths(folder: str | os.PathLike) -> list[str]:
    """The image files under ``folder`` (searched recursively, by suffix), sorted."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise MrnnError(f"{folder}: no such folder")
    return sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(folder)
        for f in files
        if f.lower().endswith(IMAGE_SUFFIXES)
    )


def extraction_images(
    *,
    images: str | os.PathLike | None = None,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
) -> tuple[list[str], list[str]]:
    """``(names, paths)`` of the images to extract features of: every image file under the
    folder ``images`` (named by relative path), or every image of a dataset's splits
    (``dataset`` in ``data_dir``, named by image id)."""
    if (images is None) == (dataset is None):
        raise MrnnError("extract the features of a folder of images or of a dataset")
    if images is not None:
        paths = image_paths(images)
        names = [os.path.relpath(p, images).replace(os.sep, "/") for p in paths]
    else:
        if not data_dir:
            raise MrnnError("--dataset needs --data-dir")
        config = configs.load_config(dataset, [f"dataset.data_dir={os.fspath(data_dir)}"])
        records = read_records(config.dataset, DataReport())
        names = [r.image_id for r in records]
        paths = [r.file_path for r in records]
    if not paths:
        raise MrnnError("no images to extract features from")
    return names, paths


@dataclasses.dataclass(frozen=True)
class Gallery:
    """Images to search: their names, the model's inputs for them, and what was left out.

    Attributes:
      names: one per image (file paths, or the names in a features file).
      inputs: the model's inputs, pixels ``[N, S, S, 3]`` or features ``[N, D]``.
      paths: the image files, where the gallery came from files (else None).
      skipped: unreadable files left out, each with the reason.
    """

    names: list[str]
    inputs: np.ndarray
    paths: list[str] | None = None
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)


def load_gallery(
    model: Captioner,
    *,
    folder: str | os.PathLike | None = None,
    paths: Sequence[str | os.PathLike] | None = None,
    features: str | os.PathLike | None = None,
    max_images: int | None = None,
    progress: bool = False,
) -> Gallery:
    """A gallery of the image files in ``folder`` (or the files ``paths``) or of the rows of
    a precomputed ``features`` file (``.npz`` or ``.npy`` + names), as ``model`` reads them.

    Unreadable image files are left out and listed in ``Gallery.skipped``; more than
    ``max_images`` images is an error. ``progress`` shows a progress bar over the files.
    """
    if sum(x is not None for x in (folder, paths, features)) != 1:
        raise MrnnError("a gallery is a folder, a list of image files or a features file")
    if features is not None:
        if model.takes_pixels:
            raise MrnnError("this model reads images; search image files, not a features file")
        feature_file = load_features(os.fspath(features))
        _check_count(len(feature_file.names), max_images, os.fspath(features))
        expected = int(model.config.encoder.features_dim)
        if feature_file.dim != expected:
            raise MrnnError(
                f"{features}: {feature_file.dim}-d features, the checkpoint takes {expected}-d"
            )
        return Gallery(
            names=list(feature_file.names), inputs=np.asarray(feature_file.features, np.float32)
        )
    if not model.reads_image_files:
        model.load_images([])  # raises the error that says what the run needs
    files = image_paths(folder) if folder is not None else [os.fspath(p) for p in paths]
    _check_count(len(files), max_images, os.fspath(folder) if folder is not None else "paths")
    kept, chunks, skipped = [], [], []
    bar = tqdm(total=len(files), disable=not progress, desc="gallery", unit="img")
    for start in range(0, len(files), GALLERY_CHUNK):
        images = []
        for path in files[start : start + GALLERY_CHUNK]:
            try:
                images.append(model.load_images([path])[0])
                kept.append(path)
            except ImageError as error:
                skipped.append(str(error))
                log.warning("skipped %s", error)
            bar.update(1)
        if images:  # a features run's CNN encodes each chunk: no gallery of pixels is held
            chunks.append(model.image_inputs(np.stack(images)))
    bar.close()
    if not kept:
        raise MrnnError(f"{folder if folder is not None else 'paths'}: no readable images")
    return Gallery(names=kept, inputs=np.concatenate(chunks), paths=kept, skipped=skipped)


def _check_count(count: int, max_images: int | None, where: str) -> None:
    if max_images is not None and count > max_images:
        raise MrnnError(f"{where}: {count} images, more than the limit of {max_images}")


class Match(NamedTuple):
    """One gallery image ranked for a query: its index in the gallery, name and score."""

    index: int
    name: str
    score: float


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """A query's ranking: gallery images best first, scored log P(sentence | image) in nats,
    and the query's words the vocabulary lacks (read as the unknown word)."""

    matches: list[Match]
    unknown_words: list[str]


def _sentence_tokens(model: Captioner, sentences: Sequence[str]) -> np.ndarray:
    """Sentences encoded for scoring, padded to the run's caption length (or the next
    multiple of 8 above it), so that most queries share one compiled shape."""
    words = [model.vocab.tokenize(s) for s in sentences]
    empty = [s for s, w in zip(sentences, words, strict=True) if not w]
    if empty:
        raise MrnnError(f"the sentence {empty[0]!r} has no words")
    longest = max(len(w) for w in words)
    length = max(int(model.config.dataset.max_words), -(-longest // 8) * 8)
    return model.vocab.encode_batch(words, length)


def score(model: Captioner, images: Images, sentences: Sequence[str]) -> np.ndarray:
    """log P(sentence | image) in nats for every sentence and image: ``[S, I]`` float32
    (the training loss's per-word log-probabilities summed, end token included)."""
    tokens = _sentence_tokens(model, list(sentences))
    inputs = model.image_inputs(images)
    return retrieval.score_matrix(model.model, {"params": model.params}, tokens, inputs)


def search(
    model: Captioner, sentence: str, gallery: Gallery, top: int | None = None
) -> SearchResult:
    """The gallery ranked by P(sentence | image), best first (the ``top`` best, or all);
    ties keep gallery order."""
    if top is not None and top < 1:
        raise MrnnError(f"top must be at least 1, got {top}")
    scores = score(model, gallery.inputs, [sentence])[0]
    order = np.argsort(-scores, kind="stable")[:top]
    unknown = [w for w in model.vocab.tokenize(sentence) if w not in model.vocab]
    return SearchResult(
        matches=[Match(int(i), gallery.names[i], float(scores[i])) for i in order],
        unknown_words=unknown,
    )


@dataclasses.dataclass(frozen=True)
class CaptionEvaluation:
    """A captioning evaluation of one split (``mrnn evaluate``).

    Attributes:
      split: the evaluated split.
      num_images: how many of its images were captioned.
      decoding: the decoding options used.
      rerank: the consensus reranking options, or None.
      metrics: perplexity, BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (None where unavailable)
        and, on ``shapes``, the share of captions naming the largest object.
      unavailable: metric -> why it could not be computed.
      result: everything else: per-image captions, references and scores.
    """

    split: str
    num_images: int
    decoding: decode.DecodeOptions
    rerank: Any
    metrics: dict
    unavailable: dict
    result: captioning.CaptioningResult


def split_context(
    model: Captioner,
    split: str,
    *,
    max_images: int | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[evaluators.Context, Any]:
    """What evaluators of ``split`` of the run's dataset are built with (its first
    ``max_images`` images only, if given), and the parameters placed on every device."""
    setup = captioning.prepare_split_evaluation(model, split, max_images, batch_size)
    context = evaluators.Context(
        model.config, model.model, model.vocab, {split: setup.data}, setup.mesh,
        setup.batch_size, progress,
    )  # fmt: skip
    return context, setup.params


def evaluate_captioning(
    model: Captioner,
    split: str = "test",
    *,
    rerank: str | None = None,
    rerank_metric: str | None = None,
    rerank_features: str | None = None,
    max_images: int | None = None,
    batch_size: int | None = None,
    json_path: str | None = None,
    checkpoint: str = "",
    progress: bool = True,
    **decoding: Any,
) -> CaptionEvaluation:
    """Perplexity and the coco-caption metrics of captions generated for a split of the
    run's dataset (``decoding`` as in :func:`caption`; the first ``max_images`` images only if
    given), also written as JSON to ``json_path`` if given (``checkpoint`` recorded in it).

    ``rerank="consensus"`` reranks the beam's n best by their agreement with the captions of
    the nearest training images (ICLR 2015 section 8; the config's ``rerank`` section, with
    ``rerank_metric`` / ``rerank_features`` overriding it; the beam size defaults to its
    ``num_hypotheses``). A ``captions`` evaluator
    (:mod:`mrnn_jax.evaluation.evaluators`) does the work."""
    options = decode_options(model, **decoding)
    entry = evaluators.captions_entry(
        split,
        options,
        metrics=None,
        perplexity=True,
        rerank=rerank or "none",
        rerank_metric=rerank_metric,
        rerank_features=rerank_features,
    )
    if rerank in (None, "none") and (rerank_metric or rerank_features):
        raise MrnnError("rerank_metric and rerank_features need rerank='consensus'")
    context, params = split_context(
        model, split, max_images=max_images, batch_size=batch_size, progress=progress
    )
    evaluator = evaluators.build(split, entry, context)
    result = evaluator.run(params)
    run = evaluator.run
    evaluation = CaptionEvaluation(
        split=split,
        num_images=len(context.splits[split].records),
        decoding=run.options,
        rerank=run.consensus,
        metrics=result.values,
        unavailable=result.unavailable,
        result=result.captions,
    )
    if json_path:
        write_json_atomic(
            json_path,
            {
                "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
                "step": model.step,
                "split": split,
                "num_images": evaluation.num_images,
                "decoding": dataclasses.asdict(run.options),
                "rerank": None
                if run.consensus is None
                else {
                    **dataclasses.asdict(run.consensus),
                    "references_kept": run.consensus.references_kept,
                },
                "metrics": result.values,
                "unavailable": result.unavailable,
            },
        )
    return evaluation


def use_data(
    model: Captioner,
    *,
    data_dir: str | os.PathLike | None = None,
    features: str | os.PathLike | None = None,
) -> Captioner:
    """``model`` evaluated on its dataset at other paths: the dataset's folder ``data_dir``
    and / or the precomputed ``features`` file (by default, the paths it was trained
    with). Returns ``model``, its config changed."""
    overrides = []
    if data_dir is not None:
        overrides.append(f"dataset.data_dir={os.fspath(data_dir)}")
    if features is not None:
        overrides.append(f"dataset.features={os.fspath(features)}")
    configs.apply_overrides(model.config, overrides)
    return model


@dataclasses.dataclass(frozen=True)
class RetrievalReport:
    """Retrieval on a split: the metrics (per direction and ranking, R@1/5/10, median and
    mean rank), the paper-style Markdown table with a line on the setting, and the JSON
    record written to files."""

    metrics: dict
    table: str
    payload: dict


def retrieval_metrics(
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
    """Image-sentence retrieval on a split of the run's dataset, both directions as in the
    paper's tables (R@1, R@5, R@10, median and mean rank; see ``mrnn retrieve --help``), by
    a ``retrieval`` evaluator (:mod:`mrnn_jax.evaluation.evaluators`): returned with the
    paper's table, and written as JSON to ``json_path`` and as JSON, Markdown and an HTML
    page of ``html_queries`` example queries per direction into the folder ``out``
    (default: ``json_path``'s folder; with neither, nothing is written). ``checkpoint``
    (the run's path) names the model in the table and the JSON."""
    started = time.time()
    for option, value in (("max_images", max_images), ("prior_images", prior_images)):
        if value is not None and value < 1:
            raise MrnnError(f"--{option.replace('_', '-')} must be at least 1")
    wanted = [split, *(["train"] if prior_images else [])]
    splits = load_dataset(model.config.dataset, model.config.encoder, wanted).splits
    if split not in splits:
        raise MrnnError(f"dataset has no split {split!r}: {sorted(splits)}")
    context = evaluators.Context(
        model.config, model.model, model.vocab, splits, sharding.make_mesh(),
        int(model.config.eval.batch_size), progress,
    )  # fmt: skip
    entry = {
        "kind": "retrieval",
        "split": split,
        "num_images": max_images or 0,
        "prior_images": prior_images or 0,
        "fold_size": 1000 if coco_1k else 0,
        "sentence_tile": sentence_tile,
        "image_tile": image_tile,
    }
    ranks = evaluators.build(split, entry, context).run(model.params).ranks
    results, prior = ranks.metrics, ranks.prior_images
    name = f"m-RNN ({os.path.basename(os.path.abspath(checkpoint))})" if checkpoint else "m-RNN"
    markdown = retrieval.markdown_table(name, results)
    details = (
        f"{split} split, {len(ranks.records)} images, {len(ranks.table)} sentences"
        f"{', COCO 1K folds' if coco_1k else ''}; P(S) over "
        f"{f'{prior} training images' if prior is not None else 'the split images'}; "
        f"{platform.machine()} with {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
        f"{time.time() - started:.0f} s"
    )
    payload = {
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
        "step": model.step,
        "split": split,
        "num_images": len(ranks.records),
        "num_sentences": len(ranks.table),
        "coco_1k": bool(coco_1k),
        "prior_images": prior,
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
        retrieval_page.write_page(
            os.path.join(out, f"retrieval_{split}.html"),
            model,
            ranks.records,
            ranks.inputs,
            ranks.table,
            ranks.scores,
            ranks.log_prior,
            results,
            html_queries,
        )
    return RetrievalReport(metrics=results, table=f"{markdown}\n\n{details}", payload=payload)
