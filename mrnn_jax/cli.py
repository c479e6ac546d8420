"""The ``mrnn`` command line: train, caption, evaluate, retrieve, search.

Errors in the user's input (files, configs, checkpoints) print one line and exit with status 2;
SIGINT and SIGTERM print one line and exit with 130 and 143 (training saves a checkpoint first).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mrnn_jax import api, compilation_cache, configs, distributed, logs
from mrnn_jax.encoders import extract_features
from mrnn_jax.errors import MrnnError, WriteFailed
from mrnn_jax.evaluation.captioning import PHRASE_ACCURACY
from mrnn_jax.limits import Limits
from mrnn_jax.training.signals import Interrupted

EPILOG_TRAIN = """\
Overrides are KEY=VALUE pairs naming any config value, for example
  mrnn train --config shapes --workdir runs/s train.num_steps=500 model.dropout_rate=0.2
Running again with the same --workdir resumes from its latest intact checkpoint; changing values
that shape the model (model.*, encoder.*) is refused, changing schedule values is allowed and
logged. Ctrl-C or SIGTERM finishes the step, saves it and exits (130 / 143; a second Ctrl-C
stops at once). A second trainer on the same --workdir is refused. See the README's "What
happens when things go wrong".

Self-critical sequence training (fine-tuning for CIDEr-D, docs/scst.md), from a trained run:
  mrnn train --config shapes --workdir runs/shapes-scst --init-from runs/shapes \
      train.objective=scst
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
        "--init-from",
        metavar="RUN",
        default=None,
        help="start from this trained run's best checkpoint (or a step folder such as "
        "RUN/checkpoints/1500); what train.objective=scst fine-tunes (= train.init_from)",
    )
    train.add_argument(
        "--devices",
        type=int,
        default=None,
        help="use the first N devices of the mesh (default: all)",
    )
    _add_data_arguments(train)
    _add_distributed_arguments(train)
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    caption = sub.add_parser(
        "caption",
        help="caption image files with a trained checkpoint",
        description="Print captions (greedy by default; beam search or sampling on request) "
        "and their log-probabilities for each image.",
    )
    _add_checkpoint_arguments(caption)
    _add_encoder_weights_argument(caption)
    _add_decoding_arguments(caption)
    caption.add_argument("images", nargs="+", help="image files")

    evaluate = sub.add_parser(
        "evaluate",
        help="perplexity and coco-caption metrics of a checkpoint on a split",
        description="Evaluate a checkpoint on a split of its dataset: perplexity, BLEU-1..4, "
        "METEOR (needs Java), ROUGE-L and CIDEr-D of the generated captions.",
    )
    _add_checkpoint_arguments(evaluate)
    evaluate.add_argument("--split", default="test", help="split to evaluate (default: test)")
    evaluate.add_argument("--max-images", type=int, default=None, help="first N images only")
    evaluate.add_argument("--batch-size", type=int, default=None, help="images per batch")
    _add_decoding_arguments(evaluate)
    _add_data_arguments(evaluate)
    evaluate.add_argument(
        "--compute-dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="precision of the matrix products (default: the one it was trained with)",
    )
    rerank = evaluate.add_argument_group("consensus reranking (ICLR 2015 section 8)")
    rerank.add_argument(
        "--rerank",
        choices=("none", "consensus"),
        default="none",
        help="rerank the beam's n-best by agreement with the captions of the nearest "
        "training images (beam size: --beam, else the config's rerank.num_hypotheses)",
    )
    rerank.add_argument(
        "--rerank-metric", choices=("CIDEr", "BLEU"), default=None, help="default: config's"
    )
    rerank.add_argument(
        "--rerank-features",
        choices=("projection", "cnn"),
        default=None,
        help="neighbours by V_I I (projection) or the CNN's I (default: the config's)",
    )
    evaluate.add_argument("--json", default=None, help="write the metrics to this JSON file")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")

    add_retrieve_parser(sub)

    extract = sub.add_parser(
        "extract-features",
        help="compute a pretrained CNN's features of a dataset's (or a folder's) images",
        description="Run VGG-16, ResNet-50 or AlexNet (converted weights, see "
        "data_prep/convert_weights.py) over every image of a dataset or folder and write the "
        "precomputed-features file training reads (.npz, or .npy with .txt names), with its "
        "provenance. Interrupted, the same command continues where it stopped.",
    )
    extract.add_argument(
        "--encoder", required=True, choices=("vgg16", "resnet50", "alexnet"), help="the CNN"
    )
    extract.add_argument("--weights", required=True, help="converted weights file")
    extract.add_argument(
        "--feature", default="", help="named output (default: fc7, or pooled for resnet50)"
    )
    source = extract.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--dataset",
        choices=("flickr8k", "flickr30k", "coco", "iapr", "folder"),
        help="every image of this dataset's splits (needs --data-dir)",
    )
    source.add_argument("--images", help="every image under this folder (names: relative paths)")
    extract.add_argument("--data-dir", default=None, help="the dataset's folder")
    extract.add_argument("--out", required=True, help="output .npz or .npy")
    extract.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
    extract.add_argument(
        "--dtype", default="float16", choices=("float16", "float32"), help="stored precision"
    )
    extract.add_argument(
        "--on-bad-image",
        default="skip",
        choices=("skip", "error"),
        help="an undecodable image: leave it out and count it (default), or stop",
    )
    _add_distributed_arguments(extract)
    extract.add_argument("--no-progress", action="store_true", help="no progress bar")

    search = sub.add_parser(
        "search",
        help="find the images that best match a sentence",
        description="Rank a folder of images (or a features file) by P(sentence | image) "
        "under a trained checkpoint and print the best matches.",
    )
    _add_checkpoint_arguments(search)
    _add_encoder_weights_argument(search)
    where = search.add_mutually_exclusive_group(required=True)
    where.add_argument("--images", help="folder of images (searched recursively)")
    where.add_argument(
        "--features", help="precomputed features: .npz with 'features' and 'filenames'"
    )
    search.add_argument("--top", type=int, default=5, help="matches to print (default: 5)")
    search.add_argument("sentence", help='the query, e.g. "a red circle above a square"')

    add_serve_parser(sub)
    for command in sub.choices.values():
        logs.add_argument(command)
    return parser


