"""Consensus reranking: neighbour search, pairwise CIDEr-D and BLEU-4, the reranker, its faces."""

from __future__ import annotations

import json
import os
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import consensus
from mrnn_jax.model import MRNN
from tests.conftest import run_mrnn

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


def _corpus(seed: int, images: int) -> tuple[dict, dict]:
    rng = random.Random(seed)
    gts = {
        i: [" ".join(rng.choices(WORDS, k=rng.randint(1, 9))) for _ in range(rng.randint(1, 5))]
        for i in range(images)
    }
    res = {i: [" ".join(rng.choices(WORDS, k=rng.randint(0, 9)))] for i in range(images)}
    res[0] = ["an unseen hypothesis word"]
    return gts, res


def test_pair_cider_means_equal_pycocoevalcap_cider_d():
    gts, res = _corpus(0, 40)
    _, per_image = Cider().compute_score(gts, res)
    scorer = consensus.PairCider([gts[i] for i in range(40)])
    first = np.cumsum([0] + [len(gts[i]) for i in range(40)])
    ours = [scorer.scores(res[i][0], np.arange(first[i], first[i + 1])).mean() for i in range(40)]
    np.testing.assert_allclose(ours, per_image, rtol=1e-12, atol=1e-12)


def test_pair_bleu4_is_pycocoevalcap_sentence_bleu_with_one_reference():
    gts, res = _corpus(1, 6)
    hypothesis, references = res[3][0], [r for i in range(6) for r in gts[i]]
    ours = consensus.pair_bleu4(hypothesis, references)
    for reference, value in zip(references, ours, strict=True):
        _, per = Bleu(4).compute_score({0: [reference]}, {0: [hypothesis]}, verbose=0)
        assert value == pytest.approx(per[3][0], abs=1e-12)


def test_consensus_score_is_the_mean_of_the_best_m():
    assert consensus.consensus_score(np.array([1.0, 5.0, 3.0, 2.0]), 2) == 4.0
    assert consensus.consensus_score(np.array([1.0, 5.0]), 10) == 3.0


@pytest.mark.parametrize("batch_size", [7, 64])
def test_nearest_neighbours_match_a_brute_force_search(batch_size):
    rng = np.random.default_rng(0)
    database = rng.normal(size=(50, 6)).astype(np.float32)
    queries = rng.normal(size=(23, 6)).astype(np.float32)
    found = consensus.nearest_in_batches(queries, database, 5, batch_size)
    distances = ((queries[:, None, :] - database[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(found, np.argsort(distances, axis=1, kind="stable")[:, :5])
    assert consensus.nearest_in_batches(queries, database[:3], 5).shape == (23, 3)


def _feature_model() -> tuple[MRNN, dict]:
    model = MRNN(vocab_size=9, embed_dim=4, word_dim=4, multimodal_dim=8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 6)), jnp.zeros((1, 3), jnp.int32))
    return model, params["params"]


@pytest.mark.parametrize("metric", ["CIDEr", "BLEU"])
@pytest.mark.parametrize("features", ["projection", "cnn"])
def test_reranker_prefers_the_hypothesis_its_neighbours_describe(metric, features):
    model, params = _feature_model()
    rng = np.random.default_rng(1)
    train = rng.normal(size=(30, 6)).astype(np.float32)
    colours = ["red", "blue", "green"]
    captions = [
        [f"a {colours[i % 3]} circle on the left", f"the {colours[i % 3]} circle is left"]
        for i in range(30)
    ]
    options = consensus.ConsensusOptions(
        features=features, num_neighbours=1, num_references=2, metric=metric
    )
    reranker = consensus.ConsensusReranker(model, params, train, captions, options, 8)
    queries = train[[4, 9]] + 1e-4  # nearest training images: 4 (blue) and 9 (red)
    np.testing.assert_array_equal(reranker.neighbours(queries)[:, 0], [4, 9])
    candidates = [
        [("a red circle on the left", -1.0), ("a blue circle on the left", -2.0)],
        [("a green square", -0.5), ("a red circle on the left", -1.5)],
    ]
    reranked = reranker.rerank(queries, candidates)
    assert reranked[0] == candidates[0][::-1]  # blue moves ahead of the likelier red
    assert reranked[1] == candidates[1][::-1]  # red, though less likely than the square
    assert reranker.with_metric("BLEU" if metric == "CIDEr" else "CIDEr").rerank(
        queries, candidates
    ) == [c[::-1] for c in candidates]


def test_options_come_from_the_config_and_are_checked():
    from mrnn_jax import configs

    config = configs.load_config("default")
    options = consensus.ConsensusOptions.from_config(config.rerank, metric="BLEU")
    assert (options.num_neighbours, options.num_hypotheses) == (60, 10)
    assert options.references_kept == 175  # the authors' m for BLEU; 125 for CIDEr
    assert consensus.ConsensusOptions().references_kept == 125
    assert consensus.ConsensusOptions(num_references=7).references_kept == 7
    assert options.metric == "BLEU" and options.features == "projection"
    with pytest.raises(MrnnError, match="rerank.metric"):
        consensus.ConsensusOptions(metric="METEOR")
    with pytest.raises(MrnnError, match="rerank.num_neighbours"):
        consensus.ConsensusOptions(num_neighbours=0)


def test_captioner_reranks_its_beam_n_best():
    from mrnn_jax import api

    here = os.path.dirname(os.path.abspath(__file__))
    captioner = api.load(os.path.join(here, "data", "tiny_checkpoint"))
    options = consensus.ConsensusOptions.from_config(captioner.config.rerank, num_neighbours=5)
    reranker = consensus.load_reranker(
        captioner.model, captioner.params, captioner.config, options, max_train_images=32
    )
    assert reranker.train_features.shape == (32, int(captioner.config.model.multimodal_dim))
    images = captioner.load_images([os.path.join(here, "data", "tiny_checkpoint", "sample.png")])
    options = api.decode_options(captioner, strategy="beam", beam_size=3, num_return=3)
    plain = captioner.generate(images, options)
    reranked = reranker.rerank(images, plain)
    assert sorted(reranked[0]) == sorted(plain[0]) and len(plain[0]) == 3
    rows = reranker.references(reranker.neighbours(images)[0])
    scores = reranker.consensus([c for c, _ in reranked[0]], reranker.neighbours(images)[0])
    assert scores == sorted(scores, reverse=True) and len(rows) > 0


def test_mrnn_evaluate_rerank_consensus(tiny_run, tmp_path):
    out = str(tmp_path / "eval.json")
    result = run_mrnn(
        "evaluate",
        "--checkpoint",
        tiny_run,
        "--split",
        "test",
        "--max-images",
        "4",
        "--beam",
        "2",
        "--rerank",
        "consensus",
        "--rerank-metric",
        "BLEU",
        "--json",
        out,
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "consensus reranking by BLEU" in result.stdout
    with open(out, encoding="utf-8") as f:
        written = json.load(f)
    assert written["rerank"]["metric"] == "BLEU" and written["rerank"]["num_hypotheses"] == 2
    assert written["decoding"]["num_return"] == 2 and "CIDEr-D" in written["metrics"]
    wrong = run_mrnn("evaluate", "--checkpoint", tiny_run, "--rerank-metric", "BLEU")
    assert wrong.returncode != 0 and "need --rerank consensus" in wrong.stderr
