"""Caption generation: greedy, sampling and beam search, jitted and batched over images.

All three are built on one step-function interface, ``step_fn(carry, tokens) -> (log_probs,
carry)`` over a flat batch of hypotheses, which the m-RNN provides through
:meth:`MRNN.recur_step` and :meth:`MRNN.head` (:func:`mrnn_step_fn`): the image projection
V_I I is computed once per image, then each step runs the recurrent layer and the head.
Toy models (Markov chains in the tests) plug into the same interface.

Conventions shared by every strategy: a caption has at most ``max_words`` words, followed by
the end token if the model chose it; padding and the start token are never generated, nor
the unknown-word token unless ``allow_unk`` asks for it (it would reach the scorers as the
word "<unk>", which no reference holds); scores
are the model's log-probabilities of the emitted tokens (end token included when emitted).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from mrnn_jax import losses
from mrnn_jax.errors import MrnnError
from mrnn_jax.model import MRNN
from mrnn_jax.text.vocab import END_ID, PAD_ID, START_ID, UNK_ID

StepFn = Callable[[Any, jax.Array], tuple[jax.Array, Any]]
"""``(carry, tokens [N]) -> (log_probs [N, V], carry)``: one step of a language model."""

NEG_INF = -1.0e9  # a finite "impossible", so that sums and comparisons stay well defined


def is_real(log_prob: jax.Array) -> jax.Array:
    """Whether log-probabilities are of real hypotheses, not ``NEG_INF`` placeholders."""
    return log_prob > NEG_INF / 2


NEVER_GENERATED = (PAD_ID, START_ID)
"""Token ids no strategy ever chooses."""


def banned_tokens(allow_unk: bool) -> tuple[int, ...]:
    """The m-RNN's tokens that are never chosen: padding, start and, unless ``allow_unk``,
    the unknown-word token."""
    return NEVER_GENERATED if allow_unk else (*NEVER_GENERATED, UNK_ID)


def word_choices(log_probs: jax.Array, banned: tuple[int, ...] = NEVER_GENERATED) -> jax.Array:
    """Log-probabilities with the ``banned`` tokens (default: padding, start) removed.

    Scores keep the model's full distribution; only the choice among words is restricted.
    """
    mask = jnp.zeros(log_probs.shape[-1], bool).at[jnp.array(banned)].set(True)
    return jnp.where(mask, -jnp.inf, log_probs)


def mrnn_step_fn(
    model: MRNN, params: dict, image_projection: jax.Array, normalise: bool = True
) -> StepFn:
    """The m-RNN as a step function; ``image_projection [N, M]`` is V_I I per hypothesis.
    With ``normalise=False`` it gives the logits instead of the log-probabilities (for
    :func:`decode_by_choice` with ``logits=True``)."""

    def step_fn(r_prev: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        w, r = model.apply(params, r_prev, tokens, method=MRNN.recur_step)
        logits = model.apply(params, w, r, image_projection, method=MRNN.head)
        logits = logits.astype(jnp.float32)
        return (jax.nn.log_softmax(logits) if normalise else logits), r

    return step_fn


# --- greedy and sampling -----------------------------------------------------------------


def decode_by_choice(
    step_fn: StepFn,
    carry: Any,
    batch: int,
    max_words: int,
    choose: Callable[[jax.Array, jax.Array], jax.Array],
    banned: tuple[int, ...] = NEVER_GENERATED,
    with_entropy: bool = False,
    logits: bool = False,
) -> tuple[jax.Array, ...]:
    """Left-to-right decoding where ``choose(log_probs, t)`` picks each next word (never one
    of ``banned``).

    Returns ``(tokens [B, max_words + 1], log_prob [B])``, and with ``with_entropy`` also
    the summed entropy [B] of the model's distributions at the emitted positions. As one
    ``lax.scan``, it is differentiable: ``log_prob`` is the sampled words' log-likelihood
    under the parameters ``step_fn`` closes over (what SCST's gradient needs). With
    ``logits``, ``step_fn`` gives unnormalised logits (``choose`` must not need them
    normalised, as argmax and :func:`sampling_choice` do not): the chosen word's
    log-probability then comes from :func:`mrnn_jax.losses.token_nll`, whose gradient is
    written out (the cheaper pass to differentiate).
    """

    def step(state, t):
        carry, previous, done, log_prob, entropy = state
        scores, carry = step_fn(carry, previous)
        word = choose(word_choices(scores, banned), t).astype(jnp.int32)
        # After max_words words only the end token may still be emitted.
        done = done | ((t == max_words) & (word != END_ID))
        if logits:
            chosen = -losses.token_nll(scores, word)
        else:
            chosen = jnp.take_along_axis(scores, word[:, None], axis=-1)[:, 0]
        log_prob = log_prob + jnp.where(done, 0.0, chosen)
        if with_entropy:
            log_probs = jax.nn.log_softmax(scores) if logits else scores
            finite = jnp.where(jnp.isfinite(log_probs), log_probs, 0.0)
            here = -jnp.sum(jnp.exp(log_probs) * finite, axis=-1)
            entropy = entropy + jnp.where(done, 0.0, here)
        emitted = jnp.where(done, PAD_ID, word)
        done = done | (word == END_ID)
        return (carry, word, done, log_prob, entropy), emitted

    start = jnp.full((batch,), START_ID, jnp.int32)
    zeros = jnp.zeros((batch,), jnp.float32)
    init = (carry, start, jnp.zeros((batch,), bool), zeros, zeros)
    (_, _, _, log_prob, entropy), tokens = jax.lax.scan(step, init, jnp.arange(max_words + 1))
    tokens = jnp.swapaxes(tokens, 0, 1)
    return (tokens, log_prob, entropy) if with_entropy else (tokens, log_prob)


def sampling_choice(
    rng: jax.Array, row_ids: jax.Array, temperature: float | jax.Array = 1.0
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A ``choose(log_probs, t)`` for :func:`decode_by_choice` that draws each row's word from
    ``softmax(log_probs / temperature)`` with one uniform number per row and step (``rng``
    folded with the row's id, then ``t``: a row's draws do not depend on its batch).

    Inverse-CDF sampling: the first word whose cumulative probability reaches the uniform
    number; on a CPU about three times faster than ``jax.random.categorical``, which draws
    a Gumbel number per word.
    """
    row_keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(row_ids)

    def choose(log_probs: jax.Array, t: jax.Array) -> jax.Array:
        uniform = jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, t)))(row_keys)
        scaled = log_probs / temperature
        weights = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))  # banned: 0
        cumulative = jnp.cumsum(weights, axis=-1)
        target = (1.0 - uniform) * cumulative[:, -1]  # in (0, total]: never a zero-weight word
        word = jnp.sum(cumulative < target[:, None], axis=-1)
        return jnp.minimum(word, log_probs.shape[-1] - 1)

    return choose


