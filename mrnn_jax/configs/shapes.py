"""The m-RNN trained end to end (small CNN + m-RNN) on the built-in ``shapes`` dataset.

Run: make train            (= mrnn train --config shapes --workdir runs/shapes)
Baseline: mrnn train --config shapes --workdir runs/shapes_blind model.zero_image=True

Paper-sized recurrent layers; the encoder is a small CNN because no pretrained CNN can be
downloaded and the images are 64x64. Sized to train in about 10 minutes on a 2-core CPU.
"""

from ml_collections import ConfigDict

from mrnn_jax.configs import default


def get_config() -> ConfigDict:
    """The shapes configuration."""
    c = default.get_config()
    c.dataset.name = "shapes"
    c.dataset.min_count = 1  # a closed vocabulary of a few dozen words, every one needed
    c.dataset.max_words = 20  # the longest shapes caption has 20 words
    c.dataset.shapes_sizes = ConfigDict({"train": 8000, "val": 500, "test": 500, "novel": 500})

    c.model.dropout_rate = 0.1  # little to over-fit with 40,000 captions and a tiny vocabulary

    c.encoder = ConfigDict()
    c.encoder.name = "small_cnn"
    c.encoder.image_size = 64
    c.encoder.channels = (16, 32, 64, 64)
    c.encoder.features_dim = 256

    # 32 images x 5 captions: the CNN runs once per image for its five references.
    c.train.batch_size = 160
    c.train.captions_per_image = 5
    c.train.num_steps = 3500
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 200
    c.train.l2_weight = 1e-6
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    # A fixed schedule, no early stopping, no length buckets (the README's shapes results).
    c.train.patience = 0
    c.train.length_buckets = ()

    c.eval.batch_size = 250
    c.eval.splits = ("test", "novel")
    c.eval.max_decode_words = 20
    return c
