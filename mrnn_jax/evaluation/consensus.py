"""Consensus reranking: the m-RNN's "nearest neighbor as reference" (ICLR 2015, section 8).

For a test image, find its ``k`` nearest training images by image features, take their
captions as references, and rerank the image's n-best beam-search hypotheses by how well
each agrees with those references: each hypothesis is scored against every reference alone
(CIDEr-D or BLEU-4), and its consensus score is the mean of its ``m`` best scores. The
authors' package (mjhucla/mRNN-CR) does the same with Euclidean distances between the
model's own projected image features (they found them better than the CNN's), ``k = 60``,
``m = 125`` for CIDEr and ``m = 175`` for BLEU, over the 10 hypotheses of a beam of 10; those
are this module's defaults (``config.rerank``).

The pieces: :func:`nearest_neighbours` (a jitted matrix product and top-k, batched over the
queries), :func:`image_features` (V_I·I or the CNN's I, batched), :class:`PairCider`
(CIDEr-D of a hypothesis against single references, with the training captions' document
frequencies; tested equal to pycocoevalcap's CIDEr-D), :func:`pair_bleu4` (pycocoevalcap's
BLEU scorer, one reference at a time), and :class:`ConsensusReranker`, which holds the
training side and reranks candidates.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from mrnn_jax.data import load_split
from mrnn_jax.data.pipeline import image_batches
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import rewards
from mrnn_jax.model import MRNN
from mrnn_jax.text.ptb_tokenizer import ptb_tokenize

FEATURES = ("projection", "cnn")
METRICS = ("CIDEr", "BLEU")
#: The authors' m per metric (mRNN-CR's conf_cr.py, validated on their COCO split).
AUTHORS_REFERENCES = {"CIDEr": 125, "BLEU": 175}


@dataclasses.dataclass(frozen=True)
class ConsensusOptions:
    """How consensus reranking runs (defaults: the authors' mRNN-CR choices for CIDEr).

    Attributes:
      features: "projection" (the model's V_I·I, the authors' choice) or "cnn" (I itself).
      num_neighbours: nearest training images whose captions are the references (k).
      num_references: the best-agreeing references averaged per hypothesis (m); 0 = the
        authors' value for the metric (:data:`AUTHORS_REFERENCES`: 125 CIDEr, 175 BLEU).
      num_hypotheses: beam-search hypotheses reranked (the beam size).
      metric: "CIDEr" (CIDEr-D) or "BLEU" (BLEU-4).
    """

    features: str = "projection"
    num_neighbours: int = 60
    num_references: int = 0
    num_hypotheses: int = 10
    metric: str = "CIDEr"

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise MrnnError(f"rerank.features={self.features!r}: choose from {FEATURES}")
        if self.metric not in METRICS:
            raise MrnnError(f"rerank.metric={self.metric!r}: choose from {METRICS}")
        for name in ("num_neighbours", "num_hypotheses"):
            if getattr(self, name) < 1:
                raise MrnnError(f"rerank.{name} must be positive, got {getattr(self, name)}")
        if self.num_references < 0:
            raise MrnnError(f"rerank.num_references must be >= 0, got {self.num_references}")

    @property
    def references_kept(self) -> int:
        """m: how many of the best single-reference scores are averaged."""
        return self.num_references or AUTHORS_REFERENCES[self.metric]

    @classmethod
    def from_config(cls, rerank_config: ConfigDict, **overrides) -> ConsensusOptions:
        """The options of a config's ``rerank`` section, changed by ``overrides``."""
        values = {f.name: rerank_config.get(f.name, f.default) for f in dataclasses.fields(cls)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# --- nearest neighbours ------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("k",))
def nearest_neighbours(queries: jax.Array, database: jax.Array, k: int) -> jax.Array:
    """Indices ``[Q, k]`` of each query's ``k`` nearest database rows by Euclidean distance,
    nearest first (ties to the lower index); one matrix product and a top-k."""
    queries = queries.astype(jnp.float32)
    database = database.astype(jnp.float32)
    squared = (
        jnp.sum(queries**2, axis=1, keepdims=True)
        - 2.0 * queries @ database.T
        + jnp.sum(database**2, axis=1)[None, :]
    )
    return jax.lax.top_k(-squared, k)[1]


def nearest_in_batches(
    queries: np.ndarray, database: np.ndarray, k: int, batch_size: int = 256
) -> np.ndarray:
    """:func:`nearest_neighbours` over the queries in padded batches (one compiled shape);
    ``k`` is capped at the database size."""
    k = min(k, len(database))
    database = jnp.asarray(database)
    out = []
    for start in range(0, len(queries), batch_size):
        batch = np.asarray(queries[start : start + batch_size])
        count = len(batch)
        if count < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - count, axis=0)])
        out.append(np.asarray(nearest_neighbours(batch, database, k))[:count])
    return np.concatenate(out) if out else np.zeros((0, k), np.int32)


