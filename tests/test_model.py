"""Tests of the m-RNN module (mrnn_jax/model.py) against the paper's equations (DESIGN.md s.1).

Per step t::

    e1 = E[w];  w = f(W_e e1 + b_e);  r(t) = f_r(U_r r(t-1) + w(t)),  r(0) = 0
    m = 1.7159 tanh(2/3 (V_w w + V_r r + V_I I + b));  logits = W_o m + b_o

The NumPy references below are written from these equations alone (in float64) and read the
parameters out of the pytree by name; the module's ``r_prev @ recurrent_kernel`` convention
(row vectors) is the only thing taken from the implementation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrnn_jax.model import ACTIVATIONS, MRNN, activation, make_model, scaled_tanh
from mrnn_jax.text.vocab import END_ID, PAD_ID, START_ID, UNK_ID

VOCAB, EMBED, WORD, MULTIMODAL, FEATURES = 11, 5, 6, 7, 4
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _random_params(model: MRNN, images, tokens, seed: int, scale: float = 0.6) -> dict:
    """Parameters of ``model`` with every leaf (biases included, which Flax initialises to
    zero) drawn from N(0, scale^2) in NumPy; the tree comes from ``jax.eval_shape(model.init)``,
    which keeps these tests free of the initialisers' compile time."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), images, tokens)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(scale * rng.normal(size=s.shape), jnp.float32), shapes
    )


def _make(**kwargs) -> MRNN:
    return MRNN(
        vocab_size=VOCAB, embed_dim=EMBED, word_dim=WORD, multimodal_dim=MULTIMODAL, **kwargs
    )


def _init(model: MRNN, seed: int = 0) -> dict:
    return _random_params(
        model, jnp.zeros((2, FEATURES)), jnp.zeros((2, 3), jnp.int32), seed=seed + 100
    )


@pytest.fixture(scope="module")
def model() -> MRNN:
    return _make()


@pytest.fixture(scope="module")
def variables(model: MRNN) -> dict:
    return {"params": _init(model)}


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, FEATURES)).astype(np.float32)
    tokens = np.array(
        [
            [START_ID, 4, 5, 6, 7, END_ID],
            [START_ID, 8, 9, 10, END_ID, PAD_ID],
            [START_ID, 3, 3, END_ID, PAD_ID, PAD_ID],
        ],
        np.int32,
    )
    return images, tokens


# --- NumPy reference ----------------------------------------------------------------------
def _np_params(variables: dict) -> dict[str, np.ndarray]:
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), variables["params"])
    return {
        "E": p["embedding"]["embedding"],
        "W_e": p["word_dense"]["kernel"],
        "b_e": p["word_dense"]["bias"],
        "U_r": p["recurrent_kernel"],
        "V_w": p["multimodal_word"]["kernel"],
        "b_m": p["multimodal_word"]["bias"],
        "V_r": p["multimodal_recurrent"]["kernel"],
        "V_I": p["multimodal_image"]["kernel"],
        "W_o": p["softmax"]["kernel"],
        "b_o": p["softmax"]["bias"],
    }


def _np_relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _np_g(x: np.ndarray) -> np.ndarray:
    return 1.7159 * np.tanh(2.0 * x / 3.0)


def _np_step(p, r_prev, token, image, f=_np_relu):
    """One step of the paper's equations: returns (w, r, m, logits)."""
    e1 = p["E"][token]
    w = f(e1 @ p["W_e"] + p["b_e"])
    r = _np_relu(r_prev @ p["U_r"] + w)
    m = _np_g(w @ p["V_w"] + r @ p["V_r"] + image @ p["V_I"] + p["b_m"])
    logits = m @ p["W_o"] + p["b_o"]
    return w, r, m, logits


