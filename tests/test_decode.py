"""Tests of greedy caption generation (mrnn_jax/decode.py).

The reference is a plain Python loop over :meth:`MRNN.recur_step`, :meth:`MRNN.head` and an
argmax, and the log-probabilities are checked once more by teacher forcing the emitted caption
through the whole model (``MRNN.__call__``), an independent code path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrnn_jax import decode
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import END_ID, PAD_ID, START_ID, UNK_ID

VOCAB, FEATURES, MAX_WORDS = 13, 4, 8


def _model() -> MRNN:
    return MRNN(vocab_size=VOCAB, embed_dim=5, word_dim=6, multimodal_dim=7)


def _random_params(seed: int, scale: float = 1.0) -> dict:
    """N(0, scale^2) for every leaf (biases included), from NumPy; the tree from eval_shape."""
    shapes = jax.eval_shape(
        _model().init, jax.random.key(0), jnp.zeros((1, FEATURES)), jnp.zeros((1, 3), jnp.int32)
    )["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(scale * rng.normal(size=s.shape), jnp.float32), shapes
    )


def _with_softmax_bias(params: dict, ids_to_bias: dict[int, float]) -> dict:
    """``params`` with the softmax bias of some tokens set (which makes them likely or not)."""
    bias = params["softmax"]["bias"]
    for token, value in ids_to_bias.items():
        bias = bias.at[token].set(value)
    return {**params, "softmax": {**params["softmax"], "bias": bias}}


@pytest.fixture(scope="module")
def setup() -> tuple[MRNN, dict, np.ndarray]:
    """A random model whose greedy captions end at different steps, or not at all.

    PAD and START get a very low softmax bias, as training gives them (they are never targets),
    and END a raised one so that several captions end within MAX_WORDS words.
    """
    params = _random_params(5)
    end_bias = float(params["softmax"]["bias"][END_ID]) + 3.5
    params = _with_softmax_bias(params, {PAD_ID: -30.0, START_ID: -30.0, END_ID: end_bias})
    images = (2.0 * np.random.default_rng(3).normal(size=(12, FEATURES))).astype(np.float32)
    return _model(), {"params": params}, images


def _python_greedy(model: MRNN, variables: dict, images: np.ndarray, steps: int):
    """Greedy decoding written out with a Python loop: (tokens [B, steps], log_prob [B])."""
    batch = images.shape[0]
    projection = model.apply(variables, images, method=MRNN.project_image)
    r = model.apply(variables, batch, method=MRNN.initial_carry)
    previous = np.full((batch,), START_ID, np.int32)
    done = np.zeros(batch, bool)
    log_prob = np.zeros(batch)
    tokens = np.full((batch, steps), PAD_ID, np.int32)
    for t in range(steps):
        w, r = model.apply(variables, r, previous, method=MRNN.recur_step)
        logits = np.asarray(model.apply(variables, w, r, projection, method=MRNN.head), np.float64)
        shifted = logits - logits.max(-1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        choices = log_softmax.copy()
        choices[:, UNK_ID] = -np.inf  # <unk> is never chosen by default
        word = choices.argmax(-1).astype(np.int32)
        for b in range(batch):
            if not done[b]:
                tokens[b, t] = word[b]
                log_prob[b] += log_softmax[b, word[b]]
                done[b] = word[b] == END_ID
        previous = word
    return tokens, log_prob


def _teacher_forced_log_prob(model: MRNN, variables: dict, images, tokens) -> np.ndarray:
    """log P(caption | image) of each emitted caption (every non-PAD token, END included)."""
    tokens = np.asarray(tokens)
    inputs = np.concatenate([np.full((tokens.shape[0], 1), START_ID, np.int32), tokens[:, :-1]], 1)
    logits = np.asarray(model.apply(variables, images, inputs), np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    chosen = np.take_along_axis(log_softmax, tokens[..., None], -1)[..., 0]
    return (chosen * (tokens != PAD_ID)).sum(-1)


def _end_positions(tokens: np.ndarray) -> list[int]:
    """Index of each row's first END, or -1."""
    return [int(np.argmax(row == END_ID)) if (row == END_ID).any() else -1 for row in tokens]


def test_greedy_matches_python_loop(setup) -> None:
    model, variables, images = setup
    tokens, log_prob = decode.greedy(model, variables, images, MAX_WORDS)
    assert tokens.shape == (12, MAX_WORDS + 1) and tokens.dtype == jnp.int32
    assert log_prob.shape == (12,) and log_prob.dtype == jnp.float32
    tokens, log_prob = np.asarray(tokens), np.asarray(log_prob)

    ends = _end_positions(tokens)
    ended = np.array([0 <= e < MAX_WORDS for e in ends])
    # The fixture must exercise both an early END (with padding after it) and a caption that
    # runs to the length limit, or this test would prove little.
    assert 0 in ends and -1 in ends, ends
    assert any(0 < e < MAX_WORDS - 1 for e in ends), ends

    ref_tokens, ref_log_prob = _python_greedy(model, variables, images, MAX_WORDS + 1)
    # The first MAX_WORDS words of every caption agree; captions that ended within MAX_WORDS
    # words agree in full, with their log-probability.
    np.testing.assert_array_equal(tokens[:, :MAX_WORDS], ref_tokens[:, :MAX_WORDS])
    np.testing.assert_array_equal(tokens[ended], ref_tokens[ended])
    np.testing.assert_allclose(log_prob[ended], ref_log_prob[ended], rtol=1e-5, atol=1e-5)
    assert (log_prob < 0).all()


