"""The paper's generation table for a trained checkpoint: perplexity and coco-caption metrics.

Evaluates one split with greedy decoding and with beam search (and sampling on request), and
writes, under --out:

  captioning_<split>.json         every metric of every strategy, with the run's details
  captioning_<split>.md           the same as a Markdown table (the paper's generation table:
                                  PPL, BLEU-1..4, plus METEOR, ROUGE-L, CIDEr-D)
  captions_<split>_<strategy>.json  generated captions in the coco-caption results format
                                  [{"image_id": ..., "caption": ...}]
  captioning_<split>.html         one self-contained page: each image with its generated
                                  captions and references, sortable by per-image CIDEr-D

With --rerank consensus it also evaluates consensus reranking (ICLR 2015 section 8): the
n-best of a beam of rerank.num_hypotheses (the checkpoint config's, or --rerank-hypotheses)
reranked by agreement with the captions of the nearest training images, one row per
--rerank-metric, beside the plain beam of the same size.

Example:
  python experiments/run_captioning.py --checkpoint runs/shapes --split test --beam 3
  python experiments/run_captioning.py --checkpoint runs/shapes --beam 3 --rerank consensus \
      --rerank-metric CIDEr BLEU
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time

from mrnn_jax import api, logs
from mrnn_jax.api import DecodeOptions
from mrnn_jax.errors import MrnnError
from mrnn_jax.evaluation import captioning, coco_metrics, evaluators
from mrnn_jax.files import write_json_atomic, write_text_atomic
from mrnn_jax.pages import captions_page

COLUMNS = ("perplexity", *coco_metrics.SCORE_NAMES, "largest object named")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description="Write the m-RNN generation table (perplexity, BLEU-1..4, METEOR, ROUGE-L, "
        "CIDEr-D) of a checkpoint on one split, its captions in the coco-caption results "
        "format, and an HTML page of the results.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="work directory of 'mrnn train'")
    parser.add_argument("--latest", action="store_true", help="latest checkpoint, not the best")
    parser.add_argument("--split", default="test", help="split of the checkpoint's dataset")
    parser.add_argument(
        "--beam",
        type=int,
        nargs="*",
        default=[3],
        metavar="K",
        help="beam sizes to evaluate besides greedy (none: greedy only)",
    )
    parser.add_argument(
        "--sample", action="store_true", help="also evaluate sampling (the 2014 paper)"
    )
    parser.add_argument(
        "--rerank",
        choices=("none", "consensus"),
        default="none",
        help="also evaluate consensus reranking of a beam's n-best",
    )
    parser.add_argument(
        "--rerank-metric",
        nargs="+",
        choices=("CIDEr", "BLEU"),
        default=None,
        help="consensus metric(s), one row each (default: the config's rerank.metric)",
    )
    parser.add_argument(
        "--rerank-features",
        choices=("projection", "cnn"),
        default=None,
        help="neighbours by V_I I or the CNN's I (default: the config's rerank.features)",
    )
    parser.add_argument(
        "--rerank-hypotheses",
        type=int,
        default=None,
        help="beam size whose n-best is reranked (default: the config's rerank.num_hypotheses)",
    )
    parser.add_argument("--max-images", type=int, default=None, help="first N images only")
    # The decoding options' own flags (mrnn_jax.decode.DecodeOptions), applied to every
    # strategy they concern; --beam and --sample above choose the strategies.
    for flag, field in api.decoding_flags():
        if field.name not in ("strategy", "beam_size", "num_return"):
            settings = {"default": field.default, **field.metadata["argparse"]}
            if settings.get("action") != "store_true":
                settings["type"] = type(field.default)
            parser.add_argument(flag, dest=field.name, help=field.metadata["help"], **settings)
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch")
    parser.add_argument("--out", default="results", help="output folder")
    parser.add_argument(
        "--html-images", type=int, default=200, help="images shown on the HTML page"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    logs.add_argument(parser)
    return parser.parse_args(argv)


def strategies(args: argparse.Namespace, max_words: int) -> dict[str, DecodeOptions]:
    """The decoding strategies to evaluate, by display name."""
    shared = {"max_words": max_words, "allow_unk": args.allow_unk}
    out = {"greedy": DecodeOptions(strategy="greedy", **shared)}
    for k in args.beam:
        out[f"beam K={k}"] = DecodeOptions(
            strategy="beam", beam_size=k, length_penalty=args.length_penalty, **shared
        )
    if args.sample:
        out[f"sample T={args.temperature:g}"] = DecodeOptions(
            strategy="sample", temperature=args.temperature, seed=args.seed, **shared
        )
    return out


@dataclasses.dataclass
class Reranked:
    """One row of the table: its decoding and its evaluation."""

    options: DecodeOptions
    result: captioning.CaptioningResult


def _rerank_options(args: argparse.Namespace, model, metric: str | None = None):
    from mrnn_jax.evaluation import consensus

    return consensus.ConsensusOptions.from_config(
        model.config.rerank,
        metric=metric,
        features=args.rerank_features,
        num_hypotheses=args.rerank_hypotheses,
    )


def rerank_details(args: argparse.Namespace, model) -> list[dict] | None:
    """The consensus-reranking options of each reranked row (None without --rerank)."""
    if args.rerank != "consensus":
        return None
    metrics = args.rerank_metric or [None]
    chosen = [_rerank_options(args, model, m) for m in metrics]
    return [{**dataclasses.asdict(o), "references_kept": o.references_kept} for o in chosen]


def _evaluate(context, name: str, options: DecodeOptions, params, **run) -> Reranked:
    """One row: a captions evaluator of the split decoding with ``options``, all metrics."""
    entry = evaluators.captions_entry(context.split, options, metrics=None)
    result = evaluators.build(name, entry, context.evaluators).run(params, **run)
    return Reranked(options, result.captions)


def reranked(args, model, context, params, max_words: int, perplexity: float):
    """The plain beam of rerank.num_hypotheses and its consensus rerankings, by row name:
    captions evaluators reranking the plain beam's n-best (decoded once)."""
    first = _rerank_options(args, model)
    k = first.num_hypotheses
    options = DecodeOptions(
        strategy="beam",
        beam_size=k,
        num_return=k,
        max_words=max_words,
        length_penalty=args.length_penalty,
        allow_unk=args.allow_unk,
    )
    plain = _evaluate(context, "n-best", options, params, perplexity=perplexity)
    rows = {f"beam K={k} n-best": plain}
    reranker = None
    for metric in args.rerank_metric or [first.metric]:
        entry = evaluators.captions_entry(
            context.split,
            options,
            metrics=None,
            rerank="consensus",
            rerank_metric=metric,
            rerank_features=args.rerank_features,
            rerank_hypotheses=k,
        )
        run = evaluators.build(metric, entry, context.evaluators).run
        reranker = run.reranker(params) if reranker is None else reranker.with_metric(metric)
        result = run(
            params, perplexity=perplexity, generated=plain.result.captions, reranker=reranker
        )
        rows[f"beam K={k} + consensus {metric}"] = Reranked(options, result.captions)
    return rows