def _np_sequence(p, tokens, images):
    """The equations over whole captions [B, T] -> logits [B, T, V], with r(0) = 0."""
    batch_size, length = tokens.shape
    r = np.zeros((batch_size, p["U_r"].shape[0]))
    out = []
    for t in range(length):
        _, r, _, logits = _np_step(p, r, tokens[:, t], images)
        out.append(logits)
    return np.stack(out, axis=1)


# --- parameters ---------------------------------------------------------------------------
def test_parameter_tree_names_and_shapes(model: MRNN) -> None:
    params = model.init(jax.random.key(0), jnp.zeros((1, FEATURES)), jnp.zeros((1, 2), jnp.int32))[
        "params"
    ]
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    f32 = jnp.dtype(jnp.float32)
    assert shapes == {
        "embedding": {"embedding": ((VOCAB, EMBED), f32)},
        "word_dense": {"kernel": ((EMBED, WORD), f32), "bias": ((WORD,), f32)},
        "recurrent_kernel": ((WORD, WORD), f32),
        "multimodal_word": {"kernel": ((WORD, MULTIMODAL), f32), "bias": ((MULTIMODAL,), f32)},
        "multimodal_recurrent": {"kernel": ((WORD, MULTIMODAL), f32)},
        "multimodal_image": {"kernel": ((FEATURES, MULTIMODAL), f32)},
        "softmax": {"kernel": ((MULTIMODAL, VOCAB), f32), "bias": ((VOCAB,), f32)},
    }
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(params))
    # The recurrent kernel starts orthogonal, so r keeps its norm through U_r at first.
    kernel = np.asarray(params["recurrent_kernel"], np.float64)
    np.testing.assert_allclose(kernel @ kernel.T, np.eye(WORD), atol=1e-5)


# --- scaled tanh --------------------------------------------------------------------------
def test_scaled_tanh_values() -> None:
    assert float(scaled_tanh(jnp.float32(0.0))) == 0.0
    np.testing.assert_allclose(
        float(scaled_tanh(jnp.float32(1.0))), 1.7159 * np.tanh(2.0 / 3.0), rtol=1e-6
    )
    np.testing.assert_allclose(
        float(scaled_tanh(jnp.float32(-1.0))), -1.7159 * np.tanh(2.0 / 3.0), rtol=1e-6
    )
    # LeCun's choice: g(1) is close to 1 and g(x) saturates at +-1.7159.
    np.testing.assert_allclose(float(scaled_tanh(jnp.float32(1.0))), 1.0, atol=2e-4)
    big = scaled_tanh(jnp.array([-1e4, -50.0, 50.0, 1e4], jnp.float32))
    np.testing.assert_allclose(np.asarray(big), [-1.7159, -1.7159, 1.7159, 1.7159], rtol=1e-6)
    x = jnp.linspace(-100.0, 100.0, 2001)
    assert float(jnp.max(jnp.abs(scaled_tanh(x)))) <= 1.7159 * (1 + 1e-6)
    assert ACTIVATIONS["scaled_tanh"] is scaled_tanh


def test_activation_lookup() -> None:
    x = jnp.array([-2.0, -0.5, 0.0, 0.5, 2.0], jnp.float32)
    np.testing.assert_array_equal(np.asarray(activation("relu")(x)), [0.0, 0.0, 0.0, 0.5, 2.0])
    # XLA's tanh is its own approximation, not NumPy's: within a few ulp, not bit-equal.
    np.testing.assert_allclose(np.asarray(activation("tanh")(x)), np.tanh(np.asarray(x)), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(activation("identity")(x)), np.asarray(x))
    with pytest.raises(ValueError, match="unknown activation 'softsign'"):
        activation("softsign")


