"""Training: mesh equivalence, workdir checks, the training step (exact resume after kill -9,
SIGINT and SIGTERM: tests/test_faults.py)."""

from __future__ import annotations

import json
import os

import pytest

from mrnn_jax import configs
from mrnn_jax.captioner import load
from mrnn_jax.errors import MrnnError
from tests.conftest import run_mrnn, run_python, subprocess_env

MESH_SCRIPT = """
import jax, numpy as np
from mrnn_jax import configs, decode, sharding
from mrnn_jax.evaluation import captioning
from mrnn_jax.evaluation import retrieval
from mrnn_jax.data import load_dataset
from mrnn_jax.data.pipeline import CaptionTable, train_batch
from mrnn_jax.model import make_model
from mrnn_jax.training.step import init_state, jit_train_step, make_optimizer, make_train_step
from mrnn_jax.text.vocab import Vocabulary

assert jax.device_count() == 8, jax.devices()
config = configs.load_config("tiny", ["model.dropout_rate=0.0", "train.batch_size=40"])
splits = load_dataset(config.dataset, config.encoder).splits
vocab = Vocabulary.build([t for r in splits["train"].records for t in r.tokens], min_count=1)
table = CaptionTable.build(splits["train"].records, vocab, config.dataset.max_words)
model = make_model(config.model, config.encoder, len(vocab))
tx = make_optimizer(config.train)
inputs = splits["train"].inputs
test = splits["test"]
test_table = CaptionTable.build_uncut(test.records, vocab, 20)
beam = decode.DecodeOptions(strategy="beam", beam_size=3, num_return=2, max_words=12)
final, captions, scores = [], [], []
for devices in (1, 2, 8):
    mesh = sharding.make_mesh(devices)
    state = init_state(model, tx, 0, inputs[:1], table.tokens[:1, :-1])
    state = sharding.replicate(state, mesh)
    step = jit_train_step(make_train_step(model, tx, config.train.l2_weight), mesh)
    for i in range(5):
        batch = train_batch(
            table, inputs, i, config.train.batch_size, 0, config.train.captions_per_image
        )
        state, metrics = step(state, sharding.shard_batch(batch, mesh))
    final.append(jax.tree.leaves(jax.device_get(state.params)))
    print(devices, "devices, loss", float(metrics["loss"]))
    params = jax.tree.map(np.asarray, jax.device_get(state.params))
    if devices == 1:
        reference = params  # beam search and retrieval: the same weights on every mesh
    placed = sharding.replicate(reference, mesh)
    captions.append(captioning.generate_captions(model, placed, test.inputs, vocab, beam, 8, mesh))
    scores.append(retrieval.score_matrix(
        model, {"params": reference}, test_table.tokens, test.inputs, image_tile=8, mesh=mesh
    ))
worst = max(
    float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12))
    for other in final[1:] for a, b in zip(other, final[0])
)
print("worst relative difference", worst)
assert worst < 1e-5, worst
for other in captions[1:]:
    assert [[c for c, _ in row] for row in other] == [[c for c, _ in row] for row in captions[0]]
    for row, ref in zip(other, captions[0]):
        # float32 sums over other per-device batch shapes; atol for captions with log p near 0
        np.testing.assert_allclose(
            [lp for _, lp in row], [lp for _, lp in ref], rtol=1e-5, atol=1e-5
        )
for other in scores[1:]:
    np.testing.assert_allclose(other, scores[0], rtol=1e-5, atol=1e-4)
print("MESH_OK")
"""


@pytest.mark.slow
def test_train_beam_search_and_retrieval_same_on_one_two_and_eight_devices():
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = run_python(MESH_SCRIPT, env=env)
    assert result.returncode == 0 and "MESH_OK" in result.stdout, result.stdout + result.stderr


def test_batch_size_must_split_over_devices(tmp_path):
    env = subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = run_mrnn(
        "train", "--config", "tiny", "--workdir", str(tmp_path), "train.batch_size=7", env=env
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "train.batch_size=7 does not split evenly over 2 devices" in result.stderr


def test_unknown_config_key_is_one_line_error(tmp_path):
    result = run_mrnn("train", "--config", "tiny", "--workdir", str(tmp_path), "train.stepz=3")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("mrnn: error: unknown config key 'train.stepz'")
    )


def test_workdir_with_other_model_shape_is_refused(tiny_run):
    result = run_mrnn("train", "--config", "tiny", "--workdir", tiny_run, "model.word_dim=8")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "different model" in result.stderr and "model.word_dim" in result.stderr


def test_workdir_with_other_data_order_is_refused(tiny_run):
    result = run_mrnn("train", "--config", "tiny", "--workdir", tiny_run, "train.seed=7")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "train.seed: 0 in the checkpoint, 7 now" in result.stderr


def test_unknown_activation_is_one_line_error(tmp_path):
    result = run_mrnn(
        "train", "--config", "tiny", "--workdir", str(tmp_path), "model.word_activation=relux"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "model.word_activation='relux': choose from" in result.stderr


def test_resume_with_changed_schedule_is_allowed_and_logged(tmp_path, tiny_run):
    import shutil

    workdir = str(tmp_path / "copy")
    shutil.copytree(tiny_run, workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    steps = config["train"]["num_steps"]
    result = run_mrnn(
        "train",
        "--config",
        "tiny",
        "--workdir",
        workdir,
        "--no-progress",
        f"train.num_steps={steps + 5}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"train.num_steps: {steps} -> {steps + 5}" in result.stderr
    assert f"resumed from {os.path.join(workdir, 'checkpoints')} at step {steps}" in result.stderr
    assert load(workdir, "latest").step == steps + 5


def test_config_overrides_cast_types():
    config = configs.load_config(
        "tiny", ["train.learning_rate=1", "model.zero_image=true", "encoder.channels=(2,3)"]
    )
    assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
    assert config.model.zero_image is True
    assert tuple(config.encoder.channels) == (2, 3)
    config = configs.load_config("tiny", ["eval.splits=test,novel", "eval.splits=val"])
    assert tuple(config.eval.splits) == ("val",)
    assert tuple(configs.load_config("tiny", ["eval.splits=test,novel"]).eval.splits) == (
        "test",
        "novel",
    )
    with pytest.raises(MrnnError, match="expects int"):
        configs.load_config("tiny", ["train.num_steps=abc"])
