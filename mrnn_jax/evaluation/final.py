"""The final evaluation of a run: the evaluators run on the best checkpoint's parameters.

``config.eval`` says what it scores: for each split of ``eval.splits``, one ``captions``
evaluator (:mod:`mrnn_jax.evaluation.evaluators`) with greedy decoding of at most
``eval.max_decode_words`` words, the coco-caption ``eval.metrics`` and the split's
perplexity, in batches of ``eval.batch_size``: the same code path that scores a split during
training, in ``mrnn evaluate`` and in the experiments' scripts.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from jax.sharding import Mesh
from ml_collections import ConfigDict

from mrnn_jax.data.pipeline import SplitData
from mrnn_jax.evaluation import evaluators
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import Vocabulary

NUM_EXAMPLES = 10  # example captions per split in results.json and the run's page


class SplitResult(NamedTuple):
    """One split's final evaluation: its scalars (None where a metric has no value) and the
    first images' captions beside their references."""

    split: str
    values: dict[str, float | int | None]
    examples: list[dict]


def final_entries(config: ConfigDict) -> dict[str, dict]:
    """The evaluator entries of the final evaluation, by split (see the module docstring)."""
    return {
        split: {
            "kind": "captions",
            "split": split,
            "strategy": "greedy",
            "metrics": tuple(config.eval.metrics),
            "perplexity": True,
        }
        for split in config.eval.splits
    }


def examples(result: evaluators.Result, count: int = NUM_EXAMPLES) -> list[dict]:
    """The first ``count`` images' best captions beside their references."""
    captions = result.captions
    return [
        {"image_id": i, "caption": c[0][0] if c else "", "references": r}
        for i, c, r in zip(
            captions.image_ids[:count],
            captions.captions[:count],
            captions.references[:count],
            strict=True,
        )
    ]


def final_evaluation(
    config: ConfigDict,
    model: MRNN,
    params: Any,
    vocab: Vocabulary,
    splits: Mapping[str, SplitData],
    mesh: Mesh,
) -> Iterator[SplitResult]:
    """Evaluates ``params`` on each split of ``config.eval.splits`` in turn (perplexity,
    greedy captions and their ``config.eval.metrics``), yielding each split's result."""
    context = evaluators.Context(config, model, vocab, splits, mesh, int(config.eval.batch_size))
    for split, entry in final_entries(config).items():
        result = evaluators.build(split, entry, context).run(params)
        values = {"num_images": len(result.captions.image_ids), **result.values}
        yield SplitResult(split, values, examples(result))
