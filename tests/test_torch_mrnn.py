"""The PyTorch references in experiments/: the m-RNN's decoding step, the pure-Python CIDEr-D
(experiments/cider_d.py) against pycocoevalcap's, and the self-critical.pytorch-style SCST
step (experiments/torch_mrnn.py's TorchScst) at tiny sizes."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest

from tests.conftest import REPO

torch = pytest.importorskip("torch")
pytest.importorskip("pycocoevalcap")
sys.path.insert(0, os.path.join(REPO, "experiments"))  # as the benchmark scripts import them

from cider_d import CiderD, document_frequencies  # noqa: E402
from pycocoevalcap.cider.cider import Cider  # noqa: E402
from torch_mrnn import (  # noqa: E402
    END_ID,
    PAD_ID,
    TorchMRNN,
    TorchScst,
    mean_of_others,
    scst_loss,
)

WORDS = [
    "a",
    "dog",
    "cat",
    "runs",
    "on",
    "the",
    "grass",
    "red",
    "ball",
    "man",
    "woman",
    "sits",
    "in",
    "water",
]
VOCABULARY = ["<pad>", "<start>", "<end>", "<unk>", *WORDS]


def _corpus(images: int, seed: int = 0) -> list[list[str]]:
    """``images`` images' 5 reference captions each, of 1..12 words from WORDS."""
    rng = random.Random(seed)
    return [
        [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(5)]
        for _ in range(images)
    ]


def test_cider_d_equals_pycocoevalcap_with_the_corpus_document_frequencies():
    references = _corpus(20)
    rng = random.Random(1)
    hypotheses = [
        " ".join(rng.choice(WORDS) for _ in range(rng.choice([2, 5, 9, 14]))) for _ in references
    ]
    hypotheses[0] = ""  # empty
    hypotheses[1] = "dog"  # one word: no bigram, coco-caption's length 0
    hypotheses[2] = references[2][3]  # a reference itself
    hypotheses[3] = "a a a a a a a"  # clipped by the references' counts
    gts = dict(enumerate(references))
    res = {i: [h] for i, h in enumerate(hypotheses)}
    expected_mean, expected = Cider().compute_score(gts, res)
    scorer = CiderD.from_references(references)
    mean, scores = scorer.compute_score(gts, res)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    assert mean == pytest.approx(expected_mean, abs=1e-6)
    assert scores[2] > 1.0 and scores[0] == 0.0  # not a vacuous comparison
    assert scorer.score(hypotheses[5], references[5]) == pytest.approx(expected[5], abs=1e-6)


def test_document_frequencies_count_each_image_once():
    frequency = document_frequencies([["a dog", "a dog a"], ["a cat"]], n=2)
    assert frequency == {
        ("a",): 2,
        ("dog",): 1,
        ("cat",): 1,
        ("a", "dog"): 1,
        ("dog", "a"): 1,
        ("a", "cat"): 1,
    }


def test_precomputed_document_frequencies_change_the_score():
    """Training-set frequencies (self-critical.pytorch's df) differ from the scored corpus's."""
    train, scored = _corpus(30, seed=2), _corpus(4, seed=3)
    gts = dict(enumerate(scored))
    res = {i: [refs[0]] for i, refs in gts.items()}
    _, corpus_scores = Cider().compute_score(gts, res)
    _, train_scores = CiderD.from_references(train).compute_score(gts, res)
    assert np.max(np.abs(train_scores - corpus_scores)) > 1e-3


def test_decoding_step_is_one_position_of_forward():
    torch.manual_seed(0)
    model = TorchMRNN(len(VOCABULARY), 8, embed_dim=8, word_dim=16, multimodal_dim=16).eval()
    images = torch.randn(3, 8)
    inputs = torch.randint(1, len(VOCABULARY), (3, 5))
    with torch.no_grad():
        expected = model(images, inputs)
        projection, r = model.project_image(images), torch.zeros(3, 16)
        for t in range(5):
            logits, r = model.step(inputs[:, t], r, projection)
            torch.testing.assert_close(logits, expected[:, t], rtol=1e-5, atol=1e-5)


