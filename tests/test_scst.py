"""Self-critical sequence training: the step's gradient, the baselines, the command and its errors.

The step is checked against REINFORCE written out by hand (the sampled captions teacher-forced
through the model, weighted by their advantage); the command is run as the README spells it
(relative work directories, ``--init-from``) on a tiny trained run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mrnn_jax
from mrnn_jax import cli, configs, losses
from mrnn_jax.evaluation.rewards import CaptionRewards
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import END_ID, PAD_ID, START_ID, Vocabulary
from mrnn_jax.training import metrics_log, scst
from mrnn_jax.training.scst import ScstOptions
from mrnn_jax.training.step import init_state
from tests.conftest import subprocess_env

VOCAB = 12
FEATURES = 6


def _model() -> MRNN:
    return MRNN(vocab_size=VOCAB, embed_dim=8, word_dim=8, multimodal_dim=10)


class RecordingReward:
    """A reward of each caption's length and first word, remembering what it scored."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, tokens: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.asarray(tokens)
        self.calls.append((tokens.copy(), np.asarray(images).copy()))
        words = ((tokens != PAD_ID) & (tokens != END_ID)).sum(axis=1)
        value = 0.3 * words + 0.1 * tokens[:, 0] + 0.05 * np.asarray(images)
        return value.astype(np.float32), np.asarray(0.0, np.float32)


def _teacher_forced_log_probs(model, params, images, tokens):
    """log p of each sampled caption, teacher-forcing its words (end token included)."""
    full = jnp.concatenate([jnp.full((tokens.shape[0], 1), START_ID), tokens], axis=1)
    inputs, targets, mask = losses.shift_tokens(full)
    logits = model.apply({"params": params}, images, inputs)  # images repeat per caption
    nll = losses.token_nll(logits, targets) * mask
    return -nll.sum(axis=1), mask.sum()


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_step_is_reinforce_with_the_sampled_captions_teacher_forced(baseline):
    """One SGD step of SCST moves the parameters by exactly the gradient of REINFORCE's loss
    written out by hand: the advantage-weighted log-likelihood of the captions the step
    sampled, teacher-forced through the model, per word."""
    model, samples, images = _model(), 3, jnp.asarray(np.random.RandomState(0).randn(4, FEATURES))
    image_index = jnp.asarray([5, 1, 7, 2], jnp.int32)
    tx = optax.sgd(1.0)
    state = init_state(model, tx, 0, images[:1], jnp.zeros((1, 3), jnp.int32))
    reward = RecordingReward()
    options = ScstOptions(samples=samples, baseline=baseline, max_words=6)
    step = jax.jit(scst.make_scst_step(model, tx, options, reward, l2_weight=0.0))
    new_state, metrics = step(state, {"image": images, "image_index": image_index})

    sampled_tokens, sampled_images = reward.calls[-1]
    greedy = reward.calls[0] if baseline == "greedy" else None
    assert sampled_tokens.shape == (4 * samples, options.max_words + 1)
    np.testing.assert_array_equal(sampled_images, np.repeat(np.asarray(image_index), samples))
    rewards, _ = reward(sampled_tokens, sampled_images)
    if baseline == "mean":
        per_image = rewards.reshape(4, samples)
        expected_baseline = np.stack(
            [[np.delete(row, j).mean() for j in range(samples)] for row in per_image]
        ).reshape(-1)
    else:
        greedy_rewards, _ = reward(*greedy)
        assert greedy[0].shape[0] == 4
        expected_baseline = np.repeat(greedy_rewards, samples)
    advantage = rewards - expected_baseline

    def by_hand(params):
        log_p, count = _teacher_forced_log_probs(model, params, images, sampled_tokens)
        return -jnp.sum(advantage * log_p) / count

    expected = jax.grad(by_hand)(state.params)
    moved = jax.tree.map(lambda old, new: old - new, state.params, new_state.params)
    for got, want in zip(jax.tree.leaves(moved), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=1e-6)
    assert abs(float(metrics["reward_sum"]) - rewards.sum()) < 1e-4
    assert abs(float(metrics["reward_baseline_sum"]) - expected_baseline.sum()) < 1e-4
    assert float(metrics["num_samples"]) == 4 * samples
    assert float(metrics["num_tokens"]) == (sampled_tokens != PAD_ID).sum()


