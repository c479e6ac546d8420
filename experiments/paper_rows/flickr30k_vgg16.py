"""Paper row: Flickr30K, VGG-16 fc7 features (Mao et al., ICLR 2015).

Run: python experiments/run_paper_row.py flickr30k_vgg16 --data-dir data/flickr30k \
         --features data/flickr30k/vgg16_fc7.npz
Features: VGG-16 fc7 (4096-d), e.g. from the Keras or torchvision weights; split: Karpathy's.
"""

from ml_collections import ConfigDict

from mrnn_jax.configs import flickr30k

REPORTED = {
    "sentence retrieval": {"R@1": 35.4, "R@5": 63.8, "R@10": 73.7, "median rank": 3},
    "image retrieval": {"R@1": 22.8, "R@5": 50.7, "R@10": 63.1, "median rank": 5},
    "captioning": {
        "perplexity": 20.72,
        "BLEU-1": 0.60,
        "BLEU-2": 0.41,
        "BLEU-3": 0.28,
        "BLEU-4": 0.19,
    },
}
SOURCE = "Mao et al., ICLR 2015 (arXiv 1412.6632), Flickr30K tables, VGG-16"
RETRIEVAL_OPTIONS: list[str] = []


def get_config() -> ConfigDict:
    """The Flickr30K config on 4096-d VGG-16 fc7 features."""
    c = flickr30k.get_config()
    c.encoder.features_dim = 4096  # VGG-16 fc7
    return c