# --- one step of the equations ------------------------------------------------------------
def test_one_step_matches_numpy_equations(model: MRNN, variables: dict) -> None:
    p = _np_params(variables)
    rng = np.random.default_rng(1)
    tokens = np.array([START_ID, 4, 7, 10, UNK_ID], np.int32)
    r_prev = rng.normal(size=(5, WORD)).astype(np.float32)
    images = rng.normal(size=(5, FEATURES)).astype(np.float32)

    w_ref, r_ref, _, logits_ref = _np_step(p, r_prev.astype(np.float64), tokens, images)
    # The reference must exercise both sides of the ReLUs for the comparison to mean much.
    assert (w_ref == 0).any() and (w_ref > 0).any()
    assert (r_ref == 0).any() and (r_ref > 0).any()

    w, r = model.apply(variables, r_prev, tokens, method=MRNN.recur_step)
    assert w.shape == (5, WORD) and r.shape == (5, WORD)
    np.testing.assert_allclose(np.asarray(w), w_ref, **TOL)
    np.testing.assert_allclose(np.asarray(r), r_ref, **TOL)

    projection = model.apply(variables, images, method=MRNN.project_image)
    np.testing.assert_allclose(np.asarray(projection), images @ p["V_I"], **TOL)

    logits = model.apply(variables, w, r, projection, method=MRNN.head)
    assert logits.shape == (5, VOCAB) and logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), logits_ref, **TOL)

    # embed is word embedding II on its own, for any token shape.
    w_grid = model.apply(variables, tokens.reshape(1, 5, 1), method=MRNN.embed)
    assert w_grid.shape == (1, 5, 1, WORD)
    np.testing.assert_allclose(np.asarray(w_grid).reshape(5, WORD), w_ref, **TOL)


def test_initial_carry_is_zero(model: MRNN, variables: dict) -> None:
    r0 = model.apply(variables, 3, method=MRNN.initial_carry)
    assert r0.shape == (3, WORD) and r0.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(r0), np.zeros((3, WORD)))


# --- the scan -----------------------------------------------------------------------------
def test_words_equals_loop_of_recur_steps(model: MRNN, variables: dict, batch) -> None:
    _, tokens = batch
    w_seq, r_seq = model.apply(variables, tokens, method=MRNN.words)
    batch_size, length = tokens.shape
    assert w_seq.shape == r_seq.shape == (batch_size, length, WORD)

    r = model.apply(variables, batch_size, method=MRNN.initial_carry)
    for t in range(length):
        w, r = model.apply(variables, r, tokens[:, t], method=MRNN.recur_step)
        np.testing.assert_allclose(np.asarray(w_seq[:, t]), np.asarray(w), **TOL)
        np.testing.assert_allclose(np.asarray(r_seq[:, t]), np.asarray(r), **TOL)

    # r(0) = 0, so position 0 gives r = ReLU(w).
    np.testing.assert_allclose(np.asarray(r_seq[:, 0]), np.maximum(np.asarray(w_seq[:, 0]), 0))


def test_recurrent_state_depends_on_history(model: MRNN, variables: dict) -> None:
    tokens = np.array([[START_ID, 4, 9], [START_ID, 5, 9]], np.int32)
    w_seq, r_seq = model.apply(variables, tokens, method=MRNN.words)
    # Same token at t=2 -> same w (to float32 rounding: XLA does not promise that two rows of
    # one matrix product round alike), but different r because the histories differ.
    np.testing.assert_allclose(np.asarray(w_seq[0, 2]), np.asarray(w_seq[1, 2]), **TOL)
    assert not np.allclose(np.asarray(r_seq[0, 2]), np.asarray(r_seq[1, 2]))


def test_call_equals_head_applied_step_by_step(model: MRNN, variables: dict, batch) -> None:
    images, tokens = batch
    logits = model.apply(variables, images, tokens)
    assert logits.shape == (*tokens.shape, VOCAB) and logits.dtype == jnp.float32

    projection = model.apply(variables, images, method=MRNN.project_image)
    r = model.apply(variables, tokens.shape[0], method=MRNN.initial_carry)
    for t in range(tokens.shape[1]):
        w, r = model.apply(variables, r, tokens[:, t], method=MRNN.recur_step)
        step_logits = model.apply(variables, w, r, projection, method=MRNN.head)
        np.testing.assert_allclose(np.asarray(logits[:, t]), np.asarray(step_logits), **TOL)