@dataclasses.dataclass
class SplitContext:
    """The split being evaluated and what its evaluators are built with."""

    split: str
    evaluators: evaluators.Context


def markdown_table(rows: dict[str, dict[str, float | None]]) -> str:
    """One row per strategy, one column per metric present in any row."""
    columns = [c for c in COLUMNS if any(c in metrics for metrics in rows.values())]
    lines = ["| decoding | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in rows.items():
        cells = []
        for column in columns:
            value = metrics.get(column)
            cells.append("n/a" if value is None else f"{value:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Evaluates every strategy and writes the outputs."""
    args = parse_args(argv)
    logs.setup(args.verbose)
    started = time.time()
    model = api.load(args.checkpoint, "latest" if args.latest else "best")
    max_words = args.max_words or model.config.eval.max_decode_words
    built, params = api.split_context(
        model,
        args.split,
        max_images=args.max_images,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    context = SplitContext(args.split, built)
    data = built.splits[args.split]
    os.makedirs(args.out, exist_ok=True)

    perplexity_entry = {"kind": "perplexity", "split": args.split}
    perplexity = evaluators.build("perplexity", perplexity_entry, built).run(params)
    perplexity = perplexity.values["perplexity"]
    chosen = strategies(args, max_words)
    rows, results, unavailable = {}, {}, {}

    def record(name: str, result: captioning.CaptioningResult) -> None:
        rows[name], results[name] = result.metrics, result
        unavailable.update(result.unavailable)
        slug = name.replace(" ", "").replace("=", "").replace("+", "_")
        coco_metrics.save_results(
            os.path.join(args.out, f"captions_{args.split}_{slug}.json"),
            dict(zip(result.image_ids, (c[0][0] for c in result.captions), strict=True)),
        )
        print(
            f"{name}: "
            + ", ".join(
                f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in result.metrics.items()
            )
        )

    for name, options in chosen.items():
        record(name, _evaluate(context, name, options, params, perplexity=perplexity).result)
    if args.rerank == "consensus":
        for name, row in reranked(args, model, context, params, max_words, perplexity).items():
            chosen[name] = row.options
            record(name, row.result)

    markdown = markdown_table(rows)
    details = (
        f"{os.path.abspath(args.checkpoint)} (step {model.step}), split {args.split} "
        f"({len(data.records)} images), {platform.machine()} with {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    notes = "".join(f"\n- {k}: not computed ({v})" for k, v in unavailable.items())
    write_text_atomic(
        os.path.join(args.out, f"captioning_{args.split}.md"), f"{markdown}\n\n{details}{notes}\n"
    )
    write_json_atomic(
        os.path.join(args.out, f"captioning_{args.split}.json"),
        {
            "checkpoint": os.path.abspath(args.checkpoint),
            "step": model.step,
            "split": args.split,
            "num_images": len(data.records),
            "strategies": {
                name: {"decoding": dataclasses.asdict(opts), "metrics": rows[name]}
                for name, opts in chosen.items()
            },
            "rerank": rerank_details(args, model),
            "unavailable": unavailable,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"),
            "seconds": time.time() - started,
        },
    )
    # The page sorts by the per-image CIDEr-D of the last beam search (else greedy).
    scored_by = next((n for n in reversed(results) if n.startswith("beam")), "greedy")
    shown = results[scored_by]
    items = []
    for i in range(min(args.html_images, len(shown.image_ids))):
        captions = [
            (f"[{name}] {results[name].captions[i][0][0]}", results[name].captions[i][0][1])
            for name in results
        ]
        items.append(
            captions_page.ReportItem(
                image_id=shown.image_ids[i],
                captions=captions,
                references=shown.references[i],
                score=shown.per_image[i].get("CIDEr-D"),
                image=data.inputs[i] if model.takes_pixels else None,
                image_path=None if model.takes_pixels else data.records[i].file_path,
            )
        )
    captions_page.write_html(
        os.path.join(args.out, f"captioning_{args.split}.html"),
        items,
        title=f"m-RNN captions: {args.split} split ({scored_by} scores)",
        summary={f"{name} {k}": v for name, m in rows.items() for k, v in m.items()},
        score_name=f"CIDEr-D ({scored_by})",
    )
    print(f"\n{markdown}\n\n{details}\nwritten to {os.path.abspath(args.out)}")


if __name__ == "__main__":
    try:
        main()
    except MrnnError as error:
        raise SystemExit(f"run_captioning.py: error: {error}") from None
