"""Encoder speed: images per second of the Flax VGG-16, ResNet-50 and AlexNet ports at several
batch sizes (224x224, float32, random weights, jitted, preprocessing included), next to
Keras' own VGG16 (Keras 3 on the JAX backend) on the same inputs and machine. A benchmark
that prints numbers, not a test.

    python experiments/bench_encoders.py [--batch-sizes 1 8 32] [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported: no TensorFlow

import jax  # noqa: E402
import numpy as np  # noqa: E402
from timing import median_time  # noqa: E402

from mrnn_jax import logs  # noqa: E402
from mrnn_jax.encoders.pretrained import ARCHITECTURES, PretrainedEncoder  # noqa: E402
from mrnn_jax.files import write_json_atomic  # noqa: E402


def ours(name: str, batch: int, runs: int) -> float:
    """Images per second of our port ``name`` (uint8 pixels in, feature vector out)."""
    encoder = PretrainedEncoder(architecture=name)
    images = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    variables = encoder.init(jax.random.PRNGKey(0), images[:1])
    apply = jax.jit(encoder.apply)
    seconds, _ = median_time(lambda: apply(variables, images), runs)
    return batch / seconds


def keras_vgg16(batch: int, runs: int) -> float:
    """Images per second of ``keras.applications.VGG16`` up to fc2 (= fc7) on the JAX backend."""
    import keras

    model = keras.applications.VGG16(weights=None)
    fc7 = keras.Model(model.input, model.get_layer("fc2").output)
    images = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3)).astype(np.float32)
    x = keras.applications.vgg16.preprocess_input(images)
    seconds, _ = median_time(lambda: fc7.predict_on_batch(x), runs)
    return batch / seconds


def main() -> None:
    """Measures and prints images per second."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", default=None)
    logs.add_argument(parser)
    args = parser.parse_args()
    logs.setup(args.verbose)
    rows = []
    for name in ARCHITECTURES:
        for batch in args.batch_sizes:
            rows.append(
                {
                    "encoder": f"{name} (mrnn-jax)",
                    "batch": batch,
                    "images_per_second": ours(name, batch, args.runs),
                }
            )
            print(rows[-1], flush=True)
    for batch in args.batch_sizes:
        rows.append(
            {
                "encoder": "VGG16 (Keras 3, JAX backend)",
                "batch": batch,
                "images_per_second": keras_vgg16(batch, args.runs),
            }
        )
        print(rows[-1], flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].platform}"
    table = [
        "| encoder | " + " | ".join(f"batch {b}" for b in args.batch_sizes) + " |",
        "|---|" + "---|" * len(args.batch_sizes),
    ]
    for encoder in dict.fromkeys(r["encoder"] for r in rows):
        cells = [f"{r['images_per_second']:.1f}" for r in rows if r["encoder"] == encoder]
        table.append(f"| {encoder} | " + " | ".join(cells) + " |")
    print("\n".join(table))
    print(
        f"\nimages/s, median of {args.runs} runs, 224x224 float32; {machine}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    if args.json:
        write_json_atomic(
            args.json,
            {
                "machine": machine,
                "date": time.strftime("%Y-%m-%d"),
                "runs": args.runs,
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
