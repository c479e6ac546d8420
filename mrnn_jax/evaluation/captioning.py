"""Evaluation of a trained model on a split: corpus perplexity, generated captions and their
coco-caption scores, and for the ``shapes`` dataset the share of captions that name the
largest object correctly.

These functions take parameters and data and return numbers; logging and files are the
caller's business.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from mrnn_jax import decode, losses, sharding
from mrnn_jax.data import load_split
from mrnn_jax.data.pipeline import (
    EVAL_WIDTHS,
    CaptionTable,
    SplitData,
    eval_batches,
    image_batches,
)
from mrnn_jax.evaluation import coco_metrics
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import Vocabulary


def make_eval_step(model: MRNN) -> Callable:
    """A pure ``eval_step(params, batch) -> {nll_sum, num_tokens}`` (not yet jitted)."""

    def eval_step(params, batch):
        inputs, targets, mask = losses.shift_tokens(batch["tokens"])
        logits = model.apply({"params": params}, batch["image"], inputs)
        return losses.masked_nll_sums(logits, targets, mask)

    return eval_step


@functools.lru_cache(maxsize=8)
def _jitted_eval_step(model: MRNN, mesh: Mesh) -> Callable:
    return jax.jit(
        make_eval_step(model),
        in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
        out_shardings=sharding.replicated(mesh),
    )


def split_perplexity(
    model: MRNN,
    params: dict,
    table: CaptionTable,
    inputs: np.ndarray,
    batch_size: int,
    mesh: Mesh,
    widths: tuple | None = None,
) -> dict[str, float]:
    """Corpus-level per-word perplexity of every caption of a split (end token included).

    Captions are scored shortest first, in batches cut to the narrowest of the length bucket
    ``widths`` (token positions; default :data:`EVAL_WIDTHS`) that holds their longest: the
    same sums, to float rounding, with little padded work. ``()`` scores them in table
    order at the table's full width.
    """
    widths = EVAL_WIDTHS if widths is None else widths
    sharding.check_batch_size(batch_size, mesh, "eval.batch_size")
    eval_step = _jitted_eval_step(model, mesh)
    totals = []
    for batch in eval_batches(table, inputs, batch_size, widths):
        totals.append(eval_step(params, sharding.shard_batch(batch, mesh)))
    totals = sharding.to_host(totals)
    nll_sum = float(sum(t["nll_sum"] for t in totals))
    num_tokens = float(sum(t["num_tokens"] for t in totals))
    return {
        "perplexity": losses.perplexity(nll_sum, num_tokens),
        "nll_per_word": nll_sum / max(num_tokens, 1.0),
        "num_words": num_tokens,
    }


def captions_to_text(
    vocab: Vocabulary, tokens: np.ndarray, log_prob: np.ndarray
) -> list[list[tuple[str, float]]]:
    """Decoded token ids ``[B, N, T]`` and their log-probabilities ``[B, N]`` as text: per
    image, its real hypotheses ``(caption, log-probability)`` (empty beam slots dropped)."""
    return [
        [
            (" ".join(vocab.decode(t)), float(lp))
            for t, lp in zip(row_tokens, row_log_prob, strict=True)
            if decode.is_real(lp)
        ]
        for row_tokens, row_log_prob in zip(tokens, log_prob, strict=True)
    ]


def generate_captions(
    model: MRNN,
    params: dict,
    inputs: np.ndarray,
    vocab: Vocabulary,
    options: decode.DecodeOptions,
    batch_size: int,
    mesh: Mesh | None = None,
    progress: bool = False,
) -> list[list[tuple[str, float]]]:
    """For every image input, up to ``options.num_return`` captions with their
    log-probabilities, best first: the one decode-to-text path of training, evaluation, the
    scripts and the :class:`~mrnn_jax.captioner.Captioner`.

    Images go through in padded batches of ``batch_size``, split over ``mesh`` when given
    (else they stay on the default device).
    """
    if mesh is not None:
        sharding.check_batch_size(batch_size, mesh, "eval.batch_size")
    place = (lambda b: sharding.shard_batch(b, mesh)) if mesh is not None else (lambda b: b)
    results = []
    variables = {"params": params}
    batches = image_batches(inputs, batch_size)
    total = -(-len(inputs) // batch_size)
    for index, (batch, count) in enumerate(
        tqdm(batches, total=total, desc="decode", disable=not progress)
    ):
        tokens, log_prob = decode.generate(
            model, variables, place(batch), options, index * batch_size
        )
        tokens, log_prob = sharding.to_host((tokens, log_prob))
        results.extend(captions_to_text(vocab, tokens[:count], log_prob[:count]))
    return results


#: The name of the ``shapes`` ground-truth metric: share of captions naming the largest object.
PHRASE_ACCURACY = "largest object named"


def contains_phrase(caption: str, phrase: str) -> bool:
    """Whether ``phrase`` occurs in ``caption`` as whole consecutive words."""
    return f" {phrase} " in f" {caption} "


def shapes_phrase_accuracy(captions: list[str], scenes: list) -> float:
    """Share of captions naming the largest object's colour and shape as one phrase."""
    pairs = zip(captions, scenes, strict=True)
    hits = [contains_phrase(caption, scene.largest_phrase()) for caption, scene in pairs]
    return float(np.mean(hits)) if hits else float("nan")