def _start(model: MRNN, params: dict, image_inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """V_I I for each image, and the recurrent layer's initial state."""
    image_projection = model.apply(params, image_inputs, method=MRNN.project_image)
    r0 = model.apply(params, image_inputs.shape[0], method=MRNN.initial_carry)
    return image_projection, r0


@functools.partial(jax.jit, static_argnames=("model", "max_words", "allow_unk"))
def greedy(
    model: MRNN, params: dict, image_inputs: jax.Array, max_words: int, allow_unk: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Most probable word at each step, for a batch of images.

    Returns ``(tokens [B, max_words + 1], log_prob [B])``: at most ``max_words`` words, then
    the end token if the model chose it, then padding; and the log-probability of the emitted
    tokens. A caption that has not ended after ``max_words`` words is cut there.
    """
    image_projection, r0 = _start(model, params, image_inputs)
    step_fn = mrnn_step_fn(model, params, image_projection)
    choose = lambda log_probs, t: jnp.argmax(log_probs, axis=-1)
    banned = banned_tokens(allow_unk)
    return decode_by_choice(step_fn, r0, image_inputs.shape[0], max_words, choose, banned)


@functools.partial(jax.jit, static_argnames=("model", "max_words", "allow_unk"))
def sample(
    model: MRNN,
    params: dict,
    image_inputs: jax.Array,
    max_words: int,
    rng: jax.Array,
    temperature: float | jax.Array = 1.0,
    row_ids: jax.Array | None = None,
    allow_unk: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Words drawn from the model's distribution (sharpened or flattened by ``temperature``).

    The 2014 paper's generation. Each row draws from ``rng`` folded with its ``row_ids``
    entry (default: its position), so a caption does not depend on how images are batched.
    Returns the same as :func:`greedy`; ``log_prob`` is under the model itself, whatever the
    temperature.
    """
    image_projection, r0 = _start(model, params, image_inputs)
    step_fn = mrnn_step_fn(model, params, image_projection)
    if row_ids is None:
        row_ids = jnp.arange(image_inputs.shape[0])
    choose = sampling_choice(rng, row_ids, temperature)
    banned = banned_tokens(allow_unk)
    return decode_by_choice(step_fn, r0, image_inputs.shape[0], max_words, choose, banned)


# --- beam search -------------------------------------------------------------------------


@flax.struct.dataclass
class BeamState:
    """The fixed-shape state of beam search for ``B`` images, ``K`` beams, ``L`` positions.

    Attributes:
      t: the position being generated (0-based).
      live_tokens: ``[B, K, L]`` tokens of the live (unfinished) beams, padding after ``t``.
      live_log_prob: ``[B, K]`` their log-probabilities (``NEG_INF`` for empty slots).
      carry: the step function's carry for the ``B * K`` live beams.
      finished_tokens: ``[B, K, L]`` the best finished sequences so far.
      finished_log_prob: ``[B, K]`` their log-probabilities.
      finished_score: ``[B, K]`` their scores (log-probability over the length penalty;
        ``NEG_INF`` for empty slots).
    """

    t: jax.Array
    live_tokens: jax.Array
    live_log_prob: jax.Array
    carry: Any
    finished_tokens: jax.Array
    finished_log_prob: jax.Array
    finished_score: jax.Array


def length_penalty(length: jax.Array, alpha: float | jax.Array) -> jax.Array:
    """GNMT length penalty ((5 + length) / 6) ** alpha; alpha = 0 scores by log-probability."""
    return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(tree: Any, indices: jax.Array, batch: int, beams: int) -> Any:
    """Selects beams ``indices [B, K']`` from every ``[B * K, ...]`` leaf of ``tree``."""

    def gather(x):
        x = x.reshape((batch, beams) + x.shape[1:])
        x = jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)
        return x.reshape((-1,) + x.shape[2:])

    return jax.tree.map(gather, tree)


def beam_search(
    step_fn: StepFn,
    carry: Any,
    batch: int,
    beam_size: int,
    max_words: int,
    alpha: float | jax.Array = 0.0,
    banned: tuple[int, ...] = NEVER_GENERATED,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Beam search over ``step_fn`` as one ``lax.while_loop`` on a :class:`BeamState`.

    ``carry`` is the initial carry for ``batch`` sequences; it is repeated for the beams.
    Each step expands the ``K`` live beams and keeps the best ``2K`` candidates, so that ``K``
    live beams survive even when ``K`` candidates end together; those among the best ``K``
    that end move into the finished set (scored with :func:`length_penalty`, ``alpha >= 0``);
    it stops early once no live beam can beat the worst finished one. If fewer than ``K`` sequences
    finished (the model never chose the end token), the best live ones fill the list, cut at
    ``max_words`` words.

    Returns ``(tokens [B, K, max_words + 1], log_prob [B, K], score [B, K])``, best first.
    """
    k, length = beam_size, max_words + 1
    pad = jnp.full((batch, k, length), PAD_ID, jnp.int32)
    first_live = jnp.full((batch, k), NEG_INF, jnp.float32).at[:, 0].set(0.0)
    beams_carry = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), carry)
    state = BeamState(
        t=jnp.zeros((), jnp.int32),
        live_tokens=pad,
        live_log_prob=first_live,
        carry=beams_carry,
        finished_tokens=pad,
        finished_log_prob=jnp.full((batch, k), NEG_INF, jnp.float32),
        finished_score=jnp.full((batch, k), NEG_INF, jnp.float32),
    )
    # The largest length penalty any live beam can still reach bounds its best future score.
    best_penalty = length_penalty(jnp.float32(length), alpha)

    def not_done(state: BeamState) -> jax.Array:
        # Log-probabilities only fall as words are added, and the penalty only grows with
        # length (alpha >= 0), so a live beam's best possible score is bounded by this.
        best_live = state.live_log_prob[:, 0] / best_penalty
        worst_finished = state.finished_score[:, -1]
        can_improve = (best_live > worst_finished) & is_real(state.live_log_prob[:, 0])
        return (state.t < length) & jnp.any(can_improve)

    def step(state: BeamState) -> BeamState:
        t = state.t
        last = jax.lax.dynamic_index_in_dim(
            state.live_tokens, jnp.maximum(t - 1, 0), axis=2, keepdims=False
        )
        previous = jnp.where(t == 0, START_ID, last).reshape(-1)
        log_probs, carry = step_fn(state.carry, previous)
        log_probs = jnp.maximum(word_choices(log_probs, banned), NEG_INF)
        # The best 2K extensions of all K beams are among each beam's own best 2K words:
        # choose those first (rows of V), then among the K x 2K (never a row of K x V).
        per_beam = min(2 * k, log_probs.shape[-1])
        word_log_prob, word = jax.lax.top_k(log_probs, per_beam)  # [B * K, per_beam]
        candidates = state.live_log_prob.reshape(-1, 1) + word_log_prob
        candidates = candidates.reshape(batch, k * per_beam)
        top_log_prob, top_index = jax.lax.top_k(candidates, 2 * k)
        parent = top_index // per_beam
        token = jnp.take_along_axis(word.reshape(batch, k * per_beam), top_index, axis=1)
        valid = is_real(top_log_prob)
        # As in plain beam search, a hypothesis ends only if it ranks among the best K
        # candidates (so beam 1 is greedy); the best K that continue stay live.
        ends = (token == END_ID) & valid & (jnp.arange(2 * k) < k)[None]
        continues = (token != END_ID) & valid

        tokens = jnp.take_along_axis(state.live_tokens, parent[:, :, None], axis=1)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, :, None], t, axis=2)

        # Finished: merge the new ends into the best K so far.
        score = top_log_prob / length_penalty((t + 1).astype(jnp.float32), alpha)
        all_score = jnp.concatenate([state.finished_score, jnp.where(ends, score, NEG_INF)], 1)
        all_log_prob = jnp.concatenate(
            [state.finished_log_prob, jnp.where(ends, top_log_prob, NEG_INF)], axis=1
        )
        all_tokens = jnp.concatenate([state.finished_tokens, tokens], axis=1)
        finished_score, keep = jax.lax.top_k(all_score, k)
        finished_log_prob = jnp.take_along_axis(all_log_prob, keep, axis=1)
        finished_tokens = jnp.take_along_axis(all_tokens, keep[:, :, None], axis=1)

        # Live: the best K candidates that continue. After max_words words nothing may
        # continue: the live beams stay as they are (cut there) in case too few finished.
        live_log_prob, keep = jax.lax.top_k(jnp.where(continues, top_log_prob, NEG_INF), k)
        live_tokens = jnp.take_along_axis(tokens, keep[:, :, None], axis=1)
        carry = _gather_beams(carry, jnp.take_along_axis(parent, keep, axis=1), batch, k)
        last_step = t == length - 1
        # ... except those that just ended, which would otherwise come back twice.
        ended = jnp.zeros((batch, k), bool).at[jnp.arange(batch)[:, None], parent].max(ends)
        kept = jnp.where(ended, NEG_INF, state.live_log_prob)
        live_log_prob = jnp.where(last_step, kept, live_log_prob)
        live_tokens = jnp.where(last_step, state.live_tokens, live_tokens)
        carry = jax.tree.map(lambda new, old: jnp.where(last_step, old, new), carry, state.carry)
        return BeamState(
            t=t + 1,
            live_tokens=live_tokens,
            live_log_prob=live_log_prob,
            carry=carry,
            finished_tokens=finished_tokens,
            finished_log_prob=finished_log_prob,
            finished_score=finished_score,
        )

    state = jax.lax.while_loop(not_done, step, state)

    # Finished sequences first, by score; then, if fewer than K finished, the best live
    # beams (sequences cut at max_words words); empty slots last.
    live_length = jnp.sum(state.live_tokens != PAD_ID, axis=2).astype(jnp.float32)
    live_score = state.live_log_prob / length_penalty(live_length, alpha)
    all_score = jnp.concatenate([state.finished_score, live_score], axis=1)
    all_log_prob = jnp.concatenate([state.finished_log_prob, state.live_log_prob], axis=1)
    all_tokens = jnp.concatenate([state.finished_tokens, state.live_tokens], axis=1)
    tier = jnp.where(is_real(all_log_prob), (jnp.arange(2 * k) >= k).astype(jnp.int32), 2)
    order = jnp.lexsort((-all_score, tier), axis=-1)[:, :k]
    tokens = jnp.take_along_axis(all_tokens, order[:, :, None], axis=1)
    log_prob = jnp.take_along_axis(all_log_prob, order, axis=1)
    score = jnp.take_along_axis(all_score, order, axis=1)
    return tokens, log_prob, score


@functools.partial(jax.jit, static_argnames=("model", "max_words", "beam_size", "allow_unk"))
def beam(
    model: MRNN,
    params: dict,
    image_inputs: jax.Array,
    max_words: int,
    beam_size: int,
    alpha: float | jax.Array = 0.0,
    allow_unk: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Beam search for a batch of images; see :func:`beam_search` for what it returns."""
    image_projection, r0 = _start(model, params, image_inputs)
    per_beam = jnp.repeat(image_projection, beam_size, axis=0)
    step_fn = mrnn_step_fn(model, params, per_beam)
    banned = banned_tokens(allow_unk)
    return beam_search(step_fn, r0, image_inputs.shape[0], beam_size, max_words, alpha, banned)


# --- one interface -----------------------------------------------------------------------

STRATEGIES = ("greedy", "sample", "beam")


def _option(value, flag: str, help: str, only: str = "", **argparse) -> dataclasses.Field:
    """A :class:`DecodeOptions` field (default ``value``) with what the command line says
    about it: its
    ``flag``, its ``help``, the strategy it applies to (``only``) and any further
    ``argparse`` settings (metavar, action)."""
    metadata = {"flag": flag, "help": help, "only": only, "argparse": argparse}
    return dataclasses.field(default=value, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How to generate captions: the one declaration of the decoding options.

    Its fields are the keyword arguments of :func:`mrnn_jax.api.caption` and
    :func:`mrnn_jax.api.evaluate_captioning`, the keys of a ``captions`` evaluator's config
    entry, the decoding settings of ``mrnn serve``, and (from each field's metadata) the
    decoding flags of ``mrnn caption`` and ``mrnn evaluate`` (:func:`flags`).

    Attributes:
      strategy: "greedy" (most probable word), "sample" (the 2014 paper) or "beam".
      max_words: longest caption, in words (the end token comes on top).
      beam_size: beams kept by beam search.
      num_return: captions returned per image (at most ``beam_size`` for beam search; for
        sampling, independent draws; greedy returns one).
      temperature: sampling temperature (below 1 sharpens, above 1 flattens).
      length_penalty: GNMT alpha for beam search (0 ranks by log-probability).
      seed: sampling seed.
      allow_unk: let the unknown-word token be generated (off: it is never chosen).
    """

    strategy: str = _option(
        "greedy", "--sample", "sample words (the 2014 paper)", action="store_true"
    )
    max_words: int = _option(
        20, "--max-words", "longest caption, in words (default: the run's)", default=None
    )
    beam_size: int = _option(3, "--beam", "beam search, K beams", metavar="K", default=None)
    num_return: int = _option(1, "--top", "captions per image (beam search or sampling)")
    temperature: float = _option(1.0, "--temperature", "sampling temperature", "sample")
    length_penalty: float = _option(
        0.0, "--length-penalty", "beam search length penalty alpha", "beam"
    )
    seed: int = _option(0, "--seed", "sampling seed", "sample")
    allow_unk: bool = _option(
        False,
        "--allow-unk",
        "let captions contain <unk> (by default the unknown-word token is never chosen)",
        action="store_true",
    )

    @classmethod
    def from_mapping(cls, values, **defaults) -> DecodeOptions:
        """The options named in ``values`` (a dict or config entry; other keys and None
        values are ignored), the rest from ``defaults``, then the class defaults."""
        chosen = {**defaults}
        for name in FIELDS:
            if values.get(name) is not None:
                chosen[name] = values[name]
        return cls(**chosen)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise MrnnError(
                f"unknown decoding strategy {self.strategy!r}; choose from {STRATEGIES}"
            )
        if self.max_words < 1 or self.beam_size < 1 or self.num_return < 1:
            raise MrnnError("max_words, beam_size and num_return must be positive")
        if self.strategy == "beam" and self.num_return > self.beam_size:
            raise MrnnError(f"cannot return {self.num_return} captions from {self.beam_size} beams")
        if self.strategy == "greedy" and self.num_return != 1:
            raise MrnnError("greedy decoding returns one caption per image")
        if self.temperature <= 0:
            raise MrnnError(f"temperature must be positive, got {self.temperature}")
        if self.length_penalty < 0:
            raise MrnnError(f"length_penalty must be >= 0, got {self.length_penalty}")


FIELDS = tuple(f.name for f in dataclasses.fields(DecodeOptions))


def check_names(names) -> None:
    """Raises :class:`MrnnError` for a name that is not a :class:`DecodeOptions` field."""
    unknown = sorted(set(names) - set(FIELDS))
    if unknown:
        raise MrnnError(f"unknown decoding option(s) {unknown}: choose from {', '.join(FIELDS)}")


def flags() -> list[tuple[str, dataclasses.Field]]:
    """``(flag, field)`` for every option, in declaration order (for a command line: the
    field's ``metadata`` holds its ``help``, the strategy it applies to, ``only``, and
    further ``argparse`` settings; ``--sample`` and ``--beam K`` choose the strategy)."""
    return [(f.metadata["flag"], f) for f in dataclasses.fields(DecodeOptions)]


def generate(
    model: MRNN,
    params: dict,
    image_inputs: jax.Array,
    options: DecodeOptions,
    first_image: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """Captions for a batch of images with any strategy.

    ``first_image`` is the batch's offset in the whole set, so that sampled captions depend
    on the image's index and the seed, not on the batching. Returns ``(tokens [B, N,
    max_words + 1], log_prob [B, N])`` with ``N = num_return``, best first for beam search;
    slots beam search could not fill (fewer than N possible captions) have log_prob
    ``NEG_INF``.
    """
    if options.strategy == "greedy":
        tokens, log_prob = greedy(
            model, params, image_inputs, options.max_words, allow_unk=options.allow_unk
        )
        return tokens[:, None], log_prob[:, None]
    if options.strategy == "sample":
        n = options.num_return
        repeated = jnp.repeat(jnp.asarray(image_inputs), n, axis=0)
        tokens, log_prob = sample(
            model,
            params,
            repeated,
            options.max_words,
            jax.random.PRNGKey(options.seed),
            jnp.float32(options.temperature),
            first_image * n + jnp.arange(repeated.shape[0]),
            allow_unk=options.allow_unk,
        )
        batch = image_inputs.shape[0]
        return tokens.reshape(batch, n, -1), log_prob.reshape(batch, n)
    tokens, log_prob, _ = beam(
        model,
        params,
        image_inputs,
        options.max_words,
        options.beam_size,
        jnp.float32(options.length_penalty),
        allow_unk=options.allow_unk,
    )
    return tokens[:, : options.num_return], log_prob[:, : options.num_return]