def test_entropy_bonus_adds_the_distributions_entropy():
    """With an entropy weight the step logs the sampled positions' entropy, and the update
    differs from the one without it."""
    model, images = _model(), jnp.ones((2, FEATURES))
    tx = optax.sgd(1.0)
    state = init_state(model, tx, 0, images[:1], jnp.zeros((1, 3), jnp.int32))
    batch = {"image": images, "image_index": jnp.arange(2)}
    runs = {}
    for weight in (0.0, 0.5):
        options = ScstOptions(samples=3, entropy_weight=weight)
        step = scst.make_scst_step(model, tx, options, RecordingReward(), l2_weight=0.0)
        runs[weight] = jax.jit(step)(state, batch)
    assert "entropy_sum" not in runs[0.0][1]
    entropy = float(runs[0.5][1]["entropy_sum"]) / float(runs[0.5][1]["num_tokens"])
    assert 0.0 < entropy <= np.log(VOCAB)
    moved = [
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(
            jax.tree.leaves(runs[0.0][0].params), jax.tree.leaves(runs[0.5][0].params), strict=True
        )
    ]
    assert any(moved)


def test_non_finite_reward_skips_the_update():
    """A NaN reward makes the loss NaN: the guard keeps the parameters and says so."""
    model, images = _model(), jnp.ones((2, FEATURES))
    tx = optax.adam(1e-3)
    state = init_state(model, tx, 0, images[:1], jnp.zeros((1, 3), jnp.int32))

    def broken(tokens, _images):
        values = np.arange(len(tokens), dtype=np.float32)
        values[1] = np.nan
        return values, np.asarray(0.0, np.float32)

    step = scst.make_scst_step(model, tx, ScstOptions(samples=2), broken, l2_weight=0.0)
    new_state, metrics = jax.jit(step)(state, {"image": images, "image_index": jnp.arange(2)})
    assert not bool(metrics["finite"])
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(new_state.step) == 1


def test_baselines_by_hand():
    rewards = jnp.asarray([1.0, 2.0, 6.0, 0.0, 4.0, 8.0])
    np.testing.assert_allclose(scst.baselines(rewards, 3, None), [4.0, 3.5, 1.5, 6.0, 4.0, 2.0])
    greedy = jnp.asarray([0.5, 7.0])
    np.testing.assert_allclose(scst.baselines(rewards, 3, greedy), [0.5] * 3 + [7.0] * 3)


def test_host_reward_reads_captions_up_to_the_end_token():
    vocab = Vocabulary(("<pad>", "<start>", "<end>", "<unk>", "a", "red", "circle", "square"))
    references = [["a red circle", "a circle"], ["a square"]]
    reward = scst.HostReward(vocab, references)
    tokens = np.asarray([[4, 5, 6, END_ID, PAD_ID], [4, 7, END_ID, 4, 4], [4, 5, 6, 6, 6]])
    values, seconds = reward(tokens, np.asarray([0, 1, 1]))
    assert values.dtype == np.float32 and values.shape == (3,) and float(seconds) >= 0.0
    captions = ["a red circle", "a square", "a red circle circle circle"]
    expected = CaptionRewards(references).score(captions, np.asarray([0, 1, 1]))
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert values[0] > values[2] and values[1] > 0.0


def test_summarise_is_per_caption_and_per_word():
    window = [
        {
            "loss": 1.0,
            "grad_norm": 2.0,
            "reward_sum": 6.0,
            "reward_baseline_sum": 3.0,
            "num_samples": 4.0,
            "nll_sum": 10.0,
            "num_tokens": 10.0,
            "num_words": 6.0,
            "reward_seconds": 0.5,
        }
    ] * 2
    row = scst.summarise(window, seconds=4.0)
    assert row["reward"] == 1.5 and row["reward_baseline"] == 0.75
    assert row["sample_words"] == 1.5 and row["samples_per_second"] == 2.0
    assert row["reward_share"] == 0.25
    np.testing.assert_allclose(row["sample_perplexity"], np.e)
    assert "entropy" not in row
    assert set(metrics_log.TIMING_KEYS) >= {"samples_per_second", "reward_share"}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.scst.samples=0", "train.scst.samples=0: must be an integer >= 1"),
        ("train.scst.samples=1", "train.scst.samples=1: must be an integer >= 2"),
        ("train.scst.reward=NOPE", "reward=('NOPE',): must be a tuple of reward metrics from"),
        ("train.scst.reward=CIDEr-D,BLEU-4", "train.scst.reward_weights=(1.0,): one weight per"),
        ("train.scst.baseline=max", "train.scst.baseline='max': choose from mean, greedy"),
        ("train.objective=rl", "train.objective='rl': choose from cross_entropy, scst"),
        ("train.scst.learning_rate=0", "train.scst.learning_rate=0.0: must be a finite number"),
        ("train.scst.max_words=0", "train.scst.max_words=0: must be an integer >= 1"),
        ("train.scst.entropy_weight=-1", "entropy_weight=-1.0: must be a finite number >= 0"),
    ],
)
def test_bad_scst_values_are_one_line(override, message):
    with pytest.raises(mrnn_jax.MrnnError) as raised:
        configs.load_config("tiny", ["train.objective=scst", override])
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_greedy_baseline_allows_one_sample_and_selection_follows_the_objective():
    config = configs.load_config(
        "tiny", ["train.objective=scst", "train.scst.baseline=greedy", "train.scst.samples=1"]
    )
    assert configs.selection(config.train)[0] == "val/CIDEr-D"
    assert configs.selection_key(config.train) == "train.scst.select_by"
    assert configs.selection(configs.load_config("tiny").train)[0] == "val/perplexity"


