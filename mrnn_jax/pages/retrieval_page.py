"""Retrieval on a split (``mrnn retrieve``, experiments/run_retrieval.py): score, report,
write files."""

from __future__ import annotations

import dataclasses
import os
import platform
import time

import numpy as np

from mrnn_jax import sharding
from mrnn_jax.captioner import Captioner
from mrnn_jax.data import load_dataset
from mrnn_jax.data.pipeline import CaptionTable
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import retrieval
from mrnn_jax.files import write_json_atomic, write_text_atomic
from mrnn_jax.pages import run_page


@dataclasses.dataclass(frozen=True)
class RetrievalReport:
    """Retrieval on a split: the metrics (per direction and ranking, R@1/5/10, median and
    mean rank), the paper-style Markdown table with a line on the setting, and the JSON
    record written to files."""

    metrics: dict
    table: str
    payload: dict


def run(
    model: Captioner,
    split: str = "test",
    *,
    max_images: int | None = None,
    prior_images: int | None = None,
    coco_1k: bool = False,
    sentence_tile: int = 16,
    image_tile: int = 32,
    json_path: str | None = None,
    out: str | None = None,
    html_queries: int = 10,
    checkpoint: str = "",
    progress: bool = True,
) -> RetrievalReport:
    """Retrieval metrics of ``model`` on a split of its dataset (see ``mrnn retrieve
    --help``): printed as the paper's table, returned, and written as JSON to ``json_path``
    and as JSON, Markdown and an HTML page of ``html_queries`` example queries per direction
    into the folder ``out`` (default: ``json_path``'s folder; with neither, nothing is
    written). ``checkpoint`` (the run's path) names the model in the table and the JSON."""
    started = time.time()
    for option, value in (("max_images", max_images), ("prior_images", prior_images)):
        if value is not None and value < 1:
            raise MrnnError(f"--{option.replace('_', '-')} must be at least 1")
    wanted = [split, *(["train"] if prior_images else [])]
    splits = load_dataset(model.config.dataset, model.config.encoder, wanted).splits
    if split not in splits:
        raise MrnnError(f"dataset has no split {split!r}: {sorted(splits)}")
    data = splits[split]
    count = len(data.records) if max_images is None else max_images
    captioned = [i for i, record in enumerate(data.records[:count]) if record.tokens]
    records = [data.records[i] for i in captioned]
    inputs = data.inputs[:count][captioned]
    if not records:
        raise MrnnError(f"split {split!r} has no captioned images")
    table = CaptionTable.build_uncut(records, model.vocab, model.config.dataset.max_words)
    prior = None
    if prior_images:
        train = splits["train"].inputs
        rng = np.random.default_rng(0)
        prior = train[np.sort(rng.choice(len(train), min(prior_images, len(train)), False))]
    params = {"params": model.params}
    results, scores, log_prior = retrieval.evaluate_retrieval(
        model.model,
        params,
        table.tokens,
        table.image_index,
        inputs,
        prior_inputs=prior,
        fold_size=1000 if coco_1k else None,
        sentence_tile=sentence_tile,
        image_tile=image_tile,
        progress=progress,
        mesh=sharding.make_mesh(),
    )
    name = f"m-RNN ({os.path.basename(os.path.abspath(checkpoint))})" if checkpoint else "m-RNN"
    markdown = retrieval.markdown_table(name, results)
    details = (
        f"{split} split, {len(records)} images, {len(table)} sentences"
        f"{', COCO 1K folds' if coco_1k else ''}; P(S) over "
        f"{f'{len(prior)} training images' if prior is not None else 'the split images'}; "
        f"{platform.machine()} with {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
        f"{time.time() - started:.0f} s"
    )
    payload = {
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
        "step": model.step,
        "split": split,
        "num_images": len(records),
        "num_sentences": len(table),
        "coco_1k": bool(coco_1k),
        "prior_images": None if prior is None else len(prior),
        "metrics": results,
        "tie_rule": "a wrong item scoring as high as the first correct one ranks ahead of it",
    }
    if json_path:
        write_json_atomic(json_path, payload)
    out = out or (os.path.dirname(os.path.abspath(json_path)) if json_path else None)
    if out:
        os.makedirs(out, exist_ok=True)
        write_text_atomic(os.path.join(out, f"retrieval_{split}.md"), f"{markdown}\n\n{details}\n")
        write_json_atomic(os.path.join(out, f"retrieval_{split}.json"), payload)
        _write_page(
            os.path.join(out, f"retrieval_{split}.html"),
            model,
            records,
            inputs,
            table,
            scores,
            log_prior,
            results,
            html_queries,
        )
    return RetrievalReport(metrics=results, table=f"{markdown}\n\n{details}", payload=payload)


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
