"""Image-sentence retrieval as in the paper's tables, for a trained checkpoint.

Scores every (sentence, image) pair of a split with log P(S | I), ranks images for each
sentence and sentences for each image (by P(S|I)/P(S) and by raw P(S|I)), and reports R@1,
R@5, R@10, median and mean rank. Same as ``mrnn retrieve``.

    python experiments/run_retrieval.py --checkpoint runs/shapes --out results/retrieval
"""

from __future__ import annotations

import sys

from mrnn_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["retrieve", *sys.argv[1:]]))