# --- the command, as the README spells it -------------------------------------------------------


def _train(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mrnn_jax", "train", "--config", "tiny", "--no-progress", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=str(cwd),
        timeout=600,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_run):
    """A folder holding ``runs/tiny``: the suite's tiny run (the tiny config's 20 steps,
    trained by the real command), where relative paths reach it."""
    cwd = tmp_path_factory.mktemp("scst")
    shutil.copytree(tiny_run, os.path.join(cwd, "runs", "tiny"))
    return cwd


SCST_RUN = ["train.objective=scst", "train.num_steps=10", "train.eval_every=5"]


BAD_STARTS = [
    ([], "train.objective=scst fine-tunes a trained model: give --init-from RUN"),
    (["--init-from", "runs/none"], "no such checkpoint directory"),
    (["--init-from", "runs/tiny", "model.word_dim=8"], "another model (model.word_dim=16"),
    (["--init-from", "runs/tiny", "dataset.min_count=1000"], "its vocabulary (37 words)"),
    (["--init-from", "runs/tiny", "train.scst.reward=CIDEr"], "must be a tuple of reward"),
    (["--init-from", "runs/tiny", "train.scst.samples=0"], "train.scst.samples=0"),
]


@pytest.mark.parametrize("args, message", BAD_STARTS)
def test_bad_starting_points_and_values_are_one_line(trained, args, message, monkeypatch, capsys):
    """Each is one line and exit status 2, and leaves no work directory behind."""
    monkeypatch.chdir(trained)
    workdir = os.path.join("runs", "bad")
    argv = ["train", "--config", "tiny", "--no-progress", "--workdir", workdir]
    assert cli.main([*argv, *args, *SCST_RUN]) == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("mrnn: error:")]
    assert len(errors) == 1 and message in errors[0], stderr[-3000:]
    assert not os.path.exists(os.path.join(trained, workdir))


def test_without_a_starting_point_the_command_says_so_in_one_line(trained):
    """The real command (a new process) without --init-from: one line, exit status 2."""
    result = _train(trained, "--workdir", os.path.join("runs", "none"), *SCST_RUN)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"mrnn: error: {BAD_STARTS[0][1]} (a work "
        "directory of 'mrnn train', or one of its step folders)"
    ]


def test_one_and_two_devices_train_the_same_scst_run(trained):
    """The SCST step is data-parallel: two (host) devices give the one device's run."""
    runs = {}
    for devices in (1, 2):
        workdir = os.path.join("runs", f"devices-{devices}")
        env = subprocess_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        result = subprocess.run(
            [sys.executable, "-m", "mrnn_jax", "train", "--config", "tiny", "--no-progress"]
            + ["--workdir", workdir, "--init-from", "runs/tiny", *SCST_RUN[:2]]
            + ["train.num_steps=4", "train.eval_every=4", "train.checkpoint_every=4"],
            capture_output=True,
            text=True,
            env=env,
            cwd=str(trained),
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"{devices} device(s)" in result.stderr
        runs[devices] = mrnn_jax.load(os.path.join(trained, workdir), "latest").params
    for a, b in zip(jax.tree.leaves(runs[1]), jax.tree.leaves(runs[2]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
