"""The m-RNN on Flickr30K (31,783 images, 5 captions each; Karpathy's 29,000 / 1,014 / 1,000).

Run: make train DATASET=flickr30k DATA_DIR=data/flickr30k FEATURES=data/flickr30k/fc7.npz

Paper-sized layers on precomputed 4096-d CNN features (VGG-16 fc7 for the ICLR version's
numbers). Values not from the paper are our choice, said so below.
"""

from ml_collections import ConfigDict

from mrnn_jax.configs import default


def get_config() -> ConfigDict:
    """The Flickr30K configuration."""
    c = default.get_config()
    c.dataset.name = "flickr30k"
    c.dataset.min_count = 5  # our choice: the common threshold (about 7,000 words remain)
    c.dataset.max_words = 20  # our choice: about 95% of Flickr30K captions fit
    c.encoder.features_dim = 4096
    # 145,000 training captions, 128 a step: 1,133 steps per pass; about 20 passes (our choice).
    c.train.num_steps = 22_000
    c.train.warmup_steps = 1_000
    c.train.eval_every = 1_000
    c.train.checkpoint_every = 1_000
    # Early stopping after 4 evaluations without a better validation perplexity (default
    # train.patience). Not chosen from a run on Flickr30K (none was made here): an
    # evaluation is about one pass over the captions, as on Flickr8K, whose best was after
    # 6-7 passes.
    c.eval.splits = ("test",)
    return c
