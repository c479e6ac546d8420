"""The final evaluation of a run: the best checkpoint's parameters on the config's splits."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from jax.sharding import Mesh
from ml_collections import ConfigDict

from mrnn_jax import decode
from mrnn_jax.data.pipeline import SplitData
from mrnn_jax.evaluation import captioning
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import Vocabulary

NUM_EXAMPLES = 10  # example captions per split in results.json and the run's page


class SplitResult(NamedTuple):
    """One split's final evaluation: its scalars (None where a metric has no value) and the
    first images' captions beside their references."""

    split: str
    values: dict[str, float | int | None]
    examples: list[dict]


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
    options = decode.DecodeOptions(strategy="greedy", max_words=config.eval.max_decode_words)
    for split in config.eval.splits:
        result = captioning.evaluate_captioning(
            model,
            params,
            splits[split],
            vocab,
            options,
            max_words=config.dataset.max_words,
            batch_size=config.eval.batch_size,
            mesh=mesh,
            metrics=tuple(config.eval.metrics),
        )
        values = {"num_images": len(result.image_ids), **result.metrics}
        examples = [
            {"image_id": i, "caption": c[0][0] if c else "", "references": r}
            for i, c, r in zip(
                result.image_ids[:NUM_EXAMPLES],
                result.captions[:NUM_EXAMPLES],
                result.references[:NUM_EXAMPLES],
                strict=True,
            )
        ]
        yield SplitResult(split, values, examples)