def test_call_matches_numpy_over_sequence(model: MRNN, variables: dict, batch) -> None:
    images, tokens = batch
    logits = model.apply(variables, images, tokens)
    expected = _np_sequence(_np_params(variables), tokens, images.astype(np.float64))
    np.testing.assert_allclose(np.asarray(logits), expected, **TOL)


def test_call_is_causal(model: MRNN, variables: dict, batch) -> None:
    images, tokens = batch
    logits = np.asarray(model.apply(variables, images, tokens))
    changed = tokens.copy()
    changed[:, 3] = 7
    logits2 = np.asarray(model.apply(variables, images, changed))
    np.testing.assert_array_equal(logits[:, :3], logits2[:, :3])
    assert not np.allclose(logits[:, 3:], logits2[:, 3:])


# --- where the image enters ---------------------------------------------------------------
def test_image_enters_only_at_multimodal_layer(model: MRNN, variables: dict, batch) -> None:
    images, tokens = batch
    other_images = images[::-1] * 3.0 + 1.0
    # `words` takes no image at all; the recurrent state is a function of the tokens only, and
    # the logits change with the image through V_I I alone.
    logits = np.asarray(model.apply(variables, images, tokens))
    logits_other = np.asarray(model.apply(variables, other_images, tokens))
    assert not np.allclose(logits, logits_other, atol=1e-3)

    # Same result when the image projection is replaced, keeping w, r fixed.
    w, r = model.apply(variables, tokens, method=MRNN.words)
    projection = model.apply(variables, other_images, method=MRNN.project_image)
    via_head = model.apply(variables, w, r, projection[:, None, :], method=MRNN.head)
    np.testing.assert_allclose(logits_other, np.asarray(via_head), **TOL)

    # Perturbing V_I changes the logits but not the recurrent part.
    params = dict(variables["params"])
    params["multimodal_image"] = {"kernel": params["multimodal_image"]["kernel"] + 1.0}
    changed = {"params": params}
    w2, r2 = model.apply(changed, tokens, method=MRNN.words)
    np.testing.assert_array_equal(np.asarray(w2), np.asarray(w))
    np.testing.assert_array_equal(np.asarray(r2), np.asarray(r))
    assert not np.allclose(np.asarray(model.apply(changed, images, tokens)), logits, atol=1e-3)


def test_zero_image_makes_logits_image_independent(variables: dict, batch) -> None:
    images, tokens = batch
    blind = _make(zero_image=True)
    logits = np.asarray(blind.apply(variables, images, tokens))
    logits_other = np.asarray(blind.apply(variables, images[::-1] * 5.0 - 2.0, tokens))
    np.testing.assert_array_equal(logits, logits_other)
    features = blind.apply(variables, images, method=MRNN.image_features)
    np.testing.assert_array_equal(np.asarray(features), np.zeros_like(images))
    np.testing.assert_array_equal(
        np.asarray(blind.apply(variables, images, method=MRNN.project_image)),
        np.zeros((images.shape[0], MULTIMODAL)),
    )
    # ... and equal to the equations with I = 0.
    expected = _np_sequence(_np_params(variables), tokens, np.zeros((3, FEATURES)))
    np.testing.assert_allclose(logits, expected, **TOL)


def test_image_features_pass_through_for_precomputed(model: MRNN, variables: dict) -> None:
    features = np.arange(2 * FEATURES, dtype=np.float64).reshape(2, FEATURES)
    out = model.apply(variables, features, method=MRNN.image_features)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), features.astype(np.float32))


