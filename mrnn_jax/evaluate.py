"""Evaluation of a trained model on a split: corpus perplexity, greedy captions, and for the
``shapes`` dataset the share of captions that name the largest object correctly.

These functions take parameters and data and return numbers; logging and files are the
caller's business.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from mrnn_jax import decode, metrics, sharding
from mrnn_jax.data.pipeline import CaptionTable, SplitData, eval_batches, image_batches
from mrnn_jax.model import MRNN
from mrnn_jax.vocab import Vocabulary


def make_eval_step(model: MRNN) -> Callable:
    """A pure ``eval_step(params, batch) -> {nll_sum, num_tokens}`` (not yet jitted)."""

    def eval_step(params, batch):
        inputs, targets, mask = metrics.shift_tokens(batch["tokens"])
        logits = model.apply({"params": params}, batch["image"], inputs)
        return metrics.masked_nll_sums(logits, targets, mask)

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
) -> dict[str, float]:
    """Corpus-level per-word perplexity of every caption of a split (end token included)."""
    sharding.check_batch_size(batch_size, mesh, "eval.batch_size")
    eval_step = _jitted_eval_step(model, mesh)
    totals = []
    for batch in eval_batches(table, inputs, batch_size):
        totals.append(eval_step(params, sharding.shard_batch(batch, mesh)))
    totals = jax.device_get(totals)
    nll_sum = float(sum(t["nll_sum"] for t in totals))
    num_tokens = float(sum(t["num_tokens"] for t in totals))
    return {
        "perplexity": metrics.perplexity(nll_sum, num_tokens),
        "nll_per_word": nll_sum / max(num_tokens, 1.0),
        "num_words": num_tokens,
    }


def greedy_captions(
    model: MRNN,
    params: dict,
    inputs: np.ndarray,
    vocab: Vocabulary,
    batch_size: int,
    max_words: int,
    mesh: Mesh,
) -> tuple[list[str], list[float]]:
    """The greedy caption and its log-probability for every image input."""
    sharding.check_batch_size(batch_size, mesh, "eval.batch_size")
    captions, log_probs = [], []
    variables = {"params": params}
    for batch, count in image_batches(inputs, batch_size):
        tokens, log_prob = decode.greedy(
            model, variables, sharding.shard_batch(batch, mesh), max_words
        )
        tokens, log_prob = jax.device_get((tokens, log_prob))
        captions.extend(" ".join(vocab.decode(row)) for row in tokens[:count])
        log_probs.extend(float(x) for x in log_prob[:count])
    return captions, log_probs


def contains_phrase(caption: str, phrase: str) -> bool:
    """Whether ``phrase`` occurs in ``caption`` as whole consecutive words."""
    return f" {phrase} " in f" {caption} "


def shapes_phrase_accuracy(captions: list[str], scenes: list) -> float:
    """Share of captions naming the largest object's colour and shape as one phrase."""
    pairs = zip(captions, scenes, strict=True)
    hits = [contains_phrase(caption, scene.largest_phrase()) for caption, scene in pairs]
    return float(np.mean(hits)) if hits else float("nan")


def evaluate_split(
    model: MRNN,
    params: dict,
    data: SplitData,
    vocab: Vocabulary,
    *,
    max_words: int,
    decode_words: int,
    batch_size: int,
    mesh: Mesh,
) -> tuple[dict[str, float], list[str]]:
    """Perplexity and greedy captions of one split (plus phrase accuracy where ground truth is
    known). Returns ``(metrics, captions)``."""
    table = CaptionTable.build_uncut(data.records, vocab, max_words)
    result = split_perplexity(model, params, table, data.inputs, batch_size, mesh)
    captions, _ = greedy_captions(model, params, data.inputs, vocab, batch_size, decode_words, mesh)
    result["num_images"] = len(data.records)
    if data.scenes is not None:
        result["phrase_accuracy"] = shapes_phrase_accuracy(captions, data.scenes)
    return result, captions