@functools.partial(jax.jit, static_argnames=("model", "kind"))
def _features(model: MRNN, params: dict, images: jax.Array, kind: str) -> jax.Array:
    method = MRNN.project_image if kind == "projection" else MRNN.image_features
    return model.apply({"params": params}, images, method=method)


def image_features(
    model: MRNN, params: dict, inputs: np.ndarray, kind: str, batch_size: int = 256
) -> np.ndarray:
    """Each image input's features for the neighbour search: V_I·I (``"projection"``) or the
    encoder's I (``"cnn"``), float32 ``[N, D]``, in padded batches."""
    out = []
    for batch, count in image_batches(inputs, batch_size):
        out.append(np.asarray(_features(model, params, batch, kind), np.float32)[:count])
    return np.concatenate(out)


# --- agreement of a hypothesis with single references ------------------------------------


class PairCider:
    """CIDEr-D of a hypothesis against each of several references on its own, as
    pycocoevalcap's ``Cider`` scores a one-reference image, with document frequencies over
    ``documents`` (one set of tokenised captions per image: the training images).

    The mean of :meth:`scores` over an image's references equals pycocoevalcap's CIDEr-D
    of that image when ``documents`` are the scored corpus's reference sets (tested). The
    n-gram statistics are :class:`mrnn_jax.evaluation.rewards.ReferenceNgrams`, the
    project's one CIDEr-D implementation (the SCST reward uses it too).
    """

    def __init__(self, documents: Sequence[Sequence[str]], sigma: float = rewards.SIGMA):
        self.sigma = sigma
        self.ngrams = rewards.ReferenceNgrams(documents)
        self.sentences: list[str] = [sentence for document in documents for sentence in document]

    def scores(self, hypothesis: str, references: np.ndarray) -> np.ndarray:
        """CIDEr-D (times 10, as pycocoevalcap) of tokenised ``hypothesis`` against each
        corpus sentence whose row is in ``references``, alone."""
        rows = np.asarray(references, np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self.sentences)):
            raise MrnnError(f"PairCider: reference rows must lie in [0, {len(self.sentences)})")
        images = self.ngrams.row_image[rows]
        unique_images, slot = np.unique(images, return_inverse=True)
        words, starts = self.ngrams.encode_strings([hypothesis] * len(unique_images))
        stats = self.ngrams.statistics(words, starts, unique_images)
        pair = self.ngrams.pair_cider(stats, self.sigma)
        return pair[slot, rows - self.ngrams.first_row[images]]


