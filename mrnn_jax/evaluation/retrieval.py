"""Image–sentence retrieval from the model's own likelihoods (the paper's second task).

:func:`score_matrix` computes log P(S | I) for every sentence S and image I of a split. The
image-free part (embeddings, recurrent layer and the head's V_w w + V_r r) runs once per
sentence and the image projection V_I I once per image; only the rest of the multimodal head
(adding them, g, the softmax), which needs both, runs per (sentence, image, word). The work
is cut into tiles of sentences x images, so that peak memory is set by the tile size, not by
the split size.

:func:`retrieval_metrics` ranks images for each sentence by P(S | I), and sentences for each
image by P(S | I) / P(S) with P(S) = mean over images of P(S | I) (and by the raw P(S | I)
too), and reports R@1, R@5, R@10, median and mean rank of the first correct item.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from mrnn_jax import losses, sharding
from mrnn_jax.data.pipeline import EVAL_WIDTHS, bucket_widths
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import PAD_ID


@functools.partial(jax.jit, static_argnames=("model",))
def _sentence_part(model: MRNN, params: dict, tokens: jax.Array):
    inputs, targets, mask = losses.shift_tokens(tokens)
    w, r = model.apply(params, inputs, method=MRNN.words)
    return model.apply(params, w, r, method=MRNN.multimodal_words), targets, mask


@functools.partial(jax.jit, static_argnames=("model",))
def _image_part(model: MRNN, params: dict, image_inputs: jax.Array) -> jax.Array:
    return model.apply(params, image_inputs, method=MRNN.project_image)


@functools.partial(jax.jit, static_argnames=("model",))
def _tile_scores(model, params, words_part, targets, mask, image_projection) -> jax.Array:
    """log P(S | I) for a tile: sentences ``[s, T, M]`` x images ``[i, M]`` -> ``[s, i]``."""
    logits = model.apply(
        params,
        words_part[:, None],
        image_projection[None, :, None],
        method=MRNN.multimodal_output,
    )  # [s, i, T, V]: the multimodal head, split where the image enters
    nll = losses.token_nll(logits, jnp.broadcast_to(targets[:, None], logits.shape[:-1]))
    return -jnp.sum(nll * mask[:, None], axis=-1)


def score_matrix(
    model: MRNN,
    params: dict,
    tokens: np.ndarray,
    image_inputs: np.ndarray,
    *,
    sentence_tile: int = 16,
    image_tile: int = 32,
    progress: bool = False,
    mesh: Mesh | None = None,
    widths: tuple | None = None,
) -> np.ndarray:
    """log P(S | I) in nats for every encoded sentence ``tokens [S, T+1]`` and image input.

    Returns ``[S, I]`` float32, equal to the sum of the per-word log-probabilities that the
    training loss uses (end token included). Peak memory grows with ``sentence_tile x
    image_tile x T x vocabulary``, not with S or I. With a ``mesh``, each tile's images are
    split over its devices (``image_tile`` is rounded up to a multiple of their number).

    Sentences are scored shortest first, each tile of them cut to the narrowest of the
    length bucket ``widths`` (token positions; default
    :data:`~mrnn_jax.data.pipeline.EVAL_WIDTHS`) that holds its longest: the same scores
    to float rounding, without the work of padding every sentence to the split's longest.
    ``()`` scores them in order at the full width.
    """
    num_sentences, num_images = len(tokens), len(image_inputs)
    split = replicate = lambda x: x  # noqa: E731 (one device: arrays stay where they are)
    if mesh is not None:
        image_tile = -(-image_tile // mesh.size) * mesh.size
        split = lambda x: sharding.shard_batch({"x": x}, mesh)["x"]  # noqa: E731
        replicate = lambda x: sharding.replicate(x, mesh)  # noqa: E731
        params = replicate(params)
    projections = np.concatenate(
        [
            sharding.to_host(
                _image_part(
                    model, params, split(_pad(image_inputs[i : i + image_tile], image_tile))
                )
            )[: min(image_tile, num_images - i)]
            for i in range(0, num_images, image_tile)
        ]
    )
    scores = np.zeros((num_sentences, num_images), np.float32)
    tiles = [
        (s, i)
        for s in range(0, num_sentences, sentence_tile)
        for i in range(0, num_images, image_tile)
    ]
    bar = tqdm(total=len(tiles), desc="score", unit="tile", disable=not progress)
    widths = EVAL_WIDTHS if widths is None else widths
    lengths = np.count_nonzero(np.asarray(tokens) != PAD_ID, axis=1)
    order = np.argsort(lengths, kind="stable") if widths else np.arange(num_sentences)
    bounds = bucket_widths(widths, tokens.shape[1])
    for s in range(0, num_sentences, sentence_tile):
        rows = order[s : s + sentence_tile]
        count = len(rows)
        width = int(bounds[np.searchsorted(bounds, lengths[rows].max())])
        words_part, targets, mask = _sentence_part(
            model, params, replicate(_pad(np.asarray(tokens)[rows, :width], sentence_tile))
        )
        for i in range(0, num_images, image_tile):
            columns = min(image_tile, num_images - i)
            tile = _tile_scores(
                model,
                params,
                words_part,
                targets,
                mask,
                split(_pad(projections[i : i + columns], image_tile)),
            )
            scores[rows, i : i + columns] = sharding.to_host(tile)[:count, :columns]
            bar.update(1)
    bar.close()
    return scores


def _pad(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` padded to ``size`` rows by repeating the first (fixed shapes: one compile)."""
    if len(rows) == size:
        return rows
    return np.concatenate([rows, np.repeat(rows[:1], size - len(rows), axis=0)])


# --- ranking -----------------------------------------------------------------------------


