"""Evaluation perplexity (mrnn_jax/evaluation/captioning.py): length-sorted buckets give the
padded sums."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mrnn_jax import sharding
from mrnn_jax.data.pipeline import CaptionTable
from mrnn_jax.data.records import ImageRecord
from mrnn_jax.evaluation import captioning
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import Vocabulary


@pytest.mark.parametrize("batch_size", [4, 7])
def test_bucketed_perplexity_equals_the_padded_computation(batch_size):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(12)]
    records = [
        ImageRecord(
            f"im{i}",
            "val",
            ("",) * 3,
            tuple(tuple(rng.choice(words, rng.integers(1, 15))) for _ in range(3)),
        )
        for i in range(9)
    ]
    vocab = Vocabulary.build([t for r in records for t in r.tokens], min_count=1)
    table = CaptionTable.build_uncut(records, vocab, max_words=4)  # longest caption: 14 words
    inputs = rng.normal(size=(9, 6)).astype(np.float32)
    model = MRNN(vocab_size=len(vocab), embed_dim=8, word_dim=8, multimodal_dim=16)
    params = model.init(jax.random.PRNGKey(1), inputs[:1], table.tokens[:1, :-1])["params"]
    mesh = sharding.make_mesh(1)
    padded = captioning.split_perplexity(model, params, table, inputs, batch_size, mesh, ())
    bucketed = captioning.split_perplexity(model, params, table, inputs, batch_size, mesh)
    narrow = captioning.split_perplexity(model, params, table, inputs, batch_size, mesh, (4, 7))
    assert padded["num_words"] == bucketed["num_words"] == narrow["num_words"]
    assert padded["num_words"] == sum(len(t) + 1 for r in records for t in r.tokens)
    for result in (bucketed, narrow):
        np.testing.assert_allclose(result["perplexity"], padded["perplexity"], rtol=1e-6)
