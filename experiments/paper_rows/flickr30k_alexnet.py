"""Paper row: Flickr30K, AlexNet fc7 features (Mao et al. 2014).

Run: python experiments/run_paper_row.py flickr30k_alexnet --data-dir data/flickr30k \
         --features data/flickr30k/alexnet_fc7.npz
Features: torchvision AlexNet fc7 (4096-d); split: Karpathy's dataset_flickr30k.json.
"""

from ml_collections import ConfigDict

from mrnn_jax.configs import flickr30k

REPORTED = {
    "sentence retrieval": {"R@1": 18.4, "R@5": 40.2, "R@10": 50.9, "median rank": 10},
    "image retrieval": {"R@1": 12.6, "R@5": 31.2, "R@10": 41.5, "median rank": 16},
    "captioning": {"perplexity": 35.11},
}
SOURCE = "Mao et al., arXiv 1410.1090 (2014), Flickr30K tables, AlexNet"
RETRIEVAL_OPTIONS: list[str] = []


def get_config() -> ConfigDict:
    """The Flickr30K config on 4096-d AlexNet fc7 features."""
    c = flickr30k.get_config()
    c.encoder.features_dim = 4096  # AlexNet fc7
    return c