def add_serve_parser(sub) -> argparse.ArgumentParser:
    """The ``serve`` command's options."""
    limits = Limits()
    serve = sub.add_parser(
        "serve",
        help="a web page (and JSON API) to caption uploaded images and search a gallery",
        description="Serve a trained checkpoint on a small self-contained web page: drop an "
        "image to read its beam-search captions with their log-probabilities, type a sentence "
        "to see the gallery ranked by P(sentence | image). The same as JSON: POST "
        '/api/caption (multipart \'image\'), POST /api/search ({"sentence", "top"}), '
        "GET /api/info. Binds to 127.0.0.1 unless --host says otherwise; the address is "
        "printed once the server is listening, and a busy port is an error (exit status 2).",
    )
    _add_checkpoint_arguments(serve)
    _add_encoder_weights_argument(serve)
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--gallery", help="folder of images to search (recursively)")
    where.add_argument(
        "--features", help="precomputed features of the gallery (.npz, or .npy + names .txt)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (8000)")
    serve.add_argument("--beam", type=int, default=3, metavar="K", help="beams (3)")
    serve.add_argument("--top", type=int, default=3, help="captions shown per image (3)")
    serve.add_argument(
        "--max-upload-mb",
        type=float,
        default=limits.max_upload_bytes / 2**20,
        help=f"largest upload, MiB ({limits.max_upload_bytes / 2**20:g})",
    )
    serve.add_argument(
        "--max-megapixels",
        type=float,
        default=limits.max_image_pixels / 1e6,
        help=f"largest uploaded image, megapixels ({limits.max_image_pixels / 1e6:g})",
    )
    serve.add_argument(
        "--max-gallery",
        type=int,
        default=limits.max_gallery_images,
        help=f"most gallery images ({limits.max_gallery_images})",
    )
    serve.add_argument(
        "--decode-memory-mb",
        type=float,
        default=limits.decode_memory_bytes / 2**20,
        help="memory that uploads being decoded at the same time may take together, MiB "
        f"({limits.decode_memory_bytes / 2**20:g}: two images of the largest size at once). "
        "Each image's need is estimated from its header before decoding; an upload that "
        f"finds it full waits up to {limits.decode_wait_seconds:g} s, then gets 503 with "
        "Retry-After; one that could never fit gets 413",
    )
    return serve


def _add_encoder_weights_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--encoder-weights",
        default=None,
        metavar="FILE",
        help="for a run trained on features from 'mrnn extract-features': the converted "
        "weights file they were extracted with (checked against the SHA-256 the features "
        "record), so that image files go through the same CNN",
    )


