"""Tests of beam search (mrnn_jax/decode.py), with greedy and sampling as points of comparison.

Most tests run :func:`decode.beam_search` on Markov chains whose next-token log-probabilities
come from one table ``log_table [B, P, V, V, V]`` indexed by (batch element, position, token
before the previous one, previous token): the step function's carry holds the batch element,
a step counter and the token before the previous one, so every part of the carry must be
gathered by parent beam for the results to be right. First-order chains are the special case
of a table that ignores those indices.

Three independent references:

* exhaustive enumeration of every complete sequence (chains small enough that beam search is
  exact);
* a plain-Python beam search written from the documented semantics (best 2K candidates per
  step, an end token finishes a hypothesis only if it ranks among the best K, no early stop,
  float32 sums in the same order), which must agree token for token;
* for the m-RNN, teacher forcing the emitted captions through ``MRNN.__call__``.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mrnn_jax import decode
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import END_ID, PAD_ID, START_ID, UNK_ID

FIRST_WORD = 3  # ids from 3 up are words (UNK included); 0, 1, 2 are PAD, START, END


# --- Markov chains as step functions -----------------------------------------------------


def _chain_step_fn(log_table: jax.Array):
    positions = log_table.shape[1]

    def step_fn(carry, tokens):
        element, position, before = carry
        log_probs = log_table[element, jnp.minimum(position, positions - 1), before, tokens]
        return log_probs, (element, position + 1, tokens)

    return step_fn


def _chain_carry(batch: int):
    # (batch element, position, token before the previous one): PAD before the start token.
    return (
        jnp.arange(batch, dtype=jnp.int32),
        jnp.zeros((batch,), jnp.int32),
        jnp.full((batch,), PAD_ID, jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("beam_size", "max_words"))
def _chain_beam(log_table, beam_size: int, max_words: int, alpha=0.0):
    batch = log_table.shape[0]
    return decode.beam_search(
        _chain_step_fn(log_table), _chain_carry(batch), batch, beam_size, max_words, alpha
    )


@functools.partial(jax.jit, static_argnames=("max_words",))
def _chain_greedy(log_table, max_words: int):
    batch = log_table.shape[0]
    choose = lambda log_probs, t: jnp.argmax(log_probs, -1)
    return decode.decode_by_choice(
        _chain_step_fn(log_table), _chain_carry(batch), batch, max_words, choose
    )


def _log(probs: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(probs).astype(np.float32)


def _first_order(transition: np.ndarray, batch: int, positions: int) -> np.ndarray:
    """The full table of a first-order chain ``transition [V, V]`` (rows: previous token)."""
    vocab = transition.shape[0]
    return np.broadcast_to(_log(transition), (batch, positions, vocab, vocab, vocab)).copy()


def _random_table(
    seed: int,
    batch: int,
    positions: int,
    vocab: int,
    *,
    end_weight: float = 1.0,
    end_possible: bool = True,
    increasing: bool = False,
    concentration: float = 0.7,
) -> np.ndarray:
    """A random second-order, position- and batch-dependent chain, as log-probabilities.

    PAD and START are never possible. ``increasing``: after word y only words above y (and END)
    are possible, so every sequence ends within ``vocab - 3`` words. ``end_weight`` scales the
    weight of END before normalising.
    """
    rng = np.random.default_rng(seed)
    probs = np.zeros((batch, positions, vocab, vocab, vocab))
    words = np.arange(FIRST_WORD, vocab)
    for b, p, before, previous in itertools.product(
        range(batch), range(positions), range(vocab), range(vocab)
    ):
        allowed = [w for w in words if not increasing or previous < FIRST_WORD or w > previous]
        if end_possible:
            allowed.append(END_ID)
        weights = rng.gamma(concentration, size=len(allowed))
        if end_possible:
            weights[-1] *= end_weight
        probs[b, p, before, previous, allowed] = weights / weights.sum()
    return _log(probs)


def _context(prefix: tuple[int, ...]) -> tuple[int, int]:
    """(token before the previous one, previous token) after ``prefix``, as the carry has it."""
    context = (PAD_ID, START_ID) + tuple(prefix)
    return context[-2], context[-1]


def _chain_next(log_table: np.ndarray, queries) -> np.ndarray:
    return np.stack([log_table[b, len(prefix), *_context(prefix)] for b, prefix in queries]).astype(
        np.float32
    )


def _chain_log_prob(log_table: np.ndarray, b: int, tokens) -> np.float32:
    """float32 log-probability of the emitted tokens (up to the first PAD), summed in order."""
    total = np.float32(0.0)
    prefix: tuple[int, ...] = ()
    for token in tokens:
        if token == PAD_ID:
            break
        total = np.float32(total + log_table[b, len(prefix), *_context(prefix)][token])
        prefix += (int(token),)
    return total


def _penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def _padded(sequence: tuple[int, ...], max_words: int) -> tuple[int, ...]:
    return tuple(sequence) + (PAD_ID,) * (max_words + 1 - len(sequence))


# --- references ----------------------------------------------------------------------------


def _reference_beam(
    next_log_probs, batch, vocab, beam_size, max_words, alpha=0.0, min_gap=0.0, banned=()
):
    """Beam search written out in Python from the documented semantics, without early stop.

    ``next_log_probs([(b, prefix), ...]) -> float32 [n, V]``. Returns, per batch element, the
    list of ``(tokens, log_prob, score)`` it must return, best first (at most K; the remaining
    slots are empty): finished sequences by score, then sequences cut at max_words words.
    ``min_gap > 0`` asserts that the best 2K + 1 candidates of every step are at least that far
    apart, so that their order cannot hang on float32 rounding.
    Tokens in ``banned`` are never chosen (as PAD and START never are).
    """
    k = beam_size
    neg_inf = np.float32(decode.NEG_INF)
    live = [[(np.float32(0.0), ())] for _ in range(batch)]
    finished: list[list] = [[] for _ in range(batch)]
    cut: list[list] = [[] for _ in range(batch)]
    for t in range(max_words + 1):
        queries = [(b, prefix) for b in range(batch) for _, prefix in live[b]]
        rows = iter(next_log_probs(queries) if queries else [])
        for b in range(batch):
            candidates = []
            for i, (log_prob, prefix) in enumerate(live[b]):
                row = np.maximum(np.asarray(next(rows), np.float32), neg_inf)
                for token in range(END_ID, vocab):  # PAD and START are never generated
                    if token in banned:
                        continue
                    total = np.float32(log_prob + row[token])
                    if total > neg_inf / 2:
                        candidates.append((total, i * vocab + token, prefix + (token,)))
            candidates.sort(key=lambda c: (-c[0], c[1]))
            if min_gap:
                kept = [c[0] for c in candidates[: 2 * k + 1]]
                assert (-np.diff(kept) > min_gap).all(), (b, t, kept)
            top = candidates[: 2 * k]
            ended_parents = set()
            for total, index, sequence in top[:k]:
                if sequence[-1] == END_ID:
                    finished[b].append((sequence, total, total / _penalty(t + 1, alpha)))
                    ended_parents.add(index // vocab)
            if t == max_words:
                # Live beams that did not end here are cut at max_words words.
                cut[b] = [
                    (prefix, log_prob, log_prob / _penalty(max_words, alpha))
                    for i, (log_prob, prefix) in enumerate(live[b])
                    if i not in ended_parents
                ]
            else:
                live[b] = [(total, seq) for total, _, seq in top if seq[-1] != END_ID][:k]
    results = []
    for b in range(batch):
        best = sorted(finished[b], key=lambda f: -f[2])[:k]
        best += sorted(cut[b], key=lambda c: -c[2])[: k - len(best)]
        results.append([(_padded(s, max_words), lp, score) for s, lp, score in best])
    return results


def _enumerate_complete(log_table, b, max_words, alpha=0.0):
    """Every sequence of at most max_words words then END with non-zero probability, best first.

    Each is ``(tokens, log_prob, score)``; only for chains with few such sequences.
    """
    vocab = log_table.shape[-1]
    words = range(FIRST_WORD, vocab)
    out = []
    for n in range(max_words + 1):
        for seq in itertools.product(words, repeat=n):
            tokens = seq + (END_ID,)
            log_prob = _chain_log_prob(log_table, b, tokens)
            if np.isfinite(log_prob):
                out.append(
                    (_padded(tokens, max_words), log_prob, log_prob / _penalty(n + 1, alpha))
                )
    return sorted(out, key=lambda f: -f[2])


def _assert_matches(tokens, log_prob, score, expected, *, tol=1e-5) -> None:
    """One batch element's beam output against an expected best-first list (rest empty)."""
    n = len(expected)
    assert n <= len(tokens)
    got = [tuple(int(x) for x in row) for row in tokens[:n]]
    assert got == [e[0] for e in expected], (got, expected)
    np.testing.assert_allclose(log_prob[:n], [e[1] for e in expected], rtol=tol, atol=tol)
    np.testing.assert_allclose(score[:n], [e[2] for e in expected], rtol=tol, atol=tol)
    assert (log_prob[n:] <= -1e8).all(), (log_prob, tokens[n:])


