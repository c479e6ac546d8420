"""The names a config may choose from, declared here so that checking a config imports nothing
above the configs. The registries that implement them import these lists from here (their
keys are tested to equal them, in order):

* :data:`COMPUTE_DTYPES` and :data:`ACTIVATIONS`: ``mrnn_jax.model``;
* :data:`ARCHITECTURES` and :data:`ENCODERS`: ``mrnn_jax.encoders``;
* :data:`DATASETS`: ``mrnn_jax.data``;
* :data:`EVALUATOR_KINDS`: ``mrnn_jax.evaluation.evaluators.REGISTRY``;
* :data:`SELECT_MODES`: :func:`mrnn_jax.configs.selection`, for ``mrnn_jax.training.selection``;
* :data:`OBJECTIVES` and :data:`SCST_BASELINES`: ``mrnn_jax.training.scst``;
* :data:`REWARD_METRICS`: ``mrnn_jax.evaluation.rewards``.
"""

from __future__ import annotations

#: model.compute_dtype: the precision the matrix products run in.
COMPUTE_DTYPES = ("float32", "bfloat16")

#: model.word_activation, model.recurrent_activation, model.multimodal_activation.
ACTIVATIONS = ("relu", "tanh", "scaled_tanh", "sigmoid", "identity")

#: The ported CNNs (encoder.name of a pretrained encoder).
ARCHITECTURES = ("vgg16", "resnet50", "alexnet")

#: encoder.name.
ENCODERS = ("features", "small_cnn", *ARCHITECTURES)

#: dataset.name.
DATASETS = ("shapes", "flickr8k", "flickr30k", "coco", "iapr", "folder")

#: evaluators.<name>.kind.
EVALUATOR_KINDS = ("perplexity", "captions", "retrieval")

#: train.select_mode ("auto" infers the direction from train.select_by's name).
SELECT_MODES = ("auto", "min", "max")

#: train.objective: cross-entropy (the paper's) or self-critical sequence training.
OBJECTIVES = ("cross_entropy", "scst")

#: train.scst.baseline: the mean reward of the image's other samples, or its greedy caption's.
SCST_BASELINES = ("mean", "greedy")

#: train.scst.reward: the metrics a reward may mix.
REWARD_METRICS = ("CIDEr-D", "BLEU-4")
