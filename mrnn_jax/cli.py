"""The ``mrnn`` command line: ``mrnn train``, ``mrnn caption``.

Errors in the user's input (files, configs, checkpoints) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

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
    caption.add_argument("images", nargs="+", help="image files")
    return parser


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
    results = model.caption_files(args.images, args.max_words)
    for path, (text, log_prob) in zip(args.images, results, strict=True):
        print(f"{path}\t{text}\t(log p = {log_prob:.3f})")
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
        if args.command == "train":
            return _train(args)
        return _caption(args)
    except MrnnError as error:
        print(f"mrnn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mrnn: interrupted", file=sys.stderr)
        return 130