def _assert_well_formed(tokens, log_prob, score, max_words, alpha, log_table=None, b=0):
    """Structure, recomputed log-probabilities, scores and order of one element's beam output."""
    tokens, log_prob, score = np.asarray(tokens), np.asarray(log_prob), np.asarray(score)
    assert np.isfinite(log_prob).all() and np.isfinite(score).all()
    real = log_prob > -1e8
    # Empty slots (if any) come last.
    assert not (real[1:] & ~real[:-1]).any(), log_prob
    ends = []
    for row, lp, sc in zip(tokens[real], log_prob[real], score[real], strict=True):
        assert row.shape == (max_words + 1,)
        assert not (row == START_ID).any(), row
        n_end = int((row == END_ID).sum())
        assert n_end <= 1, row
        if n_end:
            end = int(np.flatnonzero(row == END_ID)[0])
            assert end <= max_words
            assert (row[:end] >= FIRST_WORD).all() and (row[end + 1 :] == PAD_ID).all(), row
            length = end + 1
        else:
            # Cut at exactly max_words words.
            assert (row[:max_words] >= FIRST_WORD).all() and row[max_words] == PAD_ID, row
            length = max_words
        ends.append(bool(n_end))
        assert lp < 0
        if log_table is not None:
            np.testing.assert_allclose(lp, _chain_log_prob(log_table, b, row), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(sc, lp / _penalty(length, alpha), rtol=1e-5, atol=1e-6)
    ends = np.array(ends, bool)
    # Finished sequences first, each group by score.
    assert not (ends[1:] & ~ends[:-1]).any(), tokens
    real_score = score[real]
    for group in (ends, ~ends):
        assert (np.diff(real_score[group]) <= 1e-6).all(), real_score
    return ends


# --- (a) greedy is not optimal -------------------------------------------------------------


def _greedy_trap() -> np.ndarray:
    """START -> A 0.6 | B 0.4; A -> four words at 0.25 each; those and B -> END with prob 1."""
    vocab = 9
    a, b, spread = 3, 4, [5, 6, 7, 8]
    t = np.zeros((vocab, vocab))
    t[START_ID, a], t[START_ID, b] = 0.6, 0.4
    t[a, spread] = 0.25
    t[b, END_ID] = 1.0
    t[spread, END_ID] = 1.0
    t[[PAD_ID, END_ID], END_ID] = 1.0
    return t


def test_beam_finds_what_greedy_misses() -> None:
    max_words = 3
    table = jnp.asarray(_first_order(_greedy_trap(), 1, max_words + 1))
    tokens, log_prob, score = map(np.asarray, _chain_beam(table, 2, max_words))
    assert tokens.shape == (1, 2, max_words + 1) and log_prob.shape == score.shape == (1, 2)
    assert tokens.dtype == np.int32 and log_prob.dtype == np.float32
    np.testing.assert_array_equal(tokens[0], [[4, END_ID, 0, 0], [3, 5, END_ID, 0]])
    assert abs(log_prob[0, 0] - math.log(0.4)) < 1e-6
    assert abs(log_prob[0, 1] - math.log(0.6 * 0.25)) < 1e-6
    np.testing.assert_array_equal(score, log_prob)  # alpha = 0

    greedy_tokens, greedy_log_prob = map(np.asarray, _chain_greedy(table, max_words))
    np.testing.assert_array_equal(greedy_tokens[0], [3, 5, END_ID, 0])
    assert abs(greedy_log_prob[0] - math.log(0.15)) < 1e-6
    assert log_prob[0, 0] > greedy_log_prob[0] + 0.9

    # Beam 1 is greedy: B END never ranks first at its step, so it is never found.
    tokens1, log_prob1, _ = map(np.asarray, _chain_beam(table, 1, max_words))
    np.testing.assert_array_equal(tokens1[:, 0], greedy_tokens)
    np.testing.assert_allclose(log_prob1[:, 0], greedy_log_prob, atol=1e-6)


def test_length_penalty_can_prefer_the_longer_caption() -> None:
    # Same chain: log 0.4 / (7/6)^a against log 0.15 / (8/6)^a. With a large alpha the longer
    # one wins; the returned order follows the score, not the log-probability.
    max_words = 3
    table = jnp.asarray(_first_order(_greedy_trap(), 1, max_words + 1))
    alpha = 8.0
    tokens, log_prob, score = map(np.asarray, _chain_beam(table, 5, max_words, alpha))
    assert math.log(0.15) / _penalty(3, alpha) > math.log(0.4) / _penalty(2, alpha)
    expected = [[3, w, END_ID, 0] for w in (5, 6, 7, 8)] + [[4, END_ID, 0, 0]]
    np.testing.assert_array_equal(tokens[0], expected)
    np.testing.assert_allclose(log_prob[0], np.log([0.15] * 4 + [0.4]), atol=1e-6)
    expected_score = [math.log(0.15) / _penalty(3, alpha)] * 4 + [
        math.log(0.4) / _penalty(2, alpha)
    ]
    np.testing.assert_allclose(score[0], expected_score, rtol=1e-5)


def test_early_stop_bound_uses_the_length_penalty() -> None:
    # START -> END (0.55) | 3 (0.45); 3 -> 4 -> END with probability 1. With K = 1 and a large
    # alpha, "END" finishes first (score log 0.55), but the live "3" can still reach
    # log 0.45 / (8/6)^8, which is better: the search must not stop after the first step.
    max_words, alpha = 3, 8.0
    t = np.zeros((6, 6))
    t[START_ID, END_ID], t[START_ID, 3] = 0.55, 0.45
    t[3, 4] = 1.0
    t[[PAD_ID, END_ID, 4, 5], END_ID] = 1.0
    table = jnp.asarray(_first_order(t, 1, max_words + 1))
    tokens, log_prob, score = map(np.asarray, _chain_beam(table, 1, max_words, alpha))
    np.testing.assert_array_equal(tokens[0], [[3, 4, END_ID, 0]])
    np.testing.assert_allclose(log_prob[0], [math.log(0.45)], atol=1e-6)
    np.testing.assert_allclose(score[0], [math.log(0.45) / _penalty(3, alpha)], rtol=1e-5)
    # At alpha = 0 the empty caption wins, as greedy.
    tokens, log_prob, _ = map(np.asarray, _chain_beam(table, 1, max_words, 0.0))
    np.testing.assert_array_equal(tokens[0], [[END_ID, 0, 0, 0]])
    np.testing.assert_allclose(log_prob[0], [math.log(0.55)], atol=1e-6)


def test_search_goes_on_while_a_live_beam_can_still_win() -> None:
    # START -> END (0.3) | 3 (0.7); 3 -> END (0.45) | 4 (0.55); 4 -> END. With K = 2, after
    # step 1 the finished list is full ("3" 0.315, "" 0.3) while "3 4" (0.385) is still live,
    # only slightly more probable than the worst finished one; it must still be found.
    max_words = 3
    t = np.zeros((5, 5))
    t[START_ID, END_ID], t[START_ID, 3] = 0.3, 0.7
    t[3, END_ID], t[3, 4] = 0.45, 0.55
    t[[PAD_ID, END_ID, 4], END_ID] = 1.0
    table = jnp.asarray(_first_order(t, 1, max_words + 1))
    tokens, log_prob, _ = map(np.asarray, _chain_beam(table, 2, max_words))
    np.testing.assert_array_equal(tokens[0], [[3, 4, END_ID, 0], [3, END_ID, 0, 0]])
    np.testing.assert_allclose(log_prob[0], np.log([0.7 * 0.55, 0.7 * 0.45]), atol=1e-6)


def test_pad_and_start_are_never_generated_but_keep_their_mass() -> None:
    # The chain gives PAD and START 40% of the mass at every step: they are never chosen, and
    # the other tokens' log-probabilities are used as given (not renormalised without them).
    vocab, max_words, batch, k = 8, 4, 2, 3
    probs = np.exp(_random_table(14, batch, max_words + 1, vocab).astype(np.float64)) * 0.6
    probs[..., PAD_ID] += 0.25
    probs[..., START_ID] += 0.15
    table = _log(probs)
    tokens, log_prob, score = map(np.asarray, _chain_beam(jnp.asarray(table), k, max_words))
    assert not (tokens == START_ID).any()
    expected = _reference_beam(functools.partial(_chain_next, table), batch, vocab, k, max_words)
    for b in range(batch):
        _assert_well_formed(tokens[b], log_prob[b], score[b], max_words, 0.0, table, b)
        _assert_matches(tokens[b], log_prob[b], score[b], expected[b])
    greedy_tokens, greedy_log_prob = map(np.asarray, _chain_greedy(jnp.asarray(table), max_words))
    tokens1, log_prob1, _ = map(np.asarray, _chain_beam(jnp.asarray(table), 1, max_words))
    np.testing.assert_array_equal(tokens1[:, 0], greedy_tokens)
    np.testing.assert_allclose(log_prob1[:, 0], greedy_log_prob, atol=1e-6)


# --- (b, g) exhaustive enumeration -----------------------------------------------------------


EXHAUSTIVE_VOCAB = 7  # four words, each only followed by larger ones: 2**4 = 16 sequences


@pytest.fixture(scope="module")
def increasing_table() -> np.ndarray:
    table = _random_table(
        21, batch=2, positions=7, vocab=EXHAUSTIVE_VOCAB, increasing=True, end_weight=0.5
    )
    for b in range(2):
        expected = _enumerate_complete(table, b, 6)
        assert len(expected) == 16
        # No near-ties, so the order is well defined under float32 rounding.
        assert (-np.diff([e[1] for e in expected]) > 1e-4).all()
    return table


@pytest.mark.parametrize(
    ("beam_size", "max_words", "alpha"),
    [(16, 4, 0.0), (16, 6, 0.0), (18, 6, 0.0), (16, 4, 0.7), (18, 6, 1.3)],
)
def test_beam_is_exhaustive_when_wide_enough(increasing_table, beam_size, max_words, alpha):
    """Beam search with K >= the number of complete sequences returns all of them, in order.

    max_words = 4 is the longest sequence (exact); max_words = 6 leaves room for early stop.
    """
    table = increasing_table[:, : max_words + 1]
    tokens, log_prob, score = map(
        np.asarray, _chain_beam(jnp.asarray(table), beam_size, max_words, alpha)
    )
    assert tokens.shape == (2, beam_size, max_words + 1)
    for b in range(2):
        expected = _enumerate_complete(table, b, max_words, alpha)
        assert len(expected) == 16
        _assert_matches(tokens[b], log_prob[b], score[b], expected)
    # The two batch elements have different chains, hence different orders.
    assert not np.array_equal(tokens[0], tokens[1])


def test_sequence_ending_on_last_step_is_not_also_returned_cut(increasing_table) -> None:
    # 16 complete sequences, K = 18, max_words = 4: two slots must stay empty. The one
    # sequence of 4 words ends on the last step; it must not come back a second time.
    max_words = 4
    table = increasing_table[:, : max_words + 1]
    tokens, log_prob, score = map(np.asarray, _chain_beam(jnp.asarray(table), 18, max_words))
    for b in range(2):
        _assert_matches(tokens[b], log_prob[b], score[b], _enumerate_complete(table, b, max_words))


def test_minimal_duplicate_on_last_step() -> None:
    # START -> 3 (0.6) | 4 (0.4); 3 -> 4 (0.5) | END (0.5); 4 -> END (1). Complete sequences:
    # "4", "3", "3 4" (log 0.4, 0.3, 0.3). With K = 4 and max_words = 2 the fourth slot must
    # stay empty; beam_search returns [3, 4, PAD] there with log_prob log 0.3, although
    # "3 4" is always followed by END.
    t = np.zeros((5, 5))
    t[START_ID, 3], t[START_ID, 4] = 0.6, 0.4
    t[3, 4], t[3, END_ID] = 0.5, 0.5
    t[[PAD_ID, END_ID, 4], END_ID] = 1.0
    table = jnp.asarray(_first_order(t, 1, 3))
    tokens, log_prob, _ = map(np.asarray, _chain_beam(table, 4, 2))
    np.testing.assert_array_equal(tokens[0, :3], [[4, 2, 0], [3, 2, 0], [3, 4, 2]])
    np.testing.assert_allclose(log_prob[0, :3], np.log([0.4, 0.3, 0.3]), atol=1e-6)
    assert log_prob[0, 3] <= -1e8, (tokens[0, 3], log_prob[0, 3])


# --- (c, g) random chains against the Python reference --------------------------------------


RANDOM_CASES = [
    # (seed, vocab, max_words, beam_size, end_weight)
    (0, 7, 4, 1, 1.0),
    (1, 8, 5, 2, 1.0),
    (2, 9, 6, 3, 0.6),
    (3, 8, 5, 5, 0.3),
    (4, 8, 5, 5, 2.0),
    (5, 8, 5, 2, 0.05),  # rarely ends: cut sequences fill the list
]


@pytest.mark.parametrize(("seed", "vocab", "max_words", "beam_size", "end_weight"), RANDOM_CASES)
@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_random_chains_match_reference(seed, vocab, max_words, beam_size, end_weight, alpha):
    batch = 3
    table = _random_table(seed, batch, max_words + 1, vocab, end_weight=end_weight)
    tokens, log_prob, score = map(
        np.asarray, _chain_beam(jnp.asarray(table), beam_size, max_words, alpha)
    )
    assert tokens.shape == (batch, beam_size, max_words + 1)
    assert log_prob.shape == score.shape == (batch, beam_size)
    expected = _reference_beam(
        functools.partial(_chain_next, table), batch, vocab, beam_size, max_words, alpha
    )
    for b in range(batch):
        _assert_well_formed(tokens[b], log_prob[b], score[b], max_words, alpha, table, b)
        _assert_matches(tokens[b], log_prob[b], score[b], expected[b])
        # With a full-support chain every slot is used.
        assert len(expected[b]) == beam_size


def test_reference_cases_cover_cut_and_finished() -> None:
    """The random cases above include both all-finished lists and lists filled with cut ones."""
    kinds = set()
    for seed, vocab, max_words, beam_size, end_weight in RANDOM_CASES:
        table = _random_table(seed, 3, max_words + 1, vocab, end_weight=end_weight)
        expected = _reference_beam(
            functools.partial(_chain_next, table), 3, vocab, beam_size, max_words
        )
        for element in expected:
            kinds.add(tuple(END_ID in tokens for tokens, _, _ in element))
    assert any(all(k) for k in kinds) and any(not any(k) for k in kinds)
    assert any(any(k) and not all(k) for k in kinds)


def test_carry_is_gathered_by_parent_beam() -> None:
    """A second-order chain where the beams swap slots and the carry decides the outcome.

    START -> 3 (0.5) | 4 (0.45) | 5 (0.05); after (START, 3) four words at 0.25; after
    (START, 4) 5 (0.9) | 6 (0.1); after (4, 5) END (0.9) | 6 (0.1); after any other (x, 5)
    6 (0.99) | END (0.01); everything else -> END. With K = 2, "4 5" (from slot 1) takes
    slot 0 at step 1, and only its own carry (token two back: 4) makes END likely next.
    """
    vocab, max_words = 7, 4
    probs = np.zeros((vocab, vocab, vocab))
    probs[:, :, END_ID] = 1.0
    probs[PAD_ID, START_ID] = 0.0
    probs[PAD_ID, START_ID, [3, 4, 5]] = [0.5, 0.45, 0.05]
    probs[START_ID, 3] = 0.0
    probs[START_ID, 3, [3, 4, 5, 6]] = 0.25
    probs[START_ID, 4] = 0.0
    probs[START_ID, 4, [5, 6]] = [0.9, 0.1]
    probs[:, 5] = 0.0
    probs[:, 5, [6, END_ID]] = [0.99, 0.01]
    probs[4, 5, [6, END_ID]] = [0.1, 0.9]
    table = np.broadcast_to(_log(probs), (1, max_words + 1) + probs.shape).copy()
    tokens, log_prob, score = map(np.asarray, _chain_beam(jnp.asarray(table), 2, max_words))
    np.testing.assert_array_equal(tokens[0], [[4, 5, END_ID, 0, 0], [3, 3, END_ID, 0, 0]])
    np.testing.assert_allclose(log_prob[0], np.log([0.45 * 0.9 * 0.9, 0.5 * 0.25]), atol=1e-6)
    expected = _reference_beam(functools.partial(_chain_next, table), 1, vocab, 2, max_words)
    _assert_matches(tokens[0], log_prob[0], score[0], expected[0])
    # Greedy (beam 1) takes 3 first and ends with the less probable "3 3".
    greedy_tokens, greedy_log_prob = map(np.asarray, _chain_greedy(jnp.asarray(table), max_words))
    np.testing.assert_array_equal(greedy_tokens[0], [3, 3, END_ID, 0, 0])


def test_random_second_order_chain_with_batch() -> None:
    """A noisy second-order rule (next = 3 + (x + y) mod 4 mostly), a chain per batch element."""
    vocab, max_words, batch = 7, 5, 2
    rng = np.random.default_rng(7)
    probs = rng.uniform(0.0, 0.6, size=(batch, max_words + 1, vocab, vocab, vocab))
    probs[..., [PAD_ID, START_ID]] = 0.0
    for x, y in itertools.product(range(vocab), repeat=2):
        probs[:, :, x, y, FIRST_WORD + (x + y) % 4] += 1.0
    probs[:, -1, :, :, END_ID] += 2.0
    probs /= probs.sum(-1, keepdims=True)
    table = _log(probs)
    tokens, log_prob, score = map(np.asarray, _chain_beam(jnp.asarray(table), 3, max_words))
    expected = _reference_beam(functools.partial(_chain_next, table), batch, vocab, 3, max_words)
    for b in range(batch):
        _assert_well_formed(tokens[b], log_prob[b], score[b], max_words, 0.0, table, b)
        _assert_matches(tokens[b], log_prob[b], score[b], expected[b])
    assert not np.array_equal(tokens[0], tokens[1])


# --- (d) a chain that never ends ----------------------------------------------------------------


def test_chain_without_end_is_cut_at_max_words() -> None:
    vocab, max_words, batch, k = 8, 5, 2, 4
    table = _random_table(9, batch, max_words + 1, vocab, end_possible=False)
    for alpha in (0.0, 0.6):
        tokens, log_prob, score = map(
            np.asarray, _chain_beam(jnp.asarray(table), k, max_words, alpha)
        )
        assert not np.isnan(log_prob).any() and not np.isnan(score).any()
        assert not (tokens == END_ID).any()
        assert (tokens[..., :max_words] >= FIRST_WORD).all()
        assert (tokens[..., max_words] == PAD_ID).all()
        expected = _reference_beam(
            functools.partial(_chain_next, table), batch, vocab, k, max_words, alpha
        )
        for b in range(batch):
            ends = _assert_well_formed(tokens[b], log_prob[b], score[b], max_words, alpha, table, b)
            assert not ends.any()
            assert (np.diff(log_prob[b]) <= 0).all()
            _assert_matches(tokens[b], log_prob[b], score[b], expected[b])


def test_chain_without_end_small_enough_is_exact() -> None:
    # Two words, 3 steps, no END: 8 sequences; K = 8 must return them all, by log-probability.
    vocab, max_words = 5, 3
    table = _random_table(10, 1, max_words + 1, vocab, end_possible=False)
    tokens, log_prob, score = map(np.asarray, _chain_beam(jnp.asarray(table), 8, max_words))
    expected = []
    for seq in itertools.product(range(FIRST_WORD, vocab), repeat=max_words):
        lp = _chain_log_prob(table, 0, seq)
        expected.append((_padded(seq, max_words), lp, lp))
    expected.sort(key=lambda e: -e[1])
    assert (-np.diff([e[1] for e in expected]) > 1e-4).all()
    _assert_matches(tokens[0], log_prob[0], score[0], expected)


# --- (e) beam 1 is greedy on chains -------------------------------------------------------------


@pytest.mark.parametrize(("seed", "end_weight"), [(11, 1.0), (12, 0.2), (13, 0.0)])
def test_beam_one_is_greedy_on_chains(seed, end_weight) -> None:
    vocab, max_words, batch = 8, 5, 4
    table = jnp.asarray(_random_table(seed, batch, max_words + 1, vocab, end_weight=end_weight))
    tokens, log_prob, score = map(np.asarray, _chain_beam(table, 1, max_words))
    greedy_tokens, greedy_log_prob = map(np.asarray, _chain_greedy(table, max_words))
    np.testing.assert_array_equal(tokens[:, 0], greedy_tokens)
    np.testing.assert_allclose(log_prob[:, 0], greedy_log_prob, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(score, log_prob)
    if end_weight == 0.0:
        assert not (greedy_tokens == END_ID).any()


# --- the m-RNN ---------------------------------------------------------------------------------


VOCAB, FEATURES, MAX_WORDS, IMAGES = 13, 4, 6, 6


def _model() -> MRNN:
    return MRNN(vocab_size=VOCAB, embed_dim=5, word_dim=6, multimodal_dim=7)


def _random_params(seed: int, end_bias: float = 3.5) -> dict:
    shapes = jax.eval_shape(
        _model().init, jax.random.key(0), jnp.zeros((1, FEATURES)), jnp.zeros((1, 3), jnp.int32)
    )["params"]
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), shapes)
    bias = params["softmax"]["bias"]
    bias = bias.at[PAD_ID].set(-30.0).at[START_ID].set(-30.0).at[END_ID].add(end_bias)
    return {"params": {**params, "softmax": {**params["softmax"], "bias": bias}}}