def pair_bleu4(hypothesis: str, references: Sequence[str]) -> np.ndarray:
    """Sentence BLEU-4 of tokenised ``hypothesis`` against each tokenised reference alone,
    with pycocoevalcap's BLEU scorer (its smoothing, closest reference length)."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer  # the eval extra, when used

    scorer = BleuScorer(n=4)
    for reference in references:
        scorer += (hypothesis, [reference])
    _, per_sentence = scorer.compute_score(option="closest", verbose=0)
    return np.asarray(per_sentence[3], np.float64)


def consensus_score(pair_scores: np.ndarray, num_references: int) -> float:
    """Mean of the ``num_references`` best single-reference scores (the authors' sum of the
    best m, divided by m: the same order)."""
    best = np.sort(np.asarray(pair_scores))[::-1][:num_references]
    return float(best.mean()) if best.size else 0.0


# --- the reranker ------------------------------------------------------------------------


class ConsensusReranker:
    """The training side of consensus reranking: features and captions of the training
    images; :meth:`rerank` reorders candidates of new images.

    Args:
      model, params: the m-RNN whose features find the neighbours.
      train_inputs: the training images' inputs (pixels or features), row-aligned with
        ``train_captions`` (their raw reference captions).
      options: :class:`ConsensusOptions`.
      batch_size: images per batch for features and the neighbour search.
    """

    def __init__(
        self,
        model: MRNN,
        params: dict,
        train_inputs: np.ndarray,
        train_captions: Sequence[Sequence[str]],
        options: ConsensusOptions,
        batch_size: int = 256,
    ):
        if len(train_inputs) != len(train_captions):
            raise MrnnError("consensus reranking: training inputs and captions differ in count")
        self.model, self.params, self.options, self.batch_size = model, params, options, batch_size
        self.train_features = image_features(
            model, params, train_inputs, options.features, batch_size
        )
        tokenised = functools.lru_cache(maxsize=None)(ptb_tokenize)  # captions repeat
        self.documents = [[tokenised(c) for c in captions] for captions in train_captions]
        self.first_row = np.cumsum([0] + [len(d) for d in self.documents])
        self.sentences = [sentence for document in self.documents for sentence in document]
        self.cider = PairCider(self.documents) if options.metric == "CIDEr" else None

    def with_metric(self, metric: str) -> ConsensusReranker:
        """The same training side (features, captions) scoring agreement by ``metric``."""
        if metric == self.options.metric:
            return self
        other = copy.copy(self)
        other.options = dataclasses.replace(self.options, metric=metric)
        other.cider = PairCider(self.documents) if metric == "CIDEr" else None
        return other

    def neighbours(self, image_inputs: np.ndarray) -> np.ndarray:
        """Indices ``[N, k]`` of each image's nearest training images, nearest first."""
        features = image_features(
            self.model, self.params, image_inputs, self.options.features, self.batch_size
        )
        return nearest_in_batches(
            features, self.train_features, self.options.num_neighbours, self.batch_size
        )

    def references(self, neighbours: np.ndarray) -> np.ndarray:
        """Corpus rows of the captions of the training images ``neighbours``."""
        return np.concatenate(
            [np.arange(self.first_row[i], self.first_row[i + 1]) for i in neighbours]
        )

    def consensus(self, hypotheses: Sequence[str], neighbours: np.ndarray) -> list[float]:
        """Each hypothesis' consensus score against the captions of ``neighbours``."""
        rows = self.references(neighbours)
        scores = []
        for hypothesis in hypotheses:
            tokens = ptb_tokenize(hypothesis)
            if self.cider is not None:
                pair = self.cider.scores(tokens, rows)
            else:
                pair = pair_bleu4(tokens, [self.sentences[r] for r in rows])
            scores.append(consensus_score(pair, self.options.references_kept))
        return scores

    def rerank(
        self, image_inputs: np.ndarray, candidates: Sequence[Sequence[tuple[str, float]]]
    ) -> list[list[tuple[str, float]]]:
        """Each image's candidates ``(caption, log-probability)`` reordered by consensus score,
        best first (ties keep the beam's order)."""
        neighbours = self.neighbours(image_inputs)
        out = []
        for row, options in zip(neighbours, candidates, strict=True):
            options = list(options)
            scores = self.consensus([c for c, _ in options], row)
            order = sorted(range(len(options)), key=lambda i: -scores[i])
            out.append([options[i] for i in order])
        return out


def load_reranker(
    model: MRNN,
    params: dict,
    config: ConfigDict,
    options: ConsensusOptions | None = None,
    batch_size: int = 256,
    max_train_images: int | None = None,
) -> ConsensusReranker:
    """A :class:`ConsensusReranker` over the training split of ``config``'s dataset (the
    first ``max_train_images`` only, if given); ``options`` default to ``config.rerank``."""
    options = options or ConsensusOptions.from_config(config.get("rerank", ConfigDict()))
    train = load_split(config.dataset, config.encoder, "train", max_train_images)
    captions = [list(record.captions) for record in train.records]
    return ConsensusReranker(model, params, train.inputs, captions, options, batch_size)
