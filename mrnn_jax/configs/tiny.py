"""A tiny configuration for tests: a few seconds of training on a few shapes images.

Run: mrnn train --config tiny --workdir /tmp/tiny
"""

from ml_collections import ConfigDict

from mrnn_jax.configs import shapes


def get_config() -> ConfigDict:
    """The tiny test configuration (same structure as ``shapes``, minute sizes)."""
    c = shapes.get_config()
    c.dataset.shapes_sizes = ConfigDict({"train": 64, "val": 16, "test": 16, "novel": 16})
    c.dataset.max_words = 20
    c.model.embed_dim = 16
    c.model.word_dim = 16
    c.model.multimodal_dim = 32
    c.encoder.image_size = 64
    c.encoder.channels = (4, 4)
    c.encoder.features_dim = 16
    c.train.batch_size = 20  # 4 images x 5 captions
    c.train.num_steps = 20
    c.train.warmup_steps = 2
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 5
    c.train.length_buckets = (9, 12, 15)  # as the real datasets have them (the resume tests)
    c.eval.batch_size = 16
    c.eval.max_decode_words = 20
    c.eval.metrics = ("BLEU", "ROUGE_L", "CIDEr")  # no METEOR: its Java start-up is slow
    return c
