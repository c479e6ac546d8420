"""Decoding speed: captions per second for greedy and beam search at several batch sizes.

Compared with a batch-1 beam search driven by a Python loop, one jitted model step per word
and the beam bookkeeping in NumPy, which is how the authors' later TensorFlow code
(mjhucla/TF-mRNN) decodes. A benchmark that prints numbers, not a test.

    python experiments/bench_decode.py                       # paper-sized layers, random weights
    python experiments/bench_decode.py --checkpoint runs/shapes
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from timing import median_time

from mrnn_jax import captioner, decode, logs
from mrnn_jax.model import MRNN, make_model
from mrnn_jax.text.vocab import END_ID, PAD_ID, START_ID


@functools.partial(jax.jit, static_argnums=(0, 4))
def _step(model: MRNN, params: dict, carry, tokens, beams: int, projection):
    """One jitted m-RNN step for ``beams`` hypotheses of one image (the baseline's kernel)."""
    step_fn = decode.mrnn_step_fn(model, params, jnp.repeat(projection, beams, axis=0))
    return step_fn(carry, tokens)


def python_loop_beam(
    model: MRNN, params: dict, image: np.ndarray, k: int, max_words: int
) -> list[tuple[list[int], float]]:
    """Classic beam search for one image, a Python loop around a jitted step (the baseline).

    Each step keeps the best K candidates; those that end are finished, the others continue.
    """
    projection = model.apply(params, image[None], method=MRNN.project_image)
    beams = [([], 0.0)]
    carry = model.apply(params, 1, method=MRNN.initial_carry)
    finished = []
    for t in range(max_words + 1):
        tokens = np.array([b[0][-1] if b[0] else START_ID for b in beams], np.int32)
        log_probs, r = _step(model, params, carry, tokens, len(beams), projection)
        log_probs, r = np.array(log_probs), np.asarray(r)
        log_probs[:, [PAD_ID, START_ID]] = -np.inf
        candidates = sorted(
            (
                (beams[i][1] + log_probs[i, token], i, int(token))
                for i in range(len(beams))
                for token in np.argsort(-log_probs[i])[:k]
            ),
            reverse=True,
        )[:k]
        survivors = []
        for score, i, token in candidates:
            if token == END_ID:
                finished.append((beams[i][0], score))
            elif t < max_words:
                survivors.append((i, token, score))
        if not survivors:
            break
        beams = [([*beams[i][0], token], score) for i, token, score in survivors]
        carry = r[[i for i, _, _ in survivors]]
    return sorted(finished or beams, key=lambda b: -b[1])[:k]


def main() -> None:
    """Times every strategy and batch size; prints a Markdown table and writes JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a trained run (default: random)")
    parser.add_argument("--vocab-size", type=int, default=10_000, help="for random weights")
    parser.add_argument("--feature-dim", type=int, default=4096, help="for random weights")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 32, 256], help="images per batch"
    )
    parser.add_argument("--beam", type=int, default=3, help="beam size")
    parser.add_argument("--max-words", type=int, default=20, help="longest caption, in words")
    parser.add_argument("--repeats", type=int, default=5, help="median of this many runs")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    logs.add_argument(parser)
    args = parser.parse_args()
    logs.setup(args.verbose)

    if args.checkpoint:
        loaded = captioner.load(args.checkpoint)
        model, params = loaded.model, {"params": loaded.params}
        shape = (loaded.config.encoder.image_size,) * 2 + (3,) if loaded.takes_pixels else None
        make_inputs = (
            (lambda n: np.random.default_rng(0).integers(0, 255, (n, *shape), dtype=np.uint8))
            if shape
            else (
                lambda n: (
                    np.random.default_rng(0)
                    .normal(size=(n, loaded.config.encoder.features_dim))
                    .astype(np.float32)
                )
            )
        )
        name = args.checkpoint
    else:
        model = make_model({}, {"name": "features"}, args.vocab_size)
        features = lambda n: (
            np.random.default_rng(0).normal(size=(n, args.feature_dim)).astype(np.float32)
        )
        params = model.init(jax.random.PRNGKey(0), features(1), np.zeros((1, 2), np.int32))
        make_inputs = features
        name = f"paper-sized m-RNN, random weights, vocabulary {args.vocab_size}"

    rows = []
    for batch in args.batch_sizes:
        inputs = jnp.asarray(make_inputs(batch))
        greedy = median_time(
            lambda x=inputs: decode.greedy(model, params, x, args.max_words), args.repeats
        )[0]
        beam = median_time(
            lambda x=inputs: decode.beam(model, params, x, args.max_words, args.beam), args.repeats
        )[0]
        rows.append({"batch": batch, "greedy": batch / greedy, f"beam {args.beam}": batch / beam})
    one = np.asarray(make_inputs(1))[0]
    loop = median_time(
        lambda: python_loop_beam(model, params, one, args.beam, args.max_words), args.repeats
    )[0]
    lines = [
        f"Captions per second ({name}; {platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.devices()[0].platform}, {time.strftime('%Y-%m-%d')}; median of {args.repeats}):",
        "",
        f"| batch | greedy | beam {args.beam} (jitted while_loop) |",
        "|---|---|---|",
        *(f"| {r['batch']} | {r['greedy']:.1f} | {r[f'beam {args.beam}']:.1f} |" for r in rows),
        f"| 1, Python-loop beam {args.beam} (TF-mRNN style) | | {1 / loop:.1f} |",
    ]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": name, "rows": rows, "python_loop_beam": 1 / loop}, f, indent=2)


if __name__ == "__main__":
    main()
