"""The m-RNN on MS COCO 2014 with Karpathy's split (113,287 train with restval, 5,000 val,
5,000 test; the paper's retrieval table uses 1,000-image test folds: mrnn retrieve --coco-1k).

Run: make train DATASET=coco DATA_DIR=data/coco FEATURES=data/coco/fc7.npy

Paper-sized layers on precomputed 4096-d VGG-16 fc7 features (an .npy is memory-mapped: 1 GB
in float16 for all of COCO). Values not from the paper are our choice, said so below.
"""

from ml_collections import ConfigDict

from mrnn_jax.configs import default


def get_config() -> ConfigDict:
    """The MS COCO configuration."""
    c = default.get_config()
    c.dataset.name = "coco"
    c.dataset.min_count = 5  # our choice: the common threshold (about 10,000 words remain)
    c.dataset.max_words = 20  # our choice: about 98% of COCO captions fit
    c.dataset.merge_restval = True  # Karpathy's restval joins train, as in most papers
    c.encoder.features_dim = 4096
    # 566,000 training captions, 128 a step: 4,400 steps per pass; about 14 passes (our choice).
    c.train.num_steps = 60_000
    c.train.warmup_steps = 2_000
    c.train.eval_every = 2_000
    c.train.checkpoint_every = 2_000
    # Early stopping after 4 evaluations without a better validation perplexity (default
    # train.patience). Not chosen from a run on this dataset (none was made here).
    c.eval.splits = ("test",)
    return c
