"""Evaluators: the one way a split is scored (big_vision style plug-ins, built from config).

An evaluator is built once from a config entry (a ``config.evaluators.<name>`` section, or a
plain dict) by the builder its ``kind`` names in :data:`REGISTRY`, bound to the data it
reads; after that it only maps parameters to a :class:`Result`: ``run(params)``, whose
``scalars`` the training loop logs under the evaluator's ``prefix`` (``val/perplexity``,
``val/CIDEr-D``, ``val/image R@1``, which is also how ``train.select_by`` names one), and
whose captions or ranks the drivers write to pages and files. Everything that scores a split
is a driver over these evaluators: the training loop, the final evaluation
(:mod:`mrnn_jax.evaluation.final`), ``mrnn evaluate`` / :func:`mrnn_jax.api.evaluate_captioning`,
``mrnn retrieve`` / :func:`mrnn_jax.api.retrieval_metrics`, and the experiments' scripts.

Entry keys (every kind):
  kind:    "perplexity", "captions" or "retrieval" (:data:`REGISTRY`'s keys).
  split:   the dataset split it reads ("val").
  prefix:  the name its scalars are logged under ("" = the split's name).
  every:   steps between runs; 0 = every ``train.eval_every`` steps; -1 = never. An evaluator
           that runs at all also runs at the last step.
  num_images: the first N images of the split (0 = all).

captions: any :class:`~mrnn_jax.decode.DecodeOptions` field (``strategy``, ``beam_size``,
``length_penalty``, ...; ``max_words`` defaults to ``eval.max_decode_words``), ``metrics``
(coco-caption metric names: BLEU, ROUGE_L, CIDEr, METEOR; METEOR needs Java; None = all),
``perplexity`` (also report the split's perplexity; default off, the perplexity evaluator's
job during training), and ``rerank`` ("none" or "consensus": the beam's n-best reranked by
agreement with the captions of the nearest training images, with ``rerank_metric``,
``rerank_features`` and ``rerank_hypotheses`` overriding the config's ``rerank`` section).
CIDEr-D's document frequencies come from the references of the N images scored, as
coco-caption computes it for any set of images, so its value on a subset is not that of the
whole split.

retrieval: R@1/5/10 and the median rank of both directions over the N images (those with
captions) and all their captions (sentences ranked by P(S|I)/P(S), P(S) over the same images,
or over ``prior_images`` sampled training images), ``fold_size`` (0 = one fold; 1000 = COCO's
1K test), ``sentence_tile`` and ``image_tile`` (the score matrix's tiles).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from mrnn_jax import configs, decode
from mrnn_jax.data.pipeline import CaptionTable, SplitData
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import captioning, consensus, retrieval
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import Vocabulary

#: The coco-caption metrics a captions evaluator scores unless its entry names others.
CAPTION_METRICS = ("BLEU", "ROUGE_L", "CIDEr")


@dataclasses.dataclass(frozen=True)
class Ranks:
    """What a retrieval evaluation ranked, for the pages and files that show it.

    Attributes:
      metrics: per direction ("image retrieval", "sentence retrieval", "sentence retrieval
        (raw)"), R@1/5/10, median and mean rank.
      records, inputs: the images ranked (those with captions), and the model's inputs.
      table: their captions, encoded (``table.image_index``: each sentence's image).
      scores: log P(S | I), ``[sentences, images]``.
      log_prior: log P(S) when estimated over training images (else None: over ``inputs``).
      prior_images: how many training images P(S) was estimated over (None: the split's).
    """

    metrics: dict[str, dict[str, float]]
    records: list
    inputs: np.ndarray
    table: CaptionTable
    scores: np.ndarray
    log_prior: np.ndarray | None
    prior_images: int | None


@dataclasses.dataclass(frozen=True)
class Result:
    """One evaluator's run: named values (None where a metric has no value, see
    ``unavailable``) and, where it makes them, the captions or ranks behind them.

    Attributes:
      values: metric name -> value, in the order the evaluator computes them.
      unavailable: metric -> why it could not be computed.
      captions: a captions evaluator's per-image captions, references and scores.
      ranks: a retrieval evaluator's score matrix and ranks.
    """

    values: dict[str, float | None]
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)
    captions: captioning.CaptioningResult | None = None
    ranks: Ranks | None = None

    @property
    def scalars(self) -> dict[str, float]:
        """The values that exist, as floats: what the training loop logs."""
        return {k: float(v) for k, v in self.values.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """One evaluator: ``run(params) -> Result``, due every ``every`` steps.

    Attributes:
      name: its key in ``config.evaluators`` (or the name a driver gave it).
      prefix: what its scalars are logged under (``"val"`` gives ``"val/perplexity"``).
      every: steps between runs (resolved: never 0); -1 = never.
      run: the evaluation itself, parameters to a :class:`Result`.
    """

    name: str
    prefix: str
    every: int
    run: Callable[..., Result]

    def due(self, step: int, last: bool) -> bool:
        """Whether it runs after training step ``step`` (``last``: the final step)."""
        return self.every > 0 and (step % self.every == 0 or last)


@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """What evaluators are built with.

    Attributes:
      config: the run's config (``dataset.max_words``, ``eval.max_decode_words``,
        ``train.eval_every``, ``rerank``; the dataset's paths, for consensus reranking's
        training images).
      model, vocab: the model and its vocabulary.
      splits: the loaded splits, by name (retrieval's ``prior_images`` reads ``train``).
      mesh: the devices batches are split over.
      batch_size: images (or captions) per batch; a multiple of the mesh's size.
      progress: progress bars while decoding and scoring.
    """

    config: ConfigDict
    model: MRNN
    vocab: Vocabulary
    splits: Mapping[str, SplitData]
    mesh: Mesh
    batch_size: int
    progress: bool = False


#: kind -> builder ``(entry, context, data) -> run``; :func:`register` adds one.
REGISTRY: dict[str, Callable[[Mapping, Context, SplitData], Callable[..., Result]]] = {}


def register(kind: str) -> Callable:
    """A decorator adding an evaluator builder to :data:`REGISTRY` under ``kind``."""

    def add(builder: Callable) -> Callable:
        REGISTRY[kind] = builder
        return builder

    return add


def split_names(evaluators_config: ConfigDict) -> set[str]:
    """The splits every enabled evaluator of the config reads."""
    return {
        str(entry.split) for entry in evaluators_config.values() if int(entry.get("every", 0)) >= 0
    }


def check_entry(name: str, entry: Mapping) -> None:
    """Raises :class:`MrnnError` for an evaluator entry no run could use."""
    configs.check_evaluator(name, entry, tuple(REGISTRY))


def check_config(evaluators_config: ConfigDict) -> None:
    """Raises :class:`MrnnError` for an evaluator entry of the config no run could use
    (during training, captions are greedy or beam search)."""
    configs.check_evaluators(evaluators_config, tuple(REGISTRY))


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
    try:  # the eval extra: is it installed?
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


def build(name: str, entry: Mapping, context: Context) -> Evaluator:
    """The evaluator of one config entry, bound to its split's data."""
    check_entry(name, entry)
    split = str(entry["split"])
    if split not in context.splits:
        raise MrnnError(
            f"evaluators.{name} reads split {split!r}, which the dataset does not have "
            f"(has {sorted(context.splits)})"
        )
    every = int(entry.get("every", 0)) or int(context.config.train.eval_every)
    data = _subset(context.splits[split], int(entry.get("num_images", 0) or 0))
    run = REGISTRY[entry["kind"]](entry, context, data)
    return Evaluator(name, str(entry.get("prefix", "") or split), every, run)


def build_evaluators(
    config: ConfigDict,
    model: MRNN,
    vocab: Vocabulary,
    splits: Mapping[str, SplitData],
    mesh: Mesh,
) -> list[Evaluator]:
    """The evaluators ``config.evaluators`` lists (enabled or not), bound to their data."""
    check_config(config.evaluators)
    context = Context(config, model, vocab, splits, mesh, int(config.eval.batch_size))
    return [build(name, entry, context) for name, entry in config.evaluators.items()]


def due(evaluators: Iterable[Evaluator], step: int, last: bool) -> list[Evaluator]:
    """The evaluators that run after ``step``."""
    return [e for e in evaluators if e.due(step, last)]


def check_selection(
    evaluators_config: ConfigDict, metric: str, key: str = "train.select_by"
) -> None:
    """Raises :class:`MrnnError` unless an enabled evaluator logs under ``metric``'s prefix
    (the names within a prefix are known only once its evaluators have run); ``key`` is
    the config key that named it."""
    prefixes = {
        name: str(entry.get("prefix", "") or entry.split)
        for name, entry in evaluators_config.items()
        if int(entry.get("every", 0)) >= 0
    }
    prefix = metric.split("/", 1)[0]
    if prefix not in prefixes.values():
        listed = ", ".join(f"{name} -> {p}/" for name, p in prefixes.items()) or "none enabled"
        raise MrnnError(
            f"{key}={metric!r}: no enabled evaluator logs under {prefix!r} "
            f"(config.evaluators: {listed})"
        )


# --- the kinds ---------------------------------------------------------------------------


@register("perplexity")
def _perplexity(entry: Mapping, context: Context, data: SplitData) -> Callable[..., Result]:
    table = CaptionTable.build_uncut(data.records, context.vocab, context.config.dataset.max_words)

    def run(params: Any) -> Result:
        return Result(
            captioning.split_perplexity(
                context.model, params, table, data.inputs, context.batch_size, context.mesh
            )
        )

    return run


def captions_entry(split: str, options: decode.DecodeOptions, **keys) -> dict:
    """A captions evaluator's entry for ``split`` decoding with ``options``, plus ``keys``."""
    return {"kind": "captions", "split": split, **dataclasses.asdict(options), **keys}


@dataclasses.dataclass(frozen=True, eq=False)
class CaptionsRun:
    """A captions evaluator's run: decode the split (:func:`captioning.generate_captions`),
    optionally rerank, score.

    Attributes:
      options: the decoding options (for consensus reranking, the beam's n-best).
      consensus: the consensus reranking options, or None.
      metrics: the coco-caption metrics scored (None: all).
      perplexity: whether the split's perplexity is reported too.
    """

    context: Context
    data: SplitData
    options: decode.DecodeOptions
    consensus: Any
    metrics: tuple[str, ...] | None
    perplexity: bool

    def __call__(
        self,
        params: Any,
        *,
        perplexity: float | None = None,
        generated: list | None = None,
        reranker: Any = None,
    ) -> Result:
        """Scores ``params``' captions of the split. A driver that evaluates several
        decodings of one split may pass what they share: the split's ``perplexity``, the
        ``generated`` n-best to rerank, and the consensus ``reranker``."""
        context = self.context
        if self.consensus is not None and reranker is None:
            reranker = self.reranker(params)
        if perplexity is None and not self.perplexity:
            perplexity = math.nan
        result = captioning.evaluate_captioning(
            context.model,
            params,
            self.data,
            context.vocab,
            self.options,
            max_words=context.config.dataset.max_words,
            batch_size=context.batch_size,
            mesh=context.mesh,
            progress=context.progress,
            perplexity=perplexity,
            metrics=self.metrics,
            generated=generated,
            reranker=reranker if self.consensus is not None else None,
        )
        return Result(dict(result.metrics), dict(result.unavailable), captions=result)

    def reranker(self, params: Any):
        """The consensus reranker over the run's training images, by ``params``' features."""
        context = self.context
        return consensus.load_reranker(
            context.model, params, context.config, self.consensus, context.batch_size
        )


@register("captions")
def _captions(entry: Mapping, context: Context, data: SplitData) -> CaptionsRun:
    config = context.config
    options = decode.DecodeOptions.from_mapping(entry, max_words=config.eval.max_decode_words)
    rerank = entry.get("rerank") or "none"
    metric, features = entry.get("rerank_metric"), entry.get("rerank_features")
    consensus_options = None
    if rerank == "consensus":
        if options.strategy == "sample":
            raise MrnnError("consensus reranking reranks beam-search hypotheses, not samples")
        hypotheses = entry.get("rerank_hypotheses")
        if hypotheses is None and options.strategy == "beam":
            hypotheses = options.beam_size
        consensus_options = consensus.ConsensusOptions.from_config(
            config.rerank, metric=metric, features=features, num_hypotheses=hypotheses
        )
        k = consensus_options.num_hypotheses
        options = dataclasses.replace(options, strategy="beam", beam_size=k, num_return=k)
    elif rerank != "none":
        raise MrnnError(f"unknown reranking {rerank!r}: choose consensus")
    elif metric or features:
        raise MrnnError("rerank_metric and rerank_features need rerank='consensus'")
    metrics = entry.get("metrics", CAPTION_METRICS)
    return CaptionsRun(
        context,
        data,
        options,
        consensus_options,
        None if metrics is None else tuple(metrics),
        bool(entry.get("perplexity", False)),
    )


#: How a retrieval evaluator names its directions in its scalars.
DIRECTIONS = {"image retrieval": "image", "sentence retrieval": "sentence"}


@register("retrieval")
def _retrieval(entry: Mapping, context: Context, data: SplitData) -> Callable[..., Result]:
    captioned = [i for i, record in enumerate(data.records) if record.tokens]
    records = [data.records[i] for i in captioned]
    if not records:
        raise MrnnError(f"split {entry['split']!r} has no captioned images")
    inputs = data.inputs[captioned] if len(captioned) < len(data.records) else data.inputs
    table = CaptionTable.build_uncut(records, context.vocab, context.config.dataset.max_words)
    prior = None
    prior_images = int(entry.get("prior_images", 0) or 0)
    if prior_images:
        if "train" not in context.splits:
            raise MrnnError("retrieval's prior_images samples the train split, not loaded")
        train = context.splits["train"].inputs
        rng = np.random.default_rng(0)
        prior = train[np.sort(rng.choice(len(train), min(prior_images, len(train)), False))]
    fold_size = int(entry.get("fold_size", 0) or 0) or None
    tiles = {
        "sentence_tile": int(entry.get("sentence_tile", 16)),
        "image_tile": int(entry.get("image_tile", 32)),
    }

    def run(params: Any) -> Result:
        metrics, scores, log_prior = retrieval.evaluate_retrieval(
            context.model,
            {"params": params},
            table.tokens,
            table.image_index,
            inputs,
            prior_inputs=prior,
            fold_size=fold_size,
            progress=context.progress,
            mesh=context.mesh,
            **tiles,
        )
        values = {
            f"{short} {key}": float(value)
            for direction, short in DIRECTIONS.items()
            for key, value in metrics[direction].items()
            if key != "mean rank"
        }
        ranks = Ranks(
            metrics,
            records,
            inputs,
            table,
            scores,
            log_prior,
            None if prior is None else len(prior),
        )
        return Result(values, ranks=ranks)

    return run
