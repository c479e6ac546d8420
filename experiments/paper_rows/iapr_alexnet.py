"""Paper row: IAPR TC-12, AlexNet fc7 features (Mao et al. 2014): perplexity.

Run: python experiments/run_paper_row.py iapr_alexnet --data-dir data/iaprtc12 \
         --features data/iaprtc12/alexnet_fc7.npz \
         dataset.train_list=train.txt dataset.test_list=test.txt
Features: torchvision AlexNet fc7 (4096-d); split: the papers' 17,665 / 1,962 list files.
"""

from ml_collections import ConfigDict

from mrnn_jax.configs import iapr

REPORTED = {"captioning": {"perplexity": 6.92}}
SOURCE = "Mao et al., arXiv 1410.1090 (2014), IAPR TC-12 table, AlexNet"
RETRIEVAL_OPTIONS: list[str] = []


def get_config() -> ConfigDict:
    """The IAPR TC-12 config on 4096-d AlexNet fc7 features."""
    c = iapr.get_config()
    c.encoder.features_dim = 4096  # AlexNet fc7
    return c