def first_correct_ranks(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """1-based rank of the best-ranked correct candidate for each query (row).

    ``scores [Q, C]`` (higher is better), ``correct [Q, C]`` bool. Tie rule (pessimistic): a
    wrong candidate scoring exactly as high as the best correct one ranks ahead of it, so a
    constant scorer gets the worst rank, never the best.
    """
    if not correct.any(axis=1).all():
        raise ValueError("every query needs at least one correct candidate")
    best = np.where(correct, scores, -np.inf).max(axis=1, keepdims=True)
    return 1 + np.sum((scores >= best) & ~correct, axis=1)


def rank_summary(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K (percent of queries whose first correct item is in the top K), median and mean rank."""
    summary = {f"R@{k}": 100.0 * float(np.mean(ranks <= k)) for k in ks}
    summary["median rank"] = float(np.median(ranks))
    summary["mean rank"] = float(np.mean(ranks))
    return summary


def log_sentence_prior(scores: np.ndarray) -> np.ndarray:
    """log P(S) = log mean over the images of P(S | I) (P(I) uniform), for each sentence."""
    top = scores.max(axis=1, keepdims=True)
    return (top + np.log(np.mean(np.exp(scores - top), axis=1, keepdims=True)))[:, 0]


def retrieval_metrics(
    scores: np.ndarray,
    image_of_sentence: np.ndarray,
    log_prior: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Both retrieval directions from ``scores [S, I]`` = log P(S | I).

    ``image_of_sentence [S]`` gives each sentence's image column. Image retrieval ranks images
    for each sentence by P(S | I). Sentence retrieval ranks sentences for each image by
    P(S | I) / P(S), with ``log_prior`` = log P(S) (default: :func:`log_sentence_prior` over
    these images), and also by the raw P(S | I); an image is answered at the rank of its
    first correct sentence.
    """
    scores = np.asarray(scores, np.float64)
    image_of_sentence = np.asarray(image_of_sentence)
    correct = image_of_sentence[:, None] == np.arange(scores.shape[1])[None, :]
    if log_prior is None:
        log_prior = log_sentence_prior(scores)
    normalised = scores - np.asarray(log_prior, np.float64)[:, None]
    return {
        "image retrieval": rank_summary(first_correct_ranks(scores, correct)),
        "sentence retrieval": rank_summary(first_correct_ranks(normalised.T, correct.T)),
        "sentence retrieval (raw)": rank_summary(first_correct_ranks(scores.T, correct.T)),
    }


# --- a split's retrieval evaluation -------------------------------------------------------


def fold_metrics(
    scores: np.ndarray,
    image_of_sentence: np.ndarray,
    fold_size: int,
    log_prior: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`retrieval_metrics` averaged over consecutive folds of ``fold_size`` images, each
    with its own sentences (COCO's 1K-test protocol: five folds of 1,000)."""
    folds = []
    for start in range(0, scores.shape[1], fold_size):
        images = np.arange(start, min(start + fold_size, scores.shape[1]))
        rows = np.flatnonzero(np.isin(image_of_sentence, images))
        fold_prior = None if log_prior is None else np.asarray(log_prior)[rows]
        folds.append(
            retrieval_metrics(
                scores[np.ix_(rows, images)], image_of_sentence[rows] - start, fold_prior
            )
        )
    return {
        direction: {key: float(np.mean([f[direction][key] for f in folds])) for key in values}
        for direction, values in folds[0].items()
    }


def evaluate_retrieval(
    model: MRNN,
    params: dict,
    tokens: np.ndarray,
    image_of_sentence: np.ndarray,
    image_inputs: np.ndarray,
    *,
    prior_inputs: np.ndarray | None = None,
    fold_size: int | None = None,
    sentence_tile: int = 16,
    image_tile: int = 32,
    progress: bool = False,
    mesh: Mesh | None = None,
) -> tuple[dict[str, dict[str, float]], np.ndarray, np.ndarray | None]:
    """Retrieval metrics of a split, its score matrix ``[S, I]`` and log P(S) when estimated
    over ``prior_inputs`` (e.g. a sample of training images; else None: the split's images).

    With ``fold_size`` (COCO's 1K test: 1,000) the metrics are averaged over image folds.
    """
    scores = score_matrix(
        model,
        params,
        tokens,
        image_inputs,
        sentence_tile=sentence_tile,
        image_tile=image_tile,
        progress=progress,
        mesh=mesh,
    )
    log_prior = None
    if prior_inputs is not None:
        prior_scores = score_matrix(
            model,
            params,
            tokens,
            prior_inputs,
            sentence_tile=sentence_tile,
            image_tile=image_tile,
            progress=progress,
            mesh=mesh,
        )
        log_prior = log_sentence_prior(prior_scores)
    if fold_size is None:
        return retrieval_metrics(scores, image_of_sentence, log_prior), scores, log_prior
    return fold_metrics(scores, image_of_sentence, fold_size, log_prior), scores, log_prior


def markdown_table(name: str, results: dict[str, dict[str, float]]) -> str:
    """The paper's retrieval table layout: sentence retrieval, then image retrieval."""
    columns = ("R@1", "R@5", "R@10", "median rank", "mean rank")
    # Pipes inside a Markdown cell are escaped: P(S\\|I) renders as P(S|I).
    head = [
        "sentence retrieval, P(S\\|I) / P(S)",
        "sentence retrieval, raw P(S\\|I)",
        "image retrieval, P(S\\|I)",
    ]
    keys = ["sentence retrieval", "sentence retrieval (raw)", "image retrieval"]
    lines = [
        "| model | direction | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for title, key in zip(head, keys, strict=True):
        values = results[key]
        cells = [f"{values[c]:.1f}" if c.startswith("R@") else f"{values[c]:g}" for c in columns]
        lines.append(f"| {name} | {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
