"""Paper row: Flickr8K, AlexNet fc7 features (Mao et al. 2014, retrieval table).

Run: python experiments/run_paper_row.py flickr8k_alexnet --data-dir data/flickr8k \
         --features data/flickr8k/alexnet_fc7.npz
Features: torchvision AlexNet fc7 (4096-d) of every Flickr8K image, as the 2014 paper used.
"""

from ml_collections import ConfigDict

from mrnn_jax.configs import flickr8k

# The numbers this row is compared with (percent; median rank 1-based).
REPORTED = {
    "sentence retrieval": {"R@1": 14.5, "R@5": 37.2, "R@10": 48.5, "median rank": 11},
    "image retrieval": {"R@1": 11.5, "R@5": 31.0, "R@10": 42.4, "median rank": 15},
}
SOURCE = "Mao et al., arXiv 1410.1090 (2014), Flickr8K retrieval table, AlexNet"
RETRIEVAL_OPTIONS: list[str] = []


def get_config() -> ConfigDict:
    """The Flickr8K config on 4096-d AlexNet fc7 features."""
    c = flickr8k.get_config()
    c.encoder.features_dim = 4096  # AlexNet fc7
    return c
