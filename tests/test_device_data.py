"""A training set held on the devices (train.device_data): batches gathered on device give
the same training as batches assembled on the host."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from mrnn_jax import configs, sharding
from mrnn_jax.data import load_dataset
from mrnn_jax.data.pipeline import CaptionTable, batch_indices, train_batch
from mrnn_jax.model import make_model
from mrnn_jax.text.vocab import build_vocab
from mrnn_jax.training.step import (
    init_state,
    jit_device_data_step,
    jit_train_step,
    make_optimizer,
    make_train_step,
)
from tests.conftest import run_mrnn


def test_device_gathered_batches_train_like_host_batches():
    config = configs.load_config("tiny", ["model.dropout_rate=0.0"])
    train = load_dataset(config.dataset, config.encoder).splits["train"]
    vocab = build_vocab(train.records, 1)
    table = CaptionTable.build(train.records, vocab, config.dataset.max_words)
    model = make_model(config.model, config.encoder, len(vocab))
    tx = make_optimizer(config.train)
    mesh = sharding.make_mesh()
    step = make_train_step(model, tx, config.train.l2_weight)
    tc = config.train

    def fresh():
        state = init_state(model, tx, 0, train.inputs[:1], table.tokens[:1, :-1])
        return sharding.replicate(state, mesh)

    host_step, device_step = jit_train_step(step, mesh), jit_device_data_step(step, mesh)
    data = sharding.replicate({"inputs": train.inputs, "tokens": table.tokens}, mesh)
    a, b = fresh(), fresh()
    for i in range(5):
        batch = train_batch(table, train.inputs, i, tc.batch_size, 0, tc.captions_per_image)
        a, _ = host_step(a, sharding.shard_batch(batch, mesh))
        indices = batch_indices(table, i, tc.batch_size, 0, tc.captions_per_image)
        b, _ = device_step(b, data, sharding.shard_batch(indices, mesh))
    # Two programs (the gather runs inside one of them): equal on this CPU, but XLA promises
    # no bit-equality, so parameters after 5 Adam steps agree to float32 rounding.
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_mrnn_train_with_device_data_matches_the_normal_run(tiny_run, tmp_path):
    workdir = str(tmp_path / "device")
    result = run_mrnn(
        "train", "--config", "tiny", "--workdir", workdir, "--no-progress", "train.device_data=True"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training set held on the devices" in result.stderr
    loaded = []
    for run in (tiny_run, workdir):
        with open(os.path.join(run, "results.json"), encoding="utf-8") as f:
            loaded.append(json.load(f))
    for split in ("test", "novel"):
        ours, theirs = (r["splits"][split]["perplexity"] for r in loaded)
        assert abs(ours - theirs) < 1e-4 * theirs, (ours, theirs)
