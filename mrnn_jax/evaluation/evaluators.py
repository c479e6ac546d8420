"""Evaluators: small plug-ins that the training loop runs when they are due (big_vision style).

Each evaluator is built once from its config entry (``config.evaluators.<name>``) with the
data it needs, and then only maps parameters to named scalars: ``run(params) -> {name:
value}``. The training loop knows nothing else about them: it asks which are due at a step,
runs them and logs their scalars under the evaluator's ``prefix`` (``val/perplexity``,
``val/CIDEr-D``, ``val/image R@1``), which is also how ``train.select_by`` names one.

Config entry keys (every kind):
  kind:    "perplexity", "captions" or "retrieval".
  split:   the dataset split it reads ("val").
  prefix:  the name its scalars are logged under ("" = the split's name).
  every:   steps between runs; 0 = every ``train.eval_every`` steps; -1 = never. An evaluator
           that runs at all also runs at the last step.
  num_images: the first N images of the split (0 = all).

captions: ``strategy`` ("greedy" or "beam"), ``beam_size``, ``metrics`` (coco-caption
metric names: BLEU, ROUGE_L, CIDEr, METEOR; METEOR needs Java). CIDEr-D's document
frequencies come from the references of the N images scored, as coco-caption computes it for
any set of images, so its value on a subset is not that of the whole split.

retrieval: R@1/5/10 and the median rank of both directions over the N images and all their
captions (sentences ranked by P(S|I)/P(S), P(S) over the same images).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

from jax.sharding import Mesh
from ml_collections import ConfigDict

from mrnn_jax import decode
from mrnn_jax.data.pipeline import CaptionTable, SplitData
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import captioning, retrieval
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import Vocabulary

KINDS = ("perplexity", "captions", "retrieval")


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """One evaluator: ``run(params) -> {scalar name: value}``, due every ``every`` steps.

    Attributes:
      name: its key in ``config.evaluators``.
      prefix: what its scalars are logged under (``"val"`` gives ``"val/perplexity"``).
      every: steps between runs (resolved: never 0); -1 = never.
      run: the evaluation itself, parameters to scalars.
    """

    name: str
    prefix: str
    every: int
    run: Callable[[dict], dict[str, float]]

    def due(self, step: int, last: bool) -> bool:
        """Whether it runs after training step ``step`` (``last``: the final step)."""
        return self.every > 0 and (step % self.every == 0 or last)


def split_names(evaluators_config: ConfigDict) -> set[str]:
    """The splits every enabled evaluator of the config reads."""
    return {
        str(entry.split) for entry in evaluators_config.values() if int(entry.get("every", 0)) >= 0
    }


def check_config(evaluators_config: ConfigDict) -> None:
    """Raises :class:`MrnnError` for an evaluator entry no run could use."""
    for name, entry in evaluators_config.items():
        kind = entry.get("kind")
        if kind not in KINDS:
            raise MrnnError(f"evaluators.{name}.kind={kind!r}: choose from {', '.join(KINDS)}")
        if not entry.get("split"):
            raise MrnnError(f"evaluators.{name}.split must name a split")
        if int(entry.get("every", 0)) < -1:
            raise MrnnError(f"evaluators.{name}.every must be >= -1 (-1 = never)")
        if int(entry.get("num_images", 0)) < 0:
            raise MrnnError(f"evaluators.{name}.num_images must be >= 0 (0 = all)")
        if kind == "captions" and entry.get("strategy", "greedy") not in ("greedy", "beam"):
            raise MrnnError(f"evaluators.{name}.strategy must be greedy or beam")


def check_scorers(config: ConfigDict) -> None:
    """Raises :class:`MrnnError` when the run scores captions (an enabled captions
    evaluator, or ``eval.metrics``) but the coco-caption scorers are not installed."""
    scoring = [
        f"evaluators.{name}"
        for name, entry in config.evaluators.items()
        if entry.get("kind") == "captions" and int(entry.get("every", 0)) >= 0
    ]
    if config.eval.get("metrics"):
        scoring.append("eval.metrics")
    if not scoring:
        return
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError:
        raise MrnnError(
            f"{', '.join(scoring)} score captions with pycocoevalcap, which is not installed: "
            "pip install 'mrnn-jax[eval]', or set evaluators.captions.every=-1 and "
            "eval.metrics=()"
        ) from None


def _subset(data: SplitData, num_images: int) -> SplitData:
    if not num_images or num_images >= len(data.records):
        return data
    scenes = None if data.scenes is None else data.scenes[:num_images]
    return SplitData(data.records[:num_images], data.inputs[:num_images], scenes)


def build_evaluators(
    config: ConfigDict,
    model: MRNN,
    vocab: Vocabulary,
    splits: Mapping[str, SplitData],
    mesh: Mesh,
) -> list[Evaluator]:
    """The evaluators ``config.evaluators`` lists (enabled or not), bound to their data."""
    check_config(config.evaluators)
    max_words = int(config.dataset.max_words)
    batch_size = int(config.eval.batch_size)
    built = []
    for name, entry in config.evaluators.items():
        split = str(entry.split)
        if split not in splits:
            raise MrnnError(
                f"evaluators.{name} reads split {split!r}, which the dataset does not have "
                f"(has {sorted(splits)})"
            )
        every = int(entry.get("every", 0)) or int(config.train.eval_every)
        data = _subset(splits[split], int(entry.get("num_images", 0)))
        kind = entry.kind
        if kind == "perplexity":
            run = _perplexity(model, vocab, data, max_words, batch_size, mesh)
        elif kind == "captions":
            options = decode.DecodeOptions(
                strategy=str(entry.get("strategy", "greedy")),
                beam_size=int(entry.get("beam_size", 3)),
                max_words=int(config.eval.max_decode_words),
            )
            metrics = tuple(entry.get("metrics", ("BLEU", "ROUGE_L", "CIDEr")))
            run = _captions(model, vocab, data, options, metrics, max_words, batch_size, mesh)
        else:
            run = _retrieval(model, vocab, data, max_words, mesh)
        built.append(Evaluator(name, str(entry.get("prefix", "") or split), every, run))
    return built


def due(evaluators: Iterable[Evaluator], step: int, last: bool) -> list[Evaluator]:
    """The evaluators that run after ``step``."""
    return [e for e in evaluators if e.due(step, last)]


def check_selection(evaluators_config: ConfigDict, metric: str) -> None:
    """Raises :class:`MrnnError` unless an enabled evaluator logs under ``metric``'s prefix
    (the names within a prefix are known only once its evaluators have run)."""
    prefixes = {
        name: str(entry.get("prefix", "") or entry.split)
        for name, entry in evaluators_config.items()
        if int(entry.get("every", 0)) >= 0
    }
    prefix = metric.split("/", 1)[0]
    if prefix not in prefixes.values():
        listed = ", ".join(f"{name} -> {p}/" for name, p in prefixes.items()) or "none enabled"
        raise MrnnError(
            f"train.select_by={metric!r}: no enabled evaluator logs under {prefix!r} "
            f"(config.evaluators: {listed})"
        )


def _perplexity(model, vocab, data, max_words, batch_size, mesh) -> Callable:
    table = CaptionTable.build_uncut(data.records, vocab, max_words)

    def run(params: dict) -> dict[str, float]:
        return captioning.split_perplexity(model, params, table, data.inputs, batch_size, mesh)

    return run


def _captions(model, vocab, data, options, metrics, max_words, batch_size, mesh) -> Callable:
    def run(params: dict) -> dict[str, float]:
        result = captioning.evaluate_captioning(
            model,
            params,
            data,
            vocab,
            options,
            max_words=max_words,
            batch_size=batch_size,
            mesh=mesh,
            perplexity=float("nan"),  # the perplexity evaluator's job
            metrics=metrics,
        )
        scalars = {k: v for k, v in result.metrics.items() if k != "perplexity"}
        return {k: float(v) for k, v in scalars.items() if v is not None}

    return run


def _retrieval(model, vocab, data, max_words, mesh) -> Callable:
    table = CaptionTable.build_uncut(data.records, vocab, max_words)

    def run(params: dict) -> dict[str, float]:
        results, _, _ = retrieval.evaluate_retrieval(
            model, {"params": params}, table.tokens, table.image_index, data.inputs, mesh=mesh
        )
        names = {"image retrieval": "image", "sentence retrieval": "sentence"}
        return {
            f"{short} {key}": float(value)
            for direction, short in names.items()
            for key, value in results[direction].items()
            if key != "mean rank"
        }

    return run