def add_retrieve_parser(sub) -> argparse.ArgumentParser:
    """The ``retrieve`` command's options (shared with experiments/run_retrieval.py)."""
    retrieve = sub.add_parser(
        "retrieve",
        help="image-sentence retrieval metrics of a checkpoint on a split",
        description="Rank images for each sentence by P(S|I) and sentences for each image by "
        "P(S|I)/P(S) (and raw P(S|I)); report R@1, R@5, R@10, median and mean rank as in "
        "the paper's tables, as JSON, Markdown and an HTML page of example queries.",
    )
    _add_checkpoint_arguments(retrieve)
    retrieve.add_argument("--split", default="test", help="split to evaluate (default: test)")
    retrieve.add_argument("--max-images", type=int, default=None, help="first N images only")
    retrieve.add_argument(
        "--prior-images",
        type=int,
        default=None,
        metavar="N",
        help="estimate P(S) over N sampled training images (default: the split's images)",
    )
    retrieve.add_argument(
        "--coco-1k",
        action="store_true",
        help="COCO's 1K-test protocol: folds of 1,000 images, metrics averaged",
    )
    _add_data_arguments(retrieve)
    retrieve.add_argument("--sentence-tile", type=int, default=16, help="sentences per tile")
    retrieve.add_argument("--image-tile", type=int, default=32, help="images per tile")
    retrieve.add_argument("--json", default=None, help="write the metrics to this JSON file")
    retrieve.add_argument(
        "--out",
        default=None,
        help="folder for the JSON, Markdown table and HTML page (default: the --json file's "
        "folder; with neither, print only)",
    )
    retrieve.add_argument(
        "--html-queries", type=int, default=10, help="example queries per direction on the page"
    )
    retrieve.add_argument("--no-progress", action="store_true", help="no progress bar")
    return retrieve


def _add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="work directory of 'mrnn train' (or a step dir)"
    )
    parser.add_argument(
        "--latest", action="store_true", help="use the latest checkpoint, not the best"
    )


def _load(args: argparse.Namespace, compute_dtype: str | None = None):
    """The checkpoint ``--checkpoint`` / ``--latest`` (/ ``--encoder-weights``) name."""
    return api.load(
        args.checkpoint,
        "latest" if args.latest else "best",
        compute_dtype=compute_dtype,
        encoder_weights=getattr(args, "encoder_weights", None),
    )


def _add_distributed_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "many processes (one per host or GPU; see the README's launch commands)"
    )
    group.add_argument(
        "--coordinator", default=None, metavar="HOST:PORT", help="process 0's address"
    )
    group.add_argument("--num-processes", type=int, default=None, help="how many in all")
    group.add_argument("--process-id", type=int, default=None, help="this one's id, from 0")
    group.add_argument(
        "--distributed",
        action="store_true",
        help="take all three from the cluster (SLURM, Open MPI, Cloud TPU)",
    )


def _start_distributed(args: argparse.Namespace) -> None:
    given = [args.coordinator, args.num_processes, args.process_id]
    if any(v is not None for v in given) and any(v is None for v in given):
        raise MrnnError("--coordinator, --num-processes and --process-id go together")
    distributed.initialize(args.coordinator, args.num_processes, args.process_id, args.distributed)


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "data (default: the config's, or for a checkpoint the paths it was trained with)"
    )
    group.add_argument(
        "--data-dir",
        default=None,
        help="the dataset's folder (sets dataset.data_dir; see data_prep/README.md)",
    )
    group.add_argument(
        "--features",
        default=None,
        help="precomputed image features: .npz ('features', 'filenames') or .npy with a names "
        ".txt beside it (sets dataset.features)",
    )


def _data_overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    if args.data_dir is not None:
        overrides.append(f"dataset.data_dir={args.data_dir}")
    if args.features is not None:
        overrides.append(f"dataset.features={args.features}")
    return overrides


def _load_for_data(args: argparse.Namespace):
    """The checkpoint of ``args``, its dataset paths replaced by --data-dir / --features."""
    model = _load(args, getattr(args, "compute_dtype", None))
    return api.use_data(model, data_dir=args.data_dir, features=args.features)


