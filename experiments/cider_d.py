"""CIDEr-D in pure Python, as self-critical.pytorch computes its SCST reward.

self-critical.pytorch (ruotianluo) scores sampled captions with the CIDEr-D scorer of its
coco-caption fork, built once as ``CiderD(df="coco-train-idxs")``: the document
frequencies (in how many images' reference sets each n-gram occurs) and the corpus size
are precomputed once from the *training* references, instead of from the references being
scored as pycocoevalcap's ``Cider`` does. Everything else is coco-caption's CIDEr-D:

* n-grams of 1..4 words; a caption is a vector of tf-idf weights per n,
  ``tf * (log(corpus size) - log(max(1, df)))``;
* the hypothesis's weights are clipped by the reference's (``min(h, r) * r``), the sum is
  divided by both vectors' norms (when neither is zero);
* a Gaussian length penalty ``exp(-delta^2 / (2 sigma^2))``, sigma = 6, where the length is
  coco-caption's: the caption's number of bigrams (``max(words - 1, 0)``);
* the mean over n, the mean over the references, times 10.

With the document frequencies taken from the scored corpus itself
(:meth:`CiderD.from_references` on the scored images' references) the scores are
pycocoevalcap's ``Cider`` to floating-point rounding (``tests/test_torch_mrnn.py``).
As in self-critical.pytorch, nothing is cached between calls: every :meth:`CiderD.score`
counts the n-grams of the hypothesis and of each reference again.

Written for ``experiments/torch_mrnn.py``'s reference SCST step; the library never imports
this file (its metrics call pycocoevalcap itself).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

NGram = tuple[str, ...]


def ngram_counts(words: Sequence[str], n: int = 4) -> Counter[NGram]:
    """How often each n-gram of 1..``n`` words occurs in ``words``."""
    counts: Counter[NGram] = Counter()
    for size in range(1, n + 1):
        for start in range(len(words) - size + 1):
            counts[tuple(words[start : start + size])] += 1
    return counts


def document_frequencies(references: Iterable[Sequence[str]], n: int = 4) -> dict[NGram, int]:
    """In how many images each n-gram occurs: ``references`` holds each image's reference
    captions (space-separated words); an n-gram counts once per image."""
    frequency: Counter[NGram] = Counter()
    for captions in references:
        seen: set[NGram] = set()
        for caption in captions:
            seen.update(ngram_counts(caption.split(), n))
        frequency.update(seen)
    return dict(frequency)


class CiderD:
    """CIDEr-D with fixed document frequencies (self-critical.pytorch's ``CiderD(df=...)``).

    ``document_frequency`` maps n-grams (tuples of words) to the number of images whose
    references hold them; ``corpus_size`` is the number of images they were counted over.
    """

    def __init__(
        self,
        document_frequency: Mapping[NGram, float],
        corpus_size: int,
        n: int = 4,
        sigma: float = 6.0,
    ) -> None:
        """A scorer with the given document frequencies (see the class docstring)."""
        if corpus_size < 1:
            raise ValueError(f"corpus_size must be at least 1, not {corpus_size}")
        self.document_frequency = document_frequency
        self.log_corpus_size = math.log(float(corpus_size))
        self.n = n
        self.sigma = sigma

    @classmethod
    def from_references(
        cls, references: Sequence[Sequence[str]], n: int = 4, sigma: float = 6.0
    ) -> CiderD:
        """A scorer whose document frequencies are counted over ``references`` (each
        image's reference captions), once, as self-critical.pytorch's
        ``scripts/prepro_ngrams.py`` does for the training split."""
        return cls(document_frequencies(references, n), len(references), n, sigma)

    def _vector(self, caption: str) -> tuple[list[dict[NGram, float]], list[float], int]:
        """The caption's tf-idf weights per n-gram size, their norms, and its length."""
        weights: list[dict[NGram, float]] = [{} for _ in range(self.n)]
        squares = [0.0] * self.n
        words = caption.split()
        for gram, tf in ngram_counts(words, self.n).items():
            idf = self.log_corpus_size - math.log(max(1.0, self.document_frequency.get(gram, 0)))
            weight = float(tf) * idf
            weights[len(gram) - 1][gram] = weight
            squares[len(gram) - 1] += weight * weight
        # coco-caption's length is the number of bigrams (it counts n-gram index 1).
        length = max(len(words) - 1, 0) if self.n >= 2 else 0
        return weights, [math.sqrt(s) for s in squares], length

    def score(self, hypothesis: str, references: Sequence[str]) -> float:
        """CIDEr-D of one caption (space-separated words) against its image's references."""
        if not references:
            raise ValueError("CIDEr-D needs at least one reference caption")
        hyp, hyp_norm, hyp_length = self._vector(hypothesis)
        total = [0.0] * self.n
        for reference in references:
            ref, ref_norm, ref_length = self._vector(reference)
            penalty = math.exp(-(float(hyp_length - ref_length) ** 2) / (2.0 * self.sigma**2))
            for size in range(self.n):
                matched = ref[size]
                value = 0.0
                for gram, weight in hyp[size].items():
                    other = matched.get(gram, 0.0)
                    value += min(weight, other) * other
                if hyp_norm[size] != 0.0 and ref_norm[size] != 0.0:
                    value /= hyp_norm[size] * ref_norm[size]
                total[size] += value * penalty
        return sum(total) / self.n / len(references) * 10.0

    def compute_score(
        self, gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]]
    ) -> tuple[float, np.ndarray]:
        """pycocoevalcap's interface: ``gts`` maps each key to its references, ``res`` to a
        one-caption list. Returns the mean score and the scores in ``res``'s order."""
        scores = np.array([self.score(res[key][0], gts[key]) for key in res], dtype=np.float64)
        return float(scores.mean()) if len(scores) else 0.0, scores
