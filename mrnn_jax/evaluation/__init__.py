"""Evaluation: the evaluators the training loop runs, split evaluation, coco-caption metrics,
retrieval, consensus reranking."""
