"""The SCST reward: per-caption CIDEr-D and BLEU-4 equal to pycocoevalcap's on the same
corpus, the token-id path equal to the string path, the mix, and the errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import consensus, rewards
from mrnn_jax.text.vocab import END_ID, PAD_ID, RESERVED, START_ID

WORDS = [
    "a",
    "the",
    "red",
    "blue",
    "circle",
    "square",
    "big",
    "small",
    "left",
    "of",
    "right",
    "on",
    "zebra",
]
IMAGES = 120
ROUNDS = 3  # hypotheses per image, each round scored by pycocoevalcap as one corpus


def _references(rng: random.Random) -> list[list[str]]:
    """1-5 captions per image, 0-12 words (some empty), words from a small vocabulary."""
    return [
        [" ".join(rng.choices(WORDS, k=rng.randint(0, 12))) for _ in range(rng.randint(1, 5))]
        for _ in range(IMAGES)
    ]


def _hypothesis(rng: random.Random, references: list[str]) -> str:
    kind = rng.random()
    if kind < 0.08:
        return ""
    if kind < 0.4:  # one of the image's references, a word changed or dropped
        words = rng.choice(references).split()
        if words and rng.random() < 0.5:
            words[rng.randrange(len(words))] = rng.choice(WORDS)
        elif words:
            del words[rng.randrange(len(words))]
        return " ".join(words)
    if kind < 0.2:  # one word repeated, sometimes with an unseen one
        return " ".join([rng.choice(WORDS)] * rng.randint(1, 8) + ["unseen"] * rng.randint(0, 2))
    words = rng.choices(WORDS + ["novel", "words"], k=rng.randint(1, 16))
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[list[str]], list[list[str]]]:
    rng = random.Random(7)
    references = _references(rng)
    rounds = [[_hypothesis(rng, refs) for refs in references] for _ in range(ROUNDS)]
    rounds[0][0] = "an unseen hypothesis word"
    rounds[1][1] = references[1][0]  # a hypothesis equal to a reference
    return references, rounds


def _batch(rounds: list[list[str]], seed: int) -> tuple[list[str], np.ndarray]:
    """Every round's hypotheses in one shuffled batch, with their image indices."""
    items = [(h, i) for hyps in rounds for i, h in enumerate(hyps)]
    random.Random(seed).shuffle(items)
    return [h for h, _ in items], np.asarray([i for _, i in items])


def test_cider_d_equals_pycocoevalcap_on_the_same_corpus(corpus):
    references, rounds = corpus
    gts = dict(enumerate(references))
    expected = {}
    for hyps in rounds:
        _, per_image = Cider().compute_score(gts, {i: [h] for i, h in enumerate(hyps)})
        expected.update({(h, i): s for i, (h, s) in enumerate(zip(hyps, per_image, strict=True))})
    hypotheses, images = _batch(rounds, seed=0)
    ours = rewards.CaptionRewards(references).score(hypotheses, images)
    want = np.asarray([expected[(h, i)] for h, i in zip(hypotheses, images, strict=True)])
    assert ours.dtype == np.float64 and len(ours) == ROUNDS * IMAGES
    assert np.count_nonzero(want) > 0.6 * len(want)  # a fixture that mostly scores
    np.testing.assert_allclose(ours, want, rtol=1e-10, atol=1e-12)
    assert ours[[h == "" for h in hypotheses]].tolist() == [0.0] * sum(h == "" for h in hypotheses)


def test_bleu4_equals_pycocoevalcap_per_image(corpus):
    references, rounds = corpus
    hypotheses, images = _batch(rounds, seed=1)
    ours = rewards.CaptionRewards(references, metrics=("BLEU-4",)).score(hypotheses, images)
    want = []
    for hypothesis, image in zip(hypotheses, images, strict=True):
        score, _ = Bleu(4).compute_score({0: references[image]}, {0: [hypothesis]}, verbose=0)
        want.append(score[3])
    assert np.count_nonzero(np.asarray(want) > 0.1) > 0.15 * len(want)  # real 4-gram matches
    np.testing.assert_allclose(ours, want, rtol=1e-10, atol=1e-12)


def test_the_mix_weighs_each_metric(corpus):
    references, rounds = corpus
    hypotheses, images = _batch(rounds, seed=2)
    mixed = rewards.CaptionRewards(references, ("BLEU-4", "CIDEr-D"), (0.25, 2.0))
    each = mixed.score_by_metric(hypotheses, images)
    assert set(each) == {"CIDEr-D", "BLEU-4"}
    alone = rewards.CaptionRewards(references).score(hypotheses, images)
    np.testing.assert_array_equal(each["CIDEr-D"], alone)
    np.testing.assert_allclose(
        mixed.score(hypotheses, images), 0.25 * each["BLEU-4"] + 2.0 * alone, rtol=1e-14
    )


