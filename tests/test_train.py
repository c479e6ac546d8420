"""Training: exact resume after SIGKILL, mesh equivalence, workdir checks, the training step."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mrnn_jax import configs
from mrnn_jax.captioner import load
from mrnn_jax.errors import MrnnError
from tests.conftest import REPO, run_mrnn, run_python, subprocess_env

TRAIN_ARGS = ["train", "--config", "tiny", "--no-progress", "train.num_steps=60"]


def _params(workdir: str) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(load(workdir, "latest").params)]


def _start(workdir: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mrnn_jax", *TRAIN_ARGS, "--workdir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
        cwd=REPO,
    )


def _saved_steps(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _saving_now(workdir: str) -> bool:
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(
        ".orbax-checkpoint-tmp" in d for d in os.listdir(directory)
    )


def _best_ahead_of_latest(workdir: str) -> bool:
    """A best checkpoint exists for a step whose latest checkpoint is not written yet."""
    directory = os.path.join(workdir, "best")
    if not os.path.isdir(directory):
        return False
    best = [int(d) for d in os.listdir(directory) if d.isdigit()]
    return bool(best) and max(best) > max(_saved_steps(workdir), default=0)


def _kill_when(process: subprocess.Popen, condition, timeout: float = 120) -> bool:
    """SIGKILLs ``process`` as soon as ``condition()`` holds; False if it finished first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.0005)
    process.kill()
    raise AssertionError("training made no progress")


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_exact(tmp_path):
    reference = str(tmp_path / "reference")
    result = run_mrnn(*TRAIN_ARGS, "--workdir", reference)
    assert result.returncode == 0, result.stderr[-3000:]

    workdir = str(tmp_path / "killed")
    rng = random.Random(1234)
    kills = 0
    kinds = []
    # Kill at random moments after a random number of checkpoints, once in the middle of
    # writing a checkpoint (an orbax temporary directory exists), and once between writing the
    # best checkpoint of a step and its latest checkpoint; then let the run finish.
    plans = ["random", "during_save", "between_best_and_latest", "random"]
    for plan in plans:
        process = _start(workdir)
        before = max(_saved_steps(workdir), default=0)
        if plan == "during_save":
            condition = lambda: _saving_now(workdir)  # noqa: B023
        elif plan == "between_best_and_latest":
            condition = lambda: _best_ahead_of_latest(workdir)  # noqa: B023
        else:
            target = before + 5 * rng.randint(1, 2)
            delay = rng.uniform(0.0, 0.3)
            reached = {}

            def condition(target=target, delay=delay, reached=reached):
                if max(_saved_steps(workdir), default=0) >= target:
                    reached.setdefault("at", time.time())
                    return time.time() - reached["at"] >= delay
                return False

        if _kill_when(process, condition):
            kills += 1
            kinds.append(plan)
    assert kills >= 3 and "during_save" in kinds, kinds
    assert "between_best_and_latest" in kinds, kinds

    final = run_mrnn(*TRAIN_ARGS, "--workdir", workdir)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resumed from" in final.stderr
    ours, theirs = _params(workdir), _params(reference)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


MESH_SCRIPT = """
import jax, numpy as np
from mrnn_jax import configs, decode, evaluate, retrieval, sharding
from mrnn_jax.data import load_dataset
from mrnn_jax.data.pipeline import CaptionTable, train_batch
from mrnn_jax.model import make_model
from mrnn_jax.train import init_state, jit_train_step, make_optimizer, make_train_step
from mrnn_jax.vocab import Vocabulary

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
    captions.append(evaluate.generate_captions(model, placed, test.inputs, vocab, beam, 8, mesh))
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
