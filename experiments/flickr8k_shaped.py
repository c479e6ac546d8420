"""A synthetic data set shaped like Flickr8K, in the real Flickr8K file format.

8,000 images (6,000 / 1,000 / 1,000 in the split lists), 5 captions each, caption lengths
drawn to match real Flickr8K (mean 10.9 words, median 10, 90th percentile 16, 95th 18, 99th
21, longest 31), words from a Zipf law over 2,535 types, all seen at least 5 times in the
training captions (a vocabulary of 2,539 with the reserved tokens, as real Flickr8K's), and
1,280-d image features (an ``.npz`` with ``features`` and ``filenames``). Each image has one
of 50 topics that both its features and its captions' word choice depend on, so that a model
can learn something; the point is the shape, for timing.

    python experiments/flickr8k_shaped.py --out data/flickr8k_shaped
    make train DATASET=flickr8k DATA_DIR=data/flickr8k_shaped \
        FEATURES=data/flickr8k_shaped/features.npz ARGS="encoder.features_dim=1280"
"""

from __future__ import annotations

import argparse
import os

import numpy as np

# Flickr8K's caption lengths in words as a quantile function: (share of captions, length).
LENGTH_QUANTILES = (
    (0.0, 0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0),
    (4.0, 7.0, 9.0, 10.5, 13.0, 16.5, 18.5, 21.5, 32.0),
)


def caption_lengths(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` caption lengths in words, distributed like Flickr8K's (1 ... 31)."""
    share, words = LENGTH_QUANTILES
    return np.floor(np.interp(rng.uniform(size=count), share, words)).astype(np.int64)


def write(
    out: str,
    images: int = 8000,
    captions_per_image: int = 5,
    feature_dim: int = 1280,
    word_types: int = 2535,
    topics: int = 50,
    seed: int = 0,
) -> None:
    """Writes ``Flickr8k.token.txt``, the three split lists and ``features.npz`` to ``out``."""
    rng = np.random.default_rng(seed)
    os.makedirs(out, exist_ok=True)
    names = [f"{i:06d}_{rng.integers(16**8):08x}.jpg" for i in range(images)]
    topic = rng.integers(0, topics, images)
    centres = rng.normal(size=(topics, feature_dim)).astype(np.float32)
    features = centres[topic] + 0.5 * rng.normal(size=(images, feature_dim)).astype(np.float32)
    zipf = 1.0 / np.arange(1, word_types + 1)
    # Each topic favours its own words: a permutation of the Zipf ranks per topic.
    rank_of = np.stack([rng.permutation(word_types) for _ in range(topics)])
    lengths = caption_lengths(images * captions_per_image, rng)
    lines = []
    for i, name in enumerate(names):
        p = 0.5 * zipf + 0.5 * zipf[rank_of[topic[i]]]
        p /= p.sum()
        for j in range(captions_per_image):
            n = lengths[i * captions_per_image + j]
            words = " ".join(f"w{w}" for w in rng.choice(word_types, n, p=p))
            lines.append(f"{name}#{j}\t{words} .")
    with open(os.path.join(out, "Flickr8k.token.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    splits = {"train": names[:6000], "dev": names[6000:7000], "test": names[7000:8000]}
    for split, members in splits.items():
        path = os.path.join(out, f"Flickr_8k.{split}Images.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(members) + "\n")
    np.savez(os.path.join(out, "features.npz"), features=features, filenames=np.array(names))


def main() -> None:
    """Writes the set to --out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (the DATA_DIR)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.out, seed=args.seed)
    print(f"wrote a Flickr8K-shaped set to {args.out}")


if __name__ == "__main__":
    main()
