"""Is the input pipeline the bottleneck? Training tokens per second with the real pipeline
against the same training step fed one batch held in device memory.

The set is Flickr30K-sized: 31,000 images x 5 captions, 4096-d float16 features in a
memory-mapped .npy (254 MB, written once to --cache-dir), captions of 8 to 20 random words
from a 10,000-word vocabulary; paper-sized layers, batch 256. Each run is --steps training
steps; the median of --runs runs is reported for each feeding. A benchmark that prints
numbers, not a test.

    python experiments/bench_pipeline.py [--steps 10] [--runs 5] [--json results/pipeline.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from mrnn_jax import logs, sharding
from mrnn_jax.data.features import RowSubset, load_features
from mrnn_jax.data.pipeline import CaptionTable, train_batch
from mrnn_jax.files import write_json_atomic
from mrnn_jax.model import make_model
from mrnn_jax.text.vocab import END_ID, PAD_ID, START_ID
from mrnn_jax.training.step import init_state, jit_train_step, make_optimizer, make_train_step


def features_file(cache_dir: str, images: int, dim: int) -> str:
    """A memory-mappable ``[images, dim]`` float16 .npy with a names list (made once)."""
    path = os.path.join(cache_dir, f"features_{images}x{dim}.npy")
    if not os.path.isfile(path):
        os.makedirs(cache_dir, exist_ok=True)
        rng = np.random.default_rng(0)
        partial = path + ".partial.npy"
        out = np.lib.format.open_memmap(partial, "w+", np.float16, (images, dim))
        for start in range(0, images, 4096):
            rows = min(4096, images - start)
            out[start : start + rows] = rng.normal(size=(rows, dim)).astype(np.float16)
        out.flush()
        del out
        with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
            f.write("\n".join(f"{1000092795 + i}.jpg" for i in range(images)) + "\n")
        os.replace(partial, path)
    return path


def caption_table(images: int, per_image: int, vocab: int, max_words: int) -> CaptionTable:
    """Random captions of 8..max_words words, ``per_image`` per image, as a caption table."""
    rng = np.random.default_rng(1)
    count = images * per_image
    lengths = rng.integers(8, max_words + 1, count)
    tokens = np.full((count, max_words + 2), PAD_ID, np.int32)
    tokens[:, 0] = START_ID
    words = rng.integers(END_ID + 1, vocab, (count, max_words))
    positions = np.arange(max_words)[None, :]
    tokens[:, 1:-1] = np.where(positions < lengths[:, None], words, PAD_ID)
    tokens[np.arange(count), lengths + 1] = END_ID
    return CaptionTable(
        image_index=np.repeat(np.arange(images, dtype=np.int32), per_image),
        tokens=tokens,
        counts=np.full(images, per_image, np.int64),
    )


def main() -> None:
    """Measures and prints tokens per second with both feedings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=31_000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--feature-dim", type=int, default=4096)
    parser.add_argument("--vocab-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-words", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10, help="training steps per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache-dir", default=os.path.join("results", "bench_cache"))
    parser.add_argument("--json", default=None, help="write the numbers here")
    logs.add_argument(parser)
    args = parser.parse_args()
    logs.setup(args.verbose)

    path = features_file(args.cache_dir, args.images, args.feature_dim)
    features = load_features(path)  # memory-mapped, as training reads it
    inputs = RowSubset(features.features, np.arange(args.images))
    table = caption_table(args.images, args.captions_per_image, args.vocab_size, args.max_words)

    mesh = sharding.make_mesh()
    model = make_model({}, {"name": "features", "features_dim": args.feature_dim}, args.vocab_size)
    config = ConfigDict(
        {
            "learning_rate": 1e-3,
            "warmup_steps": 10,
            "num_steps": 10_000,
            "final_learning_rate_fraction": 0.05,
            "grad_clip_norm": 5.0,
        }
    )
    tx = make_optimizer(config)
    first = train_batch(table, inputs, 0, args.batch_size, seed=0)
    state = sharding.replicate(
        init_state(model, tx, 0, first["image"][:1], first["tokens"][:1, :-1]), mesh
    )
    step_fn = jit_train_step(make_train_step(model, tx, 1e-6), mesh)
    held = sharding.shard_batch(first, mesh)

    position = [0]

    def run(real: bool) -> tuple[float, float]:
        """``(seconds, tokens)`` of ``args.steps`` steps."""
        nonlocal state
        metrics = []
        start = time.perf_counter()
        for _ in range(args.steps):
            if real:
                batch = train_batch(table, inputs, position[0], args.batch_size, seed=0)
                position[0] += 1
                batch = sharding.shard_batch(batch, mesh)
            else:
                batch = held
            state, step_metrics = step_fn(state, batch)
            metrics.append(step_metrics["num_tokens"])
        tokens = float(sum(jax.device_get(metrics)))
        return time.perf_counter() - start, tokens

    run(True), run(False)  # compile and warm up both paths
    rates: dict[str, list[float]] = {"pipeline": [], "in_memory": []}
    for _ in range(args.runs):  # interleaved, so that drifts hit both alike
        for name, real in (("pipeline", True), ("in_memory", False)):
            seconds, tokens = run(real)
            rates[name].append(tokens / seconds)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    gap = 1.0 - medians["pipeline"] / medians["in_memory"]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].platform}",
        "date": time.strftime("%Y-%m-%d"),
        "set": f"{args.images} images x {args.captions_per_image} captions, "
        f"{args.feature_dim}-d float16 memory-mapped features",
        "vocab_size": args.vocab_size,
        "batch_size": args.batch_size,
        "steps_per_run": args.steps,
        "tokens_per_second": rates,
        "median_tokens_per_second": medians,
        "pipeline_slower_by": gap,
    }
    print(
        f"| feeding | tokens/s (median of {args.runs}) |\n|---|---|\n"
        f"| real pipeline (memory-mapped features) | {medians['pipeline']:,.0f} |\n"
        f"| one batch held in device memory | {medians['in_memory']:,.0f} |\n\n"
        f"pipeline slower by {100 * gap:.1f}% ({result['machine']}, {result['date']})"
    )
    if args.json:
        write_json_atomic(args.json, result)


if __name__ == "__main__":
    main()