@dataclasses.dataclass
class CaptioningResult:
    """A captioning evaluation of one split with one decoding strategy.

    Attributes:
      metrics: perplexity, the coco-caption metrics (None where unavailable) and, for
        ``shapes``, the share of captions naming the largest object.
      unavailable: metric -> why it could not be computed.
      image_ids: the evaluated images, in order.
      captions: per image, the generated captions with log-probabilities, best first.
      references: per image, the reference captions.
      per_image: per image, its own metric values (e.g. CIDEr-D).
    """

    metrics: dict[str, float | None]
    unavailable: dict[str, str]
    image_ids: list
    captions: list[list[tuple[str, float]]]
    references: list[list[str]]
    per_image: list[dict[str, float]]


def evaluate_captioning(
    model: MRNN,
    params: dict,
    data: SplitData,
    vocab: Vocabulary,
    options: decode.DecodeOptions,
    *,
    max_words: int,
    batch_size: int,
    mesh: Mesh,
    progress: bool = False,
    perplexity: float | None = None,
    metrics: Sequence[str] | None = None,
    generated: list[list[tuple[str, float]]] | None = None,
    reranker=None,
) -> CaptioningResult:
    """Perplexity, generated captions and the coco-caption metrics of one split: the one
    split-evaluation path of training, ``mrnn evaluate`` and ``run_captioning.py``.

    Pass ``perplexity`` when it is known already (it does not depend on the decoding; NaN
    leaves it out), ``metrics`` to score only some coco-caption metrics (default: all), and
    ``generated`` to score captions decoded elsewhere instead of decoding, and ``reranker``
    (a :class:`mrnn_jax.evaluation.consensus.ConsensusReranker`) to rerank each image's
    candidates (the beam's n-best: ``options.num_return`` of them) before the best is scored.
    """
    if perplexity is None:
        table = CaptionTable.build_uncut(data.records, vocab, max_words)
        perplexity = split_perplexity(model, params, table, data.inputs, batch_size, mesh)[
            "perplexity"
        ]
    if generated is None:
        generated = generate_captions(
            model, params, data.inputs, vocab, options, batch_size, mesh, progress=progress
        )
    if reranker is not None:
        generated = reranker.rerank(data.inputs, generated)
    image_ids = [record.image_id for record in data.records]
    hypotheses = {
        i: candidates[0][0] if candidates else ""
        for i, candidates in zip(image_ids, generated, strict=True)
    }
    references = {record.image_id: list(record.captions) for record in data.records}
    if metrics is not None and not metrics:  # nothing to score: no scorer needed
        scores = coco_metrics.CaptionScores(per_image={})
    else:
        scores = coco_metrics.score_captions(
            hypotheses, references, coco_metrics.METRICS if metrics is None else metrics
        )
    values: dict[str, float | None] = {}
    if not math.isnan(perplexity):
        values["perplexity"] = perplexity
    values.update(scores.corpus)
    if data.scenes is not None:
        values[PHRASE_ACCURACY] = shapes_phrase_accuracy(
            [hypotheses[i] for i in image_ids], data.scenes
        )
    return CaptioningResult(
        metrics=values,
        unavailable=dict(scores.unavailable),
        image_ids=image_ids,
        captions=generated,
        references=[references[i] for i in image_ids],
        per_image=[scores.per_image.get(i, {}) for i in image_ids],
    )


@dataclasses.dataclass
class SplitEvaluation:
    """What evaluating a checkpoint on a split needs: the data, the mesh, a batch size that
    splits over it, and the parameters placed on it."""

    data: SplitData
    mesh: Mesh
    batch_size: int
    params: dict


def prepare_split_evaluation(
    captioner, split: str, max_images: int | None = None, batch_size: int | None = None
) -> SplitEvaluation:
    """Loads ``split`` of the captioner's dataset and places its parameters on every device."""
    config = captioner.config
    data = load_split(config.dataset, config.encoder, split, max_images)
    mesh = sharding.make_mesh()
    size = batch_size or config.eval.batch_size
    size = max(mesh.size, size - size % mesh.size)
    return SplitEvaluation(data, mesh, size, sharding.replicate(captioner.params, mesh))