def _add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding flags, one per :class:`mrnn_jax.api.DecodeOptions` field (its metadata
    says the flag, the help and what else argparse needs)."""
    group = parser.add_argument_group("decoding (default: greedy)")
    for flag, field in api.decoding_flags():
        settings = {"default": field.default, **field.metadata["argparse"]}
        if settings.get("action") == "store_true":
            settings["default"] = False
        else:
            settings["type"] = type(field.default)
        group.add_argument(flag, dest=field.name, help=field.metadata["help"], **settings)


def _decoding(args: argparse.Namespace) -> dict:
    """The decoding flags as :func:`mrnn_jax.api.caption`'s keyword arguments (the fields of
    :class:`mrnn_jax.api.DecodeOptions` given a value)."""
    if args.beam_size is not None and args.strategy:
        raise MrnnError("choose --beam or --sample, not both")
    strategy = "beam" if args.beam_size is not None else "sample" if args.strategy else "greedy"
    fields = [(flag, f) for flag, f in api.decoding_flags() if f.name != "strategy"]
    given = {f.name: getattr(args, f.name) for _, f in fields if getattr(args, f.name) is not None}
    for only in ("sample", "beam"):  # options of one strategy, set for another
        own = [(flag, f) for flag, f in fields if f.metadata["only"] == only]
        if strategy != only and any(given[f.name] != f.default for _, f in own):
            verb = "apply" if len(own) > 1 else "applies"
            raise MrnnError(f"{' and '.join(flag for flag, _ in own)} {verb} to --{only} only")
    if strategy == "greedy" and given["num_return"] != 1:
        raise MrnnError("--top needs --beam or --sample")
    return {**given, "strategy": strategy}


def _train(args: argparse.Namespace) -> int:
    # Only training needs optax and TensorBoard's writer (with torch, if installed): about a
    # second that mrnn caption, search, serve and --help do without.
    from mrnn_jax.training import loop

    _start_distributed(args)
    init = [f"train.init_from={args.init_from}"] if args.init_from is not None else []
    config = configs.load_config(args.config, [*_data_overrides(args), *init, *args.overrides])
    results = loop.train_and_evaluate(
        config, args.workdir, num_devices=args.devices, progress=not args.no_progress
    )
    if not distributed.is_primary():
        return 0
    selected = results["selected_by"]
    value = "n/a" if selected["value"] is None else f"{selected['value']:.4f}"
    print(f"best checkpoint: step {results['best_step']}, {selected['metric']} {value}")
    for kind, skipped in results.get("data", {}).get("skipped", {}).items():
        print(f"data: {skipped['count']} {kind}")
    for split, values in results["splits"].items():
        line = f"{split}: perplexity {values['perplexity']:.3f}"
        if "CIDEr-D" in values and values["CIDEr-D"] is not None:
            line += f", CIDEr-D {values['CIDEr-D']:.3f}"
        if PHRASE_ACCURACY in values:
            line += f", largest object named {100 * values[PHRASE_ACCURACY]:.1f}%"
        print(line)
    print(f"results: {os.path.join(args.workdir, 'results.json')}")
    return 0


def _caption(args: argparse.Namespace) -> int:
    model = _load(args)
    results = api.caption(model, args.images, **_decoding(args))
    for path, candidates in zip(args.images, results, strict=True):
        for text, log_prob in candidates:
            print(f"{path}\t{text}\t(log p = {log_prob:.3f})")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    model = _load_for_data(args)
    decoding = _decoding(args)
    if args.rerank != "consensus" and (args.rerank_metric or args.rerank_features):
        raise MrnnError("--rerank-metric and --rerank-features need --rerank consensus")
    evaluation = api.evaluate_captioning(
        model,
        args.split,
        **decoding,
        rerank=args.rerank,
        rerank_metric=args.rerank_metric,
        rerank_features=args.rerank_features,
        max_images=args.max_images,
        batch_size=args.batch_size,
        json_path=args.json,
        checkpoint=args.checkpoint,
        progress=not args.no_progress,
    )
    options = evaluation.decoding
    print(
        f"{args.split} ({evaluation.num_images} images, {options.strategy}"
        + (f" K={options.beam_size}" if options.strategy == "beam" else "")
        + (
            f", consensus reranking by {evaluation.rerank.metric}"
            if evaluation.rerank is not None
            else ""
        )
        + "):"
    )
    for name, value in evaluation.metrics.items():
        shown = "n/a" if value is None else f"{value:.4f}"
        print(f"  {name:22s} {shown}")
    for name, reason in evaluation.unavailable.items():
        print(f"  {name}: not computed ({reason})")
    if args.json:
        print(f"metrics: {args.json}")
    return 0


def _retrieve(args: argparse.Namespace) -> int:
    model = _load_for_data(args)
    report = api.retrieval_metrics(
        model,
        args.split,
        max_images=args.max_images,
        prior_images=args.prior_images,
        coco_1k=args.coco_1k,
        sentence_tile=args.sentence_tile,
        image_tile=args.image_tile,
        json_path=args.json,
        out=args.out,
        html_queries=args.html_queries,
        checkpoint=args.checkpoint,
        progress=not args.no_progress,
    )
    print(report.table)
    return 0


def _search(args: argparse.Namespace) -> int:
    model = _load(args)
    if args.features:
        gallery = api.load_gallery(model, features=args.features)
    else:
        gallery = api.load_gallery(model, folder=args.images, progress=sys.stderr.isatty())
    if gallery.skipped:
        print(f"skipped {len(gallery.skipped)} unreadable image(s)", file=sys.stderr)
    result = api.search(model, args.sentence, gallery, top=args.top)
    if result.unknown_words:
        unknown = " ".join(result.unknown_words)
        print(f"words not in the vocabulary (read as <unk>): {unknown}", file=sys.stderr)
    for match in result.matches:
        print(f"{match.score:10.3f}\t{match.name}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:  # FastAPI and uvicorn are an optional extra (mrnn-jax[serve])
        from mrnn_jax import server
    except ImportError as error:
        raise MrnnError(
            f"mrnn serve needs FastAPI, uvicorn and python-multipart ({error}); "
            "pip install fastapi uvicorn python-multipart"
        ) from None

    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_image_pixels=int(args.max_megapixels * 1e6),
        max_gallery_images=args.max_gallery,
        decode_memory_bytes=int(args.decode_memory_mb * 2**20),
    )
    sock = server.bind(args.host, args.port)  # a busy port fails now, not after loading
    model = _load(args)
    gallery = None
    if args.gallery or args.features:
        gallery = api.load_gallery(
            model,
            folder=args.gallery,
            features=args.features,
            max_images=limits.max_gallery_images,
            progress=sys.stderr.isatty(),
        )
        if gallery.skipped:
            print(f"gallery: skipped {len(gallery.skipped)} unreadable image(s)", file=sys.stderr)
    decoding = {"strategy": "beam", "beam_size": args.beam, "num_return": args.top}
    app = server.create_app(model, gallery, limits, gallery_root=args.gallery, **decoding)
    sock.listen(2048)  # connections from now on wait for the server, none is refused
    print(f"mrnn serve: {server.address(sock)}", flush=True)
    server.run(app, sock=sock)
    return 0


def _extract_features(args: argparse.Namespace) -> int:
    _start_distributed(args)
    names, paths = api.extraction_images(
        images=args.images, dataset=args.dataset, data_dir=args.data_dir
    )
    encoder = {
        "name": args.encoder,
        "weights": args.weights,
        "feature": args.feature,
        "fine_tune_from": "",
    }
    result = extract_features.extract_features(
        encoder,
        names,
        paths,
        args.out,
        batch_size=args.batch_size,
        on_bad_image=args.on_bad_image,
        dtype=args.dtype,
        progress=not args.no_progress,
    )
    if not distributed.is_primary():
        return 0
    print(
        f"{result.path}: {len(result.names)} images, {len(result.skipped)} skipped, "
        f"{result.images_per_second:.1f} images/s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``mrnn`` command; returns the exit status."""
    parser = _parser()
    # Overrides (KEY=VALUE) may come before, between or after options: collect them all.
    args, extra = parser.parse_known_args(argv)
    stray = [t for t in extra if t.startswith("-") or "=" not in t]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    logs.setup(args.verbose)
    compilation_cache.enable()  # MRNN_COMPILATION_CACHE=DIR: reuse compiled programs
    try:
        commands = {
            "train": _train,
            "caption": _caption,
            "evaluate": _evaluate,
            "retrieve": _retrieve,
            "search": _search,
            "serve": _serve,
            "extract-features": _extract_features,
        }
        return commands[args.command](args)
    except MrnnError as error:
        print(f"mrnn: error: {error}", file=sys.stderr)
        if isinstance(error, WriteFailed) and argv is None:  # the program, not a caller
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        return 2
    except Interrupted as stopped:  # SIGINT / SIGTERM: 128 + the signal's number
        print(f"mrnn: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    except KeyboardInterrupt:
        print("mrnn: interrupted", file=sys.stderr)
        return 130
