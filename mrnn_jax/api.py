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

Images are given as file paths or arrays: uint8 pixels ``[N, S, S, 3]``, or for a run trained
on precomputed features, feature rows ``[N, D]`` (pixels too, when the run was loaded with
the CNN's weights: ``load(..., encoder_weights=FILE)``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from tqdm.auto import tqdm

from mrnn_jax import decode
from mrnn_jax.captioner import Captioner, load
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import captioning, retrieval
from mrnn_jax.files import write_json_atomic
from mrnn_jax.images import ImageError
from mrnn_jax.pages import retrieval_page

log = logging.getLogger("mrnn_jax")

__all__ = [
    "Caption",
    "CaptionEvaluation",
    "Gallery",
    "Match",
    "SearchResult",
    "caption",
    "evaluate_captioning",
    "extraction_images",
    "image_paths",
    "load",
    "load_gallery",
    "retrieval_metrics",
    "score",
    "search",
    "use_data",
]

GALLERY_CHUNK = 64  # images decoded (and, for a features run, encoded) at a time

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

Images = Sequence[str | os.PathLike] | np.ndarray


class Caption(NamedTuple):
    """A generated caption and its log-probability (nats, end token included)."""

    text: str
    log_prob: float


def caption(
    model: Captioner,
    images: Images,
    *,
    strategy: str = "greedy",
    beam_size: int = 3,
    num_return: int = 1,
    max_words: int | None = None,
    temperature: float = 1.0,
    length_penalty: float = 0.0,
    seed: int = 0,
    allow_unk: bool = False,
    batch_size: int = 32,
) -> list[list[Caption]]:
    """For each image, up to ``num_return`` captions with their log-probabilities, best first.

    ``strategy`` is ``greedy`` (one caption), ``beam`` (``beam_size`` beams, GNMT
    ``length_penalty``) or ``sample`` (``num_return`` draws at ``temperature`` from
    ``seed``). ``max_words`` defaults to the run's caption length. ``<unk>`` is never
    chosen unless ``allow_unk``.
    """
    options = model.options(
        strategy=strategy,
        beam_size=beam_size,
        num_return=num_return,
        temperature=temperature,
        length_penalty=length_penalty,
        seed=seed,
        allow_unk=allow_unk,
        max_words=max_words,
    )
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
    from mrnn_jax import configs
    from mrnn_jax.data import DataReport, read_records

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
    from mrnn_jax.data.features import load_features

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


def evaluate_captioning(
    model: Captioner,
    split: str = "test",
    *,
    strategy: str = "greedy",
    beam_size: int = 3,
    num_return: int = 1,
    max_words: int | None = None,
    temperature: float = 1.0,
    length_penalty: float = 0.0,
    seed: int = 0,
    allow_unk: bool = False,
    rerank: str | None = None,
    rerank_metric: str | None = None,
    rerank_features: str | None = None,
    max_images: int | None = None,
    batch_size: int | None = None,
    json_path: str | None = None,
    checkpoint: str = "",
    progress: bool = True,
) -> CaptionEvaluation:
    """Perplexity and the coco-caption metrics of captions generated for a split of the
    run's dataset (decoding as in :func:`caption`; the first ``max_images`` images only if
    given), also written as JSON to ``json_path`` if given (``checkpoint`` recorded in it).

    ``rerank="consensus"`` reranks the beam's n best by their agreement with the captions of
    the nearest training images (ICLR 2015 section 8; the config's ``rerank`` section, with
    ``rerank_metric`` / ``rerank_features`` overriding it; the beam size defaults to its
    ``num_hypotheses``)."""
    consensus_options = None
    if rerank not in (None, "none"):
        from mrnn_jax.evaluation import consensus

        if rerank != "consensus":
            raise MrnnError(f"unknown reranking {rerank!r}: choose consensus")
        if strategy == "sample":
            raise MrnnError("consensus reranking reranks beam-search hypotheses, not samples")
        consensus_options = consensus.ConsensusOptions.from_config(
            model.config.rerank,
            metric=rerank_metric,
            features=rerank_features,
            num_hypotheses=beam_size if strategy == "beam" else None,
        )
        strategy = "beam"
        beam_size = num_return = consensus_options.num_hypotheses
    elif rerank_metric or rerank_features:
        raise MrnnError("rerank_metric and rerank_features need rerank='consensus'")
    options = model.options(
        strategy=strategy,
        beam_size=beam_size,
        num_return=num_return,
        temperature=temperature,
        length_penalty=length_penalty,
        seed=seed,
        allow_unk=allow_unk,
        max_words=max_words,
    )
    setup = captioning.prepare_split_evaluation(model, split, max_images, batch_size)
    reranker = None
    if consensus_options is not None:
        reranker = consensus.load_reranker(
            model.model, setup.params, model.config, consensus_options, setup.batch_size
        )
    result = captioning.evaluate_captioning(
        model.model,
        setup.params,
        setup.data,
        model.vocab,
        options,
        max_words=model.config.dataset.max_words,
        batch_size=setup.batch_size,
        mesh=setup.mesh,
        progress=progress,
        reranker=reranker,
    )
    evaluation = CaptionEvaluation(
        split=split,
        num_images=len(setup.data.records),
        decoding=options,
        rerank=consensus_options,
        metrics=result.metrics,
        unavailable=result.unavailable,
        result=result,
    )
    if json_path:
        write_json_atomic(
            json_path,
            {
                "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
                "step": model.step,
                "split": split,
                "num_images": evaluation.num_images,
                "decoding": dataclasses.asdict(options),
                "rerank": None
                if consensus_options is None
                else {
                    **dataclasses.asdict(consensus_options),
                    "references_kept": consensus_options.references_kept,
                },
                "metrics": result.metrics,
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
    from mrnn_jax import configs

    overrides = []
    if data_dir is not None:
        overrides.append(f"dataset.data_dir={os.fspath(data_dir)}")
    if features is not None:
        overrides.append(f"dataset.features={os.fspath(features)}")
    configs.apply_overrides(model.config, overrides)
    return model


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
) -> retrieval_page.RetrievalReport:
    """Image-sentence retrieval on a split of the run's dataset, both directions as in the
    paper's tables (R@1, R@5, R@10, median and mean rank); see
    :func:`mrnn_jax.pages.retrieval_page.run` for the files it can write."""
    return retrieval_page.run(
        model,
        split,
        max_images=max_images,
        prior_images=prior_images,
        coco_1k=coco_1k,
        sentence_tile=sentence_tile,
        image_tile=image_tile,
        json_path=json_path,
        out=out,
        html_queries=html_queries,
        checkpoint=checkpoint,
        progress=progress,
    )
