"""Speed of the SCST reward (:class:`mrnn_jax.evaluation.rewards.CaptionRewards`).

Builds a synthetic training corpus (Zipf-distributed words from a vocabulary of
``--vocab`` words, 5 references of 8-16 words per image), then times scoring batches of
``--batch-images`` x ``--samples`` hypotheses (half of them edited references, half random
sentences) as strings and as token ids, CIDEr-D alone and mixed with BLEU-4. Prints the
one-off set-up time and the median and best batch times, and the median CPU time (what a
batch costs on a machine shared with other work). A benchmark that prints numbers, not a test.

    python experiments/bench_rewards.py                     # about 10 s on 2 CPU cores
    python experiments/bench_rewards.py --images 113000     # COCO-sized (set-up ~1 min)
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mrnn_jax.evaluation.rewards import CaptionRewards
from mrnn_jax.text.vocab import END_ID, PAD_ID, RESERVED


def _timed(function, repeats: int) -> tuple[float, float, float]:
    """Median and best wall-clock seconds of ``repeats`` calls, and their median CPU seconds
    (the process's: what the call costs on a machine shared with other work)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(wall)), float(min(wall)), float(np.median(cpu))


def main() -> None:
    """Builds the corpus, times the set-up and the batches, prints the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000, help="training images")
    parser.add_argument("--vocab", type=int, default=2500, help="words")
    parser.add_argument("--batch-images", type=int, default=128, help="images per batch")
    parser.add_argument("--samples", type=int, default=5, help="hypotheses per image")
    parser.add_argument("--max-words", type=int, default=16, help="words per hypothesis")
    parser.add_argument("--repeats", type=int, default=30, help="timed batches")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(args.vocab)]
    zipf = 1.0 / np.arange(1, args.vocab + 1)
    zipf /= zipf.sum()

    def sentence(length: int) -> np.ndarray:
        return rng.choice(args.vocab, size=length, p=zipf)

    ids = [[sentence(rng.integers(8, 17)) for _ in range(5)] for _ in range(args.images)]
    references = [[" ".join(words[w] for w in s) for s in image] for image in ids]
    vocabulary = list(RESERVED) + words
    start = time.perf_counter()
    cider = CaptionRewards(references, vocabulary=vocabulary)
    mixed = CaptionRewards(references, ("CIDEr-D", "BLEU-4"), (1.0, 0.5), vocabulary)
    setup = (time.perf_counter() - start) / 2

    count = args.batch_images * args.samples
    images = np.repeat(rng.choice(args.images, args.batch_images, replace=False), args.samples)
    tokens = np.full((count, args.max_words + 1), PAD_ID, np.int32)
    for row, image in enumerate(images):
        if row % 2:
            hyp = ids[image][row % 5].copy()[: args.max_words]
            hyp[rng.integers(len(hyp))] = rng.integers(args.vocab)
        else:
            hyp = sentence(rng.integers(1, args.max_words + 1))
        tokens[row, : len(hyp)] = hyp + len(RESERVED)
        tokens[row, len(hyp)] = END_ID
    strings = [" ".join(vocabulary[t] for t in row if t >= len(RESERVED)) for row in tokens]
    assert np.array_equal(cider.score(strings, images), cider.score(tokens, images))

    print(
        f"corpus: {args.images} images x 5 references, {args.vocab} words; "
        f"set-up {setup:.2f} s per CaptionRewards"
    )
    print(f"batch: {count} hypotheses ({args.batch_images} images x {args.samples} samples)")
    for name, scorer in (("CIDEr-D", cider), ("CIDEr-D + BLEU-4", mixed)):
        for kind, hyps in (("strings", strings), ("token ids", tokens)):
            median, best, cpu = _timed(lambda s=scorer, h=hyps: s.score(h, images), args.repeats)
            print(
                f"  {name:17s} {kind:9s}: median {median * 1e3:5.1f} ms, "
                f"best {best * 1e3:5.1f} ms, CPU {cpu * 1e3:5.1f} ms"
            )


if __name__ == "__main__":
    main()