def test_greedy_pads_after_end(setup) -> None:
    model, variables, images = setup
    tokens = np.asarray(decode.greedy(model, variables, images, MAX_WORDS)[0])
    for row, end in zip(tokens, _end_positions(tokens), strict=True):
        if end >= 0:
            assert (row[:end] != PAD_ID).all() and (row[:end] != END_ID).all()
            assert (row[end + 1 :] == PAD_ID).all()
        else:
            assert (row[:MAX_WORDS] != PAD_ID).all()
    assert not (tokens == START_ID).any()


def test_greedy_log_prob_is_sum_over_emitted_tokens(setup) -> None:
    model, variables, images = setup
    tokens, log_prob = decode.greedy(model, variables, images, MAX_WORDS)
    expected = _teacher_forced_log_prob(model, variables, images, tokens)
    np.testing.assert_allclose(np.asarray(log_prob), expected, rtol=1e-5, atol=1e-5)
    # END is counted: dropping its term changes the value for captions that ended.
    tokens = np.asarray(tokens)
    without_end = _teacher_forced_log_prob(
        model, variables, images, np.where(tokens == END_ID, PAD_ID, tokens)
    )
    ended = [e >= 0 for e in _end_positions(tokens)]
    assert (np.abs(np.asarray(log_prob)[ended] - without_end[ended]) > 1e-4).all()


def test_greedy_depends_on_image(setup) -> None:
    model, variables, images = setup
    tokens = np.asarray(decode.greedy(model, variables, images, MAX_WORDS)[0])
    assert len({tuple(row) for row in tokens}) > 1
    # Each image is decoded independently of the rest of the batch.
    alone = np.asarray(decode.greedy(model, variables, images[3:4], MAX_WORDS)[0])
    np.testing.assert_array_equal(alone[0], tokens[3])


def test_end_overwhelmingly_likely_ends_at_once() -> None:
    model = _model()
    params = _with_softmax_bias(_random_params(11), {END_ID: 1e4})
    images = np.random.default_rng(0).normal(size=(3, FEATURES)).astype(np.float32)
    tokens, log_prob = decode.greedy(model, {"params": params}, images, 5)
    expected = np.full((3, 6), PAD_ID, np.int32)
    expected[:, 0] = END_ID
    np.testing.assert_array_equal(np.asarray(tokens), expected)
    # P(END) is 1 to float32 precision: the empty caption has log-probability ~0.
    np.testing.assert_allclose(np.asarray(log_prob), 0.0, atol=1e-5)
    assert (np.asarray(log_prob) <= 0).all()


def test_end_impossible_runs_to_the_length_limit() -> None:
    model = _model()
    params = _with_softmax_bias(_random_params(12), {PAD_ID: -1e4, START_ID: -1e4, END_ID: -1e4})
    variables = {"params": params}
    images = np.random.default_rng(1).normal(size=(3, FEATURES)).astype(np.float32)
    max_words = 6
    tokens, log_prob = decode.greedy(model, variables, images, max_words)
    tokens = np.asarray(tokens)
    assert tokens.shape == (3, max_words + 1)
    assert not (tokens == END_ID).any()
    # Every one of the first max_words slots holds a word.
    assert (tokens[:, :max_words] > END_ID).all()
    # The log-probability is that of every emitted token.
    np.testing.assert_allclose(
        np.asarray(log_prob),
        _teacher_forced_log_prob(model, variables, images, tokens),
        rtol=1e-5,
        atol=1e-5,
    )


def test_caption_never_longer_than_max_words() -> None:
    model = _model()
    params = _with_softmax_bias(_random_params(12), {PAD_ID: -1e4, START_ID: -1e4, END_ID: -1e4})
    images = np.random.default_rng(1).normal(size=(3, FEATURES)).astype(np.float32)
    max_words = 6
    tokens = np.asarray(decode.greedy(model, {"params": params}, images, max_words)[0])
    words = ((tokens != PAD_ID) & (tokens != END_ID)).sum(axis=1)
    assert (words <= max_words).all(), tokens


def test_greedy_never_emits_pad_or_start_as_a_word() -> None:
    # An untrained model (random softmax biases) whose greedy argmax is PAD at some steps.
    model = _model()
    params = _random_params(0)
    images = (2.0 * np.random.default_rng(2).normal(size=(6, FEATURES))).astype(np.float32)
    tokens = np.asarray(decode.greedy(model, {"params": params}, images, 6)[0])
    assert not (tokens == START_ID).any(), tokens
    for row in tokens:
        # PAD may only pad the end (after END, or after a caption cut at max_words): a PAD
        # inside the caption, with words after it, would cut the decoded text short while
        # log_prob still counted those words.
        pads = np.flatnonzero(row == PAD_ID)
        if pads.size:
            assert (row[pads[0] :] == PAD_ID).all(), tokens