@pytest.fixture(scope="module")
def mrnn() -> tuple[MRNN, dict, np.ndarray]:
    images = (2.0 * np.random.default_rng(3).normal(size=(IMAGES, FEATURES))).astype(np.float32)
    return _model(), _random_params(5), images


def _teacher_forced_log_probs(model, variables, images, inputs) -> np.ndarray:
    """log P(next | inputs) [N, T, V] in float64, through ``MRNN.__call__``."""
    logits = np.asarray(model.apply(variables, images, np.asarray(inputs, np.int32)), np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _caption_log_prob(model, variables, images, tokens) -> np.ndarray:
    """log P(caption | image) of each emitted caption ``tokens [N, L]`` (every non-PAD token)."""
    tokens = np.asarray(tokens)
    inputs = np.concatenate([np.full((len(tokens), 1), START_ID, np.int32), tokens[:, :-1]], 1)
    log_probs = _teacher_forced_log_probs(model, variables, images, inputs)
    chosen = np.take_along_axis(log_probs, tokens[..., None], -1)[..., 0]
    return (chosen * (tokens != PAD_ID)).sum(-1)


def _mrnn_next(model, variables, images, queries) -> np.ndarray:
    inputs = [(START_ID,) + prefix for _, prefix in queries]
    rows = images[[b for b, _ in queries]]
    return _teacher_forced_log_probs(model, variables, rows, inputs)[:, -1].astype(np.float32)


def test_mrnn_beam_one_is_greedy(mrnn) -> None:
    model, variables, images = mrnn
    tokens, log_prob, score = map(np.asarray, decode.beam(model, variables, images, MAX_WORDS, 1))
    greedy_tokens, greedy_log_prob = map(
        np.asarray, decode.greedy(model, variables, images, MAX_WORDS)
    )
    assert tokens.shape == (IMAGES, 1, MAX_WORDS + 1)
    np.testing.assert_array_equal(tokens[:, 0], greedy_tokens)
    np.testing.assert_allclose(log_prob[:, 0], greedy_log_prob, rtol=1e-5, atol=1e-5)
    # The fixture has captions that end early and captions cut at the length limit.
    ended = (greedy_tokens == END_ID).any(1)
    assert ended.any() and not ended.all(), greedy_tokens


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_mrnn_beam_matches_reference(mrnn, alpha) -> None:
    model, variables, images = mrnn
    k = 3
    tokens, log_prob, score = map(
        np.asarray, decode.beam(model, variables, images, MAX_WORDS, k, alpha)
    )
    assert tokens.shape == (IMAGES, k, MAX_WORDS + 1)
    next_fn = functools.partial(_mrnn_next, model, variables, images)
    # The reference's log-probabilities come from another program (teacher forcing), ~1e-6
    # apart from the search's own; with no candidates nearer than 1e-4 (this fixture: 6e-4),
    # both rank them alike, so the tokens must agree exactly. The m-RNN's beam search never
    # chooses <unk> either (unless asked to).
    expected = _reference_beam(
        next_fn, IMAGES, VOCAB, k, MAX_WORDS, alpha, min_gap=1e-4, banned={UNK_ID}
    )
    for b in range(IMAGES):
        _assert_well_formed(tokens[b], log_prob[b], score[b], MAX_WORDS, alpha)
        _assert_matches(tokens[b], log_prob[b], score[b], expected[b], tol=1e-4)
    # Every returned log-probability is that of its caption under the model.
    flat = tokens.reshape(-1, MAX_WORDS + 1)
    np.testing.assert_allclose(
        log_prob.reshape(-1),
        _caption_log_prob(model, variables, np.repeat(images, k, 0), flat),
        rtol=1e-5,
        atol=1e-5,
    )


def test_mrnn_beam_not_worse_than_greedy(mrnn) -> None:
    # Not a theorem of beam search, but true of this fixture: where both the greedy caption
    # and the best beam finished, the beam is at least as probable (alpha = 0), and better
    # somewhere. (A finished caption ranks before any cut one, so where greedy was cut at
    # max_words words, the beam may rightly return a less probable caption that ends.)
    model, variables, images = mrnn
    tokens, log_prob, _ = map(np.asarray, decode.beam(model, variables, images, MAX_WORDS, 3))
    greedy_tokens, greedy_log_prob = map(
        np.asarray, decode.greedy(model, variables, images, MAX_WORDS)
    )
    both = (tokens[:, 0] == END_ID).any(1) & (greedy_tokens == END_ID).any(1)
    assert both.any()
    assert (log_prob[both, 0] >= greedy_log_prob[both] - 1e-5).all()
    assert (log_prob[both, 0] > greedy_log_prob[both] + 1e-3).any()


def test_mrnn_beam_captions_are_distinct() -> None:
    # Found by search: K = 3, max_words = 4 returns [5 12 12 12 END] (log_prob -1.645) and
    # [5 12 12 12] (-0.652, cut) for this image: one caption, twice.
    model = _model()
    variables = _random_params(0, end_bias=0.0)
    image = (2.0 * np.random.default_rng(0).normal(size=(16, FEATURES)))[3:4].astype(np.float32)
    tokens, log_prob, _ = map(np.asarray, decode.beam(model, variables, image, 4, 3))
    captions = [tuple(int(x) for x in row if x > END_ID) for row in tokens[0]]
    assert len(set(captions)) == len(captions), (tokens[0], log_prob[0])


# --- (f) compilation ---------------------------------------------------------------------------


def test_mrnn_beam_compiles_once_per_shape(mrnn) -> None:
    model, variables, images = mrnn
    decode.beam(model, variables, images, MAX_WORDS, 3)
    size = decode.beam._cache_size()
    # New image values, new parameter values, an equal (not identical) model, another alpha.
    decode.beam(model, variables, images + 1.0, MAX_WORDS, 3)
    decode.beam(model, _random_params(99), np.zeros_like(images), MAX_WORDS, 3)
    decode.beam(_model(), variables, images, MAX_WORDS, 3, 0.5)
    assert decode.beam._cache_size() == size
    # A new beam size is a new program.
    decode.beam(model, variables, images, MAX_WORDS, 2)
    assert decode.beam._cache_size() == size + 1


def test_step_function_traced_once() -> None:
    """The whole search is one loop: the step function is traced a fixed number of times,
    independently of max_words (no Python unrolling)."""
    traces = []

    def counting(max_words):
        traces.clear()
        table = jnp.asarray(_random_table(0, 1, max_words + 1, 6))
        inner = _chain_step_fn(table)

        def step_fn(carry, tokens):
            traces.append(1)
            return inner(carry, tokens)

        jax.jit(lambda: decode.beam_search(step_fn, _chain_carry(1), 1, 2, max_words)).lower()
        return len(traces)

    assert counting(3) == counting(12) == 1


# --- (h) sampling ------------------------------------------------------------------------------


def test_sample_is_reproducible_and_depends_on_rng(mrnn) -> None:
    model, variables, images = mrnn
    a_tokens, a_log_prob = decode.sample(model, variables, images, MAX_WORDS, jax.random.key(1))
    b_tokens, b_log_prob = decode.sample(model, variables, images, MAX_WORDS, jax.random.key(1))
    c_tokens, _ = decode.sample(model, variables, images, MAX_WORDS, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(a_tokens), np.asarray(b_tokens))
    np.testing.assert_array_equal(np.asarray(a_log_prob), np.asarray(b_log_prob))
    assert not np.array_equal(np.asarray(a_tokens), np.asarray(c_tokens))


def test_sample_log_prob_is_under_the_model(mrnn) -> None:
    model, variables, images = mrnn
    tokens, log_prob = map(
        np.asarray, decode.sample(model, variables, images, MAX_WORDS, jax.random.key(3))
    )
    assert not (tokens == START_ID).any()
    np.testing.assert_allclose(
        log_prob, _caption_log_prob(model, variables, images, tokens), rtol=1e-5, atol=1e-5
    )
    # Temperature changes the choice, not how the choice is scored.
    tokens, log_prob = map(
        np.asarray,
        decode.sample(model, variables, images, MAX_WORDS, jax.random.key(3), temperature=2.5),
    )
    np.testing.assert_allclose(
        log_prob, _caption_log_prob(model, variables, images, tokens), rtol=1e-5, atol=1e-5
    )


def test_sample_at_low_temperature_is_greedy(mrnn) -> None:
    model, variables, images = mrnn
    greedy_tokens, greedy_log_prob = decode.greedy(model, variables, images, MAX_WORDS)
    for seed in (0, 1):
        tokens, log_prob = decode.sample(
            model, variables, images, MAX_WORDS, jax.random.key(seed), temperature=1e-4
        )
        np.testing.assert_array_equal(np.asarray(tokens), np.asarray(greedy_tokens))
        np.testing.assert_allclose(np.asarray(log_prob), np.asarray(greedy_log_prob), atol=1e-5)


def test_sampling_choice_draws_each_word_with_its_probability() -> None:
    """Inverse-CDF sampling: over many rows the frequencies are the distribution's (within
    five standard errors), banned words (probability 0) are never drawn, temperature
    flattens, and a row's draws do not depend on the other rows of its batch."""
    probs = np.asarray([0.0, 0.0, 0.1, 0.05, 0.45, 0.3, 0.1], np.float32)
    rows = 40_000
    log_probs = jnp.log(jnp.broadcast_to(jnp.asarray(probs), (rows, probs.size)))
    choose = decode.sampling_choice(jax.random.key(0), jnp.arange(rows))
    words = np.asarray(jax.jit(choose)(log_probs, jnp.asarray(3)))
    counts = np.bincount(words, minlength=probs.size) / rows
    assert counts[0] == counts[1] == 0.0
    standard_error = np.sqrt(probs * (1 - probs) / rows)
    assert np.all(np.abs(counts - probs) <= 5 * standard_error + 1e-12), counts
    hot = decode.sampling_choice(jax.random.key(0), jnp.arange(rows), temperature=3.0)
    flat = np.bincount(np.asarray(hot(log_probs, jnp.asarray(3))), minlength=probs.size) / rows
    assert flat[4] < counts[4] - 0.05 and flat[3] > counts[3] + 0.02
    few = decode.sampling_choice(jax.random.key(0), jnp.arange(rows)[123:130])
    np.testing.assert_array_equal(np.asarray(few(log_probs[:7], jnp.asarray(3))), words[123:130])