def test_token_ids_score_as_their_decoded_strings(corpus):
    references, rounds = corpus
    vocabulary = list(RESERVED) + WORDS[:-1] + ["novel", "never"]  # "zebra" is <unk>
    index = {w: i for i, w in enumerate(vocabulary)}
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, len(vocabulary), size=(200, 14))
    tokens[::3, 0] = START_ID
    tokens[1::7, 0] = END_ID  # empty captions
    tokens[2::5, 6:] = PAD_ID
    tokens[4, :] = index["red"]  # no end token at all
    decoded = []
    for row in tokens:
        ids = row[1:] if row[0] == START_ID else row
        words = []
        for i in ids:
            if i in (END_ID, PAD_ID):
                break
            words.append(vocabulary[i])
        decoded.append(" ".join(words))
    assert "<start>" in " ".join(decoded) and "<unk>" in " ".join(decoded)
    images = rng.integers(0, IMAGES, size=len(tokens))
    scorer = rewards.CaptionRewards(references, ("CIDEr-D", "BLEU-4"), (1.0, 1.0), vocabulary)
    from_tokens = scorer.score_by_metric(tokens.astype(np.int32), images)
    from_strings = scorer.score_by_metric(decoded, images)
    for name in ("CIDEr-D", "BLEU-4"):
        np.testing.assert_array_equal(from_tokens[name], from_strings[name])
    assert np.count_nonzero(from_tokens["CIDEr-D"]) > 50


def test_unknown_metrics_and_bad_inputs_raise_one_line_errors(corpus):
    references, _ = corpus
    with pytest.raises(MrnnError, match="choose from CIDEr-D, BLEU-4") as err:
        rewards.CaptionRewards(references, metrics=("CIDEr",))
    assert "\n" not in str(err.value)
    assert rewards.REWARD_METRICS == ("CIDEr-D", "BLEU-4")
    with pytest.raises(MrnnError, match="differ in length"):
        rewards.CaptionRewards(references, metrics=("CIDEr-D", "BLEU-4"), weights=(1.0,))
    with pytest.raises(MrnnError, match="image 2 has no captions"):
        rewards.CaptionRewards([["a b"], ["c"], []])
    scorer = rewards.CaptionRewards(references)
    with pytest.raises(MrnnError, match=r"image indices must lie in \[0, 120\)"):
        scorer.score(["a red circle"], np.asarray([IMAGES]))
    with pytest.raises(MrnnError, match="2 hypotheses need 2 integer image indices"):
        scorer.score(["a", "b"], np.asarray([0]))
    with pytest.raises(MrnnError, match="needs the vocabulary"):
        scorer.score(np.zeros((2, 3), np.int32), np.asarray([0, 1]))


def test_an_empty_batch_scores_nothing_and_empty_references_score_zero(corpus):
    references, _ = corpus
    scorer = rewards.CaptionRewards(references, ("CIDEr-D", "BLEU-4"), (1.0, 0.5))
    assert scorer.score([], np.zeros(0, np.int64)).shape == (0,)
    empty = rewards.CaptionRewards([[""], ["", ""]], ("CIDEr-D", "BLEU-4"), (1.0, 1.0))
    gts, res = {0: [""], 1: ["", ""]}, {0: ["a b"], 1: [""]}
    # pycocoevalcap's Cider fails on a corpus without n-grams; nothing is shared: CIDEr-D 0.
    bleu = [Bleu(4).compute_score({0: gts[i]}, {0: res[i]}, verbose=0)[0][3] for i in (0, 1)]
    each = empty.score_by_metric(["a b", ""], np.asarray([0, 1]))
    np.testing.assert_array_equal(each["CIDEr-D"], [0.0, 0.0])
    np.testing.assert_allclose(each["BLEU-4"], bleu, rtol=1e-12, atol=1e-300)


def test_pair_cider_is_the_reward_per_reference_in_any_row_order(corpus):
    references, rounds = corpus
    pair = consensus.PairCider(references)
    reward = rewards.CaptionRewards(references)
    first = np.cumsum([0] + [len(r) for r in references])
    rng = np.random.default_rng(4)
    rows = rng.permutation(np.concatenate([np.arange(first[-1]), [0, 5, 5]]))
    for hypothesis in rounds[0][:10]:
        mixed = pair.scores(hypothesis, rows)
        alone = np.concatenate(
            [pair.scores(hypothesis, np.arange(first[i], first[i + 1])) for i in range(IMAGES)]
        )
        np.testing.assert_array_equal(mixed, alone[rows])
        means = [alone[first[i] : first[i + 1]].mean() for i in range(IMAGES)]
        whole = reward.score([hypothesis] * IMAGES, np.arange(IMAGES))
        np.testing.assert_allclose(means, whole, rtol=1e-12, atol=1e-14)
    with pytest.raises(MrnnError, match="reference rows must lie in"):
        pair.scores("a", np.asarray([first[-1]]))