def test_greedy_does_not_recompile_for_same_shapes(setup) -> None:
    model, variables, images = setup
    decode.greedy(model, variables, images, MAX_WORDS)
    size = decode.greedy._cache_size()
    # Same shapes, new parameter values, new image values, an equal (not identical) model.
    other = {"params": _random_params(99)}
    decode.greedy(model, other, images + 1.0, MAX_WORDS)
    decode.greedy(_model(), variables, np.zeros_like(images), MAX_WORDS)
    assert decode.greedy._cache_size() == size
    # The counter does move on a new static argument or a new shape.
    decode.greedy(model, variables, images, MAX_WORDS + 1)
    assert decode.greedy._cache_size() == size + 1
    decode.greedy(model, variables, images[:5], MAX_WORDS)
    assert decode.greedy._cache_size() == size + 2


def test_sampled_captions_do_not_depend_on_batching(setup) -> None:
    from mrnn_jax import sharding
    from mrnn_jax.evaluation import captioning
    from mrnn_jax.text.vocab import Vocabulary

    model, variables, images = setup
    same = np.repeat(images[:1], 8, axis=0)  # one image, eight draws
    vocab = Vocabulary(words=("<pad>", "<start>", "<end>", "<unk>", *"abcdefghi"), min_count=1)
    options = decode.DecodeOptions(strategy="sample", max_words=MAX_WORDS, seed=3)
    mesh = sharding.make_mesh(1)
    by_two = captioning.generate_captions(model, variables["params"], same, vocab, options, 2, mesh)
    by_four = captioning.generate_captions(
        model, variables["params"], same, vocab, options, 4, mesh
    )
    # The draws (the words) agree exactly; their log-probabilities are float32 sums from
    # programs of another batch shape, which XLA does not promise to round alike.
    assert [[text for text, _ in row] for row in by_two] == [
        [text for text, _ in row] for row in by_four
    ]
    np.testing.assert_allclose(
        [[lp for _, lp in row] for row in by_two],
        [[lp for _, lp in row] for row in by_four],
        # float32 sums of <= 9 terms: a few ulp apart; another word would move them far more.
        rtol=1e-5,
        atol=1e-5,
    )
    assert len({captions[0][0] for captions in by_two}) > 2  # draws differ between rows


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"strategy": "nucleus"}, "unknown decoding strategy"),
        ({"strategy": "beam", "beam_size": 2, "num_return": 3}, "cannot return 3"),
        ({"strategy": "greedy", "num_return": 2}, "one caption per image"),
        ({"strategy": "sample", "temperature": 0.0}, "temperature must be positive"),
        ({"strategy": "beam", "length_penalty": -1.0}, "length_penalty must be >= 0"),
        ({"max_words": 0}, "must be positive"),
    ],
)
def test_decode_options_are_validated(kwargs, message) -> None:
    from mrnn_jax.errors import MrnnError

    with pytest.raises(MrnnError, match=message):
        decode.DecodeOptions(**kwargs)


def test_generate_returns_num_return_captions_per_image(setup) -> None:
    model, variables, images = setup
    for options in (
        decode.DecodeOptions(strategy="greedy", max_words=MAX_WORDS),
        decode.DecodeOptions(strategy="beam", beam_size=3, num_return=2, max_words=MAX_WORDS),
        decode.DecodeOptions(strategy="sample", num_return=3, max_words=MAX_WORDS),
    ):
        tokens, log_prob = decode.generate(model, variables, images[:5], options)
        assert tokens.shape == (5, options.num_return, MAX_WORDS + 1)
        assert log_prob.shape == (5, options.num_return)


@pytest.mark.parametrize(
    "options",
    [
        decode.DecodeOptions(strategy="greedy", max_words=MAX_WORDS),
        decode.DecodeOptions(strategy="sample", max_words=MAX_WORDS, num_return=3, seed=4),
        decode.DecodeOptions(strategy="beam", max_words=MAX_WORDS, beam_size=3, num_return=3),
    ],
    ids=["greedy", "sample", "beam"],
)
def test_unk_is_never_generated_unless_asked(setup, options) -> None:
    import dataclasses

    model, variables, images = setup
    # <unk> the most likely word at every step: the model would say it everywhere.
    params = _with_softmax_bias(variables["params"], {UNK_ID: 8.0})
    tokens, log_prob = decode.generate(model, {"params": params}, images, options)
    tokens = np.asarray(tokens)
    assert not (tokens == UNK_ID).any()
    assert (tokens != PAD_ID).any()  # captions still have words
    allowed = dataclasses.replace(options, allow_unk=True)
    tokens_unk, log_prob_unk = decode.generate(model, {"params": params}, images, allowed)
    assert (np.asarray(tokens_unk) == UNK_ID).mean() > 0.3
    # Scores stay the model's own log-probabilities: banning changes the choice, not them.
    expected = _teacher_forced_log_prob(model, {"params": params}, images, tokens[:, 0])
    np.testing.assert_allclose(np.asarray(log_prob)[:, 0], expected, rtol=1e-4, atol=1e-4)
