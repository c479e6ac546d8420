"""TensorFlow Datasets builders for Flickr8K, Flickr30K and IAPR TC-12 (manual download).

The builders live in :mod:`data_prep.tfds.mrnn_datasets`; ``python -m data_prep.tfds.build``
prepares them. Importing this package does not import TensorFlow.
"""