# --- broadcasting the head over a (sentence, image) grid ----------------------------------
def test_head_broadcasts_over_sentence_image_grid(model: MRNN, variables: dict) -> None:
    rng = np.random.default_rng(2)
    sentences, images_n = 4, 3
    tokens = rng.integers(1, VOCAB, size=(sentences,)).astype(np.int32)
    r_prev = rng.normal(size=(sentences, WORD)).astype(np.float32)
    images = rng.normal(size=(images_n, FEATURES)).astype(np.float32)
    w, r = model.apply(variables, r_prev, tokens, method=MRNN.recur_step)
    projection = model.apply(variables, images, method=MRNN.project_image)

    grid = model.apply(
        variables, w[:, None, :], r[:, None, :], projection[None, :, :], method=MRNN.head
    )
    assert grid.shape == (sentences, images_n, VOCAB)
    for s in range(sentences):
        for i in range(images_n):
            pair = model.apply(variables, w[s], r[s], projection[i], method=MRNN.head)
            np.testing.assert_allclose(np.asarray(grid[s, i]), np.asarray(pair), **TOL)
    # Different images give different rows of the grid.
    assert not np.allclose(np.asarray(grid[:, 0]), np.asarray(grid[:, 1]), atol=1e-3)

    # The same over whole scanned sequences: [S, 1, T, D] x [1, I, 1, M] -> [S, I, T, V].
    seq_tokens = rng.integers(1, VOCAB, size=(sentences, 5)).astype(np.int32)
    w_seq, r_seq = model.apply(variables, seq_tokens, method=MRNN.words)
    seq_grid = model.apply(
        variables, w_seq[:, None], r_seq[:, None], projection[None, :, None], method=MRNN.head
    )
    assert seq_grid.shape == (sentences, images_n, 5, VOCAB)
    for i in range(images_n):
        direct = model.apply(variables, np.repeat(images[i : i + 1], sentences, 0), seq_tokens)
        np.testing.assert_allclose(np.asarray(seq_grid[:, i]), np.asarray(direct), **TOL)


# --- configurable activations -------------------------------------------------------------
def test_word_activation_tanh(variables: dict) -> None:
    p = _np_params(variables)
    tokens = np.array([START_ID, 4, 5, 6, 7, 8], np.int32)
    r_prev = np.random.default_rng(3).normal(size=(6, WORD)).astype(np.float32)
    images = np.random.default_rng(4).normal(size=(6, FEATURES)).astype(np.float32)

    tanh_model = _make(word_activation="tanh")
    w, r = tanh_model.apply(variables, r_prev, tokens, method=MRNN.recur_step)
    w_ref, r_ref, _, logits_ref = _np_step(p, r_prev, tokens, images, f=np.tanh)
    assert (w_ref < 0).any()  # tanh, unlike ReLU, gives negative w
    assert float(jnp.min(w)) < 0
    np.testing.assert_allclose(np.asarray(w), w_ref, **TOL)
    np.testing.assert_allclose(np.asarray(r), r_ref, **TOL)
    projection = tanh_model.apply(variables, images, method=MRNN.project_image)
    logits = tanh_model.apply(variables, w, r, projection, method=MRNN.head)
    np.testing.assert_allclose(np.asarray(logits), logits_ref, **TOL)

    relu_w, _ = _make().apply(variables, r_prev, tokens, method=MRNN.recur_step)
    assert not np.allclose(np.asarray(relu_w), np.asarray(w))


def test_recurrent_and_multimodal_activation_configurable(variables: dict, batch) -> None:
    images, tokens = batch
    p = _np_params(variables)
    model = _make(recurrent_activation="identity", multimodal_activation="tanh")
    logits = np.asarray(model.apply(variables, images, tokens))
    r = np.zeros((tokens.shape[0], WORD))
    for t in range(tokens.shape[1]):
        w = _np_relu(p["E"][tokens[:, t]] @ p["W_e"] + p["b_e"])
        r = r @ p["U_r"] + w
        m = np.tanh(w @ p["V_w"] + r @ p["V_r"] + images @ p["V_I"] + p["b_m"])
        np.testing.assert_allclose(logits[:, t], m @ p["W_o"] + p["b_o"], **TOL)