def test_baseline_is_the_mean_of_the_other_samples():
    rewards = np.array([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    np.testing.assert_allclose(mean_of_others(rewards), [[4.0, 3.5, 1.5], [1.5, 1.5, 0.0]])
    with pytest.raises(ValueError, match="at least 2"):
        mean_of_others(np.ones((2, 1)))


def test_loss_weights_each_sampled_log_prob_by_its_advantage():
    log_probs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -0.1]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    advantage = torch.tensor([2.0, -0.5])
    loss = scst_loss(log_probs, mask, advantage)
    loss.backward()
    assert loss.item() == pytest.approx(-(2.0 * -3.0 - 0.5 * -1.1) / 5.0)
    expected = torch.tensor([[-0.4, -0.4, 0.0], [0.1, 0.1, 0.1]])
    torch.testing.assert_close(log_probs.grad, expected)


def _scst(references: list[list[str]], **kwargs) -> TorchScst:
    sizes = dict(embed_dim=8, word_dim=16, multimodal_dim=16, threads=1, learning_rate=1e-2)
    sizes.update(kwargs)
    return TorchScst(8, VOCABULARY, references, **sizes)


def _batch(image_ids: list[int]) -> dict:
    rng = np.random.default_rng(0)
    return {
        "image": rng.standard_normal((len(image_ids), 8)).astype(np.float32),
        "image_id": np.array(image_ids),
    }


def _parameters(trainer: TorchScst) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_reference_step_scores_with_cider_d_and_changes_the_parameters():
    references = _corpus(6)
    trainer = _scst(references, samples=3, max_words=5)
    before = _parameters(trainer)
    out = trainer.step(_batch([4, 0, 2, 4]))
    assert out["rewards"].shape == (4, 3) and len(out["captions"]) == 12
    # Each caption scored against its own image's references, with the training df.
    scorer = CiderD.from_references(references)
    for k, caption in enumerate(out["captions"]):
        assert len(caption.split()) <= 5
        image = [4, 0, 2, 4][k // 3]
        expected = scorer.score(caption, references[image])
        assert out["rewards"][k // 3, k % 3] == pytest.approx(expected, abs=1e-12)
    assert out["rewards"].max() > 0.0  # the comparison above is not all zeros
    assert out["reward"] == pytest.approx(out["rewards"].mean())
    assert out["baseline"] == pytest.approx(mean_of_others(out["rewards"]).mean())
    assert out["reward_seconds"] > 0.0 and 1 <= out["steps"] <= 6
    after = list(trainer.model.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


def test_samples_mask_the_words_and_the_end_token():
    trainer = _scst(_corpus(3), samples=4, max_words=3)
    images, _ = trainer.place(_batch([0, 1, 2]))
    tokens, log_probs, mask = trainer.sample(images)
    assert tokens.shape == log_probs.shape == mask.shape and tokens.shape[0] == 12
    assert log_probs.requires_grad and tokens.shape[1] <= 4
    for row, row_mask in zip(tokens.tolist(), mask.tolist(), strict=True):
        length = next((i for i, t in enumerate(row) if t in (END_ID, PAD_ID)), len(row))
        ended = length < len(row) and row[length] == END_ID
        assert row_mask == [1.0] * (length + ended) + [0.0] * (len(row) - length - ended)
        assert all(t == PAD_ID for t in row[length + ended :])
        assert length <= 3


def test_sampling_stops_when_every_caption_has_ended():
    trainer = _scst(_corpus(3), samples=2, max_words=16)
    with torch.no_grad():
        trainer.model.softmax.bias[END_ID] = 100.0  # the end token, always
    out = trainer.step(_batch([0, 1]))
    assert out["steps"] == 1 and out["captions"] == [""] * 4


class _ConstantScorer:
    def __init__(self, value: float):
        self.value = value

    def score(self, hypothesis: str, references: list[str]) -> float:
        return self.value


class _LengthScorer:
    def score(self, hypothesis: str, references: list[str]) -> float:
        return float(len(hypothesis.split()))


def test_equal_rewards_give_zero_advantage_and_leave_the_parameters_unchanged():
    """Reward 3 for every sample: the advantage is 0, so the gradient is 0 and Adam moves
    nothing; the raw reward as the weight would have moved them (checked with a reward that
    differs between samples)."""
    trainer = _scst(_corpus(3), samples=3, max_words=6, dropout_rate=0.0)
    trainer.scorer = _ConstantScorer(3.0)
    before = _parameters(trainer)
    out = trainer.step(_batch([0, 1, 2]))
    assert out["reward"] == 3.0 and out["baseline"] == 3.0 and out["loss"] == 0.0
    for b, a in zip(before, trainer.model.parameters(), strict=True):
        assert torch.equal(b, a)
    trainer.scorer = _LengthScorer()
    out = trainer.step(_batch([0, 1, 2]))
    assert np.ptp(out["rewards"]) > 0
    assert any(
        not torch.equal(b, a) for b, a in zip(before, trainer.model.parameters(), strict=True)
    )
