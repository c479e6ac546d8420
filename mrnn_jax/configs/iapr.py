"""The m-RNN on IAPR TC-12 (the papers' split: 17,665 train / 1,962 test images; each
description split into sentences on ";"; 1,000 training images held out for validation).

Run: make train DATASET=iapr DATA_DIR=data/iaprtc12 FEATURES=data/iaprtc12/fc7.npz \
         ARGS="dataset.train_list=train.txt dataset.test_list=test.txt"

Paper-sized layers on precomputed 4096-d AlexNet fc7 features (the 2014 paper's PPL 6.92
row). Values not from the paper are our choice, said so below.
"""

from ml_collections import ConfigDict

from mrnn_jax.configs import default


def get_config() -> ConfigDict:
    """The IAPR TC-12 configuration."""
    c = default.get_config()
    c.dataset.name = "iapr"
    c.dataset.min_count = 5  # our choice: the common threshold
    c.dataset.max_words = 20  # our choice: IAPR sentences are short clauses
    c.encoder.features_dim = 4096
    # About 60,000 training sentences, 128 a step: 470 steps per pass; 20 passes (our choice).
    c.train.num_steps = 10_000
    c.train.warmup_steps = 500
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    # Early stopping after 4 evaluations without a better validation perplexity (default
    # train.patience). Not chosen from a run on this dataset (none was made here).
    c.eval.splits = ("test",)
    return c
