"""The m-RNN on your own images and captions (a captions.jsonl or captions.csv in DATA_DIR).

Run: make train DATASET=folder DATA_DIR=my_data FEATURES=my_data/features.npz
or, with no features, a small CNN trained on the pixels:
     make train DATASET=folder DATA_DIR=my_data ARGS="encoder.name=small_cnn"

Paper-sized layers; set encoder.features_dim to your features' width (ResNet-50: 2048).
"""

from ml_collections import ConfigDict

from mrnn_jax.configs import default


def get_config() -> ConfigDict:
    """The own-folder configuration."""
    c = default.get_config()
    c.dataset.name = "folder"
    c.dataset.min_count = 5  # our choice: raise for small data, where rare words do not train
    c.dataset.max_words = 20
    c.encoder.image_size = 64  # used when encoder.name=small_cnn reads the pixels
    c.encoder.channels = (16, 32, 64, 64)
    c.encoder.features_dim = 4096
    c.train.num_steps = 5_000
    c.train.warmup_steps = 250
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.eval.splits = ("test",)
    return c
