"""The names a config may choose from, declared here so that checking a config imports nothing
above the configs. The registries that implement them import these lists from here (their
keys are tested to equal them, in order):

* :data:`COMPUTE_DTYPES` and :data:`ACTIVATIONS`: ``mrnn_jax.model``;
* :data:`ARCHITECTURES` and :data:`ENCODERS`: ``mrnn_jax.encoders``;
* :data:`DATASETS`: ``mrnn_jax.data``;
* :data:`EVALUATOR_KINDS`: ``mrnn_jax.evaluation.evaluators.REGISTRY``;
* :data:`SELECT_MODES`: :func:`mrnn_jax.configs.selection`, for ``mrnn_jax.training.selection``;
* :data:`OBJECTIVES` and :data:`SCST_BASELINES`: ``mrnn_jax.training.scst``;
* :data:`REWARD_METRICS`: ``mrnn_jax.evaluation.rewards``;
* :data:`SHAPES_SPLITS`: ``mrnn_jax.data.shapes.SPLITS``;
* :data:`RESIZE_MODES`: ``mrnn_jax.images.RESIZE_MODES``;
* :data:`STRATEGIES`: ``mrnn_jax.decode.STRATEGIES``;
* :data:`RERANK_FEATURES`, :data:`RERANK_METRICS`: ``mrnn_jax.evaluation.consensus``;
* :data:`CAPTION_METRICS`: ``mrnn_jax.evaluation.coco_metrics`` (the names it accepts, and
  the scores each logs).

Those that do not import them are tested to equal them (tests/test_config_validation.py).
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

#: dataset.shapes_sizes' keys: the built-in shapes dataset's splits.
SHAPES_SPLITS = ("train", "val", "test", "novel")

#: encoder.resize.
RESIZE_MODES = ("center_crop", "squash")

#: encoder.pixel_order ("" = the weights file's).
PIXEL_ORDERS = ("", "RGB", "BGR")

#: evaluators.<captions>.strategy (during training: greedy or beam).
STRATEGIES = ("greedy", "sample", "beam")

#: rerank.features and a captions evaluator's rerank_features.
RERANK_FEATURES = ("projection", "cnn")

#: rerank.metric and a captions evaluator's rerank_metric.
RERANK_METRICS = ("CIDEr", "BLEU")

#: eval.metrics and a captions evaluator's metrics: each coco-caption metric and the corpus
#: scores it logs (SPICE is accepted and always reported unavailable: it logs nothing).
#: Spellings are matched as coco_metrics matches them: case, "-", "_" and " " ignored, and
#: ROUGE for ROUGE_L, CIDEr-D for CIDEr.
CAPTION_METRICS = {
    "BLEU": ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"),
    "METEOR": ("METEOR",),
    "ROUGE_L": ("ROUGE-L",),
    "CIDEr": ("CIDEr-D",),
    "SPICE": (),
}