@pytest.mark.parametrize(
    "field", ["word_activation", "recurrent_activation", "multimodal_activation"]
)
def test_unknown_activation_raises(field: str) -> None:
    bad = _make(**{field: "swishy"})
    with pytest.raises(ValueError, match="swishy"):
        bad.init(jax.random.key(0), jnp.zeros((1, FEATURES)), jnp.zeros((1, 2), jnp.int32))


# --- the small CNN encoder, end to end ----------------------------------------------------
SMALL_CNN = {"name": "small_cnn", "channels": (4, 4), "features_dim": 8}
SMALL_MODEL = {"embed_dim": 5, "word_dim": 6, "multimodal_dim": 7}


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [16, 32])
def test_small_cnn_model_forward(size: int) -> None:
    model = make_model(SMALL_MODEL, {**SMALL_CNN, "channels": [4, 4], "image_size": size}, VOCAB)
    images = np.random.default_rng(size).integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)
    tokens = np.array([[START_ID, 4, 5, END_ID], [START_ID, 6, END_ID, PAD_ID]], np.int32)
    params = _random_params(model, images, tokens, seed=size, scale=0.3)
    assert set(params) >= {"image_encoder", "multimodal_image", "softmax"}
    assert params["multimodal_image"]["kernel"].shape == (8, 7)
    assert params["image_encoder"]["fc"]["kernel"].shape == ((size // 4) ** 2 * 4, 8)

    logits = model.apply({"params": params}, images, tokens)
    assert logits.shape == (2, 4, VOCAB) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    features = model.apply({"params": params}, images, method=MRNN.image_features)
    assert features.shape == (2, 8) and bool(jnp.all(features >= 0))


def test_dropout_only_when_training(pixels: np.ndarray) -> None:
    tokens = np.array([[START_ID, 4, 5, END_ID], [START_ID, 6, 7, 8]], np.int32)
    model = make_model({**SMALL_MODEL, "dropout_rate": 0.5}, SMALL_CNN, VOCAB)
    no_dropout = make_model(SMALL_MODEL, SMALL_CNN, VOCAB)
    params = _random_params(model, pixels, tokens, seed=7, scale=0.3)
    variables = {"params": params}

    eval1 = np.asarray(model.apply(variables, pixels, tokens))
    eval2 = np.asarray(model.apply(variables, pixels, tokens, train=False))
    np.testing.assert_array_equal(eval1, eval2)
    # Evaluation is exactly the model without dropout.
    np.testing.assert_array_equal(eval1, np.asarray(no_dropout.apply(variables, pixels, tokens)))

    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, pixels, tokens, train=True)

    key1, key2 = jax.random.key(1), jax.random.key(2)
    train1 = np.asarray(model.apply(variables, pixels, tokens, train=True, rngs={"dropout": key1}))
    train1b = np.asarray(model.apply(variables, pixels, tokens, train=True, rngs={"dropout": key1}))
    train2 = np.asarray(model.apply(variables, pixels, tokens, train=True, rngs={"dropout": key2}))
    assert np.all(np.isfinite(train1))
    np.testing.assert_array_equal(train1, train1b)
    assert not np.allclose(train1, eval1, atol=1e-4)
    assert not np.allclose(train1, train2, atol=1e-4)

    # Dropout acts on the multimodal layer only: the image-free part is unaffected.
    w, r = model.apply(variables, tokens, method=MRNN.words)
    w0, r0 = no_dropout.apply(variables, tokens, method=MRNN.words)
    np.testing.assert_array_equal(np.asarray(w), np.asarray(w0))
    np.testing.assert_array_equal(np.asarray(r), np.asarray(r0))

    # With rate 0, train=True is the same as evaluation.
    train0 = no_dropout.apply(variables, pixels, tokens, train=True, rngs={"dropout": key1})
    np.testing.assert_allclose(np.asarray(train0), eval1, **TOL)
