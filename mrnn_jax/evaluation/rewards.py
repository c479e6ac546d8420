"""Per-caption CIDEr-D and BLEU-4 against a fixed reference corpus: the reward of
self-critical sequence training (Rennie et al. 2017; Luo 2020), and the one CIDEr-D
implementation of the project (consensus reranking's :class:`PairCider` uses it too).

CIDEr-D is computed as pycocoevalcap's ``Cider`` (the class :mod:`coco_metrics` reports as
CIDEr-D): n-grams n = 1..4 as tf-idf vectors, the hypothesis' tf-idf clipped by each
reference's, cosine per n, a Gaussian length penalty (sigma = 6) on the difference in bigram
counts, the mean over n and over the image's references, times 10. The one difference from
running ``Cider`` on a batch is where the document frequencies come from: here they are
computed once, from the reference corpus given at construction (the training images'
caption sets), as in SCST, not from the batch being scored. An n-gram unseen in the corpus
has idf ``log(number of images)``, as in pycocoevalcap. BLEU-4 is pycocoevalcap's ``Bleu``
of one image: clipped n-gram matches against the image's references, the toolkit's smoothing
(``1e-15``, ``1e-9``) and the brevity penalty against the closest reference length.

Everything about the references is computed once: their n-grams as integer ids, the idf, each
reference's tf-idf norms and lengths, and per training image the sorted n-gram ids of its
references with each reference's count. Scoring a batch then takes a few numpy sorts and
gathers over the batch's n-grams, with no Python loop over captions or n-grams (strings are
split in Python; token-id arrays not even that).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np

from mrnn_jax.errors import MrnnError
from mrnn_jax.text.vocab import END_ID, PAD_ID, START_ID

#: The metrics a reward can mix, as :class:`CaptionRewards` names them.
REWARD_METRICS: tuple[str, ...] = ("CIDEr-D", "BLEU-4")
#: n-gram orders of CIDEr-D and BLEU-4.
ORDERS = 4
#: CIDEr-D's length-penalty width (pycocoevalcap's default).
SIGMA = 6.0
_TINY, _SMALL = 1e-15, 1e-9  # pycocoevalcap's BLEU smoothing


def check_reward_metrics(
    metrics: Sequence[str], weights: Sequence[float]
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The metrics and weights of a reward as tuples; MrnnError (one line) when a name is not
    in :data:`REWARD_METRICS`, a name repeats, none is given, or the weights do not match."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    allowed = ", ".join(REWARD_METRICS)
    for name in metrics:
        if name not in REWARD_METRICS:
            raise MrnnError(f"unknown reward metric {name!r}; choose from {allowed}")
    if not metrics:
        raise MrnnError(f"a reward needs at least one metric; choose from {allowed}")
    if len(set(metrics)) != len(metrics):
        raise MrnnError(f"reward metrics {metrics} name one metric twice")
    try:
        weights = tuple(float(w) for w in weights)
    except (TypeError, ValueError):
        raise MrnnError(f"reward weights {weights!r} must be numbers") from None
    if len(weights) != len(metrics):
        raise MrnnError(
            f"reward metrics {metrics} and weights {weights} differ in length "
            f"({len(metrics)} != {len(weights)})"
        )
    if not all(math.isfinite(w) for w in weights):
        raise MrnnError(f"reward weights {weights} must be finite")
    return metrics, weights


# --- n-grams of many sentences at once -----------------------------------------------------


@dataclasses.dataclass
class _Grams:
    """The n-grams of one order of a set of sentences.

    ``keys[g]`` identifies gram ``g`` (sorted, unique): the word id for unigrams, else
    ``prefix * base + last word`` with ``prefix`` the gram id of its first n-1 words.
    ``sentence``, ``gram``, ``count``: one entry per (sentence, distinct gram in it).
    """

    keys: np.ndarray
    sentence: np.ndarray
    gram: np.ndarray
    count: np.ndarray


def _ngrams(words: np.ndarray, starts: np.ndarray, base: int, orders: int) -> list[_Grams]:
    """The n-grams (n = 1..``orders``) of the sentences ``words[starts[i]:starts[i+1]]``
    (word ids below ``base``), each order's grams numbered in sorted key order."""
    lengths = np.diff(starts)
    sentence_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    left = lengths[sentence_of] - (np.arange(len(words), dtype=np.int64) - starts[sentence_of])
    out: list[_Grams] = []
    previous = np.zeros(0, np.int64)
    for n in range(1, orders + 1):
        at = np.flatnonzero(left >= n)  # positions where an n-gram starts
        keys = words[at] if n == 1 else previous[at] * base + words[at + n - 1]
        unique, gram = np.unique(keys, return_inverse=True)
        pair, count = np.unique(sentence_of[at] * len(unique) + gram, return_counts=True)
        out.append(_Grams(unique, pair // max(len(unique), 1), pair % max(len(unique), 1), count))
        previous = np.zeros(len(words), np.int64)
        previous[at] = gram
    return out


# --- the reference corpus ------------------------------------------------------------------


@dataclasses.dataclass
class PairStatistics:
    """What a batch of hypotheses shares with the references of its images.

    Arrays over hypotheses ``h`` and the references ``j`` of each one's image (padded to the
    batch's most references; ``valid[h, j]`` marks real ones): ``rows`` (corpus row of
    reference j), ``numerator[h, j, n]`` (CIDEr-D's sum of clipped tf-idf products),
    ``hypothesis_norms[h, n]``, ``hypothesis_words[h]``, ``bleu_matches[h, n]`` (n-gram
    matches clipped by the most frequent count over the references).
    """

    rows: np.ndarray
    valid: np.ndarray
    numerator: np.ndarray
    hypothesis_norms: np.ndarray
    hypothesis_words: np.ndarray
    bleu_matches: np.ndarray


class ReferenceNgrams:
    """The n-gram statistics of a reference corpus, computed once: document frequencies
    (over images), each reference's tf-idf norms and lengths, and each image's n-grams.

    Args:
      references: per image, its tokenised reference captions (words split on whitespace);
        the corpus rows are these captions in order (image 0's first, ...).
      vocabulary: optionally, the words of token ids (``Vocabulary.words``), for
        :meth:`encode_tokens`.
    """

    def __init__(
        self, references: Sequence[Sequence[str]], vocabulary: Sequence[str] | None = None
    ):
        if isinstance(references, str) or not len(references):
            raise MrnnError("rewards: the reference corpus must be a non-empty list of images")
        per_image = np.asarray([len(r) for r in references], np.int64)
        if per_image.min() < 1:
            first = int(np.argmin(per_image))
            raise MrnnError(f"rewards: reference image {first} has no captions")
        split = [caption.split() for refs in references for caption in refs]
        flat = list(itertools.chain.from_iterable(split))
        self.word_ids: dict[str, int] = {w: i for i, w in enumerate(dict.fromkeys(flat))}
        words = np.fromiter(map(self.word_ids.__getitem__, flat), np.int64, len(flat))
        lengths = np.asarray([len(s) for s in split], np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        self.num_images = len(references)
        self.num_words = max(len(self.word_ids), 1)
        self.per_image = per_image
        self.first_row = np.concatenate([[0], np.cumsum(per_image)])  # image -> its rows
        self.row_image = np.repeat(np.arange(self.num_images), per_image)
        self.ref_len = float(np.log(float(self.num_images)))  # pycocoevalcap's name
        self.reference_words = lengths
        self.reference_bigrams = np.maximum(lengths - 1, 0)  # CIDEr-D's "length"

        grams = _ngrams(words, starts, self.num_words, ORDERS)
        self.keys = [g.keys for g in grams]  # per order: sorted keys, gram id = position
        self.offsets = np.concatenate([[0], np.cumsum([len(k) for k in self.keys])])
        size = int(self.offsets[-1])
        sentence = np.concatenate([g.sentence for g in grams])
        column = np.concatenate([g.gram + self.offsets[n] for n, g in enumerate(grams)])
        count = np.concatenate([g.count for g in grams])
        order = np.repeat(np.arange(ORDERS), [len(g.count) for g in grams])

        # Per image: the sorted columns of its references' n-grams, and a block
        # [grams, references] of each reference's count of each.
        image = self.row_image[sentence]
        pair, entry = np.unique(image * size + column, return_inverse=True)
        self.image_columns = (pair % max(size, 1)).astype(np.int64)
        grams_per_image = np.bincount(pair // max(size, 1), minlength=self.num_images)
        self.image_start = np.concatenate([[0], np.cumsum(grams_per_image)])
        self.block_start = np.concatenate([[0], np.cumsum(grams_per_image * per_image)])
        dtype = np.uint16 if count.size == 0 or count.max() < 2**16 else np.uint32
        self.block_counts = np.zeros(int(self.block_start[-1]), dtype)
        self.block_counts[
            self.block_start[image]
            + (entry - self.image_start[image]) * per_image[image]
            + (sentence - self.first_row[image])
        ] = count

        df = np.bincount(self.image_columns, minlength=size).astype(np.float64)
        self.idf = self.ref_len - np.log(np.maximum(1.0, df))
        squares = (count * self.idf[column]) ** 2
        self.reference_norms = np.sqrt(
            np.bincount(sentence * ORDERS + order, squares, minlength=len(split) * ORDERS)
        ).reshape(len(split), ORDERS)

        self.token_words: np.ndarray | None = None
        if vocabulary is not None:
            self.token_words = np.asarray(  # token id -> word id; unknown words above V
                [self.word_ids.get(w, self.num_words + i) for i, w in enumerate(vocabulary)],
                np.int64,
            )

    # --- hypotheses as word ids ---

    def encode_strings(self, hypotheses: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Word ids and sentence starts of tokenised strings (words unseen in the references
        get distinct ids from ``num_words`` up)."""
        if isinstance(hypotheses, str):
            raise MrnnError("rewards: hypotheses must be a list of strings, not one string")
        split = [h.split() for h in hypotheses]
        flat = list(itertools.chain.from_iterable(split))
        words = np.fromiter(map(self.word_ids.get, flat, itertools.repeat(-1)), np.int64, len(flat))
        unseen = np.flatnonzero(words < 0)
        if unseen.size:  # distinct ids from num_words up
            ids = {
                w: self.num_words + i for i, w in enumerate(dict.fromkeys(flat[i] for i in unseen))
            }
            words[unseen] = [ids[flat[i]] for i in unseen]
        starts = np.concatenate([[0], np.cumsum([len(s) for s in split])]).astype(np.int64)
        return words, starts

    def encode_tokens(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Word ids and sentence starts of token-id rows ``[N, T]``, read as
        ``Vocabulary.decode`` does: a leading start token skipped, each row ending at its
        first end or padding token."""
        if self.token_words is None:
            raise MrnnError("rewards: scoring token ids needs the vocabulary (vocabulary=...)")
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            raise MrnnError(
                f"rewards: token ids must be an integer [N, T] array, got {tokens.shape}"
            )
        if tokens.size and (tokens.min() < 0 or tokens.max() >= len(self.token_words)):
            raise MrnnError(
                f"rewards: token ids must lie in [0, {len(self.token_words)}), the vocabulary"
            )
        position = np.arange(tokens.shape[1])
        first = (tokens[:, :1] == START_ID).astype(np.int64) if tokens.shape[1] else 0
        stop = ((tokens == END_ID) | (tokens == PAD_ID)) & (position >= first)
        stop = np.concatenate([stop, np.ones((len(tokens), 1), bool)], axis=1)
        end = np.argmax(stop, axis=1)
        keep = (position >= first) & (position < end[:, None])
        words = self.token_words[tokens[keep]]
        starts = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
        return words, starts

    # --- what hypotheses share with their images' references ---

    def statistics(
        self, words: np.ndarray, starts: np.ndarray, images: np.ndarray
    ) -> PairStatistics:
        """The :class:`PairStatistics` of the hypotheses (word ids and starts, as the
        ``encode_*`` methods give) against the references of ``images`` (one per hypothesis)."""
        count = len(starts) - 1
        images = np.asarray(images)
        if images.shape != (count,) or not (
            images.size == 0 or np.issubdtype(images.dtype, np.integer)
        ):
            raise MrnnError(
                f"rewards: {count} hypotheses need {count} integer image indices, "
                f"got shape {images.shape}"
            )
        images = images.astype(np.int64)
        if count and (images.min() < 0 or images.max() >= self.num_images):
            raise MrnnError(
                f"rewards: image indices must lie in [0, {self.num_images}), the references"
            )
        base = max(self.num_words, int(words.max()) + 1 if words.size else 1)
        grams = _ngrams(words, starts, base, ORDERS)

        # Each batch gram's corpus column (-1: unseen), order by order through its prefix.
        hyp, columns, counts, orders = [], [], [], []
        local = np.zeros(0, np.int64)
        for n, g in enumerate(grams):
            if n == 0:
                local = np.where(g.keys < self.num_words, g.keys, -1)
            else:
                prefix = local[g.keys // base]
                last = g.keys % base
                table = self.keys[n]
                ask = np.flatnonzero((prefix >= 0) & (last < self.num_words))
                key = prefix[ask] * self.num_words + last[ask]
                at = np.minimum(np.searchsorted(table, key), max(len(table) - 1, 0))
                hit = table[at] == key if len(table) else np.zeros(len(ask), bool)
                local = np.full(len(g.keys), -1, np.int64)
                local[ask[hit]] = at[hit]
            column = local[g.gram]
            hyp.append(g.sentence)
            columns.append(np.where(column >= 0, column + self.offsets[n], -1))
            counts.append(g.count)
            orders.append(np.full(len(g.count), n))
        hyp_e = np.concatenate(hyp)
        column_e = np.concatenate(columns)
        count_e = np.concatenate(counts).astype(np.float64)
        order_e = np.concatenate(orders)
        idf = np.append(self.idf, self.ref_len)[column_e]  # column -1 (unseen): log(images)
        norms = np.sqrt(
            np.bincount(hyp_e * ORDERS + order_e, (count_e * idf) ** 2, minlength=count * ORDERS)
        ).reshape(count, ORDERS)

        # Look the seen grams up among their image's reference grams.
        unique_images, slot = np.unique(images, return_inverse=True)
        seg_start = self.image_start[unique_images]
        seg_len = self.image_start[unique_images + 1] - seg_start
        within = np.arange(int(seg_len.sum())) - np.repeat(np.cumsum(seg_len) - seg_len, seg_len)
        index = np.repeat(seg_start, seg_len) + within
        size = max(int(self.offsets[-1]), 1)
        table = np.repeat(np.arange(len(unique_images)), seg_len) * size + self.image_columns[index]
        known = np.flatnonzero(column_e >= 0)
        query = slot[hyp_e[known]] * size + column_e[known]
        at = np.minimum(np.searchsorted(table, query), max(len(table) - 1, 0))
        hit = table[at] == query if len(table) else np.zeros(len(query), bool)
        found, entry = known[hit], index[at[hit]]  # entries, and their image-gram index

        per_image = self.per_image[images]
        width = int(per_image.max()) if count else 1
        j = np.arange(width)
        image_f = images[hyp_e[found]]
        block = (
            self.block_start[image_f]
            + (entry - self.image_start[image_f]) * per_image[hyp_e[found]]
        )
        inside = j[None, :] < self.per_image[image_f][:, None]
        ref_counts = np.where(
            inside, self.block_counts[np.where(inside, block[:, None] + j, 0)], 0
        ).astype(np.float64)
        tf = count_e[found][:, None]
        products = np.minimum(tf, ref_counts) * ref_counts * (idf[found] ** 2)[:, None]
        slots = (hyp_e[found][:, None] * width + j) * ORDERS + order_e[found][:, None]
        numerator = np.bincount(
            slots.ravel(), products.ravel(), minlength=count * width * ORDERS
        ).reshape(count, width, ORDERS)
        matches = np.minimum(count_e[found], ref_counts.max(axis=1, initial=0.0))
        bleu = np.bincount(
            hyp_e[found] * ORDERS + order_e[found], matches, minlength=count * ORDERS
        ).reshape(count, ORDERS)

        valid = j[None, :] < per_image[:, None]
        rows = np.where(valid, self.first_row[images][:, None] + j, 0)
        return PairStatistics(rows, valid, numerator, norms, np.diff(starts), bleu)

    def pair_cider(self, stats: PairStatistics, sigma: float = SIGMA) -> np.ndarray:
        """CIDEr-D ``[h, j]`` of each hypothesis against each of its image's references alone
        (times 10, as pycocoevalcap; 0 where ``stats.valid`` is False)."""
        ref_norms = self.reference_norms[stats.rows]
        denominator = stats.hypothesis_norms[:, None, :] * ref_norms
        both = (stats.hypothesis_norms[:, None, :] != 0) & (ref_norms != 0)
        value = np.where(both, stats.numerator / np.where(both, denominator, 1.0), stats.numerator)
        delta = (
            (np.maximum(stats.hypothesis_words - 1, 0)[:, None])
            - self.reference_bigrams[stats.rows]
        )
        value = value * np.exp(-(delta.astype(np.float64) ** 2) / (2 * sigma**2))[:, :, None]
        return np.where(stats.valid, 10.0 * value.mean(axis=2), 0.0)

    def cider_d(self, stats: PairStatistics, sigma: float = SIGMA) -> np.ndarray:
        """Each hypothesis' CIDEr-D against its image's references (the mean over them)."""
        return self.pair_cider(stats, sigma).sum(axis=1) / stats.valid.sum(axis=1)

    def bleu4(self, stats: PairStatistics) -> np.ndarray:
        """Each hypothesis' BLEU-4 against its image's references, as pycocoevalcap's ``Bleu``
        scores a one-image corpus (closest reference length)."""
        length = stats.hypothesis_words
        ref_length = np.where(stats.valid, self.reference_words[stats.rows], 0)
        distance = np.where(
            stats.valid, np.abs(ref_length - length[:, None]), np.iinfo(np.int64).max
        )
        nearest = distance == distance.min(axis=1, keepdims=True)
        closest = np.where(nearest, ref_length, np.iinfo(np.int64).max).min(axis=1)
        guesses = np.maximum(length[:, None] - np.arange(ORDERS), 0)
        score = np.ones(len(length))
        for n in range(ORDERS):
            score = score * ((stats.bleu_matches[:, n] + _TINY) / (guesses[:, n] + _SMALL))
        score = score ** (1.0 / ORDERS)
        ratio = (length + _TINY) / (closest + _SMALL)
        with np.errstate(over="ignore", divide="ignore"):
            penalty = np.where(ratio < 1, np.exp(1 - 1 / ratio), 1.0)
        return score * penalty


# --- the reward ------------------------------------------------------------------------------


class CaptionRewards:
    """Per-caption rewards against a fixed reference corpus: a weighted sum of CIDEr-D and
    BLEU-4 (:data:`REWARD_METRICS`), with CIDEr-D's document frequencies from the corpus.

    Args:
      references: per training image, its tokenised reference captions.
      metrics, weights: the reward is ``sum(w * metric)``; MrnnError for an unknown name.
      vocabulary: the words of token ids (``Vocabulary.words``), to score token-id arrays.
    """

    def __init__(
        self,
        references: Sequence[Sequence[str]],
        metrics: Sequence[str] = ("CIDEr-D",),
        weights: Sequence[float] = (1.0,),
        vocabulary: Sequence[str] | None = None,
    ):
        self.metrics, self.weights = check_reward_metrics(metrics, weights)
        self.ngrams = ReferenceNgrams(references, vocabulary)

    def score_by_metric(
        self, hypotheses: Sequence[str] | np.ndarray, image_indices: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Each metric's value (float64 per hypothesis) of ``hypotheses`` (tokenised strings,
        or token ids ``[N, T]`` ending at an end or padding token) against the references
        of ``image_indices`` (one corpus image per hypothesis)."""
        if isinstance(hypotheses, np.ndarray) and hypotheses.ndim == 2:
            words, starts = self.ngrams.encode_tokens(hypotheses)
        else:
            words, starts = self.ngrams.encode_strings(hypotheses)
        stats = self.ngrams.statistics(words, starts, image_indices)
        out = {}
        if "CIDEr-D" in self.metrics:
            out["CIDEr-D"] = self.ngrams.cider_d(stats)
        if "BLEU-4" in self.metrics:
            out["BLEU-4"] = self.ngrams.bleu4(stats)
        return out

    def score(
        self, hypotheses: Sequence[str] | np.ndarray, image_indices: np.ndarray
    ) -> np.ndarray:
        """The reward (float64 per hypothesis): the weighted sum of :meth:`score_by_metric`."""
        values = self.score_by_metric(hypotheses, image_indices)
        total = np.zeros(len(np.asarray(image_indices)))
        for name, weight in zip(self.metrics, self.weights, strict=True):
            total = total + weight * values[name]
        return total
