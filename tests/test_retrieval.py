"""Retrieval: the score matrix equals the training forward pass; ranks and R@K by hand."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mrnn_jax import losses
from mrnn_jax.evaluation import retrieval
from mrnn_jax.model import make_model


def _model_and_params(vocab: int = 13, features: int = 6):
    model = make_model(
        {"embed_dim": 5, "word_dim": 6, "multimodal_dim": 7, "dropout_rate": 0.5},
        {"name": "features"},
        vocab,
    )
    params = model.init(
        jax.random.PRNGKey(0), np.zeros((1, features), np.float32), np.zeros((1, 3), np.int32)
    )
    return model, params


def _tokens(rng: np.random.Generator, count: int, length: int, vocab: int) -> np.ndarray:
    tokens = np.zeros((count, length + 2), np.int32)
    for row in range(count):
        n = rng.integers(0, length + 1)
        tokens[row, 0] = 1
        tokens[row, 1 : n + 1] = rng.integers(3, vocab, n)
        tokens[row, n + 1] = 2
    return tokens


def test_every_entry_equals_the_training_forward_pass():
    rng = np.random.default_rng(0)
    model, params = _model_and_params()
    tokens = _tokens(rng, 7, 6, 13)
    images = rng.normal(size=(5, 6)).astype(np.float32)
    scores = retrieval.score_matrix(model, params, tokens, images, sentence_tile=3, image_tile=2)
    assert scores.shape == (7, 5)
    inputs, targets, mask = losses.shift_tokens(tokens)
    for i in range(5):
        repeated = np.repeat(images[i : i + 1], 7, axis=0)
        logits = model.apply(params, repeated, inputs)  # the training forward pass (eval mode)
        expected = -np.asarray((losses.token_nll(logits, targets) * mask).sum(-1))
        # Another program (tiled grid vs. one batch): float32 sums of up to 7 log-probabilities
        # of magnitude ~25 round a few ulp (~2e-6 each) apart; a wrong token moves them > 0.1.
        np.testing.assert_allclose(scores[:, i], expected, rtol=1e-5, atol=1e-5)


def test_tile_sizes_do_not_change_scores():
    rng = np.random.default_rng(1)
    model, params = _model_and_params()
    tokens, images = _tokens(rng, 9, 5, 13), rng.normal(size=(4, 6)).astype(np.float32)
    a = retrieval.score_matrix(model, params, tokens, images, sentence_tile=9, image_tile=4)
    b = retrieval.score_matrix(model, params, tokens, images, sentence_tile=2, image_tile=3)
    # Other tile shapes are other programs: scores of magnitude ~26 already differ by one ulp
    # (1.9e-6) here, so the tolerance is relative, float32 rounding of a 7-term sum.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_length_sorted_buckets_give_the_padded_scores_and_identical_metrics():
    rng = np.random.default_rng(2)
    model, params = _model_and_params()
    tokens = _tokens(rng, 40, 20, 13)  # 0 to 20 words: widths 8, 12, 16 and the full 22
    images = rng.normal(size=(8, 6)).astype(np.float32)
    image_of_sentence = np.arange(40) % 8
    padded = retrieval.score_matrix(model, params, tokens, images, widths=())
    bucketed = retrieval.score_matrix(model, params, tokens, images)  # the default
    narrow = retrieval.score_matrix(model, params, tokens, images, sentence_tile=5, widths=(4,))
    for scores in (bucketed, narrow):
        np.testing.assert_allclose(scores, padded, rtol=1e-6, atol=1e-5)
        assert retrieval.retrieval_metrics(
            scores, image_of_sentence
        ) == retrieval.retrieval_metrics(padded, image_of_sentence)
    assert not np.array_equal(np.argsort(_lengths(tokens)), np.arange(40))  # order matters


def _lengths(tokens: np.ndarray) -> np.ndarray:
    return np.count_nonzero(tokens, axis=1)


def test_first_correct_rank_by_hand_with_the_tie_rule():
    scores = np.array(
        [
            [0.9, 0.5, 0.1, 0.3],  # correct {0}: rank 1
            [0.9, 0.5, 0.1, 0.3],  # correct {2}: two better (0.9, 0.5), one (0.3) -> rank 4
            [0.2, 0.7, 0.7, 0.1],  # correct {2}, tie with wrong 0.7 -> pessimistic rank 2
            [0.8, 0.1, 0.6, 0.9],  # correct {1, 2}: first correct is 0.6 behind 0.9, 0.8 -> 3
            [0.5, 0.5, 0.5, 0.5],  # constant scorer, correct {0} -> worst rank 4
        ]
    )
    correct = np.zeros_like(scores, bool)
    for row, cols in enumerate([[0], [2], [2], [1, 2], [0]]):
        correct[row, cols] = True
    ranks = retrieval.first_correct_ranks(scores, correct)
    assert ranks.tolist() == [1, 4, 2, 3, 4]
    summary = retrieval.rank_summary(ranks, ks=(1, 3))
    assert summary == {"R@1": 20.0, "R@3": 60.0, "median rank": 3.0, "mean rank": 2.8}
    with pytest.raises(ValueError, match="at least one correct"):
        retrieval.first_correct_ranks(scores, np.zeros_like(correct))


def test_perfect_and_reversed_scorers_with_five_captions_per_image():
    images, per_image = 12, 5
    image_of_sentence = np.repeat(np.arange(images), per_image)
    perfect = np.where(image_of_sentence[:, None] == np.arange(images), 0.0, -10.0)
    result = retrieval.retrieval_metrics(perfect, image_of_sentence)
    for direction in result.values():
        assert direction["R@1"] == direction["R@5"] == direction["R@10"] == 100.0
        assert direction["median rank"] == 1.0
    reversed_scores = -perfect
    result = retrieval.retrieval_metrics(reversed_scores, image_of_sentence)
    assert result["image retrieval"]["R@10"] == 0.0
    assert result["image retrieval"]["median rank"] == images
    # The image's 5 sentences all rank after the 55 wrong ones.
    assert result["sentence retrieval (raw)"]["median rank"] == images * per_image - per_image + 1


def test_prior_normalisation_discounts_generic_sentences():
    # Sentence 2 is likely under every image (a generic caption); raw ranking answers both
    # images with it, P(S | I) / P(S) finds each image's own sentence.
    scores = np.log(
        np.array(
            [
                [0.30, 0.01],  # sentence 0, of image 0
                [0.01, 0.30],  # sentence 1, of image 1
                [0.50, 0.50],  # sentence 2, of image 1 too, but generic
            ]
        )
    )
    image_of_sentence = np.array([0, 1, 1])
    result = retrieval.retrieval_metrics(scores, image_of_sentence)
    assert result["sentence retrieval"]["R@1"] == 100.0
    assert result["sentence retrieval (raw)"]["R@1"] == 50.0  # image 0 gets sentence 2 first
    prior = retrieval.log_sentence_prior(scores)
    np.testing.assert_allclose(np.exp(prior), [0.155, 0.155, 0.5])


def test_folds_are_scored_with_their_own_sentences_and_averaged():
    # 4 images x 2 sentences. Fold 1 (images 0, 1) is scored perfectly; in fold 2 (images 2,
    # 3) every sentence prefers the other image. Cross-fold scores would spoil fold 1 if used.
    image_of_sentence = np.repeat(np.arange(4), 2)
    scores = np.full((8, 4), 5.0)  # cross-fold pairs score highest: must be ignored
    for s, image in enumerate(image_of_sentence):
        fold = slice(0, 2) if image < 2 else slice(2, 4)
        scores[s, fold] = -3.0
        scores[s, image] = -1.0 if image < 2 else -5.0
    result = retrieval.fold_metrics(scores, image_of_sentence, 2)
    assert result["image retrieval"]["R@1"] == 50.0  # 100 in fold 1, 0 in fold 2
    assert result["image retrieval"]["mean rank"] == 1.5
    assert result["sentence retrieval (raw)"]["R@1"] == 50.0
    whole = retrieval.retrieval_metrics(scores, image_of_sentence)
    assert whole["image retrieval"]["R@1"] == 0.0  # without folds, cross-fold pairs win


def test_a_given_prior_replaces_the_split_estimate():
    scores = np.log(np.array([[0.30, 0.01], [0.01, 0.30], [0.50, 0.50]]))
    image_of_sentence = np.array([0, 1, 1])
    flat = retrieval.retrieval_metrics(scores, image_of_sentence, log_prior=np.zeros(3))
    raw = retrieval.retrieval_metrics(scores, image_of_sentence)["sentence retrieval (raw)"]
    assert flat["sentence retrieval"] == raw  # a constant P(S) changes nothing
    generic_unlikely = retrieval.retrieval_metrics(
        scores, image_of_sentence, log_prior=np.log([0.3, 0.3, 0.9])
    )
    assert generic_unlikely["sentence retrieval"]["R@1"] == 100.0
