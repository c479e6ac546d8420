"""The retrieval page (``mrnn retrieve``, experiments/run_retrieval.py): example queries in
both directions, written from a retrieval evaluator's ranks
(:func:`mrnn_jax.api.retrieval_metrics` computes them)."""

from __future__ import annotations

import numpy as np

from mrnn_jax.evaluation import retrieval
from mrnn_jax.pages import run_page


def _write_page(
    path, model, records, inputs, table, scores, log_prior, results, count: int
) -> None:
    """The HTML page of example queries in both directions, top 5 each (the metrics' P(S)
    and tie rule)."""
    pixels = model.takes_pixels
    prior = retrieval.log_sentence_prior(scores) if log_prior is None else log_prior
    correct_all = table.image_index[:, None] == np.arange(len(records))[None, :]
    image_ranks = retrieval.first_correct_ranks((scores - prior[:, None]).T, correct_all.T)
    sentence_ranks = retrieval.first_correct_ranks(scores, correct_all)
    image_queries, sentence_queries = [], []
    step = max(1, len(records) // max(count, 1))
    for image in range(0, len(records), step)[:count]:
        ranked = np.argsort(-(scores[:, image] - prior), kind="stable")
        correct = table.image_index == image
        rank = int(image_ranks[image])
        image_queries.append(
            run_page.ImageQuery(
                image_id=records[image].image_id,
                rank=rank,
                retrieved=[
                    (
                        " ".join(model.vocab.decode(table.tokens[s])),
                        float(scores[s, image] - prior[s]),
                        bool(correct[s]),
                    )
                    for s in ranked[:5]
                ],
                references=list(records[image].captions),
                image=inputs[image] if pixels else None,
                image_path=None if pixels else records[image].file_path,
            )
        )
    step = max(1, len(table) // max(count, 1))
    for sentence in range(0, len(table), step)[:count]:
        truth = int(table.image_index[sentence])
        ranked = np.argsort(-scores[sentence], kind="stable")
        sentence_queries.append(
            run_page.SentenceQuery(
                sentence=" ".join(model.vocab.decode(table.tokens[sentence])),
                truth_image_id=records[truth].image_id,
                rank=int(sentence_ranks[sentence]),
                retrieved=[
                    run_page.RetrievedImage(
                        image_id=records[i].image_id,
                        score=float(scores[sentence, i]),
                        correct=bool(i == truth),
                        image=inputs[i] if pixels else None,
                        image_path=None if pixels else records[i].file_path,
                    )
                    for i in ranked[:5]
                ],
                truth_image=inputs[truth] if pixels else None,
            )
        )
    run_page.write_retrieval_html(
        path,
        title="m-RNN image-sentence retrieval",
        summary=results,
        sentence_queries=sentence_queries,
        image_queries=image_queries,
    )


write_page = _write_page  # the page's public name (api.retrieval_metrics writes it)
