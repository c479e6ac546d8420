"""Retrieval scoring speed and memory: log P(S | I) for every sentence x image pair.

Times :func:`mrnn_jax.evaluation.retrieval.score_matrix` with paper-sized layers (embed 128,
word 256, multimodal 512), random weights, a 10,000-word vocabulary, random 4096-d float32
features and
random 20-word sentences, and compares its matrix-multiply FLOP rate with the machine's own
float32 matmul peak, measured in the same run (before and after the timed runs; the higher
one counts). Times the parts of one tile, extrapolates the full Flickr8K/30K test split
(5,000 sentences x 1,000 images), and shows in fresh subprocesses that peak memory is set by
the tile size, not by the number of images. A benchmark that prints numbers, not a test.

    python experiments/bench_retrieval.py                     # 2-3 minutes on 2 CPU cores
    python experiments/bench_retrieval.py --sentences 32 --image-tile 8 --json bench.json
    python experiments/bench_retrieval.py --full              # also score 5,000 x 1,000 (GPU)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from timing import median_time

from mrnn_jax import logs
from mrnn_jax.evaluation import retrieval
from mrnn_jax.model import MRNN, activation, make_model
from mrnn_jax.text.vocab import END_ID, START_ID, UNK_ID

FULL_SENTENCES, FULL_IMAGES = 5_000, 1_000  # the Flickr8K / Flickr30K test split


def _peak_rss_mib() -> float:
    """This process's peak resident memory in MiB (Linux reports ru_maxrss in KiB)."""
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _vm_hwm_mib() -> float:
    """Peak resident memory of this process image from /proc (Linux; NaN elsewhere).

    Unlike ru_maxrss, which a child inherits from its parent through fork + exec, VmHWM
    starts afresh at exec: a cross-check on the children's ru_maxrss.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _setup(args, num_sentences: int, num_images: int):
    """Paper-sized model, random params, random sentences ``[S, words+2]`` and features."""
    model = make_model({}, {"name": "features"}, args.vocab_size)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((num_images, args.feature_dim), dtype=np.float32)
    params = model.init(jax.random.PRNGKey(0), images[:1], np.zeros((1, 2), np.int32))
    tokens = np.empty((num_sentences, args.words + 2), np.int32)
    tokens[:, 0], tokens[:, -1] = START_ID, END_ID
    tokens[:, 1:-1] = rng.integers(UNK_ID + 1, args.vocab_size, (num_sentences, args.words))
    return model, params, tokens, images


def _flops(model: MRNN, args, num_sentences: int, num_images: int) -> dict[str, float]:
    """Matrix-multiply FLOPs (2 per multiply-add) of one score_matrix call, by part.

    As retrieval.py runs them: V_w w + V_r r belong to the per-sentence part (computed once
    per sentence and reused for every image), so only W_o m is per (sentence, image, word).
    The ``nominal`` entry counts V_w w + V_r r per (sentence, image, word) instead, as a
    naive head would. Real sentences and images only (the padding rows of a partial tile
    are not counted); embedding lookups are gathers, and biases, activations and the
    log-softmax are not matrix products, so none of them counts.
    """
    steps = args.words + 1  # predicted words per sentence: 20 words + the end token
    d_e, d_w, d_m, v = model.embed_dim, model.word_dim, model.multimodal_dim, model.vocab_size
    pairs = num_sentences * num_images
    return {
        # once per (sentence, word): word embedding II W_e, recurrent U_r
        "sentence part": num_sentences * steps * 2 * (d_e * d_w + d_w * d_w),
        # once per (sentence, word): the head's V_w w + V_r r
        "head V_w w + V_r r": num_sentences * steps * 2 * 2 * d_w * d_m,
        # once per image: V_I I
        "image projection": num_images * 2 * args.feature_dim * d_m,
        # once per (sentence, image, word): W_o m
        "softmax W_o m": pairs * steps * 2 * d_m * v,
        # V_w w + V_r r counted per (sentence, image, word) instead
        "nominal head V_w w + V_r r": pairs * steps * 2 * 2 * d_w * d_m,
    }


def _executed(flops: dict[str, float]) -> float:
    return sum(f for name, f in flops.items() if not name.startswith("nominal"))


def _nominal(flops: dict[str, float]) -> float:
    return sum(f for name, f in flops.items() if name != "head V_w w + V_r r")


def matmul_peak(size: int, repeats: int) -> float:
    """GFLOP/s of a jitted float32 ``size x size @ size x size`` product (median of runs)."""
    keys = jax.random.split(jax.random.PRNGKey(1))
    a = jax.random.normal(keys[0], (size, size), jnp.float32)
    b = jax.random.normal(keys[1], (size, size), jnp.float32)
    product = jax.jit(jnp.matmul)
    seconds, _ = median_time(lambda: product(a, b), repeats)
    return 2 * size**3 / seconds / 1e9


def tile_breakdown(model: MRNN, params: dict, tokens, images, args) -> dict[str, float]:
    """Seconds for one ``sentence_tile x image_tile`` tile, cut where the cost might hide.

    Built from the model's own methods (not retrieval's private helpers): ``sentence part``
    (embeddings, recurrent layer, V_w w + V_r r for the tile's sentences); ``image part``
    (V_I I for its images); ``multimodal`` (m = g(V_w w + V_r r + V_I I) on the
    ``[s, i, T, M]`` grid, no softmax); ``logits`` (the whole head, W_o m included, the
    ``[s, i, T, V]`` logits returned); ``matmul`` (a bare matmul of the W_o m shape); ``tile``
    (score_matrix on exactly one tile: everything above plus log-softmax, gather and sum).
    """
    s, i = args.sentence_tile, args.image_tile
    tokens, images = tokens[:s], images[:i]

    def words_part(module: MRNN, tokens):
        w, r = module.words(tokens[:, :-1])
        return w, r, module.multimodal_word(w) + module.multimodal_recurrent(r)

    def multimodal(module: MRNN, part, projection):
        return activation(module.multimodal_activation)(part + projection)

    sentence_fn = jax.jit(lambda p, x: model.apply(p, x, method=words_part))
    image_fn = jax.jit(lambda p, x: model.apply(p, x, method=MRNN.project_image))
    multimodal_fn = jax.jit(lambda p, *x: model.apply(p, *x, method=multimodal))
    logits_fn = jax.jit(lambda p, *x: model.apply(p, *x, method=MRNN.head))
    matmul_fn = jax.jit(jnp.matmul)
    w, r, part = sentence_fn(params, tokens)
    projection = image_fn(params, images)[None, :, None]
    m = multimodal_fn(params, part[:, None], projection).reshape(-1, model.multimodal_dim)
    kernel = params["params"]["softmax"]["kernel"]
    runs = {
        "sentence part": lambda: sentence_fn(params, tokens),
        "image part": lambda: image_fn(params, images),
        "multimodal": lambda: multimodal_fn(params, part[:, None], projection),
        "logits": lambda: logits_fn(params, w[:, None], r[:, None], projection),
        "matmul": lambda: matmul_fn(m, kernel),
        "tile": lambda: retrieval.score_matrix(
            model, params, tokens, images, sentence_tile=s, image_tile=i
        ),
    }
    return {name: median_time(fn, args.repeats)[0] for name, fn in runs.items()}


def child(args) -> None:
    """Scores ``--sentences x --child`` images once in this fresh process; prints JSON."""
    model, params, tokens, images = _setup(args, args.sentences, args.child)
    before = _peak_rss_mib()
    start = time.perf_counter()
    scores = retrieval.score_matrix(
        model,
        params,
        tokens,
        images,
        sentence_tile=args.sentence_tile,
        image_tile=args.image_tile,
        progress=args.progress,
    )
    seconds = time.perf_counter() - start
    device_peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")  # GPU only
    print(
        json.dumps(
            {
                "sentences": args.sentences,
                "images": args.child,
                "seconds": seconds,
                "peak_rss_mib_before_scoring": before,
                "peak_rss_mib": _peak_rss_mib(),
                "vm_hwm_mib": _vm_hwm_mib(),
                "device_peak_mib": None if device_peak is None else device_peak / 2**20,
                "finite": bool(np.isfinite(scores).all()),
            }
        )
    )


def run_child(args, num_sentences: int, num_images: int, progress: bool = False) -> dict:
    """Runs :func:`child` in a fresh interpreter and returns what it printed."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        f"--child={num_images}",
        f"--sentences={num_sentences}",
        f"--sentence-tile={args.sentence_tile}",
        f"--image-tile={args.image_tile}",
        f"--vocab-size={args.vocab_size}",
        f"--feature-dim={args.feature_dim}",
        f"--words={args.words}",
        *(["--progress"] if progress else []),
    ]
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def main() -> None:
    """Peak, score-matrix speed, breakdown, memory children; prints Markdown, writes JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--sentences", type=int, default=64, help="S for the timed runs")
    parser.add_argument("--images", type=int, default=128, help="I for the timed runs")
    parser.add_argument("--sentence-tile", type=int, default=16, help="score_matrix tile")
    parser.add_argument("--image-tile", type=int, default=32, help="score_matrix tile")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument("--vocab-size", type=int, default=10_000, help="softmax width")
    parser.add_argument("--feature-dim", type=int, default=4096, help="image feature width")
    parser.add_argument("--words", type=int, default=20, help="words per random sentence")
    parser.add_argument("--peak-size", type=int, default=2048, help="n of the n^3 matmul")
    parser.add_argument("--peak-repeats", type=int, default=5, help="median of this many")
    parser.add_argument(
        "--memory-sentences", type=int, default=16, help="sentences in each memory child"
    )
    parser.add_argument(
        "--memory-images",
        type=int,
        nargs=2,
        default=[100, 1000],
        metavar=("SMALL", "LARGE"),
        help="images in the two memory children (fresh processes, peak RSS compared)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    parser.add_argument(
        "--no-breakdown", action="store_true", help="skip timing the parts of one tile"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"also score the full {FULL_SENTENCES} x {FULL_IMAGES} split in a fresh process "
        "(meant for a GPU: over an hour on a 2-core CPU)",
    )
    parser.add_argument("--progress", action="store_true", help="progress bar in --full")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    logs.add_argument(parser)
    args = parser.parse_args()
    logs.setup(args.verbose)
    if args.child is not None:
        child(args)
        return

    started = time.perf_counter()
    device = jax.devices()[0]
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, {device.platform} "
        f"({device.device_kind}), {time.strftime('%Y-%m-%d')}"
    )
    # The children run first, while this process is still small: on Linux a child's
    # ru_maxrss starts at its parent's peak (inherited through fork + exec), so children
    # started after the timed runs below would all report this process's peak.
    memory = None
    if not args.no_memory:
        small, large = (run_child(args, args.memory_sentences, n) for n in args.memory_images)
        dim = make_model({}, {"name": "features"}, args.vocab_size).multimodal_dim
        per_image = (args.feature_dim + dim) * 4  # bytes per image: its input and V_I I
        more_images = (FULL_IMAGES - large["images"]) * per_image
        memory = {
            "small": small,
            "large": large,
            "expected_growth_mib": (large["images"] - small["images"]) * per_image / 2**20,
            "full_split_expected_mib": large["peak_rss_mib"]
            + (FULL_SENTENCES * FULL_IMAGES * 4 + more_images) / 2**20,
        }
    full = run_child(args, FULL_SENTENCES, FULL_IMAGES, args.progress) if args.full else None

    # The peak is measured before and after the timed runs and the higher one is used: on a
    # shared machine a busy neighbour during one of them would otherwise inflate the ratio.
    peak_before = matmul_peak(args.peak_size, args.peak_repeats)

    model, params, tokens, images = _setup(args, args.sentences, args.images)
    score = lambda: retrieval.score_matrix(
        model,
        params,
        tokens,
        images,
        sentence_tile=args.sentence_tile,
        image_tile=args.image_tile,
    )
    seconds, all_seconds = median_time(score, args.repeats)
    peak_after = matmul_peak(args.peak_size, args.peak_repeats)
    peak = max(peak_before, peak_after)
    pairs = args.sentences * args.images
    flops = _flops(model, args, args.sentences, args.images)
    achieved = _executed(flops) / seconds / 1e9
    tiles = math.ceil(args.sentences / args.sentence_tile) * math.ceil(
        args.images / args.image_tile
    )
    full_tiles = math.ceil(FULL_SENTENCES / args.sentence_tile) * math.ceil(
        FULL_IMAGES / args.image_tile
    )
    full_estimate = seconds / tiles * full_tiles
    full_flops = _flops(model, args, FULL_SENTENCES, FULL_IMAGES)

    breakdown = None
    if not args.no_breakdown:
        tile_args = (tokens[: args.sentence_tile], images[: args.image_tile])
        breakdown = tile_breakdown(model, params, *tile_args, args)

    name = (
        f"paper-sized m-RNN, random weights, vocabulary {args.vocab_size}, "
        f"{args.feature_dim}-d features, {args.words}-word sentences"
    )
    rows = [
        (f"float32 matmul peak ({args.peak_size}^3, median of {args.peak_repeats}; "
         "before / after the timed runs)",
         f"{peak:.1f} GFLOP/s ({peak_before:.1f} / {peak_after:.1f})"),
        (f"score_matrix {args.sentences} x {args.images} "
         f"(tiles {args.sentence_tile} x {args.image_tile}, median of {args.repeats})",
         f"{seconds:.2f} s ({', '.join(f'{t:.2f}' for t in all_seconds)})"),
        ("pairs per second", f"{pairs / seconds:.0f}"),
        ("matmul GFLOP per pair (executed / nominal)",
         f"{_executed(flops) / pairs / 1e9:.3f} / {_nominal(flops) / pairs / 1e9:.3f}"),
        ("  of which softmax W_o m",
         f"{100 * flops['softmax W_o m'] / _executed(flops):.1f} %"),
        ("achieved (executed matmul FLOPs)", f"{achieved:.1f} GFLOP/s"),
        ("ratio to peak (executed / nominal FLOPs)",
         f"{100 * achieved / peak:.1f} % / "
         f"{100 * _nominal(flops) / seconds / 1e9 / peak:.1f} %"),
        (f"full split {FULL_SENTENCES} x {FULL_IMAGES}, extrapolated ({full_tiles} tiles)",
         f"{_duration(full_estimate)} ({_executed(full_flops) / 1e15:.2f} PFLOP; "
         f"{_duration(_executed(full_flops) / peak / 1e9)} at peak)"),
    ]  # fmt: skip
    if breakdown:
        tile_rows = args.sentence_tile * args.image_tile * (args.words + 1)
        mm = 2 * tile_rows * model.multimodal_dim * model.vocab_size / 1e9  # W_o m, GFLOP
        tile = _executed(_flops(model, args, args.sentence_tile, args.image_tile)) / 1e9
        rows += [
            (f"one tile, sentence part ({args.sentence_tile} sentences) / image part "
             f"({args.image_tile} images)",
             f"{1e3 * breakdown['sentence part']:.1f} ms / "
             f"{1e3 * breakdown['image part']:.1f} ms"),
            (f"one tile, multimodal layer m only, no softmax ({tile_rows} x "
             f"{model.multimodal_dim})", f"{1e3 * breakdown['multimodal']:.0f} ms"),
            ("one tile, head logits (m and W_o m)",
             f"{1e3 * breakdown['logits']:.0f} ms ({mm / breakdown['logits']:.1f} GFLOP/s)"),
            (f"one tile, bare matmul [{tile_rows}, {model.multimodal_dim}] @ "
             f"[{model.multimodal_dim}, {model.vocab_size}]",
             f"{1e3 * breakdown['matmul']:.0f} ms ({mm / breakdown['matmul']:.1f} GFLOP/s)"),
            ("one tile, score_matrix (all of the above + log-softmax, gather, sum)",
             f"{1e3 * breakdown['tile']:.0f} ms ({tile / breakdown['tile']:.1f} GFLOP/s)"),
        ]  # fmt: skip
    if memory:
        small, large = memory["small"], memory["large"]
        rows += [
            (f"peak RSS, {small['sentences']} x {small['images']} (fresh process)",
             f"{small['peak_rss_mib']:.0f} MiB ({small['peak_rss_mib_before_scoring']:.0f} "
             "before scoring)"),
            (f"peak RSS, {large['sentences']} x {large['images']} (fresh process)",
             f"{large['peak_rss_mib']:.0f} MiB ({large['peak_rss_mib_before_scoring']:.0f} "
             "before scoring)"),
            ("growth (measured / inputs + projections, I x (4096 + 512) float32)",
             f"{large['peak_rss_mib'] - small['peak_rss_mib']:+.0f} MiB / "
             f"{memory['expected_growth_mib']:+.0f} MiB"),
            (f"full split peak RSS, expected (+ {FULL_SENTENCES} x {FULL_IMAGES} float32 "
             "scores, 19 MiB)", f"{memory['full_split_expected_mib']:.0f} MiB"),
        ]  # fmt: skip
    if full:
        rows += [
            (f"full split {FULL_SENTENCES} x {FULL_IMAGES}, measured (one run)",
             f"{_duration(full['seconds'])}, {FULL_SENTENCES * FULL_IMAGES / full['seconds']:.0f} "
             f"pairs/s, peak RSS {full['peak_rss_mib']:.0f} MiB"),
        ]  # fmt: skip
    total = time.perf_counter() - started
    lines = [
        f"Retrieval scoring ({name}; {machine}; benchmark took {_duration(total)}):",
        "",
        "| measurement | value |",
        "|---|---|",
        *(f"| {label} | {value} |" for label, value in rows),
    ]
    print("\n".join(lines))
    if args.json:
        result = {
            "model": name,
            "machine": machine,
            "args": vars(args),
            "matmul_peak_gflops": peak,
            "matmul_peak_gflops_before_after": [peak_before, peak_after],
            "score_seconds": seconds,
            "score_seconds_all": all_seconds,
            "pairs_per_second": pairs / seconds,
            "flops": flops,
            "executed_flops": _executed(flops),
            "nominal_flops": _nominal(flops),
            "achieved_gflops": achieved,
            "ratio_to_peak": achieved / peak,
            "full_split_estimate_seconds": full_estimate,
            "full_split_flops": _executed(full_flops),
            "tile_breakdown_seconds": breakdown,
            "memory": memory,
            "full_split": full,
            "benchmark_seconds": total,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
