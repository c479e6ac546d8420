"""Tests of the cost and language-model metrics (mrnn_jax/losses.py).

Perplexity follows DESIGN.md section 1: corpus-level, per word,
PPL = 2 ** (-(1/N) sum log2 P(w)) over every predicted word (end token included, start token
excluded).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrnn_jax.losses import l2_penalty, masked_nll_sums, perplexity, shift_tokens, token_nll
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import END_ID, PAD_ID, START_ID, UNK_ID

VOCAB = 13

# Three encoded captions of 4, 2 and 0 words, padded to T+1 = 7 columns.
TOKENS = np.array(
    [
        [START_ID, 4, 5, 6, 7, END_ID, PAD_ID],
        [START_ID, 8, UNK_ID, END_ID, PAD_ID, PAD_ID, PAD_ID],
        [START_ID, END_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
    ],
    np.int32,
)


def _np_log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# --- shift_tokens -------------------------------------------------------------------------
def test_shift_tokens_exact() -> None:
    inputs, targets, mask = shift_tokens(jnp.asarray(TOKENS))
    np.testing.assert_array_equal(
        np.asarray(inputs),
        [
            [START_ID, 4, 5, 6, 7, END_ID],
            [START_ID, 8, UNK_ID, END_ID, PAD_ID, PAD_ID],
            [START_ID, END_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
        ],
    )
    np.testing.assert_array_equal(
        np.asarray(targets),
        [
            [4, 5, 6, 7, END_ID, PAD_ID],
            [8, UNK_ID, END_ID, PAD_ID, PAD_ID, PAD_ID],
            [END_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
        ],
    )
    np.testing.assert_array_equal(
        np.asarray(mask),
        [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]],
    )
    assert mask.dtype == jnp.float32
    assert inputs.shape == targets.shape == mask.shape == (3, 6)


def test_shift_tokens_counts_end_and_unknown_but_never_start() -> None:
    _, targets, mask = shift_tokens(jnp.asarray(TOKENS))
    targets, mask = np.asarray(targets), np.asarray(mask)
    # Mask is zero exactly on padding targets.
    np.testing.assert_array_equal(mask == 0, targets == PAD_ID)
    # Every caption's end token is a counted target; the start token never is a target.
    assert ((targets == END_ID) & (mask == 1)).sum(axis=1).tolist() == [1, 1, 1]
    assert not (targets == START_ID).any()
    assert ((targets == UNK_ID) & (mask == 1)).sum() == 1
    # Words + end token per caption: 4 + 1, 2 + 1, 0 + 1.
    assert mask.sum(axis=1).tolist() == [5, 3, 1]


def test_shift_tokens_accepts_numpy() -> None:
    inputs, targets, mask = shift_tokens(TOKENS)
    np.testing.assert_array_equal(np.asarray(inputs), TOKENS[:, :-1])
    np.testing.assert_array_equal(np.asarray(targets), TOKENS[:, 1:])
    assert float(np.asarray(mask).sum()) == 9.0


# --- token_nll ----------------------------------------------------------------------------
def test_token_nll_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    logits = (3.0 * rng.normal(size=(2, 3, 4, VOCAB))).astype(np.float32)
    targets = rng.integers(0, VOCAB, size=(2, 3, 4))
    nll = token_nll(jnp.asarray(logits), jnp.asarray(targets))
    assert nll.shape == (2, 3, 4) and nll.dtype == jnp.float32
    expected = -np.take_along_axis(_np_log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(nll), expected, rtol=1e-5, atol=1e-5)
    assert (np.asarray(nll) > 0).all()


def test_token_nll_known_values() -> None:
    # Uniform over 8 words -> log 8 nats; a target with probability 1/2 -> log 2.
    uniform = jnp.zeros((3, 8))
    np.testing.assert_allclose(
        np.asarray(token_nll(uniform, jnp.array([0, 3, 7]))), [math.log(8)] * 3, rtol=1e-6
    )
    half = jnp.log(jnp.array([[0.5, 0.25, 0.125, 0.125]]))
    np.testing.assert_allclose(
        np.asarray(token_nll(half, jnp.array([0]))), [math.log(2)], rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(token_nll(half, jnp.array([2]))), [math.log(8)], rtol=1e-6
    )


def test_token_nll_upcasts_low_precision_logits() -> None:
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, VOCAB)), jnp.bfloat16)
    nll = token_nll(logits, jnp.array([0, 1, 2, 3]))
    assert nll.dtype == jnp.float32
    expected = token_nll(logits.astype(jnp.float32), jnp.array([0, 1, 2, 3]))
    np.testing.assert_array_equal(np.asarray(nll), np.asarray(expected))


# --- masking ------------------------------------------------------------------------------
def test_token_nll_gradient_is_softmax_minus_one_hot_like_autodiff() -> None:
    # The written-out backward pass against autodiff of the plain log-softmax, with a mask
    # and a per-word weight as the training loss has them.
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(3, 5, VOCAB)) * 4, jnp.float32)
    targets = jnp.asarray(rng.integers(0, VOCAB, (3, 5)), jnp.int32)
    weights = jnp.asarray(rng.uniform(size=(3, 5)) * (rng.uniform(size=(3, 5)) > 0.3))

    def plain(x):
        log_p = jax.nn.log_softmax(x)
        return -jnp.sum(jnp.take_along_axis(log_p, targets[..., None], -1)[..., 0] * weights)

    ours = jax.grad(lambda x: jnp.sum(token_nll(x, targets) * weights))(logits)
    np.testing.assert_allclose(ours, jax.grad(plain)(logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.sum(-1), 0.0, atol=1e-5)  # softmax and one-hot sum to 1


def test_masked_nll_sums_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    _, targets, mask = shift_tokens(TOKENS)
    logits = rng.normal(size=(*targets.shape, VOCAB)).astype(np.float32)
    sums = masked_nll_sums(jnp.asarray(logits), targets, mask)
    logp = np.take_along_axis(_np_log_softmax(logits), np.asarray(targets)[..., None], -1)[..., 0]
    expected = -(logp * np.asarray(mask)).sum()
    np.testing.assert_allclose(float(sums["nll_sum"]), expected, rtol=1e-5)
    assert float(sums["num_tokens"]) == 9.0


def test_padding_never_changes_the_loss() -> None:
    rng = np.random.default_rng(3)
    _, targets, mask = shift_tokens(TOKENS)
    targets, mask = np.asarray(targets), np.asarray(mask)
    logits = rng.normal(size=(*targets.shape, VOCAB)).astype(np.float32)
    base = masked_nll_sums(jnp.asarray(logits), targets, mask)

    # Five more PAD columns, and huge arbitrary values in the logits wherever the target is PAD.
    extra = 5
    long_tokens = np.concatenate([TOKENS, np.full((3, extra), PAD_ID, np.int32)], axis=1)
    _, long_targets, long_mask = shift_tokens(long_tokens)
    long_logits = rng.normal(size=(3, targets.shape[1] + extra, VOCAB)).astype(np.float32) * 1e4
    long_logits[:, : targets.shape[1]] = logits
    padded = np.asarray(long_targets) == PAD_ID
    long_logits[padded] = rng.choice([-1e30, 1e30, 3e4], size=(padded.sum(), VOCAB))
    assert padded[:, : targets.shape[1]].any()  # some of the original positions are scrambled
    long = masked_nll_sums(jnp.asarray(long_logits), long_targets, long_mask)

    assert float(long["num_tokens"]) == float(base["num_tokens"]) == 9.0
    # Another shape, another reduction order: a float32 sum of 9 terms, a few ulp apart at most
    # (leaked padding would add ~1e4 or inf).
    np.testing.assert_allclose(float(long["nll_sum"]), float(base["nll_sum"]), rtol=1e-5)
    assert math.isfinite(float(long["nll_sum"]))


@pytest.fixture(scope="module")
def model_and_variables() -> tuple[MRNN, dict]:
    model = MRNN(vocab_size=VOCAB, embed_dim=5, word_dim=6, multimodal_dim=7)
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, 4)), jnp.zeros((1, 3), jnp.int32)
    )["params"]
    rng = np.random.default_rng(4)
    params = jax.tree.map(
        lambda s: jnp.asarray(0.7 * rng.normal(size=s.shape), jnp.float32), shapes
    )
    return model, {"params": params}


def _model_loss(model: MRNN, variables: dict, images: np.ndarray, tokens: np.ndarray) -> dict:
    inputs, targets, mask = shift_tokens(jnp.asarray(tokens))
    logits = model.apply(variables, images, inputs)
    return masked_nll_sums(logits, targets, mask)


def test_model_loss_independent_of_padding_length(model_and_variables) -> None:
    model, variables = model_and_variables
    images = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    short = _model_loss(model, variables, images, TOKENS)
    long_tokens = np.concatenate([TOKENS, np.full((3, 5), PAD_ID, np.int32)], axis=1)
    long = _model_loss(model, variables, images, long_tokens)
    assert float(short["num_tokens"]) == float(long["num_tokens"]) == 9.0
    # A longer scan and a larger head product: float32 sums of 9 terms, a few ulp apart at most.
    np.testing.assert_allclose(float(long["nll_sum"]), float(short["nll_sum"]), rtol=1e-5)

    # The loss does depend on the real words: changing one changes it.
    changed = TOKENS.copy()
    changed[0, 2] = 9
    other = _model_loss(model, variables, images, changed)
    assert abs(float(other["nll_sum"]) - float(short["nll_sum"])) > 1e-4

    # ... and is the sum of the per-caption losses.
    per_caption = sum(
        float(_model_loss(model, variables, images[i : i + 1], TOKENS[i : i + 1])["nll_sum"])
        for i in range(3)
    )
    np.testing.assert_allclose(per_caption, float(short["nll_sum"]), rtol=1e-5)


# --- perplexity ---------------------------------------------------------------------------
def _perplexity_of(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None):
    if mask is None:
        mask = np.ones(targets.shape, np.float32)
    sums = masked_nll_sums(jnp.asarray(logits, jnp.float32), jnp.asarray(targets), mask)
    return perplexity(sums["nll_sum"], sums["num_tokens"])


def test_perplexity_uniform_is_vocabulary_size() -> None:
    targets = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    ppl = _perplexity_of(np.zeros((2, 4, 8)), targets)
    assert isinstance(ppl, float)
    assert ppl == pytest.approx(8.0, rel=1e-6)


def test_perplexity_half_probability_is_two() -> None:
    probs = np.array([0.5, 0.25, 0.125, 0.125])
    logits = np.broadcast_to(np.log(probs), (3, 5, 4))
    assert _perplexity_of(logits, np.zeros((3, 5), int)) == pytest.approx(2.0, rel=1e-6)


def test_perplexity_is_geometric_mean() -> None:
    # Equal numbers of targets with probability 1/2 and 1/8: PPL = 1 / sqrt(1/2 * 1/8) = 4.
    probs = np.array([0.5, 0.25, 0.125, 0.125])
    logits = np.broadcast_to(np.log(probs), (2, 6, 4))
    targets = np.array([[0, 2, 0, 3, 0, 2], [3, 0, 2, 0, 3, 0]])
    assert _perplexity_of(logits, targets) == pytest.approx(4.0, rel=1e-6)
    # Not the arithmetic mean of the per-word perplexities (2 and 8 -> 5).
    assert abs(_perplexity_of(logits, targets) - 5.0) > 0.5


def test_perplexity_ignores_padding_positions() -> None:
    probs = np.array([0.5, 0.25, 0.125, 0.125])
    logits = np.broadcast_to(np.log(probs), (1, 4, 4)).copy()
    targets = np.array([[0, 0, 3, 3]])
    mask = np.array([[1, 1, 0, 0]], np.float32)
    logits[0, 2:] = [50.0, -50.0, 0.0, -50.0]  # the masked targets are nearly impossible
    assert _perplexity_of(logits, targets, mask) == pytest.approx(2.0, rel=1e-6)


def test_perplexity_matches_base_two_definition() -> None:
    rng = np.random.default_rng(6)
    _, targets, mask = shift_tokens(TOKENS)
    targets, mask = np.asarray(targets), np.asarray(mask)
    logits = (2.0 * rng.normal(size=(*targets.shape, VOCAB))).astype(np.float32)
    logp = _np_log_softmax(logits)
    p = np.exp(np.take_along_axis(logp, targets[..., None], -1)[..., 0])
    n = mask.sum()
    expected = 2.0 ** (-(1.0 / n) * (np.log2(p) * mask).sum())
    assert _perplexity_of(logits, targets, mask) == pytest.approx(expected, rel=1e-5)


def test_perplexity_direct_values() -> None:
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(10 * math.log(3.0), 10) == pytest.approx(3.0, rel=1e-12)
    assert perplexity(jnp.float32(4 * math.log(5.0)), jnp.float32(4.0)) == pytest.approx(
        5.0, rel=1e-6
    )
    assert isinstance(perplexity(jnp.float32(1.0), jnp.float32(2.0)), float)


@pytest.mark.parametrize("count", [0, 0.0, np.float32(0.0), jnp.float32(0.0)])
def test_perplexity_of_no_tokens_is_nan(count) -> None:
    assert math.isnan(perplexity(0.0, count))
    assert math.isnan(perplexity(3.5, count))


# --- L2 -----------------------------------------------------------------------------------
def test_l2_penalty_hand_built_tree() -> None:
    params = {
        "dense": {"kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "bias": jnp.array([100.0, 7.0])},
        "recurrent_kernel": jnp.array([[1.0, -1.0]]),
        "embedding": {"embedding": jnp.array([[2.0], [0.0]])},
        "bias": jnp.array([1e3]),
        "head": {"bias": jnp.array([5.0]), "kernel": jnp.array([[-3.0]])},
    }
    # 0.5 * (1 + 4 + 9 + 16 + 1 + 1 + 4 + 9) = 22.5; every "bias" leaf is left out.
    penalty = l2_penalty(params)
    assert penalty.dtype == jnp.float32 and penalty.shape == ()
    assert float(penalty) == 22.5
    assert float(l2_penalty({"bias": jnp.ones(3)})) == 0.0
    assert float(l2_penalty({})) == 0.0
    # Scales quadratically in the weights.
    doubled = jax.tree.map(lambda x: 2 * x, params)
    assert float(l2_penalty(doubled)) == 4 * 22.5


def test_l2_penalty_on_model_params(model_and_variables) -> None:
    _, variables = model_and_variables
    params = variables["params"]
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    expected = 0.0
    names = set()
    for path, leaf in flat:
        keys = [getattr(k, "key", None) for k in path]
        names.add("/".join(map(str, keys)))
        if keys[-1] != "bias":
            expected += 0.5 * float(np.sum(np.asarray(leaf, np.float64) ** 2))
    # The model has three biases; all must be excluded, and all the rest included.
    assert {"word_dense/bias", "multimodal_word/bias", "softmax/bias"} <= names
    assert "recurrent_kernel" in names and "embedding/embedding" in names
    np.testing.assert_allclose(float(l2_penalty(params)), expected, rtol=1e-6)
    with_biases = expected + sum(
        0.5 * float(np.sum(np.asarray(params[m]["bias"], np.float64) ** 2))
        for m in ("word_dense", "multimodal_word", "softmax")
    )
    assert abs(float(l2_penalty(params)) - with_biases) > 1e-3


def test_l2_penalty_is_differentiable_and_skips_biases(model_and_variables) -> None:
    _, variables = model_and_variables
    grads = jax.grad(l2_penalty)(variables["params"])
    for name in ("word_dense", "multimodal_word", "softmax"):
        np.testing.assert_array_equal(np.asarray(grads[name]["bias"]), 0.0)
        np.testing.assert_allclose(
            np.asarray(grads[name]["kernel"]), np.asarray(variables["params"][name]["kernel"])
        )
