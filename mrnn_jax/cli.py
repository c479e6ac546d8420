"""The ``mrnn`` command line: ``mrnn train``, ``mrnn caption``.

Errors in the user's input (files, configs, checkpoints) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

from mrnn_jax.decode import DecodeOptions
from mrnn_jax.errors import MrnnError

EPILOG_TRAIN = """\
Overrides are KEY=VALUE pairs naming any config value, for example
  mrnn train --config shapes --workdir runs/s train.num_steps=500 model.dropout_rate=0.2
Running again with the same --workdir resumes from its latest checkpoint; changing values that
shape the model (model.*, encoder.*) is refused, changing schedule values is allowed and logged.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrnn",
        description="m-RNN (Mao et al. 2014) image captioning and retrieval in JAX/Flax.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train a model (resumes from the work directory's latest checkpoint)",
        description="Train an m-RNN and evaluate it; resumes if WORKDIR holds a checkpoint.",
        epilog=EPILOG_TRAIN,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument(
        "--config",
        default="shapes",
        help="built-in config (default, shapes, tiny) or a .py file with get_config() "
        "(default: shapes)",
    )
    train.add_argument("--workdir", required=True, help="where checkpoints and logs go")
    train.add_argument(
        "--devices",
        type=int,
        default=None,
        help="use the first N devices of the mesh (default: all)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    caption = sub.add_parser(
        "caption",
        help="caption image files with a trained checkpoint",
        description="Print a greedy caption and its log-probability for each image.",
    )
    caption.add_argument(
        "--checkpoint", required=True, help="work directory of 'mrnn train' (or a step dir)"
    )
    caption.add_argument(
        "--latest", action="store_true", help="use the latest checkpoint, not the best"
    )
    caption.add_argument("--max-words", type=int, default=None, help="longest caption, in words")
    _add_decoding_arguments(caption)
    caption.add_argument(
        "--top", type=int, default=1, help="captions per image (beam search or sampling)"
    )
    caption.add_argument("images", nargs="+", help="image files")

    evaluate = sub.add_parser(
        "evaluate",
        help="perplexity and coco-caption metrics of a checkpoint on a split",
        description="Evaluate a checkpoint on a split of its dataset: perplexity, BLEU-1..4, "
        "METEOR (needs Java), ROUGE-L and CIDEr-D of the generated captions.",
    )
    evaluate.add_argument("--checkpoint", required=True, help="work directory of 'mrnn train'")
    evaluate.add_argument("--latest", action="store_true", help="latest checkpoint, not best")
    evaluate.add_argument("--split", default="test", help="split to evaluate (default: test)")
    evaluate.add_argument("--max-images", type=int, default=None, help="first N images only")
    evaluate.add_argument("--batch-size", type=int, default=None, help="images per batch")
    _add_decoding_arguments(evaluate)
    evaluate.add_argument("--json", default=None, help="write the metrics to this JSON file")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decoding (default: greedy)")
    group.add_argument("--beam", type=int, default=None, metavar="K", help="beam search, K beams")
    group.add_argument("--sample", action="store_true", help="sample words (the 2014 paper)")
    group.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    group.add_argument("--seed", type=int, default=0, help="sampling seed")
    group.add_argument(
        "--length-penalty", type=float, default=0.0, help="beam search length penalty alpha"
    )


def _decode_options(args: argparse.Namespace, default_words: int) -> DecodeOptions:
    if args.beam is not None and args.sample:
        raise MrnnError("choose --beam or --sample, not both")
    top = getattr(args, "top", 1)
    max_words = getattr(args, "max_words", None) or default_words
    if args.beam is not None:
        return DecodeOptions(
            strategy="beam",
            beam_size=args.beam,
            num_return=top,
            max_words=max_words,
            length_penalty=args.length_penalty,
        )
    if args.sample:
        return DecodeOptions(
            strategy="sample",
            num_return=top,
            max_words=max_words,
            temperature=args.temperature,
            seed=args.seed,
        )
    if top != 1:
        raise MrnnError("--top needs --beam or --sample")
    return DecodeOptions(strategy="greedy", max_words=max_words)


def _train(args: argparse.Namespace) -> int:
    from mrnn_jax import configs, train

    config = configs.load_config(args.config, args.overrides)
    results = train.train_and_evaluate(
        config, args.workdir, num_devices=args.devices, progress=not args.no_progress
    )
    print(
        f"best checkpoint: step {results['best_step']}, "
        f"validation perplexity {results['best_val_perplexity']:.3f}"
    )
    for split, values in results["splits"].items():
        line = f"{split}: perplexity {values['perplexity']:.3f}"
        if "phrase_accuracy" in values:
            line += f", largest object named {100 * values['phrase_accuracy']:.1f}%"
        print(line)
    print(f"results: {os.path.join(args.workdir, 'results.json')}")
    return 0


def _caption(args: argparse.Namespace) -> int:
    from mrnn_jax import captioner

    model = captioner.load(args.checkpoint, "latest" if args.latest else "best")
    if not model.takes_pixels:
        raise MrnnError(
            f"{args.checkpoint} was trained on precomputed features; caption its images by "
            "extracting the same features first"
        )
    options = _decode_options(args, model.config.eval.max_decode_words)
    results = model.generate(model.load_images(args.images), options)
    for path, candidates in zip(args.images, results, strict=True):
        for text, log_prob in candidates:
            print(f"{path}\t{text}\t(log p = {log_prob:.3f})")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mrnn_jax import captioner, evaluate, sharding
    from mrnn_jax.data import load_split

    model = captioner.load(args.checkpoint, "latest" if args.latest else "best")
    options = _decode_options(args, model.config.eval.max_decode_words)
    data = load_split(model.config.dataset, model.config.encoder, args.split, args.max_images)
    mesh = sharding.make_mesh()
    batch_size = args.batch_size or model.config.eval.batch_size
    batch_size = max(mesh.size, batch_size - batch_size % mesh.size)
    result = evaluate.evaluate_captioning(
        model.model,
        sharding.replicate(model.params, mesh),
        data,
        model.vocab,
        options,
        max_words=model.config.dataset.max_words,
        batch_size=batch_size,
        mesh=mesh,
        progress=not args.no_progress,
    )
    print(
        f"{args.split} ({len(data.records)} images, {options.strategy}"
        + (f" K={options.beam_size}" if options.strategy == "beam" else "")
        + "):"
    )
    for name, value in result.metrics.items():
        shown = "n/a" if value is None else f"{value:.4f}"
        print(f"  {name:22s} {shown}")
    for name, reason in result.unavailable.items():
        print(f"  {name}: not computed ({reason})")
    if args.json:
        from mrnn_jax.checkpoint import write_json_atomic

        write_json_atomic(
            args.json,
            {
                "checkpoint": os.path.abspath(args.checkpoint),
                "step": model.step,
                "split": args.split,
                "num_images": len(data.records),
                "decoding": dataclasses.asdict(options),
                "metrics": result.metrics,
                "unavailable": result.unavailable,
            },
        )
        print(f"metrics: {args.json}")
    return 0


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("mrnn_jax")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on read-only managers


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``mrnn`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    _setup_logging()
    try:
        commands = {"train": _train, "caption": _caption, "evaluate": _evaluate}
        return commands[args.command](args)
    except MrnnError as error:
        print(f"mrnn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mrnn: interrupted", file=sys.stderr)
        return 130
